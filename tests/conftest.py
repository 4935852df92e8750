import functools
import json
import os
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

# Engines on this 2-core machine: a small KV cache, and never touch the network.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

REPO = Path(__file__).resolve().parent.parent
MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"


# Engine runs that several test files read, computed once per session (per xdist worker): the files
# that name one go to the same worker (EngineFilesFirst), so that it loads once.
SHARED_RUNS = ("plain_cli_run", "smollm2_run", "local_baseline")


@functools.cache
def test_file_text(path) -> str:
    """A test file's text (`path` from the repository's root), read once however many tests it holds."""
    return (REPO / path).read_text()


def starts_engines(path) -> bool:
    """A test file that starts a real engine or a Ray cluster: one that marks tests `engine` or `ray`."""
    text = test_file_text(path)
    return "mark.engine" in text or "mark.ray" in text


def pytest_collection_modifyitems(config, items):
    """The files that start engines run first: they are the long pole of `make test`'s workers."""
    heavy = {path: starts_engines(path) for path in {item.path for item in items}}
    items.sort(key=lambda item: not heavy[item.path])  # stable: each file's own order is kept


try:
    from xdist.scheduler import LoadScopeScheduling
except ImportError:  # pytest-xdist is a test extra; without it the suite runs on one process
    pass
else:
    class EngineFilesFirst(LoadScopeScheduling):
        """`make test` (-n 2): each test file is one unit of work (its module fixtures run once), and
        the files that name a shared engine run (SHARED_RUNS) are one unit together. Units go out in
        collection order, which puts the files that start engines first (pytest_collection_modifyitems),
        so that the last minutes of both workers are short files, not one engine test."""

        def __init__(self, config, log=None):
            config.option.loadscopereorder = False  # keep the engine files first
            super().__init__(config, log)

        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return next((name for name in SHARED_RUNS if name in test_file_text(path)), path)

    def pytest_xdist_make_scheduler(config, log):
        return EngineFilesFirst(config, log)


def chat_line(custom_id, content, **params):
    """An OpenAI Batch API line."""
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": MODEL, "messages": [{"role": "user", "content": content}], **params}}


def write_jsonl(path, rows):
    path = Path(path)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def invoke(*args, env=None):
    """Run the CLI in-process; returns click's Result."""
    from pipeline.cli import cli

    return CliRunner().invoke(cli, [str(a) for a in args], env=env, catch_exceptions=False)


def read_output(directory):
    import polars as pl

    parts = sorted(Path(directory).glob("part-*.parquet"))
    return pl.concat([pl.read_parquet(p) for p in parts]) if parts else pl.DataFrame()


def committed_records(out, storage_options=None):
    """The commit records of an output folder: what is committed, as a rerun would see it."""
    from pipeline.output.folder import Output
    from pipeline.storage import Location

    return Output(Location.of(str(out), storage_options)).read_state().records


