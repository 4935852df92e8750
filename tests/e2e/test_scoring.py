"""vLLM's /v1/score and /v1/rerank lines end to end on the fake engine (docs/endpoints.md): the
pairs they score, the `scores` and `rerank` columns, vLLM's response bodies in
--format openai, what validation refuses, and the estimate of their input tokens."""

import json

import pytest
from conftest import invoke, read_output, write_jsonl

from pipeline.engines.fake import fake_vector
from pipeline.intake.requests import Context, parse_row
from pipeline.records import Source

FAKE = ["--engine", "fake", "-m", "smollm2", "-q"]


def line(url, custom_id, **body):
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": body}


def cosine(a, b):
    import numpy as np

    va, vb = np.array(fake_vector(a, 8)), np.array(fake_vector(b, 8))
    return float(va @ vb / np.linalg.norm(va) / np.linalg.norm(vb))


def parse(row):
    return parse_row(row, source=Source(0, "f", "f"), line=2, ctx=Context.of("smollm2"))


@pytest.fixture
def inputs(tmp_path):
    (tmp_path / "in").mkdir()
    write_jsonl(tmp_path / "in" / "score.jsonl", [
        line("/v1/score", "one", text_1="what is a cat", text_2="a small feline", model="smollm2"),
        line("/v1/score", "fan", queries="what is a cat", documents=["a small feline", "a car"]),
        line("/score", "pairs", data_1=["a", "b"], data_2=["c", "d"]),
        line("/v1/score", "bad", queries=["a", "b"], documents=["c", "d", "e"]),
    ])
    write_jsonl(tmp_path / "in" / "rerank.jsonl", [
        line("/v1/rerank", "top2", query="cats", documents=["dogs bark", "cats purr", "cars drive"], top_n=2),
        line("/v2/rerank", "all", query="cats", documents=["dogs bark", "cats purr", "cars drive"]),
    ])
    return tmp_path / "in"


def test_score_and_rerank_rows(tmp_path, inputs):
    res = invoke("run", inputs, "-o", tmp_path / "out", *FAKE)
    assert res.exit_code == 0, res.output
    rows = {r["custom_id"]: r for r in read_output(tmp_path / "out").to_dicts()}
    assert len(rows) == 6
    assert rows["one"]["scores"] == pytest.approx([cosine("what is a cat", "a small feline")])
    assert rows["one"]["choices"] is None and rows["one"]["content"] is None
    assert rows["fan"]["scores"] == pytest.approx([cosine("what is a cat", d) for d in ("a small feline", "a car")])
    assert rows["pairs"]["scores"] == pytest.approx([cosine("a", "c"), cosine("b", "d")])
    assert (rows["pairs"]["prompt_tokens"], rows["pairs"]["completion_tokens"]) == (4, 0)
    assert rows["pairs"]["estimated_cost"] > 0
    assert rows["bad"]["error"]["code"] == "invalid_input"
    documents = ["dogs bark", "cats purr", "cars drive"]
    expected = sorted(((cosine("cats", d), i) for i, d in enumerate(documents)), reverse=True)
    ranked = rows["all"]["rerank"]
    assert [r["index"] for r in ranked] == [i for _, i in expected]
    assert [r["relevance_score"] for r in ranked] == pytest.approx([s for s, _ in expected])
    assert [r["document"] for r in ranked] == [documents[i] for _, i in expected]
    assert rows["top2"]["rerank"] == ranked[:2]
    assert rows["all"]["scores"] is None


def test_score_and_rerank_result_lines_are_vllms_responses(tmp_path, inputs):
    res = invoke("run", inputs, "-o", tmp_path / "out", *FAKE, "--format", "openai")
    assert res.exit_code == 0, res.output
    lines = {}
    for results in (tmp_path / "out").glob("results/*.jsonl"):
        lines.update({x["custom_id"]: x for x in map(json.loads, results.read_text().splitlines())})
    body = lines["fan"]["response"]["body"]
    assert body["object"] == "list" and [(d["index"], d["object"]) for d in body["data"]] == [
        (0, "score"),
        (1, "score"),
    ]
    assert body["data"][1]["score"] == pytest.approx(cosine("what is a cat", "a car"))
    # the fake engine is an embedding model: the query's words once, then each document's (as vLLM counts)
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] == 4 + 3 + 2
    assert lines["top2"]["response"]["body"]["usage"]["prompt_tokens"] == 1 + 2 + 2 + 2
    assert lines["one"]["response"]["body"]["data"][0]["score"] == pytest.approx(
        cosine("what is a cat", "a small feline")
    )
    rerank = lines["top2"]["response"]["body"]
    assert set(rerank) == {"id", "model", "usage", "results"} and len(rerank["results"]) == 2
    documents = ["dogs bark", "cats purr", "cars drive"]
    best = sorted(((cosine("cats", d), i) for i, d in enumerate(documents)), reverse=True)[:2]
    assert [(r["index"], r["document"], r["relevance_score"]) for r in rerank["results"]] == [
        (i, {"text": documents[i], "multi_modal": None}, pytest.approx(s)) for s, i in best]
    assert lines["bad"]["response"] is None and lines["bad"]["error"]["code"] == "invalid_input"


