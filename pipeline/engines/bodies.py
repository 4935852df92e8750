"""What identical.py and sampled.py know of a request's body: whether its answer follows from
it, and a digest of everything of it that the engine sees."""

from __future__ import annotations

import hashlib
import json

from pipeline.endpoints import ENDPOINTS
from pipeline.records import Request


def determined(req: Request) -> bool:
    """Whether the request's answer follows from its body: temperature 0 (greedy), or a `seed` of
    its own (vLLM seeds each such request's sampler alone), or an embeddings, score or rerank
    request (identical.py's doc)."""
    if not ENDPOINTS[req.endpoint].completes:  # vectors and scores follow from the body
        return True
    return req.params.get("temperature") == 0 or req.params.get("seed") is not None


def body_key(req: Request, without: tuple[str, ...] = ()) -> bytes:
    """A digest of everything of the request that the engine sees, less the sampling parameters
    named in `without`."""
    params = {k: v for k, v in req.params.items() if k not in without} if without else req.params
    body = [req.endpoint, req.adapter, req.messages, req.input, params, req.tools, req.tool_choice,
            req.response_format]
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), default=repr)
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()