def wait_for_commit(out, proc, timeout=60.0, poll=0.02):
    """Wait until a part is committed in `out` as a rerun sees it (a record that is only a
    temporary file mid-rename does not count); AssertionError if `proc` ends or time runs out."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if committed_records(out):
            return
        time.sleep(poll)
    raise AssertionError("no part was committed in time")


@pytest.fixture(scope="session")
def plain_cli_run(tmp_path_factory):
    """One `pipeline run` on the real engine as the README shows it: a subprocess, no -q, no -v,
    and no VLLM_CPU_KVCACHE_SPACE (the pipeline sizes the CPU KV cache). Four rows, a to d.
    Shared by test_quiet_output.py and test_cpu_memory.py (one engine load for both):
    (CompletedProcess, output folder)."""
    import subprocess
    import sys

    tmp = tmp_path_factory.mktemp("plain_cli_run")
    rows = [chat_line(cid, text, temperature=0, max_tokens=4)
            for cid, text in (("a", "Say hi."), ("b", "Say bye."), ("c", "Name a colour."), ("d", "Name a fruit."))]
    src = write_jsonl(tmp / "in.jsonl", rows)
    env = {k: v for k, v in os.environ.items() if k != "VLLM_CPU_KVCACHE_SPACE"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    script = Path(sys.executable).parent / "pipeline"
    cli = [str(script)] if script.exists() else [sys.executable, "-m", "pipeline"]
    done = subprocess.run([*cli, "run", str(src), "-o", str(tmp / "out"), "-m", "smollm2", "--max-model-len", "512"],
                          env=env, capture_output=True, text=True, timeout=900)
    return done, tmp / "out"


class Hold:
    """A run on the fake engine held mid-way on a file (the engine's pause_file): `options()`
    makes the engine answer `after` requests (a checkpoint's worth, say), then nothing until
    `release()`. A test then meets the run still running whatever the machine's load, instead
    of racing a step delay."""

    def __init__(self, path: Path):
        self.path = path

    def options(self, after: int = 5) -> list[str]:
        self.path.touch()
        return ["--engine-option", f"pause_file={self.path}", "--engine-option", f"pause_after={after}"]

    def release(self) -> None:
        self.path.unlink(missing_ok=True)


@pytest.fixture
def hold(tmp_path):
    """A Hold; released at teardown too, so that a failing test's held run ends by itself."""
    held = Hold(tmp_path / "hold")
    yield held
    held.release()


@pytest.fixture
def chat():
    return chat_line


def source(name="f.jsonl", index=0):
    """An input file as rows carry it (records.Source), named `name`."""
    from pipeline.records import Source

    return Source(index, name, name)


@pytest.fixture(autouse=True)
def calibration_file(tmp_path_factory, monkeypatch):
    """Each test its own calibration file (commands/calibration.py): runs append to it, and
    estimates and ETAs read it, so no test sees another's (or the machine's) history."""
    path = tmp_path_factory.mktemp("calibration") / "calibration.jsonl"
    monkeypatch.setenv("PIPELINE_CALIBRATION", str(path))
    return path


@pytest.fixture
def engines_start_together(monkeypatch):
    """Hold the engines' "ready" events back until all are up, as on a GPU machine: on these
    2 shared cores the second engine starts many seconds after the first, which would finish a
    small file alone."""
    from pipeline.engines.local import LocalPool

    real_wait, held, released = LocalPool.wait, [], []

    def wait(self, timeout):
        events = real_wait(self, timeout)
        if released:
            return events
        held.extend(e for e in events if e.kind == "ready")
        events = [e for e in events if e.kind != "ready"]
        if len(held) == self.size:
            released.append(True)
            events += held
        return events

    monkeypatch.setattr(LocalPool, "wait", wait)


def until_waiting_in(thread, name, ready=lambda: True, timeout=60.0):
    """Wait until `thread` is inside a call of the function `name` (seen in its own stack, not
    guessed from a sleep that a loaded machine makes too short) and `ready()` holds."""
    import sys
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        frame, names = sys._current_frames().get(thread.ident), set()
        while frame is not None:
            names.add(frame.f_code.co_name)
            frame = frame.f_back
        if name in names and ready():
            return
        time.sleep(0.01)
    raise AssertionError(f"{thread.name} never came to wait in {name}()")


def until_the_reader_waits(ordered, timeout=60.0):
    """Wait until an order's reader thread (intake/order.py) waits to hand over to a full queue:
    it has read as far ahead as it ever may before the consumer takes more."""
    until_waiting_in(ordered._thread, "_put", ordered._queue.full, timeout)


def until_ignored(proc, *signals, timeout=60.0):
    """Wait until the process `proc` ignores `signals` (SigIgn in /proc/PID/status), or has ended."""
    import time

    mask, deadline = sum(1 << (sig - 1) for sig in signals), time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        status = Path(f"/proc/{proc.pid}/status").read_text()
        if int(re.search(r"^SigIgn:\s*([0-9a-f]+)", status, re.M).group(1), 16) & mask == mask:
            return
        time.sleep(0.005)
    assert proc.poll() is not None, f"pid {proc.pid} did not come to ignore {signals}"


def contiguous(seq):
    """Every value occupies one run of consecutive positions."""
    seen, last = set(), None
    for v in seq:
        if v != last and v in seen:
            return False
        seen.add(v)
        last = v
    return True
