"""Issue 32: identical sampled prompts go to the engines as one request with `n`, and the answer
is split back into each row's own choices (engines/sampled.py). Property: whatever the stream,
window and cap, every request gets exactly one answer with its own n choices, drawn for its own
body; what is merged has one body apart from n; the merged n never passes the cap."""

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.engines.base import Result
from pipeline.engines.bodies import body_key
from pipeline.engines.sampled import SampledOnce, mergeable
from pipeline.records import Problem, Request


class NDispatcher:
    """Answers each request with n choices, choice i saying which request and draw it is (its
    tokens: i + 1); pulls `batch` requests before answering them, a tick (None) between batches."""

    def __init__(self, batch: int = 4, fail: str | None = None):
        self.batch, self.fail, self.sent = batch, fail, []

    def results(self, requests):
        source = iter(requests)
        while taken := [r for _, r in zip(range(self.batch), source, strict=False)]:
            self.sent += taken
            yield None
            for seq, r in enumerate(taken):
                if r.custom_id == self.fail:
                    yield r, Result(seq, error=Problem("engine_crash", "died"), prompt_tokens=5)
                    continue
                choices = [{"index": i, "text": r.messages[0]["content"], "draw": (r.custom_id, i)} for i in range(r.n)]
                yield r, Result(seq, choices, prompt_tokens=5, completion_tokens=sum(range(1, r.n + 1)),
                                cached_tokens=2, choice_tokens=list(range(1, r.n + 1)), warnings=("w",))


def request(i: int, text: str, n: int = 1, temperature=0.8, seed=None, endpoint="chat") -> Request:
    params = {
        k: v
        for k, v in (("temperature", temperature), ("seed", seed), ("n", n))
        if v is not None and (k, v) != ("n", 1)
    }
    return Request.chat(f"id{i}", "f", i + 1, [{"role": "user", "content": text}], params=params, endpoint=endpoint)


BODIES = st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(1, 4), st.sampled_from([0.8, 0.8, None, 0]))


@settings(max_examples=200, deadline=None)
@given(st.lists(BODIES, max_size=50), st.integers(1, 6), st.integers(1, 12), st.integers(2, 9))
def test_every_row_gets_its_own_n_choices_once(bodies, batch, window, max_n):
    reqs = [request(i, *b) for i, b in enumerate(bodies)]
    dispatcher = NDispatcher(batch)
    sampled = SampledOnce(window=window, max_n=max_n)
    got = [done for done in sampled.results(dispatcher, reqs) if done is not None]
    assert Counter(r.custom_id for r, _ in got) == Counter(r.custom_id for r in reqs)  # each once
    draws = Counter()
    for r, res in got:
        assert len(res.choices) == r.n and [c["index"] for c in res.choices] == list(range(r.n))
        assert all(c["text"] == r.messages[0]["content"] for c in res.choices)  # its own body's
        assert res.completion_tokens == sum(res.choice_tokens) and res.prompt_tokens == 5  # billed per row
        draws.update(c["draw"] for c in res.choices)
    assert set(draws.values()) <= {1}  # no choice given to two rows
    merged = [r for r in dispatcher.sent if not any(r is q for q in reqs)]
    assert all(r.n <= max_n for r in merged) and len(merged) == sampled.requests
    assert len(dispatcher.sent) + sampled.rows - sampled.requests == len(reqs)
    if window >= len(reqs):  # nothing pushed out: a body is split only where the cap made it
        by_body = Counter(body_key(r, without=("n",)) for r in dispatcher.sent if mergeable(r, max_n)
                          or any(r is m for m in merged))
        assert by_body == packed(reqs, max_n)
    assert sampled.held == 0 and not sampled.sent


def packed(reqs, max_n):
    """Requests per body when copies are packed in order, each request's n at most max_n."""
    count, filled = Counter(), Counter()
    for r in filter(lambda r: mergeable(r, max_n), reqs):
        key = body_key(r, without=("n",))
        if filled[key] + r.n > max_n:
            count[key], filled[key] = count[key] + 1, 0
        filled[key] += r.n
        if filled[key] == max_n:
            count[key], filled[key] = count[key] + 1, 0
    return count + Counter(key for key, n in filled.items() if n)


