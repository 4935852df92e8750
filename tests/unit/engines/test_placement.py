"""Engine placement: local GPU groups from a fake device list, CPU pinning, and a layout that does
not fit refused in the plan, before anything is written."""

import pytest
from conftest import chat_line, invoke, write_jsonl

from pipeline.engines.placement import cpu_envs, local_envs


def test_one_engine_per_gpu_group(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5,6,7")
    assert local_envs(None, None) == [{"CUDA_VISIBLE_DEVICES": d} for d in ("3", "5", "6", "7")]
    assert local_envs(2, None) == [{"CUDA_VISIBLE_DEVICES": "3,5"}, {"CUDA_VISIBLE_DEVICES": "6,7"}]
    assert local_envs(2, 1) == [{"CUDA_VISIBLE_DEVICES": "3,5"}]
    with pytest.raises(ValueError, match="--tensor-parallel-size 8 needs 8 GPUs; this machine has 4"):
        local_envs(8, None)
    with pytest.raises(ValueError, match="needs 6 GPUs; this machine has 4"):
        local_envs(2, 3)


def test_cpu_engines_get_their_own_cores(monkeypatch):
    monkeypatch.delenv("VLLM_CPU_OMP_THREADS_BIND", raising=False)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert cpu_envs(2) == [{"VLLM_CPU_OMP_THREADS_BIND": "0,1", "OMP_NUM_THREADS": "2"},
                           {"VLLM_CPU_OMP_THREADS_BIND": "2,3", "OMP_NUM_THREADS": "2"}]
    assert local_envs(None, None, gpus=0) == [{}]


def test_bad_layout_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    src = write_jsonl(tmp_path / "in.jsonl", [chat_line("a", "hi")])
    res = invoke("run", src, "-o", tmp_path / "out", "-m", "smollm2", "--tensor-parallel-size", "3")
    assert res.exit_code == 1 and "--tensor-parallel-size 3 needs 3 GPUs" in res.output
    assert not (tmp_path / "out").exists()
