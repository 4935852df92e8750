"""The Dispatcher in memory: a pool of in-process engines, no processes, no callbacks. It keeps
each engine's window, yields every request's result once, isolates a request that kills engines,
and turns deaths before ready into a start failure."""

import pytest

from pipeline.engines.base import Result
from pipeline.engines.dispatcher import Dispatcher, EngineStartError, Event
from pipeline.records import Request


def req(i):
    return Request.chat(f"r{i}", "f.jsonl", i + 1, [{"role": "user", "content": str(i)}])


class MemoryPool:
    """Engines as lists: each wait answers what was submitted; `poison` kills the engine that
    holds it; `die_loading` engines die before ready that many times."""

    def __init__(self, size=2, poison=(), die_loading=0):
        self.size, self.poison, self.die_loading = size, set(poison), die_loading
        self.held = [[] for _ in range(size)]
        self.events = [Event(i, "ready", {"model": "m"}) for i in range(size)] if not die_loading else [
            Event(0, "died", "killed by SIGKILL", "out of memory")]
        self.max_held = [0] * size
        self.restarts = []

    def submit(self, worker, items):
        self.held[worker].extend(items)
        self.max_held[worker] = max(self.max_held[worker], len(self.held[worker]))

    def wait(self, timeout):
        events, self.events = self.events, []
        for i, items in enumerate(self.held):
            if not items:
                continue
            if any(r.custom_id in self.poison for _, r in items):
                events.append(Event(i, "died", "engine process exited with code 86"))
            else:
                events.append(Event(i, "results", [Result(seq, [{"content": r.custom_id}], 1, 1) for seq, r in items]))
            self.held[i] = []
        return events

    def restart(self, worker):
        self.restarts.append(worker)
        self.held[worker] = []
        if self.die_loading and len(self.restarts) < self.die_loading:
            self.events.append(Event(worker, "died", "killed by SIGKILL", "out of memory"))
        else:
            self.events.append(Event(worker, "ready", {"model": "m"}))


def run(pool, n, window=8):
    out = [x for x in Dispatcher(pool, window=window, chunk=3).results(req(i) for i in range(n)) if x is not None]
    return out


def test_every_request_once_within_the_window():
    pool = MemoryPool(size=2)
    out = run(pool, 100)
    assert sorted(r.custom_id for r, _ in out) == sorted(f"r{i}" for i in range(100))
    assert all(res.choices[0]["content"] == r.custom_id for r, res in out)
    assert {res.engine for _, res in out} == {0, 1} and all(res.seconds >= 0 for _, res in out)
    assert max(pool.max_held) <= 8


def test_poison_request_is_isolated_and_the_rest_run():
    pool = MemoryPool(size=1, poison={"r13"})
    out = run(pool, 30)
    assert sorted(r.custom_id for r, _ in out) == sorted(f"r{i}" for i in range(30))
    [(bad, res)] = [(r, res) for r, res in out if res.error is not None]
    assert bad.custom_id == "r13" and res.error.code == "engine_crash"


def test_death_before_ready_is_a_start_failure():
    pool = MemoryPool(size=1, die_loading=3)
    with pytest.raises(EngineStartError, match="died while starting, 3 times"):
        run(pool, 5)
    assert len(pool.restarts) == 2  # three loads in all, then stop


def test_one_death_while_loading_is_retried():
    pool = MemoryPool(size=1, die_loading=1)
    assert len(run(pool, 5)) == 5


def test_engines_that_keep_dying_stop_the_run_resumably():
    from pipeline.engines.dispatcher import TooManyRestarts

    pool = MemoryPool(size=1, poison={"r0", "r1", "r2", "r3"})
    with pytest.raises(TooManyRestarts, match="engines died 3 times"):
        list(x for x in Dispatcher(pool, window=8, max_restarts=2).results(req(i) for i in range(6)))


def test_a_prefix_group_stays_on_its_engine_while_the_other_takes_the_next_groups():
    """Two engines, window 8: a group of 40 (more than one engine holds at once) all goes to the
    engine that started it; meanwhile the other engine takes the groups after it, not half of it."""
    sizes = [40] + [3] * 12
    rows = [Request.chat(f"g{g}r{k}", "f.jsonl", 1, [{"role": "user", "content": f"{g}"}], group=g + 1)
            for g, size in enumerate(sizes) for k in range(size)]
    pool = MemoryPool(size=2)
    out = [x for x in Dispatcher(pool, window=8, chunk=3).results(iter(rows)) if x is not None]
    assert sorted(r.custom_id for r, _ in out) == sorted(r.custom_id for r in rows)
    engines = {}
    for r, res in out:
        engines.setdefault(r.group, set()).add(res.engine)
    assert all(len(e) == 1 for e in engines.values())
    assert engines[1] != engines[2]  # the next group went to the other engine while the first ran
    assert max(pool.max_held) <= 16


class SlowFirstPool(MemoryPool):
    """Engine 0 answers two requests a wait; engine 1 answers all it holds."""

    def wait(self, timeout):
        slow, self.held[0] = self.held[0][2:], self.held[0][:2]
        events = super().wait(timeout)
        self.held[0] = slow
        return events


def test_an_idle_engine_takes_the_later_half_of_another_engines_queue():
    """One prefix group of 60 on a slow engine: while the input lasts the group waits for its
    engine; once it is all handed out, the idle engine takes the later half of what waits (no
    engine idle while another has a queue), and every request still runs once."""
    rows = [Request.chat(f"r{k}", "f.jsonl", k + 1, [{"role": "user", "content": "doc"}], group=1) for k in range(60)]
    pool = SlowFirstPool(size=2)
    out = [x for x in Dispatcher(pool, window=8, chunk=4).results(iter(rows)) if x is not None]
    assert sorted(r.custom_id for r, _ in out) == sorted(r.custom_id for r in rows)
    second = sorted(r.line for r, res in out if res.engine == 1)
    assert second, "the idle engine took none of the waiting group"
    assert max(second) == 60 and len(second) < 60  # the tail of the queue, not the group's head
    assert min(r.line for r, res in out if res.engine == 0) == 1


def test_the_cache_plan_follows_each_engines_stream():
    from pipeline.engines.cache_plan import CachePlan
    from pipeline.intake.order import prefix_key

    doc = "word " * 200  # four blocks of 256 characters, then the question
    rows = [Request.chat(f"q{k}", "f.jsonl", k + 1, [{"role": "user", "content": doc + f"question {k}"}], group=1)
            for k in range(4)]
    plan = CachePlan(prefix_key)
    for k, r in enumerate(rows):
        plan.handed(0, r)
        plan.answered(0, Result(k, [], 100, 1, cached_tokens=0 if k == 0 else 80))
    plan.handed(1, Request.chat("x", "f.jsonl", 9, [{"role": "user", "content": "other"}]))
    plan.answered(1, Result(9, [], 10, 1, cached_tokens=10))
    d = plan.describe()["cache_plan"]
    zero, one = d["engines"]
    assert zero["requests"] == 4 and zero["groups"] == 1
    assert 0.5 < zero["predicted_share"] < 0.75 and zero["cached_share"] == 0.6 and zero["differs"] is None
    assert one["predicted_share"] == 0 and one["cached_share"] == 1.0
    assert d["differs"] == [f"engine 1: {one['differs']}"] and "further back" in one["differs"]
