"""Part of `make bench-io`: what the streaming prefix order (`--order prefix`, a bounded
look-ahead) costs in cache hits against the full sort (`--order sorted`), and what it gains in
time to the first request.

The input is a shuffled shared-document file: N requests, `questions` per document (so N /
questions documents of about 100 words, ~800 characters with the system prompt), each request the
system prompt, the whole document, then one question.

- Look-ahead study (in this process, no engine): the same requests go through the order module
  at several look-ahead sizes, with and without holding back the least filled groups, and fully
  sorted (the keys alone: what `--order sorted` emits); for each, the share of prompt tokens the
  prefix cache could serve in the order emitted
  (`pipeline.intake.order.reusable_share`: whole KV blocks of 16 tokens each request shares with
  the one before it, tokens estimated at 4 characters) and the seconds it took.
- Pipeline runs: `pipeline run FILE --engine fake --block-size 16 --order prefix | sorted | input`,
  each its own process; time to first request = from the process's launch until the fake engine
  receives its first request (it writes the time, `first_request_file`); the share in the order
  emitted is the run's report's `shared_in_emitted_order`. With `first_only`, a run is stopped once
  its first request arrived (time to first request only: for 10M requests).

    python bench/io_scale.py --skip-requests --images 0 --order-requests 10000000 --order-study 10000000 \
        --order-windows 100000 --order-first-only sorted,input
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from harness import DOC_SYSTEM, base_env, document, python, run_measured, table

MIB = 2**20
KV_BLOCK_TOKENS = 16  # GPU's default block; the CPU build's 128-token blocks share less of ~200-token prompts


def doc_rows(n: int, questions: int, seed: int = 0) -> Iterator[tuple[str, list[dict[str, str]]]]:
    """(custom_id, messages) of n requests, `questions` per document, shuffled with `seed`."""
    import numpy as np

    texts = [document(d, 100, seed)[0] for d in range(-(-n // questions))]
    for i in np.random.default_rng(seed).permutation(n):
        d, q = divmod(int(i), questions)
        yield f"doc-{d:07d}-q{q:03d}", [
            {"role": "system", "content": DOC_SYSTEM},
            {"role": "user", "content": f"Document:\n{texts[d]}\n\nQuestion {q}: what does the document say "
                                        f"about item {q}?"}]


def write_docs(path: Path, n: int, questions: int) -> Path:
    """doc_rows as OpenAI Batch lines (the JSON around the messages written once: 10M lines)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    system = json.dumps({"role": "system", "content": DOC_SYSTEM})
    tail = ', "temperature": 0, "max_tokens": 16}}\n'
    with open(path, "w") as f:
        batch = []
        for cid, messages in doc_rows(n, questions):
            user = json.dumps(messages[1]["content"])
            batch.append(f'{{"custom_id": "{cid}", "method": "POST", "url": "/v1/chat/completions", "body": '
                         f'{{"messages": [{system}, {{"role": "user", "content": {user}}}]' + tail)
            if len(batch) == 10_000:
                f.write("".join(batch))
                batch = []
        f.write("".join(batch))
    return path


STUDY_KINDS = ("input", "hold", "plain", "sorted")


def study(n: int, questions: int, windows: tuple[int, ...],
          kinds: tuple[str, ...] = STUDY_KINDS) -> list[dict[str, Any]]:
    """The share reusable in the order emitted, per look-ahead, in this process (the requests
    made afresh for each order, so that memory holds only what the order holds)."""
    from pipeline.intake.order import StreamOrder, prefix_key, reusable_share
    from pipeline.records import Request

    def rows() -> Iterator[Request]:
        for i, (cid, messages) in enumerate(doc_rows(n, questions)):
            yield Request.chat(cid, "docs.jsonl", i + 1, messages, params={"max_tokens": 16})

    orders: list[tuple[str, str, int | None, Any]] = [("input", "input", None, lambda: (prefix_key(r) for r in rows()))]
    for w in (w for w in windows if w < n):
        for kind, name, hold in (("hold", "prefix (hold back half)", 0.5), ("plain", "prefix, plain windows", 0.0)):
            orders.append((kind, name, w, lambda w=w, hold=hold: (prefix_key(r) for r in StreamOrder(
                rows(), buffer=w, hold_back=hold, kv_block_tokens=KV_BLOCK_TOKENS))))
    # --order sorted emits the keys in sorted order (tests/unit/intake/test_order.py): sorting
    # the keys alone gives its share without spilling N requests to disk
    orders.append(("sorted", "sorted (the keys sorted)", None, lambda: sorted(prefix_key(r) for r in rows())))
    out = []
    for name, window, keys in ((name, window, keys) for kind, name, window, keys in orders if kind in kinds):
        t0 = time.monotonic()
        share = reusable_share(keys(), KV_BLOCK_TOKENS)
        out.append({"order": name, "look_ahead": window, "requests": n, "questions_per_document": questions,
                    "shared_in_emitted_order": share, "seconds": time.monotonic() - t0})
        print(f"  order study x {n}: {name} {window or ''}: {100 * share:.1f}% in {out[-1]['seconds']:.0f} s",
              file=sys.stderr)
    return out


