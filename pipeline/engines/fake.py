"""An instant engine for fast tests and I/O benchmarks: it echoes the last message back.
It reads each request's normalized body (`Request.body`) as it is, as vLLM's engine does.

Options (EngineSpec.options): `die_on` (a custom_id whose request kills the worker process,
like a poison request kills a real engine), `die_at` (kill the process when this many requests
have been added, once per marker file `die_marker`), `step_delay` (seconds per step),
`log_file` (append every custom_id the engine receives, to check what a resume re-sends),
`die_loading` (die while loading, before the worker reports ready: a signal name such as SIGKILL,
as the OOM killer does, or an exit code), `load_log` (append a line at every load) and
`die_loads` (with `load_log`: die only while this many loads have been logged, then load fine),
`runner` ("generate", the default, or "pooling": an embedding model, whose vectors are
`embedding_size` (8) deterministic unit-length floats per input, derived from the input's hash,
and whose score of a pair is the cosine of its two vectors), `cpus_beside_model` (reported as a
CPU vLLM engine reports the cores its model left free), `first_request_file` (write the
wall-clock time, `time.time()`, at which the first request arrived: time to first request for
benchmarks), `prefix_cache_blocks` (keep a prefix cache of that many blocks of 256 characters of
the conversation, least recently used out, and report the prompt share it served as
`cached_tokens`; 0, the default: no cache, `cached_tokens` 0), `pause_file` (while that file
exists, answer no more than the first `pause_after` requests, 0 by default: tests hold a run
mid-way on an event of their own, not for a while). A completion echoes its prompt. It prints its
engine arguments at start, as vLLM does (its output is shown with -v). With a reasoning parser (`--reasoning-parser`, or
engine_args["reasoning_parser"]) it thinks first, as a reasoning model does: its thinking is
"Let me think about:" and the prompt's words, cut at the request's thinking_token_budget (one word a
token); the answer (the echo) takes what max_tokens leaves, none when the thinking took it all.
A chat_template_kwargs enable_thinking false, or reasoning_effort "none", turns the thinking off.
"""

from __future__ import annotations

import hashlib
import os
import signal
import sys
import time

from pipeline.endpoints import ENDPOINTS
from pipeline.engines.base import EngineSpec, Result
from pipeline.records import Problem, Request, embedding_inputs, score_inputs, score_pairs


