"""Media named in request content (images; audio uses the same rules): what a request line may make
the pipeline read, and the one fetch that reads it.

A request file is untrusted input: whoever wrote it must not be able to make the pipeline read the
operator's files, reach the operator's network or spend the operator's storage credentials. So,
as vLLM's server does (`--allowed-local-media-path`, `--allowed-media-domains`) and as OpenAI's
API does (public URLs and data: URIs only):

- a local path or file:// URL is read only inside the folder the operator allows, after resolving
  it (symlinks included), only when it is a regular file (a FIFO, socket or device is refused
  without opening it blocking), and every failure says the same thing, so that a request cannot
  learn whether a file exists;
- an http(s) URL is fetched with a connection of its own (never the job's --storage-option
  headers or keys), only from the allowed domains when a list is given, never from a private,
  loopback, link-local or otherwise non-public address unless the operator allows them (every
  address the host resolves to is checked, and the connection goes to the checked address), with
  at most MAX_REDIRECTS redirects, each hop checked again;
- any other URL (s3://, gs://, az://, memory://...) is refused, unless it lies under a location
  the operator lists with --media-storage: those (and only those) are read with the job's storage
  options, like its inputs.

The work runs on daemon threads (DaemonPool): a stalled host cannot keep a stopped run alive.
"""

from __future__ import annotations

import http.client
import ipaddress
import os
import queue
import socket
import stat
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin, urlsplit

from pipeline.storage import redact, secrets_of

MAX_REDIRECTS = 3  # hops followed per fetch (vLLM: VLLM_MEDIA_URL_ALLOW_REDIRECTS)
_CHUNK = 64 * 1024


class Refused(Exception):
    """The rules do not let a request read this; never retried."""


class Unreachable(Exception):
    """Permanently unreadable (HTTP 4xx); never retried."""


@dataclass(frozen=True)
class MediaRules:
    """Where media named in requests may come from, and how long a fetch may take."""

    local_root: str | None = None  # --allowed-local-media-path, resolved (None: no local files)
    domains: tuple[str, ...] = ()  # --allowed-media-domains (empty: any public host)
    private: bool = False  # --allow-private-media: private, loopback and link-local hosts too
    storage: tuple[str, ...] = ()  # --media-storage: locations read with the job's storage options
    storage_options: dict[str, Any] = field(default_factory=dict)
    timeout: float = 30.0  # seconds per try
    retries: int = 2  # more tries after a transient failure
    timeout_option: str = "--image-timeout"  # named in the timeout's hint

    def show(self, url: str) -> str:
        """`url` as messages may quote it: credentials redacted, bounded."""
        text = redact(url, secrets_of(self.storage_options))
        return text if len(text) <= 100 else text[:99] + "…"


def fetch(url: str, limit: int, rules: MediaRules) -> bytes:
    """The first `limit` bytes at `url` (a path, file://, http(s) or a --media-storage URL), tried
    1 + `rules.retries` times on transient failures. Raises Refused (what the rules forbid, and every
    failure of a local file, alike) or another exception naming the cause."""
    read = _reader(url, rules)
    for attempt in range(rules.retries + 1):
        try:
            return read(url, limit, rules)
        except (Refused, Unreachable, FileNotFoundError, IsADirectoryError, PermissionError):
            raise
        except Exception:  # noqa: BLE001 - network errors come in every kind
            if attempt == rules.retries:
                raise
            time.sleep(min(0.2 * 2**attempt, 2.0))
    raise AssertionError("unreachable")


def _reader(url: str, rules: MediaRules) -> Callable[[str, int, MediaRules], bytes]:
    if any(_under(url, prefix) for prefix in rules.storage):
        return _read_storage
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme in ("", "file"):
        return _read_local
    if scheme in ("http", "https"):
        return _read_http
    raise Refused(f"{scheme}:// URLs named in requests are not read: the job's storage credentials are not "
                  f"theirs to use. Hint: --media-storage {scheme}://BUCKET/PREFIX lets requests name media there")


