"""The order requests reach the engines in: grouped by shared prompt prefix (`--order prefix`),
as the input has them (`--order input`), or the first where it helps (`--order auto`, the
default: decided on the first `--order-buffer` requests by the prompt tokens vLLM could reuse,
in whole KV blocks, in each order; see AUTO_GAIN).

vLLM's prefix cache only saves work when requests that share a prefix (a system prompt, a
few-shot block, a document asked many questions) meet while that prefix is still cached. A batch
job knows every request before it starts, so it sorts them: the key of a request is one 8-byte
digest per `BLOCK_CHARS` characters of its conversation (tools, then each message), each digest
covering all the text before it. Requests that share their first k blocks share the key's first
k digests, so sorted keys put every set of requests sharing a prefix side by side, at every
depth (the order of a trie walk). Error rows come first (empty key).

Memory stays bounded for any input: at most `buffer` requests are held (`--order-buffer`); a
fuller buffer is sorted and spilled to a local temporary file (pickle), and the spilled runs are
merged, reading 64 requests of each run at a time. For 10M requests of ~2 KB with the default
buffer of 100,000: about 0.3 GB while reading, 100 runs and ~20 GB of temporary disk (in
$TMPDIR), then 100 x 64 requests while merging. A run's file has no name from the moment it is
created (it is unlinked and kept open), so a killed run leaves no disk behind; a full disk stops
the run resumably (StorageError, exit 3). Compressed and remote inputs are read once,
front to back, like any run.

The reading runs in a thread that starts before the engines do, so it overlaps their start;
the first request reaches an engine once the whole input is read (or, with spilled runs, once
the last run is sorted).

Consecutive requests whose keys share at least half of the shorter one (and one block) form a
group (`Request.group`); the dispatcher hands a group to one engine, so the engine that holds
its prefix computes it once.
"""

from __future__ import annotations

import heapq
import logging
import pickle
import tempfile
import threading
from collections.abc import Iterable, Iterator
from typing import IO, Any

from pipeline.models.prefix import DIGEST, chained_digests, shared_blocks
from pipeline.records import FailedRequest, Request
from pipeline.storage import StorageError

log = logging.getLogger("pipeline")

BLOCK_CHARS = 256
MAX_BLOCKS = 256  # keys cover the first 64k characters: longer shared prefixes sort as one

SPILL_BATCH = 64
ORDERS = ("auto", "prefix", "input")
# --order auto: prefix order when, on the first --order-buffer requests, the prompt tokens that
# vLLM could serve from its prefix cache (whole KV blocks shared with the request before) are at
# least this share of all their prompt tokens more than in the input's order
AUTO_GAIN = 0.05
CHARS_PER_TOKEN = 4  # auto judges without a tokenizer: about 4 characters a token (Llama-class BPE on English)


def conversation_text(request: Request) -> str:
    """The text the chat template renders a request from, in its order: tools, then every
    message's role, content and tool calls (not the rendered prompt: no tokenizer needed),
    after the LoRA adapter's name, if any (an adapter's prefix cache is not the base model's)."""
    import json

    parts = [f"adapter\x1f{request.adapter}"] if request.adapter else []  # an adapter's cache is its own
    if request.tools:
        parts.append(json.dumps(request.tools, sort_keys=True, ensure_ascii=False))
    for m in request.messages:
        content = m.get("content")
        if isinstance(content, list):
            content = "\n".join(str(p.get("text", "")) if isinstance(p, dict) else str(p) for p in content)
        parts.append(f"{m.get('role')}\x1f{content or ''}")
        if m.get("tool_calls"):
            parts.append(json.dumps(m["tool_calls"], sort_keys=True, ensure_ascii=False))
    return "\x1e".join(parts)


def prefix_key(request: Request) -> bytes:
    """One digest per block of the conversation's text, each over all the text before it."""
    data = conversation_text(request).encode("utf-8", "surrogatepass")
    return chained_digests(data[: BLOCK_CHARS * MAX_BLOCKS], BLOCK_CHARS)


def order(items: Iterable[Request | FailedRequest], how: str, *, buffer: int = 100_000,
          spill_dir: str | None = None, kv_block_tokens: int = 16) -> Iterable[Request | FailedRequest]:
    """`items` in the order `how` names; for "prefix" and "auto", reading starts at once in a
    thread. `kv_block_tokens`: the engine's KV cache block size, which auto judges reuse in."""
    if how == "input":
        return items
    if how not in ORDERS:
        raise ValueError(f"unknown order {how!r}; use one of {', '.join(ORDERS)}")
    return PrefixOrder(items, buffer=buffer, spill_dir=spill_dir, auto=how == "auto",
                       kv_block_tokens=kv_block_tokens)


