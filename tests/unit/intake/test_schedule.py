"""Prefix-aware order (schedule.py): every item exactly once, error rows first, requests sharing a
prefix side by side at every depth (a trie's order), the same with runs spilled to disk; the
dispatcher keeps a prefix group on one engine; a run changes nothing but the order."""

import json
import os
import random

import pyarrow.parquet as pq
import pytest
from conftest import invoke
from hypothesis import given, settings
from hypothesis import strategies as st
from test_dispatcher import MemoryPool

from pipeline.engines.dispatcher import Dispatcher
from pipeline.intake.order import AUTO_GAIN, BLOCK_CHARS, DIGEST, PrefixOrder, order, prefix_key
from pipeline.models.prefix import shared_blocks
from pipeline.records import FailedRequest, Request

DOC = "".join(chr(ord("a") + i % 26) for i in range(3 * BLOCK_CHARS))


def ask(line, doc, question, system="You answer questions about documents."):
    return Request(f"q{line}", "f.jsonl", line, [
        {"role": "system", "content": system},
        {"role": "user", "content": f"Document {doc}: {DOC}{doc}{DOC}\n\nQuestion {question}?"}])


def docs_workload(d, q, seed=0, errors=0):
    rows = [ask(0, doc, question) for doc in range(d) for question in range(q)]
    rows += [FailedRequest(f"e{i}", "f.jsonl", 0, "invalid_json", "bad") for i in range(errors)]
    random.Random(seed).shuffle(rows)
    return [(r.__class__(**{**_fields(r), "line": i + 1})) for i, r in enumerate(rows)]


def _fields(r):
    return {k: getattr(r, k) for k in r.__dataclass_fields__}


def doc_of(r):
    return r.messages[1]["content"].split(":")[0]


def contiguous(seq):
    """Every value occupies one run of consecutive positions."""
    seen, last = set(), None
    for v in seq:
        if v != last and v in seen:
            return False
        seen.add(v)
        last = v
    return True


@settings(max_examples=30, deadline=None)
@given(d=st.integers(1, 12), q=st.integers(1, 6), errors=st.integers(0, 3), seed=st.integers(0, 10**6),
       buffer=st.sampled_from([1, 2, 5, 1000]))
def test_every_item_once_errors_first_documents_together(tmp_path_factory, d, q, errors, seed, buffer):
    rows = docs_workload(d, q, seed, errors)
    spill = tmp_path_factory.mktemp("spill")
    out = list(PrefixOrder(iter(rows), buffer=buffer, spill_dir=str(spill)))
    assert sorted((r.custom_id, r.line) for r in out) == sorted((r.custom_id, r.line) for r in rows)
    assert all(isinstance(r, FailedRequest) for r in out[:errors])
    requests = out[errors:]
    assert contiguous([doc_of(r) for r in requests])
    # the same document: the same group, so one engine gets it
    assert all((a.group == b.group) == (doc_of(a) == doc_of(b)) for a, b in zip(requests, requests[1:], strict=False))
    assert os.listdir(spill) == []  # spilled runs are removed once read


def test_spilled_runs_have_no_name_on_disk_so_a_kill_leaves_none(tmp_path):
    rows = docs_workload(6, 5, 1, 0)
    ordered = PrefixOrder(iter(rows), buffer=4, spill_dir=str(tmp_path))
    ordered._thread.join()
    assert len(ordered.runs) > 2 and os.listdir(tmp_path) == []  # what SIGKILL now would leave
    assert len(list(ordered)) == len(rows)


def test_a_full_spill_disk_stops_the_run_resumably(tmp_path, monkeypatch):
    from pipeline.intake import order
    from pipeline.storage import StorageError

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(order.pickle, "dump", full)
    with pytest.raises(StorageError, match="No space left on device.*TMPDIR"):
        list(PrefixOrder(iter(docs_workload(6, 5, 1, 0)), buffer=4, spill_dir=str(tmp_path)))


texts = st.text(alphabet="ab", min_size=0, max_size=6).map(lambda s: "".join(c * BLOCK_CHARS for c in s))


