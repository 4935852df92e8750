"""The real engine: vLLM's offline `LLM`, fed continuously.

Requests go in through `LLM.enqueue_chat` (the same rendering path as `LLM.chat`: the model's
chat template, tools included), completions requests through `LLM.enqueue` (a plain prompt, as
`LLM.generate` takes it), and come out of `llm_engine.step()` as each one finishes, so the
engine always has the whole window of work and never waits on a batch barrier. Each request's
normalized body (`Request.body`, as its endpoint's `parse` made it) is validated as it is by
vLLM's own OpenAI `ChatCompletionRequest` and `CompletionRequest`, so sampling defaults,
response_format and tool_choice mean what they mean in vLLM's OpenAI server. A pooling model's
requests go to pooling.py, which validates them with vLLM's pooling request classes. Imported
only inside engine workers.
"""

from __future__ import annotations

import json
import logging
import os
import re
import uuid
from typing import Any

from pipeline.endpoints import ENDPOINTS
from pipeline.engines.base import EngineSpec, Result
from pipeline.engines.cores import pin_beside_model
from pipeline.engines.pooling import PoolingQueue
from pipeline.models.render import audio_parts, context_problem, engine_tools, image_parts
from pipeline.models.vision import too_many_images
from pipeline.records import Problem, Request

log = logging.getLogger("pipeline.engines")
_PROMPT_LENGTH = re.compile(r"prompt \(length (\d+)\)")
_IMAGE_LIMIT = re.compile(r"At most (\d+) image\(s\) may be provided in one prompt")  # vLLM's limit check

GiB = 1 << 30
# Engines that the executor starts on this machine at once (it sets this in each engine's
# environment), so that they share the memory that the CPU KV cache default is sized from.
ENGINES_ENV = "PIPELINE_ENGINES_PER_NODE"

try:
    import vllm
    from vllm import LLM
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
    from vllm.entrypoints.openai.completion.protocol import CompletionRequest
    from vllm.lora.request import LoRARequest
    from vllm.parser.parser_manager import ParserManager
    from vllm.platforms import current_platform
    from vllm.reasoning import ReasoningParserManager
    from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams
    from vllm.tool_parsers import ToolParserManager
    from vllm.tool_parsers.utils import get_json_schema_from_tools
    from vllm.v1.engine.exceptions import EngineDeadError
except ImportError as e:  # pragma: no cover - depends on the install
    raise ImportError(
        f"vLLM is not installed ({e}). Install the engine: `pip install -e .[gpu]` on a GPU machine, "
        "`pip install -e .[cpu]` on CPU, or `make install`."
    ) from e


