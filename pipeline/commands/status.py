"""`pipeline status DIR`: where a job stands, read from its output folder without changing it:
committed rows of total, parts, last commit, the writer holding the lease, and the command that
finishes the job."""

from __future__ import annotations

import calendar
import time
from collections import Counter
from typing import Any

from pipeline.commands.forecast import eta_text
from pipeline.commands.learn import status_eta
from pipeline.output.folder import Output
from pipeline.output.lease import current, why_busy
from pipeline.output.stats import thinking_text
from pipeline.storage import Location, redact
from pipeline.verdicts.judge import VERDICTS
from pipeline.verdicts.state import job_state, state_text


def job_status(url: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    out = Output(Location.of(url, storage_options))
    state = out.job_state()
    attempts = state.manifest.get("attempts", [])
    last = attempts[-1] if attempts else {}
    committed = sum(r["rows"] for r in state.records)
    holder = None
    if not state.complete:
        holder = why_busy(*current(out.loc), 0)  # the holder's own timeout
    stamps = [r["at"] for r in state.records if r.get("at")]
    return {
        "output": out.display,
        "state": "complete" if state.complete else ("running" if holder else "stopped"),
        "rows_committed": committed,
        "rows_total": last.get("rows_total"),
        "images": sum((r.get("stats") or {}).get("images", 0) for r in state.records),
        "completion_tokens": sum((r.get("stats") or {}).get("completion_tokens", 0) for r in state.records),
        "reasoning_tokens": sum((r.get("stats") or {}).get("reasoning_tokens", 0) for r in state.records),
        **_verdicts(state.records),
        "parts": len(state.records),
        "last_commit": max(stamps) if stamps else None,
        "attempts": len(attempts),
        "writer": holder,
        "command": redact(last["command"])
        if isinstance(last.get("command"), str)
        else None,  # older runs kept credentials
        "created": state.manifest.get("created"),
        **_eta(state, committed, last.get("rows_total")),
    }


def _eta(state, committed: int, total: int | None) -> dict[str, Any]:
    """The rows left at the calibrated lengths and throughput (learn.py); None when complete or uncalibrated."""
    if state.complete or not total:
        return {"eta_seconds": None, "eta_source": None}
    seconds, source = status_eta(state.manifest, total - committed)
    return {"eta_seconds": seconds, "eta_source": source}


def status_text(s: dict[str, Any]) -> str:
    total = s["rows_total"]
    share = f" of {total} ({100 * s['rows_committed'] / total:.1f}%)" if total else ""
    lines = [f"{s['output']}: {s['state']}",
             f"  rows committed: {s['rows_committed']}{share}" + (f", {s['images']} images" if s["images"] else ""),
             *([f"  {'so far: ' if s['state'] != 'complete' else ''}{state_text(s)}"] if s.get("verdicts") else []),
             *([f"  {thinking_text(s['reasoning_tokens'], s['completion_tokens'])}"] if s["reasoning_tokens"] else []),
             f"  parts: {s['parts']}" + (f", last commit {s['last_commit']} ({_ago(s['last_commit'])})"
                                        if s["last_commit"] else ""),
             f"  attempts: {s['attempts']} (first started {s['created']})"]
    if s["eta_seconds"] is not None:
        lines.append(f"  ETA: {eta_text(s['eta_seconds'])} for the rows left ({s['eta_source']})")
    if s["writer"]:
        lines.append(f"  being written by {s['writer']}")
    if s["state"] == "stopped" and s["command"]:
        lines.append(f"  finish it with: {s['command']}")
        if "***" in s["command"]:
            lines.append("  (credentials and storage option values are not recorded: give them again)")
    return "\n".join(lines)


def _verdicts(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The committed rows' counts by verdict and the job's state from them (`job_state`: so far,
    while the job is not complete)."""
    counts: Counter[str] = Counter()
    figures = {"requests": 0, "succeeded": 0}
    for r in records:
        stats = r.get("stats") or {}
        counts.update(stats.get("verdicts") or {})
        for key in figures:
            figures[key] += stats.get(key, 0)
    figures["verdicts"] = {v: counts[v] for v in VERDICTS if counts[v]}
    s = job_state(figures)
    return {**figures, "job_state": s["state"], "ok_rows": s["ok_rows"], "bad_rows": s["bad_rows"]}


def _ago(stamp: str) -> str:
    seconds = max(0, int(time.time() - calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ"))))
    return (
        f"{seconds // 3600} h {seconds % 3600 // 60} min ago"
        if seconds >= 3600
        else f"{seconds // 60} min {seconds % 60} s ago"
    )
