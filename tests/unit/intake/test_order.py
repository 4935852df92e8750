"""Prefix-aware order (intake/order.py): every item exactly once, error rows first; sorted: requests
sharing a prefix side by side at every depth (a trie's order), the same with runs spilled to disk;
prefix: the same within a bounded look-ahead, the first request before the input ends, groups
contiguous; decode-heavy first within a group; the dispatcher keeps a prefix group on one engine;
a run changes nothing but the order."""

import itertools
import json
import os
import random
import time
from dataclasses import replace

import pyarrow.parquet as pq
import pytest
from conftest import contiguous, invoke, until_the_reader_waits
from hypothesis import given, settings
from hypothesis import strategies as st
from test_dispatcher import MemoryPool

from pipeline.engines.dispatcher import Dispatcher
from pipeline.intake.order import (
    AUTO_GAIN,
    BLOCK_CHARS,
    DIGEST,
    GROUP_SPAN,
    BucketOrder,
    SortedOrder,
    StreamOrder,
    order,
    prefix_key,
    reusable_share,
)
from pipeline.models.prefix import shared_blocks
from pipeline.records import FailedRequest, Request

DOC = "".join(chr(ord("a") + i % 26) for i in range(3 * BLOCK_CHARS))


def ask(line, doc, question, system="You answer questions about documents."):
    return Request.chat(f"q{line}", "f.jsonl", line, [
        {"role": "system", "content": system},
        {"role": "user", "content": f"Document {doc}: {DOC}{doc}{DOC}\n\nQuestion {question}?"}])


def docs_workload(d, q, seed=0, errors=0):
    rows = [ask(0, doc, question) for doc in range(d) for question in range(q)]
    rows += [FailedRequest(f"e{i}", "f.jsonl", 0, "invalid_json", "bad") for i in range(errors)]
    random.Random(seed).shuffle(rows)
    return [replace(r, line=i + 1) for i, r in enumerate(rows)]


def doc_of(r):
    return r.messages[1]["content"].split(":")[0]


@settings(max_examples=30, deadline=None)
@given(d=st.integers(1, 12), q=st.integers(1, 6), errors=st.integers(0, 3), seed=st.integers(0, 10**6),
       buffer=st.sampled_from([1, 2, 5, 1000]))
def test_every_item_once_errors_first_documents_together(tmp_path_factory, d, q, errors, seed, buffer):
    rows = docs_workload(d, q, seed, errors)
    spill = tmp_path_factory.mktemp("spill")
    out = list(SortedOrder(iter(rows), buffer=buffer, spill_dir=str(spill)))
    assert sorted((r.custom_id, r.line) for r in out) == sorted((r.custom_id, r.line) for r in rows)
    assert all(isinstance(r, FailedRequest) for r in out[:errors])
    requests = out[errors:]
    assert contiguous([doc_of(r) for r in requests])
    # the same document: the same group, so one engine gets it
    assert all((a.group == b.group) == (doc_of(a) == doc_of(b)) for a, b in zip(requests, requests[1:], strict=False))
    assert os.listdir(spill) == []  # spilled runs are removed once read


def test_spilled_runs_have_no_name_on_disk_so_a_kill_leaves_none(tmp_path):
    rows = docs_workload(6, 5, 1, 0)
    ordered = SortedOrder(iter(rows), buffer=4, spill_dir=str(tmp_path))
    while not ordered._queue.full():  # every run spilled and the merge handed over
        time.sleep(0.01)
    assert len(ordered.runs) > 2 and os.listdir(tmp_path) == []  # what SIGKILL now would leave
    assert len(list(ordered)) == len(rows)


texts = st.text(alphabet="ab", min_size=0, max_size=6).map(lambda s: "".join(c * BLOCK_CHARS for c in s))