class VLLMEngine:
    speech = None  # speech.SpeechQueue, made at the first transcription or translation

    def __init__(self, spec: EngineSpec):
        self.spec = spec
        self.cpu = current_platform.is_cpu()
        args = dict(spec.engine_args)
        if args.get("enforce_eager") is None:
            # On CPU, torch.compile warm-up costs minutes and gains nothing for small batches.
            args["enforce_eager"] = self.cpu
        args.setdefault("trust_remote_code", False)
        dtype_reason = "--dtype" if args.get("dtype") else "the model's (vLLM's default)"
        if self.cpu and not args.get("dtype"):
            chosen = cpu_default_dtype(_cpu_flags())
            if chosen is not None:
                args["dtype"], dtype_reason = chosen, (
                    "this CPU has no native bf16 (no avx512_bf16 or amx_bf16): vLLM would emulate it, "
                    "several times slower than float32")
        if self.cpu:
            args.update(cpu_batch_defaults(args))
        if self.cpu and _cpu_kv_cache_unset(args):
            args["kv_cache_memory_bytes"] = cpu_kv_cache_bytes(_cpu_available_memory(),
                                                               int(os.environ.get(ENGINES_ENV) or 1))
            log.info("CPU KV cache: %.2f GiB (set VLLM_CPU_KVCACHE_SPACE=<GiB> or --engine-arg "
                     "kv_cache_memory_bytes=... to choose)", args["kv_cache_memory_bytes"] / GiB)
        if self.cpu and spec.lora:
            # vLLM's CPU LoRA ops pick each token's adapter weights by slot index, and the index of a
            # request without adapter is -1: Python's last slot. One slot more than the adapters
            # keeps that last slot empty (zero weights), so base-model requests batched with
            # adapter requests run on the base model (slots fill from the first free one).
            args["max_loras"] = max(args.get("max_loras") or 1, len(spec.lora)) + 1
        _check_reasoning_parser(args.get("reasoning_parser"))
        self.llm = LLM(model=spec.model, **args)
        self.engine = self.llm.llm_engine
        # One LoRARequest per adapter (ids from 1, in --lora order), loaded now so that an adapter
        # vLLM cannot read stops the engine at start, not one request in the middle of the run.
        self.loras = {name: LoRARequest(name, i, path) for i, (name, path) in enumerate(spec.lora.items(), 1)}
        for lora in self.loras.values():
            self.engine.add_lora(lora)
        self.tokenizer = self.llm.get_tokenizer()
        model_config = self.llm.model_config
        self.runner = model_config.runner_type  # generate, or pooling: embeddings go to self.pooling
        self.pooling = PoolingQueue(self.llm, self._refusal) if self.runner == "pooling" else None
        self.max_model_len = model_config.max_model_len
        self.defaults = model_config.get_diff_sampling_param()
        self.tool_parser_name, self.tool_parser_cls = _tool_parser(spec.tool_parser, self.tokenizer)
        self.reasoning_parser = args.get("reasoning_parser") or None
        self.parser_cls = _reasoning(self.reasoning_parser, spec.model, self.tokenizer, model_config)
        self.inflight: dict[str, tuple[int, Request, ChatCompletionRequest, tuple[str, ...]]] = {}
        self.info = {
            "model": spec.model, "max_model_len": self.max_model_len,
            "platform": "cpu" if self.cpu else current_platform.device_name,
            "vllm": vllm.__version__, "enforce_eager": args["enforce_eager"],
            "tool_parser": self.tool_parser_name, "reasoning_parser": self.reasoning_parser, "pid": os.getpid(),
            "kv_cache_memory_bytes": self.engine.vllm_config.cache_config.kv_cache_memory_bytes,
            "dtype": str(model_config.dtype).removeprefix("torch."), "dtype_reason": dtype_reason,
            "sampling_defaults": self.defaults, "lora": {n: r.lora_path for n, r in self.loras.items()},
            "runner": self.runner,
            "max_num_seqs": self.engine.vllm_config.scheduler_config.max_num_seqs,
            "max_num_batched_tokens": self.engine.vllm_config.scheduler_config.max_num_batched_tokens,
            # CPU build: this worker and vLLM's scheduler moved off the model's cores (cores.py)
            "cpus_beside_model": pin_beside_model() if self.cpu else None,
        }

    # ---- requests in -----------------------------------------------------------------------
    def add(self, items: list[tuple[int, Request]]) -> list[Result]:
        refused = []
        for seq, req in items:
            try:
                problem = ENDPOINTS[req.endpoint].unsupported(self.runner)
                if problem is not None:
                    raise _Refused(problem)
                SUBMIT[req.endpoint](self, seq, req)
            except _Refused as e:
                refused.append(Result(seq, error=e.error, warnings=e.warnings))
        return refused

    def _pool(self, seq: int, req: Request) -> None:
        """An embeddings, score or rerank request, to the pooling queue."""
        refusal = self.pooling.add(seq, req)
        if refusal is not None:
            raise _Refused(refusal.error)

    def _speech(self, seq: int, req: Request) -> None:
        """A transcription or translation request, to the speech queue (speech.py)."""
        from pipeline.engines.speech import Refusal, SpeechQueue

        try:
            if self.speech is None:
                self.speech = SpeechQueue(self.llm)
            self.speech.add(seq, req, _external_id)
        except Refusal as e:
            raise _Refused(e.problem) from None

    def _chat(self, seq: int, req: Request) -> None:
        """A chat request, rendered with the model's chat template (tools included)."""
        creq = _validated(chat_request, req)
        if self.parser_cls is not None:
            creq = self._parser(creq).adjust_request(creq)  # what vLLM's server does before sampling
        schema = get_json_schema_from_tools(
            tool_choice=creq.tool_choice, tools=creq.tools, parallel_tool_calls=creq.parallel_tool_calls
        ) if creq.tools else None
        self._generate(seq, req, creq, schema, lambda params, lora: self.llm.enqueue_chat(
            [req.body["messages"]], [params], use_tqdm=False, tools=engine_tools(req), lora_request=lora,
            chat_template_kwargs=template_kwargs(creq)))

    def _completion(self, seq: int, req: Request) -> None:
        """A completions request: its prompt as it is, as `LLM.generate` takes it."""
        creq = _validated(completion_request, req)
        prompt = req.body["prompt"]
        prompt = prompt if isinstance(prompt, str) else {"prompt_token_ids": prompt}
        self._generate(seq, req, creq, None, lambda params, lora: self.llm.enqueue(
            [prompt], [params], lora_request=lora, use_tqdm=False))

    def _generate(self, seq: int, req: Request, creq, schema, enqueue) -> None:
        """The sampling parameters of a validated request, and the request enqueued with them."""
        warnings: list[str] = []
        params = creq.to_sampling_params(req.max_tokens, self.defaults)
        params.output_kind = RequestOutputKind.FINAL_ONLY
        if schema is not None:  # tool_choice required or named: the call's JSON is enforced
            params.structured_outputs = StructuredOutputsParams(json=schema)
        if params.seed is not None and self.cpu and self.spec.seed_policy != "engine":
            if self.spec.seed_policy == "error":
                raise _Refused(Problem("unsupported_parameter",
                                       "seed is not supported by the CPU build of vLLM (it crashes the "
                                       "engine); drop it or run with --seed-on-cpu ignore", "seed"))
            params.seed = None
            warnings.append("seed ignored: the CPU build of vLLM cannot seed one request (it crashes the engine)")
        lora = self.loras[req.adapter] if req.adapter else None
        try:
            [rid] = enqueue(params, lora)
        except Exception as e:
            raise _Refused(self._refusal(e, ENDPOINTS[req.endpoint].prompt_field, req), tuple(warnings)) from None
        self.inflight[_external_id(rid)] = (seq, req, creq, tuple(warnings))

    def _refusal(self, e: Exception, field: str = "messages", req: Request | None = None) -> Problem:
        """vLLM's refusal of a prompt, in our words: a prompt over the context gets the same
        verdict (and message) that `estimate` and `validate` give it (models/render.py); one over
        the model's own image limit intake's too_many_images, naming the first image over it; audio
        it lacks a package to prepare (the CPU build has no torchaudio to resample) unsupported_content.
        EngineDeadError (vLLM's engine core is gone) is no refusal but the engine's death: raised again,
        it ends the worker, and the engine is restarted and its requests redone."""
        if isinstance(e, EngineDeadError):
            raise e
        message = _first_line(e)
        heard = next(audio_parts(req.messages), None) if req is not None and req.messages else None
        if isinstance(e, ImportError) and heard is not None:
            return Problem("unsupported_content", f"vLLM could not prepare the audio, a package it needs is missing "
                           f"({type(e).__name__}: {message}): it resamples audio to the model's rate with "
                           "torchaudio, which the CPU build lacks. Hint: send audio at the model's sampling rate "
                           "(16 kHz for Qwen2-Audio and Ultravox) or install torchaudio", heard[0])
        images = _IMAGE_LIMIT.search(message)
        if images is not None and req is not None and req.messages:
            return too_many_images([p for p, _ in image_parts(req.messages)], int(images.group(1)),
                                   models_own="--limit-mm-per-prompt" not in message)
        length = _PROMPT_LENGTH.search(message)  # the input processor's form
        tokens = int(length.group(1)) if length else None
        param = getattr(e, "parameter", None)  # the renderer's: VLLMValidationError(parameter=...)
        if param == "input_tokens" and isinstance(getattr(e, "value", None), int):
            tokens = e.value
        if tokens is not None or param in ("input_tokens", "input_text"):
            problem = context_problem(tokens, self.info["max_model_len"], at_least="at least" in message, field=field)
            if problem is not None:
                return problem
        return Problem("invalid_request", message, field)

    # ---- results out -------------------------------------------------------------------------
    def step(self) -> list[Result]:
        if self.pooling is not None:
            return self.pooling.step()
        done = []
        for out in self.engine.step():
            if not out.finished:
                continue
            if self.speech is not None and self.speech.owns(out.request_id):
                done.extend(r for r in [self._heard(out)] if r is not None)
                continue
            seq, req, creq, warnings = self.inflight.pop(out.request_id)
            try:
                done.append(self._result(seq, req, creq, warnings, out))
            except Exception as e:  # a bug in reading one output must not take the engine down
                log.exception("reading the output of request %s failed", req.custom_id)
                problem = Problem("output_error", f"reading the engine's output failed: {_first_line(e)}")
                done.append(Result(seq, error=problem,
                                   prompt_tokens=len(out.prompt_token_ids or ())))
        return done

    def _heard(self, out) -> Result | None:
        """A speech request's engine output: its Result once all of it is done (speech.py)."""
        return self.speech.finished(out, _external_id)

    def _result(self, seq, req: Request, creq, warnings, out) -> Result:
        choices = [self._choice(req, creq, c, out.prompt_token_ids or [])
                   for c in sorted(out.outputs, key=lambda c: c.index)]
        thinking = [c.pop("_reasoning_tokens") for c in choices]
        thinks = self.parser_cls is not None and ENDPOINTS[req.endpoint].converses
        tokens = [len(c.token_ids) for c in sorted(out.outputs, key=lambda c: c.index)]
        return Result(
            seq, choices,
            prompt_tokens=len(out.prompt_token_ids or ()),
            completion_tokens=sum(tokens),
            cached_tokens=out.num_cached_tokens or 0,
            reasoning_tokens=sum(thinking) if thinks else None,
            warnings=warnings,
            choice_tokens=tokens, choice_reasoning_tokens=thinking if thinks else None,
        )

    def _parser(self, creq):
        """A new vLLM Parser for one choice (parsers hold state: the server makes one per choice)."""
        return self.parser_cls(self.tokenizer, creq.tools, chat_template_kwargs=template_kwargs(creq),
                               model_config=self.llm.model_config)

    def _split(self, creq, c, prompt_ids) -> tuple[str | None, str | None, int]:
        """(thinking, answer, thinking tokens) of one choice, as vLLM's OpenAI server splits it."""
        if self.parser_cls is None:
            return None, c.text, 0
        parser = self._parser(creq)
        parser.set_prompt_token_ids(prompt_ids)
        reasoning, content, _ = parser.parse(c.text, creq, enable_auto_tools=False, model_output_token_ids=c.token_ids)
        tokens = reasoning_tokens(parser, c.token_ids, reasoning)
        return (reasoning if creq.include_reasoning else None), content, tokens

    def _choice(self, req: Request, creq, c, prompt_ids=()) -> dict[str, Any]:
        """One choice in the row's form; a completion's text is its content, and its `logprobs`
        (a number of alternatives) gives the same per-token logprobs as chat's top_logprobs."""
        if isinstance(creq, CompletionRequest):
            top = req.body.get("logprobs")
            return {"index": c.index, "content": c.text, "tool_calls": None, "finish_reason": c.finish_reason or "stop",
                    "logprobs": self._logprobs(c, top) if top is not None else None, "reasoning_content": None,
                    "_reasoning_tokens": 0}
        reasoning, answer, thinking = self._split(creq, c, prompt_ids)
        parser = self.tool_parser_cls(self.tokenizer, creq.tools) if self.tool_parser_cls and req.tools else None
        content, tool_calls, finish = read_tool_calls(answer, c.finish_reason or "stop", req, creq, parser)
        return {
            "index": c.index, "content": content, "tool_calls": tool_calls, "finish_reason": finish,
            "logprobs": self._logprobs(c, req.body.get("top_logprobs", 0)) if req.body.get("logprobs") else None,
            "reasoning_content": reasoning, "_reasoning_tokens": thinking,
        }

    def _logprobs(self, c, top_n: int) -> dict[str, Any] | None:
        """vLLM's per-token {token_id: Logprob} (the sampled token plus the top ones) into
        OpenAI's choice.logprobs.content: each token with its `top_n` most likely alternatives."""
        if c.logprobs is None:
            return None
        content = []
        for token_id, entries in zip(c.token_ids, c.logprobs, strict=True):
            ranked = sorted((lp.rank, tid, lp) for tid, lp in entries.items() if lp.rank is not None)
            content.append({
                **self._token(token_id, entries.get(token_id)),
                "top_logprobs": [self._token(tid, lp) for _, tid, lp in ranked[:top_n]],
            })
        return {"content": content}

    def _token(self, token_id: int, lp) -> dict[str, Any]:
        decoded = lp.decoded_token if lp is not None else None
        text = decoded if decoded is not None else self.tokenizer.decode([token_id])
        return {"token": text, "logprob": float(lp.logprob) if lp is not None else None,
                "bytes": list(text.encode("utf-8", errors="replace"))}

    def pending(self) -> int:
        return len(self.inflight) + (self.pooling.pending() if self.pooling else 0) + (
            self.speech.pending() if self.speech else 0)

    def close(self) -> None:
        self.inflight.clear()
        self.engine.engine_core.shutdown()  # LLM has no shutdown of its own in vLLM 0.32


