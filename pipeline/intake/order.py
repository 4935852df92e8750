"""The order requests reach the engines in: grouped by shared prompt prefix (`--order prefix`: the
first buffer at once, the rest through key ranges on disk), grouped within a bounded look-ahead
(`--order stream`), fully sorted (`--order sorted`), as the input has them (`--order input`), or
prefix order where it helps (`--order auto`, the default: decided on the first `--order-buffer`
requests by the prompt tokens vLLM could reuse, in whole KV blocks, in each order; see AUTO_GAIN).

vLLM's prefix cache only saves work when requests that share a prefix (a system prompt, a
few-shot block, a document asked many questions) meet while that prefix is still cached. The key
of a request is one 8-byte digest per `BLOCK_CHARS` characters of its conversation (tools, then
each message), each digest covering all the text before it. Requests that share their first k
blocks share the key's first k digests, so sorted keys put every set of requests sharing a prefix
side by side, at every depth (the order of a trie walk). Error rows come first (empty key).

prefix (and auto when it groups; BucketOrder): the first `buffer` requests are sorted and sent at
once, so the engines start on them within one buffer's reading, whatever the input's size. Their
keys also set the bounds of up to BUCKETS key ranges (at most a quarter of the open files limit)
(even steps through their distinct keys: a sample of the input's keys). Every later request is keyed
as read and spilled, SPILL_BATCH at a time, to its range's temporary file (pickle; no name on disk,
so a killed run leaves none; a full disk stops the run resumably: StorageError, exit 3). Once the
input ends, the ranges are sent in key order, each read back and sorted in memory (a range past
`buffer` requests or
`buffer_bytes` of images is sorted in runs of that size and merged), its file closed once read.
Past the first buffer the order is exactly the full sort's, so a prefix's requests meet however
far apart the input has them; only the requests of the first buffer are sent apart from the rest
of their prefix (docs/performance.md measures what that costs: a few percent of the reusable
share at 1M). Memory: the first buffer, the batches being filled (BUCKETS x SPILL_BATCH requests
at most), then about two ranges (the one sorted and the one being sent). Temporary disk: the
requests past the first buffer, pickled (about their size in the input).

stream (bounded look-ahead, no disk; prefix's order before issue #32): `buffer` requests are
held, sorted; when the buffer is full the largest prefix groups in it (oldest first among equals) are sent until at most
HOLD_BACK of the buffer is left, and reading goes on. Groups still filling wait for the
requests of theirs read later; a prefix whose requests lie further apart than the look-ahead
reaches is sent in several groups and computed again unless the cache still holds it
(docs/performance.md measures what that costs). The first request reaches an engine once one
buffer is read, whatever the input's size; memory holds about twice `buffer` requests (the buffer
and the flush being sent). A buffer is also full once its requests' images (data: URIs) weigh
`buffer_bytes`, so that image rows are held in bounded memory however many fit in `buffer`.

sorted (the whole input, then the best order: what prefix does past its first buffer, with the
first request after the whole input): a full buffer is sorted and spilled to a local
temporary file (pickle), and the spilled runs are merged, reading 64 requests of each run at a
time. Every shared prefix is computed once, but the first request waits for the whole input (for
10M requests of ~2 KB: 100 runs, ~20 GB of temporary disk in $TMPDIR). A run's file has no name
from the moment it is created (it is unlinked and kept open), so a killed run leaves no disk
behind; a full disk stops the run resumably (StorageError, exit 3).

Every way the reading runs in a thread that starts before the engines do, so it overlaps their
start. Consecutive requests whose keys share at least half of the shorter one (and one block)
form a group (`Request.group`); the dispatcher hands a group to one engine, so the engine that
holds its prefix computes it once. With `decode_first`, within each group (up to GROUP_SPAN
requests at a time) the requests that may generate most (max_tokens x n; no max_tokens: most of
all; among equals, those that may think most: a reasoning model's thinking_token_budget) come first,
so that long decodes start early and short ones fill the tail (BatchLLM).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import pickle
import queue
import sys
import tempfile
import threading
from bisect import bisect_right
from collections.abc import Iterable, Iterator
from typing import IO, Any

from pipeline.models.prefix import DIGEST, chained_digests, shared_blocks
from pipeline.models.reasoning import thinking_upper
from pipeline.models.render import media_bytes
from pipeline.records import FailedRequest, Request
from pipeline.storage import StorageError

log = logging.getLogger("pipeline")

BLOCK_CHARS = 256
MAX_BLOCKS = 256  # keys cover the first 64k characters: longer shared prefixes sort as one

SPILL_BATCH = 64
ORDERS = ("auto", "prefix", "stream", "sorted", "input")
# --order prefix: the key ranges past the first buffer is spread over on disk (fewer when that
# buffer holds fewer distinct keys); each is sorted in memory when served, in runs past --order-buffer
BUCKETS = 256
# --order auto: prefix order when, on the first --order-buffer requests, the prompt tokens that
# vLLM could serve from its prefix cache (whole KV blocks shared with the request before) are at
# least this share of all their prompt tokens more than in the input's order
AUTO_GAIN = 0.05
CHARS_PER_TOKEN = 4  # auto judges without a tokenizer: about 4 characters a token (Llama-class BPE on English)
# --order prefix: share of a full buffer kept back at each flush (the groups least filled), so
# that requests of a prefix read later still meet those read before (0: plain windows)
HOLD_BACK = 0.5
GROUP_SPAN = 4096  # decode-first reorders a group this many requests at a time (memory stays bounded)

Keyed = tuple[bytes, int, Any]  # (prefix key, input position, Request | FailedRequest)


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
    """One digest per block of the conversation's text, each over all the text before it;
    computed on first use and kept on the request (`Request.prefix`): the order sorts by it and
    the dispatcher's cache plan reads it at hand-over, one hashing for both (in input order, only
    the hand-over's)."""
    key = request.prefix
    if key is None:
        data = conversation_text(request).encode("utf-8", "surrogatepass")
        key = chained_digests(data[: BLOCK_CHARS * MAX_BLOCKS], BLOCK_CHARS)
        object.__setattr__(request, "prefix", key)  # frozen: set on the request intake made and owns
    return key


