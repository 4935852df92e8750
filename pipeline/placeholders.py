"""Dated paths for scheduled jobs: `{date}`, `{yesterday}` and `{run_id}` in input and output paths
(on the command line or in a job file), resolved once per run and recorded in the report.

`{date}` is the run's date (today in local time, or `--date YYYY-MM-DD` for a backfill),
`{yesterday}` the day before; both take a strftime format: `{date:%Y/%m/%d}`. `{run_id}` is
`--run-id`, else the date and time the run started plus a short random part, so a rerun that
must resume the same output should name it with `{date}` or pass the same `--run-id`.
A literal brace is written twice: `{{`.
"""

from __future__ import annotations

import datetime as dt
import string
import uuid
from typing import Any

from pipeline.exits import UserError

NAMES = ("date", "yesterday", "run_id")


def values(date: str | None, run_id: str | None) -> dict[str, Any]:
    try:
        day = dt.date.fromisoformat(date) if date else dt.date.today()
    except ValueError:
        raise UserError(f"--date {date!r} is not a date; give it as YYYY-MM-DD") from None
    now = dt.datetime.now()
    rid = run_id or f"{day.isoformat()}T{now:%H%M%S}-{uuid.uuid4().hex[:4]}"
    return {"date": day, "yesterday": day - dt.timedelta(days=1), "run_id": rid}


def resolve(text: str, found: dict[str, Any]) -> str:
    """`text` with its placeholders filled in; an unknown placeholder is an error that says which."""
    if "{" not in text and "}" not in text:
        return text
    try:
        for _, name, _, _ in string.Formatter().parse(text):
            if name is not None and name not in NAMES:
                raise UserError(f"unknown placeholder {{{name}}} in {text!r}: use {{date}}, {{yesterday}} "
                                 "or {run_id} (a literal brace is written twice)")
        return text.format(**found)
    except (ValueError, IndexError) as e:
        if "placeholder" in str(e):
            raise
        raise UserError(f"cannot fill in the placeholders of {text!r}: {e}. A literal brace is "
                         "written twice") from None
