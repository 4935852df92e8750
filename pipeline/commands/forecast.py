"""From measured completion lengths to a 90% interval, a plan for a deadline or a budget, and an ETA.

The input is split into groups (input file × max_tokens); each group's requests get a per-request
completion length distribution (mean, variance, and how many requests it was measured on) from a
sample run of this job or from the calibration file (calibration.py). The whole job's completion
tokens are then

    measured (the sample's own rows, which are part of the job) + Σ over groups of M_g × mean_g

where M_g is the group's requests not measured. The 90% interval is a prediction interval for the
sum of those M_g requests: each varies around its group's mean (variance M_g·s²) and the mean
itself is known from n_g requests only (variance M_g²·s²/n_g); groups add up, the sum is taken as
normal (many requests) with Student's t for the spread measured on Σ(n_g - 1) degrees of
freedom, and the interval is clipped to [measured, the upper bound]. A group the
sample missed takes the sample's pooled completion/upper ratio and its variance.
Pure arithmetic: no engine, no clock (callers pass `now`).
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from pipeline.output.humane import usd

Z90 = 1.6449  # two-sided 90%: 5% below, 5% above


def t90(df: float) -> float:
    """Student's t quantile for a two-sided 90% interval (Cornish-Fisher expansion around Z90,
    within 2% of the table from 3 degrees of freedom): the spread is itself measured on few rows."""
    if df == float("inf"):
        return Z90
    df, z = max(df, 1.0), Z90
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df * df)


@dataclass(frozen=True)
class Lengths:
    """A per-request distribution of one quantity (completion tokens, or their thinking part)."""

    n: int  # requests it was measured on
    mean: float
    var: float  # sample variance (ddof 1); 0 when n < 2

    @classmethod
    def of(cls, values: list[float]) -> Lengths:
        n = len(values)
        mean = sum(values) / n if n else 0.0
        var = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
        return cls(n, mean, var)


@dataclass
class Group:
    """One group of the input: its valid requests and their completion bound, what a sample run
    measured in it, and the distribution that extrapolates to the rest."""

    requests: int = 0
    upper: int = 0  # Σ completion upper bounds
    measured: int = 0  # requests whose lengths are known (the sample's)
    measured_upper: int = 0
    measured_sum: float = 0.0
    lengths: Lengths | None = None  # per request, for the unmeasured ones (None: the pooled ratio)


@dataclass(frozen=True)
class Interval:
    expected: float
    low: float
    high: float

    def scaled(self, factor: float, plus: float = 0.0) -> Interval:
        return Interval(plus + self.expected * factor, plus + self.low * factor, plus + self.high * factor)


def spread_floor(n: int, per: float) -> float:
    """The least variance a spread measured on n requests is taken to have, for requests bounded
    by `per` tokens: a few requests that all stopped at the same length (all cut at max_tokens,
    say) measure no spread, yet the next one may stop anywhere. Laplace's rule of succession gives
    the chance that it does not behave as all n did, q = 1/(n + 2); a request that lands anywhere
    in [0, per] with that chance varies by at least per² · q(1 - q)."""
    q = 1 / (n + 2)
    return per * per * q * (1 - q)


def extrapolate(groups: list[Group], ratio: Lengths | None = None) -> Interval:
    """The job's total with a 90% interval (see the module's doc). `ratio`: completion / upper
    bound per measured request, pooled over the sample; it stands in for a group measured on no
    request, and gives the spread of one measured on fewer than 2."""
    expected = var = floor = ceiling = df = 0.0
    for g in groups:
        rest, rest_upper = g.requests - g.measured, g.upper - g.measured_upper
        floor += g.measured_sum
        ceiling += g.measured_sum + rest_upper
        if rest <= 0:
            expected += g.measured_sum
            continue
        per = rest_upper / rest  # the bound of one request left
        if g.lengths is not None and g.lengths.n:
            mean, s2, n = g.lengths.mean, g.lengths.var, g.lengths.n
            if n < 2 and ratio is not None:
                s2 = ratio.var * per * per
        elif ratio is not None and ratio.n:
            mean, s2, n = ratio.mean * per, ratio.var * per * per, ratio.n
        else:
            raise ValueError("a group with no measured lengths and no pooled ratio")
        df += n - 1
        mean = min(mean, per)
        s2 = max(s2, spread_floor(n, per))
        expected += g.measured_sum + rest * mean
        var += rest * s2 + rest * rest * s2 / n
    half = t90(df) * math.sqrt(var)
    return Interval(expected, max(floor, expected - half), min(ceiling, expected + half))


# ---- a plan for a deadline or a budget -------------------------------------------------------
def parse_deadline(text: str, now: datetime) -> datetime:
    """--deadline: an ISO date and time (UTC unless it names a zone), a time of day (HH:MM, UTC,
    the next one to come), or a duration from now (90m, 8h, 2d)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([mhd])\s*", text)
    if m:
        return now + timedelta(**{{"m": "minutes", "h": "hours", "d": "days"}[m.group(2)]: float(m.group(1))})
    m = re.fullmatch(r"\s*(\d{1,2}):(\d{2})\s*", text)
    if m:
        at = now.replace(hour=int(m.group(1)), minute=int(m.group(2)), second=0, microsecond=0)
        return at if at > now else at + timedelta(days=1)
    try:
        at = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"--deadline {text!r}: give a date and time (2026-12-07T06:00), a time of day "
                         "(06:00, UTC) or a duration (8h, 90m)") from None
    return at if at.tzinfo else at.replace(tzinfo=timezone.utc)