def template_kwargs(creq) -> dict[str, Any]:
    """The chat template's keyword arguments of a request, as vLLM's server makes them: its
    chat_template_kwargs, reasoning_effort, and enable_thinking from reasoning_effort when the
    request sets no enable_thinking of its own."""
    return creq.build_chat_params(None, "auto").chat_template_kwargs


def reasoning_tokens(parser, token_ids, reasoning: str | None) -> int:
    """A choice's thinking tokens: vLLM's count (what its server reports in
    completion_tokens_details), or, where vLLM's parser counts none because the chat template
    opened the thinking in the prompt (DeepSeek-R1's and Qwen3's templates do), the tokens
    before the end-of-thinking token (all of them when thinking never ended)."""
    counted = parser.count_reasoning_tokens(token_ids)
    if counted or not reasoning:
        return counted
    end = getattr(parser.reasoning_parser, "end_token_id", None)
    ids = list(token_ids)
    return ids.index(end) if end is not None and end in ids else len(ids)


def read_tool_calls(text: str | None, finish: str, req: Request, creq, parser) -> tuple[str | None, list | None, str]:
    """(content, tool_calls, finish_reason) of one choice, the way vLLM's OpenAI server reads it:
    a named function's text is its arguments; `required` produced a JSON list of calls; `auto`
    calls are parsed out of the text by the model family's tool parser."""
    choice = req.tool_choice
    if text is None:  # no answer: the thinking used every token
        return None, None, finish
    if isinstance(choice, dict):
        return None, [_call(choice["function"]["name"], text)], finish
    if choice == "required":
        calls = _loads(text)
        if isinstance(calls, list):
            return None, [_call(k.get("name"), json.dumps(k.get("parameters", {}), ensure_ascii=False))
                          for k in calls if isinstance(k, dict)], "tool_calls" if finish == "stop" else finish
        return text, None, finish
    if req.tools and choice in (None, "auto") and parser is not None:
        parsed = parser.extract_tool_calls(text, creq)
        if parsed.tools_called:
            calls = [_call(t.function.name, t.function.arguments, t.id) for t in parsed.tool_calls]
            return parsed.content or None, calls, "tool_calls"
    return text, None, finish


