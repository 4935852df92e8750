"""The CPU build of vLLM starts with `pipeline run` as the README shows it, without
VLLM_CPU_KVCACHE_SPACE: the pipeline sizes the KV cache itself (vLLM's own default reserves 92% of
the NUMA node and refuses to start once page cache or anything else holds more than 8% of it)."""

import json
import os

import pytest
from conftest import read_output

GiB = 1 << 30


@pytest.fixture
def vllm_engine():
    pytest.importorskip("vllm")
    from pipeline.engines import vllm as vllm_engine

    return vllm_engine


def test_kv_cache_size(vllm_engine):
    size = vllm_engine.cpu_kv_cache_bytes
    assert size(3 * GiB) == int(0.9 * 1024) << 20  # 30% of what is available, in whole MiB
    assert size(64 * GiB) == 4 * GiB  # capped
    assert size(64 * GiB, engines=2) == 2 * GiB  # engines that start together share it
    assert size(10 * GiB, engines=3) == GiB
    assert size(1 << 20) == 1 << 20  # never zero (vLLM would read 0 as "no cache")


class _Stop(Exception):
    pass


def engine_args(vllm_engine, monkeypatch, *, available, engines=None, kvcache_env=None, **args):
    """The arguments VLLMEngine hands vLLM's LLM on a CPU build with `available` bytes free."""
    from pipeline.engines.base import EngineSpec

    seen = {}

    def fake_llm(**kwargs):
        seen.update(kwargs)
        raise _Stop

    class CPU:
        @staticmethod
        def is_cpu():
            return True

    monkeypatch.setattr(vllm_engine, "LLM", fake_llm)
    monkeypatch.setattr(vllm_engine, "current_platform", CPU)
    monkeypatch.setattr(vllm_engine, "_cpu_available_memory", lambda: available)
    for name, value in ((vllm_engine.ENGINES_ENV, engines), ("VLLM_CPU_KVCACHE_SPACE", kvcache_env)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    with pytest.raises(_Stop):
        vllm_engine.VLLMEngine(EngineSpec(kind="vllm", model="m", engine_args=args))
    return seen


def test_cpu_engine_gets_a_kv_cache_size_when_none_is_set(vllm_engine, monkeypatch):
    args = engine_args(vllm_engine, monkeypatch, available=6 * GiB)
    assert args["kv_cache_memory_bytes"] == vllm_engine.cpu_kv_cache_bytes(6 * GiB)
    args = engine_args(vllm_engine, monkeypatch, available=40 * GiB, engines="2")
    assert args["kv_cache_memory_bytes"] == 2 * GiB


@pytest.mark.parametrize("setting", [
    {"kvcache_env": "3"},  # VLLM_CPU_KVCACHE_SPACE: vLLM reads it itself
    {"kv_cache_memory_bytes": 123 << 20},  # --engine-arg kv_cache_memory_bytes=...
    {"gpu_memory_utilization": 0.5},  # the user chose vLLM's own sizing
])
def test_a_chosen_size_is_left_alone(vllm_engine, monkeypatch, setting):
    args = engine_args(vllm_engine, monkeypatch, available=6 * GiB, **setting)
    assert args.get("kv_cache_memory_bytes") == setting.get("kv_cache_memory_bytes")


@pytest.mark.engine
def test_cli_starts_the_cpu_engine_without_vllm_cpu_kvcache_space(plain_cli_run):
    """conftest's plain_cli_run: `pipeline run` in a subprocess without VLLM_CPU_KVCACHE_SPACE."""
    from pipeline.engines.vllm import current_platform

    if not current_platform.is_cpu():
        pytest.skip("the KV cache default is for the CPU build of vLLM")
    res, out = plain_cli_run
    assert res.returncode == 0, res.stdout + res.stderr[-5000:]
    df = read_output(out)
    assert sorted(df["custom_id"]) == ["a", "b", "c", "d"] and df["error"].is_null().all()
    report = json.loads((out / "_report.json").read_text())
    assert 0 < report["engine"]["kv_cache_memory_bytes"] <= 4 * GiB
    # the step size of vLLM's own batch runner on CPU, not LLM(...)'s twice larger one
    assert (report["engine"]["max_num_seqs"], report["engine"]["max_num_batched_tokens"]) == (128, 2048)
    # vLLM bound the model's threads to some cores and left others: the worker moved onto those
    cores = len(os.sched_getaffinity(0))
    beside = report["engine"]["cpus_beside_model"]
    assert (beside is None) if cores < 2 else (0 < len(beside) < cores)


def test_cpu_step_size_is_vllms_server_one_unless_chosen(vllm_engine):
    if not vllm_engine.current_platform.is_cpu():
        pytest.skip("the step size default is for the CPU build of vLLM")
    assert vllm_engine.cpu_batch_defaults({}) == {"max_num_seqs": 128, "max_num_batched_tokens": 2048}
    assert vllm_engine.cpu_batch_defaults({"max_num_seqs": 64}) == {"max_num_batched_tokens": 2048}
    assert vllm_engine.cpu_batch_defaults({"max_num_seqs": 64, "max_num_batched_tokens": 512}) == {}


def test_cpu_dtype_default_follows_native_bf16():
    from pipeline.engines.vllm import cpu_default_dtype

    assert cpu_default_dtype({"sse4_2", "avx2", "avx512f"}) == "float32"  # bf16 would be emulated
    assert cpu_default_dtype({"avx2", "avx512f", "avx512_bf16"}) is None  # the model's dtype
    assert cpu_default_dtype({"avx2", "avx512f", "amx_bf16", "amx_tile"}) is None
    assert cpu_default_dtype({"fp", "asimd", "bf16"}) is None  # not x86: vLLM's default
