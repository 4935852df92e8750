"""Translations (`/v1/audio/translations`, vLLM's `run_batch` lines): speech to English text by a
speech model (Whisper); the row's `content` is the text (speech.py has what both audio endpoints
share, docs/audio.md)."""

from __future__ import annotations

from typing import Any

from pipeline.endpoints import speech
from pipeline.endpoints.base import Endpoint, Origin
from pipeline.records import Request


def parse(body: dict[str, Any], origin: Origin, ctx: Any, warnings: list[str]) -> Request:
    return speech.parse_speech(TRANSLATIONS, body, origin, warnings)


def answers(row: dict[str, Any]) -> bool:
    return row.get("input_shape") == TRANSLATIONS.shape


def response_body(row: dict[str, Any]) -> dict[str, Any]:
    return speech.response_body(row, "translate")


TRANSLATIONS = Endpoint(
    name="translations", runner="generate", url="/v1/audio/translations", urls=speech.urls("/audio/translations"),
    shape="openai-translations", title="OpenAI Batch translations lines", prompt_field="file_url", parse=parse,
    columns=speech.columns, answers=answers, response_body=response_body, prompts=speech.prompts,
    parts=speech.parts,
)