# How each endpoint's request goes into the engine (tests/unit/test_registry.py: one entry per endpoint).
SUBMIT = {"chat": VLLMEngine._chat, "completions": VLLMEngine._completion, "embeddings": VLLMEngine._pool,
          "score": VLLMEngine._pool, "rerank": VLLMEngine._pool, "transcriptions": VLLMEngine._speech,
          "translations": VLLMEngine._speech}


def chat_request(req: Request) -> ChatCompletionRequest:
    """The request's body as vLLM's OpenAI protocol model (what its server would have built)."""
    return ChatCompletionRequest.model_validate(_body(req))


def completion_request(req: Request) -> CompletionRequest:
    """A completions request as vLLM's OpenAI protocol model (what its server would have built)."""
    return CompletionRequest.model_validate(_body(req))


def _validated(make, req: Request):
    """vLLM's protocol model of the request (`make`); a field vLLM's API refuses refuses the request."""
    try:
        return make(req)
    except Exception as e:  # pydantic ValidationError: a field vLLM's API refuses
        raise _Refused(Problem("invalid_parameter", f"vLLM refused the request: {_first_line(e)}")) from None


class _Refused(Exception):
    def __init__(self, error: Problem, warnings: tuple[str, ...] = ()):
        super().__init__(error.message)
        self.error, self.warnings = error, warnings


