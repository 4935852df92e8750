"""`--executor ray`: the same job on engine actors of a Ray cluster (here a local one on CPU).

Each run is the CLI in a subprocess, as users run it: it starts its own local cluster
(RAY_ADDRESS=local) and must stop everything it started. Tests that start a cluster are
marked `ray`; the others (layout, settings, a bad address) take about a second.
"""

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import REPO, chat_line, read_output, wait_for_commit, write_jsonl
from storage_servers import free_port
from test_scale import ENGINE_ENV, REAL, assert_same_rows, local_baseline, scale_lines

FAKE = ["--engine", "fake", "-m", "smollm2", "-q"]


def run_cli(*args, env=None, timeout=600) -> subprocess.CompletedProcess:
    # a fresh cluster, never one that happens to run here (unless --ray-address names one)
    env = {**os.environ, "RAY_ADDRESS": "local", **(env or {})}
    return subprocess.run([sys.executable, "-m", "pipeline", "run", *map(str, args), "--executor", "ray"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def ray_processes() -> set[int]:
    """Ray's own processes (GCS, raylet, agents, workers) and our actors' watchdogs."""
    marks = (b"ray::", b"/ray/core/src/ray/", b"ray/dashboard", b"ray/_private", b"os.killpg(int(sys.argv[1])")
    found = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        if any(m in cmd for m in marks):
            found.add(int(pid))
    return found


@pytest.fixture
def no_stray_processes():
    before = ray_processes()
    yield
    deadline = time.monotonic() + 120  # Ray's processes end within seconds; a loaded machine may take more
    while (left := ray_processes() - before) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, f"processes left behind by the run: {sorted(left)}"


@pytest.mark.ray
@pytest.mark.engine
def test_real_engine_on_ray_gives_the_local_rows(tmp_path, tmp_path_factory, no_stray_processes):
    baseline = local_baseline(tmp_path_factory)
    src = write_jsonl(tmp_path / "in.jsonl", scale_lines())
    res = run_cli(src, "-o", tmp_path / "out", *REAL, env=ENGINE_ENV)
    assert res.returncode == 0, res.stdout + res.stderr[-5000:]
    rows = {r["custom_id"]: r for r in read_output(tmp_path / "out").to_dicts()}
    assert_same_rows(rows, baseline)
    report = json.loads((tmp_path / "out" / "_report.json").read_text())
    assert report["engines"] == 1 and report["engine_restarts"] == 0
    assert report["engine"]["platform"] == "cpu"
    assert (tmp_path / "out" / "_SUCCESS").exists()


@pytest.mark.ray
def test_actor_death_isolates_the_poison_request(tmp_path, no_stray_processes):
    n = 40
    src = write_jsonl(tmp_path / "in.jsonl", [chat_line(f"r{i}", f"q{i}") for i in range(n)])
    res = run_cli(src, "-o", tmp_path / "out", *FAKE, "--data-parallel-size", "2",
                  "--engine-option", 'die_on=["r17"]')
    assert res.returncode == 0, res.stdout + res.stderr[-5000:]
    df = read_output(tmp_path / "out")
    assert sorted(df["custom_id"].to_list()) == sorted(f"r{i}" for i in range(n))
    crashed = df.filter(df["error"].is_not_null())
    assert crashed["custom_id"].to_list() == ["r17"]
    assert crashed["error"][0]["code"] == "engine_crash"
    report = json.loads((tmp_path / "out" / "_report.json").read_text())
    assert report["engines"] == 2 and report["engine_restarts"] >= 2
    assert "39 ok, 1 failed" in res.stdout


@pytest.mark.ray
def test_interrupted_run_resumes(tmp_path, no_stray_processes, hold):
    """SIGTERM once a part is committed: exit 3 with the finished rows kept; the rerun completes."""
    n = 60
    src = write_jsonl(tmp_path / "in.jsonl", [chat_line(f"r{i}", f"q{i}") for i in range(n)])
    out = tmp_path / "out"
    args = [src, "-o", out, *FAKE, "--checkpoint-every", "5", "--max-in-flight", "4",
            *hold.options()]  # held after a part: interrupted mid-run
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "run", *map(str, args), "--executor", "ray"],
                            cwd=REPO, env={**os.environ, "RAY_ADDRESS": "local"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_commit(out, proc, timeout=120, poll=0.05)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 3, stdout + stderr[-5000:]
    assert "interrupted" in stderr and not (out / "_SUCCESS").exists()
    done = read_output(out).height
    assert 0 < done < n
    hold.release()
    res = run_cli(*args)
    assert res.returncode == 0, res.stdout + res.stderr[-5000:]
    assert sorted(read_output(out)["custom_id"].to_list()) == sorted(f"r{i}" for i in range(n))
    assert json.loads((out / "_report.json").read_text())["resumed"] == done


@pytest.mark.ray
def test_engine_that_cannot_start_is_fatal(tmp_path, no_stray_processes):
    broken = tmp_path / "no-such-model"
    src = write_jsonl(tmp_path / "in.jsonl", [chat_line("a", "hi", model=str(broken))])
    # a local folder passes the name check before the run (a mistyped name is refused there, exit 1),
    # but holds no model an engine can load
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"model_type": "no-such-architecture"}))
    res = run_cli(src, "-o", tmp_path / "out", "-m", broken, "-q")
    assert res.returncode == 4, res.stdout + res.stderr[-5000:]
    assert "the engine could not start" in res.stderr and "no-such-model" in res.stderr
    assert not (tmp_path / "out" / "_SUCCESS").exists()


