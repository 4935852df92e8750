"""Issue 32: identical determined requests are generated once (engines/identical.py). Property:
whatever the stream, every request gets exactly one answer, each the answer its own body would
get, and the engines see each determined body at most once while it is remembered."""

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.engines.base import Result
from pipeline.engines.identical import Identical, body_key, determined
from pipeline.engines.sampled import SampledOnce
from pipeline.records import Request


class FakeDispatcher:
    """Answers every request with its body's text; pulls `batch` requests before answering them,
    and says None (a tick) between batches."""

    def __init__(self, batch: int):
        self.batch, self.sent = batch, []

    def results(self, requests):
        source = iter(requests)
        while True:
            taken = [r for _, r in zip(range(self.batch), source, strict=False)]
            if not taken:
                return
            self.sent += taken
            yield None
            for i, r in enumerate(taken):
                choices = [{"text": r.messages[0]["content"]} for _ in range(r.n)]
                yield r, Result(i, choices, prompt_tokens=7, completion_tokens=3 * r.n)


def request(i: int, text: str, temperature=None, seed=None) -> Request:
    params = {k: v for k, v in (("temperature", temperature), ("seed", seed)) if v is not None}
    return Request.chat(f"id{i}", "f", i + 1, [{"role": "user", "content": text}], params=params)


BODIES = st.tuples(st.sampled_from(["a", "b", "c", "d"]), st.sampled_from([None, 0, 0.7]), st.sampled_from([None, 1]))


@settings(max_examples=200, deadline=None)
@given(st.lists(BODIES, max_size=60), st.integers(1, 8), st.integers(1, 70), st.booleans())
def test_every_request_gets_its_own_body_answer_once(bodies, batch, window, enabled):
    reqs = [request(i, *b) for i, b in enumerate(bodies)]
    dispatcher = FakeDispatcher(batch)
    identical = Identical(enabled, window=window)
    got = [done for done in identical.results(dispatcher, reqs) if done is not None]
    assert Counter(r.custom_id for r, _ in got) == Counter(r.custom_id for r in reqs)  # each once
    assert all(res.choices[0]["text"] == r.messages[0]["content"] for r, res in got)
    sent = Counter(body_key(r) for r in dispatcher.sent if determined(r))
    if enabled and window >= len(reqs):  # nothing forgotten: each determined body sent once
        assert set(sent.values()) <= {1}
    merged = identical.sampled  # identical sampled requests went as one request with n (test_sampled_merge.py)
    assert len(dispatcher.sent) + identical.rows + merged.rows - merged.requests == len(reqs)
    assert all(len(res.choices) == r.n for r, res in got)
    assert identical.prompt_tokens == 7 * identical.rows
    if not enabled:
        assert identical.rows == 0 and merged.rows == 0


def test_only_determined_requests_are_shared():
    reqs = [request(0, "q", temperature=0), request(1, "q", temperature=0), request(2, "q", temperature=0.7),
            request(3, "q", temperature=0.7), request(4, "q", temperature=0.7, seed=3), request(5, "q", seed=3)]
    dispatcher = FakeDispatcher(2)
    identical = Identical(sampled=SampledOnce(False))
    list(identical.results(dispatcher, reqs))
    # id1 shares id0's answer; the sampled ones are all sent; id4 and id5 differ (temperature)
    assert [r.custom_id for r in dispatcher.sent] == ["id0", "id2", "id3", "id4", "id5"]
    assert identical.describe()["identical"]["rows_answered_once"] == 1