def order(items: Iterable[Request | FailedRequest], how: str, *, buffer: int = 100_000,
          buffer_bytes: int = 512 * 1024 * 1024, spill_dir: str | None = None, kv_block_tokens: int = 16,
          decode_first: bool = True) -> Iterable[Request | FailedRequest]:
    """`items` in the order `how` names; for "prefix", "sorted" and "auto", reading starts at once
    in a thread. `kv_block_tokens`: the engine's KV cache block size, which auto judges reuse in."""
    if how == "input":
        return items
    if how not in ORDERS:
        raise ValueError(f"unknown order {how!r}; use one of {', '.join(ORDERS)}")
    kw = {"buffer": buffer, "buffer_bytes": buffer_bytes, "kv_block_tokens": kv_block_tokens,
          "decode_first": decode_first}
    if how == "sorted":
        return SortedOrder(items, spill_dir=spill_dir, **kw)
    if how == "stream":
        return StreamOrder(items, **kw)
    return BucketOrder(items, spill_dir=spill_dir, auto=how == "auto", **kw)


class ShareMeter:
    """The share of prompt tokens (estimated from characters) the prefix cache could serve in
    the order keys are added: the whole KV blocks each prompt shares with the one before it.
    Prompts shorter than one KV block share nothing, however alike their text."""

    def __init__(self, kv_block_tokens: int):
        self.block_chars = kv_block_tokens * CHARS_PER_TOKEN
        self.reused = self.total = 0
        self.prev: bytes | None = None

    def add(self, key: bytes) -> None:
        self.total += len(key) // DIGEST * BLOCK_CHARS
        if self.prev is not None:
            self.reused += shared_blocks(self.prev, key) * BLOCK_CHARS // self.block_chars * self.block_chars
        self.prev = key

    def share(self) -> float:
        return self.reused / self.total if self.total else 0.0