class FakeEngine:
    def __init__(self, spec: EngineSpec):
        self.opts = spec.options
        self.thinks = bool(spec.engine_args.get("reasoning_parser"))
        self.runner = self.opts.get("runner", "generate")
        self.info = {"model": spec.model, "max_model_len": self.opts.get("max_model_len", 4096),
                     "platform": "fake", "pid": os.getpid(), "runner": self.runner,
                     "cpus_beside_model": self.opts.get("cpus_beside_model")}  # as a CPU vLLM engine reports
        self.queue: list[Result] = []
        self.added = 0
        self.answered = 0
        self.cache = _PrefixCache(int(self.opts.get("prefix_cache_blocks") or 0))
        print(f"fake engine: non-default args: {spec.engine_args}", flush=True)  # as vLLM logs them
        self._load()

    def _load(self) -> None:
        loads = 0
        if self.opts.get("load_log"):
            with open(self.opts["load_log"], "a+") as log:
                log.write(f"load {os.getpid()}\n")
                log.seek(0)
                loads = len(log.readlines())
        how = self.opts.get("die_loading")
        if how is None or ("die_loads" in self.opts and loads > self.opts["die_loads"]):
            return
        print(f"fake engine: loading {self.info['model']} (load {loads}) ... out of memory", file=sys.stderr,
              flush=True)
        if isinstance(how, str):
            os.kill(os.getpid(), getattr(signal, how))
            time.sleep(10)  # the signal is delivered before this ends
        os._exit(int(how))

    def add(self, items: list[tuple[int, Request]]) -> list[Result]:
        if self.added == 0 and items and self.opts.get("first_request_file"):
            with open(self.opts["first_request_file"], "w") as f:
                f.write(f"{time.time()}\n")
        if self.opts.get("log_file"):
            with open(self.opts["log_file"], "a") as log:
                log.write("".join(f"{req.custom_id}\n" for _, req in items))
        for seq, req in items:
            self.added += 1
            if req.custom_id in self.opts.get("die_on", ()):
                os._exit(86)
            if self.opts.get("die_at") == self.added and self._claim_death():
                os._exit(86)
            problem = ENDPOINTS[req.endpoint].unsupported(self.runner)
            self.queue.append(Result(seq, error=problem) if problem is not None
                              else SUBMIT[req.endpoint](self, seq, req))
        return []

    def _complete(self, seq: int, req: Request) -> Result:
        text = _last_text(req)
        prompt = (sum(len(str(m.get("content") or "").split()) + 4 for m in req.messages) if req.messages
                  else _words(req.body["prompt"]))
        budget = req.max_tokens or 16
        converses = ENDPOINTS[req.endpoint].converses
        thoughts = _thoughts(req, text) if self.thinks and converses else None
        thinking = thoughts[:budget] if thoughts is not None else []
        words = text.split()[:budget - len(thinking)]
        cut = thoughts is not None and len(thoughts) >= budget
        choice = {"content": None if cut else " ".join(words), "tool_calls": None, "logprobs": None,
                  "finish_reason": "length" if cut or len(text.split()) > len(words) else "stop",
                  "reasoning_content": " ".join(thinking) if thoughts else None}
        used = len(thinking) + len(words)
        thinks = self.thinks and converses
        cached = self.cache.served(req, prompt)
        return Result(seq, [{"index": i, **choice} for i in range(req.n)], prompt, used * req.n, cached,
                      reasoning_tokens=len(thinking) * req.n if thinks else None,
                      choice_tokens=[used] * req.n, choice_reasoning_tokens=[len(thinking)] * req.n if thinks else None)

    def _embed(self, seq: int, req: Request) -> Result:
        size = self.opts.get("embedding_size", 8)
        dimensions = req.body.get("dimensions", size)
        if dimensions > size:
            return Result(seq, error=Problem("invalid_parameter", f"dimensions {dimensions} is more than the "
                                             f"model's {size}", "dimensions"))
        inputs = embedding_inputs(req.body["input"])
        vectors = [fake_vector(str(one), size)[:dimensions] for one in inputs]
        tokens = sum(len(one) if isinstance(one, list) else len(one.split()) for one in inputs)
        return Result(seq, prompt_tokens=tokens, completion_tokens=0, cached_tokens=0,
                      embeddings=[_unit(vector) for vector in vectors])

    def _score(self, seq: int, req: Request) -> Result:
        size = self.opts.get("embedding_size", 8)
        pairs = score_pairs(req)
        scores = [sum(a * b for a, b in zip(_unit(fake_vector(q, size)), _unit(fake_vector(d, size)), strict=True))
                  for q, d in pairs]
        queries, documents = score_inputs(req)  # an embedding model's count: each text once (pooling.py)
        return Result(seq, prompt_tokens=sum(map(_words, [*queries, *documents])), completion_tokens=0,
                      cached_tokens=0, scores=scores)

    def _transcribe(self, seq: int, req: Request) -> Result:
        """A deterministic fake transcription (or translation): "fake transcription of N.NN s"
        and one word of the audio's digest, its prompt tokens what vLLM's Whisper prompt counts
        (4 a chunk, endpoints/speech.py); verbose_json gives one segment over the whole audio."""
        from pipeline.endpoints.speech import chunks

        body, seconds = req.body, req.audio_seconds or 0.0
        digest = hashlib.blake2b(body["file_url"].encode(), digest_size=4).hexdigest()
        task = "translation" if req.endpoint == "translations" else "transcription"
        words = f"fake {task} of {seconds:.2f} s {digest}".split()
        budget = req.max_tokens or len(words)
        text = " ".join(words[:budget])
        choice = {"index": 0, "content": text, "tool_calls": None, "logprobs": None, "reasoning_content": None,
                  "finish_reason": "length" if budget < len(words) else "stop"}
        audio = None
        if body.get("response_format") == "verbose_json":
            language = "en" if req.endpoint == "translations" else body.get("language") or "en"
            audio = {"language": language, "segments": [{
                "id": 0, "seek": 0, "start": 0.0, "end": round(seconds, 2), "text": text, "tokens": [],
                "temperature": body.get("temperature", 0.0), "avg_logprob": 0.0, "compression_ratio": 1.0,
                "no_speech_prob": None}]}
        return Result(seq, [choice], prompt_tokens=4 * chunks(seconds), completion_tokens=min(budget, len(words)),
                      cached_tokens=0, audio=audio)

    def _claim_death(self) -> bool:
        """Die only once per marker file, so that a restarted worker survives."""
        marker = self.opts.get("die_marker")
        if marker is None:
            return True
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
            return True
        except FileExistsError:
            return False

    def step(self) -> list[Result]:
        if self.opts.get("step_delay"):
            time.sleep(self.opts["step_delay"])
        done, self.queue = self.queue, []
        if self.opts.get("pause_file") and os.path.exists(self.opts["pause_file"]):
            room = max(0, int(self.opts.get("pause_after", 0)) - self.answered)
            done, self.queue = done[:room], done[room:]
            if not done:
                time.sleep(0.01)  # held: the worker loop steps again
        self.answered += len(done)
        return done

    def pending(self) -> int:
        return len(self.queue)

    def close(self) -> None:
        self.queue = []


