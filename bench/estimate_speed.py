"""`pipeline estimate` against the plain way of counting prompt tokens, at 100k and 1M requests.

The plain way (`--plain`: this file, run as its own process) is what one writes in ten lines:
read each line with `json`, `tokenizer.apply_chat_template(messages, tokenize=False,
add_generation_prompt=True)`, and encode the texts in batches of 1,000 with the fast tokenizer
(which uses its own threads on all cores). `pipeline estimate -m MODEL --json FILE` counts the
same tokens, plus run's validation, with the segment cache and one tokenizer process per core.

The requests are synthetic and deterministic: the same 451-character system prompt on every
row, varied user text (10 to 120 words) and every fifth row a three-turn conversation. Both
tools must report the same prompt-token total (the plain way matches vLLM for plain string
messages like these), or the run is marked as failed.

Every command runs as its own process under `/usr/bin/time`: wall seconds (launch to exit,
imports included), rows/s, CPU seconds (user + system, the tool's processes together), the peak
RSS of its largest process (GNU time's %M) and the peak sum of RSS over its process tree,
sampled every 0.2 s (pages that forked tokenizer processes share with their parent count once
per process there). The load average before each command is recorded: other work on the
machine slows both tools' wall time; their CPU time much less.

    .venv/bin/python bench/estimate_speed.py                   # 100k and 1M requests
    .venv/bin/python bench/estimate_speed.py --sizes 20000     # a quick check
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import time
from pathlib import Path
from typing import Any

from harness import (
    WORK,
    base_env,
    machine_info,
    machine_line,
    python,
    run_measured,
    save_results,
    table,
    versions,
    versions_line,
)

MIB = 2**20
SYSTEM = ("You are the support assistant of an online shop for outdoor gear. Answer in the customer's "
          "language, in at most five sentences. Never invent order numbers, prices or delivery dates: "
          "if you do not know, say so and offer to hand over to a person. Refunds above 100 euros and "
          "any complaint about safety go to a person. Be friendly, be precise, do not use emojis, and "
          "end with one question that moves the conversation forward when that helps the customer.")
WORDS = ("tent sleeping bag boots jacket rain wind delivery order parcel size colour return refund "
         "invoice address warranty strap zip seam waterproof trail summit weekend family children "
         "winter summer lake forest river broken late wrong missing exchange voucher discount weight "
         "warm light cheap quality store online phone email tomorrow yesterday week month still again").split()


def sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."


def write_requests(path: Path, n: int, seed: int = 0) -> Path:
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for i in range(n):
            messages = [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": sentence(rng, rng.randint(10, 120))},
            ]
            if i % 5 == 0:
                messages += [{"role": "assistant", "content": sentence(rng, rng.randint(10, 60))},
                             {"role": "user", "content": sentence(rng, rng.randint(5, 40))}]
            f.write(json.dumps({"custom_id": f"req-{i:07d}", "method": "POST", "url": "/v1/chat/completions",
                                "body": {"messages": messages, "max_tokens": rng.choice((64, 128, 256))}}) + "\n")
    return path


def plain(path: str, model: str, batch_size: int = 1000) -> None:
    """The plain way: json per line, apply_chat_template, batch-encode with the fast tokenizer."""
    from transformers import AutoTokenizer

    from pipeline.models.names import resolve_model

    tok = AutoTokenizer.from_pretrained(resolve_model(model))
    requests = tokens = 0
    batch: list[str] = []

    def encode() -> int:
        return sum(len(ids) for ids in tok(batch, add_special_tokens=False)["input_ids"])

    with open(path) as f:
        for line in f:
            row = json.loads(line)
            body = row.get("body", row)
            batch.append(tok.apply_chat_template(body["messages"], tools=body.get("tools"), tokenize=False,
                                                 add_generation_prompt=True))
            if len(batch) == batch_size:
                tokens += encode()
                requests += len(batch)
                batch = []
    if batch:
        tokens += encode()
        requests += len(batch)
    print("PLAIN " + json.dumps({"requests": requests, "prompt_tokens": tokens}))


def measure(tool: str, n: int, requests: Path, model: str, work: Path) -> dict[str, Any]:
    cmd = {"estimate": [python(), "-m", "pipeline", "estimate", "-m", model, "--json", requests],
           "plain": [python(), __file__, "--plain", requests, "--model", model]}[tool]
    load = os.getloadavg()[0]
    m = run_measured(["/usr/bin/time", "-f", "MAXRSS_KB %M CPU_S %U %S", *cmd], log=work / f"log-{tool}-{n}.txt",
                     env=base_env(0))
    text = Path(m.log).read_text(errors="replace")
    usage = re.search(r"^MAXRSS_KB (\d+) CPU_S ([\d.]+) ([\d.]+)$", text, re.M)
    if tool == "plain":
        found = re.search(r"^PLAIN (\{.*\})$", text, re.M)
        counted = json.loads(found.group(1)) if found else {}
    else:
        found = re.search(r"^\{\n.*?^\}$", text, re.M | re.S)
        counted = json.loads(found.group(0)) if found else {}
    return {
        "tool": tool, "requests": n, "rc": m.rc, "wall_s": m.wall_s, "rows_per_s": round(n / m.wall_s, 1),
        "cpu_s": round(float(usage.group(2)) + float(usage.group(3)), 1) if usage else None,
        "max_process_rss_mib": round(int(usage.group(1)) / 1024) if usage else None,
        "tree_rss_sum_mib": round(m.peak_rss_bytes / MIB), "prompt_tokens": counted.get("prompt_tokens"),
        "counted_requests": counted.get("requests"), "load_avg_before": round(load, 2), "cmd": m.cmd,
        "log_tail": m.tail(3) if m.rc else "",
    }


def markdown(result: dict[str, Any]) -> str:
    runs = result["runs"]
    rows = [[r["requests"], r["tool"], r["wall_s"], r["rows_per_s"], r["cpu_s"], r["max_process_rss_mib"],
             r["tree_rss_sum_mib"], r["prompt_tokens"], r["load_avg_before"]] for r in runs]
    lines = [
        "# `pipeline estimate` vs the plain way (json + apply_chat_template + batch encode)", "",
        f"Machine: {machine_line(result['machine'])}", f"Versions: {versions_line(result['versions'])}",
        f"Model: `{result['settings']['model']}`; requests: shared system prompt, 10-120-word user text, "
        "every fifth three turns", "",
        table(["requests", "tool", "wall s", "rows/s", "CPU s", "peak RSS MiB, largest process",
               "peak RSS MiB, sum over processes", "prompt tokens", "load avg before"], rows), "",
    ]
    for n in sorted({r["requests"] for r in runs}):
        by = {r["tool"]: r for r in runs if r["requests"] == n}
        if {"estimate", "plain"} <= set(by):
            e, p = by["estimate"], by["plain"]
            same = "same prompt-token total" if e["prompt_tokens"] == p["prompt_tokens"] else "TOTALS DIFFER"
            lines.append(
                f"- {n:,} requests: estimate {p['wall_s'] / e['wall_s']:.1f}x faster than the plain way in wall "
                f"time, {p['cpu_s'] / e['cpu_s']:.1f}x less CPU time ({same})"
            )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000], help="Numbers of requests.")
    parser.add_argument("--model", default="smollm2", help="Model whose tokenizer and chat template count.")
    parser.add_argument("--tools", default="estimate,plain", help="Which tools to run, comma-separated.")
    parser.add_argument("--keep", action="store_true", help="Keep the request files and logs in bench/results/tmp/.")
    parser.add_argument("--plain", metavar="FILE", help=argparse.SUPPRESS)  # the plain way, as a subprocess
    args = parser.parse_args()
    if args.plain:
        plain(args.plain, args.model)
        return 0
    work = WORK / "estimate_speed"
    runs = []
    for n in args.sizes:
        t0 = time.monotonic()
        requests = write_requests(work / f"requests-{n}.jsonl", n)
        print(
            f"{n:,} requests written in {time.monotonic() - t0:.0f} s ({requests.stat().st_size / MIB:,.0f} MiB)",
            file=sys.stderr,
        )
        for tool in args.tools.split(","):
            runs.append(measure(tool, n, requests, args.model, work))
            print(json.dumps({k: v for k, v in runs[-1].items() if k != "cmd"}), file=sys.stderr)
        if not args.keep:
            requests.unlink()
    result = {"machine": machine_info(), "versions": versions(), "settings": {"model": args.model}, "runs": runs}
    text = markdown(result)
    path = save_results("estimate", result, text, "estimate_latest.md")
    print(text)
    print(f"results: {path}", file=sys.stderr)
    return 0 if all(r["rc"] == 0 for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
