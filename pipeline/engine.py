"""The engine interface: Requests in, Results out. Executors and workers know only this.

The real engine (`vllm_engine.py`) is imported only inside an engine worker process, so that
`--help`, `validate` and `estimate` never pay for importing vLLM or torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from .requests import Request


@dataclass(frozen=True)
class EngineSpec:
    """Everything a worker needs to build an engine; picklable, so it crosses process boundaries."""

    kind: str  # "vllm" or "fake"
    model: str  # what the engine loads: a local folder or a hub id
    engine_args: dict[str, Any] = field(default_factory=dict)  # vLLM EngineArgs, by field name
    seed_policy: str = "ignore"  # what to do with a per-request seed where the engine cannot honour it
    tool_parser: str | None = None  # vLLM tool parser for tool_choice "auto"
    max_in_flight: int = 1024  # requests a worker holds inside the engine at once
    options: dict[str, Any] = field(default_factory=dict)  # engine-specific knobs (the fake engine's)


@dataclass(slots=True)
class Result:
    """What the engine made of one request (`seq` is the executor's handle for it)."""

    seq: int
    choices: list[dict[str, Any]] = field(default_factory=list)
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int | None = None
    # (code, message, param) when the request failed inside the engine.
    error: tuple[str, str, str | None] | None = None
    warnings: tuple[str, ...] = ()


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


def make_engine(spec: EngineSpec) -> Engine:
    """Build the engine a spec names. Heavy imports happen here, inside the worker."""
    if spec.kind == "fake":
        from .fake_engine import FakeEngine

        return FakeEngine(spec)
    if spec.kind == "vllm":
        from .vllm_engine import VLLMEngine

        return VLLMEngine(spec)
    raise ValueError(f"unknown engine {spec.kind!r}; use 'vllm' or 'fake'")
