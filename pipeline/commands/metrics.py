"""The run's counters in Prometheus text format (exposition format 0.0.4), for node-exporter's
textfile collector or a pushgateway: `--metrics-file /var/lib/node_exporter/pipeline.prom`.

Every sample has one label for the job, `job_name`: its stable name (`job_name()` below), never
its dated output path, so tonight's run and last night's are one series and alerts and graphs
follow the job across dates.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from pipeline.storage import redact
from pipeline.verdicts.state import STATES

# A date written into a path by the shell or a scheduler (2026-12-02, 2026/12/02, 20261202).
_DATE = re.compile(r"(?<!\d)(\d{4})([-/]?)(0[1-9]|1[0-2])\2(0[1-9]|[12]\d|3[01])(?!\d)")

# (metric, help, report key or None, label name, label values from the report)
GAUGES = (
    ("pipeline_requests", "Requests of the job by outcome (whole job, resumed runs included)."),
    ("pipeline_errors", "Error rows of the job by error code."),
    ("pipeline_rows_by_verdict",
     "Rows of the job by verdict (ok, truncated, empty, unparsable, ...; docs/verdicts.md)."),
    ("pipeline_job_state",
     "The job's state: 1 for the one it is in (succeeded, partially_succeeded, failed), 0 for the others."),
    ("pipeline_tokens", "Tokens of the job by kind (reasoning: the completion tokens of thinking)."),
    ("pipeline_estimated_cost_usd", "Estimated cost of the job at list price."),
    ("pipeline_wall_seconds", "Wall time of this run."),
    ("pipeline_requests_per_second", "Requests finished per second in this run."),
    ("pipeline_generated_tokens_per_second", "Completion tokens per second in this run."),
    ("pipeline_resumed_requests", "Requests already done before this run."),
    ("pipeline_engine_restarts", "Engine restarts in this run."),
    ("pipeline_exit_code",
     "Exit code of this run (0 ok, 3 incomplete: rerun, 4 engine did not start, 5 too many bad rows)."),
    ("pipeline_last_run_timestamp_seconds", "When this run ended (Unix time)."),
    ("pipeline_last_success_timestamp_seconds", "When a run last completed the job (Unix time)."),
)


def job_name(job_file: str | None, output: str | None) -> str:
    """The job's stable name when --job-name is not given: the --job file's name without its
    suffix, else the --output path as written, its {date}-style placeholders left unexpanded and
    any literal date written as {date} (credentials removed)."""
    if job_file:
        return Path(job_file).stem
    return _DATE.sub("{date}", redact(output or ""))


def prometheus_text(report: dict[str, Any], exit_code: int, job: str, now: float | None = None) -> str:
    now = time.time() if now is None else now
    base = f'job_name="{_escape(job)}"'
    samples: dict[str, list[tuple[str, float]]] = {name: [] for name, _ in GAUGES}
    if report:
        for status in ("succeeded", "failed"):
            samples["pipeline_requests"].append((f'{base},status="{status}"', report.get(status, 0)))
        for code, n in report.get("errors_by_code", {}).items():
            samples["pipeline_errors"].append((f'{base},code="{_escape(code)}"', n))
        for verdict, n in report.get("verdicts", {}).items():
            samples["pipeline_rows_by_verdict"].append((f'{base},verdict="{verdict}"', n))
        if report.get("state"):
            samples["pipeline_job_state"] += [(f'{base},state="{s}"', int(s == report["state"])) for s in STATES]
        for kind in ("prompt", "completion", "cached") + (("reasoning",) if report.get("reasoning_tokens") else ()):
            samples["pipeline_tokens"].append((f'{base},kind="{kind}"', report.get(f"{kind}_tokens", 0)))
        for name, key in (("pipeline_estimated_cost_usd", "estimated_cost"),
                          ("pipeline_wall_seconds", "wall_seconds"),
                          ("pipeline_requests_per_second", "requests_per_second"),
                          ("pipeline_generated_tokens_per_second", "generated_tokens_per_second"),
                          ("pipeline_resumed_requests", "resumed"),
                          ("pipeline_engine_restarts", "engine_restarts")):
            if report.get(key) is not None:
                samples[name].append((base, report[key]))
    samples["pipeline_exit_code"].append((base, exit_code))
    samples["pipeline_last_run_timestamp_seconds"].append((base, round(now, 3)))
    if exit_code == 0:
        samples["pipeline_last_success_timestamp_seconds"].append((base, round(now, 3)))
    lines = []
    for name, help_text in GAUGES:
        if samples[name]:
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
            lines += [f"{name}{{{labels}}} {_number(v)}" for labels, v in samples[name]]
    return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(v: float) -> str:
    return str(int(v)) if isinstance(v, int) or float(v).is_integer() else repr(float(v))
