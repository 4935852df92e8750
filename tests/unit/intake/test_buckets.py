"""--order prefix (intake/order.py BucketOrder): the first buffer sent sorted at once, every later
request spilled to its key range on disk and the ranges sent in key order, so that past the first
buffer the order is the full sort's; every item exactly once, spill files without names on disk
and closed at the end, a full disk a StorageError, the first request before the input ends."""

import os
import threading

import pytest
from conftest import contiguous
from hypothesis import given, settings
from hypothesis import strategies as st
from test_order import doc_of, docs_workload, shuffled, texts

from pipeline.intake.order import (
    BucketOrder,
    SortedOrder,
    StreamOrder,
    order,
    prefix_key,
    reusable_share,
)
from pipeline.records import Request


def sort_key(r):
    return prefix_key(r) if isinstance(r, Request) else b""


def expected(rows, buffer):
    """The first `buffer` rows sorted, then the rest sorted (by key, then input position)."""
    keyed = [(sort_key(r), i, r) for i, r in enumerate(rows)]
    head, rest = sorted(keyed[:buffer], key=lambda k: k[:2]), sorted(keyed[buffer:], key=lambda k: k[:2])
    return [(r.custom_id, r.line) for _, _, r in head + rest if isinstance(r, Request)]


@settings(max_examples=80, deadline=None)
@given(contents=st.lists(texts, min_size=0, max_size=60), errors=st.integers(0, 4), seed=st.integers(0, 10**6),
       buffer=st.integers(1, 70), buckets=st.sampled_from([1, 2, 3, 256]))
def test_every_item_once_head_then_each_range_sorted_by_key(tmp_path_factory, contents, errors, seed, buffer,
                                                             buckets):
    """Any input, buffer and number of ranges (a range larger than the buffer is sorted in runs
    and merged): the first buffer sorted, then the rest exactly as the full sort has it (by key,
    then input position); every
    item once; nothing left in the spill folder and every spill file closed."""
    rows = shuffled(contents, [None] * 60, errors, seed)
    spill = tmp_path_factory.mktemp("spill")
    ordered = BucketOrder(iter(rows), buffer=buffer, buckets=buckets, spill_dir=str(spill), decode_first=False)
    out = list(ordered)
    # error rows leave as soon as read from each part; the requests exactly in this order
    assert [(r.custom_id, r.line) for r in out if isinstance(r, Request)] == expected(rows, buffer)
    assert sorted((r.custom_id, r.line) for r in out) == sorted((r.custom_id, r.line) for r in rows)
    assert os.listdir(spill) == [] and all(f.closed for f in ordered.runs)
    assert ordered.describe()["order"] == "prefix"
    spilled = max(0, len(rows) - buffer)
    assert ordered.spilled == spilled and len(ordered.files) <= buckets


@settings(max_examples=40, deadline=None)
@given(d=st.integers(1, 12), q=st.integers(1, 6), errors=st.integers(0, 3), seed=st.integers(0, 10**6),
       buffer=st.sampled_from([1, 3, 7, 1000]))
def test_past_the_first_buffer_each_document_is_one_group(tmp_path_factory, d, q, errors, seed, buffer):
    """Documents x questions, decode-first on: the requests after the first buffer hold each
    document's questions side by side, one group each."""
    rows = docs_workload(d, q, seed, errors)
    out = list(BucketOrder(iter(rows), buffer=buffer, buckets=4, spill_dir=str(tmp_path_factory.mktemp("s"))))
    assert sorted((r.custom_id, r.line) for r in out) == sorted((r.custom_id, r.line) for r in rows)
    head = sum(isinstance(r, Request) for r in rows[:buffer])
    rest = [r for r in out if isinstance(r, Request)][head:]
    assert contiguous([doc_of(r) for r in rest]) and contiguous([r.group for r in out if isinstance(r, Request)])
    assert all((a.group == b.group) == (doc_of(a) == doc_of(b)) for a, b in zip(rest, rest[1:], strict=False))


def test_spill_files_have_no_name_on_disk_so_a_kill_leaves_none(tmp_path):
    rows = docs_workload(10, 5, 1, 0)
    ordered = BucketOrder(iter(rows), buffer=4, buckets=3, spill_dir=str(tmp_path))
    it = iter(ordered)
    first = next(it)  # the first buffer is out; the rest is spilled while it is served
    while not ordered._queue.full():  # the first range is sorted and waits for the consumer
        threading.Event().wait(0.01)
    assert ordered.spilled == len(rows) - 4 and os.listdir(tmp_path) == []  # what SIGKILL now would leave
    assert len([first, *it]) == len(rows) and all(f.closed for f in ordered.runs)


def test_the_first_buffer_leaves_before_the_input_ends():
    """The engines start on the first buffer while the rest is still being read."""
    more = threading.Event()
    rows = docs_workload(8, 5, 3, 0)

    def slow():
        yield from rows[:10]
        # the input goes on only once the first buffer, all of it, was sent
        assert more.wait(30), "the first buffer's last group waited for the rest of the input"
        yield from rows[10:]

    it = iter(BucketOrder(slow(), buffer=10, buckets=4))
    first = [next(it) for _ in range(10)]
    assert sorted(r.line for r in first) == sorted(r.line for r in rows[:10])
    more.set()
    assert len(first + list(it)) == len(rows)


