"""`estimate`'s prompt tokens of score and rerank requests, as vLLM's server and run_batch count
them (vllm/entrypoints/pooling/scoring/serving.py sums the prompts it sends the engine): on an
embedding model each text is its own prompt (the query once, then each document; N queries for N
documents each once); on a cross-encoder each (query, document) pair is one prompt, joined by the
tokenizer's pair encoding. The engine's side: tests/real/test_scoring_real.py, against run_batch."""

import json

import pytest
from cross_encoder_model import tiny_cross_encoder

from pipeline.intake.requests import Context, parse_row
from pipeline.models.names import score_join
from pipeline.models.tokens import PromptCounter
from pipeline.records import Request, Source

QUERY = "What do cats eat?"
DOCUMENTS = ["Cats eat fish and meat.", "The stock market fell today.", "Kittens drink milk."]


def request(url, **body):
    req = parse_row({"custom_id": "x", "method": "POST", "url": url, "body": body}, source=Source(0, "f", "f"), line=1,
                    ctx=Context())
    assert isinstance(req, Request), req
    return req


def counts(counter, *requests):
    return [tokens for _, tokens, _ in counter.check_all(requests, workers=1)]


@pytest.fixture(scope="module")
def smollm2():
    return PromptCounter("smollm2")


@pytest.fixture(scope="module")
def cross_encoder(tmp_path_factory):
    return PromptCounter(str(tiny_cross_encoder(tmp_path_factory.mktemp("ce"))))


def test_an_embedding_model_counts_the_query_once_then_each_document(smollm2):
    def count(*texts):
        return sum(len(smollm2.tokenizer(t)["input_ids"]) for t in texts)

    fan, rerank, pairs, one = counts(
        smollm2, request("/v1/score", queries=QUERY, documents=DOCUMENTS),
        request("/v1/rerank", query=QUERY, documents=DOCUMENTS, top_n=1),
        request("/v1/score", queries=DOCUMENTS[:2], documents=DOCUMENTS[1:]),
        request("/v1/score", text_1=QUERY, text_2=DOCUMENTS[0]))
    assert fan == rerank == count(QUERY, *DOCUMENTS)  # not the query three times: 279 for 193 in #29
    assert fan < count(*(t for d in DOCUMENTS for t in (QUERY, d)))
    assert pairs == count(*DOCUMENTS[:2], *DOCUMENTS[1:])
    assert one == count(QUERY, DOCUMENTS[0])


def test_a_cross_encoder_counts_each_joined_pair(cross_encoder):
    tokenizer = cross_encoder.tokenizer
    assert cross_encoder.score_join == "pair"

    def pair(q, d):
        ids = tokenizer(text=q, text_pair=d)["input_ids"]
        assert ids[0] == tokenizer.cls_token_id and ids.count(tokenizer.sep_token_id) == 2
        return len(ids)

    fan, rerank, pairs = counts(
        cross_encoder, request("/v1/score", queries=QUERY, documents=DOCUMENTS),
        request("/v1/rerank", query=QUERY, documents=DOCUMENTS),
        request("/v1/score", queries=DOCUMENTS[:2], documents=DOCUMENTS[1:]))
    assert fan == rerank == sum(pair(QUERY, d) for d in DOCUMENTS)
    assert pairs == pair(DOCUMENTS[0], DOCUMENTS[1]) + pair(DOCUMENTS[1], DOCUMENTS[2])


@pytest.mark.parametrize(("config", "join"), [
    ({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}, None),  # an embedding model when pooled
    ({"architectures": ["BertForSequenceClassification"], "model_type": "bert"}, "pair"),
    ({"architectures": ["XLMRobertaForSequenceClassification"], "model_type": "xlm-roberta"}, "pair"),
    ({"architectures": ["Qwen2ForSequenceClassification"], "model_type": "qwen2"}, "concat"),  # an LLM as reranker
    ({"architectures": ["Qwen2ForSequenceClassification"], "model_type": "qwen2", "use_sep_token": True}, "pair"),
])
def test_how_a_model_joins_a_pair(tmp_path, config, join):
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert score_join(str(tmp_path)) == join
