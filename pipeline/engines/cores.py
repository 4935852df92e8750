"""Keeping our own work off the cores that vLLM's CPU build runs its model on.

The CPU build binds each engine's model threads (one OpenMP team) to cores of their own and
leaves the rest of the machine's cores (`VLLM_CPU_NUM_OF_RESERVED_CPU`, one per engine by
default) to its scheduler and front end. Nothing keeps other processes off the model's cores:
the engine's front end reading outputs, our worker turning them into results and the run's main
process writing rows land there now and then, preempt a model thread, and the whole OpenMP team
waits for it. `pin_beside_model` moves every thread of a process tree, except the model's bound
processes, onto the cores the model left free; the engine worker calls it once the engine is up
and reports the cores, and the run's main process pins itself there too (engines/local.py).

On a GPU machine nothing is bound, so nothing moves. Linux only (`sched_setaffinity`); anywhere
else, and wherever the kernel refuses, the processes simply stay where they were.
"""

from __future__ import annotations

import os
from pathlib import Path


def threads(pid: int) -> list[int]:
    """The thread ids of a process (itself when /proc cannot say)."""
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return [pid]


def children(pid: int) -> list[int]:
    """All descendants of a process, from /proc (no psutil in the run's main process)."""
    kids: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        kids.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for kid in kids.get(todo.pop(), ()):
            out.append(kid)
            todo.append(kid)
    return out


def model_cores(pids: list[int]) -> set[int]:
    """The cores that these processes are bound to (a strict subset of what we may use): the
    model threads of vLLM's CPU build. Empty on a GPU machine."""
    allowed, bound = set(os.sched_getaffinity(0)), set()
    for kid in pids:
        try:
            cores = set(os.sched_getaffinity(kid))
        except OSError:
            continue
        if cores < allowed:
            bound |= cores
    return bound


def pin(pid: int, cores: set[int]) -> bool:
    """Every thread of `pid` onto `cores`; False where the kernel refuses."""
    ok = True
    for tid in threads(pid):
        try:
            os.sched_setaffinity(tid, cores)
        except OSError:
            ok = False
    return ok


def pin_beside_model() -> list[int] | None:
    """This process and its unbound descendants (vLLM's scheduler, ...) onto the cores the model
    left free; the cores, or None when nothing is bound or nothing would be left."""
    if not hasattr(os, "sched_getaffinity"):
        return None
    me = os.getpid()
    kids = children(me)
    allowed = set(os.sched_getaffinity(0))
    bound = model_cores(kids)
    free = allowed - bound
    if not bound or not free:
        return None
    for pid in [me, *kids]:
        try:
            cores = set(os.sched_getaffinity(pid))
        except OSError:
            continue
        if not cores <= bound:  # not one of the model's own processes
            pin(pid, free)
    return sorted(free)
