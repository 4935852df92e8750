"""/v1/score and /v1/rerank lines on the real vLLM engine: the embedded SmolLM2 as an embedding
model (vLLM's pooling runner, picked from the file; convert "embed"). `LLM.score` on an embedding
model scores a pair by the cosine of its two vectors: the scores must equal the cosine of the
last-token pooled vectors computed with transformers (float32: a float rounding tolerance).
"""

import numpy as np
import pytest
from conftest import invoke, read_output, write_jsonl
from test_embeddings_real import reference

pytestmark = pytest.mark.engine

QUERY = "What do cats eat?"
DOCUMENTS = ["Cats eat fish and meat.", "The stock market fell today.", "Kittens drink milk."]


def line(url, custom_id, **body):
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": body}


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
    return tmp_path_factory.mktemp("score")


@pytest.fixture(scope="module")
def run(tmp):
    (tmp / "in").mkdir()
    write_jsonl(tmp / "in" / "score.jsonl", [
        line("/v1/score", "one", text_1=QUERY, text_2=DOCUMENTS[0]),
        line("/v1/score", "fan", queries=QUERY, documents=DOCUMENTS),
        line("/v1/score", "pairs", queries=DOCUMENTS[:2], documents=DOCUMENTS[1:]),
        line("/v1/score", "too-long", queries=QUERY, documents=["word " * 9000]),
    ])
    write_jsonl(tmp / "in" / "rerank.jsonl", [
        line("/v1/rerank", "top2", query=QUERY, documents=DOCUMENTS, top_n=2),
    ])
    res = invoke("run", tmp / "in", "-o", tmp / "out", "-m", "smollm2", "--dtype", "float32", "-q")
    assert res.exit_code == 0, res.output
    return {r["custom_id"]: r for r in read_output(tmp / "out").to_dicts()}


@pytest.fixture(scope="module")
def vectors():
    from pipeline.models.names import resolve_model

    texts = [QUERY, *DOCUMENTS]
    return dict(zip(texts, reference(resolve_model("smollm2"), texts), strict=True))


def cosine(a, b):
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_scores_equal_the_cosine_of_transformers_vectors(run, vectors):
    assert run["one"]["scores"] == pytest.approx([cosine(vectors[QUERY], vectors[DOCUMENTS[0]])], abs=2e-4)
    assert run["fan"]["scores"] == pytest.approx([cosine(vectors[QUERY], vectors[d]) for d in DOCUMENTS], abs=2e-4)
    assert run["pairs"]["scores"] == pytest.approx(
        [cosine(vectors[DOCUMENTS[0]], vectors[DOCUMENTS[1]]), cosine(vectors[DOCUMENTS[1]], vectors[DOCUMENTS[2]])],
        abs=2e-4)


def test_rerank_orders_by_relevance(run, vectors):
    scores = [cosine(vectors[QUERY], vectors[d]) for d in DOCUMENTS]
    best = sorted(range(3), key=lambda i: scores[i], reverse=True)[:2]
    got = run["top2"]["rerank"]
    assert [r["index"] for r in got] == best and [r["document"] for r in got] == [DOCUMENTS[i] for i in best]
    assert [r["relevance_score"] for r in got] == pytest.approx([scores[i] for i in best], abs=2e-4)


def test_usage_and_errors(run, tmp):
    """An embedding model's score and rerank requests count as vLLM's server and run_batch count
    them: each text embedded once (the query once, then each document), each with the tokenizer's
    special tokens; `estimate` counts the same."""
    import polars as pl
    from transformers import AutoTokenizer

    from pipeline.models.names import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("smollm2"))

    def count(*texts):
        return sum(len(tokenizer(text)["input_ids"]) for text in texts)

    one, fan = run["one"], run["fan"]
    assert one["prompt_tokens"] == count(QUERY, DOCUMENTS[0])
    assert fan["prompt_tokens"] == count(QUERY, *DOCUMENTS)
    assert run["pairs"]["prompt_tokens"] == count(*DOCUMENTS[:2], *DOCUMENTS[1:])
    assert run["top2"]["prompt_tokens"] == fan["prompt_tokens"]
    assert one["completion_tokens"] == 0 and one["estimated_cost"] > 0
    assert run["too-long"]["error"]["code"] == "context_length_exceeded", run["too-long"]["error"]
    assert run["too-long"]["error"]["param"] == "documents"
    res = invoke("estimate", tmp / "in", "-m", "smollm2", "--rows-file", tmp / "rows.parquet", "--workers", "1")
    assert res.exit_code == 0, res.output
    estimated = {r["custom_id"]: r["prompt_tokens"] for r in pl.read_parquet(tmp / "rows.parquet").to_dicts()}
    assert {k: v for k, v in estimated.items() if k != "too-long"} == {
        k: r["prompt_tokens"] for k, r in run.items() if k != "too-long"}