def test_a_consumer_that_stops_early_ends_the_reader_and_closes_the_spill_files(tmp_path):
    ordered = BucketOrder(iter(docs_workload(20, 5, 4, 0)), buffer=5, buckets=4, spill_dir=str(tmp_path))
    it = iter(ordered)
    next(it)
    it.close()
    ordered._thread.join(10)
    assert not ordered._thread.is_alive() and all(f.closed for f in ordered.runs)


@pytest.mark.parametrize("kind, name", [(BucketOrder, "prefix"), (SortedOrder, "sorted")])
def test_a_full_spill_disk_stops_the_run_resumably(tmp_path, monkeypatch, kind, name):
    """Both orders that spill: a full disk is a StorageError (exit 3, the job resumable) naming
    the order, the cause and where to make room."""
    from pipeline.intake import order as module
    from pipeline.storage import StorageError

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(module.pickle, "dump", full)
    with pytest.raises(StorageError, match=f"--order {name}.*No space left on device.*TMPDIR"):
        list(kind(iter(docs_workload(6, 5, 1, 0)), buffer=4, spill_dir=str(tmp_path)))


def test_images_past_the_byte_bound_are_spilled_not_held():
    """Pending batches are spilled once they hold `buffer_bytes` of images, however few."""
    image = "data:image/png;base64," + "A" * 4000
    rows = [Request.chat(f"r{i}", "f.jsonl", i + 1, [{"role": "user", "content": [
        {"type": "text", "text": f"doc {i % 3}"}, {"type": "image_url", "image_url": {"url": image}}]}])
        for i in range(40)]
    ordered = BucketOrder(iter(rows), buffer=1000, buffer_bytes=10_000, buckets=2)
    out = list(ordered)
    assert sorted(r.line for r in out) == list(range(1, 41)) and ordered.spilled > 0


def test_keeps_what_the_full_sort_shares_where_the_look_ahead_cannot():
    """Shuffled documents x questions, 20 documents of 10 questions, buffer 30: the look-ahead
    streams documents apart; the ranges keep all but the first buffer's together."""
    rows = docs_workload(20, 10, seed=1)
    full = reusable_share([prefix_key(r) for r in SortedOrder(iter(rows))], 16)
    stream = reusable_share([prefix_key(r) for r in StreamOrder(iter(rows), buffer=30)], 16)
    ordered = order(iter(rows), "prefix", buffer=30)
    share = reusable_share([prefix_key(r) for r in ordered], 16)
    assert share >= 0.9 * full > stream, (share, full, stream)
    assert ordered.describe()["shared_in_emitted_order"] == round(share, 4)


def test_stream_is_the_bounded_look_ahead():
    rows = docs_workload(4, 3, seed=5)
    streamed = order(iter(rows), "stream", buffer=5)
    assert isinstance(streamed, StreamOrder) and len(list(streamed)) == len(rows)
    assert streamed.describe()["order"] == "stream"


def test_ranges_stay_within_a_quarter_of_the_open_files_limit(monkeypatch):
    from pipeline.intake import order as module

    monkeypatch.setattr(module, "_open_files_limit", lambda: 12)
    rows = docs_workload(10, 3, seed=2)
    ordered = BucketOrder(iter(rows), buffer=10)
    assert len(list(ordered)) == len(rows) and ordered.buckets == 3 and len(ordered.files) <= 3


@pytest.mark.parametrize("how", ["prefix", "sorted", "stream", "input", "auto"])
def test_each_prefix_key_is_hashed_once_order_and_hand_over_together(tmp_path, monkeypatch, how):
    """The order sorts by the key and the cache plan reads it at hand-over: one hashing per
    request (kept on it, through the spill files too); an order that needs none leaves it to the
    hand-over."""
    from pipeline.engines.cache_plan import CachePlan
    from pipeline.intake import order as module

    calls = []
    real = module.chained_digests
    monkeypatch.setattr(module, "chained_digests", lambda *a, **k: calls.append(1) or real(*a, **k))
    rows = docs_workload(12, 5, seed=3, errors=2)
    requests = [r for r in rows if isinstance(r, Request)]
    ordered = order(iter(rows), how, buffer=8, spill_dir=str(tmp_path))
    plan = CachePlan(prefix_key)
    out = []
    for r in ordered:
        if isinstance(r, Request):
            plan.handed(0, r)
            out.append(r)
    assert sorted(r.line for r in out) == sorted(r.line for r in requests)
    assert len(calls) == len(requests)
    assert all(r.prefix == real(module.conversation_text(r).encode()[: module.BLOCK_CHARS * module.MAX_BLOCKS],
                                module.BLOCK_CHARS) for r in out)
    if how in ("prefix", "sorted"):
        assert ordered.runs, "nothing was spilled: the spill files were not tested"
    changed = out[0].with_body(messages=[{"role": "user", "content": "another text"}])
    assert changed.prefix is None and prefix_key(changed) != out[0].prefix  # a changed request: no stale key