def _body(req: Request) -> dict[str, Any]:
    """The request's normalized body (`Request.body`, made once by its endpoint's `parse`) as
    vLLM's OpenAI layer takes it, with what the engine sets itself: the served model, and the
    length limit (`_generate` gives it from the request's bound and the context left)."""
    return {k: v for k, v in req.body.items() if k not in _ENGINE_SETS} | {"model": "batch"}


_ENGINE_SETS = ("max_tokens", "max_completion_tokens")


def _external_id(rid: str) -> str:
    """enqueue_chat returns the engine's internal id, `<external>-<8 random chars>`; outputs
    carry the external one (an integer string from the LLM's own counter)."""
    head, _, tail = rid.rpartition("-")
    return head if head.isdigit() and len(tail) == 8 else rid


def _call(name: str | None, arguments: str, call_id: str | None = None) -> dict[str, Any]:
    return {"id": call_id or f"call_{uuid.uuid4().hex[:24]}", "type": "function",
            "function": {"name": name, "arguments": arguments}}


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return None


def cpu_default_dtype(flags: set[str]) -> str | None:
    """The dtype a CPU engine should compute in when none is given: float32 on an x86 CPU without
    native bf16 (vLLM's default bf16 is then emulated: 507 s against 120 s for the same 40 requests
    on such a machine, see issue 11), else None (the model's dtype, vLLM's default)."""
    x86 = "avx2" in flags or "avx512f" in flags or "sse4_2" in flags
    if x86 and not flags & {"avx512_bf16", "amx_bf16"}:
        return "float32"
    return None


