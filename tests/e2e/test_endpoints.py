"""Embeddings, completions, score and rerank lines end to end on the fake engine: rows with
vectors, texts and scores, their OpenAI (and vLLM) result lines, the runner chosen from the inputs,
and what a run refuses (docs/endpoints.md)."""

import base64
import json

import pytest
from conftest import chat_line, invoke, read_output, write_jsonl

from pipeline.engines.fake import fake_vector
from pipeline.intake.requests import Context, parse_row
from pipeline.records import Source

FAKE = ["--engine", "fake", "-m", "smollm2", "-q"]


def embed_line(custom_id, **body):
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/embeddings", "body": body}


def unit(vector):
    norm = sum(x * x for x in vector) ** 0.5
    return [x / norm for x in vector]


@pytest.fixture
def embeddings_file(tmp_path):
    (tmp_path / "in").mkdir()
    return write_jsonl(tmp_path / "in" / "embed.jsonl", [
        embed_line("one", input="hello world", model="smollm2"),
        embed_line("many", input=["a b", "c"]),
        embed_line("ids", input=[5, 6, 7], dimensions=4),
        embed_line("empty", input=""),
        embed_line("base64", input="x", encoding_format="base64"),
    ])


def test_embeddings_rows(tmp_path, embeddings_file):
    res = invoke("run", embeddings_file, "-o", tmp_path / "out", *FAKE)
    assert res.exit_code == 0, res.output
    rows = {r["custom_id"]: r for r in read_output(tmp_path / "out").to_dicts()}
    assert len(rows) == 5
    assert rows["one"]["embedding"] == pytest.approx(unit(fake_vector("hello world", 8)), abs=1e-6)
    assert rows["one"]["embeddings"] is None and rows["one"]["choices"] is None
    assert (rows["one"]["prompt_tokens"], rows["one"]["completion_tokens"]) == (2, 0)
    assert rows["one"]["estimated_cost"] > 0
    assert rows["many"]["embedding"] is None
    assert rows["many"]["embeddings"] == [pytest.approx(unit(fake_vector(t, 8)), abs=1e-6) for t in ("a b", "c")]
    assert rows["ids"]["embedding"] == pytest.approx(unit(fake_vector("[5, 6, 7]", 8)[:4]), abs=1e-6)
    assert rows["empty"]["error"]["code"] == "invalid_input"
    # base64: the row keeps the float32 vector; only the OpenAI result line encodes it
    assert rows["base64"]["embedding"] == pytest.approx(unit(fake_vector("x", 8)), abs=1e-6)
    assert rows["base64"]["encoding_format"] == "base64" and rows["one"]["encoding_format"] is None


def test_openai_embedding_result_lines(tmp_path, embeddings_file):
    res = invoke("run", embeddings_file, "-o", tmp_path / "out", *FAKE, "--format", "openai")
    assert res.exit_code == 0, res.output
    [results] = (tmp_path / "out").glob("results/*.jsonl")
    lines = {x["custom_id"]: x for x in map(json.loads, results.read_text().splitlines())}
    body = lines["many"]["response"]["body"]
    assert body["object"] == "list" and [d["index"] for d in body["data"]] == [0, 1]
    assert body["data"][1]["object"] == "embedding" and len(body["data"][1]["embedding"]) == 8
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] == 3
    assert lines["empty"]["response"] is None and lines["empty"]["error"]["code"] == "invalid_input"
    assert isinstance(lines["one"]["response"]["body"]["data"][0]["embedding"], list)


def test_base64_embeddings_are_little_endian_float32(tmp_path, embeddings_file):
    import numpy as np

    res = invoke("run", embeddings_file, "-o", tmp_path / "out", *FAKE, "--format", "openai")
    assert res.exit_code == 0, res.output
    [results] = (tmp_path / "out").glob("results/*.jsonl")
    lines = {x["custom_id"]: x for x in map(json.loads, results.read_text().splitlines())}
    encoded = lines["base64"]["response"]["body"]["data"][0]["embedding"]
    vector = np.frombuffer(base64.b64decode(encoded), dtype="<f4")
    assert vector.tolist() == pytest.approx(unit(fake_vector("x", 8)), abs=1e-6)


@pytest.mark.parametrize("fmt", ["anthropic", "gemini", "responses"])
def test_message_only_formats_are_refused_for_a_pooling_run(tmp_path, embeddings_file, fmt):
    res = invoke("run", embeddings_file, "-o", tmp_path / "out", *FAKE, "--format", fmt)
    assert res.exit_code == 1
    assert f"--format {fmt} has no result for embeddings, score or rerank requests" in res.output
    assert "Anthropic, Gemini and OpenAI Responses answer messages only" in res.output
    assert "Hint: use --format openai, native or parquet" in res.output
    assert not (tmp_path / "out").exists()


def test_a_folder_mixing_chat_and_embeddings_is_refused(tmp_path, embeddings_file):
    write_jsonl(tmp_path / "in" / "chat.jsonl", [chat_line("c", "hi")])
    res = invoke("run", tmp_path / "in", "-o", tmp_path / "out", *FAKE)
    assert res.exit_code != 0
    assert (
        "these inputs mix generative (chat, completions) and pooling (embeddings, score, rerank) requests" in res.output
    )
    assert "one run serves one model" in res.output
    assert not (tmp_path / "out").exists()


