"""One writer per output folder: a lease that a second run detects, and that a run after a crash
takes over safely.

The lease is the file `_lease/<gen>.json` with the highest generation (a folder of its own, so
that checking it lists a few names however many parts the output holds). A run acquires the folder
by creating generation `gen + 1` with an exclusive create (a conditional PUT on object stores),
which only one of two racing runs can win. It may do so only when the current lease is free:
released, its heartbeat older than the timeout, or held by a process of this machine that no
longer exists. The holder refreshes its heartbeat in a background thread and, before each
write, checks that no newer generation exists and that its own heartbeat is recent, so a writer
that was paused longer than the timeout stops instead of writing beside its successor.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import threading
import time
from typing import Any

from pipeline.exits import Incomplete
from pipeline.storage import Location, StorageError

log = logging.getLogger("pipeline")
DEFAULT_TIMEOUT = 60.0
FOLDER = "_lease"
_LEASE = re.compile(r"^(\d+)\.json$")


class OutputBusy(Incomplete):
    """Another run holds the output folder (its message names the holder and what to do)."""

    hint = ""


class LeaseLost(StorageError):
    """This run no longer holds the output folder: it must stop writing."""

    hint = ""


class Lease:
    def __init__(self, folder: Location, generation: int, timeout: float, holder: dict[str, Any]):
        self.folder, self.generation, self.timeout, self.holder = folder, generation, timeout, holder
        self.loc = folder.child(f"{FOLDER}/{generation}.json")
        self.beat = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def acquire(cls, folder: Location, timeout: float = DEFAULT_TIMEOUT) -> Lease:
        """Take the folder, or raise OutputBusy naming the holder."""
        folder.child(FOLDER).makedirs()
        gens = generations(folder)
        top = max(gens, default=0)
        if top:
            current = _read(folder.child(f"{FOLDER}/{gens[top]}"))
            busy = why_busy(current, timeout)
            if busy:
                raise OutputBusy(f"{folder.display} is being written by another run ({busy}). "
                                 "Hint: wait for it to finish, or stop it; a crashed run's lease "
                                 f"is taken over {timeout:g} s after its last heartbeat")
        holder = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}
        lease = cls(folder, top + 1, timeout, holder)
        if not lease.loc.create_exclusive(lease._content()):
            raise OutputBusy(f"{folder.display} was taken by another run at the same moment. "
                             "Hint: let that run finish")
        lease._thread = threading.Thread(target=lease._heartbeat, name="lease-heartbeat", daemon=True)
        lease._thread.start()
        return lease

    def _content(self, released: bool = False) -> bytes:
        return json.dumps({**self.holder, "heartbeat": time.time(), "timeout": self.timeout,
                           "released": released}).encode()

    def _heartbeat(self) -> None:
        while not self._stop.wait(max(0.05, self.timeout / 6)):
            try:
                self.loc.put_atomic(self._content())
                self.beat = time.monotonic()
            except Exception as e:  # the check before the next write stops the run
                log.warning("could not refresh the output lease: %s", e)

    def check(self) -> None:
        """Raise LeaseLost unless this run still holds the folder."""
        age = time.monotonic() - self.beat
        if age > self.timeout / 2:
            raise LeaseLost(f"this run's lease on {self.folder.display} was not refreshed for "
                            f"{age:.0f} s (the process was paused or storage failed); another run "
                            "may have taken over, so this one stops. Rerun the same command to finish")
        top = max(generations(self.folder), default=0)
        if top != self.generation:
            raise LeaseLost(f"another run took over {self.folder.display} (lease {top} after this "
                            f"run's {self.generation}); this run stops without writing more")

    def remove_older(self) -> None:
        """Earlier generations (and a crashed heartbeat's temporary files) go; this one stays."""
        for name in self.folder.child(FOLDER).names():
            m = _LEASE.match(name)
            if (m and int(m.group(1)) < self.generation) or name.startswith(".tmp-"):
                self.folder.child(f"{FOLDER}/{name}").rm()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            if max(generations(self.folder), default=0) == self.generation:
                self.loc.put_atomic(self._content(released=True))
        except Exception as e:
            log.warning("could not release the output lease: %s", e)


def generations(folder: Location) -> dict[int, str]:
    """Lease generation -> file name, in the output folder's lease folder."""
    out = {}
    for name in folder.child(FOLDER).names():
        m = _LEASE.match(name)
        if m:
            out[int(m.group(1))] = name
    return out


def current(folder: Location) -> dict[str, Any] | None:
    """The newest lease's content, or None."""
    gens = generations(folder)
    return _read(folder.child(f"{FOLDER}/{gens[max(gens)]}")) if gens else None


def why_busy(current: dict[str, Any] | None, timeout: float) -> str | None:
    """Why the lease is held (a description of the holder), or None when it is free."""
    if current is None or current.get("released"):
        return None
    age = time.time() - float(current.get("heartbeat", 0))
    if age > max(timeout, float(current.get("timeout", 0))):
        return None
    host, pid = current.get("host"), current.get("pid")
    if host == socket.gethostname() and isinstance(pid, int) and not _alive(pid):
        return None
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(current.get("started", 0))))
    return f"pid {pid} on {host}, started {started}, last heartbeat {age:.0f} s ago"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read(loc: Location) -> dict[str, Any] | None:
    data = loc.cat()
    if data is None:
        return None
    try:
        value = json.loads(data)
    except ValueError:
        # a half-written lease cannot be: creates and rewrites are atomic. Treat as held,
        # with the file's age as heartbeat.
        return {"heartbeat": (loc.info() or {}).get("mtime", time.time()), "host": "?", "pid": "?"}
    return value if isinstance(value, dict) else None
