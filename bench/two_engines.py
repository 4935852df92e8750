"""Prefix groups with two engines: is any group split across engines, and do both engines work?

Writes a shuffled documents x questions file (bench/harness.py), runs `pipeline run` on it with
two fake engines (`--engine fake --data-parallel-size 2`, a small delay per engine step so that
the engines fill up as real ones do) in prefix order and in input order, and counts from the
output rows (their `engine` column) the documents whose questions went to both engines, and
the rows each engine answered; the fake engines keep a simulated prefix cache
(`prefix_cache_blocks`, least recently used out), and the report's cache plan gives, per engine,
the prompt share the plan predicted its cache would serve and the share it served.

    python bench/two_engines.py                     # 400 documents x 10 questions
    python bench/two_engines.py --docs 50 --questions 40
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl
from harness import write_doc_requests


def measure(requests: Path, out: Path, order: str, delay: float, cache_blocks: int) -> dict:
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "pipeline", "run", str(requests), "-o", str(out), "-q",
                    "--engine", "fake", "--engine-option", f"step_delay={delay}", "--data-parallel-size", "2",
                    "--engine-option", f"prefix_cache_blocks={cache_blocks}",
                    "--max-in-flight", "64", "--order", order], check=True, capture_output=True)
    wall = time.monotonic() - started
    rows = pl.read_parquet(f"{out}/**/*.parquet").with_columns(doc=pl.col("custom_id").str.slice(0, 8))
    per_doc = rows.group_by("doc").agg(pl.col("engine").n_unique().alias("engines"))
    per_engine = rows.group_by("engine").len().sort("engine")
    plan = json.loads((out / "_report.json").read_text())["cache_plan"]
    return {"order": order, "rows": rows.height, "documents": per_doc.height,
            "documents on both engines": int((per_doc["engines"] > 1).sum()),
            "rows per engine": dict(zip(per_engine["engine"].to_list(), per_engine["len"].to_list(), strict=True)),
            "predicted / served share per engine": ", ".join(
                f"{e['predicted_share']:.0%} / {e['cached_share']:.0%}" for e in plan["engines"]),
            "differs": len(plan["differs"]),
            "wall s": round(wall, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=400)
    parser.add_argument("--questions", type=int, default=10)
    parser.add_argument("--step-delay", type=float, default=0.01, help="seconds per fake engine step")
    parser.add_argument("--cache-blocks", type=int, default=400,
                        help="each fake engine's prefix cache, in blocks of 256 characters")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="two-engines-") as tmp:
        requests = write_doc_requests(Path(tmp) / "docs.jsonl", args.docs, args.questions, doc_words=200,
                                      max_tokens=16)
        print(f"{args.docs} documents x {args.questions} questions, shuffled; two fake engines, "
              f"--max-in-flight 64, {args.step_delay} s per engine step, a prefix cache of {args.cache_blocks} blocks")
        print("| order | rows | documents | documents on both engines | rows per engine "
              "| predicted / served share per engine | engines that differ | wall s |")
        print("|---|---|---|---|---|---|---|---|")
        for order in ("prefix", "input"):
            m = measure(requests, Path(tmp) / order, order, args.step_delay, args.cache_blocks)
            print("| " + " | ".join(str(v) for v in m.values()) + " |")


if __name__ == "__main__":
    main()