def reusable_share(keys: list[bytes], kv_block_tokens: int) -> float:
    """The share of the keys' prompt tokens (estimated from characters) that the prefix cache
    could serve in this order: the whole KV blocks each prompt shares with the one before it.
    Prompts shorter than one KV block share nothing, however alike their text."""
    block_chars = kv_block_tokens * CHARS_PER_TOKEN
    total = sum(len(k) // DIGEST for k in keys) * BLOCK_CHARS
    reused = sum(shared_blocks(a, b) * BLOCK_CHARS // block_chars * block_chars
                 for a, b in zip(keys, keys[1:], strict=False))
    return reused / total if total else 0.0


class PrefixOrder:
    """Requests sorted by prefix key, with bounded memory (see the module's docstring). With
    `auto`, the first `buffer` requests decide: if sorting them lets the prefix cache serve less
    than AUTO_GAIN more of their prompt tokens (whole KV blocks of `kv_block_tokens`) than the
    input's order does, everything goes in the input's order, streamed as read."""

    def __init__(self, items: Iterable[Request | FailedRequest], *, buffer: int = 100_000,
                 spill_dir: str | None = None, auto: bool = False, kv_block_tokens: int = 16):
        self.buffer, self.spill_dir, self.auto = max(1, buffer), spill_dir, auto
        self.kv_block_tokens = kv_block_tokens
        self.memory: list[tuple[bytes, int, Any]] = []
        self.runs: list[IO[bytes]] = []  # spilled runs: open files without a name
        self.chosen = "prefix"
        self.measured: dict[str, Any] = {}  # what auto measured on the first buffer
        self._rest: Iterator[Request | FailedRequest] | None = None  # "input": the items not read yet
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._read, args=(items,), name="prefix-order", daemon=True)
        self._thread.start()

    def describe(self) -> dict[str, Any]:
        """For the run's report: the order used and, under auto, why."""
        return {"order": self.chosen, **({"order_auto": self.measured} if self.measured else {})}

    def _read(self, items: Iterable[Request | FailedRequest]) -> None:
        try:
            rest = iter(items)
            for seq, item in enumerate(rest):
                key = prefix_key(item) if isinstance(item, Request) else b""
                self.memory.append((key, seq, item))
                if len(self.memory) >= self.buffer:
                    if self.auto and not self._grouping_helps(rest):
                        return
                    self._spill()
            if self.auto and not self.runs and not self._grouping_helps(rest):
                return
            self.memory.sort()
            if self.runs and self.memory:
                self._spill()
        except BaseException as e:  # raised again in the reading thread's consumer
            self._error = e

    def _grouping_helps(self, rest: Iterator[Request | FailedRequest]) -> bool:
        """Auto, once, on the first buffer: True to go on in prefix order; False to stop reading
        and leave `rest` to the consumer, in the input's order."""
        if self.measured:
            return True
        keys = [k for k, _, item in self.memory if isinstance(item, Request)]
        as_read = reusable_share(keys, self.kv_block_tokens)
        grouped = reusable_share(sorted(keys), self.kv_block_tokens)
        self.measured = {"requests_measured": len(keys), "kv_block_tokens": self.kv_block_tokens,
                         "shared_in_input_order": round(as_read, 4),
                         "shared_in_prefix_order": round(grouped, 4), "threshold": AUTO_GAIN}
        helps = grouped - as_read >= AUTO_GAIN
        log.info("--order auto: in the first %d requests, whole KV blocks of %d tokens shared with the "
                 "request before hold %.1f%% of the prompt tokens in prefix order, %.1f%% in input order: "
                 "%s order", len(keys), self.kv_block_tokens, 100 * grouped, 100 * as_read,
                 "prefix" if helps else "input")
        if helps:
            return True
        self.chosen, self._rest = "input", rest
        return False

    def _spill(self) -> None:
        self.memory.sort()
        try:
            f = tempfile.TemporaryFile(prefix="pipeline-order-", dir=self.spill_dir)
            self.runs.append(f)
            for start in range(0, len(self.memory), SPILL_BATCH):
                pickle.dump(self.memory[start : start + SPILL_BATCH], f, protocol=pickle.HIGHEST_PROTOCOL)
            f.flush()
        except OSError as e:
            raise StorageError(f"--order prefix: spilling sorted requests to {self.spill_dir or tempfile.gettempdir()} "
                               f"failed ({e.strerror}). Hint: free space there, set TMPDIR to a larger disk, "
                               "or use --order input") from None
        self.memory = []

    def __iter__(self) -> Iterator[Request | FailedRequest]:
        while self._thread.is_alive():  # short joins: signal handlers run in between
            self._thread.join(0.5)
        if self._error is not None:
            raise self._error
        if self.chosen == "input":
            yield from (item for _, _, item in self.memory)
            self.memory = []
            yield from self._rest or ()
            return
        try:
            merged = heapq.merge(*map(_read_run, self.runs)) if self.runs else iter(self.memory)
            group, prev = 0, None
            for key, _, item in merged:
                if isinstance(item, Request):
                    shared = shared_blocks(prev, key) if prev is not None else 0
                    if shared == 0 or 2 * shared < min(len(prev), len(key)) // DIGEST:
                        group += 1
                    # set on the request this stream made and owns (a copy per request costs more)
                    object.__setattr__(item, "group", group)
                    prev = key
                yield item
        finally:
            self.memory = []
            for f in self.runs:
                f.close()


def _read_run(f: IO[bytes]) -> Iterator[tuple[bytes, int, Any]]:
    f.seek(0)
    while True:
        try:
            yield from pickle.load(f)
        except EOFError:
            return