def reusable_share(keys: Iterable[bytes], kv_block_tokens: int) -> float:
    """ShareMeter's share over `keys`, in their order."""
    meter = ShareMeter(kv_block_tokens)
    for key in keys:
        meter.add(key)
    return meter.share()


def same_group(a: bytes, b: bytes) -> bool:
    """Two keys of one prefix group: they share at least half of the shorter, and one block."""
    shared = shared_blocks(a, b)
    return shared > 0 and 2 * shared >= min(len(a), len(b)) // DIGEST


def expected_decode(item: Request) -> tuple[int, int]:
    """What a request may generate, to start the longest first: max_tokens x n (none: the most),
    then, among equals, what a reasoning model may think (thinking is the longest decode): each
    choice's thinking_token_budget, all of it without one, none where thinking is turned off."""
    bound = (item.max_tokens or sys.maxsize) * item.n
    return bound, thinking_upper(item.body, item.n, bound)


def group_spans(keyed: list[Keyed]) -> list[tuple[int, int, int]]:
    """(start, end, oldest input position) of each prefix group of a sorted list; the error rows
    (empty keys, first) form one span."""
    spans: list[tuple[int, int, int]] = []
    start, oldest = 0, sys.maxsize
    for i, (key, seq, _) in enumerate(keyed):
        prev = keyed[i - 1][0] if i else None
        if prev is not None and not (same_group(prev, key) or prev == key == b""):
            spans.append((start, i, oldest))
            start, oldest = i, sys.maxsize
        oldest = min(oldest, seq)
    if keyed:
        spans.append((start, len(keyed), oldest))
    return spans


