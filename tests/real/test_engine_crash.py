"""Engines that die. A request that kills the real engine (a per-request seed on the CPU build,
passed through with --seed-on-cpu engine) is isolated with an engine_crash row; the rest of the
batch succeeds. An engine that dies while loading (the OOM killer) is a start failure: a few
tries, then exit 4 with the cause, not a restart budget spent on full model loads."""

import json
import signal

import pytest
from conftest import chat_line, invoke, read_output, write_jsonl

FAKE = ["--engine", "fake", "-m", "smollm2", "-q"]


def loading_death(tmp_path, *options):
    src = write_jsonl(tmp_path / "in.jsonl", [chat_line(f"r{i}", f"q{i}") for i in range(5)])
    loads = tmp_path / "loads.log"
    args = [a for o in (f"load_log={loads}", *options) for a in ("--engine-option", o)]
    res = invoke("run", src, "-o", tmp_path / "out", *FAKE, *args)
    return res, (len(loads.read_text().splitlines()) if loads.exists() else 0)


def test_engine_killed_while_loading_is_a_start_failure(tmp_path):
    res, loads = loading_death(tmp_path, "die_loading=SIGKILL")
    assert res.exit_code == 4, res.output
    assert loads == 3  # three loads, not a restart budget of 50
    assert "died while starting, 3 times in a row" in res.output
    assert "killed by SIGKILL (the OOM killer?)" in res.output
    assert "fake engine: loading smollm2 (load 3) ... out of memory" in res.output  # what it printed last
    assert "out of memory" in res.output and "--data-parallel-size" in res.output
    assert not (tmp_path / "out" / "_SUCCESS").exists()
    # Once the engine loads, the same command finishes the job.
    src = tmp_path / "in.jsonl"
    res = invoke("run", src, "-o", tmp_path / "out", *FAKE)
    assert res.exit_code == 0, res.output
    assert read_output(tmp_path / "out").height == 5


def test_engine_exiting_while_loading_names_the_exit_code(tmp_path):
    res, loads = loading_death(tmp_path, "die_loading=3")
    assert res.exit_code == 4, res.output
    assert loads == 3
    assert "exited with code 3" in res.output


def test_a_load_that_fails_twice_then_works_is_not_a_restart(tmp_path):
    res, loads = loading_death(tmp_path, "die_loading=SIGKILL", "die_loads=2")
    assert res.exit_code == 0, res.output
    assert loads == 3
    assert read_output(tmp_path / "out").height == 5
    report = json.loads((tmp_path / "out" / "_report.json").read_text())
    assert report["engine_restarts"] == 0


def test_describe_exit():
    from pipeline.engines.dispatcher import describe_exit

    assert describe_exit(-signal.SIGKILL) == "killed by SIGKILL (the OOM killer?)"
    assert describe_exit(-signal.SIGSEGV) == "killed by SIGSEGV"
    assert describe_exit(1) == "exited with code 1"
    assert describe_exit(None) == "ended (exit status unknown)"


def test_engine_core_killed_while_loading_is_named():
    """vLLM's own engine core process, not the worker, is the one the OOM killer takes."""
    from pipeline.engines.dispatcher import Dispatcher, EngineStartError, Event

    class Pool:
        size = 1

        def wait(self, timeout):
            return [Event(0, "fatal", "RuntimeError: Engine core initialization failed. See root cause "
                                      "above. Failed core proc(s): {'EngineCore': -9}")]

    with pytest.raises(EngineStartError, match=r"engine core process was killed by SIGKILL \(the OOM killer\?\)"):
        list(Dispatcher(Pool(), window=4).results(iter(())))


