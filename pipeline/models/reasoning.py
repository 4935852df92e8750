"""Reasoning models, known without loading them: which vLLM reasoning parser splits a model's
thinking from its answer (`--reasoning-parser`, or chosen from the model), and the marker a row
carries when its thinking used every token it was allowed.

The parser itself is vLLM's (`vllm.reasoning`, applied in engines/vllm.py exactly as vLLM's
OpenAI server applies it); this module only names it, so that `estimate` and `validate` know a
reasoning model without importing vLLM.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

# Model names that say which parser their family needs (vLLM's docs on reasoning outputs).
_BY_NAME = (
    (re.compile(r"gpt-oss", re.I), "openai_gptoss"),
    (re.compile(r"deepseek-r1|r1-distill|qwq", re.I), "deepseek_r1"),
    (re.compile(r"qwen3", re.I), "qwen3"),
)
# Hugging Face config model_type -> parser
_BY_MODEL_TYPE = {"gpt_oss": "openai_gptoss", "qwen3": "qwen3", "qwen3_moe": "qwen3"}
NO_PARSER = "none"

# The warning (and `finish_reason` "length") of a choice whose thinking never ended: max_tokens
# ran out inside the thinking, so the row has no answer (content null) and typed columns say so in
# parse_error instead of a JSON error. Rows and result lines carry it at the start of a warning.
THINKING_CUT = "thinking_cut"


def reasoning_parser(model: str | None, chosen: str | None, folder: str | None = None) -> str | None:
    """The vLLM reasoning parser of a run: `chosen` (`--reasoning-parser`; "none": none), else the
    one the model's name or its local folder's config.json names, else, for a local model whose
    tokenizer has a `</think>` token and whose chat template writes `<think>`, qwen3 where the
    template takes enable_thinking (Qwen3's switch, which that parser reads) and the generic
    `<think>` parser deepseek_r1 where it does not; None: no split."""
    if chosen:
        return None if chosen == NO_PARSER else chosen
    for name in (model, folder):
        for pattern, parser in _BY_NAME:
            if name and pattern.search(name):
                return parser
    return _from_folder(Path(folder)) if folder and Path(folder).is_dir() else None


def _from_folder(folder: Path) -> str | None:
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        config = {}
    parser = _BY_MODEL_TYPE.get(config.get("model_type")) if isinstance(config, dict) else None
    if parser:
        return parser
    texts = [_text(folder / name) for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")]
    if any('"</think>"' in t for t in texts[:2]) and any("<think>" in t for t in texts[1:]):
        return "qwen3" if any("enable_thinking" in t for t in texts[1:]) else "deepseek_r1"
    return None


def _text(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def thinking_upper(params: dict, n: int, upper: int) -> int:
    """Of a chat request's completion bound (`upper`, n choices), the tokens thinking may take on a
    reasoning model: each choice's thinking_token_budget where it sets one, else all of it; none
    where the request turns thinking off (enable_thinking false, reasoning_effort "none")."""
    kwargs = params.get("chat_template_kwargs") or {}
    if kwargs.get("enable_thinking") is False or params.get("reasoning_effort") == "none":
        return 0
    per_choice = upper // max(n, 1)
    budget = params.get("thinking_token_budget")
    return n * (min(budget, per_choice) if budget is not None and budget >= 0 else per_choice)


def thinking_cut(reasoning: str | None, content: str | None, finish_reason: str | None) -> bool:
    """Did this choice's thinking use all of max_tokens (thinking, no answer, cut for length)?"""
    return finish_reason == "length" and reasoning is not None and not content


def thinking_cut_warning(choices: int, reasoning_tokens: int) -> str:
    return (f"{THINKING_CUT}: thinking used all of max_tokens ({reasoning_tokens:,} reasoning tokens) in "
            f"{choices} choice(s), which have no answer. Hint: raise max_tokens, or set thinking_token_budget "
            "(--thinking-token-budget) below it so that the answer has room")