class PrefixOrder:
    """Requests in prefix order, read in a thread that hands sorted lists of (key, position,
    item) to the consumer through a queue of one; the consumer numbers the groups and, with
    `decode_first`, reorders each group. With `auto`, the first `buffer` requests decide: if
    sorting them lets the prefix cache serve less than AUTO_GAIN more of their prompt tokens
    (whole KV blocks of `kv_block_tokens`) than the input's order does, everything goes in the
    input's order, streamed as read. Subclasses read (`_read`) and flush (`_put("flush", ...)`)."""

    name = "prefix"

    def __init__(self, items: Iterable[Request | FailedRequest], *, buffer: int = 100_000,
                 buffer_bytes: int = 512 * 1024 * 1024, auto: bool = False, kv_block_tokens: int = 16,
                 decode_first: bool = True):
        self.buffer, self.auto, self.decode_first = max(1, buffer), auto, decode_first
        self.buffer_bytes, self.held = buffer_bytes, 0  # image bytes: the bound, and those in memory
        self.kv_block_tokens = kv_block_tokens
        self.memory: list[Keyed] = []
        self.runs: list[IO[bytes]] = []  # spilled runs (sorted order): open files without a name
        self.chosen = self.name
        self.measured: dict[str, Any] = {}  # what auto measured on the first buffer
        self.meter = ShareMeter(kv_block_tokens)  # on the order emitted
        self.group = 0
        self._rest: Iterator[Request | FailedRequest] | None = None  # "input": the items not read yet
        self._queue: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=1)
        self._closed = False
        self._thread = threading.Thread(target=self._reader, args=(items,), name="prefix-order", daemon=True)
        self._thread.start()

    def describe(self) -> dict[str, Any]:
        """For the run's report: the order used, under auto why, and the share of prompt tokens
        the prefix cache could serve in the order emitted (whole KV blocks shared with the request
        before, as auto judges)."""
        emitted = {"shared_in_emitted_order": round(self.meter.share(), 4)} if self.meter.total else {}
        return {"order": self.chosen, **({"order_auto": self.measured} if self.measured else {}), **emitted}

    def _read(self, rest: Iterator[Request | FailedRequest]) -> None:
        raise NotImplementedError

    def _reader(self, items: Iterable[Request | FailedRequest]) -> None:
        try:
            self._read(iter(items))
            if self.chosen != "input":
                self._put("end", None)
        except _Closed:
            pass
        except BaseException as e:  # raised again in the consumer
            try:
                self._put("error", e)
            except _Closed:
                pass

    def _put(self, kind: str, value: Any) -> None:
        while True:
            try:
                self._queue.put((kind, value), timeout=0.5)
                return
            except queue.Full:
                if self._closed:
                    raise _Closed() from None

    def _get(self) -> tuple[str, Any]:
        while True:  # short waits: signal handlers run in between
            try:
                return self._queue.get(timeout=0.5)
            except queue.Empty:
                continue

    def _keyed(self, seq: int, item: Request | FailedRequest) -> Keyed:
        return (prefix_key(item) if isinstance(item, Request) else b"", seq, item)

    def _hold(self, seq: int, item: Request | FailedRequest) -> bool:
        """Add `item` to memory; True when memory is full (in requests or in image bytes)."""
        return self._add(self._keyed(seq, item))

    def _add(self, keyed: Keyed) -> bool:
        self.memory.append(keyed)
        self.held += media_bytes(keyed[2].messages) if isinstance(keyed[2], Request) else 0
        return len(self.memory) >= self.buffer or self.held >= self.buffer_bytes

    def _weigh(self) -> None:
        self.held = sum(media_bytes(item.messages) for _, _, item in self.memory if isinstance(item, Request))

    def _grouping_helps(self, rest: Iterator[Request | FailedRequest]) -> bool:
        """Auto, once, on the first buffer: True to go on in prefix order; False to stop reading
        and leave the buffer and `rest` to the consumer, in the input's order."""
        if not self.auto or self.measured:
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
        if not helps:
            self.chosen, self._rest = "input", rest
            memory, self.memory = self.memory, []
            self._put("input", memory)
        return helps

    def __iter__(self) -> Iterator[Request | FailedRequest]:
        try:
            kind, value = self._get()
            if kind == "input":
                yield from (item for _, _, item in value)
                yield from self._rest or ()
                return
            yield from self._grouped(self._flushed(kind, value))
        finally:
            self._closed = True
            self.memory = []
            for f in self.runs:
                f.close()

    def _flushed(self, kind: str, value: Any) -> Iterator[Keyed]:
        while kind != "end":
            if kind == "error":
                raise value
            yield from value
            yield None  # a flush is whole: its last group leaves now, not once the next is read
            kind, value = self._get()

    def _grouped(self, keyed: Iterator[Keyed | None]) -> Iterator[Request | FailedRequest]:
        """Number the groups (a group the look-ahead flushed in parts keeps its number) and
        emit each, up to GROUP_SPAN requests at a time, and whatever a flush ends with at its end."""
        prev, run = None, []
        for entry in keyed:
            if entry is None:
                yield from self._emit(run)
                run = []
                continue
            key, _, item = entry
            if not isinstance(item, Request):
                yield item
                continue
            new = prev is None or not same_group(prev, key)
            if run and (new or len(run) >= GROUP_SPAN):
                yield from self._emit(run)
                run = []
            self.group += new
            # set on the request this stream made and owns (a copy per request costs more)
            object.__setattr__(item, "group", self.group)
            run.append((key, item))
            prev = key
        yield from self._emit(run)

    def _emit(self, run: list[tuple[bytes, Request]]) -> Iterator[Request]:
        if self.decode_first:
            run.sort(key=lambda pair: tuple(-x for x in expected_decode(pair[1])))  # stable: key order among equals
        for key, item in run:
            self.meter.add(key)
            yield item


