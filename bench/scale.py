"""`make bench-scale`: one very large job with the fake engine, killed at about half and resumed.

N small synthetic requests (default 20,000,000) are written as one JSON-lines file, streamed.
For each order (`--order input`, `--order prefix`) `pipeline run FILE --engine fake` starts in
a fresh output folder; once about half of the rows are committed (`--kill-at`, counted from the
commit records) the whole process group is killed with SIGKILL, as a machine loss would end it.
The same command then runs again and must finish (exit 0). The output must hold every
custom_id exactly once: N rows, N distinct ids, each of `r0000000000` .. `r{N-1}` (read back
with polars, outside the measured processes). Peak RSS is sampled over each command's whole
process tree every 0.2 s (harness.run_measured).

    python bench/scale.py                          # 20M requests, both orders (hours on 2 cores)
    python bench/scale.py --requests 1000000       # a quick check (a few minutes)
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from harness import (
    WORK,
    base_env,
    envelope,
    machine_line,
    publish,
    python,
    run_measured,
    table,
    versions_line,
)

MIB = 2**20
GIB = 2**30
TOPICS = ("the sea", "volcanoes", "bees", "black holes", "jazz", "glaciers", "chess", "coffee",
          "trains", "deserts", "octopuses", "libraries", "rivers", "mushrooms", "penguins", "tea")
SYSTEMS = ("", '{"role": "system", "content": "You are a helpful assistant."}, ',
           '{"role": "system", "content": "Answer in one short sentence."}, ')


def write_small_requests(path: Path, n: int) -> Path:
    """`n` short OpenAI Batch chat lines (~220 bytes), custom_id `r` + the line number in ten
    digits, written in blocks of 100,000 lines: fast, and memory does not grow with `n`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    head = '", "method": "POST", "url": "/v1/chat/completions", "body": {"messages": ['
    with open(path, "w") as f:
        for start in range(0, n, 100_000):
            f.write("".join(
                f'{{"custom_id": "r{i:010d}{head}{SYSTEMS[i % 3]}{{"role": "user", "content": "Say {i % 1000} '
                f'things about {TOPICS[i % len(TOPICS)]}."}}], "max_tokens": 8}}}}\n'
                for i in range(start, min(n, start + 100_000))))
    return path


class CommittedRows:
    """Rows committed so far in an output folder: the sum of its commit records' `rows`, each
    record read once; looked at every `every` seconds at most."""

    def __init__(self, out: Path, every: float = 1.0):
        self.folder, self.every = out / "_commits", every
        self.seen: set[str] = set()
        self.rows, self.last = 0, 0.0

    def count(self) -> int:
        if time.monotonic() - self.last >= self.every and self.folder.is_dir():
            self.last = time.monotonic()
            for p in self.folder.iterdir():
                # ".tmp-..." names are records being written: counted once renamed
                if p.name not in self.seen and p.suffix == ".json" and not p.name.startswith("."):
                    try:
                        self.rows += json.loads(p.read_bytes())["rows"]
                    except (OSError, ValueError):
                        continue  # being written: next time
                    self.seen.add(p.name)
        return self.rows


def check_output(out: Path, n: int) -> dict[str, Any]:
    """Every custom_id exactly once: rows, distinct ids, and every id one of the n written."""
    import polars as pl

    ids = pl.scan_parquet(out / "part-*.parquet").select(pl.col("custom_id").str.slice(1).cast(pl.Int64))
    got = ids.select(rows=pl.len(), distinct=pl.col("custom_id").n_unique(),
                     low=pl.col("custom_id").min(), high=pl.col("custom_id").max()).collect().row(0, named=True)
    got["ok"] = got["rows"] == n and got["distinct"] == n and got["low"] == 0 and got["high"] == n - 1
    return got