def cpu_batch_defaults(args: dict[str, Any]) -> dict[str, int]:
    """The step size a CPU engine gets where the user chose none: vLLM's own for its OpenAI
    server and `run_batch` (on CPU 128 sequences and 2,048 tokens a step per engine), not the
    twice larger ones `LLM(...)` takes. Measured on the decode-heavy benchmark (768 requests,
    docs/performance.md): the model's process spent 140 CPU-seconds at the smaller step against
    165 at the larger, the same requests and texts. Only what the user left unset is returned."""
    from vllm.engine.arg_utils import EngineArgs
    from vllm.usage.usage_lib import UsageContext

    world = (args.get("tensor_parallel_size") or 1) * (args.get("pipeline_parallel_size") or 1)
    tokens, seqs = EngineArgs.get_batch_defaults(world)
    chosen = {"max_num_seqs": seqs.get(UsageContext.OPENAI_API_SERVER),
              "max_num_batched_tokens": tokens.get(UsageContext.OPENAI_API_SERVER)}
    return {k: v for k, v in chosen.items() if v is not None and args.get(k) is None}


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_kv_cache_bytes(available: int, engines: int = 1, *, share: float = 0.3, cap: int = 4 * GiB) -> int:
    """The KV cache each CPU engine gets when nobody chose one: `share` of the memory available
    now (capped at `cap`), split between the `engines` that start together, in whole MiB.

    Without a size, vLLM's CPU build reserves `gpu_memory_utilization` (0.92) of the whole NUMA
    node and refuses to start when less than that is free, which a few GiB of page cache cause.
    """
    per_engine = min(cap, int(available * share)) // max(1, engines)
    return max(per_engine >> 20, 1) << 20