class StreamOrder(PrefixOrder):
    """--order stream: bounded look-ahead (see the module's docstring). `hold_back`:
    the share of a full buffer kept for the next flush (HOLD_BACK; 0: sort and send windows)."""

    name = "stream"

    def __init__(self, items: Iterable[Request | FailedRequest], *, hold_back: float = HOLD_BACK, **kw: Any):
        self.hold_back = hold_back
        super().__init__(items, **kw)

    def _read(self, rest: Iterator[Request | FailedRequest]) -> None:
        for seq, item in enumerate(rest):
            if self._hold(seq, item):
                if not self._grouping_helps(rest):
                    return
                self._put("flush", self._take())
                self._weigh()
        if self._grouping_helps(rest):
            self.memory.sort()
            self._put("flush", self.memory)
            self.memory = []

    def _take(self) -> list[Keyed]:
        """Sort the buffer; take its largest groups (oldest first among equals, the error rows
        always) until at most `hold_back` of it is left, and return them in key order."""
        self.memory.sort()  # the part kept last time is one sorted run: timsort merges it
        spans = group_spans(self.memory)
        left, keep = len(self.memory), int(len(self.memory) * self.hold_back)
        taken = {s for s in spans if self.memory[s[0]][0] == b""}
        for span in sorted(spans, key=lambda s: (s[0] - s[1], s[2])):
            if left <= keep:
                break
            taken.add(span)
            left -= span[1] - span[0]
        out = [x for s in spans if s in taken for x in self.memory[s[0]:s[1]]]
        self.memory = [x for s in spans if s not in taken for x in self.memory[s[0]:s[1]]]
        return out


class SortedOrder(PrefixOrder):
    """--order sorted: the whole input sorted, in runs spilled to disk past `buffer` and merged."""

    name = "sorted"

    def __init__(self, items: Iterable[Request | FailedRequest], *, spill_dir: str | None = None, **kw: Any):
        self.spill_dir = spill_dir
        super().__init__(items, **kw)

    def _read(self, rest: Iterator[Request | FailedRequest]) -> None:
        for seq, item in enumerate(rest):
            if self._hold(seq, item):
                self._spill()
                self.held = 0
        self.memory.sort()
        if self.runs and self.memory:
            self._spill()
        self._put("flush", heapq.merge(*map(_read_run, self.runs)) if self.runs else self.memory)

    def _spill(self) -> None:
        self.memory.sort()
        self.runs.append(spill(None, self.memory, self.spill_dir, "--order sorted: spilling sorted requests"))
        self.memory = []


