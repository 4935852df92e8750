"""A rerun measured from the state a kill left, rebuilt from a finished job's folder (a chain of
`bench/scale.py --chain --keep`): the folder is copied with only the commit records and parts of
its first K attempts and the K-th attempt's lease (not released, its process gone), which is
exactly what a SIGKILL right after that attempt's last commit leaves (a commit is atomic; parts
written after it have no record and are removed by the rerun). Then the attempt's own command runs
again with today's code (`python -m pipeline`, this checkout), measured as `bench/scale.py`
measures a segment (wall time, first new commit, peak RSS of the process tree), and the output's
ids are checked (every id once, read part by part with pyarrow: parts that an older version wrote
may have other columns).

Use it to measure a change to what a rerun does without rerunning the hours before the kill:

    python bench/rerun_state.py FOLDER --attempts 2          # the rerun after the chain's 2nd kill
    python bench/rerun_state.py FOLDER --attempts 1 --stop-after 200   # its start-up only
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import time
from pathlib import Path

from harness import REPO, machine_info, machine_line, python, run_measured

MIB = 2**20


def rebuild(src: Path, dst: Path, attempts: int) -> dict:
    """dst = src as the kill after its `attempts`-th attempt left it; returns that attempt."""
    manifest = json.loads((src / "_manifest.json").read_text())
    kept = manifest["attempts"][:attempts]
    ids = {a["id"] for a in kept}
    shutil.rmtree(dst, ignore_errors=True)
    (dst / "_commits").mkdir(parents=True)
    (dst / "_lease").mkdir()
    for record in (src / "_commits").iterdir():
        if record.name.split("-")[0] in ids:
            shutil.copy2(record, dst / "_commits" / record.name)
            part = json.loads(record.read_text())["part"]
            shutil.copy2(src / part, dst / part)
    manifest["attempts"] = [{**a, "cutoff": a["cutoff"] if i < attempts - 1 else None} for i, a in enumerate(kept)]
    (dst / "_manifest.json").write_text(json.dumps(manifest, indent=1))
    last = kept[-1]
    lease = json.loads(next((src / "_lease").glob("*.json")).read_text())
    lease.update(token="0" * 32, pid=last["pid"], released=False,
                 started=time.mktime(time.strptime(last["started"], "%Y-%m-%dT%H:%M:%SZ")))
    (dst / "_lease" / f"{last['lease']}.json").write_text(json.dumps(lease))
    return last


def check_ids(out: Path) -> dict:
    import pyarrow.parquet as pq

    ids: set[str] = set()
    rows = 0
    for part in sorted(out.glob("part-*.parquet")):
        got = pq.read_table(part, columns=["custom_id"]).column("custom_id").to_pylist()
        rows += len(got)
        ids.update(got)
    return {"rows": rows, "distinct": len(ids), "low": min(ids), "high": max(ids)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="A finished job's output folder (a chain's, kept).")
    parser.add_argument("--attempts", type=int, required=True, help="Keep the first K attempts: the Kth was killed.")
    parser.add_argument("--work", type=Path, default=Path("/tmp/rerun-state"), help="Where the copy goes.")
    parser.add_argument("--stop-after", type=float, help="Kill the rerun after this many seconds (start-up only).")
    args = parser.parse_args()
    out = args.work / "out"
    last = rebuild(args.folder, out, args.attempts)
    before = len(list((out / "_commits").iterdir()))
    cmd = shlex.split(last["command"])
    cmd[cmd.index("--output") + 1] = str(out)
    cmd = [python(), "-m", "pipeline", *cmd[1:]]
    trace: list[tuple[float, int]] = []
    m = run_measured(cmd, log=args.work / "log.txt", trace=trace, interval=1.0, timeout=args.stop_after, cwd=REPO)
    records = sorted(p.stat().st_mtime for p in (out / "_commits").iterdir())
    first = round(records[before] - m.started_at, 1) if len(records) > before else None
    result = {"machine": machine_line(machine_info()), "attempts_kept": args.attempts, "records_before": before,
              "records_after": len(records), "first_new_commit_s": first, "run": m.as_dict(),
              "rss_trace": trace[::5], "ids": check_ids(out) if m.rc == 0 else None}
    (args.work / "result.json").write_text(json.dumps(result, indent=1))
    print(f"rerun after attempt {args.attempts}: exit {m.rc}, {m.wall_s:.0f} s, first new commit at {first} s, "
          f"peak RSS {m.peak_rss_bytes / MIB:.0f} MiB, load before {m.load_before}; "
          f"records {before} -> {len(records)}; ids {result['ids']}", file=sys.stderr)


if __name__ == "__main__":
    main()
