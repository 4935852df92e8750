"""vLLM's pooling runner (an embedding or cross-encoder model) behind the engine interface:
embeddings, score and rerank requests.

`VLLMEngine` hands its requests here when its model runs as a pooling model (`--runner pooling`).
Each step embeds every embeddings request queued since the last one in one `LLM.embed` call, and
scores the pairs of every score and rerank request in one `LLM.score` call (vLLM batches inside
each: a cross-encoder scores each joined pair, an embedding model the cosine of the two vectors),
so the engine still gets the whole window of work. Each request's body (`Request.body`) is
validated by vLLM's own request class (PROTOCOL) and run as it is. A call that vLLM refuses (a
prompt over the context, ...) is retried one request at a time, so that only that request fails.
Imported only inside engine workers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from vllm import LLM, PoolingParams
from vllm.entrypoints.pooling.embed.protocol import EmbeddingCompletionRequest
from vllm.entrypoints.pooling.scoring.protocol import RerankRequest, ScoreQueriesDocumentsRequest

from pipeline.endpoints import ENDPOINTS
from pipeline.engines.base import Result
from pipeline.records import Problem, Request, embedding_inputs, score_pairs


class PoolingQueue:
    def __init__(self, llm: LLM, refusal: Callable[[Exception, str], Problem]):
        # refusal(exception, field): vLLM's exception as the request's Problem
        self.llm, self.refusal = llm, refusal
        self.queue: list[tuple[int, Request]] = []
        config = llm.model_config
        self.matryoshka = config.is_matryoshka
        self.dimensions = config.matryoshka_dimensions

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
        request's prompt tokens are those of its pairs' prompts as the engine computed them."""
        pairs = [(seq, pair) for seq, req in work for pair in score_pairs(req)]
        outputs = self.llm.score([q for _, (q, _) in pairs], [d for _, (_, d) in pairs], use_tqdm=False)
        scores: dict[int, list[float]] = {}
        tokens: dict[int, int] = {}
        for (seq, _), out in zip(pairs, outputs, strict=True):
            scores.setdefault(seq, []).append(float(out.outputs.score))
            tokens[seq] = tokens.get(seq, 0) + len(out.prompt_token_ids)
        return [Result(seq, prompt_tokens=tokens[seq], completion_tokens=0, cached_tokens=0, scores=scores[seq])
                for seq, _ in work]

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
