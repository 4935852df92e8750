"""`make bench`: `pipeline run` against a bare `LLM.chat` script and vLLM's own batch runner.

All tools get the same request file, model, engine settings (prefix caching on) and environment,
and run as separate processes in alternating order (A B C A B C ...). Each run's whole-process
wall time is measured; its generated tokens and its prompt tokens served from the prefix cache
are counted from its own output. Three workloads (--workload):

- mixed: synthetic chat requests with varied tasks, sampling and lengths and no shared document
  (768 on CPU, max_tokens up to 40: decode-heavy);
- docs: D generated documents x Q questions each, every request carrying its whole document,
  shuffled, with a KV cache pinned (num_gpu_blocks_override) below the workload's distinct
  shared-prefix tokens: what prefix-aware scheduling is for;
- embed: N /v1/embeddings lines, `pipeline run --runner pooling` against run_batch with the
  pooling runner (bench/embed.py; not with `both`, `make bench` runs it on its own).

With --gpus N >= 2 it also runs N engines (`pipeline run --data-parallel-size N`) and reports
the scaling efficiency against one engine (mixed workload).

    python bench/engines.py                                   # CPU: embedded smollm2, both workloads
    python bench/engines.py --workload docs --docs 6 --questions 4 --repeats 1   # a quick check
    python bench/engines.py --model /models/Llama-3.1-8B-Instruct --gpus 8   # GPU: 2000 requests
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import random
import re
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
    vllm_flags,
    write_doc_requests,
    write_requests,
)

from pipeline.engines.placement import detect_gpus
from pipeline.models.names import resolve_model

TARGET_SCALING = 0.95  # N engines should give at least this share of N x one engine's throughput
# Issue #21's targets: on the shuffled shared-document workload pipeline run at least this much
# faster (wall time) than run_batch and the bare script; on the decode-heavy mixed one no slower than 1 + this.
TARGET_DOCS_SPEEDUP = 1.5
TARGET_MIXED_SLOWDOWN = 0.0


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
    workload: str = "mixed"
    facts: dict[str, Any] = field(default_factory=dict)  # what the workload is: sizes, token counts, cache


@dataclass
class Output:
    texts: dict[str, str]  # custom_id -> completion text
    ok: int  # successful rows
    generated: int  # completion tokens
    prompt: int | None = None  # prompt tokens of the successful rows
    cached: int | None = None  # of which served from the prefix cache (None: the tool did not say)


@dataclass
class Tool:
    name: str
    label: str
    command: Callable[[Setup, Path], list[str]]
    read: Callable[[Path], Output]
    ready: str  # a line in its output that says the engine is up
    done: str  # the file it writes last: its modification time says when the output was complete
    engines: int = 1


# ---- the three tools --------------------------------------------------------------------------
def bare_command(s: Setup, out: Path) -> list[str]:
    return [python(), BENCH / "bare_llm_chat.py", s.requests, out / "out.parquet",
            "--model", s.model_path, "--engine-args", json.dumps(s.engine_args)]


def bare_sorted_command(s: Setup, out: Path) -> list[str]:
    """The bare script on the same requests in the order `pipeline run --order prefix` sends them
    (pipeline/intake/order.py's key; a stable sort, as the pipeline's): a control that shows that
    the gain is the order alone, and that with the same order the texts are the same."""
    from pipeline.intake.order import prefix_key
    from pipeline.records import Request

    sorted_file = s.requests.with_name(s.requests.stem + ".sorted.jsonl")
    if not sorted_file.exists():
        lines = s.requests.read_text().splitlines(keepends=True)

        def key(line: str) -> bytes:
            row = json.loads(line)
            body = row["body"]
            return prefix_key(Request.chat(row["custom_id"], "f", 1, body["messages"], tools=body.get("tools")))

        sorted_file.write_text("".join(sorted(lines, key=key)))
    return bare_command(dataclasses.replace(s, requests=sorted_file), out)


def read_bare(out: Path) -> Output:
    t = pq.read_table(out / "out.parquet").to_pydict()
    return Output(dict(zip(t["custom_id"], t["content"], strict=True)), len(t["custom_id"]),
                  sum(t["completion_tokens"]), sum(t["prompt_tokens"]),
                  sum(t["cached_tokens"]) if "cached_tokens" in t else None)


_ORDER_SUPPORTED: bool | None = None


def pipeline_has_order() -> bool:
    """Whether this checkout's `pipeline run` has `--order prefix|input` (issue #11)."""
    global _ORDER_SUPPORTED
    if _ORDER_SUPPORTED is None:
        out = subprocess.run([python(), "-m", "pipeline", "run", "--help"], capture_output=True, text=True,
                             timeout=120, env=dict(os.environ, COLUMNS="200"))
        _ORDER_SUPPORTED = bool(re.search(r"--order[\s=\[]", out.stdout))
    return _ORDER_SUPPORTED


