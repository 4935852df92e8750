"""The lease's own checks, by an injected clock (pipeline/output/lease.py): a holder that was not
refreshed for half its timeout stops (its process was paused: another run may have taken over),
and a holder whose generation is no longer the newest stops. The e2e test of a paused writer
(tests/e2e/test_exactly_once.py) meets the second; the first is timed here, not waited for."""

import pytest

from pipeline.output import lease as lease_module
from pipeline.output.lease import Lease, LeaseLost
from pipeline.storage import Location


@pytest.fixture
def clock(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(lease_module.time, "monotonic", lambda: now[0])
    return now


def test_a_lease_not_refreshed_for_half_its_timeout_is_lost(tmp_path, clock):
    held = Lease.acquire(Location.of(str(tmp_path)), timeout=600)
    held._stop.set()  # no heartbeat: the holder's process is paused
    try:
        clock[0] += 300
        held.check()  # half the timeout: still held
        clock[0] += 1
        with pytest.raises(LeaseLost, match="was not refreshed for 301 s"):
            held.check()
    finally:
        held.release()


def test_a_lease_of_an_older_generation_is_lost(tmp_path, clock):
    folder = Location.of(str(tmp_path))
    held = Lease.acquire(folder, timeout=600)
    try:
        held.check()
        (tmp_path / "_lease" / "2.json").write_text("{}")  # another run took over
        with pytest.raises(LeaseLost, match="lease 2 after this run's 1"):
            held.check()
    finally:
        held.release()