class BucketOrder(PrefixOrder):
    """--order prefix and auto: the first `buffer` requests are sent sorted at once (the engines
    start on them), and set the bounds of up to `buckets` key ranges; every later request is
    spilled to its range's temporary file (pickle, no name on disk) as read. Once the input ends,
    the ranges are sent in key order, each sorted in memory (a range past `buffer` requests or
    `buffer_bytes` of images: sorted in runs on disk and merged). After the first buffer the order
    is the full sort's, so a prefix's requests meet whatever their distance in the input: only
    those of the first buffer are sent apart from the rest of theirs."""

    def __init__(self, items: Iterable[Request | FailedRequest], *, spill_dir: str | None = None,
                 buckets: int = BUCKETS, **kw: Any):
        self.spill_dir, self.buckets = spill_dir, max(1, min(buckets, _open_files_limit() // 4))
        self.bounds: list[bytes] = []
        self.files: list[IO[bytes] | None] = []
        self.pending: list[list[Keyed]] = []
        self.spilled = 0  # requests spilled to the ranges' files
        super().__init__(items, **kw)

    def describe(self) -> dict[str, Any]:
        spilled = {"order_spilled": self.spilled, "order_ranges": len(self.files)} if self.spilled else {}
        return {**super().describe(), **spilled}

    def _read(self, rest: Iterator[Request | FailedRequest]) -> None:
        seq = -1
        for seq, item in enumerate(rest):
            if self._hold(seq, item):
                break
        if not self._grouping_helps(rest):
            return
        self.memory.sort()
        self._set_bounds()
        head, self.memory, self.held = self.memory, [], 0
        self._put("flush", head)
        del head  # the consumer holds it now
        for later, item in enumerate(rest, seq + 1):
            self._bucket(self._keyed(later, item))
        for b in range(len(self.pending)):
            self._dump(b)
        self.held = 0
        for b in range(len(self.files)):
            self._serve(b)

    def _set_bounds(self) -> None:
        """`buckets` - 1 keys of the first buffer at even steps through its distinct keys: the ranges' bounds."""
        keys = [k for k, _ in itertools.groupby(k for k, _, _ in self.memory) if k]
        n = min(self.buckets, len(keys)) or 1
        self.bounds = [keys[i * len(keys) // n] for i in range(1, n)]
        self.files, self.pending = [None] * n, [[] for _ in range(n)]

    def _bucket(self, keyed: Keyed) -> None:
        """Add a request to its range's batch; a full batch is spilled, and every batch once the
        batches hold `buffer_bytes` of images."""
        if self._closed:
            raise _Closed()
        b = bisect_right(self.bounds, keyed[0])
        self.pending[b].append(keyed)
        self.held += media_bytes(keyed[2].messages) if isinstance(keyed[2], Request) else 0
        if self.held >= self.buffer_bytes:
            for full in range(len(self.pending)):
                self._dump(full)
            self.held = 0
        elif len(self.pending[b]) >= SPILL_BATCH:
            self._dump(b)

    def _dump(self, b: int) -> None:
        if not self.pending[b]:
            return
        new = self.files[b] is None
        self.files[b] = spill(self.files[b], self.pending[b], self.spill_dir, "--order prefix: spilling requests")
        if new:
            self.runs.append(self.files[b])  # closed with the others if the consumer stops early
            if self._closed:  # it stopped while this file was made
                self.files[b].close()
                raise _Closed()
        self.spilled += len(self.pending[b])
        self.pending[b] = []

    def _serve(self, b: int) -> None:
        """Range `b` sorted: in memory, or past `buffer` (or `buffer_bytes`) in sorted runs merged."""
        f, self.files[b] = self.files[b], None
        if f is None:
            return
        runs: list[IO[bytes]] = []
        with f:
            for keyed in _read_run(f):
                if self._add(keyed):
                    self.memory.sort()
                    runs.append(spill(None, self.memory, self.spill_dir, "--order prefix: spilling sorted requests"))
                    self.memory, self.held = [], 0
        self.memory.sort()
        if runs:
            runs.append(spill(None, self.memory, self.spill_dir, "--order prefix: spilling sorted requests"))
            self.runs.extend(runs)
            self.memory, self.held = [], 0
            self._put("flush", _merged(runs))
        else:
            chunk, self.memory, self.held = self.memory, [], 0
            self._put("flush", chunk)


def spill(f: IO[bytes] | None, items: list[Keyed], spill_dir: str | None, what: str) -> IO[bytes]:
    """`items` pickled, SPILL_BATCH at a time, without their keys (kept on each request), at the end
    of `f` (None: a new temporary file with no name on disk, so that a killed run leaves none); a
    full disk is a StorageError (exit 3)."""
    try:
        f = f or tempfile.TemporaryFile(prefix="pipeline-order-", dir=spill_dir)
        for start in range(0, len(items), SPILL_BATCH):  # the key travels on its request (Request.prefix)
            pickle.dump(
                [(seq, item) for _, seq, item in items[start : start + SPILL_BATCH]],
                f,
                protocol=pickle.HIGHEST_PROTOCOL,
            )
        f.flush()
        return f
    except OSError as e:
        raise StorageError(
            f"{what} to {spill_dir or tempfile.gettempdir()} failed ({e.strerror}). "
            "Hint: free space there, set TMPDIR to a larger disk, or use --order stream "
            "(bounded look-ahead, no spill)"
        ) from None


def _open_files_limit() -> int:
    """The process's limit on open files (a range's file stays open while the input is read)."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):  # no resource module (Windows)
        return 4 * BUCKETS
    return soft if soft != resource.RLIM_INFINITY else 4 * BUCKETS


def _merged(runs: list[IO[bytes]]) -> Iterator[Keyed]:
    """Sorted runs merged; each closed (its disk freed) once merged."""
    try:
        yield from heapq.merge(*map(_read_run, runs))
    finally:
        for f in runs:
            f.close()


class _Closed(Exception):
    """The consumer stopped reading: the reading thread ends."""


def _read_run(f: IO[bytes]) -> Iterator[Keyed]:
    f.seek(0)
    while True:
        try:
            batch = pickle.load(f)
        except EOFError:
            return
        for seq, item in batch:
            yield (prefix_key(item) if isinstance(item, Request) else b"", seq, item)
