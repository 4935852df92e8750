"""Our processes move off the cores a CPU engine binds its model threads to (engines/cores.py)."""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
                                reason="needs Linux and two cores")

SCRIPT = r"""
import json, os, subprocess, sys
from pipeline.engines.cores import pin_beside_model
first = min(os.sched_getaffinity(0))
bind = sys.argv[1] == "bind"
model = subprocess.Popen(["sleep", "30"], preexec_fn=(lambda: os.sched_setaffinity(0, {first})) if bind else None)
helper = subprocess.Popen(["sleep", "30"])  # like vLLM's scheduler: unbound
try:
    free = pin_beside_model()
    print(json.dumps({"free": free, "me": sorted(os.sched_getaffinity(0)), "first": first,
                      "model": sorted(os.sched_getaffinity(model.pid)),
                      "helper": sorted(os.sched_getaffinity(helper.pid))}))
finally:
    model.kill(), helper.kill()
"""


def run(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": os.getcwd()})
    return json.loads(out.stdout)


def test_everything_but_the_bound_model_moves_to_the_cores_it_left():
    got, everything = run("bind"), sorted(os.sched_getaffinity(0))
    rest = [c for c in everything if c != got["first"]]
    assert got["free"] == rest
    assert got["me"] == rest and got["helper"] == rest
    assert got["model"] == [got["first"]]  # the model's own process is left where vLLM bound it


def test_nothing_moves_when_no_engine_process_is_bound():
    got = run("free")
    assert got["free"] is None
    assert got["me"] == got["helper"] == sorted(os.sched_getaffinity(0))


POOL = r"""
import json, os, sys, time
from pipeline.engines.base import EngineSpec
from pipeline.engines.local import LocalPool
last = max(os.sched_getaffinity(0))
pool = LocalPool(EngineSpec("fake", "smollm2", options={"cpus_beside_model": [last]}), [{}])
deadline = time.monotonic() + 60
while not pool.ready[0] and time.monotonic() < deadline:
    pool.wait(0.5)
during = sorted(os.sched_getaffinity(0))
pool.close()
print(json.dumps({"last": last, "during": during, "after": sorted(os.sched_getaffinity(0))}))
"""


def test_the_runs_main_process_joins_the_engine_on_the_free_cores_and_gets_all_back_at_close():
    out = subprocess.run([sys.executable, "-c", POOL], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": os.getcwd()}, timeout=120)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["during"] == [got["last"]]
    assert got["after"] == sorted(os.sched_getaffinity(0))
