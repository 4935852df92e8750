"""Numbers as people read them, for every text and page we print (the run's summary, `pipeline
report`, `pipeline estimate`); the JSON files keep the raw numbers.

Money and figures: two decimals from 1 up, three significant digits below (never an exponent,
no trailing zeros past the cents): `$1,234.57`, `$0.50`, `$0.0123`, `$0.000076`. Times: `0.4 s`, `12 s`, `3 min 4 s`,
`2 h 5 min`. Rates: three significant digits, `1,234` from 1,000 up.
"""

from __future__ import annotations

import math
from typing import Any


def figure(x: float) -> str:
    """Two decimals from 1 up; below, three significant digits (at least two decimals, no
    trailing zeros past them), never an exponent: 1,234.57, 0.50, 0.0123, 0.000076."""
    if x >= 1 or x <= 0:
        return f"{x:,.2f}"
    text = f"{x:.{max(2, 2 - math.floor(math.log10(x)))}f}"
    whole, decimals = text.split(".")
    return f"{whole}.{decimals.rstrip('0').ljust(2, '0')}"


def usd(x: float | None) -> str:
    return "–" if x is None else "$" + figure(x)


def duration(seconds: float | None) -> str:
    """0.04 s, 1.2 s, 13 s, 3 min 4 s, 2 h 5 min."""
    if seconds is None:
        return "–"
    if seconds < 0.1:
        return f"{seconds:.2f} s"
    if seconds < 9.95:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60} s"
    return f"{whole // 3600} h {whole % 3600 // 60} min"


def rate(x: float | None) -> str:
    """Requests or tokens per second: three significant digits, whole numbers from 100 up."""
    if x is None:
        return "–"
    if x >= 100 or x == 0:
        return f"{x:,.0f}"
    return f"{x:.{max(0, 2 - math.floor(math.log10(abs(x))))}f}"


def share(x: float | None) -> str:
    return "–" if x is None else f"{x:.1%}"


def trial_text(trial: dict[str, Any] | None) -> str:
    """The line that says a run took only part of its input (`--limit`), or ''."""
    if not trial:
        return ""
    of = f" of {trial['input_rows']:,}" if trial.get("input_rows") is not None else ""
    how = (f"a random sample of {trial['limit']:,}{of} rows (--sample-seed {trial['sample_seed']})"
           if trial.get("sample_seed") is not None else f"the first {trial['limit']:,}{of} rows")
    return f"a limited trial (--limit {trial['limit']}): {how}"
