"""Exit codes, one table for the code, `--help` and the README, and the interruption signal."""

from __future__ import annotations

import contextlib
import signal

OK = 0  # every request has its row (per-row errors are counted in the summary)
ERROR = 1  # a problem the user can fix: missing input, conflicting output, refused access
USAGE = 2  # bad command line or job file
INCOMPLETE = 3  # interrupted, storage failure, another run holds the output, engines keep dying: rerun
ENGINE_START = 4  # the engine could not start

HELP = ("Exit codes: 0 every request has a row (per-row errors are counted in the summary); "
        "1 an error to fix (input missing, output conflict, access refused); 2 usage error; "
        "3 incomplete (interrupted, storage failure, output busy, engines keep dying): rerun the same "
        "command to finish; 4 the engine could not start.")


class Interrupted(BaseException):
    """SIGTERM or SIGINT: commit what is finished and stop (exit 3). A BaseException, as
    KeyboardInterrupt is, so that no `except Exception` (a reader's "this file is unreadable", a
    row's "this row is invalid") can turn it into an error row and let the run go on."""


_deferring = 0  # depth of `deferred()` blocks the main thread is in
_pending = False  # a signal came inside one


def _raise_interrupted(signum, frame):
    global _pending
    if _deferring:
        _pending = True
        return
    # One interruption is enough: later signals must not break the flush and cleanup it starts.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)
    raise Interrupted()


@contextlib.contextmanager
def deferred():
    """A block that an interruption must not cut in half (starting an engine process and keeping
    its handle, so that it is stopped with the run): SIGTERM and SIGINT raise at its end."""
    global _deferring, _pending
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1
        if not _deferring and _pending:
            _pending = False
            _raise_interrupted(signal.SIGTERM, None)


def install_handlers() -> None:
    """SIGTERM, and SIGINT unless it was ignored when the process started (a background job of a
    shell), raise Interrupted from the first moment the command runs."""
    signal.signal(signal.SIGTERM, _raise_interrupted)
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, _raise_interrupted)
