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
    return req.body.get("temperature") == 0 or req.body.get("seed") is not None


def body_key(req: Request, without: tuple[str, ...] = ()) -> bytes:
    """A digest of everything of the request that the engine sees (its endpoint, adapter and
    normalized body, less its `user`), less the body fields named in `without`."""
    skip = ("user", *without)
    body = {k: v for k, v in req.body.items() if k not in skip}
    text = json.dumps([req.endpoint, req.adapter, body], sort_keys=True, separators=(",", ":"), default=repr)
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()