def run_batch(folder, model, skip=("too-long",)):
    """vLLM's own batch runner (`python -m vllm.entrypoints.openai.run_batch`) on the lines of
    folder/in: each line's response body, by custom_id."""
    import json
    import os
    import subprocess
    import sys

    lines = [json.loads(text) for path in sorted((folder / "in").glob("*.jsonl"))
             for text in path.read_text().splitlines()]
    write_jsonl(folder / "peer.jsonl", [{**x, "body": {**x["body"], "model": model}} for x in lines
                                        if x["custom_id"] not in skip])
    done = subprocess.run(
        [sys.executable, "-m", "vllm.entrypoints.openai.run_batch", "-i", folder / "peer.jsonl",
         "-o", folder / "peer.out", "--model", model, "--runner", "pooling", "--dtype", "float32", "--enforce-eager"],
        capture_output=True, text=True, env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "2"}, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = (folder / "peer.out").read_text().splitlines()
    return {x["custom_id"]: x["response"]["body"] for x in map(json.loads, out)}


def assert_same_as_the_peer(run, peer):
    """The same prompt tokens per request (the usage vLLM's server bills), the same scores, the
    same order."""
    assert set(peer) == {"one", "fan", "pairs", "top2"}
    for custom_id, body in peer.items():
        assert run[custom_id]["prompt_tokens"] == body["usage"]["prompt_tokens"], custom_id
    for custom_id in ("one", "fan", "pairs"):
        assert run[custom_id]["scores"] == pytest.approx([d["score"] for d in peer[custom_id]["data"]], abs=1e-5)
    ours, theirs = run["top2"]["rerank"], peer["top2"]["results"]
    assert [r["index"] for r in ours] == [r["index"] for r in theirs]
    assert [r["relevance_score"] for r in ours] == pytest.approx([r["relevance_score"] for r in theirs], abs=1e-5)


def test_usage_and_scores_equal_vllms_run_batch_on_the_same_lines(run, tmp):
    """An embedding model: vLLM's run_batch on the same score and rerank lines."""
    from pipeline.models.names import resolve_model

    assert_same_as_the_peer(run, run_batch(tmp, resolve_model("smollm2")))


def test_a_cross_encoder_counts_and_scores_as_run_batch_and_estimate_counts_the_same(tmp):
    """A cross-encoder (a tiny BERT built here): each joined pair is a prompt, in our run, in
    vLLM's run_batch and in `estimate`."""
    import polars as pl
    from cross_encoder_model import tiny_cross_encoder

    model = str(tiny_cross_encoder(tmp / "bert"))
    folder = tmp / "ce"
    (folder / "in").mkdir(parents=True)
    for name in ("score.jsonl", "rerank.jsonl"):
        lines = [x for x in (tmp / "in" / name).read_text().splitlines() if '"too-long"' not in x]
        (folder / "in" / name).write_text("\n".join(lines) + "\n")
    res = invoke("run", folder / "in", "-o", folder / "out", "-m", model, "--runner", "pooling", "--dtype", "float32",
                 "-q")
    assert res.exit_code == 0, res.output
    ran = {r["custom_id"]: r for r in read_output(folder / "out").to_dicts()}
    assert_same_as_the_peer(ran, run_batch(folder, model))
    res = invoke("estimate", folder / "in", "-m", model, "--rows-file", folder / "rows.parquet", "--workers", "1")
    assert res.exit_code == 0, res.output
    estimated = {r["custom_id"]: r["prompt_tokens"] for r in pl.read_parquet(folder / "rows.parquet").to_dicts()}
    assert estimated == {k: r["prompt_tokens"] for k, r in ran.items()}