@pytest.mark.engine
def test_seed_crash_is_isolated(tmp_path):
    from pipeline.engines.vllm import current_platform

    if not current_platform.is_cpu():
        pytest.skip("the seed crash is specific to the CPU build of vLLM")
    # The CPU generator fails when a seeded prompt is split over scheduler steps: a prompt longer
    # than --max-num-batched-tokens makes that happen. The poison goes first (--order input): the
    # three requests die together, then again as one suspect group, whose first half is the poison
    # alone, so the two innocent rows run once the poison is isolated: four engine loads, not the
    # five of a poison in the middle (each halving costs a load).
    rows = [chat_line("poison", "Tell me a story. " + "Once upon a time " * 40, seed=7, max_tokens=4),
            chat_line("ok-1", "Say hi.", temperature=0, max_tokens=4),
            chat_line("ok-2", "Say bye.", temperature=0, max_tokens=4)]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    res = invoke("run", src, "-o", tmp_path / "out", "-m", "smollm2", "-q", "--seed-on-cpu", "engine",
                 "--order", "input", "--max-model-len", "512", "--max-num-batched-tokens", "64", "--max-num-seqs", "4")
    assert res.exit_code == 0, res.output
    rows = {r["custom_id"]: r for r in read_output(tmp_path / "out").to_dicts()}
    assert set(rows) == {"ok-1", "poison", "ok-2"}
    assert rows["poison"]["error"]["code"] == "engine_crash"
    assert "seed" in rows["poison"]["error"]["message"]
    assert rows["ok-1"]["error"] is None and rows["ok-2"]["error"] is None
    report = json.loads((tmp_path / "out" / "_report.json").read_text())
    assert report["engine_restarts"] >= 2 and report["errors_by_code"] == {"engine_crash": 1}
    print(f"\nengine restarts: {report['engine_restarts']}")


@pytest.mark.parametrize("message, attrs, want", [
    ("The decoder prompt (length 1500) is longer than the maximum model length of 1024.", {},
     "the prompt is 1500 tokens and the context is 1024 tokens"),
    ("This model's maximum context length is 1024 tokens. However, your prompt contains at least 1025 "
     "input tokens, which exceeds this limit", {"parameter": "input_tokens", "value": 1025},
     "the prompt is at least 1025 tokens and the context is 1024 tokens"),
    ("This model's maximum context length is 1024 tokens. However, your prompt contains 90000 characters",
     {"parameter": "input_text", "value": 90000}, "the prompt is longer than the context of 1024 tokens"),
])
def test_engine_refusals_for_length_get_the_shared_verdict(message, attrs, want):
    """The engine's refusal of a long prompt is the verdict estimate gives (models/render.py), found
    from vLLM's error's parameter or its input processor's form, not from loose wording."""
    from types import SimpleNamespace

    from pipeline.engines.vllm import VLLMEngine

    error = ValueError(message)
    for k, v in attrs.items():
        setattr(error, k, v)
    problem = VLLMEngine._refusal(SimpleNamespace(info={"max_model_len": 1024}), error)
    assert problem.code == "context_length_exceeded" and want in problem.message
    other = VLLMEngine._refusal(SimpleNamespace(info={"max_model_len": 1024}), ValueError("bad tool schema"))
    assert other.code == "invalid_request"


@pytest.mark.engine
def test_a_dead_engine_core_is_the_engines_death_not_a_refusal_of_each_request():
    """vLLM's engine core process gone between steps (the OOM killer, a crash): a request sent after
    it is the engine's death (EngineDeadError up to the worker, which reports "died"; the dispatcher
    restarts the engine and redoes its requests), not an invalid_request row. A run under load once
    ended with 19 such rows and exit 0."""
    import os
    import time

    import psutil
    from vllm.v1.engine.exceptions import EngineDeadError
    from vlm_model import DEFAULT_TOKENIZER_SOURCE

    from pipeline.engines.base import EngineSpec
    from pipeline.engines.vllm import VLLMEngine
    from pipeline.records import Request

    cores = os.sched_getaffinity(0)  # vLLM's CPU build binds the process it starts in: given back after
    engine = VLLMEngine(EngineSpec(kind="vllm", model=DEFAULT_TOKENIZER_SOURCE,
                                   engine_args={"max_model_len": 512, "max_num_seqs": 4}))
    core = next(p for p in psutil.Process().children(recursive=True) if "EngineCore" in " ".join(p.cmdline()))
    os.kill(core.pid, signal.SIGKILL)
    resources = engine.llm.llm_engine.engine_core.resources
    deadline = time.monotonic() + 60
    while not resources.engine_dead and time.monotonic() < deadline:  # the client's monitor has seen it
        time.sleep(0.05)
    assert resources.engine_dead
    request = Request.chat("after", "f.jsonl", 1, [{"role": "user", "content": "Say hi."}],
                           params={"max_tokens": 4})
    try:
        with pytest.raises(EngineDeadError):
            engine.add([(1, request)])
    finally:
        engine.engine.engine_core.shutdown()
        os.sched_setaffinity(0, cores)
