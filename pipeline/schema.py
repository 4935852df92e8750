"""The one definition of the output row. `schemas/output.schema.json` is this, written down;
`python -m pipeline.schema` rewrites it and a test keeps the two equal."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa

TOP_LOGPROB = pa.struct([
    ("token", pa.string()),
    ("logprob", pa.float64()),
    ("bytes", pa.list_(pa.int32())),
])
TOKEN_LOGPROB = pa.struct([
    ("token", pa.string()),
    ("logprob", pa.float64()),
    ("bytes", pa.list_(pa.int32())),
    ("top_logprobs", pa.list_(TOP_LOGPROB)),
])
TOOL_CALL = pa.struct([
    ("id", pa.string()),
    ("type", pa.string()),
    ("function", pa.struct([("name", pa.string()), ("arguments", pa.string())])),
])
CHOICE = pa.struct([
    ("index", pa.int32()),
    ("content", pa.string()),
    ("reasoning_content", pa.string()),  # the choice's thinking, split from content by the reasoning parser
    ("tool_calls", pa.list_(TOOL_CALL)),
    ("finish_reason", pa.string()),
    ("logprobs", pa.struct([("content", pa.list_(TOKEN_LOGPROB))])),
])
RERANK_RESULT = pa.struct([
    ("index", pa.int32()),  # the document's place in the request's documents
    ("document", pa.string()),
    ("relevance_score", pa.float64()),
])
SEGMENT = pa.struct([  # vLLM's TranscriptionSegment (OpenAI's verbose_json segment)
    ("id", pa.int32()),
    ("seek", pa.int32()),
    ("start", pa.float64()),
    ("end", pa.float64()),
    ("text", pa.string()),
    ("tokens", pa.list_(pa.int32())),
    ("temperature", pa.float64()),
    ("avg_logprob", pa.float64()),
    ("compression_ratio", pa.float64()),
    ("no_speech_prob", pa.float64()),
])
ERROR = pa.struct([
    ("code", pa.string()),
    ("message", pa.string()),
    ("param", pa.string()),
    ("line", pa.int64()),
])

ATTEMPT = pa.struct([
    ("verdict", pa.string()),
    ("verdict_message", pa.string()),
    ("change", pa.string()),  # what this attempt changed: "first", "max_tokens 16 -> 32", "seed 1", ...
    ("finish_reason", pa.string()),
    ("prompt_tokens", pa.int64()),
    ("completion_tokens", pa.int64()),
    ("total_tokens", pa.int64()),
    ("reasoning_tokens", pa.int64()),
    ("estimated_cost", pa.float64()),
])

OUTPUT_SCHEMA = pa.schema([
    pa.field("custom_id", pa.string(), nullable=False),
    pa.field("model", pa.string()),
    pa.field("requested_model", pa.string()),  # the model the request named (--route maps it to `model`)
    pa.field("served_model", pa.string()),  # the name it ran under: its --lora adapter, else `model`
    pa.field("content", pa.string()),
    # the first choice's thinking, split from its answer (content) by the run's reasoning parser;
    # null without one, or where the model did not think. A choice whose thinking used all of
    # max_tokens has finish_reason "length", content null and a warning starting "thinking_cut"
    pa.field("reasoning_content", pa.string()),
    pa.field("finish_reason", pa.string()),
    pa.field("tool_calls", pa.list_(TOOL_CALL)),
    pa.field("choices", pa.list_(CHOICE)),
    # an embeddings request's vector (a line with one input), or its vectors in order (a line whose
    # input is a list): the other is null (docs/endpoints.md)
    pa.field("embedding", pa.list_(pa.float32())),
    pa.field("embeddings", pa.list_(pa.list_(pa.float32()))),
    pa.field("encoding_format", pa.string()),  # "base64" where an embeddings request asked for it, else null
    # a score request's scores, one per pair in pair order (no scalar `score` column: a template
    # job's response property of that common name would have to be renamed)
    pa.field("scores", pa.list_(pa.float64())),
    # a rerank request's results as vLLM's rerank response orders them: most relevant first, top_n of them
    pa.field("rerank", pa.list_(RERANK_RESULT)),
    # a transcription's or translation's segments and language, where it asked for verbose_json
    # (its text is `content`; docs/audio.md)
    pa.field("audio_segments", pa.list_(SEGMENT)),
    pa.field("audio_language", pa.string()),
    pa.field("prompt_tokens", pa.int64()),
    pa.field("completion_tokens", pa.int64()),
    # of completion_tokens, the thinking tokens of every choice (null: no reasoning parser split them)
    pa.field("reasoning_tokens", pa.int64()),
    pa.field("total_tokens", pa.int64()),
    pa.field("cached_tokens", pa.int64()),
    pa.field("images", pa.int32()),  # images the request sent to the engine (null: it never got there)
    pa.field("audio_seconds", pa.float64()),  # seconds of audio it sent (a transcription's file, input_audio parts)
    pa.field("estimated_cost", pa.float64()),
    pa.field("user", pa.string()),
    pa.field("warnings", pa.list_(pa.string())),
    pa.field("error", ERROR),
    # whether the row is right, not only present: ok, truncated, empty, unparsable, schema_mismatch,
    # invalid_tool_call, refused, failed_check, or error for error rows (verdicts/judge.py)
    pa.field("verdict", pa.string()),
    pa.field("verdict_message", pa.string()),  # why the verdict is not ok (a check's own message)
    # --repair: every attempt of a repaired row, in order (null: answered at the first); the row's
    # usage and cost columns are then the sums over its attempts (verdicts/repairs.py)
    pa.field("attempts", pa.list_(ATTEMPT)),
    pa.field("source_file", pa.string(), nullable=False),
    pa.field("source_line", pa.int64(), nullable=False),
    # the input line's shape (openai-batch, anthropic-batch, gemini-batch, ...; shapes.py), which
    # --format native answers in; null for a line read before its file's shape was known
    pa.field("input_shape", pa.string()),
    pa.field("engine", pa.int32()),  # which engine of the run answered (0-based)
    pa.field("engine_seconds", pa.float64()),  # from hand-over to the engine to its answer
    pa.field("finished_at", pa.timestamp("ms", tz="UTC")),  # when the row was made
])

# `pipeline estimate --output FILE`: one row per request. prompt_tokens is also set for a request
# refused for its length; the completion and cost columns only for valid ones.
ESTIMATE_SCHEMA = pa.schema([
    pa.field("custom_id", pa.string(), nullable=False),
    pa.field("source_file", pa.string(), nullable=False),
    pa.field("source_line", pa.int64(), nullable=False),
    pa.field("prompt_tokens", pa.int64()),
    pa.field("completion_tokens_expected", pa.float64()),
    pa.field("completion_tokens_upper", pa.int64()),
    # of the completion bound, what a reasoning model's thinking may take (its thinking_token_budget)
    pa.field("reasoning_tokens_upper", pa.int64()),
    pa.field("cost_usd_expected", pa.float64()),
    pa.field("cost_usd_upper", pa.float64()),
    pa.field("error", ERROR),
])

SCHEMAS_DIR = Path(__file__).resolve().parent.parent / "schemas"
SCHEMA_FILE = SCHEMAS_DIR / "output.schema.json"
ESTIMATE_SCHEMA_FILE = SCHEMAS_DIR / "estimate.schema.json"


def describe(dtype: pa.DataType) -> object:
    """A plain JSON description of an Arrow type: names, nesting and nullability."""
    if pa.types.is_struct(dtype):
        return {"struct": [_field(dtype.field(i)) for i in range(dtype.num_fields)]}
    if pa.types.is_list(dtype):
        return {"list": describe(dtype.value_type)}
    return str(dtype)


def _field(f: pa.Field) -> dict:
    return {"name": f.name, "type": describe(f.type), "nullable": f.nullable}


def schema_document() -> dict:
    return {
        "title": "pipeline output row",
        "description": "One row per input request; success and error rows share it (error is null on success).",
        "fields": [_field(f) for f in OUTPUT_SCHEMA],
    }


def estimate_schema_document() -> dict:
    return {
        "title": "pipeline estimate row",
        "description": "`pipeline estimate --output FILE`: one row per input request (error set for invalid ones).",
        "fields": [_field(f) for f in ESTIMATE_SCHEMA],
    }


if __name__ == "__main__":
    for path, doc in ((SCHEMA_FILE, schema_document()), (ESTIMATE_SCHEMA_FILE, estimate_schema_document())):
        path.write_text(json.dumps(doc, indent=2) + "\n")
        print(path)