@pytest.mark.ray
def test_more_engines_than_the_cluster_holds_is_refused(tmp_path, no_stray_processes):
    src = write_jsonl(tmp_path / "in.jsonl", [chat_line("a", "hi")])
    res = run_cli(src, "-o", tmp_path / "out", *FAKE, "--data-parallel-size", "64")
    assert res.returncode == 1
    assert "--data-parallel-size 64 needs 64 CPUs on the Ray cluster" in res.stderr


def test_unreachable_cluster_fails_fast(tmp_path, monkeypatch):
    """Fast by what the run does, not by a stopwatch that a loaded machine stops: the address gets
    one connect of at most 10 s, and the run ends before ray.init, whose own retries last minutes."""
    from pipeline.engines import ray as ray_pool
    from pipeline.engines.base import EngineSpec

    src = write_jsonl(tmp_path / "in.jsonl", [chat_line("a", "hi")])
    res = run_cli(src, "-o", tmp_path / "out", *FAKE, "--ray-address", "127.0.0.1:1")
    assert res.returncode == 1
    assert "no Ray cluster answers at 127.0.0.1:1" in res.stderr and "Hint:" in res.stderr
    inits, connects, connect = [], [], socket.create_connection
    monkeypatch.setattr(ray_pool.ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray_pool.ray, "init", lambda *a, **kw: inits.append(kw))
    monkeypatch.setattr(ray_pool.socket, "create_connection",
                        lambda address, timeout: connects.append(timeout) or connect(address, timeout))
    with pytest.raises(ValueError, match="no Ray cluster answers at 127.0.0.1:1"):
        ray_pool.RayPool(EngineSpec(kind="fake", model="m"), "127.0.0.1:1", 1, 1)
    assert inits == [] and connects == [10.0]


@pytest.fixture
def ray_head(no_stray_processes):
    """A cluster started apart from the run (`ray start --head`), stopped by its process group
    (its workers follow their raylet). Its temp dir is short: it holds Unix sockets."""
    port, temp = free_port(), tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    head = subprocess.Popen([Path(sys.executable).with_name("ray"), "start", "--head", "--block",
                             f"--port={port}", "--num-cpus=2", "--include-dashboard=false", f"--temp-dir={temp}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not _answers(port):
            assert head.poll() is None and time.monotonic() < deadline, "ray start --head failed"
            time.sleep(0.5)
        yield head, f"127.0.0.1:{port}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGKILL)
        head.wait()
        shutil.rmtree(temp, ignore_errors=True)


def _answers(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


@pytest.mark.ray
def test_joins_a_running_cluster_and_leaves_it_running(tmp_path, ray_head):
    head, address = ray_head
    n = 20
    src = write_jsonl(tmp_path / "in.jsonl", [chat_line(f"r{i}", f"q{i}") for i in range(n)])
    # `ray start` turns on Ray's token authentication; the token is in ~/.ray/auth_token here
    res = run_cli(src, "-o", tmp_path / "out", *FAKE, "--ray-address", address, "--data-parallel-size", "2",
                  env={"RAY_AUTH_MODE": "token"})
    assert res.returncode == 0, res.stdout + res.stderr[-5000:]
    assert sorted(read_output(tmp_path / "out")["custom_id"].to_list()) == sorted(f"r{i}" for i in range(n))
    assert head.poll() is None and _answers(int(address.rsplit(":", 1)[1]))  # not ours to stop


def test_actors_get_engine_settings_but_no_credentials(monkeypatch):
    from pipeline.engines.ray import engine_env

    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "3")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "do-not-forward")
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", "AccountKey=do-not-forward")
    env = engine_env()
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "3" and env["HF_HUB_OFFLINE"] == "1"
    assert "do-not-forward" not in json.dumps(env)


@pytest.mark.parametrize("cluster, engine, tp, dp, expected", [
    ({"CPU": 2.0}, "vllm", None, None, (1, {"num_cpus": 1, "num_gpus": 0})),
    ({"CPU": 2.0}, "vllm", None, 2, (2, {"num_cpus": 1, "num_gpus": 0})),
    ({"CPU": 64.0, "GPU": 8.0}, "vllm", None, None, (8, {"num_cpus": 1, "num_gpus": 1})),
    ({"CPU": 64.0, "GPU": 8.0}, "vllm", 2, None, (4, {"num_cpus": 1, "num_gpus": 2})),
    ({"CPU": 64.0, "GPU": 8.0}, "vllm", 2, 3, (3, {"num_cpus": 1, "num_gpus": 2})),
    ({"CPU": 64.0, "GPU": 8.0}, "fake", None, None, (1, {"num_cpus": 1, "num_gpus": 0})),
])
def test_one_actor_per_gpu_group(cluster, engine, tp, dp, expected):
    from pipeline.engines.placement import ray_layout

    assert ray_layout(tp, dp, cluster, needs_gpus=engine != "fake") == expected


@pytest.mark.parametrize("cluster, tp, dp, message", [
    ({"CPU": 2.0}, None, 3, "--data-parallel-size 3 needs 3 CPUs"),
    ({"CPU": 64.0, "GPU": 2.0}, 4, None, "--tensor-parallel-size 4 needs 4 GPUs"),
    ({"CPU": 64.0, "GPU": 8.0}, 4, 3, "needs 12 GPUs; the Ray cluster has 8"),
])
def test_layout_that_does_not_fit_is_refused(cluster, tp, dp, message):
    from pipeline.engines.placement import ray_layout

    with pytest.raises(ValueError, match=message):
        ray_layout(tp, dp, cluster)
