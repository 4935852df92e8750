"""`bench/engines.py --workload embed`: embedding throughput of `pipeline run --runner pooling`
against vLLM's own `run_batch` with the pooling runner, on the same /v1/embeddings file.

Both tools get the same model, engine arguments (those of bench/engines.py, plus float32 on CPU:
the pipeline's choice there, pinned for run_batch too) and environment, and run as separate
processes in alternating order. Each run's whole-process wall time is measured, and the vectors
of the two are compared (largest absolute difference), so that both are known to do the same work.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from harness import (
    envelope,
    machine_line,
    median,
    publish,
    python,
    run_measured,
    table,
    versions_line,
    vllm_flags,
    write_embed_requests,
)

TOOLS = {  # name: (label, ready line in its output, the file it writes last)
    "pipeline": ("pipeline run --runner pooling", r"engine \d+ ready", "out/_SUCCESS"),
    "run_batch": ("vLLM run_batch --runner pooling", r"Reading batch from", "out.jsonl"),
}


def command(tool: str, s, requests: Path, out: Path, engine_args: dict[str, Any]) -> list[str]:
    if tool == "pipeline":
        args = [a for k, v in engine_args.items() for a in ("--engine-arg", f"{k}={json.dumps(v)}")]
        return [python(), "-m", "pipeline", "-v", "run", requests, "-o", out / "out", "-m", s.model, "-q",
                "--runner", "pooling", *args]
    return [python(), "-m", "vllm.entrypoints.openai.run_batch", "-i", requests, "-o", out / "out.jsonl",
            "--model", s.model_path, "--runner", "pooling", *vllm_flags(engine_args)]


def vectors(tool: str, out: Path) -> tuple[dict[str, list[float]], int]:
    """custom_id -> vector of the successful rows, and their input tokens, from a tool's output."""
    found, tokens = {}, 0
    if tool == "pipeline":
        for part in sorted((out / "out").glob("part-*.parquet")):
            t = pq.read_table(part, columns=["custom_id", "embedding", "prompt_tokens", "error"]).to_pylist()
            for row in t:
                if row["error"] is None:
                    found[row["custom_id"]], tokens = row["embedding"], tokens + row["prompt_tokens"]
        return found, tokens
    with open(out / "out.jsonl") as f:
        for line in f:
            row = json.loads(line)
            body = (row.get("response") or {}).get("body")
            if body:
                found[row["custom_id"]], tokens = body["data"][0]["embedding"], tokens + body["usage"]["prompt_tokens"]
    return found, tokens


def run_one(tool: str, s, requests: Path, work: Path, repeat: int, engine_args: dict[str, Any]) -> dict[str, Any]:
    label, ready, done = TOOLS[tool]
    out = work / "embed" / f"{tool}-{repeat}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    m = run_measured(command(tool, s, requests, out, engine_args), log=out / "log.txt", env=s.env, ready=ready,
                     timeout=s.timeout)
    run: dict[str, Any] = {"tool": tool, "workload": "embed", "repeat": repeat, **m.as_dict()}
    if m.rc != 0:
        run["error"] = m.tail()
        print(f"  {tool} #{repeat}: FAILED (exit {m.rc}); log {m.log}\n{m.tail(10)}", file=sys.stderr)
        return run
    found, tokens = vectors(tool, out)
    done_s = (out / done).stat().st_mtime - m.started_at
    run.update(requests_ok=len(found), input_tokens=tokens, done_s=round(done_s, 3),
               requests_per_s=len(found) / m.wall_s,
               requests_per_s_after_start=len(found) / (done_s - m.ready_s) if m.ready_s else None,
               vectors=found)
    print(f"  {tool} #{repeat}: {m.wall_s:.1f} s, {len(found)} vectors", file=sys.stderr)
    return run


def largest_difference(a: dict[str, list[float]], b: dict[str, list[float]]) -> float | None:
    import numpy as np

    shared = sorted(a.keys() & b.keys())
    if not shared:
        return None
    return float(max(np.max(np.abs(np.asarray(a[k]) - np.asarray(b[k]))) for k in shared))


def run_embed(s, work: Path, *, n: int, seed: int, repeats: int, note: str | None, keep: bool,
              started: float) -> None:
    """Run both tools `repeats` times in alternating order on `n` embeddings lines; publish the table."""
    requests = write_embed_requests(work / "embed.jsonl", n, seed=seed)
    engine_args = {k: v for k, v in s.engine_args.items() if k != "enable_prefix_caching"}
    if not s.gpu_ids:
        engine_args.setdefault("dtype", "float32")
    runs = [run_one(tool, s, requests, work, r, engine_args) for r in range(repeats) for tool in TOOLS]
    ok = {t: [r for r in runs if r["tool"] == t and r["rc"] == 0] for t in TOOLS}
    difference = largest_difference(ok["pipeline"][0]["vectors"], ok["run_batch"][0]["vectors"]) \
        if ok["pipeline"] and ok["run_batch"] else None
    for run in runs:
        run.pop("vectors", None)
    summary = {t: {"label": TOOLS[t][0], "runs": len(rs), "wall_s": median([r["wall_s"] for r in rs]),
                   "ready_s": median([r["ready_s"] for r in rs if r["ready_s"] is not None]),
                   "requests_per_s": median([r["requests_per_s"] for r in rs]),
                   "requests_per_s_after_start": median([r["requests_per_s_after_start"] for r in rs
                                                         if r["requests_per_s_after_start"] is not None]),
                   "requests_ok": rs[0]["requests_ok"] if rs else None,
                   "input_tokens": rs[0]["input_tokens"] if rs else None} for t, rs in ok.items()}
    result = {**envelope("embed", note, started), "requests": n, "seed": seed, "engine_args": engine_args,
              "model": s.model, "model_path": s.model_path, "summary": summary,
              "largest_abs_difference": difference, "runs": runs}
    publish("embed", result, markdown(result), "embed_latest.md", work, keep)


def markdown(result: dict[str, Any]) -> str:
    rows = [[v["label"], v["wall_s"], v["ready_s"], v["requests_per_s"], v["requests_per_s_after_start"],
             f"{v['requests_ok']}/{result['requests']}" if v["requests_ok"] is not None else None,
             v["input_tokens"], v["runs"]] for v in result["summary"].values()]
    p, r = result["summary"]["pipeline"]["wall_s"], result["summary"]["run_batch"]["wall_s"]
    return "\n".join([
        "# Embedding benchmark: `pipeline run --runner pooling` vs vLLM `run_batch --runner pooling`", "",
        *([f"**{result['note']}**", ""] if result.get("note") else []),
        f"- When: {result['date']} (UTC); total benchmark time {result['bench_seconds'] / 60:.1f} min",
        f"- Machine: {machine_line(result['machine'])}",
        f"- Versions: {versions_line(result['versions'])}",
        f"- Model `{result['model']}` ({result['model_path']}); {result['requests']} /v1/embeddings lines of 20 to "
        f"60 words (seed {result['seed']})",
        "- Engine settings, the same for both: "
        + ", ".join(f"{k}={json.dumps(v)}" for k, v in result["engine_args"].items()),
        "",
        table(["tool", "wall s", "engine up at s", "requests/s", "requests/s engine up → output done", "rows ok",
               "input tokens", "runs"], rows),
        "",
        f"Speedup (run_batch wall / pipeline wall): {r / p:.3f}." if p and r else "Speedup: – (a tool failed).",
        f"Largest absolute difference between the two tools' vectors: {result['largest_abs_difference']}.", "",
    ])