@settings(max_examples=50, deadline=None)
@given(st.lists(texts, min_size=1, max_size=40), st.sampled_from([3, 1000]))
def test_sorted_keys_are_a_trie_walk(tmp_path_factory, contents, buffer):
    """Requests sharing k blocks are never separated by one sharing fewer, so the blocks computed
    in this order (each request's minus what it shares with the one before) are exactly the
    distinct prefixes: the least any order computes."""
    rows = [Request(f"r{i}", "f.jsonl", i + 1, [{"role": "user", "content": c}]) for i, c in enumerate(contents)]
    out = list(PrefixOrder(iter(rows), buffer=buffer, spill_dir=str(tmp_path_factory.mktemp("spill"))))
    keys = [prefix_key(r) for r in out]
    distinct = {k[: (i + 1) * DIGEST] for k in keys for i in range(len(k) // DIGEST)}
    computed = sum(len(k) // DIGEST - (shared_blocks(p, k) if p is not None else 0)
                   for p, k in zip([None, *keys], keys, strict=False))
    assert computed == len(distinct)


def test_input_order_is_the_input():
    rows = docs_workload(3, 3)
    assert list(order(iter(rows), "input")) == rows


def test_an_error_while_reading_reaches_the_consumer():
    def broken():
        yield ask(1, 1, 1)
        raise OSError("storage went away")

    ordered = PrefixOrder(broken())
    try:
        list(ordered)
    except OSError as e:
        assert "storage went away" in str(e)
    else:
        raise AssertionError("the error was swallowed")


def test_dispatcher_keeps_each_prefix_group_on_one_engine():
    rows = list(PrefixOrder(iter(docs_workload(40, 5, seed=3))))
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
    for how in ("prefix", "input", "auto"):
        out = tmp_path / how
        res = invoke("run", str(src), "-o", str(out), "--engine", "fake", "-m", "m", "-q", "--order", how,
                  "--order-buffer", "5", "--checkpoint-every", "7")
        assert res.exit_code == 0, res.output
        t = pq.read_table(out).sort_by("source_line").select(
            ["custom_id", "source_line", "prompt_tokens", "completion_tokens", "error"]).to_pylist()
        tables[how] = t
        assert json.loads((out / "_report.json").read_text())["order"] == ("prefix" if how == "auto" else how)
    assert tables["prefix"] == tables["input"] == tables["auto"] and len(tables["prefix"]) == 25


def test_estimate_counts_each_shared_block_once(tmp_path):
    """estimate's computed prompt tokens = every distinct whole 16-token block of the prompts once,
    plus each prompt's partial last block: the work a run in prefix order leaves to the engine."""
    from pipeline.models.tokens import PromptCounter

    rows = docs_workload(5, 4, seed=9)
    src = tmp_path / "docs.jsonl"
    src.write_text("".join(json.dumps({"custom_id": f"c{r.line}", "body": {"messages": r.messages}}) + "\n"
                           for r in rows))
    res = invoke("estimate", src, "-m", "smollm2", "--json", "--workers", "1", "--order-buffer", "7",
                 "--block-size", "16")
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
    docs = [" ".join(rnd.choice(words) for _ in range(450)) for _ in range(12)]
    pairs = [(d, q) for d in range(12) for q in range(3)]
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
        # 24 blocks of 128 tokens hold about 4 of the 12 documents
        res = invoke("run", src, "-o", tmp_path / how, "-m", "smollm2", "-q", "--order", how, "--max-model-len",
                     "2048", "--enable-prefix-caching", "--engine-arg", "num_gpu_blocks_override=24")
        assert res.exit_code == 0, res.output
        t = pq.read_table(tmp_path / how, schema=None).sort_by("custom_id")
        cached[how] = sum(t["cached_tokens"].to_pylist())
        assert t["custom_id"].to_pylist() == sorted(f"d{d}q{q}" for d, q in pairs)
        assert sum(t["prompt_tokens"].to_pylist()) == predicted["prompt_tokens"]
        assert all(e is None for e in t["error"].to_pylist())
    reuse = predicted["prompt_tokens"] - predicted["prompt_tokens_computed"]
    assert cached["prefix"] >= 0.9 * reuse and cached["prefix"] > 1.5 * cached["input"], (cached, reuse)


@pytest.mark.parametrize("buffer", [4, 1000])
def test_auto_groups_shared_documents_and_streams_the_rest(tmp_path, buffer):
    """auto decides on the first buffer: shuffled documents x questions go in prefix order; rows
    that share nothing go in the input's order, every item once, the rest streamed as read."""
    docs = docs_workload(6, 4, seed=2)
    ordered = PrefixOrder(iter(docs), buffer=buffer, auto=True, spill_dir=str(tmp_path))
    out = list(ordered)
    assert ordered.chosen == "prefix" and sorted(r.line for r in out) == sorted(r.line for r in docs)
    measured = ordered.describe()["order_auto"]
    assert contiguous([doc_of(r) for r in out])
    assert measured["shared_in_prefix_order"] >= measured["shared_in_input_order"] + AUTO_GAIN

    rows = [Request(f"r{i}", "f.jsonl", i + 1, [{"role": "user", "content": f"{i} " + "x" * 600}]) for i in range(30)]
    consumed = []

    def source():
        for r in rows:
            consumed.append(r.line)
            yield r

    ordered = PrefixOrder(source(), buffer=buffer, auto=True)
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
    rows = [Request(f"r{i}", "f.jsonl", i + 1, [{"role": "user", "content": heads[i % 2] * 5 + f"item {i}"}])
            for i in range(40)]  # about 430 characters: under one CPU block (128 tokens), several GPU blocks
    ordered = PrefixOrder(iter(rows), buffer=40, auto=True, kv_block_tokens=kv_block_tokens)
    out = list(ordered)
    assert ordered.chosen == chosen and sorted(r.line for r in out) == list(range(1, 41))
    measured = ordered.describe()["order_auto"]
    assert measured["kv_block_tokens"] == kv_block_tokens
    if chosen == "input":
        assert measured["shared_in_prefix_order"] == measured["shared_in_input_order"] == 0