def test_requests_for_another_kind_of_model_get_one_clear_error(tmp_path, embeddings_file):
    res = invoke("run", embeddings_file, "-o", tmp_path / "out", *FAKE, "--runner", "generate")
    assert res.exit_code == 0, res.output
    errors = {r["custom_id"]: r["error"] for r in read_output(tmp_path / "out").to_dicts()}
    assert errors["one"]["code"] == "unsupported_endpoint"
    assert "embeddings requests need an embedding or cross-encoder model (--runner pooling" in errors["one"]["message"]


@pytest.mark.parametrize(("body", "code"), [
    ({"input": []}, "invalid_input"),
    ({"input": ["a", 1]}, "invalid_input"),
    ({"input": [[1], [-2]]}, "invalid_input"),
    ({"input": "x", "dimensions": 0}, "invalid_parameter"),
    ({"input": "x", "model": "gpt-4o"}, "model_mismatch"),
])
def test_invalid_embeddings_bodies(body, code):
    got = parse_row(embed_line("x", **body), source=Source(0, "f", "f"), line=1, ctx=Context.of("smollm2"))
    assert got.code == code and got.shape == "openai-embeddings"


def test_embeddings_encoding_format_other_than_float_or_base64_is_refused():
    got = parse_row(embed_line("x", input="x", encoding_format="int8"), source=Source(0, "f", "f"), line=1,
                    ctx=Context())
    assert (got.code, got.param) == ("unsupported_parameter", "encoding_format")
    assert "encoding_format must be 'float' or 'base64', got 'int8'" in got.message


def test_estimate_counts_embedding_input_tokens_exactly(tmp_path, embeddings_file):
    import polars as pl
    from transformers import AutoTokenizer

    from pipeline.models.names import resolve_model

    res = invoke(
        "estimate", embeddings_file, "-m", "smollm2", "--rows-file", tmp_path / "rows.parquet", "--workers", "1"
    )
    assert res.exit_code == 0, res.output
    rows = {r["custom_id"]: r for r in pl.read_parquet(tmp_path / "rows.parquet").to_dicts()}
    tokenizer = AutoTokenizer.from_pretrained(resolve_model("smollm2"))

    def count(text):
        return len(tokenizer(text)["input_ids"])

    assert rows["one"]["prompt_tokens"] == count("hello world")
    assert rows["many"]["prompt_tokens"] == count("a b") + count("c")
    assert rows["ids"]["prompt_tokens"] == 3
    assert {r["completion_tokens_upper"] for r in rows.values() if r["error"] is None} == {0}


def test_embedding_list_prices():
    from pipeline.models.prices import hosted_price

    assert hosted_price("text-embedding-3-small").input == 0.02
    assert hosted_price("text-embedding-3-large").cost(1_000_000, 0) == 0.13


def test_embed_a_table(tmp_path):
    """A template job on an embedding model: the table, its ids and carried columns, plus the
    `embedding` vector column, which polars, DuckDB and `datasets` read as a list of floats."""
    import datasets
    import duckdb
    import polars as pl

    texts = ["red apple", "green pear", "blue sky"]
    pl.DataFrame({"id": ["a", "b", "c"], "text": texts, "year": [2001, 2002, 2003]}).write_parquet(
        tmp_path / "table.parquet")
    args = ["run", tmp_path / "table.parquet", "-o", tmp_path / "out", *FAKE, "--runner", "pooling",
            "--template-user", "{{ text }}", "--id-column", "id", "--carry-all"]
    res = invoke(*args)
    assert res.exit_code == 0, res.output
    df = read_output(tmp_path / "out").sort("custom_id")
    assert df["custom_id"].to_list() == ["a", "b", "c"] and df["year"].to_list() == [2001, 2002, 2003]
    assert df.schema["embedding"] == pl.List(pl.Float32)
    assert df["embedding"].to_list()[1] == pytest.approx(unit(fake_vector("green pear", 8)), abs=1e-6)
    assert invoke(*args).exit_code == 0  # resume: already complete
    parts = str(tmp_path / "out" / "part-*.parquet")
    [(size,)] = duckdb.sql(f"SELECT DISTINCT len(embedding) FROM '{parts}'").fetchall()
    assert size == 8
    ds = datasets.load_dataset("parquet", data_files=parts, split="train")
    assert ds.features["embedding"].feature.dtype == "float32" and len(ds[0]["embedding"]) == 8


def test_a_template_job_on_an_embedding_model_refuses_chat_only_options(tmp_path):
    import polars as pl

    pl.DataFrame({"text": ["x"]}).write_parquet(tmp_path / "t.parquet")
    res = invoke("run", tmp_path / "t.parquet", "-o", tmp_path / "out", *FAKE, "--runner", "pooling",
                 "--template-user", "{{ text }}", "--template-system", "Be brief.")
    assert res.exit_code != 0 and "embeds the rendered --template-user text only" in res.output


def test_files_displayed_alike_but_mixing_endpoints_are_refused(tmp_path):
    """Endpoint detection keys files by identity: caf\\xe9.jsonl (embeddings) and caf\\xe8.jsonl
    (chat) both display as caf\ufffd.jsonl, and the mix is refused, not run as pooling."""
    import os

    folder = tmp_path / "in"
    folder.mkdir()
    with open(os.path.join(os.fsencode(folder), b"caf\xe9.jsonl"), "w") as f:
        f.write(json.dumps(embed_line("e1", input="hello")) + "\n")
    with open(os.path.join(os.fsencode(folder), b"caf\xe8.jsonl"), "w") as f:
        f.write(json.dumps(chat_line("c1", "hi")) + "\n")
    res = invoke("run", folder, "-o", tmp_path / "out", *FAKE)
    assert res.exit_code == 1 and "mix generative" in res.output, res.output
    assert not (tmp_path / "out").exists()
