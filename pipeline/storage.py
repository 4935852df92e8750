"""Every read and write goes through here: fsspec wrapped once, for local disk, memory://, s3://,
gs://, az://, http(s):// and any other fsspec URL.

A `Location` is one file or folder. It knows its identity (the real, canonical location: the key
for resume, never shown) and its display form (credentials removed: for people and files we
write). Transient storage errors (HTTP 5xx, dropped connections, timeouts) are retried with
backoff; what still fails raises `StorageError` (the run stops resumable, exit 3), and a refused
access says so instead of "not found".
"""

from __future__ import annotations

import errno
import logging
import os
import posixpath
import re
import shutil
import stat
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

from pipeline.exits import Incomplete

log = logging.getLogger("pipeline")
T = TypeVar("T")

# Query parameters that carry credentials in signed URLs (S3 and GCS presigned URLs, Azure SAS,
# API keys). Only these are redacted: ordinary folder and parameter names are never touched.
CREDENTIAL_PARAMS = frozenset({
    "sig", "signature", "x-amz-signature", "x-amz-credential", "x-amz-security-token",
    "x-goog-signature", "x-goog-credential", "awsaccesskeyid", "token", "access_token", "api_key",
    "apikey", "key", "password", "secret", "client_secret", "code", "auth",
})
RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0)  # seconds between tries of a transient failure


class StorageError(Incomplete):
    """Storage failed after retries (disk full, upload refused, service down): the run stops,
    committed output stays valid, and rerunning the same command finishes the job."""

    hint = "rerun the same command once storage works again"


class AccessDenied(PermissionError):
    """The storage refused access (HTTP 403, file permissions)."""


class NotAFile(OSError):
    """A local path that is no regular file (a FIFO, a socket, a device): opening it could block
    forever, so it is refused."""


_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")
# a query string, without the punctuation that follows a URL in a sentence ("... a.jsonl?sig=x: ...")
_QUERY = re.compile(r"\?(?:[^\s\"'<>]*[^\s\"'<>.,:;!)\]])?")


# Words that make an option's KEY a secret: `hf_token`, `api_key`, `client_secret`, `password`,
# `aws_secret_access_key`, `Authorization` (not `max_tokens`, `tokenizer`: whole words only).
SECRET_WORDS = frozenset({"token", "secret", "password", "passwd", "key", "apikey", "credential",
                          "credentials", "auth", "authorization", "sig", "signature"})
_secrets: set[str] = set()  # this process's secret values (remember_secrets), redacted everywhere


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    """`text` without credentials: `user:password@` in URLs, credential query parameters, and any
    of `secrets` or of the values `remember_secrets` was given (--storage-option values, engine
    arguments and options named like secrets) wherever they appear. The one redaction of every
    text we write or print: messages, error rows, result lines, reports, manifests, logs."""
    text = _USERINFO.sub("***@", text)
    text = _QUERY.sub(lambda m: "?" + _redact_query(m.group(0)[1:]), text)
    for secret in sorted({*secrets, *_secrets}, key=len, reverse=True):
        if len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


def secret_name(name: str) -> bool:
    """Whether an option KEY names a secret (`hf_token`, `api_key`, `password`...)."""
    return any(word in SECRET_WORDS for word in re.split(r"[^a-z0-9]+", str(name).lower()))


def masked(values: dict[str, Any]) -> dict[str, Any]:
    """KEY=VALUE options with the values of secret-named keys shown as `***` (manifest, status)."""
    return {k: "***" if secret_name(k) and v not in (None, True, False, "") else v for k, v in values.items()}


def remember_secrets(*mappings: dict[str, Any] | None, every: bool = False) -> None:
    """Redact these options' secret values in every later text of this process: the values of
    secret-named keys, or with `every` all values (storage options: any may be a credential)."""
    for mapping in mappings:
        for k, v in (mapping or {}).items():
            if every or secret_name(k):
                _secrets.update(x for x in _leaves(v) if len(x) >= 6)