@settings(max_examples=50, deadline=None)
@given(st.lists(texts, min_size=1, max_size=40), st.sampled_from([3, 1000]))
def test_sorted_keys_are_a_trie_walk(tmp_path_factory, contents, buffer):
    """Requests sharing k blocks are never separated by one sharing fewer, so the blocks computed
    in this order (each request's minus what it shares with the one before) are exactly the
    distinct prefixes: the least any order computes."""
    rows = [Request.chat(f"r{i}", "f.jsonl", i + 1, [{"role": "user", "content": c}]) for i, c in enumerate(contents)]
    out = list(SortedOrder(iter(rows), buffer=buffer, spill_dir=str(tmp_path_factory.mktemp("spill"))))
    keys = [prefix_key(r) for r in out]
    distinct = {k[: (i + 1) * DIGEST] for k in keys for i in range(len(k) // DIGEST)}
    computed = sum(len(k) // DIGEST - (shared_blocks(p, k) if p is not None else 0)
                   for p, k in zip([None, *keys], keys, strict=False))
    assert computed == len(distinct)


def test_input_order_is_the_input():
    rows = docs_workload(3, 3)
    assert list(order(iter(rows), "input")) == rows


@pytest.mark.parametrize("how", ["prefix", "sorted", "auto"])
def test_an_error_while_reading_reaches_the_consumer(how):
    def broken():
        yield ask(1, 1, 1)
        raise OSError("storage went away")

    ordered = order(broken(), how)
    try:
        list(ordered)
    except OSError as e:
        assert "storage went away" in str(e)
    else:
        raise AssertionError("the error was swallowed")


def test_dispatcher_keeps_each_prefix_group_on_one_engine():
    rows = list(order(iter(docs_workload(40, 5, seed=3)), "prefix"))
    pool = MemoryPool(size=2)
    out = [x for x in Dispatcher(pool, window=8, chunk=3).results(iter(rows)) if x is not None]
    assert sorted(r.line for r, _ in out) == sorted(r.line for r in rows)
    engines = {}
    for r, res in out:
        engines.setdefault(r.group, set()).add(res.engine)
    assert all(len(e) == 1 for e in engines.values()) and {0, 1} <= set().union(*engines.values())
    assert max(pool.max_held) <= 16  # a group may take an engine past its window, never past twice


def test_run_output_is_the_same_in_either_order(tmp_path):
    src = tmp_path / "in.jsonl"
    with open(src, "w") as f:
        for r in docs_workload(6, 4, seed=5, errors=0):
            f.write(json.dumps({"custom_id": r.custom_id + str(r.line), "body": {"messages": r.messages}}) + "\n")
        f.write("not json\n")
    tables = {}
    for how in ("prefix", "sorted", "input", "auto"):
        out = tmp_path / how
        res = invoke("run", str(src), "-o", str(out), "--engine", "fake", "-m", "m", "-q", "--order", how,
                  "--order-buffer", "5", "--checkpoint-every", "7")
        assert res.exit_code == 0, res.output
        t = pq.read_table(out).sort_by("source_line").select(
            ["custom_id", "source_line", "prompt_tokens", "completion_tokens", "error"]).to_pylist()
        tables[how] = t
        assert json.loads((out / "_report.json").read_text())["order"] == ("prefix" if how == "auto" else how)
    assert tables["prefix"] == tables["sorted"] == tables["input"] == tables["auto"] and len(tables["prefix"]) == 25


def test_estimate_counts_each_shared_block_once(tmp_path):
    """estimate's computed prompt tokens = every distinct whole 16-token block of the prompts once,
    plus each prompt's partial last block: the work a run in sorted order leaves to the engine."""
    from pipeline.models.tokens import PromptCounter

    rows = docs_workload(5, 4, seed=9)
    src = tmp_path / "docs.jsonl"
    src.write_text("".join(json.dumps({"custom_id": f"c{r.line}", "body": {"messages": r.messages}}) + "\n"
                           for r in rows))
    res = invoke("estimate", src, "-m", "smollm2", "--json", "--workers", "1", "--order", "sorted",
                 "--order-buffer", "7", "--block-size", "16")
    assert res.exit_code == 0, res.output
    r = json.loads(res.stdout)
    counter = PromptCounter("smollm2")
    ids = [counter.token_ids(req) for req in rows]
    blocks = {tuple(i[:end]) for i in ids for end in range(16, len(i) + 1, 16)}
    assert r["prompt_tokens"] == sum(map(len, ids))
    assert r["prompt_tokens_computed"] == 16 * len(blocks) + sum(len(i) % 16 for i in ids)
    assert r["prompt_tokens_computed"] < r["prompt_tokens"] / 3  # four questions per document


@pytest.mark.engine
def test_real_engine_prefix_order_serves_what_estimate_predicts(tmp_path):
    """A shuffled documents x questions file whose documents do not all fit in a small KV cache:
    in prefix order the engine serves from cache about what estimate predicts, far more than in
    the input's order; rows, ids and prompt tokens are the same either way."""
    rnd = random.Random(1)
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi".split()
    docs = [" ".join(rnd.choice(words) for _ in range(170)) for _ in range(8)]
    pairs = [(d, q) for d in range(8) for q in range(3)]
    rnd.shuffle(pairs)
    src = tmp_path / "docs.jsonl"
    src.write_text("".join(json.dumps({"custom_id": f"d{d}q{q}", "body": {
        "max_tokens": 4, "temperature": 0, "messages": [
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": f"Document {d}:\n{docs[d]}\n\nQuestion {q}: which word comes first?"}]}})
        + "\n" for d, q in pairs))
    est = invoke("estimate", src, "-m", "smollm2", "--block-size", "128", "--json", "--workers", "1")
    predicted = json.loads(est.stdout)
    cached = {}
    for how in ("prefix", "input"):
        # 9 blocks of 128 tokens hold about 3 of the 8 documents
        res = invoke("run", src, "-o", tmp_path / how, "-m", "smollm2", "-q", "--order", how, "--max-model-len",
                     "1024", "--enable-prefix-caching", "--engine-arg", "num_gpu_blocks_override=9")
        assert res.exit_code == 0, res.output
        t = pq.read_table(tmp_path / how, schema=None).sort_by("custom_id")
        cached[how] = sum(t["cached_tokens"].to_pylist())
        assert t["custom_id"].to_pylist() == sorted(f"d{d}q{q}" for d, q in pairs)
        assert sum(t["prompt_tokens"].to_pylist()) == predicted["prompt_tokens"]
        assert all(e is None for e in t["error"].to_pylist())
    reuse = predicted["prompt_tokens"] - predicted["prompt_tokens_computed"]
    print(f"\nreusable {reuse}, cached: {cached}")
    assert cached["prefix"] >= 0.9 * reuse and cached["prefix"] > 1.5 * cached["input"], (cached, reuse)


@pytest.mark.parametrize("buffer", [4, 1000])
def test_auto_groups_shared_documents_and_streams_the_rest(tmp_path, buffer):
    """auto decides on the first buffer: shuffled documents x questions go in prefix order; rows
    that share nothing go in the input's order, every item once, the rest streamed as read."""
    docs = docs_workload(6, 4, seed=2)
    ordered = BucketOrder(iter(docs), buffer=buffer, auto=True)
    out = list(ordered)
    assert ordered.chosen == "prefix" and sorted(r.line for r in out) == sorted(r.line for r in docs)
    measured = ordered.describe()["order_auto"]
    assert contiguous([r.group for r in out]) and (buffer < len(docs) or contiguous([doc_of(r) for r in out]))
    assert measured["shared_in_prefix_order"] >= measured["shared_in_input_order"] + AUTO_GAIN

    rows = [Request.chat(f"r{i}", "f.jsonl", i + 1, [{"role": "user", "content": f"{i} " + "x" * 600}])
            for i in range(30)]
    consumed = []

    def source():
        for r in rows:
            consumed.append(r.line)
            yield r

    ordered = BucketOrder(source(), buffer=buffer, auto=True)
    out = iter(ordered)
    first = next(out)
    assert ordered.chosen == "input" and first is rows[0]
    assert len(consumed) == min(buffer, 30)  # read no further than the first buffer before the first request
    assert [first, *out] == rows and ordered.describe() == {"order": "input", "order_auto": ordered.measured}


@pytest.mark.parametrize(("kv_block_tokens", "chosen"), [(128, "input"), (16, "prefix")])
def test_auto_decides_on_whole_kv_blocks_not_shared_text(kv_block_tokens, chosen):
    """Prompts that share most of their text but are shorter than one KV block can reuse nothing:
    auto keeps the input's order; with blocks small enough to hold the shared part, prefix order."""
    heads = ["Translate this sentence into French and answer with the translation only, please: ",
             "Classify the sentiment of this product review as positive or negative, one word: "]
    rows = [Request.chat(f"r{i}", "f.jsonl", i + 1, [{"role": "user", "content": heads[i % 2] * 5 + f"item {i}"}])
            for i in range(40)]  # about 430 characters: under one CPU block (128 tokens), several GPU blocks
    ordered = BucketOrder(iter(rows), buffer=40, auto=True, kv_block_tokens=kv_block_tokens)
    out = list(ordered)
    assert ordered.chosen == chosen and sorted(r.line for r in out) == list(range(1, 41))
    measured = ordered.describe()["order_auto"]
    assert measured["kv_block_tokens"] == kv_block_tokens
    if chosen == "input":
        assert measured["shared_in_prefix_order"] == measured["shared_in_input_order"] == 0


def shuffled(contents, max_tokens, errors, seed):
    rows = [Request.chat(f"r{i}", "f.jsonl", i + 1, [{"role": "user", "content": c}],
                    params={} if m is None else {"max_tokens": m})
            for i, (c, m) in enumerate(zip(contents, max_tokens, strict=False))]
    rows += [FailedRequest(f"e{i}", "f.jsonl", 0, "invalid_json", "bad") for i in range(errors)]
    random.Random(seed).shuffle(rows)
    return rows


@settings(max_examples=80, deadline=None)
@given(contents=st.lists(texts, min_size=0, max_size=60), errors=st.integers(0, 4), seed=st.integers(0, 10**6),
       buffer=st.integers(1, 70), hold_back=st.sampled_from([0, 0.3, 0.5, 0.9]), decode_first=st.booleans(),
       max_tokens=st.lists(st.one_of(st.none(), st.integers(1, 50)), min_size=60, max_size=60))
def test_stream_order_sends_every_item_once_groups_contiguous(contents, errors, seed, buffer, hold_back,
                                                               decode_first, max_tokens):
    """Any input, any look-ahead: a permutation of the input (error rows included), each group one
    contiguous run, and within a group the longest possible decodes first."""
    rows = shuffled(contents, max_tokens, errors, seed)
    out = list(StreamOrder(iter(rows), buffer=buffer, hold_back=hold_back, decode_first=decode_first))
    assert sorted(map(id, out)) == sorted(map(id, rows))
    requests = [r for r in out if isinstance(r, Request)]
    assert contiguous([r.group for r in requests]) and all(r.group > 0 for r in requests)
    if decode_first:
        for _, members in itertools.groupby(requests, key=lambda r: r.group):
            budgets = [r.max_tokens or 10**9 for r in members]
            assert len(budgets) > GROUP_SPAN or budgets == sorted(budgets, reverse=True)


@settings(max_examples=30, deadline=None)
@given(contents=st.lists(texts, min_size=1, max_size=40), seed=st.integers(0, 10**6))
def test_stream_order_with_room_for_the_whole_input_is_the_sorted_order(tmp_path_factory, contents, seed):
    rows = shuffled(contents, [None] * 40, 2, seed)
    streamed = list(StreamOrder(iter(rows), buffer=100, decode_first=False))
    full = list(SortedOrder(iter(rows), buffer=7, spill_dir=str(tmp_path_factory.mktemp("spill")), decode_first=False))
    assert [(r.custom_id, r.line) for r in streamed] == [(r.custom_id, r.line) for r in full]  # spilled: copies


def test_the_first_request_leaves_before_an_endless_input_ends():
    """Prefix order streams: the first request is sent after one buffer of an input that never
    ends, and reading stays within a few buffers of what was sent."""
    read = itertools.count()

    def endless():
        for i in read:
            yield ask(i + 1, i % 7, i)

    ordered = StreamOrder(endless(), buffer=50)
    it = iter(ordered)
    first = [next(it) for _ in range(60)]
    until_the_reader_waits(ordered)  # it has run ahead as far as it may
    assert len({r.line for r in first}) == 60 and next(read) < 60 + 4 * 50
    it.close()
    ordered._thread.join(10)
    assert not ordered._thread.is_alive()  # the reader stops once the consumer does


def test_holding_back_the_least_filled_groups_keeps_more_prefixes_together():
    """A shuffled documents x questions file read through a look-ahead of 30 requests: sending the
    largest groups and keeping the others for the next requests shares more than sorted windows,
    and the whole sort shares most. The report gives the share in the order emitted."""
    rows = docs_workload(20, 10, seed=1)
    shares = {}
    for hold in (0, 0.5):
        ordered = StreamOrder(iter(rows), buffer=30, hold_back=hold)
        shares[hold] = reusable_share([prefix_key(r) for r in ordered], 16)
        assert ordered.describe()["shared_in_emitted_order"] == round(shares[hold], 4)
    full = reusable_share([prefix_key(r) for r in SortedOrder(iter(rows))], 16)
    assert shares[0] < shares[0.5] < full, (shares, full)


def test_decode_first_changes_only_the_order_within_a_group():
    rows = [Request.chat(f"q{d}-{m}", "f.jsonl", i + 1, [{"role": "user", "content": f"{d}" * 600 + f"question {m}"}],
                    params={"max_tokens": m}) for i, (d, m) in enumerate([(1, 5), (2, 50), (1, 80), (2, 7), (1, 20)])]
    out = [r.custom_id for r in order(iter(rows), "prefix")]
    assert out == ["q1-80", "q1-20", "q1-5", "q2-50", "q2-7"]
    out = [r.custom_id for r in order(iter(rows), "prefix", decode_first=False)]
    assert out == [r.custom_id for r in sorted(rows, key=prefix_key)] and set(out[:3]) == {"q1-5", "q1-80", "q1-20"}
