"""One writer per output folder: a lease that a second run detects, and that a run after a crash
takes over safely.

The lease is the file `_lease/<gen>.json` with the highest generation (a folder of its own, so
that checking it lists a few names however many parts the output holds). A run acquires the folder
by creating generation `gen + 1` with an exclusive create (a conditional PUT on object stores),
which only one of two racing runs can win. It may do so only when the current lease is free:
released, not rewritten for longer than the timeout, or held by a process of this machine that no
longer exists. The holder names itself by a random token, its host and pid, and the machine's boot
id and pid namespace: the pid is checked only where both match ours (same host name is not
enough: containers with the host's network share it, each with its own pids).

The lease's age is measured by one clock only, the storage's: the lease file's modification time
against that of a file written just then (the holder's clock is never read, so a host whose clock
is wrong can neither look dead nor block others). The holder rewrites its lease in a background
thread and, before each write, checks by its own monotonic clock that it did so recently and that
no newer generation exists, so a writer that was paused longer than the timeout stops instead of
writing beside its successor.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import socket
import threading
import time
import uuid
from pathlib import Path
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
        top = max(generations(folder), default=0)
        if top:
            busy = why_busy(*current(folder, now=_storage_now(folder)), timeout)
            if busy:
                raise OutputBusy(f"{folder.display} is being written by another run ({busy}). "
                                 "Hint: wait for it to finish, or stop it; a crashed run's lease "
                                 f"is taken over {timeout:g} s after its last heartbeat")
        holder = {"token": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid(),
                  **_machine(), "started": time.time()}
        lease = cls(folder, top + 1, timeout, holder)
        if not lease.loc.create_exclusive(lease._content()):
            raise OutputBusy(f"{folder.display} was taken by another run at the same moment. "
                             "Hint: let that run finish")
        lease._thread = threading.Thread(target=lease._heartbeat, name="lease-heartbeat", daemon=True)
        lease._thread.start()
        return lease

    def _content(self, released: bool = False) -> bytes:
        return json.dumps({**self.holder, "timeout": self.timeout, "released": released}).encode()

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
            if (m and int(m.group(1)) < self.generation) or name.startswith((".tmp-", _PROBE)):
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


def current(folder: Location, now: float | None = None) -> tuple[dict[str, Any] | None, float | None]:
    """The newest lease's content and its age: seconds since it was last written, by the storage's
    clock against `now` (read from the storage; None: this machine's clock, for display only).
    (None, None) when there is no lease; the age is None where the storage keeps no time."""
    gens = generations(folder)
    if not gens:
        return None, None
    loc = folder.child(f"{FOLDER}/{gens[max(gens)]}")
    content, written = _read(loc), loc.modified()
    if written is None:
        return content, None
    return content, (time.time() if now is None else now) - written


def why_busy(lease: dict[str, Any] | None, age: float | None, timeout: float) -> str | None:
    """Why the lease is held (a description of the holder), or None when it is free: released, not
    rewritten for longer than the timeout (`age`, from `current`), or held by a process of this
    machine (same boot and pid namespace) that is gone."""
    if lease is None or lease.get("released") is True:
        return None
    if age is not None and age > max(timeout, _number(lease.get("timeout")) or 0):
        return None
    pid = lease.get("pid")
    if _this_machine(lease) and isinstance(pid, int) and not _alive(pid):
        return None
    started = _number(lease.get("started"))
    when = "?" if started is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started))
    beat = "?" if age is None else f"{max(0.0, age):.0f}"
    return f"pid {pid} on {lease.get('host')}, started {when}, last heartbeat {beat} s ago"


_PROBE = ".now-"


def _storage_now(folder: Location) -> float | None:
    """The storage's clock now: the modification time of a file written for the purpose."""
    probe = folder.child(f"{FOLDER}/{_PROBE}{uuid.uuid4().hex[:12]}")
    probe.put_atomic(b"")
    try:
        return probe.modified()
    finally:
        probe.rm()


def _machine() -> dict[str, str | None]:
    """This machine's boot id and this process's pid namespace (None where unknown): a pid
    means the same process only where both are equal."""
    def read(fn) -> str | None:
        try:
            return fn().strip()
        except OSError:
            return None

    return {"boot": read(lambda: Path("/proc/sys/kernel/random/boot_id").read_text()),
            "pidns": read(lambda: os.readlink("/proc/self/ns/pid"))}


def _this_machine(lease: dict[str, Any]) -> bool:
    mine = _machine()
    return (lease.get("host") == socket.gethostname() and None not in mine.values()
            and all(lease.get(k) == v for k, v in mine.items()))


def _number(value: Any) -> float | None:
    """A number from a lease file (which a person may have edited), or None."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


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
        # a half-written lease cannot be: creates and rewrites are atomic. Treat it as held, until
        # its file is older than the timeout.
        return {"host": "?", "pid": "?"}
    return value if isinstance(value, dict) else None