def _redact_query(query: str) -> str:
    parts = []
    for part in query.split("&"):
        name, sep, _ = part.partition("=")
        parts.append(f"{name}=***" if sep and name.lower() in CREDENTIAL_PARAMS else part)
    return "&".join(parts)


def _identity_url(url: str) -> str:
    """A URL without credentials, for identity: a re-signed URL of the same object is the same
    input."""
    split = urlsplit(url)
    netloc = split.netloc.rpartition("@")[2]
    query = urlencode([(k, v) for k, v in parse_qsl(split.query, keep_blank_values=True)
                       if k.lower() not in CREDENTIAL_PARAMS])
    return urlunsplit((split.scheme, netloc, split.path, query, split.fragment))


def is_transient(e: BaseException) -> bool:
    """Worth retrying: a network or service error, not a missing file, a refusal or a full disk."""
    if isinstance(e, FileNotFoundError) and _cause_status(e) is not None:
        status = _cause_status(e)  # fsspec's HTTP filesystem reports any failed request as missing
        return status >= 500 or status in (408, 429)
    if isinstance(e, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError,
                      FileExistsError, NotAFile)):
        return False
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.ELOOP):
        return False
    if isinstance(e, (ConnectionError, TimeoutError)):
        return True
    status = _http_status(e)
    if status is not None:
        return status >= 500 or status in (408, 429)
    module = type(e).__module__
    return isinstance(e, OSError) or module.startswith(("aiohttp", "botocore", "aiobotocore",
                                                        "urllib3", "requests", "google", "azure"))


def _http_status(e: BaseException) -> int | None:
    for attr in ("status", "status_code", "code"):
        value = getattr(e, attr, None)
        if isinstance(value, int) and 100 <= value < 600:
            return value
    response = getattr(e, "response", None)
    if isinstance(response, dict):  # botocore ClientError
        value = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return value if isinstance(value, int) else None
    return None