def measure_order(order: str, requests: Path, n: int, work: Path, kill_at: float) -> dict[str, Any]:
    """Run, kill at about `kill_at` of the rows, rerun to the end, check the output."""
    out = work / f"out-{order}"
    cmd = [python(), "-m", "pipeline", "run", requests, "-o", out, "--engine", "fake", "-m", "smollm2", "-q",
           "--order", order]
    committed, env = CommittedRows(out), base_env(0)
    first_trace: list[tuple[float, int]] = []
    first = run_measured(cmd, log=work / f"log-{order}-1.txt", env=env, trace=first_trace,
                         stop=lambda: committed.count() >= kill_at * n)
    at_kill = CommittedRows(out, every=0).count()
    second_trace: list[tuple[float, int]] = []
    second = run_measured(cmd, log=work / f"log-{order}-2.txt", env=env, trace=second_trace)
    row: dict[str, Any] = {"order": order, "requests": n, "killed": first.as_dict(), "resumed": second.as_dict(),
                           "rows_at_kill": at_kill, "rss_trace_killed": first_trace[::25],
                           "rss_trace_resumed": second_trace[::25]}
    row["peak_rss_bytes"] = max(first.peak_rss_bytes, second.peak_rss_bytes)
    row["total_s"] = first.wall_s + second.wall_s
    if second.rc != 0:
        row["status"] = f"FAILED: the rerun exited {second.rc}: {second.tail(3)}"
        return row
    report = json.loads((out / "_report.json").read_text())
    row["report_resumed"] = report.get("resumed")
    row["check"] = check_output(out, n)
    row["status"] = "ok" if row["check"]["ok"] and first.rc == -9 else (
        f"WRONG: {row['check']}" if not row["check"]["ok"] else f"not killed (first run exit {first.rc})")
    print(f"  --order {order}: killed at {first.wall_s:.0f} s with {at_kill:,} rows committed, resumed in "
          f"{second.wall_s:.0f} s; peak RSS {row['peak_rss_bytes'] / MIB:.0f} MiB; {row['status']}", file=sys.stderr)
    return row


def markdown(result: dict[str, Any]) -> str:
    rows = []
    for r in result["runs"]:
        k, s = r["killed"], r["resumed"]
        rows.append([r["order"], r["requests"], k["wall_s"], r.get("rows_at_kill"), s["wall_s"], r["total_s"],
                     r["requests"] / r["total_s"], k["peak_rss_bytes"] / MIB, s["peak_rss_bytes"] / MIB,
                     "yes" if r["peak_rss_bytes"] <= GIB else "NO", r["status"]])
    return "\n".join([
        "# One very large job, killed at about half and resumed (fake instant engine)", "",
        *([f"**{result['note']}**", ""] if result.get("note") else []),
        f"- When: {result['date']} (UTC); total benchmark time {result['bench_seconds'] / 60:.1f} min",
        f"- Machine: {machine_line(result['machine'])}",
        f"- Versions: {versions_line(result['versions'])}",
        f"- Input: {result['settings']['requests']:,} synthetic OpenAI Batch chat lines, "
        f"{result['settings']['input_bytes'] / GIB:.2f} GiB, written in {result['settings']['write_s']:.0f} s; "
        f"killed (SIGKILL of the process group) once {result['settings']['kill_at']:.0%} of the rows were committed",
        "",
        table(["order", "requests", "killed at s", "rows committed at kill", "resume s", "total s",
               "rows/s (total)", "peak RSS MiB, killed run", "peak RSS MiB, resume", "<= 1 GiB", "status"], rows),
        "",
        "Peak RSS: largest sum of resident memory over the command's process tree (main process and "
        "engine worker), sampled every 0.2 s. Status ok: the rerun exited 0 and the output holds every "
        "custom_id exactly once (rows = distinct ids = requests, ids 0 .. N-1). See bench/README.md.", "",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--requests", type=int, default=20_000_000, help="Requests in the file (default 20M).")
    parser.add_argument("--orders", default="input,prefix", help="Orders to run, comma-separated.")
    parser.add_argument("--kill-at", type=float, default=0.5, help="Share of rows committed at the kill.")
    parser.add_argument("--note", help="A line to print above the results.")
    parser.add_argument("--keep", action="store_true", help=f"Keep the request file, outputs and logs under {WORK}.")
    args = parser.parse_args()

    started = time.monotonic()
    work = WORK / f"scale-{time.strftime('%Y%m%d-%H%M%S')}"
    requests = write_small_requests(work / "requests.jsonl", args.requests)
    settings = {"requests": args.requests, "kill_at": args.kill_at, "input_bytes": requests.stat().st_size,
                "write_s": round(time.monotonic() - started, 1)}
    print(f"{args.requests:,} requests written in {settings['write_s']:.0f} s "
          f"({settings['input_bytes'] / GIB:.2f} GiB)", file=sys.stderr)
    runs = []
    for order in args.orders.split(","):
        runs.append(measure_order(order, requests, args.requests, work, args.kill_at))
        if not args.keep:
            shutil.rmtree(work / f"out-{order}", ignore_errors=True)
    result = {**envelope("scale", args.note, started), "settings": settings, "runs": runs}
    publish("scale", result, markdown(result), "scale_latest.md", work, args.keep)


if __name__ == "__main__":
    main()