def pipeline_command(engines: int, order: str | None = None,
                     options: tuple[str, ...] = ()) -> Callable[[Setup, Path], list[str]]:
    def command(s: Setup, out: Path) -> list[str]:
        args = [f"{k}={json.dumps(v)}" for k, v in s.engine_args.items()]
        extra = [*(["--order", order] if order and pipeline_has_order() else []), *options]
        return [python(), "-m", "pipeline", "-v", "run", s.requests, "-o", out / "out", "-m", s.model,
                "-q", "--data-parallel-size", str(engines), *extra,
                *[a for arg in args for a in ("--engine-arg", arg)]]

    return command


def read_pipeline(out: Path) -> Output:
    o = Output({}, 0, 0, 0, 0)
    for part in sorted((out / "out").glob("part-*.parquet")):
        t = pq.read_table(part, columns=["custom_id", "content", "completion_tokens", "prompt_tokens",
                                         "cached_tokens", "error"]).to_pydict()
        for cid, text, n, p, c, err in zip(t["custom_id"], t["content"], t["completion_tokens"], t["prompt_tokens"],
                                           t["cached_tokens"], t["error"], strict=True):
            if err is None:
                o.texts[cid], o.ok, o.generated = text, o.ok + 1, o.generated + (n or 0)
                o.prompt, o.cached = o.prompt + (p or 0), o.cached + (c or 0)
    return o


def run_batch_command(s: Setup, out: Path) -> list[str]:
    # --enable-prompt-tokens-details: usage.prompt_tokens_details.cached_tokens in every response
    return [python(), "-m", "vllm.entrypoints.openai.run_batch", "-i", s.requests,
            "-o", out / "out.jsonl", "--model", s.model_path, "--enable-prompt-tokens-details",
            *vllm_flags(s.engine_args)]


def read_run_batch(out: Path) -> Output:
    o, cached_seen = Output({}, 0, 0, 0, 0), False
    with open(out / "out.jsonl") as f:
        for line in f:
            row = json.loads(line)
            response = row.get("response") or {}
            if response.get("status_code") == 200 and response.get("body"):
                body = response["body"]
                usage = body["usage"]
                o.texts[row["custom_id"]] = body["choices"][0]["message"]["content"]
                o.ok, o.generated = o.ok + 1, o.generated + usage["completion_tokens"]
                o.prompt += usage["prompt_tokens"]
                details = usage.get("prompt_tokens_details")
                if details is not None:
                    cached_seen = True
                    o.cached += details.get("cached_tokens") or 0
    if not cached_seen and o.ok:
        o.cached = None
    return o


BARE = Tool("bare", "bare LLM.chat script", bare_command, read_bare, r"^BENCH ready", "out.parquet")
PIPELINE = Tool("pipeline", "pipeline run", pipeline_command(1), read_pipeline, r"engine \d+ ready",
                "out/_SUCCESS")
PIPELINE_INPUT = Tool("pipeline_input", "pipeline run --order input", pipeline_command(1, "input"), read_pipeline,
                      r"engine \d+ ready", "out/_SUCCESS")
RUN_BATCH = Tool("run_batch", "vLLM run_batch", run_batch_command, read_run_batch, r"Reading batch from", "out.jsonl")
BARE_SORTED = Tool("bare_sorted", "bare LLM.chat script, file in the pipeline's prefix order", bare_sorted_command,
                   read_bare, r"^BENCH ready", "out.parquet")
# control: prefix groups in key order, not the longest possible decodes first (--decode-first)
PIPELINE_KEY_ORDER = Tool("pipeline_key_order", "pipeline run --no-decode-first", pipeline_command(
    1, None, ("--no-decode-first",)), read_pipeline, r"engine \d+ ready", "out/_SUCCESS")
TOOLS = (BARE, PIPELINE, PIPELINE_INPUT, RUN_BATCH, BARE_SORTED, PIPELINE_KEY_ORDER)


