"""One set of checks per endpoint, the same everywhere: validate, estimate, a dry run and the run
give every row of a file the same verdict, including rows whose endpoint the run's kind of model
does not serve (`unsupported_endpoint`, docs/endpoints.md)."""

import re

import pytest
from conftest import chat_line, invoke, read_output, write_jsonl

FAKE = ["--engine", "fake", "-m", "smollm2", "-q"]


def embed_line(custom_id, **body):
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/embeddings", "body": body}


FILES = {
    # chat lines on an embedding model: the valid ones are refused for their endpoint
    ("chat.jsonl", "pooling"): [chat_line("ok", "hi"), chat_line("n", "x", n=99), chat_line("also", "there")],
    # embeddings lines on a generative model
    ("embed.jsonl", "generate"): [embed_line("one", input="hello"), embed_line("empty", input=""),
                                  embed_line("two", input=["a", "b"])],
}
EXPECTED = {
    "chat.jsonl": {"ok": "unsupported_endpoint", "n": "invalid_parameter", "also": "unsupported_endpoint"},
    "embed.jsonl": {"one": "unsupported_endpoint", "empty": "invalid_input", "two": "unsupported_endpoint"},
}

FIELD = {"n": "n", "empty": "input"}  # the field validate names for these rows


@pytest.mark.parametrize(("name", "runner"), sorted(FILES))
def test_validate_estimate_dry_run_and_run_agree_on_every_row(tmp_path, name, runner):
    import polars as pl

    rows = FILES[(name, runner)]
    src = write_jsonl(tmp_path / name, rows)
    ids = {i + 1: row["custom_id"] for i, row in enumerate(rows)}  # line -> id
    common = ["-m", "smollm2", "--runner", runner]

    res = invoke("validate", src, *common)
    assert res.exit_code != 0  # a file with invalid rows
    found = dict(re.findall(rf"{re.escape(name)}:(\d+): (\w+): ", res.output))
    validated = {ids[int(line)]: code for line, code in found.items()}

    res = invoke("estimate", src, *common, "--rows-file", tmp_path / "rows.parquet", "--workers", "1")
    assert res.exit_code == 0, res.output
    estimated = {
        r["custom_id"]: (r["error"] or {}).get("code") for r in pl.read_parquet(tmp_path / "rows.parquet").to_dicts()
    }

    res = invoke("run", src, "-o", tmp_path / "dry", *common, "--dry-run")
    assert res.exit_code == 0, res.output
    bad = sum(code is not None for code in EXPECTED[name].values())
    assert f"Would process {len(rows) - bad} requests" in res.output and f"{bad} invalid rows" in res.output

    res = invoke("run", src, "-o", tmp_path / "out", *FAKE[:2], *common, "-q")
    assert res.exit_code == 0, res.output
    ran = {r["custom_id"]: (r["error"] or {}).get("code") for r in read_output(tmp_path / "out").to_dicts()}

    # validate shows the field at fault where there is one, else the code
    assert validated == {k: FIELD.get(k, v) for k, v in EXPECTED[name].items()}
    assert estimated == ran == EXPECTED[name]
