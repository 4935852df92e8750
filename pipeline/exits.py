"""How the process ends: the exit codes (one table for the code, `--help` and the docs), the error
hierarchy whose classes carry their exit code, and the interruption signal.

One handler in cli.py serves every command: an error of this hierarchy prints its message (and
its hint) and exits with its code.
"""

from __future__ import annotations

import contextlib
import signal

OK = 0  # every request has its row (per-row errors are counted in the summary)
ERROR = 1  # a problem the user can fix: missing input, conflicting output, refused access
USAGE = 2  # bad command line or job file
INCOMPLETE = 3  # interrupted, storage failure, another run holds the output, engines keep dying: rerun
ENGINE_START = 4  # the engine could not start
TOO_MANY_BAD_ROWS = 5  # complete, but more rows than --max-bad-rows are not ok

# code -> what it means, for --help and the docs' table (a test keeps the docs in step)
MEANING = {
    OK: "every request has its row (per-row errors are counted in the summary)",
    ERROR: "an error to fix (input missing, output holding another job or foreign files, access "
           "refused): read the message; nothing was written",
    USAGE: "usage error (unknown option, malformed KEY=VALUE, bad job file)",
    INCOMPLETE: "incomplete (interrupted by SIGTERM or SIGINT, storage failure or full disk, output "
                "held by another run, lease lost, engines kept dying): rerun the same command to finish",
    ENGINE_START: "the engine could not start (bad model, out of memory while loading: three tries): "
                  "fix the cause, rerun",
    TOO_MANY_BAD_ROWS: "complete, every row written, but more rows than --max-bad-rows end with a verdict "
                       "other than ok (truncated, unparsable, ...): look at the verdicts, fix the job",
}
HELP = "Exit codes: " + "; ".join(f"{code} {text}" for code, text in MEANING.items()) + "."


class PipelineError(Exception):
    """An error the user sees: its message says what is wrong and how to fix it; `hint` is a
    line printed after it; `exit_code` is how the process ends."""

    exit_code = ERROR
    hint = ""


class UserError(PipelineError, ValueError):
    """Something the user can fix (input, option, model, output folder); nothing was written."""


class Incomplete(PipelineError):
    """The job is not finished, and rerunning the same command finishes it."""

    exit_code = INCOMPLETE
    hint = "rerun the same command to finish"


class TooManyRestarts(Incomplete):
    """Engines keep dying without a request to blame (its message says what to do)."""

    hint = ""


class EngineStartError(PipelineError):
    """An engine could not start at all (bad model, no memory, missing install), or died while
    loading too many times in a row."""

    exit_code = ENGINE_START
    hint = "committed output is kept; rerun the same command to finish once the engine starts"


class TooManyBadRows(PipelineError):
    """The job completed, and more of its rows than --max-bad-rows are not ok: a nightly job's
    alarm. Its rows are written and the job is marked complete."""

    exit_code = TOO_MANY_BAD_ROWS
    hint = "the rows are written; `verdict` and `verdict_message` say what is wrong with each"


class Interrupted(BaseException):
    """SIGTERM or SIGINT: commit what is finished and stop (exit 3). A BaseException, as
    KeyboardInterrupt is, so that no handler of errors can swallow it."""

    exit_code = INCOMPLETE


# What stops a run in order: the rows that finished are committed first.
STOPS = (Interrupted, KeyboardInterrupt, TooManyRestarts, EngineStartError)


def code_of(e: BaseException) -> int:
    """The exit code an exception ends the process with."""
    if isinstance(e, (Interrupted, KeyboardInterrupt)):
        return INCOMPLETE
    return getattr(e, "exit_code", ERROR)


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
