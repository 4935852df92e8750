"""Prefix digests: what two prompts share, in blocks, computed the same way by the scheduler and
the token counter (a chained digest per block, so equal digests mean equal prefixes)."""

from __future__ import annotations

import hashlib

DIGEST = 8  # bytes per block digest


def chained_digests(data: bytes, step: int, *, whole_blocks: bool = False) -> bytes:
    """DIGEST bytes per `step` bytes of data, each digest over everything before its block's end
    (so two inputs share their first k digests exactly when they share their first k blocks).
    `whole_blocks`: no digest for a last, partial block (vLLM caches whole blocks only)."""
    h = hashlib.blake2b(digest_size=DIGEST)
    out = bytearray()
    end = len(data) - len(data) % step if whole_blocks else len(data)
    view = memoryview(data)
    for start in range(0, end, step):
        h.update(view[start : start + step])
        out += h.copy().digest()
    return bytes(out)


def shared_blocks(a: bytes, b: bytes) -> int:
    """How many leading blocks two keys share."""
    n = min(len(a), len(b)) // DIGEST
    i = 0
    while i < n and a[i * DIGEST : (i + 1) * DIGEST] == b[i * DIGEST : (i + 1) * DIGEST]:
        i += 1
    return i
