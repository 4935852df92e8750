"""The written-down schemas (`schemas/`) equal the code's (`pipeline/schema.py`)."""

import json

from pipeline.schema import (
    ESTIMATE_SCHEMA_FILE,
    OUTPUT_SCHEMA,
    SCHEMA_FILE,
    estimate_schema_document,
    schema_document,
)


def test_schema_files_match_code():
    assert json.loads(SCHEMA_FILE.read_text()) == schema_document(), (
        "schemas/output.schema.json is stale: run `python -m pipeline.schema`")
    assert json.loads(ESTIMATE_SCHEMA_FILE.read_text()) == estimate_schema_document(), (
        "schemas/estimate.schema.json is stale: run `python -m pipeline.schema`")


def test_required_columns_present():
    names = set(OUTPUT_SCHEMA.names)
    assert {"custom_id", "model", "content", "finish_reason", "tool_calls", "choices", "prompt_tokens",
            "completion_tokens", "total_tokens", "cached_tokens", "estimated_cost", "error",
            "source_file", "source_line"} <= names
