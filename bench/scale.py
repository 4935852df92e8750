"""`make bench-scale`: one very large job with the fake engine, killed at about half and resumed.

N small synthetic requests (default 20,000,000) are written as one JSON-lines file, streamed.
For each order (`--order input`, `--order prefix`) `pipeline run FILE --engine fake` runs once
uninterrupted (what a first run costs), then, for each share of `--kill-at` (default 50% and
90%, counted from the commit records), in a fresh output folder until that share is committed,
when the whole process group is killed with SIGKILL, as a machine loss would end it. The same
command then runs again and must finish (exit 0); its wall time over the uninterrupted run's
is the rerun cost (issue #32: about 1 - kill share, plus start-up). The output must hold every
custom_id exactly once: N rows, N distinct ids, each of `r0000000000` .. `r{N-1}` (read back
with polars, outside the measured processes). Peak RSS is sampled over each command's whole
process tree every 0.2 s (harness.run_measured).

With `--chain` (what `make bench-scale` runs) there is one job per order and one output folder:
killed at the first share, rerun and killed at the next, rerun to the end, each process a
segment with its wall time and peak RSS. No separate uninterrupted run: its cost is estimated
from the first segment (wall time x N / rows committed at its kill), and the rerun cost after
the last kill is the last segment's wall time over that estimate. The ids are checked once, at
the end. About a third of the time of the runs above at 20M. Each segment is written to
`segments-<order>-chain.json` in the work folder as soon as it ends, so a bench process that dies
leaves what it measured.

    python bench/scale.py --chain --orders auto    # make bench-scale: one chained 20M job, the default order
    python bench/scale.py                          # 20M requests, both orders (hours on 2 cores)
    python bench/scale.py --requests 1000000       # a quick check (a few minutes)
    python bench/scale.py --requests 1000000 --orders input --baseline-code /path/to/older/checkout
"""

from __future__ import annotations

import argparse
import json
import os
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


class Progress:
    """A segment's `stop`: rows committed (every record in the folder, earlier segments' too)
    against `kill_rows` (None: never stop); notes when the first row past `before` was committed
    (start-up, and on a rerun what it skips), rows every 10 s and the 1-minute load every 30 s."""

    def __init__(self, out: Path, before: int, kill_rows: float | None):
        self.committed, self.before, self.kill_rows = CommittedRows(out), before, kill_rows
        self.start, self.first_commit_s = time.monotonic(), None
        self.trace: list[tuple[float, int]] = []
        self.load: list[tuple[float, float]] = []

    def __call__(self) -> bool:
        rows, t = self.committed.count(), round(time.monotonic() - self.start, 1)
        if self.first_commit_s is None and rows > self.before:
            self.first_commit_s = t
        if not self.trace or (rows != self.trace[-1][1] and t - self.trace[-1][0] >= 10):
            self.trace.append((t, rows))
        if not self.load or t - self.load[-1][0] >= 30:
            self.load.append((t, round(os.getloadavg()[0], 2)))
        return self.kill_rows is not None and rows >= self.kill_rows


def check_output(out: Path, n: int) -> dict[str, Any]:
    """Every custom_id exactly once: rows, distinct ids, and every id one of the n written."""
    import polars as pl

    ids = pl.scan_parquet(out / "part-*.parquet").select(pl.col("custom_id").str.slice(1).cast(pl.Int64))
    got = ids.select(rows=pl.len(), distinct=pl.col("custom_id").n_unique(),
                     low=pl.col("custom_id").min(), high=pl.col("custom_id").max()).collect().row(0, named=True)
    got["ok"] = got["rows"] == n and got["distinct"] == n and got["low"] == 0 and got["high"] == n - 1
    return got


