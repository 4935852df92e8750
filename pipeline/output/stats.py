"""Counting what a run produced: per part (stored in the manifest) and for the whole job."""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

from pipeline.output.humane import duration, rate, share, trial_text, usd
from pipeline.verdicts.judge import VERDICTS
from pipeline.verdicts.state import job_state, state_text

COUNTERS = ("requests", "succeeded", "failed", "prompt_tokens", "completion_tokens",
            "total_tokens", "cached_tokens", "images", "reasoning_tokens",
            "repaired_rows", "repaired_ok", "repair_attempts")  # --repair: rows run again, ok after it, extra attempts


def part_stats(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts for one committed part; summing them over the manifest gives the job's totals."""
    stats: dict[str, Any] = dict.fromkeys(COUNTERS, 0)
    codes: Counter[str] = Counter()
    warnings: Counter[str] = Counter()
    verdicts: Counter[str] = Counter()
    cost = 0.0
    for r in rows:
        if r.get("choice_index"):  # --explode-choices: a request's later choices count once, with its first
            continue
        stats["requests"] += 1
        if r.get("verdict"):
            verdicts[r["verdict"]] += 1
        if r.get("attempts"):
            stats["repaired_rows"] += 1
            stats["repaired_ok"] += int(r.get("verdict") == "ok")
            stats["repair_attempts"] += len(r["attempts"]) - 1
        if r["error"] is None:
            stats["succeeded"] += 1
        else:
            stats["failed"] += 1
            codes[r["error"]["code"]] += 1
        for key in ("prompt_tokens", "completion_tokens", "total_tokens", "cached_tokens", "images",
                    "reasoning_tokens"):
            stats[key] += r.get(key) or 0
        cost += r["estimated_cost"] or 0.0
        for w in r["warnings"] or ():
            warnings[_warning_kind(w)] += 1
    stats["estimated_cost"] = cost
    stats["errors_by_code"] = dict(codes)
    stats["warnings"] = dict(warnings)
    stats["verdicts"] = dict(verdicts)
    return stats


def _warning_kind(message: str) -> str:
    """Group warnings by kind: the words before the first colon ('unknown field(s) ignored'), so
    that rows with a million different field names still make a handful of counters."""
    return re.sub(r"\s*\(.*?\)\s*$", "", message.split(":", 1)[0])[:80]


def total_stats(parts: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = dict.fromkeys(COUNTERS, 0)
    out["estimated_cost"] = 0.0
    codes: Counter[str] = Counter()
    warnings: Counter[str] = Counter()
    verdicts: Counter[str] = Counter()
    for p in parts:
        s = p["stats"]
        for key in COUNTERS:
            out[key] += s.get(key, 0)  # a part committed before images were counted has none
        out["estimated_cost"] += s["estimated_cost"]
        codes.update(s["errors_by_code"])
        warnings.update(s["warnings"])
        verdicts.update(s.get("verdicts") or {})  # a part committed before verdicts has none
    out["estimated_cost"] = round(out["estimated_cost"], 10)
    out["errors_by_code"] = dict(sorted(codes.items()))
    out["warnings"] = dict(sorted(warnings.items()))
    out["verdicts"] = {v: verdicts[v] for v in VERDICTS if verdicts[v]}
    out.update(job_state(out))
    return out


def thinking_text(reasoning: int, completion: int) -> str:
    """Completion tokens split into thinking and answer, for summaries and status."""
    thinking = share(reasoning / completion) if completion else "-"
    return (f"of {completion:,} tokens out: {reasoning:,} thinking ({thinking}), "
            f"{completion - reasoning:,} answer")


def summary_text(report: dict[str, Any]) -> str:
    """The short summary printed at the end of a run."""
    r = report
    lines = [
        f"{r['requests']:,} requests: {r['succeeded']:,} ok, {r['failed']:,} failed"
        + (f" ({', '.join(f'{k}: {v:,}' for k, v in r['errors_by_code'].items())})" if r["errors_by_code"] else "")
        + (f"; {r['resumed']:,} already done before this run" if r.get("resumed") else ""),
        f"tokens: {r['prompt_tokens']:,} in, {r['completion_tokens']:,} out, {r['total_tokens']:,} total"
        + (f" ({r['cached_tokens']:,} prompt tokens from cache: {share(r['cached_tokens'] / r['prompt_tokens'])})"
           if r.get("cached_tokens") and r.get("prompt_tokens") else "")
        + (f"; {r['images']:,} images" if r.get("images") else ""),
    ]
    if r.get("verdicts"):
        lines.append(state_text(r))
    if r.get("repaired_rows"):
        lines.append(f"repairs: {r['repaired_rows']:,} rows run again ({r['repair_attempts']:,} extra attempts), "
                     f"{r['repaired_ok']:,} of them ok now")
    if r.get("reasoning_tokens"):
        lines.append(thinking_text(r["reasoning_tokens"], r["completion_tokens"]))
    if r.get("trial"):
        lines.append(trial_text(r["trial"]))
    if r.get("wall_seconds"):
        lines.append(
            f"this run: {duration(r['wall_seconds'])}, {rate(r['requests_per_second'])} requests/s, "
            f"{rate(r['generated_tokens_per_second'])} generated tokens/s"
        )
    if r.get("price"):
        lines.append(f"estimated cost: {usd(r['estimated_cost'])} at {r['price']}")
    if r.get("estimate"):
        lines.append(estimate_text(r["estimate"]))
    if r.get("warnings"):
        lines.append("warnings: " + "; ".join(f"{k} ×{v:,}" for k, v in r["warnings"].items()))
    lines.append(f"output: {r['output']}" + (f" (one result file per input in results/: {r['result_files']:,} files)"
                                            if r.get("result_files") else ""))
    return "\n".join(lines)


def estimate_text(e: dict[str, Any]) -> str:
    """The estimate made for the job (estimate --sample-run, commands/learn.py) beside what the run produced."""
    t, took = e["completion_tokens"], e.get("seconds_expected")
    where = "inside" if t["inside"] else "outside"
    return (f"estimated ({e['made']}): {t['expected']:,.0f} completion tokens, "
            f"90% {t['low']:,.0f} to {t['high']:,.0f}; "
            f"the job produced {t['actual']:,} ({where} the interval)"
            + (f"; {duration(took)} expected, this run took {duration(e['wall_seconds'])}" if took else ""))