def _under(url: str, prefix: str) -> bool:
    return url == prefix or url.startswith(prefix if prefix.endswith("/") else prefix + "/")


# ---- local files ---------------------------------------------------------------------------------
def _read_local(url: str, limit: int, rules: MediaRules) -> bytes:
    path = _local_path(url)
    if rules.local_root is None:
        raise Refused("local files named in requests are not read. Hint: --allowed-local-media-path DIR lets "
                      "requests name files under DIR")
    real = os.path.realpath(path)
    same = (f"the local file {rules.show(url)} is not a readable regular file under --allowed-local-media-path "
            f"{rules.local_root}")  # one message whatever the cause: a request cannot probe for files
    if os.path.commonpath([real, rules.local_root]) != rules.local_root:
        raise Refused(same)
    try:
        if not stat.S_ISREG(os.stat(real).st_mode):
            raise Refused(same)
        fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):  # swapped after the stat
                raise Refused(same)
            return f.read(limit)
    except OSError:
        raise Refused(same) from None


def _local_path(url: str) -> str:
    if not url.lower().startswith("file://"):
        return url
    split = urlsplit(url)
    if split.netloc not in ("", "localhost"):
        raise Refused("a file:// URL names a file on this machine: file:///path")
    from urllib.request import url2pathname

    return url2pathname(split.path)


# ---- http(s), on a connection of its own ------------------------------------------------------
def _read_http(url: str, limit: int, rules: MediaRules) -> bytes:
    deadline = time.monotonic() + rules.timeout
    for _ in range(MAX_REDIRECTS + 1):
        split = urlsplit(url)
        if split.scheme.lower() not in ("http", "https") or not split.hostname:
            raise Refused(f"a redirect to {rules.show(url)} left http(s)")
        https = split.scheme.lower() == "https"
        port = split.port or (443 if https else 80)
        address = _checked_address(split.hostname, port, rules)
        conn = _connection(https, split.hostname, port, address, _left(deadline, rules))
        try:
            conn.request("GET", (split.path or "/") + (f"?{split.query}" if split.query else ""),
                         headers={"User-Agent": "pipeline-media-fetch", "Accept": "*/*"})
            conn.sock.settimeout(_left(deadline, rules))  # each read waits at most what is left
            response = conn.getresponse()
            if response.status in (301, 302, 303, 307, 308) and response.getheader("Location"):
                url = urljoin(url, response.getheader("Location"))
                continue
            if response.status != 200:
                error = Unreachable if 400 <= response.status < 500 and response.status not in (408, 429) else OSError
                raise error(f"HTTP {response.status} {response.reason}")
            return _read_body(response, limit, deadline, rules)
        except TimeoutError:
            raise _timeout(rules) from None
        finally:
            conn.close()
    raise Refused(f"more than {MAX_REDIRECTS} redirects")


def _connection(https: bool, host: str, port: int, address: str, timeout: float) -> http.client.HTTPConnection:
    """A connection to `host` (its name in the Host header and, for https, in SNI and the
    certificate check) that connects to the checked `address`, not to a second lookup's."""
    conn = (http.client.HTTPSConnection if https else http.client.HTTPConnection)(host, port, timeout=timeout)

    def connect(_: Any, timeout: float | None = None, source: Any = None) -> socket.socket:
        return socket.create_connection((address, port), timeout, source)

    conn._create_connection = connect  # noqa: SLF001 - http.client's own seam for this
    return conn