def measure_order(order: str, requests: Path, n: int, work: Path, kills: list[float],
                  code: Path | None = None) -> dict[str, Any]:
    """An uninterrupted run (the first run's cost), then for each share in `kills`: a run killed
    once that share of the rows is committed and its rerun to the end, the output checked.
    `code`: run that checkout's pipeline instead (the baseline of an older version)."""
    env = base_env(0)
    if code is not None:
        env["PYTHONPATH"] = str(code)
    tag = f"{order}{'-base' if code else ''}"
    cmd = [python(), "-m", "pipeline", "run", requests, "-o", work / f"out-{tag}", "--engine", "fake", "-m",
           "smollm2", "-q", "--order", order]
    full = run_measured(cmd, log=work / f"log-{tag}-full.txt", env=env)
    row: dict[str, Any] = {"order": order, "requests": n, "code": str(code or "this checkout"),
                           "full": full.as_dict(), "kills": []}
    shutil.rmtree(work / f"out-{tag}", ignore_errors=True)
    for kill_at in kills:
        row["kills"].append(killed_and_rerun(cmd, work / f"out-{tag}", n, work / f"log-{tag}-{kill_at}", env,
                                             kill_at, full.wall_s))
        shutil.rmtree(work / f"out-{tag}", ignore_errors=True)
    row["peak_rss_bytes"] = max([full.peak_rss_bytes] + [k["peak_rss_bytes"] for k in row["kills"]])
    row["status"] = "ok" if full.rc == 0 and all(k["status"] == "ok" for k in row["kills"]) else "FAILED"
    return row


def killed_and_rerun(cmd: list, out: Path, n: int, log: Path, env: dict[str, str], kill_at: float,
                     full_s: float) -> dict[str, Any]:
    """Kill the run once `kill_at` of the rows are committed, rerun it to the end, check the output."""
    committed = CommittedRows(out)
    trace: list[tuple[float, int]] = []
    first = run_measured(cmd, log=log.with_suffix(".1.txt"), env=env, trace=trace,
                         stop=lambda: committed.count() >= kill_at * n)
    at_kill = CommittedRows(out, every=0).count()
    second = run_measured(cmd, log=log.with_suffix(".2.txt"), env=env)
    row: dict[str, Any] = {"kill_at": kill_at, "killed": first.as_dict(), "resumed": second.as_dict(),
                           "rows_at_kill": at_kill, "rss_trace_killed": trace[::25],
                           "peak_rss_bytes": max(first.peak_rss_bytes, second.peak_rss_bytes),
                           "rerun_share_of_full": second.wall_s / full_s}
    if second.rc != 0:
        row["status"] = f"FAILED: the rerun exited {second.rc}: {second.tail(3)}"
        return row
    row["report_resumed"] = json.loads((out / "_report.json").read_text()).get("resumed")
    row["check"] = check_output(out, n)
    row["status"] = "ok" if row["check"]["ok"] and first.rc == -9 else (
        f"WRONG: {row['check']}" if not row["check"]["ok"] else f"not killed (first run exit {first.rc})")
    print(f"  killed at {first.wall_s:.0f} s with {at_kill:,} rows committed ({at_kill / n:.0%}), rerun "
          f"{second.wall_s:.1f} s = {row['rerun_share_of_full']:.1%} of an uninterrupted run ({full_s:.1f} s); "
          f"{row['status']}", file=sys.stderr)
    return row


def chained(order: str, requests: Path, n: int, work: Path, kills: list[float]) -> dict[str, Any]:
    """One job, one output folder: killed (SIGKILL of the process group) once each share in `kills`
    is committed, rerun after each kill, the last rerun to the end; every id once at the end.

    What an uninterrupted run would cost is estimated from the first segment, which is one:
    est = its wall time x N / rows committed at its kill (start-up counted in, scaled with it).
    The rerun cost after the last kill = the last segment's wall time / est."""
    out, tag = work / f"out-{order}-chain", f"{order}-chain"
    cmd = [python(), "-m", "pipeline", "run", requests, "-o", out, "--engine", "fake", "-m",
           "smollm2", "-q", "--order", order]
    segments: list[dict[str, Any]] = []
    before = 0
    for i, kill_at in enumerate([*kills, None]):
        trace: list[tuple[float, int]] = []
        progress = Progress(out, before, None if kill_at is None else kill_at * n)
        m = run_measured(cmd, log=work / f"log-{tag}-{i}.txt", env=base_env(0), trace=trace, stop=progress)
        rows = CommittedRows(out, every=0).count()
        report = json.loads((out / "_report.json").read_text()) if kill_at is None and m.rc == 0 else {}
        first = progress.first_commit_s
        segments.append({"kill_at": kill_at, "run": m.as_dict(), "rows_committed_before": before,
                         "rows_committed_after": rows, "first_new_commit_s": first,
                         "rows_per_s_after_first_commit": round((rows - before) / (m.wall_s - first), 1)
                         if first is not None and m.wall_s > first else None,
                         "rows_trace": progress.trace, "os_load_trace": progress.load,
                         "rss_at_end_bytes": trace[-1][1] if trace else 0, "rss_trace": trace[::25],
                         "report_order": report.get("order"), "report_order_auto": report.get("order_auto"),
                         "report_resumed": report.get("resumed")})
        print(f"  segment {i + 1}: {m.wall_s:.0f} s, exit {m.rc}, {rows:,} rows committed ({rows / n:.0%}), "
              f"first new commit at {first} s, peak RSS {m.peak_rss_bytes / MIB:.0f} MiB", file=sys.stderr)
        # Each finished segment on disk at once: if this process dies (its runs go on in their own
        # session), what it measured so far survives in the work folder.
        (work / f"segments-{tag}.json").write_text(json.dumps(segments, indent=1) + "\n")
        before = rows
    return chain_summary(order, n, segments, check_output(out, n) if segments[-1]["run"]["rc"] == 0 else None)


