"""vLLM's pooling runner (an embedding or cross-encoder model) behind the engine interface:
embeddings, score and rerank requests.

`VLLMEngine` hands its requests here when its model runs as a pooling model (`--runner pooling`).
Each step embeds every embeddings request queued since the last one in one `LLM.embed` call, and
scores every score and rerank request in one call, as vLLM's own scoring does it: on an embedding
model (a bi-encoder) each request's queries and documents are embedded once, in one `LLM.embed`
call, and a pair scores the cosine of its two vectors; a cross-encoder scores each joined pair, in
one `LLM.score` call. The engine still gets the whole window of work, and each request's prompt
tokens are what vLLM's server and `run_batch` bill for it: a bi-encoder's texts each once (the
query once, then each document), a cross-encoder's joined pairs. Each request's body
(`Request.body`) is validated by vLLM's own request class (PROTOCOL) and run as it is. A call
that vLLM refuses (a prompt over the context, ...) is retried one request at a time, so that
only that request fails.
Imported only inside engine workers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from vllm import LLM, PoolingParams
from vllm.entrypoints.pooling.embed.protocol import EmbeddingCompletionRequest
from vllm.entrypoints.pooling.scoring.protocol import RerankRequest, ScoreQueriesDocumentsRequest
from vllm.tasks import SCORE_TYPE_MAP

from pipeline.endpoints import ENDPOINTS
from pipeline.engines.base import Result
from pipeline.records import Problem, Request, embedding_inputs, score_inputs, score_pairs


class PoolingQueue:
    def __init__(self, llm: LLM, refusal: Callable[[Exception, str], Problem]):
        # refusal(exception, field): vLLM's exception as the request's Problem
        self.llm, self.refusal = llm, refusal
        self.queue: list[tuple[int, Request]] = []
        config = llm.model_config
        self.matryoshka = config.is_matryoshka
        self.dimensions = config.matryoshka_dimensions
        # How vLLM scores with this model: bi-encoder (an embedding model), cross-encoder, late-interaction
        self.score_type = SCORE_TYPE_MAP.get(getattr(llm, "pooling_task", None))

    def add(self, seq: int, req: Request) -> Result | None:
        """Queue a pooling request (its body validated by vLLM's own class); a Result when it is
        refused now."""
        try:
            PROTOCOL[req.endpoint].model_validate({**req.body, "model": "batch"})
        except Exception as e:  # pydantic's ValidationError: a field vLLM's API refuses
            message = " ".join(str(e).strip().split("\n")[:3])[:500]
            return Result(seq, error=Problem("invalid_parameter", f"vLLM refused the request: {message}"))
        dimensions = req.body.get("dimensions")
        if dimensions is not None and not self.matryoshka:
            return Result(seq, error=Problem(
                "unsupported_parameter", "dimensions: this model does not support shorter vectors (it is not "
                "a matryoshka model). Hint: drop dimensions, or use a model trained for it", "dimensions"))
        if dimensions is not None and self.dimensions and dimensions not in self.dimensions:
            return Result(seq, error=Problem("unsupported_parameter", f"dimensions {dimensions} is not one of "
                                             f"this model's {self.dimensions}", "dimensions"))
        self.queue.append((seq, req))
        return None

    def pending(self) -> int:
        return len(self.queue)

    def step(self) -> list[Result]:
        """Each call of STEP on all the work queued for it (embeddings, then score and rerank)."""
        work, self.queue = self.queue, []
        results = []
        for call in dict.fromkeys(STEP.values()):
            mine = [one for one in work if STEP[one[1].endpoint] is call]
            if mine:
                results.extend(self._each(lambda some, call=call: call(self, some), mine))
        return results

    def _each(self, call: Callable[[list[tuple[int, Request]]], list[Result]],
              work: list[tuple[int, Request]]) -> list[Result]:
        """`call` on the whole work, else (vLLM refused the call) on each request alone."""
        try:
            return call(work)
        except Exception as e:  # a request vLLM refuses fails the whole call: retry each on its own
            if len(work) == 1:
                return [Result(work[0][0], error=self.refusal(e, ENDPOINTS[work[0][1].endpoint].prompt_field))]
        results = []
        for one in work:
            try:
                results.extend(call([one]))
            except Exception as e:  # this request's own refusal
                results.append(Result(one[0], error=self.refusal(e, ENDPOINTS[one[1].endpoint].prompt_field)))
        return results

    def _score(self, work: list[tuple[int, Request]]) -> list[Result]:
        """Every pair of the work in one `LLM.score` call (N queries with N documents); each
        request's prompt tokens are those of its pairs' prompts as the engine computed them (a
        cross-encoder's prompt is the joined pair: vLLM's server counts each). An embedding model's
        work goes to `_cosine`."""
        if self.score_type == "bi-encoder":
            return self._cosine(work)
        pairs = [(seq, pair) for seq, req in work for pair in score_pairs(req)]
        outputs = self.llm.score([q for _, (q, _) in pairs], [d for _, (_, d) in pairs], use_tqdm=False)
        scores: dict[int, list[float]] = {}
        tokens: dict[int, int] = {}
        for (seq, _), out in zip(pairs, outputs, strict=True):
            scores.setdefault(seq, []).append(float(out.outputs.score))
            tokens[seq] = tokens.get(seq, 0) + len(out.prompt_token_ids)
        return [Result(seq, prompt_tokens=tokens[seq], completion_tokens=0, cached_tokens=0, scores=scores[seq])
                for seq, _ in work]

    def _cosine(self, work: list[tuple[int, Request]]) -> list[Result]:
        """Score and rerank on an embedding model as vLLM's bi-encoder scoring does it (`LLM.score`,
        its server, `run_batch`): each request's queries and documents embedded once (all of the
        work's in one `LLM.embed` call), a pair's score the cosine of its two vectors in float32;
        the request's prompt tokens those of each text embedded: the query once, then each document."""
        import torch

        texts = [(seq, *score_inputs(req)) for seq, req in work]
        outputs = iter(self.llm.embed([t for _, queries, documents in texts for t in (*queries, *documents)],
                                      use_tqdm=False))
        results = []
        for seq, queries, documents in texts:
            firsts = [next(outputs) for _ in queries]
            seconds = [next(outputs) for _ in documents]
            vectors = [torch.tensor(o.outputs.embedding, dtype=torch.float32) for o in (*firsts, *seconds)]
            ones, twos = vectors[:len(firsts)], vectors[len(firsts):]
            scores = [float(torch.nn.functional.cosine_similarity(a, b, dim=0))
                      for a, b in zip(ones * len(twos) if len(ones) == 1 else ones, twos, strict=True)]
            results.append(Result(seq, prompt_tokens=sum(len(o.prompt_token_ids) for o in (*firsts, *seconds)),
                                  completion_tokens=0, cached_tokens=0, scores=scores))
        return results

    def _embed(self, work: list[tuple[int, Request]]) -> list[Result]:
        prompts: list[Any] = []
        params: list[PoolingParams] = []
        for _, req in work:
            for one in embedding_inputs(req.body["input"]):
                prompts.append(one if isinstance(one, str) else {"prompt_token_ids": one})
                params.append(PoolingParams(dimensions=req.body.get("dimensions")))
        outputs = iter(self.llm.embed(prompts, pooling_params=params, use_tqdm=False))
        results = []
        for seq, req in work:
            outs = [next(outputs) for _ in embedding_inputs(req.body["input"])]
            results.append(Result(seq, prompt_tokens=sum(len(o.prompt_token_ids) for o in outs),
                                  completion_tokens=0, cached_tokens=0,
                                  embeddings=[list(o.outputs.embedding) for o in outs]))
        return results


# The one call each pooling endpoint's requests go through, all of a step's at once (test_registry.py:
# every pooling endpoint has one).
STEP = {"embeddings": PoolingQueue._embed, "score": PoolingQueue._score, "rerank": PoolingQueue._score}
# vLLM's own protocol class of each pooling endpoint's body, as its server and run_batch validate it
# (the body is run as it is; test_registry.py: every pooling endpoint has one).
PROTOCOL = {"embeddings": EmbeddingCompletionRequest, "score": ScoreQueriesDocumentsRequest,
            "rerank": RerankRequest}
