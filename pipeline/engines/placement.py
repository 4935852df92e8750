"""Where engines run: how many, and which GPUs or cores each gets. One set of rules for the
local pool (one process per engine, `CUDA_VISIBLE_DEVICES` per group of GPUs) and the Ray pool
(one actor per engine, Ray resources), checked in the plan before anything is written."""

from __future__ import annotations

import os
import shutil
import subprocess

from pipeline.exits import UserError


def engine_count(gpus: int, tp: int, dp: int | None, where: str) -> int:
    """Engines of `tp` GPUs each: `dp`, or as many groups as there are GPUs for."""
    if gpus < tp:
        raise UserError(f"--tensor-parallel-size {tp} needs {tp} GPUs; {where} has {gpus}. "
                         "Hint: an engine's GPUs must be on one node.")
    size = dp or gpus // tp
    if size * tp > gpus:
        raise UserError(f"--data-parallel-size {size} × --tensor-parallel-size {tp} needs {size * tp} "
                         f"GPUs; {where} has {gpus}. Hint: leave --data-parallel-size out to use them all.")
    return size


def local_envs(tp: int | None, dp: int | None, gpus: int | None = None) -> list[dict[str, str]]:
    """One environment per local engine: with GPUs, each engine gets its own group of `tp` GPUs
    (data parallel across groups); on CPU, `dp` engines (default 1) share the cores."""
    gpus = detect_gpus() if gpus is None else gpus
    if gpus == 0:
        return cpu_envs(dp or 1)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [d.strip() for d in visible.split(",")] if visible else [str(i) for i in range(gpus)]
    tp = tp or 1
    size = engine_count(len(ids), tp, dp, "this machine")
    return [{"CUDA_VISIBLE_DEVICES": ",".join(ids[g * tp : (g + 1) * tp])} for g in range(size)]


def ray_layout(tp: int | None, dp: int | None, cluster: dict[str, float],
               needs_gpus: bool = True) -> tuple[int, dict[str, float]]:
    """(number of actors, resources of each): one per group of `tp` GPUs in the cluster unless
    `dp` says otherwise; one CPU each where there are no GPUs (or the engine needs none)."""
    gpus = int(cluster.get("GPU", 0)) if needs_gpus else 0
    if gpus == 0:
        cpus = int(cluster.get("CPU", 1))
        size = dp or 1
        if size > cpus:
            raise UserError(f"--data-parallel-size {size} needs {size} CPUs on the Ray cluster; it has "
                             f"{cpus}. Hint: lower --data-parallel-size or add nodes.")
        return size, {"num_cpus": 1, "num_gpus": 0}
    tp = tp or 1
    return engine_count(gpus, tp, dp, "the Ray cluster"), {"num_cpus": 1, "num_gpus": tp}


def detect_gpus() -> int:
    """Number of NVIDIA GPUs this process may use, without importing torch."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    if not shutil.which("nvidia-smi"):
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


def cpu_envs(engines: int) -> list[dict[str, str]]:
    """Several CPU engines each get their own cores (vLLM's CPU build pins its threads, by default
    all engines to the same ones); an explicit VLLM_CPU_OMP_THREADS_BIND is left alone."""
    if engines == 1 or "VLLM_CPU_OMP_THREADS_BIND" in os.environ:
        return [{} for _ in range(engines)]
    cores = sorted(os.sched_getaffinity(0))
    share = max(1, len(cores) // engines)
    envs = []
    for e in range(engines):
        mine = cores[(e * share) % len(cores):][:share]
        envs.append({"VLLM_CPU_OMP_THREADS_BIND": ",".join(map(str, mine)), "OMP_NUM_THREADS": str(len(mine))})
    return envs