# ---- what a request file holds: prompt tokens, shared prefixes, model size ------------------
def prompt_facts(requests: Path, model_path: str, block: int) -> dict[str, Any]:
    """Token counts of the request file under the model's tokenizer and chat template.

    total: all prompt tokens. unique: prompt tokens an ideal prefix cache (unbounded, any order)
    computes once: the size of the token trie of all prompts. shared: distinct tokens that start two
    or more prompts (the documents with their system prompt), what the KV cache must hold for the
    ideal to be reached in any order. best_hit_ratio: 1 - unique/total; best_hit_ratio_blocks:
    the same where only whole cache blocks of `block` tokens can be shared (vLLM's rule)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)
    prompts = []
    with open(requests) as f:
        for line in f:
            messages = json.loads(line)["body"]["messages"]
            ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
            prompts.append(tuple(ids))
    prompts.sort()

    def lcp(a: tuple[int, ...], b: tuple[int, ...]) -> int:
        n = min(len(a), len(b))
        i = 0
        while i < n and a[i] == b[i]:
            i += 1
        return i

    before = [0] + [lcp(prompts[i - 1], prompts[i]) for i in range(1, len(prompts))]  # with the previous in order
    after = before[1:] + [0]
    total = sum(len(p) for p in prompts)
    shared = sum(max(b, a) - b for b, a in zip(before, after, strict=True))
    cacheable = sum(min(b, len(p) - 1) // block * block for b, p in zip(before, prompts, strict=True))
    return {"prompt_tokens": total, "unique_prompt_tokens": total - sum(before), "shared_prefix_tokens": shared,
            "longest_prompt": max(len(p) for p in prompts), "best_hit_ratio": sum(before) / total,
            "best_hit_ratio_blocks": cacheable / total}


def parameter_count(model_path: str) -> int | None:
    """Parameters of a local model folder, from its safetensors headers (None if it has none)."""
    total = 0
    for f in Path(model_path).glob("*.safetensors"):
        with open(f, "rb") as fh:
            header = json.loads(fh.read(int.from_bytes(fh.read(8), "little")))
        total += sum(math.prod(v["shape"]) for k, v in header.items() if k != "__metadata__")
    return total or None


def kv_bytes_per_token(model_path: str, dtype_bytes: int = 2) -> int | None:
    """K and V of one token over all layers: 2 x layers x KV heads x head size x bytes (bf16: 2)."""
    try:
        c = json.loads((Path(model_path) / "config.json").read_text())
        c = c.get("text_config", c)
        head = c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]
        return 2 * c["num_hidden_layers"] * c.get("num_key_value_heads", c["num_attention_heads"]) * head * dtype_bytes
    except (OSError, KeyError, ValueError):
        return None


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
    """What both workloads share: model, environment, GPUs, engine arguments for every tool."""
    gpus = args.gpus
    env = base_env(gpus)
    gpu_ids = visible_gpus(gpus) if gpus else []
    if gpu_ids:
        env["CUDA_VISIBLE_DEVICES"] = gpu_ids[0]  # one engine on one GPU, for every single-engine run
    engine_args: dict[str, Any] = {"enforce_eager": True} if gpus == 0 else {}  # the pipeline's CPU default
    engine_args["enable_prefix_caching"] = True  # on for every tool (vLLM's default, pinned so that it stays so)
    user_args = parse_engine_args(args.engine_arg)
    if not args.each_defaults and not {"max_num_seqs", "max_num_batched_tokens"} <= user_args.keys():
        engine_args.update(batch_defaults(env))
    engine_args.update(user_args)
    print(f"model {args.model}: resolving ...", file=sys.stderr)
    model_path = resolve_model(args.model)
    return Setup(args.model, model_path, work / "none.jsonl", 0, 0, engine_args, env, gpu_ids,
                 args.pipeline_option, args.timeout)


def mixed_setup(base: Setup, args: argparse.Namespace, work: Path) -> Setup:
    varied = args.sampling == "varied"
    requests = write_requests(work / "mixed.jsonl", args.requests, max_tokens=args.max_tokens, seed=args.seed,
                              varied=varied)
    spread_max_tokens(requests, args)
    facts = {"requests": args.requests, "max_tokens": args.max_tokens, "seed": args.seed, "sampling": args.sampling,
             "max_tokens_spread": args.spread_max_tokens}
    facts.update(prompt_facts(requests, base.model_path, 16))
    facts["parameters"] = parameter_count(base.model_path)
    return dataclasses.replace(base, requests=requests, n_requests=args.requests, max_tokens=args.max_tokens,
                               workload="mixed", facts=facts, engine_args=dict(base.engine_args))


def spread_max_tokens(requests: Path, args: argparse.Namespace) -> None:
    """--spread-max-tokens: each request's max_tokens drawn from [max_tokens / 8, max_tokens]
    (seeded), so that requests differ in how long they may decode (for --decode-first)."""
    if not args.spread_max_tokens:
        return
    rng = random.Random(f"spread-{args.seed}")
    rows = [json.loads(line) for line in requests.read_text().splitlines()]
    for row in rows:
        top = row["body"]["max_tokens"]
        row["body"]["max_tokens"] = rng.randint(max(1, top // 8), top)
    requests.write_text("".join(json.dumps(row) + "\n" for row in rows))


def docs_setup(base: Setup, args: argparse.Namespace, work: Path) -> Setup:
    """D documents x Q questions, shuffled; the KV cache pinned to `--kv-cache-tokens` (default:
    half the workload's distinct shared-prefix tokens) for every tool, with
    num_gpu_blocks_override and an explicit block_size (vLLM's defaults: 128 on CPU, 16 on GPU)."""
    n = args.docs * args.questions
    requests = write_doc_requests(work / "docs.jsonl", args.docs, args.questions, doc_words=args.doc_words,
                                  max_tokens=args.docs_max_tokens, seed=args.seed)
    spread_max_tokens(requests, args)
    engine_args = dict(base.engine_args)
    block = int(engine_args.setdefault("block_size", 16 if args.gpus else 128))
    facts = {"requests": n, "docs": args.docs, "questions": args.questions, "doc_words": args.doc_words,
             "max_tokens": args.docs_max_tokens, "seed": args.seed, "block_size": block,
             "max_tokens_spread": args.spread_max_tokens}
    facts.update(prompt_facts(requests, base.model_path, block))
    # every request must fit: the longest prompt plus max_tokens, rounded up to whole blocks
    need = -(-(facts["longest_prompt"] + args.docs_max_tokens) // block) * block
    engine_args.setdefault("max_model_len", need)
    need = max(need, int(engine_args["max_model_len"]))
    if "num_gpu_blocks_override" not in engine_args:
        tokens = args.kv_cache_tokens or facts["shared_prefix_tokens"] // 2
        engine_args["num_gpu_blocks_override"] = max(-(-tokens // block), -(-need // block))
    facts["kv_cache_tokens"] = int(engine_args["num_gpu_blocks_override"]) * block
    facts["kv_cache_share"] = facts["kv_cache_tokens"] / max(facts["shared_prefix_tokens"], 1)
    kv = kv_bytes_per_token(base.model_path)
    facts["kv_bytes_per_token"] = kv
    facts["parameters"] = parameter_count(base.model_path)
    print(f"docs workload: {n} requests, {facts['prompt_tokens']:,} prompt tokens, {facts['shared_prefix_tokens']:,} "
          f"distinct shared-prefix tokens, KV cache {facts['kv_cache_tokens']:,} tokens "
          f"({facts['kv_cache_share']:.2f} of them; {kv} bytes/token)", file=sys.stderr)
    return dataclasses.replace(base, requests=requests, n_requests=n, max_tokens=args.docs_max_tokens,
                               workload="docs", facts=facts, engine_args=engine_args)


# ---- running ----------------------------------------------------------------------------------
KV_CACHE_LINE = re.compile(r"KV cache size: ([\d,]+) tokens")
STEP_TOKENS_LINE = re.compile(r"max_num_batched_tokens=(\d+)")  # vLLM: "Chunked prefill is enabled with ..."


def run_once(tool: Tool, s: Setup, work: Path, repeat: int, bare_texts: dict[str, str] | None,
             previous_bare: dict[str, str] | None = None) -> dict[str, Any]:
    out = work / s.workload / f"{tool.name}-{repeat}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    env = dict(s.env)
    if tool.engines > 1:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(s.gpu_ids[: tool.engines])
    cmd = tool.command(s, out) + (s.pipeline_options if tool.name.startswith("pipeline") else [])
    m = run_measured(cmd, log=out / "log.txt", env=env, ready=tool.ready, timeout=s.timeout)
    run: dict[str, Any] = {"tool": tool.name, "workload": s.workload, "repeat": repeat, **m.as_dict()}
    found = KV_CACHE_LINE.findall(Path(m.log).read_text(errors="replace"))
    run["kv_cache_tokens"] = int(found[0].replace(",", "")) if found else None  # as the engine logged it
    found = STEP_TOKENS_LINE.findall(Path(m.log).read_text(errors="replace"))
    run["step_tokens"] = int(found[0]) if found else None  # max_num_batched_tokens, as the engine logged it
    if m.rc != 0:
        run["error"] = m.tail()
        print(f"  {tool.name} #{repeat}: FAILED (exit {m.rc}); log {m.log}\n{m.tail(10)}", file=sys.stderr)
        return run
    o = tool.read(out)
    done_s = (out / tool.done).stat().st_mtime - m.started_at
    run.update(requests_ok=o.ok, generated_tokens=o.generated, prompt_tokens=o.prompt, cached_tokens=o.cached,
               cache_hit_ratio=o.cached / o.prompt if o.cached is not None and o.prompt else None,
               done_s=round(done_s, 3), requests_per_s=o.ok / m.wall_s, tokens_per_s=o.generated / m.wall_s,
               tokens_per_s_after_start=o.generated / (done_s - m.ready_s) if m.ready_s else None,
               inner=_inner_timings(tool, out))
    report = out / "out" / "_report.json"
    if report.exists():  # pipeline's: each engine's predicted and served prefix-cache share
        run["cache_plan"] = json.loads(report.read_text()).get("cache_plan")
    if bare_texts is not None and tool.name != "bare":
        same = sum(1 for cid, text in o.texts.items() if bare_texts.get(cid) == text)
        run["same_text_as_bare"] = same / max(len(bare_texts), 1)
    if previous_bare is not None and tool.name == "bare":  # batch-order nondeterminism: bare against itself
        same = sum(1 for cid, text in o.texts.items() if previous_bare.get(cid) == text)
        run["same_text_as_previous_bare"] = same / max(len(previous_bare), 1)
    run["texts"] = o.texts
    hit = f", cache hit {run['cache_hit_ratio']:.0%}" if run["cache_hit_ratio"] is not None else ""
    print(f"  [{s.workload}] {tool.name} #{repeat}: {m.wall_s:.1f} s (engine up at {m.ready_s} s, output done at "
          f"{done_s:.1f} s), {o.ok} rows, {o.generated} tokens, {o.generated / m.wall_s:.1f} tok/s{hit}",
          file=sys.stderr)
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
            r = json.loads(report.read_text())
            return {"report_wall_seconds": r.get("wall_seconds"), "order": r.get("order")}
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
                "generated_tokens", "requests_ok", "same_text_as_bare", "same_text_as_previous_bare",
                "peak_rss_bytes", "prompt_tokens", "cached_tokens", "cache_hit_ratio", "kv_cache_tokens",
                "step_tokens")},
        }
    return summary


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def compare(summary: dict[str, dict[str, Any]], gpus: int, workload: str) -> dict[str, Any]:
    """Ratios pipeline / other of the medians, and issue #21's targets for the workload."""
    p = summary.get("pipeline")
    if p is None:
        return {}
    out: dict[str, Any] = {}
    for other in ("bare", "run_batch", "pipeline_input", "bare_sorted"):
        if other not in summary:
            continue
        o = summary[other]
        r = {k: ratio(p[k], o[k]) for k in ("wall_s", "tokens_per_s", "tokens_per_s_after_start")}
        r["speedup"] = ratio(o["wall_s"], p["wall_s"])  # other's wall time / pipeline's: > 1 favours the pipeline
        r["cache_hit_ratios"] = [p["cache_hit_ratio"], o["cache_hit_ratio"]]  # pipeline's, other's
        if other in ("bare", "run_batch") and r["speedup"] is not None:
            if workload == "docs":
                r["target"] = f"speedup >= {TARGET_DOCS_SPEEDUP}"
                r["meets_target"] = r["speedup"] >= TARGET_DOCS_SPEEDUP
            else:
                r["target"] = f"wall time ratio <= {1 + TARGET_MIXED_SLOWDOWN}"
                r["meets_target"] = r["wall_s"] <= 1 + TARGET_MIXED_SLOWDOWN
        out[f"pipeline/{other}"] = r
    dp = summary.get(f"pipeline_dp{gpus}")
    if dp is not None:
        eff = {k: ratio(dp[k], gpus * p[k]) if p[k] else None for k in ("tokens_per_s", "tokens_per_s_after_start")}
        out["scaling"] = {"engines": gpus, "efficiency": eff, "target": TARGET_SCALING,
                          "meets_target": (eff["tokens_per_s_after_start"] or 0) >= TARGET_SCALING}
    return out


# ---- report -----------------------------------------------------------------------------------
def _pct(v: float | None) -> str | None:
    return f"{v:.0%}" if v is not None else None


def workload_lines(name: str, w: dict[str, Any], settings: dict[str, Any], runs: list[dict[str, Any]]) -> list[str]:
    f, summ, cmp_ = w["facts"], w["summary"], w["comparison"]
    gib = 2**30
    params = f.get("parameters")
    rows = []
    for tool, v in summ.items():
        known = v["prompt_tokens"] is not None and v["cached_tokens"] is not None
        computed = (v["prompt_tokens"] - v["cached_tokens"]) if known else None
        same = _pct(v["same_text_as_bare"])
        if tool == "bare" and v["same_text_as_previous_bare"] is not None:
            same = f"{v['same_text_as_previous_bare']:.0%} (vs previous bare run)"
        rows.append([
            v["label"] + (f" ({v['engines']} engines)" if v["engines"] > 1 else ""), v["wall_s"], v["ready_s"],
            v["done_s"], v["requests_per_s"], v["tokens_per_s"], v["tokens_per_s_after_start"], v["generated_tokens"],
            f"{v['requests_ok']}/{f['requests']}" if v["requests_ok"] is not None else None,
            v["prompt_tokens"], _pct(v["cache_hit_ratio"]),
            2 * params * computed / 1e12 if params and computed is not None else None,
            v["kv_cache_tokens"], v["step_tokens"], same, v["peak_rss_bytes"] / gib if v["peak_rss_bytes"] else None,
            f"{v['runs']}" + (f" ({v['failed_runs']} failed)" if v["failed_runs"] else "")])
    if name == "docs":
        what = (f"{f['docs']} generated documents (~{f['doc_words']} words) x {f['questions']} questions = "
                f"{f['requests']} requests, shuffled (seed {f['seed']}); every request = system prompt + the whole "
                f"document + one question; temperature 0, max_tokens {f['max_tokens']}")
    else:
        sampling = ("max_tokens from a quarter of {m} up to {m}, some requests with top_p 0.9, penalties or a "
                    "repetition penalty" if f.get("sampling") == "varied"
                    else "max_tokens {m}").format(m=f["max_tokens"])
        what = (f"{f['requests']} synthetic chat requests (seed {f['seed']}), no shared document; temperature 0, "
                f"{sampling}")
    lines = [
        f"## Workload `{name}`", "",
        f"- {what}",
        f"- Prompt tokens (model's tokenizer and chat template): {f['prompt_tokens']:,} in all, "
        f"{f['unique_prompt_tokens']:,} unique (the token trie of all prompts), {f['shared_prefix_tokens']:,} distinct "
        f"tokens in prefixes shared by two or more requests; longest prompt {f['longest_prompt']:,}. Best possible "
        f"cache hit ratio (unbounded cache, ideal order): {f['best_hit_ratio']:.1%} "
        + (f"({f['best_hit_ratio_blocks']:.1%} in whole {f['block_size']}-token blocks)" if "block_size" in f else ""),
    ]
    if "kv_cache_tokens" in f:
        kv = f["kv_bytes_per_token"]
        lines.append("- KV cache pinned for every tool: "
                     f"num_gpu_blocks_override={w['engine_args']['num_gpu_blocks_override']} "
                     f"x block_size {f['block_size']} = {f['kv_cache_tokens']:,} tokens"
                     + (f" ({kv:,} bytes/token: {f['kv_cache_tokens'] * kv / 2**20:,.0f} MiB)" if kv else "")
                     + f", {f['kv_cache_share']:.2f} x the distinct shared-prefix tokens")
    chosen = sorted({str(r.get("inner", {}).get("order")) for r in runs
                     if r.get("tool") == "pipeline" and r.get("workload") == name and r.get("inner")})
    if chosen:
        lines.append(f"- Order `pipeline run` chose (its `_report.json`): {', '.join(chosen)}")
    lines += [
        "- Engine settings, the same for every tool: "
        + ", ".join(f"{k}={json.dumps(v)}" for k, v in w["engine_args"].items())
        + ("" if "max_num_seqs" in w["engine_args"] else "; max_num_seqs and max_num_batched_tokens: each tool's own "
           "default (--each-defaults)"),
        "",
        table(["tool", "wall s", "engine up at s", "output done at s", "requests/s", "gen tokens/s",
               "gen tokens/s engine up → output done", "gen tokens", "rows ok", "prompt tokens", "cache hit ratio",
               "prefill TFLOP computed", "KV cache tokens (engine log)", "tokens per step (engine log)",
               "same text as bare", "peak RSS GiB", "runs"], rows),
        "",
    ]
    ratios = [[k, v["speedup"], v["wall_s"], v["tokens_per_s"], v["tokens_per_s_after_start"],
               " vs ".join(_pct(h) or "–" for h in v["cache_hit_ratios"]),
               (v["target"] + (": met" if v["meets_target"] else ": NOT met")) if "target" in v else None]
              for k, v in cmp_.items() if k != "scaling"]
    if ratios:
        lines += [table(["ratio", "speedup (other wall / pipeline wall)", "wall time", "gen tokens/s",
                         "gen tokens/s engine up → output done", "cache hit ratio (pipeline vs other)",
                         "target (issue #21)"], ratios), ""]
    if "scaling" in cmp_:
        sc = cmp_["scaling"]
        eff = sc["efficiency"]
        lines += [f"Scaling, {sc['engines']} engines vs 1 (`pipeline run --data-parallel-size`): "
                  f"efficiency {eff['tokens_per_s_after_start']:.3f} between engine up and output done "
                  f"({eff['tokens_per_s']:.3f} whole process); target >= {sc['target']}: "
                  f"{'met' if sc['meets_target'] else 'NOT met'}.", ""]
    plans = [r["cache_plan"] for r in runs if r["workload"] == name and r.get("cache_plan")
             and len(r["cache_plan"]["engines"]) > 1]
    for plan in plans:  # the engines' prefix plan against what their caches served (engines/cache_plan.py)
        lines += ["Prefix plan per engine (predicted / served share of the prompt): "
                  + ", ".join(f"engine {e['engine']} {e['predicted_share']:.0%} / {e['cached_share'] or 0:.0%}"
                              for e in plan["engines"])
                  + (f"; differs: {'; '.join(plan['differs'])}" if plan["differs"] else "") + ".", ""]
    bare_runs = [r for r in runs if r["workload"] == name and r["tool"] == "bare" and "same_text_as_previous_bare" in r]
    if bare_runs:
        lines += ["Batch-order nondeterminism: the bare script against its own previous run, same file and settings: "
                  + ", ".join(f"{r['same_text_as_previous_bare']:.1%}" for r in bare_runs)
                  + " of completions identical.", ""]
    if params and name == "docs":
        total, unique = f["prompt_tokens"], f["unique_prompt_tokens"]
        lines += [f"Prefill arithmetic ({params / 1e9:.3g} B parameters): 2 x parameters x prompt tokens = "
                  f"{2 * params * total / 1e12:,.1f} TFLOP with no cache hit, {2 * params * unique / 1e12:,.1f} TFLOP "
                  f"at the best possible hit ratio: {1 - unique / total:.1%} of prefill FLOPs can be saved. "
                  "The \"prefill TFLOP computed\" column is 2 x parameters x (prompt - cached tokens) per tool.", ""]
    return lines


def markdown(result: dict[str, Any]) -> str:
    s = result["settings"]
    all_runs = result["runs"]
    lines = [
        "# Engine benchmark: `pipeline run` vs a bare `LLM.chat` script vs vLLM `run_batch`",
        "",
        *([f"**{result['note']}**", ""] if result.get("note") else []),
        f"- When: {result['date']} (UTC); total benchmark time {result['bench_seconds'] / 60:.1f} min",
        f"- Machine: {machine_line(result['machine'])}",
        f"- Versions: {versions_line(result['versions'])}",
        f"- Model `{s['model']}` ({s['model_path']}); environment of every tool: "
        + (", ".join(f"{k}={v}" for k, v in s["env"].items()) or "–"),
        f"- `pipeline run` {'has' if s['pipeline_order'] else 'has NO'} `--order`"
        + (" (pipeline runs with its default, `--order auto`; each workload says what it chose)" if s["pipeline_order"]
           else " (it runs in its own order)"),
        *([f"- Extra `pipeline run` options: {' '.join(s['pipeline_options'])}"] if s["pipeline_options"] else []),
        f"- {s['repeats']} repeat(s) per workload in alternating order ({', '.join(s['tools'])}, ...); medians over "
        f"repeats. 1-minute load average before the runs: {_load_range(all_runs)} "
        f"(on {result['machine']['usable_cores']} cores).",
        "",
    ]
    for name, w in result["workloads"].items():
        lines += workload_lines(name, w, s, all_runs)
    lines += ["Wall time is the whole process, from launch to exit (imports, engine start, reading, "
              "generation, writing, shutdown). Generated tokens, prompt tokens and cached prompt tokens are counted "
              "from each tool's own output (bare: RequestOutput.num_cached_tokens; pipeline: its cached_tokens "
              "column; run_batch: usage.prompt_tokens_details.cached_tokens with --enable-prompt-tokens-details). "
              "Ratios are pipeline / other: a wall-time ratio below 1, a speedup and a throughput ratio above 1 "
              "favour the pipeline. See bench/README.md.", ""]
    return "\n".join(lines)


def _load_range(runs: list[dict[str, Any]]) -> str:
    loads = [r["load_before"] for r in runs if r.get("load_before") is not None]
    return f"{min(loads):.1f} to {max(loads):.1f}" if loads else "–"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--model", help="Model folder or hub id; default: the embedded `smollm2` on CPU "
                        "(required on GPU).")
    parser.add_argument("--workload", choices=("mixed", "docs", "both", "embed"), default="both",
                        help="mixed: synthetic requests, no shared prefix; docs: shuffled documents x questions "
                        "(default: both, one after the other); embed: embeddings lines, pipeline vs run_batch.")
    parser.add_argument("--embed-requests", type=int, help="embed: number of embeddings lines (default: 512 on "
                        "CPU, 20000 on GPU).")
    parser.add_argument("--requests", type=int, help="mixed: number of requests (default: 768 on CPU, 2000 on GPU).")
    parser.add_argument("--max-tokens", type=int, help="mixed: most max_tokens of a request (default: 40 on CPU, "
                        "256 on GPU).")
    parser.add_argument("--sampling", choices=("varied", "fixed"), default="varied",
                        help="mixed: varied (default): max_tokens from a quarter of --max-tokens up to it, some "
                        "requests with top_p, penalties or a repetition penalty; fixed: every request greedy with "
                        "--max-tokens. Temperature 0 either way.")
    parser.add_argument("--each-defaults", action="store_true",
                        help="Leave max_num_seqs and max_num_batched_tokens to each tool's own defaults (what its "
                        "users get: run_batch starts vLLM under smaller ones than LLM(...), and pipeline run "
                        "chooses its own on CPU) instead of pinning LLM(...)'s for every tool.")
    parser.add_argument("--docs", type=int, help="docs: documents (default: 8 on CPU, 256 on GPU).")
    parser.add_argument("--questions", type=int, help="docs: questions per document (default: 10 on CPU, 16 on GPU; "
                        "up to 16 are distinct).")
    parser.add_argument("--doc-words", type=int, default=500, help="docs: words per document (default 500: "
                        "about 800 tokens with SmolLM2's tokenizer).")
    parser.add_argument("--docs-max-tokens", type=int, default=16,
                        help="docs: max_tokens of every request (default 16).")
    parser.add_argument("--spread-max-tokens", action="store_true", help="Both workloads: each request's max_tokens "
                        "drawn from [max / 8, max] instead of max for all (requests that decode for different "
                        "lengths).")
    parser.add_argument("--kv-cache-tokens", type=int, help="docs: KV cache size in tokens for every tool, rounded up "
                        "to whole blocks and to one longest request (default: half the workload's distinct "
                        "shared-prefix tokens). --engine-arg num_gpu_blocks_override=N sets it in blocks instead.")
    parser.add_argument("--repeats", type=int, default=2, help="Runs of each tool per workload, alternating "
                        "(default 2; the bare script's second run measures batch-order nondeterminism against its "
                        "first).")
    parser.add_argument("--gpus", type=int, help="GPUs to use (default: all visible; 0 on CPU). With N >= 2 also "
                        "measures N engines against one (mixed workload).")
    parser.add_argument("--engine-arg", action="append", default=[], metavar="KEY=VALUE",
                        help="vLLM engine argument for every tool, e.g. max_model_len=4096. Repeatable.")
    parser.add_argument("--pipeline-option", action="append", default=[], metavar="OPTION",
                        help="Extra option for `pipeline run` only, e.g. --pipeline-option=--max-in-flight=4096. "
                        "Repeatable.")
    parser.add_argument("--tools", default="bare,pipeline,run_batch", help="Comma-separated subset to run, of bare, "
                        "pipeline, run_batch and three controls: pipeline_input (`pipeline run --order input`; needs "
                        "--order), bare_sorted (the bare script on the file in the pipeline's prefix order) and "
                        "pipeline_key_order (`pipeline run --no-decode-first`).")
    parser.add_argument("--timeout", type=float, default=3600, help="Seconds before one run is killed (default 3600).")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the synthetic request files.")
    parser.add_argument("--note", help="A line to print above the results, e.g. 'small trial run, busy machine'.")
    parser.add_argument("--table", help="Name of the Markdown table in bench/results/ (default: latest.md for bare, "
                        "pipeline and run_batch, else controls_latest.md).")
    parser.add_argument("--keep", action="store_true", help=f"Keep the request files, outputs and logs under {WORK}.")
    args = parser.parse_args()
    visible = detect_gpus()
    args.gpus = visible if args.gpus is None else args.gpus
    if args.gpus > visible:
        parser.error(f"--gpus {args.gpus}: only {visible} GPU(s) visible")
    if args.model is None:
        if args.gpus:
            parser.error("on a GPU machine pass --model PATH (e.g. a Llama 3.1 8B Instruct folder)")
        args.model = "smollm2"
    args.requests = args.requests or (2000 if args.gpus else 768)
    args.max_tokens = args.max_tokens or (256 if args.gpus else 40)
    args.docs = args.docs or (256 if args.gpus else 8)
    args.questions = args.questions or (16 if args.gpus else 10)
    chosen = args.tools.split(",")
    unknown = set(chosen) - {t.name for t in TOOLS}
    if unknown:
        parser.error(f"--tools: unknown {', '.join(sorted(unknown))}")
    if "pipeline_input" in chosen and not pipeline_has_order():
        parser.error("--tools pipeline_input: this checkout's `pipeline run` has no --order")

    started = time.monotonic()
    work = WORK / f"engines-{time.strftime('%Y%m%d-%H%M%S')}"
    base = make_setup(args, work)
    if args.workload == "embed":
        from embed import run_embed

        return run_embed(base, work, n=args.embed_requests or (20000 if args.gpus else 512), seed=args.seed,
                         repeats=args.repeats, note=args.note, keep=args.keep, started=started)
    tools = [t for t in TOOLS if t.name in chosen]
    if args.gpus >= 2 and "pipeline" in chosen:
        tools.append(Tool(f"pipeline_dp{args.gpus}", "pipeline run", pipeline_command(args.gpus, "prefix"),
                          read_pipeline, PIPELINE.ready, PIPELINE.done, engines=args.gpus))
    names = ("mixed", "docs") if args.workload == "both" else (args.workload,)
    setups = [mixed_setup(base, args, work) if n == "mixed" else docs_setup(base, args, work) for n in names]
    workloads_text = ", ".join(f"{s.workload} ({s.n_requests} requests)" for s in setups)
    print(f"{len(tools)} tools x {args.repeats} repeats on {workloads_text}; "
          f"pipeline --order: {'yes' if pipeline_has_order() else 'no'}; work dir {work}", file=sys.stderr)

    runs: list[dict[str, Any]] = []
    workloads: dict[str, Any] = {}
    for s in setups:
        w_tools = [t for t in tools if s.workload == "mixed" or t.engines == 1]  # N engines: mixed only
        w_runs: list[dict[str, Any]] = []
        previous_bare = None
        for repeat in range(args.repeats):
            bare_texts = None
            for tool in w_tools:
                run = run_once(tool, s, work, repeat, bare_texts, previous_bare if tool.name == "bare" else None)
                if tool.name == "bare" and run["rc"] == 0:
                    bare_texts = previous_bare = run["texts"]
                w_runs.append(run)
        for run in w_runs:
            run.pop("texts", None)
        summary = summarize(w_tools, w_runs)
        workloads[s.workload] = {"facts": s.facts, "engine_args": s.engine_args, "summary": summary,
                                 "comparison": compare(summary, args.gpus, s.workload)}
        runs += w_runs

    result = {
        **envelope("engines", args.note, started),
        "settings": {"model": base.model, "model_path": base.model_path, "repeats": args.repeats, "gpus": args.gpus,
                     "tools": [t.name for t in tools], "pipeline_options": base.pipeline_options,
                     "pipeline_order": pipeline_has_order(),
                     "env": {k: base.env[k] for k in ("VLLM_CPU_KVCACHE_SPACE", "CUDA_VISIBLE_DEVICES")
                             if k in base.env}},
        "workloads": workloads,
        "runs": runs,
    }
    # a run of a subset of the tools (controls, a quick check) keeps the full comparison's table
    latest = args.table or ("latest.md" if {"bare", "pipeline", "run_batch"} <= set(chosen) else "controls_latest.md")
    publish("engines", result, markdown(result), latest, work, args.keep)


if __name__ == "__main__":
    main()