ORDERS = ("prefix", "sorted", "input")


def runs(n: int, questions: int, model: str, work: Path, first_only: tuple[str, ...],
         orders: tuple[str, ...] = ORDERS, given: Path | None = None) -> list[dict[str, Any]]:
    """`pipeline run --engine fake` in each order: time to first request, wall time, peak RSS, share.
    `given`: a documents file of n lines already written (kept), instead of writing one."""
    t0 = time.monotonic()
    src = given or write_docs(work / f"docs-{n}.jsonl", n, questions)
    print(f"{n} document requests {'given' if given else 'written'} in {time.monotonic() - t0:.0f} s "
          f"({src.stat().st_size / MIB:.0f} MiB)", file=sys.stderr)
    out = []
    for how in orders:
        first = work / f"first-{n}-{how}.txt"
        first.unlink(missing_ok=True)
        cmd = [python(), "-m", "pipeline", "run", src, "-o", work / f"out-docs-{n}-{how}", "--engine", "fake", "-m",
               model, "-q", "--order", how, "--block-size", str(KV_BLOCK_TOKENS),
               "--engine-option", f"first_request_file={first}"]
        stop = (lambda first=first: first.exists() and first.stat().st_size > 0) if how in first_only else None
        m = run_measured(cmd, log=work / f"log-docs-{n}-{how}.txt", env=base_env(0), stop=stop)
        report_path = work / f"out-docs-{n}-{how}" / "_report.json"
        report = json.loads(report_path.read_text()) if m.rc == 0 and report_path.exists() else {}
        ttfr = float(first.read_text()) - m.started_at if first.exists() and first.read_text().strip() else None
        out.append({"order": how, "requests": n, "questions_per_document": questions, "input_bytes": src.stat().st_size,
                    **m.as_dict(), "first_request_s": ttfr, "stopped_at_first_request": how in first_only,
                    "shared_in_emitted_order": report.get("shared_in_emitted_order"),
                    "rows_written": report.get("requests"),
                    "status": ("ok" if m.rc == 0 or (how in first_only and ttfr)
                               else f"FAILED (exit {m.rc}): {m.tail(3)}")})
        print(f"  run --order {how} x {n}: first request at {ttfr if ttfr is None else round(ttfr, 1)} s, "
              f"{m.wall_s:.0f} s, peak RSS {m.peak_rss_bytes / MIB:.0f} MiB, {out[-1]['status']}", file=sys.stderr)
    if not given:
        src.unlink()
    return out


def markdown(result: dict[str, Any]) -> list[str]:
    if not result.get("order_runs") and not result.get("order_study"):
        return []
    study_rows = [[r["requests"], r["questions_per_document"], r["order"], r["look_ahead"],
                   _pct(r["shared_in_emitted_order"]), r["seconds"]] for r in result.get("order_study", [])]
    run_rows = [[r["requests"], r["order"], r["input_bytes"] / MIB, r["first_request_s"],
                 "stopped at first request" if r["stopped_at_first_request"] else r["wall_s"],
                 _pct(r["shared_in_emitted_order"]), r["peak_rss_bytes"] / MIB, r["load_before"], r["status"]]
                for r in result.get("order_runs", [])]
    return [
        "## Prefix order: streaming look-ahead against the full sort (shuffled documents x questions)", "",
        f"Share of prompt tokens the prefix cache could serve in the order emitted: whole KV blocks of "
        f"{KV_BLOCK_TOKENS} tokens shared with the request before (4 characters a token).", "",
        *([table(["requests", "questions per document", "order", "look-ahead", "share reusable", "seconds"],
                 study_rows), ""] if study_rows else []),
        *([table(["requests", "--order", "input MiB", "first request at s", "wall s", "share reusable (report)",
                  "peak RSS MiB", "load before", "status"], run_rows), ""] if run_rows else []),
    ]


def _pct(v: float | None) -> str | None:
    return None if v is None else f"{100 * v:.1f}%"