def retrying(what: str, fn: Callable[[], T], delays: tuple[float, ...] | None = None) -> T:
    """`fn()`, tried again after each delay while it fails transiently."""
    for delay in (*(RETRY_DELAYS if delays is None else delays), None):
        try:
            return fn()
        except Exception as e:
            if delay is None or not is_transient(e):
                raise
            log.warning("%s failed (%s: %s); trying again in %.1f s", what, type(e).__name__, e, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def denied(e: BaseException) -> bool:
    """A refusal by the storage: file permissions or HTTP 401/403."""
    return isinstance(e, PermissionError) or _http_status(e) in (401, 403) or _cause_status(e) in (401, 403)


def _cause_status(e: BaseException) -> int | None:
    cause = e.__cause__ or e.__context__
    return _http_status(cause) if cause is not None else None


class Location:
    """One file or folder on any fsspec filesystem."""

    def __init__(self, fs, path: str, scheme: str, secrets: tuple[str, ...] = ()):
        self.fs, self.path, self.scheme, self.secrets = fs, path.rstrip("/") or path, scheme, secrets
        self.local = isinstance(fs, LocalFileSystem)

    @classmethod
    def of(cls, url: str, storage_options: dict[str, Any] | None = None) -> Location:
        """The location a URL or path names, with the run's storage options."""
        options = storage_options or {}
        fs, path = url_to_fs(url, **options)
        scheme = url.split("://", 1)[0] if "://" in url else ""
        if isinstance(fs, LocalFileSystem):
            path = os.path.realpath(path)
        secrets = secrets_of(options)
        remember_secrets(options, every=True)
        return cls(fs, path, scheme, secrets)

    # ---- names ------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """The full location with the scheme the user typed (adlfs would write az:// as abfs://)."""
        if self.local:
            return self.path
        if self.scheme in ("http", "https"):
            return self.path
        rest = self.fs.unstrip_protocol(self.path).split("://", 1)[1]
        return f"{self.scheme}://{rest.lstrip('/') if self.scheme == 'memory' else rest}"

    @property
    def identity(self) -> str:
        """The canonical location, credentials removed: two spellings of one file are equal,
        two files never are. Used as a key, never shown."""
        return "file://" + self.path if self.local else _identity_url(self.url)

    @property
    def display(self) -> str:
        """For people and for what we write: credentials removed, and a local name that is not
        UTF-8 (its bytes arrive as lone surrogates) shown with U+FFFD, so it can be written."""
        text = redact(self.url, self.secrets)
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")

    def child(self, name: str) -> Location:
        return Location(self.fs, f"{self.path}/{name}", self.scheme, self.secrets)

    def at(self, path: str) -> Location:
        """Another path on the same filesystem."""
        return Location(self.fs, path, self.scheme, self.secrets)

    @property
    def name(self) -> str:
        """The last path segment (of a URL: without its query, which may hold a signature)."""
        path = urlsplit(self.path).path if self.scheme in ("http", "https") else self.path
        return posixpath.basename(path)

    def contains(self, other: Location) -> bool:
        """Is `other` this location or inside it (same filesystem)?"""
        return type(other.fs) is type(self.fs) and (
            other.path == self.path or other.path.startswith(self.path.rstrip("/") + "/"))

    # ---- reading ----------------------------------------------------------------------------
    def info(self) -> dict[str, Any] | None:
        """The file's metadata, or None where nothing exists."""
        self.fs.invalidate_cache(self.path)
        try:
            return self._call("reading", lambda: self.fs.info(self.path))
        except FileNotFoundError:
            return None

    def modified(self) -> float | None:
        """When the file was last written, in seconds since the epoch, by the storage's own clock
        (local disk: the kernel's; object stores: the service's), or None."""
        from datetime import datetime

        info = self.info() or {}
        value = next((info[k] for k in ("mtime", "LastModified", "last_modified", "updated", "created")
                      if info.get(k) is not None), None)
        if value is None:
            return None
        if isinstance(value, str):  # GCS: RFC 3339 text
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        return value.timestamp() if isinstance(value, datetime) else float(value)

    def exists(self) -> bool:
        return self.info() is not None

    def isdir(self) -> bool:
        info = self.info()
        return info is not None and info.get("type") == "directory"

    def names(self) -> list[str]:
        """Names directly inside this folder (none when it does not exist)."""
        self.fs.invalidate_cache(self.path)  # listings decide ownership and leases: never stale
        try:
            paths = self._call("listing", lambda: self.fs.ls(self.path, detail=False))
        except FileNotFoundError:
            return []
        return sorted(posixpath.basename(p.rstrip("/")) for p in paths)

    def walk(self) -> Iterator[tuple[str, list[str], list[str]]]:
        """(folder path, subfolder names, file names) top-down; prune by editing the subfolders."""
        return self._call("listing", lambda: self.fs.walk(self.path, topdown=True))

    def glob(self, pattern: str) -> list[str]:
        return sorted(self._call("listing", lambda: self.fs.glob(pattern)))

    def open(self, mode: str = "rb", compression: str | None = None):
        if self.local and "r" in mode and not stat.S_ISREG(os.stat(self.path).st_mode):
            raise NotAFile(f"{self.display} is not a regular file (a FIFO, socket or device)")
        return self._call("opening", lambda: self.fs.open(self.path, mode, compression=compression))

    def cat(self) -> bytes | None:
        """The file's bytes, or None where it does not exist."""
        try:
            return self._call("reading", lambda: self.fs.cat_file(self.path))
        except FileNotFoundError:
            return None

    # ---- writing ----------------------------------------------------------------------------
    def put_atomic(self, data: bytes) -> None:
        """Make the file hold `data` atomically: readers see the old file or the new, never half.
        Local disk: a temporary name in the same folder, fsync, rename. Object stores: one PUT."""
        if self.local:
            self._replace_local(lambda f: f.write(data))
        else:
            self._write("writing", lambda: self.fs.pipe_file(self.path, data))

    def put_file(self, source: str) -> None:
        """Make the file hold a local file's bytes atomically, as put_atomic does, without reading
        them into memory (object stores: one upload, multipart where the store needs it). Local
        folders on the way are created."""
        if self.local:
            os.makedirs(posixpath.dirname(self.path), exist_ok=True)
            with open(source, "rb") as src:
                self._replace_local(lambda f: shutil.copyfileobj(src, f, 1 << 22))
        else:
            self._write("writing", lambda: self.fs.put_file(source, self.path))

    def _replace_local(self, write: Callable[[Any], Any]) -> None:
        tmp = f"{posixpath.dirname(self.path)}/.tmp-{uuid.uuid4().hex[:12]}-{self.name}"
        try:
            with open(tmp, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError as e:
            raise StorageError(f"writing {self.display} failed: {e}") from e
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    def create_exclusive(self, data: bytes) -> bool:
        """Create the file only if it does not exist; False when it already does.

        fsspec's mode="create" is a conditional PUT on S3 (If-None-Match), GCS
        (ifGenerationMatch=0) and Azure (overwrite=False), checked against moto, fake-gcs-server
        and azurite.
        """
        try:
            if self.local:
                with open(self.path, "xb") as f:
                    try:
                        f.write(data)
                        f.flush()
                        os.fsync(f.fileno())
                    except BaseException:  # a full disk must not leave an empty file behind
                        os.remove(self.path)
                        raise
            else:
                self._write("creating", lambda: self.fs.pipe_file(self.path, data, mode="create"))
        except FileExistsError:
            return False
        except OSError as e:
            raise StorageError(f"creating {self.display} failed: {e}") from e
        return True

    def rm(self, recursive: bool = False) -> None:
        """Remove the file (`recursive`: the folder and everything in it); nothing there is fine."""
        try:
            self._write("removing", lambda: self.fs.rm(self.path, recursive=recursive))
        except FileNotFoundError:
            pass

    def makedirs(self) -> None:
        if self.local:
            try:
                os.makedirs(self.path, exist_ok=True)
            except (PermissionError, FileExistsError, NotADirectoryError):
                raise
            except OSError as e:  # a read-only or full disk: storage that does not work now
                raise StorageError(f"creating {self.display} failed: {e.strerror}") from None

    # ---- errors -----------------------------------------------------------------------------
    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """Read-side calls: transient errors retried; a refusal says so."""
        try:
            return retrying(f"{what} {self.display}", fn)
        except Exception as e:
            if isinstance(e, FileNotFoundError) and _cause_status(e) is None:
                raise  # really missing (fsspec's HTTP filesystem reports failed requests this way too)
            detail = f"HTTP {_cause_status(e)}" if isinstance(e, FileNotFoundError) else _brief(e, self.secrets)
            if denied(e):
                raise AccessDenied(f"access to {self.display} was refused ({detail}). "
                                   "Hint: check the credentials and permissions for it") from None
            if is_transient(e):
                raise StorageError(f"{what} {self.display} failed after {len(RETRY_DELAYS) + 1} tries: "
                                   f"{detail}") from None
            raise

    def _write(self, what: str, fn: Callable[[], T]) -> T:
        """Write-side calls: any storage failure stops the run resumably."""
        try:
            return self._call(what, fn)
        except (FileNotFoundError, FileExistsError):
            raise
        except AccessDenied as e:
            raise StorageError(str(e)) from None
        except OSError as e:
            raise StorageError(f"{what} {self.display} failed: {_brief(e, self.secrets)}") from e


def _brief(e: BaseException, secrets: tuple[str, ...]) -> str:
    text = " ".join(str(e).split())[:300] or type(e).__name__
    return redact(f"{type(e).__name__}: {text}", secrets)


def secrets_of(storage_options: dict[str, Any]) -> tuple[str, ...]:
    """The values of storage options, which `redact` removes from messages."""
    return tuple(str(v) for v in _leaves(storage_options))


def _leaves(value: Any) -> Iterator[Any]:
    if isinstance(value, dict):
        for v in value.values():
            yield from _leaves(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _leaves(v)
    elif isinstance(value, str):
        yield value