def plan(*, gpu_hours: Interval, gpus_per_engine: int, start_seconds: float, gpu_hour_usd: float,
         hosted: Interval | None, deadline: datetime | None, budget: float | None,
         now: datetime) -> dict[str, Any]:
    """How many engines finish by the deadline (at the interval's high end: 95% sure) and what
    they cost; which engine counts stay within the budget; the hosted alternative's cost. Each
    engine first spends `start_seconds` loading, on each of its GPUs."""
    out: dict[str, Any] = {"gpus_per_engine": gpus_per_engine, "engine_start_seconds": round(start_seconds, 1),
                           "gpu_hour_usd": gpu_hour_usd, "deadline": None, "budget_usd": budget}
    start_h = start_seconds / 3600

    def cost(engines: int, hours: float) -> float:
        return (hours + engines * gpus_per_engine * start_h) * gpu_hour_usd

    if deadline is not None:
        window_h = (deadline - now).total_seconds() / 3600
        out["deadline"] = deadline.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        out["hours_left"] = round(window_h, 3)
        for bound in ("expected", "high"):
            hours = getattr(gpu_hours, bound)
            engines = (None if window_h <= start_h else
                       max(1, math.ceil(hours / gpus_per_engine / (window_h - start_h))))
            out[f"engines_{bound}"] = engines
            out[f"gpus_{bound}"] = None if engines is None else engines * gpus_per_engine
            out[f"own_cost_usd_{bound}"] = None if engines is None else cost(engines, hours)
    if budget is not None:
        fits = budget / gpu_hour_usd - gpu_hours.high  # GPU-hours left for engine starts
        per_engine = gpus_per_engine * start_h
        out["most_engines_in_budget"] = (
            (max(0, math.floor(fits / per_engine)) if per_engine else None) if fits >= 0 else 0
        )
        out["own_within_budget"] = fits >= per_engine
        if hosted is not None:
            out["hosted_within_budget"] = hosted.high <= budget
        if deadline is not None and out.get("engines_high") is not None:
            out["deadline_within_budget"] = out["own_cost_usd_high"] <= budget
    if hosted is not None:
        out.update(hosted_cost_usd_expected=hosted.expected, hosted_cost_usd_low=hosted.low,
                   hosted_cost_usd_high=hosted.high)
    return out


def plan_text(p: dict[str, Any]) -> list[str]:
    """The plan as lines for the terminal table."""
    lines = []
    per = f" ({p['gpus_per_engine']} GPUs each)" if p["gpus_per_engine"] > 1 else ""
    if p["deadline"] is not None:
        if p["engines_high"] is None:
            lines.append(
                f"deadline {p['deadline']}: too close, an engine takes {p['engine_start_seconds']:g} s to start"
            )
        else:
            lines.append(f"deadline {p['deadline']} ({p['hours_left']:.1f} h left): {_engines(p['engines_high'])}{per} "
                         f"finish in time at the interval's high end ({usd(p['own_cost_usd_high'])}), "
                         f"{p['engines_expected']} at the expected figure ({usd(p['own_cost_usd_expected'])})")
    if p["budget_usd"] is not None:
        most = p["most_engines_in_budget"]
        own = (f"own GPUs fit (at most {most} engines, counting their starts)" if p["own_within_budget"]
               else "own GPUs do not fit at the interval's high end")
        hosted = ("" if "hosted_within_budget" not in p else
                  f"; hosted {'fits' if p['hosted_within_budget'] else 'does not fit'}")
        lines.append(f"budget {usd(p['budget_usd'])}: {own}{hosted}")
    if "hosted_cost_usd_expected" in p:
        lines.append(f"hosted alternative at list price: {usd(p['hosted_cost_usd_expected'])} "
                     f"(90%: {usd(p['hosted_cost_usd_low'])} to {usd(p['hosted_cost_usd_high'])})")
    return lines


def _engines(n: int) -> str:
    return f"{n} engine" + ("" if n == 1 else "s")


# ---- the live ETA ------------------------------------------------------------------------------
@dataclass(frozen=True)
class EtaModel:
    """Seconds a run has left, from calibrated lengths and throughput: each request left takes
    its expected prompt + completion tokens at the calibrated tokens/s per GPU × the run's GPUs.
    The source says which calibration it came from."""

    tokens_per_request: float
    tokens_per_second: float  # all the run's GPUs together
    source: str

    def seconds_left(self, requests_left: int) -> float:
        return max(0, requests_left) * self.tokens_per_request / self.tokens_per_second


def eta_text(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600} h {s % 3600 // 60:02d} min" if s >= 3600 else f"{s // 60} min {s % 60:02d} s"


def utc_now() -> datetime:
    return datetime.fromtimestamp(time.time(), timezone.utc)
