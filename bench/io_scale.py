"""`make bench-io`: reading, validating and writing at scale, with the instant fake engine.

N synthetic requests (and N/10, to show that peak memory does not grow with the input) go
through `pipeline validate`, `pipeline estimate` and `pipeline run --engine fake` (in prefix
order, the default, and in input order), each as its own process; wall time, rows/s and the peak resident memory of the whole process tree
(sampled every 0.2 s) are reported.

    python bench/io_scale.py                      # 100k and 1M requests
    python bench/io_scale.py --requests 20000     # 2k and 20k: a quick check
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
    write_requests,
)

MIB = 2**20


def steps(model: str, requests: Path, out: Path) -> dict[str, list[Any]]:
    pipeline = [python(), "-m", "pipeline"]
    return {
        "validate": [*pipeline, "validate", requests],
        "estimate": [*pipeline, "estimate", "-m", model, "--json", requests],
        **{f"run (fake engine, --order {how})": [*pipeline, "run", requests, "-o", out / how, "--engine", "fake",
                                                 "-m", model, "-q", "--order", how] for how in ("prefix", "input")},
    }


def measure_size(n: int, model: str, work: Path, keep: bool) -> list[dict[str, Any]]:
    t0 = time.monotonic()
    requests = write_requests(work / f"requests-{n}.jsonl", n, max_tokens=16)
    print(f"{n} requests written in {time.monotonic() - t0:.1f} s ({requests.stat().st_size / MIB:.0f} MiB)",
          file=sys.stderr)
    env = base_env(0)
    results = []
    for name, cmd in steps(model, requests, work / f"out-{n}").items():
        m = run_measured(cmd, log=work / f"log-{n}-{name.split()[0]}-{name.split()[-1].rstrip(')')}.txt", env=env)
        row: dict[str, Any] = {"step": name, "requests": n, "input_bytes": requests.stat().st_size, **m.as_dict()}
        if m.rc != 0 and name == "estimate":
            row["status"] = "skipped: the command failed (" + (m.tail(1).strip() or f"exit {m.rc}")[:200] + ")"
        elif m.rc != 0 and not (name == "validate" and m.rc == 1):
            row["status"] = f"FAILED (exit {m.rc}): {m.tail(3)}"
        else:
            row["status"] = "ok"
            row["rows_per_s"] = n / m.wall_s
        if name.startswith("run") and m.rc == 0:
            report = json.loads((work / f"out-{n}" / name.split()[-1].rstrip(")") / "_report.json").read_text())
            row["rows_written"] = report["requests"]
            if report["requests"] != n:
                row["status"] = f"wrong: {report['requests']} rows written for {n} requests"
        print(f"  {name} x {n}: {m.wall_s:.1f} s, peak RSS {m.peak_rss_bytes / MIB:.0f} MiB, {row['status']}",
              file=sys.stderr)
        results.append(row)
    if not keep:
        requests.unlink()
        shutil.rmtree(work / f"out-{n}", ignore_errors=True)
    return results


def growth(runs: list[dict[str, Any]], sizes: list[int]) -> dict[str, float | None]:
    """Peak RSS at the largest size over peak RSS at the smallest, per step."""
    out = {}
    for step in dict.fromkeys(r["step"] for r in runs):
        by = {r["requests"]: r for r in runs if r["step"] == step and r["status"] == "ok"}
        small, big = by.get(sizes[0]), by.get(sizes[-1])
        out[step] = big["peak_rss_bytes"] / small["peak_rss_bytes"] if small and big and len(sizes) > 1 else None
    return out


def markdown(result: dict[str, Any]) -> str:
    rows = [[r["step"], r["requests"], r["input_bytes"] / MIB, r["wall_s"], r.get("rows_per_s"),
             r["peak_rss_bytes"] / MIB, r["load_before"], r["status"]] for r in result["runs"]]
    sizes = result["settings"]["sizes"]
    grow = ", ".join(f"{step} {g:.2f}x" for step, g in result["peak_rss_growth"].items() if g is not None)
    return "\n".join([
        "# I/O and scale benchmark (fake instant engine)",
        "",
        *([f"**{result['note']}**", ""] if result.get("note") else []),
        f"- When: {result['date']} (UTC); total benchmark time {result['bench_seconds'] / 60:.1f} min",
        f"- Machine: {machine_line(result['machine'])}",
        f"- Versions: {versions_line(result['versions'])}",
        f"- Input: synthetic OpenAI Batch JSONL (chat requests, ~{result['settings']['bytes_per_request']:.0f} "
        f"bytes each), model `{result['settings']['model']}` for estimate and run",
        "",
        table(["step", "requests", "input MiB", "wall s", "rows/s", "peak RSS MiB (process tree)", "load before",
               "status"], rows),
        "",
        f"Peak memory at {sizes[-1]:,} vs {sizes[0]:,} requests ({sizes[-1] // sizes[0]}x the input): "
        + (grow or "not measured") + ".",
        "",
        "Wall time is the whole process (start-up included); rows/s = requests / wall time. Peak RSS is the "
        "largest sum of resident memory over the command's process tree (main process and engine worker) "
        "in samples every 0.2 s. See bench/README.md.",
        "",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--requests", type=int, default=1_000_000,
                        help="The large size; the small one is a tenth of it (default 1,000,000).")
    parser.add_argument("--model", default="smollm2", help="Model for estimate and run (tokenizer only).")
    parser.add_argument("--note", help="A line to print above the results, e.g. 'small trial run'.")
    parser.add_argument("--keep", action="store_true", help=f"Keep request files, outputs and logs under {WORK}.")
    args = parser.parse_args()

    started = time.monotonic()
    work = WORK / f"io-{time.strftime('%Y%m%d-%H%M%S')}"
    sizes = sorted({max(1, args.requests // 10), args.requests})
    runs = [r for n in sizes for r in measure_size(n, args.model, work, args.keep)]
    result = {
        **envelope("io_scale", args.note, started),
        "settings": {"sizes": sizes, "model": args.model,
                     "bytes_per_request": runs[-1]["input_bytes"] / sizes[-1]},
        "peak_rss_growth": growth(runs, sizes),
        "runs": runs,
    }
    publish("io", result, markdown(result), "io_latest.md", work, args.keep)


if __name__ == "__main__":
    main()