def test_score_lines_on_a_generative_model_get_one_clear_error(tmp_path, inputs):
    res = invoke("run", inputs / "rerank.jsonl", "-o", tmp_path / "out", *FAKE, "--runner", "generate")
    assert res.exit_code == 0, res.output
    errors = [r["error"] for r in read_output(tmp_path / "out").to_dicts()]
    assert {e["code"] for e in errors} == {"unsupported_endpoint"}
    assert errors[0]["message"].startswith("rerank requests need an embedding or cross-encoder model (--runner "
                                           "pooling; --convert embed turns a causal LM into an embedding model)")


@pytest.mark.parametrize(("body", "code", "param", "text"), [
    ({"queries": ["a", "b"], "documents": ["c", "d", "e"]}, "invalid_input", "queries",
     "queries holds 2 texts and documents 3"),
    ({"text_1": "a", "text_2": []}, "invalid_input", "text_2", "text_2 must be a non-empty string"),
    ({"queries": "a", "documents": [{"content": [{"type": "image_url"}]}]}, "unsupported_content", "documents",
     "multimodal score inputs are not supported"),
    ({"queries": "a"}, "invalid_input", "documents", "got null"),
])
def test_invalid_score_bodies(body, code, param, text):
    got = parse(line("/v1/score", "x", **body))
    assert (got.code, got.param, got.shape) == (code, param, "vllm-score") and text in got.message


@pytest.mark.parametrize(("body", "code", "param"), [
    ({"query": ["a"], "documents": ["b"]}, "invalid_input", "query"),
    ({"query": "a", "documents": ["b"], "top_n": -1}, "invalid_parameter", "top_n"),
    ({"query": "a", "documents": ["b", ""]}, "invalid_input", "documents"),
])
def test_invalid_rerank_bodies(body, code, param):
    got = parse(line("/v1/rerank", "x", **body))
    assert (got.code, got.param, got.shape) == (code, param, "vllm-rerank")


def test_score_request_body_and_pairs():
    from pipeline.records import score_pairs

    req = parse(line("/v1/score", "x", queries="q", documents=["a", "b"], truncate_prompt_tokens=5))
    assert req.endpoint == "score" and req.body == {"queries": ["q"], "documents": ["a", "b"]}
    assert score_pairs(req) == [("q", "a"), ("q", "b")]
    assert "unknown field(s) ignored: truncate_prompt_tokens" in req.warnings
    items = parse(line("/v1/score", "i", queries=["q1", "q2"], items=["a", "b"]))
    assert score_pairs(items) == [("q1", "a"), ("q2", "b")]
    rerank = parse(line("/v1/rerank", "y", query="q", documents="a", top_n=1))
    assert rerank.body == {"query": "q", "documents": ["a"], "top_n": 1} and score_pairs(rerank) == [("q", "a")]


def test_estimate_counts_the_query_once_then_each_document(tmp_path, inputs):
    """As vLLM's server and run_batch count an embedding model's score and rerank requests (the
    engine's side: tests/real/test_scoring_real.py); the cost follows the count."""
    import polars as pl
    from transformers import AutoTokenizer

    from pipeline.models.names import resolve_model

    res = invoke("estimate", inputs, "-m", "smollm2", "--rows-file", tmp_path / "rows.parquet", "--workers", "1")
    assert res.exit_code == 0, res.output
    rows = {r["custom_id"]: r for r in pl.read_parquet(tmp_path / "rows.parquet").to_dicts()}
    tokenizer = AutoTokenizer.from_pretrained(resolve_model("smollm2"))

    def count(*texts):
        return sum(len(tokenizer(t)["input_ids"]) for t in texts)

    assert rows["fan"]["prompt_tokens"] == count("what is a cat", "a small feline", "a car")
    assert rows["top2"]["prompt_tokens"] == count("cats", "dogs bark", "cats purr", "cars drive")
    assert rows["all"]["prompt_tokens"] == rows["top2"]["prompt_tokens"]  # top_n changes no count
    assert rows["pairs"]["prompt_tokens"] == count("a", "b", "c", "d")  # a query per document: each counted
    assert rows["top2"]["completion_tokens_upper"] == 0
    per_token = rows["fan"]["cost_usd_expected"] / rows["fan"]["prompt_tokens"]
    expected = per_token * rows["top2"]["prompt_tokens"]
    assert per_token > 0 and rows["top2"]["cost_usd_expected"] == pytest.approx(expected)


def test_embeddings_score_and_rerank_files_share_one_pooling_run(tmp_path, inputs):
    write_jsonl(inputs / "embed.jsonl", [line("/v1/embeddings", "e", input="cats")])
    res = invoke("run", inputs, "-o", tmp_path / "out", *FAKE)
    assert res.exit_code == 0, res.output
    rows = {r["custom_id"]: r for r in read_output(tmp_path / "out").to_dicts()}
    assert len(rows["e"]["embedding"]) == 8 and rows["all"]["rerank"] and rows["one"]["scores"]


def test_rerank_ties_keep_document_order():
    from pipeline.engines.base import Result
    from pipeline.output.rows import result_row

    req = parse(line("/v1/rerank", "t", query="q", documents=["a", "b", "c", "d"], top_n=3))
    row = result_row(req, Result(0, prompt_tokens=8, completion_tokens=0, scores=[0.5, 0.9, 0.5, 0.5]), "m", None)
    assert [(r["index"], r["document"]) for r in row["rerank"]] == [(1, "b"), (0, "a"), (2, "c")]
    assert row["choices"] is None and row["scores"] is None
