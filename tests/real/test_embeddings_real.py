"""Embeddings on the real vLLM engine: the embedded SmolLM2 served as an embedding model.

`pipeline run` on a file of /v1/embeddings lines picks vLLM's pooling runner by itself, and vLLM
converts the causal LM into an embedding model (convert "embed": the last token's final hidden
state, normalized). The vectors must equal that pooling computed directly with transformers on
the same folder. float32 on both sides, so the tolerance is float rounding.
"""

import json

import numpy as np
import pytest
import torch
from conftest import invoke, read_output, write_jsonl

pytestmark = pytest.mark.engine

TEXTS = ["The ocean is vast.", "A cat sleeps on the mat.", "Embeddings map text to vectors."]


def line(custom_id, **body):
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/embeddings", "body": body}


def reference(folder, inputs):
    """Last-token pooling of the final hidden state, L2-normalized, in float32 (transformers)."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder, dtype=torch.float32).eval()
    vectors = []
    for one in inputs:
        ids = one if isinstance(one, list) else tokenizer(one)["input_ids"]
        with torch.no_grad():
            hidden = model(torch.tensor([ids])).last_hidden_state[0, -1]
        vectors.append(torch.nn.functional.normalize(hidden, dim=0).numpy())
    return vectors


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("embed")
    src = write_jsonl(tmp / "in.jsonl", [
        *(line(f"t{i}", input=text) for i, text in enumerate(TEXTS)),
        line("batch", input=TEXTS[:2]),
        line("ids", input=[1, 504, 3240, 314]),
        line("dims", input="short", dimensions=32),
        line("too-long", input="word " * 9000),
    ])
    res = invoke("run", src, "-o", tmp / "out", "-m", "smollm2", "--dtype", "float32", "-q")
    assert res.exit_code == 0, res.output
    return {r["custom_id"]: r for r in read_output(tmp / "out").to_dicts()}


def test_vectors_equal_last_token_pooling_in_transformers(run):
    from pipeline.models.names import resolve_model

    expected = reference(resolve_model("smollm2"), [*TEXTS, [1, 504, 3240, 314]])
    got = [run[f"t{i}"]["embedding"] for i in range(3)] + [run["ids"]["embedding"]]
    for vector, want in zip(got, expected, strict=True):
        assert len(vector) == 576
        np.testing.assert_allclose(vector, want, atol=2e-4)
    assert np.linalg.norm(got[0]) == pytest.approx(1.0, abs=1e-4)
    assert run["batch"]["embedding"] is None
    np.testing.assert_allclose(run["batch"]["embeddings"], [got[0], got[1]], atol=1e-5)


def test_usage_and_errors(run):
    assert run["ids"]["prompt_tokens"] == 4 and run["ids"]["completion_tokens"] == 0
    assert run["batch"]["prompt_tokens"] == run["t0"]["prompt_tokens"] + run["t1"]["prompt_tokens"]
    assert run["t0"]["estimated_cost"] > 0
    error = run["dims"]["error"]
    assert error["code"] == "unsupported_parameter" and "matryoshka" in error["message"], json.dumps(error)
    # vLLM refuses the whole call for one input over the context: only that request fails
    assert run["too-long"]["error"]["code"] == "context_length_exceeded", json.dumps(run["too-long"]["error"])
