"""What the two speech-to-text endpoints share (`transcriptions.py`, `translations.py`): their
batch lines as vLLM's `run_batch` defines them (its `BatchTranscriptionRequest` and
`BatchTranslationRequest`: OpenAI's transcription body with `file_url` in place of the uploaded
file), their output columns and their result line (docs/audio.md).

`file_url` is a data: URI, a path or an fsspec URL: intake fetches and checks it under the same
media rules, limits and error rows as images (intake/audio.py) and hands the engine a data: URI
of the checked bytes, with the audio's seconds measured (`Request.audio_seconds`).
"""

from __future__ import annotations

import math
import re
from typing import Any

from pipeline.endpoints.base import NO_COLUMNS, OPENAI_PREFIX, QUERY, Endpoint, Origin, served_model
from pipeline.endpoints.sampling import number, unknown_fields
from pipeline.records import Invalid, Request, is_text, kind_of, short

# vLLM's TranscriptionRequest fields a batch line may set (less `file`, which file_url replaces).
TEXT_FIELDS = ("language", "prompt", "to_language")
NUMBERS = {  # name: (kind, low, high, low included, high included)
    "temperature": (float, 0, 2, True, True), "top_p": (float, 0, 1, False, True),
    "top_k": (int, -1, math.inf, True, True), "min_p": (float, 0, 1, True, True),
    "frequency_penalty": (float, -2, 2, True, True), "presence_penalty": (float, -2, 2, True, True),
    "repetition_penalty": (float, 0, math.inf, False, True), "max_completion_tokens": (int, 1, math.inf, True, True),
    "seed": (int, -(2**63), 2**63 - 1, True, True),
}
FIELDS = {"model", "file_url", "response_format", "timestamp_granularities", "stream", "user", *TEXT_FIELDS, *NUMBERS}
# vLLM's Whisper answers these (srt and vtt it refuses; diarized_json needs a diarizing model)
RESPONSE_FORMATS = ("json", "text", "verbose_json")
GRANULARITIES = ("segment", "word")


def urls(path: str) -> re.Pattern[str]:
    return re.compile(OPENAI_PREFIX + path + QUERY)


def parse_speech(endpoint: Endpoint, body: dict[str, Any], origin: Origin, warnings: list[str]) -> Request:
    """A transcription or translation body as a Request carrying its normalized body (vLLM
    `run_batch`'s: file_url first, which intake/audio.py replaces with the checked bytes; then
    every field the row set, as checked)."""
    url = body.get("file_url")
    if not isinstance(url, str) or not url:
        hint = " (a batch line names its audio by file_url, not file)" if "file" in body else ""
        raise Invalid("invalid_input", f"file_url must be a data: URI, a path or a URL of the audio, got "
                      f"{kind_of(url)} {short(url, 40)}{hint}", "file_url")
    out: dict[str, Any] = {"file_url": url}
    for name in TEXT_FIELDS:
        value = body.get(name)
        if value is not None:
            if not isinstance(value, str) or not is_text(value):
                raise Invalid("invalid_parameter", f"{name} must be a string, got {short(value)}", name)
            out[name] = value
    for name, spec in NUMBERS.items():
        if body.get(name) is not None:
            out[name] = number(name, body[name], *spec)
    fmt = body.get("response_format")
    if fmt is not None:
        if fmt not in RESPONSE_FORMATS:
            raise Invalid("unsupported_parameter", f"response_format must be one of {', '.join(RESPONSE_FORMATS)}, "
                          f"got {short(fmt)} (vLLM's Whisper answers no other)", "response_format")
        out["response_format"] = fmt
    grains = body.get("timestamp_granularities")
    if grains is not None:
        if not isinstance(grains, list) or any(g not in GRANULARITIES for g in grains):
            raise Invalid("invalid_parameter", f"timestamp_granularities must be a list of 'segment' and 'word', "
                          f"got {short(grains)}", "timestamp_granularities")
        out["timestamp_granularities"] = grains
    if body.get("stream"):
        raise Invalid("unsupported_parameter", "stream: a batch line's answer is written whole. Hint: drop stream",
                      "stream")
    if isinstance(body.get("user"), str):
        out["user"] = body["user"]
    unknown = unknown_fields(body, warnings, FIELDS)
    # vLLM's transcription temperature is 0 where the body sets none: written down, so that
    # engines/bodies.py sees a determined request (the body means the same to vLLM)
    out.setdefault("temperature", 0.0)
    return origin.request(endpoint, out, warnings, unknown)


def prompts(request: Request) -> list[Any]:
    """The decoder prompt vLLM's Whisper gives the engine for each 30-second chunk of the audio
    (its `get_generation_prompt`): the language token is one token whichever language, so a
    request without one (vLLM detects it) counts the same. A clip longer than one chunk is split
    by vLLM at quiet points (each chunk at most 30 s, searched in the last second): counted
    here as the most chunks that split can make."""
    task = "translate" if request.endpoint == "translations" else "transcribe"
    prompt = request.body.get("prompt")
    lang = request.body.get("language") or "en"
    text = (f"<|prev|>{prompt}" if prompt else "") + f"<|startoftranscript|><|{lang}|><|{task}|><|notimestamps|>"
    if request.body.get("response_format") == "verbose_json":
        text = text.replace("<|notimestamps|>", "<|0.00|>")
    return [text] * parts(request)


def parts(request: Request) -> int:
    """The engine prompts a speech request makes: one per clip of its audio."""
    return chunks(request.audio_seconds or 0.0)


def chunks(seconds: float, clip: float = 30.0, overlap: float = 1.0) -> int:
    """The most chunks vLLM's `split_audio` cuts `seconds` of audio into: one for a clip of at
    most `clip` seconds, else each chunk ends in the last `overlap` seconds of its window."""
    if seconds <= clip:
        return 1
    return 1 + math.ceil((seconds - clip) / (clip - overlap))


def columns(request: Request, result: Any) -> dict[str, Any]:
    """The text is the row's `content` (its one choice); verbose_json adds `audio_segments` and
    `audio_language`."""
    extra = getattr(result, "audio", None) or {}
    return {"choices": result.choices, **NO_COLUMNS, "audio_segments": extra.get("segments"),
            "audio_language": extra.get("language")}


def duration_usage(row: dict[str, Any]) -> dict[str, Any]:
    """vLLM's (and OpenAI's whisper-1) usage of a transcription: the audio's seconds, rounded up;
    with the row's tokens and estimated cost beside them."""
    return {"type": "duration", "seconds": math.ceil(row.get("audio_seconds") or 0),
            "prompt_tokens": row["prompt_tokens"], "completion_tokens": row["completion_tokens"],
            "estimated_cost": row["estimated_cost"]}


def response_body(row: dict[str, Any], task: str) -> dict[str, Any]:
    """A transcription or translation row as vLLM's response: {text, usage}, or with verbose_json
    (the row has segments) {task, language, duration, text, segments, usage}."""
    out: dict[str, Any] = {"text": row["content"] or ""}
    if row.get("audio_segments") is not None:
        out = {"task": task, "language": row.get("audio_language"), "duration": row.get("audio_seconds"),
               **out, "segments": row["audio_segments"]}
    return {**out, "model": served_model(row), "usage": duration_usage(row)}
