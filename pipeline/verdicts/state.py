"""The job's state from its rows' verdicts, and `--max-bad-rows`.

- `succeeded`: every row's verdict is ok (a job of no rows too);
- `partially_succeeded`: some are ok, some not;
- `failed`: none is ok.

A row is bad when its verdict is not ok. `--max-bad-rows N` (a count) or `P%` (a share of the
job's rows) bounds them: past it, the run still writes and marks every row, and then ends with
exit code 5 (exits.TOO_MANY_BAD_ROWS), for a scheduler to alarm on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.exits import TooManyBadRows, UserError

SUCCEEDED, PARTIAL, FAILED = "succeeded", "partially_succeeded", "failed"
STATES = (SUCCEEDED, PARTIAL, FAILED)


def job_state(report: dict[str, Any]) -> dict[str, Any]:
    """`state`, `ok_rows` and `bad_rows` of a job from its report's counts (`verdicts`; a report
    of parts written before verdicts existed counts `succeeded` as ok)."""
    requests = report.get("requests", 0)
    verdicts = report.get("verdicts") or {}
    ok = verdicts.get("ok", 0) if verdicts else report.get("succeeded", 0)
    bad = requests - ok
    state = SUCCEEDED if bad == 0 else FAILED if ok == 0 else PARTIAL
    return {"state": state, "ok_rows": ok, "bad_rows": bad}


@dataclass(frozen=True)
class MaxBadRows:
    """--max-bad-rows: a count, or a share of the rows (percent)."""

    count: int | None = None
    percent: float | None = None

    @classmethod
    def parse(cls, text: Any) -> MaxBadRows | None:
        """`N` or `P%`; None for None. Raises ValueError with the fix."""
        if text is None:
            return None
        s = str(text).strip()
        try:
            if s.endswith("%"):
                p = float(s[:-1])
                if not 0 <= p <= 100:
                    raise ValueError
                return cls(percent=p)
            n = int(s)
            if n < 0:
                raise ValueError
            return cls(count=n)
        except ValueError:
            raise ValueError(f"--max-bad-rows takes a count (10) or a share of the rows (2.5%), not {s!r}") from None

    def limit(self, rows: int) -> float:
        return self.count if self.count is not None else rows * (self.percent or 0.0) / 100

    def describe(self) -> str:
        return f"{self.count:,}" if self.count is not None else f"{self.percent:g}%"

    def exceeded(self, report: dict[str, Any]) -> str | None:
        """The message for a job with more bad rows than allowed, or None."""
        s = job_state(report)
        if s["bad_rows"] <= self.limit(report.get("requests", 0)):
            return None
        counts = ", ".join(f"{k}: {v:,}" for k, v in sorted((report.get("verdicts") or {}).items()) if k != "ok")
        return (f"{s['bad_rows']:,} of {report.get('requests', 0):,} rows are not ok ({counts}), more than "
                f"--max-bad-rows {self.describe()}: the job is {s['state']}; every row is written")


def state_text(report: dict[str, Any]) -> str:
    """One line for summaries and status: the state, and the counts by verdict."""
    s = job_state(report)
    verdicts = report.get("verdicts") or {}
    counts = ", ".join(f"{k} {v:,}" for k, v in verdicts.items())
    return f"job {s['state']}: {s['ok_rows']:,} rows ok, {s['bad_rows']:,} not" + (f" ({counts})" if counts else "")


def too_many_bad_rows(max_bad_rows: Any, report: dict[str, Any]):
    """exits.TooManyBadRows for a finished job's report with more bad rows than `--max-bad-rows`
    allows (None: within it, or no bound). Raises UserError for a malformed bound."""
    try:
        bound = MaxBadRows.parse(max_bad_rows)
    except ValueError as e:
        raise UserError(str(e)) from None
    message = bound.exceeded(report) if bound is not None and report else None
    if message is None:
        return None
    error = TooManyBadRows(message)
    error.report = report  # the Python API's caller gets the figures with the error
    return error