def _read_body(response: http.client.HTTPResponse, limit: int, deadline: float, rules: MediaRules) -> bytes:
    """At most `limit` bytes of the body; a host that drips bytes is stopped at the deadline (each
    read returns what has arrived, and waits no longer than the time left when it was sent)."""
    chunks, size = [], 0
    while size < limit:
        _left(deadline, rules)
        chunk = response.read1(min(_CHUNK, limit - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _left(deadline: float, rules: MediaRules) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise _timeout(rules)
    return left


def _timeout(rules: MediaRules) -> TimeoutError:
    return TimeoutError(f"no answer within {rules.timeout:g} s. Hint: raise {rules.timeout_option} for a slow store")


def _checked_address(host: str, port: int, rules: MediaRules) -> str:
    """An address of `host` to connect to, after checking the host against the domain list and
    every address it resolves to against the address rule (a host with one private address among
    public ones is refused: which one a client uses is not ours to choose)."""
    if rules.domains and host.lower().rstrip(".") not in rules.domains:
        raise Refused(f"the host {host} is not in --allowed-media-domains")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise Unreachable(f"the host {host} cannot be resolved ({e.strerror})") from None
    addresses = [info[4][0] for info in infos]
    if not rules.private:
        for address in addresses:
            if not is_public(address):
                raise Refused(f"the host {host} has the non-public address {address}. Hint: "
                              "--allow-private-media lets requests name hosts on private networks")
    return addresses[0]


def is_public(address: str) -> bool:
    """A globally routable unicast address (not private, loopback, link-local, shared, reserved or
    multicast; an IPv4-mapped IPv6 address is judged as its IPv4 address)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


# ---- --media-storage: the job's storage, where the operator says so ------------------------------
def _read_storage(url: str, limit: int, rules: MediaRules) -> bytes:
    """One try within `rules.timeout` seconds. Every fsspec filesystem that waits on the network
    (http(s), s3fs, gcsfs, adlfs) is async: the read runs as one coroutine on fsspec's loop under
    `asyncio.wait_for`, which cancels it at the deadline, so the socket is closed and the wait
    really ends, whatever each client's own timeouts and retries are (botocore's read timeout is
    60 s, retried; Azure's retry policy waits longer)."""
    from fsspec.asyn import sync
    from fsspec.exceptions import FSTimeoutError

    from pipeline.storage import Location

    loc = Location.of(url, rules.storage_options)
    if not getattr(loc.fs, "async_impl", False):  # memory://, a local folder: nothing to wait for
        with loc.open("rb") as f:
            return f.read(limit)
    try:
        return sync(loc.fs.loop, _head_and_read, loc.fs, loc.path, limit, timeout=rules.timeout)
    except FSTimeoutError:
        raise _timeout(rules) from None


async def _head_and_read(fs: Any, path: str, limit: int) -> bytes:
    """The first `limit` bytes. The size first (what `fs.open` asks too): a byte range past the
    end of an empty object is an error on S3, GCS and Azure, and an empty file is no media."""
    size = (await fs._info(path)).get("size")
    if size == 0:
        return b""
    return await fs._cat_file(path, start=0, end=limit if size is None else min(size, limit))


# ---- the threads ---------------------------------------------------------------------------------
class DaemonPool:
    """A thread pool whose threads never keep the process alive: `close` cancels what has not
    started and returns at once, and a fetch stalled on a host ends with the process (a
    ThreadPoolExecutor's threads are joined at exit, so a stopped run would wait for every fetch)."""

    def __init__(self, workers: int, name: str):
        self.workers, self.name = max(1, workers), name
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._closed = False

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        future: Future = Future()
        self._queue.put((future, fn, args))
        if len(self._threads) < self.workers:
            thread = threading.Thread(target=self._work, name=f"{self.name}-{len(self._threads)}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return future

    def _work(self) -> None:
        while not self._closed:
            job = self._queue.get()
            if job is None:
                return
            future, fn, args = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as e:  # noqa: BLE001 - handed to whoever waits on the future
                future.set_exception(e)

    def close(self) -> None:
        """Cancel every job not started; the threads end after their current job (or with the process)."""
        self._closed = True
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job[0].cancel()
        for _ in self._threads:
            self._queue.put(None)
