"""Transcriptions (`/v1/audio/transcriptions`, vLLM's `run_batch` lines): speech to text in its own language by a
speech model (Whisper); the row's `content` is the text (speech.py has what both audio endpoints
share, docs/audio.md)."""

from __future__ import annotations

from typing import Any

from pipeline.endpoints import speech
from pipeline.endpoints.base import Endpoint, Origin
from pipeline.records import Request


def parse(body: dict[str, Any], origin: Origin, ctx: Any, warnings: list[str]) -> Request:
    return speech.parse_speech(TRANSCRIPTIONS, body, origin, warnings)


def answers(row: dict[str, Any]) -> bool:
    return row.get("input_shape") == TRANSCRIPTIONS.shape


def response_body(row: dict[str, Any]) -> dict[str, Any]:
    return speech.response_body(row, "transcribe")


TRANSCRIPTIONS = Endpoint(
    name="transcriptions", runner="generate", url="/v1/audio/transcriptions", urls=speech.urls("/audio/transcriptions"),
    shape="openai-transcriptions", title="OpenAI Batch transcriptions lines", prompt_field="file_url", parse=parse,
    columns=speech.columns, answers=answers, response_body=response_body, prompts=speech.prompts,
    parts=speech.parts,
)