def _cpu_kv_cache_unset(args: dict[str, Any]) -> bool:
    """Neither the user (VLLM_CPU_KVCACHE_SPACE, as vLLM reads it, or an engine argument that
    sizes the cache) nor vLLM's own `gpu_memory_utilization`, when given, decides the size."""
    return (os.environ.get("VLLM_CPU_KVCACHE_SPACE", "") == ""
            and args.get("kv_cache_memory_bytes") is None and args.get("gpu_memory_utilization") is None)


def _cpu_available_memory() -> int:
    """Memory available to the engine now, as vLLM's CPU worker counts it (free memory, page
    cache and reclaimable slabs of the NUMA node it runs on, within the cgroup's limit)."""
    from vllm.utils.cpu_resource_utils import get_allowed_cpu_list, get_memory_node_info

    try:
        return get_memory_node_info(get_allowed_cpu_list()[0].numa_node).available_memory
    except Exception:  # no lscpu, an unusual /sys: the machine-wide figure
        import psutil

        return psutil.virtual_memory().available


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return " ".join(text.split("\n")[:3])[:500]


def _reasoning(name: str | None, model: str, tokenizer, model_config):
    """vLLM's own Parser class for the reasoning split (None: no parser), built as its OpenAI
    server builds it; tool calls are read from the answer afterwards, by read_tool_calls."""
    if not name:
        return None
    return ParserManager.get_parser(reasoning_parser_name=name, model_name=model, tokenizer=tokenizer,
                                    is_harmony=model_config.hf_config.model_type == "gpt_oss")


def _check_reasoning_parser(name: str | None) -> None:
    """Refuse a --reasoning-parser vLLM does not register, naming those it does."""
    if name and name not in ReasoningParserManager.list_registered():
        raise ValueError(f"--reasoning-parser {name!r} is not one of vLLM's reasoning parsers: "
                         f"{', '.join(ReasoningParserManager.list_registered())}")


def _tool_parser(name: str | None, tokenizer):
    """The vLLM tool parser for tool_choice "auto": the one asked for, else the format the
    tokenizer knows (Llama 3.1's JSON calls when it has <|python_tag|>, else Hermes tags)."""
    if name:
        try:
            cls = ToolParserManager.get_tool_parser(name)
            cls(tokenizer)
        except Exception as e:
            raise ValueError(f"--tool-call-parser {name!r} cannot be used with this model: {_first_line(e)}") from None
        return name, cls
    name = "llama3_json" if "<|python_tag|>" in tokenizer.get_vocab() else "hermes"
    return name, ToolParserManager.get_tool_parser(name)
