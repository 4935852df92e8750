"""A SIGTERM that the run takes while its loop is inside Ray (starting an actor, calling one,
restarting one) is raised once Ray has returned (exits.deferred): the new actor's handle is kept,
so close() stops it, and the run ends as interrupted (exit 3). Raised inside Ray's own code, it
came back as a SystemError, or the handle was lost with the actor still running. Ray here is a
stand-in that takes the signal in the middle of the call; test_ray.py runs the real one."""

import signal

import pytest

pytest.importorskip("ray")
from pipeline import exits  # noqa: E402
from pipeline.engines import ray as ray_pool  # noqa: E402
from pipeline.engines.base import EngineSpec  # noqa: E402
from pipeline.records import Request  # noqa: E402


class Ref:
    def __init__(self, value):
        self.value = value


class Method:
    def __init__(self, ray, name, value):
        self.ray, self.name, self.value = ray, name, value

    def remote(self, *args):
        self.ray.signal_in(self.name)
        return Ref(self.value)


class Actor:
    def __init__(self, ray):
        self.start = Method(ray, "start", ("ready", {}))
        self.poll = Method(ray, "poll", ([], False))
        self.stop = Method(ray, "stop", None)


class ActorClass:
    def __init__(self, ray):
        self.ray = ray

    def options(self, **_):
        return self

    def remote(self, *args):
        actor = Actor(self.ray)
        self.ray.actors.append(actor)
        self.ray.signal_in("actor")
        return actor


class SignalledRay:
    """A cluster of two CPUs whose call named `at` takes a SIGTERM half-way, as the handler runs
    when a signal arrives while Ray's code holds the main thread."""

    def __init__(self, at):
        self.at, self.actors, self.killed = at, [], []

    def signal_in(self, name):
        if name == self.at:
            self.at = None  # once
            exits._raise_interrupted(signal.SIGTERM, None)

    def is_initialized(self):
        return True  # a cluster the run did not start: nothing to init or shut down

    def cluster_resources(self):
        return {"CPU": 2.0}

    def remote(self, cls):
        return ActorClass(self)

    def wait(self, refs, num_returns=1, timeout=None):
        return list(refs)[:num_returns], list(refs)[num_returns:]

    def get(self, ref):
        return ref.value

    def kill(self, actor, no_restart=True):
        self.killed.append(actor)


@pytest.fixture
def signalled(monkeypatch):
    monkeypatch.setattr(signal, "signal", lambda *a: None)  # the handler ignores later signals: not pytest's

    def at(name):
        fake = SignalledRay(name)
        monkeypatch.setattr(ray_pool, "ray", fake)
        return fake

    return at


SPEC = EngineSpec(kind="fake", model="m")


def started_pool():
    pool = ray_pool.RayPool(SPEC, None, 1, 1)
    assert [e.kind for e in pool.wait(0)] == ["ready"]
    return pool


def test_a_signal_while_an_actor_starts_stops_that_actor(signalled):
    fake = signalled("actor")
    with pytest.raises(exits.Interrupted):
        ray_pool.RayPool(SPEC, None, 1, 1)
    assert len(fake.actors) == 1 and fake.killed == fake.actors  # its handle was kept, and close() killed it


def test_a_signal_while_an_actor_restarts_keeps_the_new_handle(signalled):
    fake = signalled(None)
    pool = started_pool()
    fake.at = "actor"
    with pytest.raises(exits.Interrupted):
        pool.restart(0)
    old, new = fake.actors
    assert fake.killed == [old] and pool.actors[0] is new
    pool.close()
    assert fake.killed == [old, new]


def test_a_signal_while_requests_are_sent_keeps_the_call(signalled):
    fake = signalled(None)
    pool = started_pool()
    fake.at = "poll"
    with pytest.raises(exits.Interrupted):
        pool.submit(0, [(1, Request.chat("a", "f.jsonl", 1, [{"role": "user", "content": "hi"}]))])
    assert list(pool.calls.values()) == [0] and pool.busy[0]  # recorded: the run waits for its answer