def chain_summary(order: str, n: int, segments: list[dict[str, Any]], check: dict[str, Any] | None) -> dict[str, Any]:
    """The figures of a chained run: estimated uninterrupted cost, rerun costs, peak RSS, the check."""
    first, last = segments[0], segments[-1]
    estimate = first["run"]["wall_s"] * n / max(1, first["rows_committed_after"])
    killed_ok = all(s["run"]["rc"] == -9 for s in segments[:-1])
    ok = bool(check and check["ok"]) and killed_ok and last["run"]["rc"] == 0
    row = {"order": order, "requests": n, "mode": "chain", "segments": segments, "check": check,
           "estimated_uninterrupted_s": round(estimate, 1),
           "estimate_how": "first segment's wall time x requests / rows committed at its kill",
           "rerun_share_of_estimate": [round(s["run"]["wall_s"] / estimate, 4) for s in segments[1:]],
           "total_s": round(sum(s["run"]["wall_s"] for s in segments), 1),
           "peak_rss_bytes": max(s["run"]["peak_rss_bytes"] for s in segments),
           "status": "ok" if ok else chain_failure(segments, check)}
    print(f"  estimated uninterrupted {estimate:.0f} s; last rerun {last['run']['wall_s']:.0f} s = "
          f"{row['rerun_share_of_estimate'][-1]:.1%} of it; {row['status']}", file=sys.stderr)
    return row


def mean_load(segment: dict[str, Any]) -> float | None:
    loads = [v for _, v in segment.get("os_load_trace") or []]
    return round(sum(loads) / len(loads), 1) if loads else None


def chain_failure(segments: list[dict[str, Any]], check: dict[str, Any] | None) -> str:
    for i, s in enumerate(segments[:-1], 1):
        if s["run"]["rc"] != -9:
            return (f"FAILED: segment {i} was not killed (exit {s['run']['rc']}): the job "
                    f"{'ended' if s['run']['rc'] == 0 else 'failed'} before {s['kill_at']:.0%} was counted")
    if segments[-1]["run"]["rc"] != 0:
        return f"FAILED: the last rerun exited {segments[-1]['run']['rc']}"
    return f"WRONG: {check}"


def chain_markdown(r: dict[str, Any]) -> list[str]:
    seg = r["segments"]
    rows = [[i + 1, f"{s['kill_at']:.0%}" if s["kill_at"] is not None else "end",
             s["rows_committed_after"], s["run"]["wall_s"],
             "–" if i == 0 else f"{s['run']['wall_s'] / r['estimated_uninterrupted_s']:.1%}",
             s["run"]["peak_rss_bytes"] / MIB, s.get("first_new_commit_s"), s.get("rows_per_s_after_first_commit"),
             mean_load(s)] for i, s in enumerate(seg)]
    resolved = seg[-1].get("report_order") or "?"
    return [
        f"### One job chained: order {r['order']} (resolved to: {resolved}), {r['requests']:,} requests", "",
        table(["segment", "killed at", "rows committed after", "wall s", "wall / estimated uninterrupted",
               "peak RSS MiB", "first new commit s", "rows/s after it", "mean 1-min load"], rows), "",
        "First new commit: seconds from the segment's start to its first commit record (start-up; on a "
        "rerun also what it skips or reads past). Mean load: the 1-minute load average every 30 s (2 cores).", "",
        f"- Estimated uninterrupted run: **{r['estimated_uninterrupted_s']:,.0f} s** = segment 1's wall time x "
        f"{r['requests']:,} / the rows committed at its kill (start-up scaled with it; segment 1 is an "
        "uninterrupted run up to its kill)",
        f"- Rerun after the last kill: **{r['rerun_share_of_estimate'][-1]:.1%}** of the estimated uninterrupted run",
        f"- The whole job: {r['total_s']:,.0f} s over {len(seg)} processes; peak RSS "
        f"**{r['peak_rss_bytes'] / MIB:.0f} MiB** (largest over the segments)",
        f"- Every id once (polars, after the last segment): {r['check']}; status **{r['status']}**", ""]


