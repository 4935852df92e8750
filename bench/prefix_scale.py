"""Part of `make bench-scale` (alone: `make bench-prefix`): prefix sharing at scale, the four
orders side by side in one run, on a shuffled documents × questions file (`order_stream.py`'s:
20 questions per document of about 100 words, ~1 KB a request, so N / 20 documents).

For each size and each order (`--order prefix`: the first buffer sent sorted, the rest through
key ranges on disk; `stream`: the bounded look-ahead, the `prefix` of before issue #32; `sorted`;
`input`), `pipeline run FILE --engine fake --block-size 16 --order ORDER` runs as its own process
and reports:

- time to first request: from the process's launch until the fake engine receives its first
  request (it writes the time, `first_request_file`);
- share reusable: the run's report's `shared_in_emitted_order` (whole 16-token KV blocks each
  request shares with the one before it, tokens estimated at 4 characters;
  `pipeline.intake.order.reusable_share`), and that share over the full sort's (`sorted`'s run
  at the same size, or, where that run is stopped at its first request, the file's keys sorted
  in this process: what `--order sorted` emits);
- peak RSS of the whole process tree (sampled every 0.2 s) and wall time.

    python bench/prefix_scale.py                                   # 1M requests, all four orders
    python bench/prefix_scale.py --requests 1000000,3000000 --first-only sorted
    python bench/prefix_scale.py --requests '' --keys-only 10000000   # shares alone at 10M, in process
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import order_stream
from harness import WORK, envelope, machine_line, publish, table, versions_line

MIB = 2**20
ORDERS = ("prefix", "stream", "sorted", "input")


def sorted_share(n: int, questions: int) -> float:
    """The full sort's share of the file's requests (their keys sorted, in this process)."""
    from pipeline.intake.order import prefix_key, reusable_share
    from pipeline.records import Request

    keys = sorted(prefix_key(Request.chat(cid, "docs.jsonl", i + 1, messages))
                  for i, (cid, messages) in enumerate(order_stream.doc_rows(n, questions)))
    return reusable_share(keys, order_stream.KV_BLOCK_TOKENS)


def keys_only(n: int, questions: int, buffer: int) -> list[dict[str, Any]]:
    """The shares the orders give, from the file's keys alone, in this process (for sizes whose
    runs take too long): input; prefix = the first `buffer` keys sorted, then the rest sorted
    (what `--order prefix` emits, tests/unit/intake/test_buckets.py); sorted = all keys sorted."""
    from pipeline.intake.order import prefix_key, reusable_share
    from pipeline.records import Request

    t0 = time.monotonic()
    keys = [prefix_key(Request.chat(cid, "docs.jsonl", i + 1, messages))
            for i, (cid, messages) in enumerate(order_stream.doc_rows(n, questions))]
    block = order_stream.KV_BLOCK_TOKENS
    shares = {"input": reusable_share(keys, block),
              "prefix": reusable_share([*sorted(keys[:buffer]), *sorted(keys[buffer:])], block)}
    keys.sort()
    shares["sorted"] = reusable_share(keys, block)
    seconds = time.monotonic() - t0
    out = [{"requests": n, "order": how, "look_ahead": buffer if how == "prefix" else None,
            "shared_in_emitted_order": share, "of_full_sort": share / shares["sorted"], "seconds": seconds}
           for how, share in shares.items()]
    for r in out:
        print(f"  keys only x {n}: {r['order']}: {100 * r['shared_in_emitted_order']:.2f}% "
              f"({100 * r['of_full_sort']:.1f}% of the full sort's)", file=sys.stderr)
    return out


def measure(n: int, questions: int, model: str, orders: tuple[str, ...], first_only: tuple[str, ...],
            work: Any) -> list[dict[str, Any]]:
    runs = order_stream.runs(n, questions, model, work, first_only, orders)
    full = next((r["shared_in_emitted_order"] for r in runs if r["order"] == "sorted"
                 and r["shared_in_emitted_order"] is not None), None)
    if full is None:
        t0 = time.monotonic()
        full = sorted_share(n, questions)
        print(f"  the full sort's share x {n}, keys sorted in process: {100 * full:.1f}% "
              f"({time.monotonic() - t0:.0f} s)", file=sys.stderr)
    for r in runs:
        share = r["shared_in_emitted_order"]
        r["full_sort_share"] = full
        r["of_full_sort"] = None if share is None or not full else share / full
    return runs


def markdown(result: dict[str, Any]) -> str:
    rows = [[r["requests"], r["order"], r["first_request_s"],
             "stopped at first request" if r["stopped_at_first_request"] else r["wall_s"],
             _pct(r["shared_in_emitted_order"]), _pct(r["of_full_sort"]), r["peak_rss_bytes"] / MIB,
             r["load_before"], r["status"]] for r in result["runs"]]
    keys = [[r["requests"], r["order"], r["look_ahead"], _pct(r["shared_in_emitted_order"]), _pct(r["of_full_sort"]),
             r["seconds"]] for r in result.get("keys_only", [])]
    keys_table = ["", "Share from the keys alone, in process (`--keys-only`):", "",
                  table(["requests", "order", "first buffer", "share reusable", "of the full sort's", "seconds"], keys),
                  ""] if keys else []
    return "\n".join([
        "# Prefix order at scale: `pipeline run --engine fake` in each order (shuffled documents × questions)", "",
        f"{machine_line(result['machine'])}; {versions_line(result['versions'])}; {result['date']} UTC; "
        f"{result['settings']['questions']} questions per document, KV blocks of {order_stream.KV_BLOCK_TOKENS} tokens",
        "",
        table(["requests", "--order", "first request at s", "wall s", "share reusable", "of the full sort's",
               "peak RSS MiB", "load before", "status"], rows), "", *keys_table])


def _pct(v: float | None) -> str | None:
    return None if v is None else f"{100 * v:.1f}%"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", default="1000000", help="Sizes, comma-separated (default 1,000,000).")
    parser.add_argument("--questions", type=int, default=20, help="Questions per document (default 20).")
    parser.add_argument("--orders", default=",".join(ORDERS), help="Orders, comma-separated, run in this order.")
    parser.add_argument("--first-only", default="", help="Orders stopped once their first request arrived "
                        "(their share is not measured; for sorted, the keys are sorted in process instead).")
    parser.add_argument("--keys-only", default="", help="Sizes, comma-separated, whose shares are computed "
                        "from the keys alone in this process (no runs): input, prefix and sorted.")
    parser.add_argument("--order-buffer", type=int, default=100_000, help="With --keys-only: prefix's first buffer.")
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--note", help="A line to print above the results.")
    parser.add_argument("--keep", action="store_true", help=f"Keep request files, outputs and logs under {WORK}.")
    args = parser.parse_args()
    started = time.monotonic()
    work = WORK / f"prefix-{time.strftime('%Y%m%d-%H%M%S')}"
    sizes = [int(s) for s in args.requests.split(",") if s]
    key_sizes = [int(s) for s in args.keys_only.split(",") if s]
    latest = f"prefix_scale_{max(sizes)}_latest.md" if sizes else f"prefix_scale_{max(key_sizes)}_keys_latest.md"
    orders, first_only = tuple(args.orders.split(",")), tuple(filter(None, args.first_only.split(",")))
    runs = [r for n in sizes for r in measure(n, args.questions, args.model, orders, first_only, work)]
    keys = [r for n in key_sizes for r in keys_only(n, args.questions, args.order_buffer)]
    result = {**envelope("prefix_scale", args.note, started),
              "settings": {"sizes": sizes, "questions": args.questions, "orders": orders, "first_only": first_only},
              "runs": runs, "keys_only": keys}
    publish("prefix_scale", result, markdown(result), latest, work, args.keep)


if __name__ == "__main__":
    main()