# How each endpoint's request is answered (tests/unit/test_registry.py: one entry per endpoint).
SUBMIT = {"chat": FakeEngine._complete, "completions": FakeEngine._complete, "embeddings": FakeEngine._embed,
          "score": FakeEngine._score, "rerank": FakeEngine._score, "transcriptions": FakeEngine._transcribe,
          "translations": FakeEngine._transcribe}


def _thoughts(req: Request, text: str) -> list[str] | None:
    """The fake thinking of a chat request, in words (one word a token), cut at its budget; None
    where the request turned thinking off."""
    kwargs = req.body.get("chat_template_kwargs") or {}
    if kwargs.get("enable_thinking") is False or req.body.get("reasoning_effort") == "none":
        return None
    words = ["Let", "me", "think", "about:", *text.split()]
    budget = req.body.get("thinking_token_budget")
    return words[:budget] if budget is not None and budget >= 0 else words


def _words(text: str | list[int]) -> int:
    return len(text) if isinstance(text, list) else len(text.split())


def _last_text(req: Request) -> str:
    if not req.messages:  # a completion's prompt
        prompt = req.body["prompt"]
        return prompt if isinstance(prompt, str) else " ".join(map(str, prompt))
    content = req.messages[-1].get("content") or ""
    if isinstance(content, list):
        content = "\n".join(p["text"] for p in content if p["type"] == "text")
        if req.audio_seconds:  # a chat with input_audio parts: the fake model heard them
            content = f"{content} [heard {req.audio_seconds:.2f} s of audio]".strip()
    return content


def _unit(vector: list[float]) -> list[float]:
    norm = sum(x * x for x in vector) ** 0.5
    return [x / norm for x in vector]


def fake_vector(text: str, size: int) -> list[float]:
    """A deterministic vector for a text: its hash's bytes, centred."""
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=size).digest()
    return [(b - 127.5) / 127.5 for b in digest]


class _PrefixCache:
    """A prefix cache of `blocks` blocks of 256 characters (least recently used out): what part
    of a prompt it serves, as tokens in proportion to the characters served."""

    def __init__(self, blocks: int):
        from collections import OrderedDict

        self.blocks, self.held = blocks, OrderedDict()

    def served(self, req: Request, prompt_tokens: int) -> int:
        if not self.blocks:
            return 0
        from pipeline.models.prefix import DIGEST, chained_digests

        text = "\x1e".join(f"{m.get('role')}\x1f{m.get('content')}" for m in req.messages) or str(req.body["prompt"])
        data = text.encode("utf-8", "surrogatepass")
        key = chained_digests(data, 256, whole_blocks=True)
        digests = [key[i : i + DIGEST] for i in range(0, len(key), DIGEST)]
        hit = 0
        while hit < len(digests) and digests[hit] in self.held:
            hit += 1
        for d in digests:
            self.held[d] = True
            self.held.move_to_end(d)
        while len(self.held) > self.blocks:
            self.held.popitem(last=False)
        return min(prompt_tokens, round(prompt_tokens * hit * 256 / max(len(data), 1)))
