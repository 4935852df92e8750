"""Identical sampled prompts sent as one request with `n` (issue #32; pipeline/engines/sampled.py):
`pipeline run` on a workload with repeats, merged (the default) against `--no-identical-once`.

The workload: `--prompts` distinct chat prompts (a 60–120-word preamble and a question, seeded),
each `--samples` times as separate rows at temperature 0.8 (as RL rollouts or self-consistency
jobs send them), written in input order with the copies side by side. Two engines:

- `vllm`: the real engine (the embedded SmolLM2 on CPU, `--model` otherwise), few rows; the
  time that counts is from the engine up (`engine N ready` in the -v log) to `_SUCCESS`;
- `fake`: the instant fake engine, many rows: what the pipeline itself saves per request.

Runs alternate (merged, off, merged, off, ...) so that drift in the machine hits both alike; the
table gives medians. Results: bench/results/sampled_<time>_<machine>.json and sampled_latest.md.

    python bench/sampled.py                                    # both engines, the defaults
    python bench/sampled.py --engines vllm --prompts 4 --samples 8 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import polars as pl
from harness import (
    RESULTS,
    base_env,
    envelope,
    machine_line,
    median,
    publish,
    python,
    run_measured,
    table,
    versions_line,
)

WORDS = ("river stone market signal harvest lantern orbit ledger meadow copper archive")


def write_requests(path: Path, prompts: int, samples: int, max_tokens: int, seed: int = 0) -> Path:
    """prompts x samples chat lines at temperature 0.8, copies of a prompt side by side."""
    rng, words = random.Random(seed), WORDS.split()
    lines = []
    for p in range(prompts):
        preamble = " ".join(rng.choice(words) for _ in range(rng.randint(60, 120)))
        content = f"{preamble}\n\nQuestion {p}: write a short story that uses three of these words."
        for s in range(samples):
            body = {"model": "smollm2", "messages": [{"role": "user", "content": content}],
                    "temperature": 0.8, "max_tokens": max_tokens}
            lines.append(json.dumps({"custom_id": f"p{p}-s{s}", "method": "POST", "url": "/v1/chat/completions",
                                     "body": body}))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def measure(engine: str, mode: str, requests: Path, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    shutil.rmtree(out, ignore_errors=True)  # a kept earlier run's output would make this one a no-op
    cmd = [python(), "-m", "pipeline", "-v", "run", requests, "-o", out / "out", "-q", "--engine", engine,
           "-m", args.model, "--data-parallel-size", "1", *(["--no-identical-once"] if mode == "off" else [])]
    if engine == "vllm":
        cmd += ["--max-model-len", "1024"]
    m = run_measured(cmd, log=out / "log.txt", env=base_env(0), ready=r"engine \d+ ready", timeout=args.timeout)
    if m.rc != 0:
        sys.exit(f"{engine} {mode} failed (exit {m.rc}):\n{m.tail()}")
    report = json.loads((out / "out" / "_report.json").read_text())
    done_s = (out / "out" / "_SUCCESS").stat().st_mtime - m.started_at
    rows = pl.read_parquet(f"{out}/out/*.parquet", columns=["custom_id", "choices", "error"])
    after = done_s - m.ready_s if m.ready_s is not None else None
    ident = report["identical"]
    return {"engine": engine, "mode": mode, "rows": rows.height, "errors": int(rows["error"].is_not_null().sum()),
            "wall_s": m.wall_s, "ready_s": m.ready_s, "done_s": round(done_s, 2),
            "after_ready_s": None if after is None else round(after, 2),
            "rows_per_s_after_ready": None if not after else round(rows.height / after, 2),
            "requests_sent": rows.height - ident["sampled_rows_merged"] + ident["sampled_merged_requests"],
            "prompt_tokens_billed": report["prompt_tokens"], "cached_tokens": report["cached_tokens"],
            "completion_tokens": report["completion_tokens"],
            "prompt_tokens_sent_once": ident["sampled_prompt_tokens_sent_once"],
            "peak_rss_mib": round(m.peak_rss_bytes / 2**20), "load_before": m.load_before}


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Medians per engine and mode."""
    keys = sorted({(r["engine"], r["mode"]) for r in runs})
    out = []
    for engine, mode in keys:
        mine = [r for r in runs if r["engine"] == engine and r["mode"] == mode]
        out.append({"engine": engine, "mode": mode, "runs": len(mine),
                    **{k: median([r[k] for r in mine]) for k in mine[0] if k not in ("engine", "mode")}})
    return out