def test_four_sampled_copies_go_as_one_request_with_n_4_and_split_back():
    reqs = [request(i, "q") for i in range(4)] + [request(4, "q", temperature=0), request(5, "q", seed=3)]
    dispatcher = NDispatcher(batch=10)
    sampled = SampledOnce()
    got = dict((r.custom_id, res) for r, res in filter(None, sampled.results(dispatcher, reqs)))
    assert [(r.custom_id, r.n) for r in dispatcher.sent] == [("id4", 1), ("id5", 1), ("id0", 4)]
    assert [got[f"id{i}"].choices[0]["draw"] for i in range(4)] == [("id0", i) for i in range(4)]
    assert [got[f"id{i}"].completion_tokens for i in range(4)] == [1, 2, 3, 4]  # each its own choice's
    assert all(got[f"id{i}"].prompt_tokens == 5 and got[f"id{i}"].cached_tokens == 2 for i in range(4))
    assert sampled.describe() == {"sampled_rows_merged": 4, "sampled_merged_requests": 1,
                                  "sampled_prompt_tokens_sent_once": 15}


def test_rows_with_their_own_n_keep_them_and_the_cap_starts_a_new_request():
    reqs = [request(0, "q", n=2), request(1, "q", n=3), request(2, "q", n=2), request(3, "q")]
    dispatcher = NDispatcher(batch=10)
    got = dict((r.custom_id, res) for r, res in filter(None, SampledOnce(max_n=5).results(dispatcher, reqs)))
    assert [r.n for r in dispatcher.sent] == [5, 3]  # id0+id1 full at 5; id2+id3 at the end
    assert [c["draw"] for c in got["id1"].choices] == [("id0", 2), ("id0", 3), ("id0", 4)]
    assert [c["draw"] for c in got["id3"].choices] == [("id2", 2)]


def test_an_engine_error_is_every_member_rows_error():
    reqs = [request(i, "q") for i in range(3)] + [request(3, "other")]
    got = list(filter(None, SampledOnce().results(NDispatcher(fail="id0"), reqs)))
    errors = {r.custom_id: res.error for r, res in got}
    assert errors["id3"] is None and {errors[f"id{i}"].code for i in range(3)} == {"engine_crash"}


def test_too_few_choices_from_the_engine_is_an_error_on_every_member():
    class Short(NDispatcher):
        def results(self, requests):
            for done in super().results(requests):
                yield done if done is None else (done[0], Result(0, done[1].choices[:1], 5, 1))

    got = list(filter(None, SampledOnce().results(Short(), [request(i, "q") for i in range(2)])))
    assert [res.error.code for _, res in got] == ["output_error", "output_error"]


def test_off_sends_each_row_and_the_window_bounds_what_waits():
    reqs = [request(i, "q" if i % 2 == 0 else f"u{i}") for i in range(8)]  # q at 0, 2, 4, 6
    off = NDispatcher(batch=100)
    list(SampledOnce(False).results(off, reqs))
    assert off.sent == reqs
    narrow = NDispatcher(batch=100)
    sampled = SampledOnce(window=1)
    list(sampled.results(narrow, reqs))
    assert sampled.rows == 0 and len(narrow.sent) == 8  # copies two apart: pushed out before the next
    wide = NDispatcher(batch=100)
    list(SampledOnce(window=2).results(wide, reqs))
    assert [r.n for r in wide.sent if r.messages[0]["content"] == "q"] == [2, 2]


def test_what_is_never_merged():
    assert not mergeable(request(0, "q", temperature=0)) and not mergeable(request(0, "q", seed=1))
    assert not mergeable(request(0, "q", endpoint="embeddings"))
    assert not mergeable(request(0, "q", n=32))  # already at the cap
    assert mergeable(request(0, "q", temperature=None)) and mergeable(request(0, "q", endpoint="completions"))


def test_images_held_back_are_bounded_in_bytes():
    """Sampled image rows wait for copies in bounded memory: past `window_bytes` of image data
    the oldest group is sent, whatever the count window allows."""
    from pipeline.engines.sampled import SampledOnce

    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 4000}}
    rows = [Request.chat(f"i{k}", "f.jsonl", k + 1, [{"role": "user", "content": [
        {"type": "text", "text": f"describe {k}"}, image]}]) for k in range(10)]
    once = SampledOnce(window=1000, window_bytes=10_000)
    released = []
    for out in once._merged(iter(rows)):
        released.append((out.custom_id, once.held))
    assert [cid for cid, _ in released] == [r.custom_id for r in rows]
    assert max(held for _, held in released[:-3]) <= 3  # about 10,000 bytes of 4,000-byte images wait
    assert once.held_bytes == 0