def markdown(result: dict[str, Any]) -> str:
    rows = []
    for r in result["runs"]:
        for k in r.get("kills", []):
            rows.append([r["order"], r["code"], r["requests"], r["full"]["wall_s"], k["rows_at_kill"],
                         k["killed"]["wall_s"], k["resumed"]["wall_s"], f"{k['rerun_share_of_full']:.1%}",
                         k["resumed"]["peak_rss_bytes"] / MIB, k["status"]])
    return "\n".join([
        "# One very large job, killed and resumed (fake instant engine)", "",
        *([f"**{result['note']}**", ""] if result.get("note") else []),
        f"- When: {result['date']} (UTC); total benchmark time {result['bench_seconds'] / 60:.1f} min",
        f"- Machine: {machine_line(result['machine'])}",
        f"- Versions: {versions_line(result['versions'])}",
        f"- Input: {result['settings']['requests']:,} synthetic OpenAI Batch chat lines, "
        f"{result['settings']['input_bytes'] / GIB:.2f} GiB, written in {result['settings']['write_s']:.0f} s; "
        "each run killed (SIGKILL of the process group) once the share of rows in the table was committed",
        "",
        *([table(["order", "code", "requests", "uninterrupted run s", "rows committed at kill", "killed at s",
                  "rerun s", "rerun / uninterrupted", "peak RSS MiB, rerun", "status"], rows), ""] if rows else []),
        *[line for r in result["runs"] if r.get("mode") == "chain" for line in chain_markdown(r)],
        *(["Rerun / uninterrupted: the rerun's wall time (start-up included) over that of the same command "
           "run once without a kill."] if rows else []),
        "Peak RSS: largest sum of resident memory over the command's process "
        "tree, sampled every 0.2 s. Status ok: the rerun exited 0 and the output holds every custom_id "
        "exactly once (rows = distinct ids = requests, ids 0 .. N-1). See bench/README.md.", "",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--requests", type=int, default=20_000_000, help="Requests in the file (default 20M).")
    parser.add_argument("--orders", default="input,prefix", help="Orders to run, comma-separated.")
    parser.add_argument("--kill-at", default="0.5,0.9", help="Shares of rows committed at the kills, comma-separated.")
    parser.add_argument("--chain", action="store_true",
                        help="One job per order, killed at each --kill-at share in turn and rerun, the last "
                             "rerun to the end; no separate uninterrupted run (its cost estimated from the first "
                             "segment). Order auto is today's default.")
    parser.add_argument("--baseline-code", type=Path, help="Also run this checkout's pipeline (e.g. an older version).")
    parser.add_argument("--note", help="A line to print above the results.")
    parser.add_argument("--keep", action="store_true", help=f"Keep the request file, outputs and logs under {WORK}.")
    args = parser.parse_args()

    started = time.monotonic()
    work = WORK / f"scale-{time.strftime('%Y%m%d-%H%M%S')}"
    requests = write_small_requests(work / "requests.jsonl", args.requests)
    kills = [float(k) for k in args.kill_at.split(",")]
    settings = {
        "requests": args.requests,
        "kill_at": kills,
        "chain": args.chain,
        "input_bytes": requests.stat().st_size,
        "write_s": round(time.monotonic() - started, 1),
    }
    print(
        f"{args.requests:,} requests written in {settings['write_s']:.0f} s ({settings['input_bytes'] / GIB:.2f} GiB)",
        file=sys.stderr,
    )
    runs = []
    for order in args.orders.split(","):
        if args.chain:
            runs.append(chained(order, requests, args.requests, work, kills))
            continue
        for code in ([args.baseline_code] if args.baseline_code else []) + [None]:
            runs.append(measure_order(order, requests, args.requests, work, kills, code))
    result = {**envelope("scale", args.note, started), "settings": settings, "runs": runs}
    publish("scale", result, markdown(result), "scale_latest.md", work, args.keep)


if __name__ == "__main__":
    main()