def markdown(result: dict[str, Any]) -> str:
    s, w = result["summary"], result["workload"]
    headers = ["engine", "mode", "runs", "rows", "requests sent", "wall s", "engine up s", "after engine up s",
               "rows/s after up", "prompt tokens billed", "cached tokens", "prompt tokens sent once", "peak RSS MiB"]
    rows = [[r["engine"], r["mode"], r["runs"], r["rows"], r["requests_sent"], r["wall_s"], r["ready_s"],
             r["after_ready_s"], r["rows_per_s_after_ready"], r["prompt_tokens_billed"], r["cached_tokens"],
             r["prompt_tokens_sent_once"], r["peak_rss_mib"]] for r in s]
    lines = [f"# Identical sampled prompts sent with n: merged vs --no-identical-once ({result['date']} UTC)", "",
             f"- machine: {machine_line(result['machine'])}", f"- versions: {versions_line(result['versions'])}",
             f"- workload: {json.dumps(w)}; medians over the runs, alternating merged and off", "",
             table(headers, rows), ""]
    for engine in sorted({r["engine"] for r in s}):
        by = {r["mode"]: r for r in s if r["engine"] == engine}
        if "merged" in by and "off" in by and by["merged"]["after_ready_s"] and by["off"]["after_ready_s"]:
            lines.append(f"{engine}: off / merged, time after the engine is up: "
                         f"{by['off']['after_ready_s'] / by['merged']['after_ready_s']:.2f}x; wall: "
                         f"{by['off']['wall_s'] / by['merged']['wall_s']:.2f}x")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("--engines", default="vllm,fake", help="Comma-separated: vllm, fake (default both).")
    parser.add_argument("--model", default="smollm2", help="Model of the vllm engine (default: the embedded smollm2).")
    parser.add_argument("--prompts", type=int, default=16, help="vllm: distinct prompts (default 16).")
    parser.add_argument("--samples", type=int, default=8, help="Rows per prompt (default 8).")
    parser.add_argument("--max-tokens", type=int, default=32, help="vllm: max_tokens of each row (default 32).")
    parser.add_argument("--fake-prompts", type=int, default=12500, help="fake: distinct prompts (default 12,500: "
                        "100,000 rows at 8 samples).")
    parser.add_argument("--repeats", type=int, default=2, help="Runs of each mode per engine (default 2).")
    parser.add_argument("--timeout", type=float, default=1800, help="Seconds before a run is killed.")
    parser.add_argument("--keep", action="store_true", help="Keep request files, outputs and logs.")
    args = parser.parse_args()
    started = time.monotonic()
    work = RESULTS / "tmp" / "sampled"
    runs = []
    for engine in args.engines.split(","):
        prompts = args.prompts if engine == "vllm" else args.fake_prompts
        requests = write_requests(work / engine / "requests.jsonl", prompts, args.samples, args.max_tokens)
        for repeat in range(args.repeats):
            for mode in ("merged", "off"):
                run = measure(engine, mode, requests, work / engine / f"{mode}-{repeat}", args)
                print(f"  [{engine}] {mode} #{repeat}: {run['wall_s']:.1f} s, {run['requests_sent']} requests "
                      f"for {run['rows']} rows, after engine up {run['after_ready_s']} s", file=sys.stderr)
                runs.append({**run, "repeat": repeat})
    result = {**envelope("sampled", None, started),
              "workload": {"samples": args.samples, "vllm_prompts": args.prompts, "vllm_max_tokens": args.max_tokens,
                           "fake_prompts": args.fake_prompts, "temperature": 0.8},
              "summary": summarize(runs), "runs": runs}
    publish("sampled", result, markdown(result), "sampled_latest.md", work, args.keep)


if __name__ == "__main__":
    main()
