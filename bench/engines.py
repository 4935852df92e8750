"""`make bench`: `pipeline run` against a bare `LLM.chat` script and vLLM's own batch runner.

All tools get the same request file, model, engine settings and environment, and run as
separate processes in alternating order (A B C A B C ...). Each run's whole-process wall time
is measured, and its generated tokens are counted from its own output. With --gpus N >= 2 it
also runs N engines (`pipeline run --data-parallel-size N`) and reports the scaling efficiency
against one engine.

    python bench/engines.py                                   # CPU: embedded smollm2, 64 requests
    python bench/engines.py --model /models/Llama-3.1-8B-Instruct --gpus 8   # GPU: 2000 requests
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from harness import (
    BENCH,
    WORK,
    base_env,
    envelope,
    machine_line,
    median,
    publish,
    python,
    run_measured,
    table,
    versions_line,
    write_requests,
)

from pipeline.models import resolve_model
from pipeline.placement import detect_gpus

TARGET_SCALING = 0.95  # N engines should give at least this share of N x one engine's throughput


@dataclass
class Setup:
    model: str  # as given (`smollm2` or a path); `pipeline run -m` takes it as is
    model_path: str  # what LLM(...) and run_batch load
    requests: Path
    n_requests: int
    max_tokens: int
    engine_args: dict[str, Any]  # vLLM EngineArgs, the same for every tool
    env: dict[str, str]  # the environment of every tool
    gpu_ids: list[str] = field(default_factory=list)
    pipeline_options: list[str] = field(default_factory=list)  # extra `pipeline run` options
    timeout: float | None = None  # seconds before a run is killed


@dataclass
class Tool:
    name: str
    label: str
    command: Callable[[Setup, Path], list[str]]
    read: Callable[[Path], tuple[dict[str, str], int, int]]  # -> ({custom_id: text}, rows ok, generated tokens)
    ready: str  # a line in its output that says the engine is up
    done: str  # the file it writes last: its modification time says when the output was complete
    engines: int = 1


# ---- the three tools --------------------------------------------------------------------------
def bare_command(s: Setup, out: Path) -> list[str]:
    return [python(), BENCH / "bare_llm_chat.py", s.requests, out / "out.parquet",
            "--model", s.model_path, "--engine-args", json.dumps(s.engine_args)]


def read_bare(out: Path) -> tuple[dict[str, str], int, int]:
    t = pq.read_table(out / "out.parquet").to_pydict()
    return dict(zip(t["custom_id"], t["content"], strict=True)), len(t["custom_id"]), sum(t["completion_tokens"])


def pipeline_command(engines: int) -> Callable[[Setup, Path], list[str]]:
    def command(s: Setup, out: Path) -> list[str]:
        args = [f"{k}={json.dumps(v)}" for k, v in s.engine_args.items()]
        return [python(), "-m", "pipeline", "-v", "run", s.requests, "-o", out / "out", "-m", s.model,
                "-q", "--data-parallel-size", str(engines), *[a for arg in args for a in ("--engine-arg", arg)]]

    return command


def read_pipeline(out: Path) -> tuple[dict[str, str], int, int]:
    texts, ok, tokens = {}, 0, 0
    for part in sorted((out / "out").glob("part-*.parquet")):
        t = pq.read_table(part, columns=["custom_id", "content", "completion_tokens", "error"]).to_pydict()
        for cid, text, n, err in zip(t["custom_id"], t["content"], t["completion_tokens"], t["error"], strict=True):
            if err is None:
                texts[cid], ok, tokens = text, ok + 1, tokens + (n or 0)
    return texts, ok, tokens


def run_batch_command(s: Setup, out: Path) -> list[str]:
    flags = []
    for key, value in s.engine_args.items():
        flag = "--" + key.replace("_", "-")
        if value is True or value is False:
            flags.append(flag if value else "--no-" + flag[2:])
        else:
            flags += [flag, json.dumps(value) if isinstance(value, (dict, list)) else str(value)]
    return [python(), "-m", "vllm.entrypoints.openai.run_batch", "-i", s.requests,
            "-o", out / "out.jsonl", "--model", s.model_path, *flags]


def read_run_batch(out: Path) -> tuple[dict[str, str], int, int]:
    texts, ok, tokens = {}, 0, 0
    with open(out / "out.jsonl") as f:
        for line in f:
            row = json.loads(line)
            response = row.get("response") or {}
            if response.get("status_code") == 200 and response.get("body"):
                body = response["body"]
                texts[row["custom_id"]] = body["choices"][0]["message"]["content"]
                ok, tokens = ok + 1, tokens + body["usage"]["completion_tokens"]
    return texts, ok, tokens


BARE = Tool("bare", "bare LLM.chat script", bare_command, read_bare, r"^BENCH ready", "out.parquet")
PIPELINE = Tool("pipeline", "pipeline run", pipeline_command(1), read_pipeline, r"engine \d+ ready", "out/_SUCCESS")
RUN_BATCH = Tool("run_batch", "vLLM run_batch", run_batch_command, read_run_batch, r"Reading batch from", "out.jsonl")


# ---- set-up -----------------------------------------------------------------------------------
def parse_engine_args(pairs: list[str]) -> dict[str, Any]:
    import yaml

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--engine-arg takes KEY=VALUE, got {pair!r}")
        out[key.strip().lstrip("-").replace("-", "_")] = yaml.safe_load(value)
    return out


def batch_defaults(env: dict[str, str]) -> dict[str, int]:
    """vLLM's defaults for `LLM(...)` on this hardware. run_batch starts its engine under another
    usage context whose defaults are smaller (on CPU 128 sequences / 2048 tokens per step against
    256 / 4096), so the benchmark pins these two for every tool."""
    code = ("from vllm.engine.arg_utils import EngineArgs; from vllm.usage.usage_lib import UsageContext; "
            "t, s = EngineArgs.get_batch_defaults(1); "
            "print('DEFAULTS', s[UsageContext.LLM_CLASS], t[UsageContext.LLM_CLASS])")
    out = subprocess.run([python(), "-c", code], capture_output=True, text=True, env=env, timeout=300)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("DEFAULTS ")), None)
    if line is None:
        raise SystemExit(f"could not read vLLM's batch defaults:\n{out.stderr[-3000:]}")
    seqs, tokens = map(int, line.split()[1:])
    return {"max_num_seqs": seqs, "max_num_batched_tokens": tokens}


def visible_gpus(n: int) -> list[str]:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [d.strip() for d in visible.split(",") if d.strip()] if visible else [str(i) for i in range(n)]
    return ids[:n]


def make_setup(args: argparse.Namespace, work: Path) -> Setup:
    gpus = args.gpus
    env = base_env(gpus)
    gpu_ids = visible_gpus(gpus) if gpus else []
    if gpu_ids:
        env["CUDA_VISIBLE_DEVICES"] = gpu_ids[0]  # one engine on one GPU, for every single-engine run
    engine_args: dict[str, Any] = {"enforce_eager": True} if gpus == 0 else {}  # the pipeline's CPU default
    user_args = parse_engine_args(args.engine_arg)
    if not {"max_num_seqs", "max_num_batched_tokens"} <= user_args.keys():
        engine_args.update(batch_defaults(env))
    engine_args.update(user_args)
    print(f"model {args.model}: resolving ...", file=sys.stderr)
    model_path = resolve_model(args.model)
    requests = write_requests(work / "requests.jsonl", args.requests, max_tokens=args.max_tokens, seed=args.seed)
    return Setup(args.model, model_path, requests, args.requests, args.max_tokens, engine_args, env, gpu_ids,
                 args.pipeline_option, args.timeout)


# ---- running ----------------------------------------------------------------------------------
def run_once(tool: Tool, s: Setup, work: Path, repeat: int, bare_texts: dict[str, str] | None) -> dict[str, Any]:
    out = work / f"{tool.name}-{repeat}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    env = dict(s.env)
    if tool.engines > 1:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(s.gpu_ids[: tool.engines])
    cmd = tool.command(s, out) + (s.pipeline_options if tool.name.startswith("pipeline") else [])
    m = run_measured(cmd, log=out / "log.txt", env=env, ready=tool.ready, timeout=s.timeout)
    run: dict[str, Any] = {"tool": tool.name, "repeat": repeat, **m.as_dict()}
    if m.rc != 0:
        run["error"] = m.tail()
        print(f"  {tool.name} #{repeat}: FAILED (exit {m.rc}); log {m.log}\n{m.tail(10)}", file=sys.stderr)
        return run
    texts, ok, tokens = tool.read(out)
    done_s = (out / tool.done).stat().st_mtime - m.started_at
    run.update(requests_ok=ok, generated_tokens=tokens, done_s=round(done_s, 3),
               requests_per_s=ok / m.wall_s, tokens_per_s=tokens / m.wall_s,
               tokens_per_s_after_start=tokens / (done_s - m.ready_s) if m.ready_s else None,
               inner=_inner_timings(tool, out))
    if bare_texts is not None and tool.name != "bare":
        same = sum(1 for cid, text in texts.items() if bare_texts.get(cid) == text)
        run["same_text_as_bare"] = same / max(len(bare_texts), 1)
    run["texts"] = texts
    print(f"  {tool.name} #{repeat}: {m.wall_s:.1f} s (engine up at {m.ready_s} s, output done at {done_s:.1f} s), {ok} rows, "
          f"{tokens} tokens, {tokens / m.wall_s:.1f} tok/s", file=sys.stderr)
    return run


def _inner_timings(tool: Tool, out: Path) -> dict[str, Any]:
    """What the tool says about its own time (for diagnosis; the table uses wall time)."""
    if tool.name == "bare":
        for line in (out / "log.txt").read_text(errors="replace").splitlines():
            if line.startswith("BENCH timings "):
                return json.loads(line.split(" ", 2)[2])
    if tool.name.startswith("pipeline"):
        report = out / "out" / "_report.json"
        if report.is_file():
            return {"report_wall_seconds": json.loads(report.read_text()).get("wall_seconds")}
    return {}


def summarize(tools: list[Tool], runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    summary = {}
    for tool in tools:
        ok = [r for r in runs if r["tool"] == tool.name and r["rc"] == 0]
        summary[tool.name] = {
            "label": tool.label, "engines": tool.engines, "runs": len(ok),
            "failed_runs": sum(1 for r in runs if r["tool"] == tool.name and r["rc"] != 0),
            **{key: median([r.get(key) for r in ok]) for key in (
                "wall_s", "ready_s", "done_s", "requests_per_s", "tokens_per_s", "tokens_per_s_after_start",
                "generated_tokens", "requests_ok", "same_text_as_bare", "peak_rss_bytes")},
        }
    return summary


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def compare(summary: dict[str, dict[str, Any]], gpus: int) -> dict[str, Any]:
    p = summary["pipeline"]
    out = {}
    for other in ("bare", "run_batch"):
        if other not in summary:
            continue
        o = summary[other]
        out[f"pipeline/{other}"] = {k: ratio(p[k], o[k]) for k in ("wall_s", "tokens_per_s", "tokens_per_s_after_start")}
    dp = summary.get(f"pipeline_dp{gpus}")
    if dp is not None:
        eff = {k: ratio(dp[k], gpus * p[k]) if p[k] else None for k in ("tokens_per_s", "tokens_per_s_after_start")}
        out["scaling"] = {"engines": gpus, "efficiency": eff, "target": TARGET_SCALING,
                          "meets_target": (eff["tokens_per_s_after_start"] or 0) >= TARGET_SCALING}
    return out


# ---- report -----------------------------------------------------------------------------------
def markdown(result: dict[str, Any]) -> str:
    s, summ, cmp_ = result["settings"], result["summary"], result["comparison"]
    gib = 2**30
    rows = [[v["label"] + (f" ({v['engines']} engines)" if v["engines"] > 1 else ""), v["wall_s"], v["ready_s"], v["done_s"],
             v["requests_per_s"], v["tokens_per_s"], v["tokens_per_s_after_start"], v["generated_tokens"],
             f"{v['requests_ok']}/{s['requests']}" if v["requests_ok"] is not None else None,
             f"{v['same_text_as_bare']:.0%}" if v["same_text_as_bare"] is not None else None,
             v["peak_rss_bytes"] / gib if v["peak_rss_bytes"] else None,
             f"{v['runs']}" + (f" ({v['failed_runs']} failed)" if v["failed_runs"] else "")]
            for v in summ.values()]
    lines = [
        "# Engine benchmark: `pipeline run` vs a bare `LLM.chat` script vs vLLM `run_batch`",
        "",
        *([f"**{result['note']}**", ""] if result.get("note") else []),
        f"- When: {result['date']} (UTC); total benchmark time {result['bench_seconds'] / 60:.1f} min",
        f"- Machine: {machine_line(result['machine'])}",
        f"- Versions: {versions_line(result['versions'])}",
        f"- Workload: {s['requests']} synthetic chat requests (seed {s['seed']}), temperature 0, "
        f"max_tokens {s['max_tokens']}; model `{s['model']}` ({s['model_path']})",
        "- Engine settings, the same for every tool: "
        + ", ".join(f"{k}={json.dumps(v)}" for k, v in s["engine_args"].items())
        + "".join(f"; {k}={v}" for k, v in s["env"].items()),
        *([f"- Extra `pipeline run` options: {' '.join(s['pipeline_options'])}"] if s["pipeline_options"] else []),
        f"- {s['repeats']} repeat(s) in alternating order ({', '.join(summ)}, ...); medians over repeats. "
        f"1-minute load average before the runs: {_load_range(result['runs'])} (on {result['machine']['usable_cores']} cores).",
        "",
        table(["tool", "wall s", "engine up at s", "output done at s", "requests/s", "gen tokens/s", "gen tokens/s engine up → output done",
               "gen tokens", "rows ok", "same text as bare", "peak RSS GiB", "runs"], rows),
        "",
        table(["ratio", "wall time", "gen tokens/s", "gen tokens/s engine up → output done"],
              [[k, v["wall_s"], v["tokens_per_s"], v["tokens_per_s_after_start"]]
               for k, v in cmp_.items() if k != "scaling"]),
    ]
    if "scaling" in cmp_:
        sc = cmp_["scaling"]
        eff = sc["efficiency"]
        lines += ["", f"Scaling, {sc['engines']} engines vs 1 (`pipeline run --data-parallel-size`): "
                  f"efficiency {eff['tokens_per_s_after_start']:.3f} between engine up and output done "
                  f"({eff['tokens_per_s']:.3f} whole process); target >= {sc['target']}: "
                  f"{'met' if sc['meets_target'] else 'NOT met'}."]
    lines += ["", "Wall time is the whole process, from launch to exit (imports, engine start, reading, "
              "generation, writing, shutdown). Generated tokens are counted from each tool's own output. "
              "\"Engine up → output done\" divides by the time from the engine's ready line to the last output file "
              "(generation and writing, without start-up and exit). Ratios are pipeline / other: "
              "a wall-time ratio below 1 and a throughput ratio above 1 favour the pipeline. "
              "See bench/README.md.", ""]
    return "\n".join(lines)


def _load_range(runs: list[dict[str, Any]]) -> str:
    loads = [r["load_before"] for r in runs if r.get("load_before") is not None]
    return f"{min(loads):.1f} to {max(loads):.1f}" if loads else "–"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--model", help="Model folder or hub id; default: the embedded `smollm2` on CPU (required on GPU).")
    parser.add_argument("--requests", type=int, help="Number of requests (default: 64 on CPU, 2000 on GPU).")
    parser.add_argument("--max-tokens", type=int, help="max_tokens of every request (default: 64 on CPU, 256 on GPU).")
    parser.add_argument("--repeats", type=int, default=3, help="Runs of each tool, alternating (default 3).")
    parser.add_argument("--gpus", type=int, help="GPUs to use (default: all visible; 0 on CPU). With N >= 2 also "
                        "measures N engines against one.")
    parser.add_argument("--engine-arg", action="append", default=[], metavar="KEY=VALUE",
                        help="vLLM engine argument for every tool, e.g. max_model_len=4096. Repeatable.")
    parser.add_argument("--pipeline-option", action="append", default=[], metavar="OPTION",
                        help="Extra option for `pipeline run` only, e.g. --pipeline-option=--max-in-flight=4096. Repeatable.")
    parser.add_argument("--tools", default="bare,pipeline,run_batch", help="Comma-separated subset to run.")
    parser.add_argument("--timeout", type=float, default=3600, help="Seconds before one run is killed (default 3600).")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the synthetic request file.")
    parser.add_argument("--note", help="A line to print above the results, e.g. 'small trial run, busy machine'.")
    parser.add_argument("--keep", action="store_true", help=f"Keep the request file, outputs and logs under {WORK}.")
    args = parser.parse_args()
    visible = detect_gpus()
    args.gpus = visible if args.gpus is None else args.gpus
    if args.gpus > visible:
        parser.error(f"--gpus {args.gpus}: only {visible} GPU(s) visible")
    if args.model is None:
        if args.gpus:
            parser.error("on a GPU machine pass --model PATH (e.g. a Llama 3.1 8B Instruct folder)")
        args.model = "smollm2"
    args.requests = args.requests or (2000 if args.gpus else 64)
    args.max_tokens = args.max_tokens or (256 if args.gpus else 64)

    started = time.monotonic()
    work = WORK / f"engines-{time.strftime('%Y%m%d-%H%M%S')}"
    s = make_setup(args, work)
    chosen = args.tools.split(",")
    tools = [t for t in (BARE, PIPELINE, RUN_BATCH) if t.name in chosen]
    if args.gpus >= 2:
        tools.append(Tool(f"pipeline_dp{args.gpus}", "pipeline run", pipeline_command(args.gpus), read_pipeline,
                          PIPELINE.ready, engines=args.gpus))
    if "pipeline" not in chosen:
        raise SystemExit("--tools must include pipeline (every ratio is about it)")
    print(f"{len(tools)} tools x {args.repeats} repeats on {s.n_requests} requests; engine args {s.engine_args}; "
          f"work dir {work}", file=sys.stderr)

    runs: list[dict[str, Any]] = []
    for repeat in range(args.repeats):
        bare_texts = None
        for tool in tools:
            run = run_once(tool, s, work, repeat, bare_texts)
            if tool.name == "bare" and run["rc"] == 0:
                bare_texts = run["texts"]
            runs.append(run)
    for run in runs:
        run.pop("texts", None)

    summary = summarize(tools, runs)
    result = {
        **envelope("engines", args.note, started),
        "settings": {"model": s.model, "model_path": s.model_path, "requests": s.n_requests,
                     "max_tokens": s.max_tokens, "seed": args.seed, "repeats": args.repeats, "gpus": args.gpus,
                     "engine_args": s.engine_args, "pipeline_options": s.pipeline_options,
                     "env": {k: s.env[k] for k in ("VLLM_CPU_KVCACHE_SPACE", "CUDA_VISIBLE_DEVICES") if k in s.env}},
        "summary": summary, "comparison": compare(summary, args.gpus),
        "runs": runs,
    }
    publish("engines", result, markdown(result), "latest.md", work, args.keep)


if __name__ == "__main__":
    main()
