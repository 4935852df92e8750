"""Prices per million tokens, from the shipped table or the command line, and the arithmetic."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources

import yaml

from pipeline.exits import UserError


@dataclass(frozen=True)
class Price:
    """USD per million tokens."""

    input: float
    output: float
    source: str = "command line"
    reasoning: float | None = None  # thinking tokens, where they cost other than output tokens
    audio_minute: float | None = None  # USD per minute of input audio (whisper-1's way), besides tokens

    def describe(self) -> str:
        thinking = f", ${self.reasoning}/M reasoning" if self.reasoning is not None else ""
        audio = f", ${self.audio_minute}/audio minute" if self.audio_minute is not None else ""
        return f"${self.input}/M input, ${self.output}/M output{thinking}{audio} ({self.source})"

    def cost(self, prompt_tokens: int, completion_tokens: int, reasoning_tokens: int = 0,
             audio_seconds: float | None = None) -> float:
        """USD for these tokens; reasoning tokens are part of the completion tokens (as OpenAI
        counts them) and cost the reasoning price where there is one, else the output price.
        Audio costs `audio_minute` per minute, its seconds rounded up (as whisper-1 bills them)."""
        thinking = min(reasoning_tokens or 0, completion_tokens)
        per_thought = self.output if self.reasoning is None else self.reasoning
        tokens = (
            prompt_tokens * self.input + (completion_tokens - thinking) * self.output + thinking * per_thought
        ) / 1e6
        if audio_seconds and self.audio_minute:
            tokens += math.ceil(audio_seconds) / 60 * self.audio_minute
        return tokens


@cache
def price_table() -> dict[str, dict[str, dict]]:
    return yaml.safe_load(resources.files("pipeline.models").joinpath("prices.yaml").read_text())


def find_price(
    model: str,
    *,
    provider: str | None = None,
    price_input: float | None = None,
    price_output: float | None = None,
    price_reasoning: float | None = None,
) -> Price | None:
    """The price for a model: command-line figures win, then the table's row for the provider
    (or the model's default row). None when the model is not in the table and no price was given.
    """
    rows = price_table().get(model) or {}
    if provider is not None and provider not in rows:
        known = ", ".join(sorted(rows)) or "none"
        raise UserError(f"no price for model {model!r} at provider {provider!r} (known: {known}); "
                         "pass --price-input and --price-output")
    row = rows.get(provider) if provider else next((r for r in rows.values() if r.get("default")), None)
    name = provider or next((p for p, r in rows.items() if r is row), None)
    if row is None and price_input is None and price_output is None and price_reasoning is None:
        return None
    given = (price_input, price_output, price_reasoning)
    return Price(
        price_input if price_input is not None else (row or {}).get("input", 0.0),
        price_output if price_output is not None else (row or {}).get("output", 0.0),
        "command line" if row is None else f"{name} list price" + (" (overridden)" if given != (None,) * 3 else ""),
        price_reasoning if price_reasoning is not None else (row or {}).get("reasoning"),
        (row or {}).get("audio_minute"),
    )


_VERSION_SUFFIX = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{8}|latest)$")


def hosted_price(model: str) -> Price | None:
    """The default list price of a model a request names (gpt-4o-mini, claude-3-5-haiku-20241022):
    the table's row for that name, else for the name without its date or `-latest` suffix, and
    for an OpenAI fine-tune (ft:BASE:org:name:id) the row of `ft:BASE`; None when the table does
    not know it. What the same requests would cost where they were written for."""
    table = price_table()
    key = model
    if key not in table:
        key = "ft:" + key.split(":")[1] if key.startswith("ft:") and key.count(":") >= 2 else key
        key = _VERSION_SUFFIX.sub("", key)
    rows = table.get(key) or {}
    name, row = next(((p, r) for p, r in rows.items() if r.get("default")), (None, None))
    if row is None:
        return None
    return Price(row["input"], row["output"], f"{name} list price for {key}", row.get("reasoning"),
                 row.get("audio_minute"))
