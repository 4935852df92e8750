"""`make chaos`: a reproducible torture run of the promise "every input line ends as exactly one
output row", with the fake engine.

Jobs over one set of inputs, each into a fresh output folder, run in rounds until it completes;
each round does one of:
  kill       a run is SIGKILLed at a random moment (mid-commit, mid-read, at start-up)
  two        two runs of the same command start at once; one may be killed
  dry        dry runs (and a second writer) are started while a run writes
  disk-full  the output's disk is filled up while a run writes (a small tmpfs; needs root)
  signal     a run gets SIGTERM or SIGINT at a random moment, often while it reads a file padded
             with blank lines (it must exit 3, or 0 if it had finished)
  collide    a job of its own over files whose names display alike (latin-1 bytes, redacted
             signatures), rows without ids: killed mid-run, rerun until complete, and checked
  manifest   a job of its own killed during its first manifest write (while the temporary file is
             written, or at its rename), then rerun until complete, and checked
The inputs are partitioned folders of JSON lines, gzip and Parquet with fuzzed lines mixed in
(random bytes, broken JSON, deep nesting, huge integers, lone surrogates, wrong types), and image
rows (data: URIs, some broken) for a vision model the fake engine serves. After
every round the commit records must not cover any line twice; a completed job's folder must hold
exactly one row per input line, its foreign file untouched, and no debris.

    python tests/chaos.py --rounds 40 --seed 1
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

ACTIONS = ("kill", "two", "dry", "disk-full", "signal", "collide", "manifest")
# A run that SIGKILLs itself during its first manifest write: at the temporary file's fsync
# (PIPELINE_CHAOS_KILL=write) or at its rename (=rename).
KILL_AT_FIRST_MANIFEST = """
import os, signal, sys
where, real_fsync, real_replace = os.environ["PIPELINE_CHAOS_KILL"], os.fsync, os.replace
def manifest_tmp(name):
    return name.endswith("-_manifest.json") and not os.path.exists(name.rsplit("/.tmp-", 1)[0] + "/_manifest.json")
def fsync(fd):
    if where == "write" and manifest_tmp(os.readlink(f"/proc/self/fd/{fd}")):
        os.kill(os.getpid(), signal.SIGKILL)
    return real_fsync(fd)
def replace(src, dst, *a, **k):
    if where == "rename" and manifest_tmp(str(src)):
        os.kill(os.getpid(), signal.SIGKILL)
    return real_replace(src, dst, *a, **k)
os.fsync, os.replace = fsync, replace
from pipeline.cli import main
sys.argv[0] = "pipeline"
main()
"""
# a 4x4 PNG: image rows for the fake engine serving a "vision model" (a folder with its config)
PNG_URI = ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAQAAAAECAIAAAAmkwkpAAAAFElEQVR4nGM8ISfHAANMDEgANwcANHYBDK9"
           "qubUAAAAASUVORK5CYII=")
COLLIDING = (b"caf\xe9.jsonl", b"caf\xe8.jsonl", b"batch?sig=1.jsonl", b"batch?sig=2.jsonl")


def fuzzed_line(rng: random.Random) -> bytes:
    kind = rng.randrange(9)
    if kind == 0:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 80))).replace(b"\n", b" ")
    if kind == 1:
        return b'{"messages": [{"role": "user", "content": "cut'
    if kind == 2:
        return b"[" * 5000 + b"]" * 5000
    if kind == 3:
        return b'{"max_tokens": ' + b"9" * 5000 + b"}"
    if kind == 4:
        return b'{"custom_id": "\\ud800", "messages": [{"role": "user", "content": "x"}]}'
    if kind == 5:
        return json.dumps(rng.choice([1, "text", None, [1, 2], {"messages": "no"}])).encode()
    if kind == 6:
        return json.dumps({"messages": [{"role": "user", "content": "hi"}],
                           "logit_bias": {"\u00b2": 1}, "tool_choice": {"type": "function", "function": None},
                           "model": ["a", "b"]}).encode()
    if kind == 7:
        return json.dumps({"custom_id": "x" * rng.randrange(1, 3000), "method": "POST",
                           "url": "/v1/chat/completions"}).encode()
    return b'{"messages": [{"role": "user", "content": "ok"}], "max_tokens": 5.0, "temperature": NaN}'


def make_inputs(root: Path, rng: random.Random, rows: int) -> int:
    """Partitioned inputs with fuzzed lines; returns how many rows (non-blank lines) they hold."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    def chat(i: int, p: int) -> bytes:
        return json.dumps({"custom_id": f"p{p}-{i}", "method": "POST", "url": "/v1/chat/completions",
                           "body": {"messages": [{"role": "user", "content": f"question {p}/{i}"}],
                                    "max_tokens": rng.randrange(1, 9)}}).encode()

    total = 0
    for p in (1, 2):
        folder = root / f"partition_key={p}"
        folder.mkdir(parents=True)
        lines = [chat(i, p) if rng.random() > 0.15 else fuzzed_line(rng) for i in range(rows)]
        data = b"\n".join(lines) + b"\n"
        if p == 1:
            (folder / "requests.jsonl").write_bytes(data)
        else:
            (folder / "requests.jsonl.gz").write_bytes(gzip.compress(data))
        total += sum(1 for line in lines if line.strip())
    folder = root / "partition_key=3"
    folder.mkdir()
    n = rows // 2
    pq.write_table(pa.table({"custom_id": [f"pq-{i}" for i in range(n)],
                             "messages": [[{"role": "user", "content": f"parquet {i}"}] for i in range(n)],
                             "max_tokens": [float(rng.randrange(1, 9)) for _ in range(n)]}),
                   folder / "requests.parquet")
    folder = root / "partition_key=4"  # seconds of reading for few rows: signals land mid-read
    folder.mkdir()
    (folder / "padded.jsonl").write_bytes(b"".join(chat(i, 4) + b"\n" * 20_000 for i in range(n // 4)))
    folder = root / "partition_key=5"  # image rows: a data: URI each, one in five broken
    folder.mkdir()
    (folder / "images.jsonl").write_bytes(b"".join(image(i, rng.random() < 0.2) + b"\n" for i in range(n // 5)))
    return total + n + n // 4 + n // 5


def image(i: int, broken: bool) -> bytes:
    url = PNG_URI[:-12] + "!!" if broken else PNG_URI
    return json.dumps({"custom_id": f"img-{i}", "body": {"messages": [{"role": "user", "content": [
        {"type": "text", "text": f"picture {i}"}, {"type": "image_url", "image_url": {"url": url}}]}]}}).encode()


def make_vision_model(folder: Path) -> Path:
    """A "vision model" for the fake engine: only its config, which says it sees images."""
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "idefics3", "vision_config": {}}))
    return folder


def make_colliding(root: Path, rows: int) -> int:
    """Files whose names display alike, of rows without ids (derived from file and line)."""
    os.makedirs(root)
    for name in COLLIDING:
        with open(os.path.join(os.fsencode(root), name), "wb") as f:
            f.write(b"".join(json.dumps({"messages": [{"role": "user", "content": f"q{i}"}],
                                         "max_tokens": 3}).encode() + b"\n" for i in range(rows)))
    return rows * len(COLLIDING)


class Chaos:
    def __init__(self, work: Path, seed: int, rows: int):
        self.rng = random.Random(seed)
        self.inputs = work / "inputs"
        self.expected = make_inputs(self.inputs, self.rng, rows)
        self.colliding = work / "colliding"
        self.colliding_rows = make_colliding(self.colliding, rows // 10)
        self.model = make_vision_model(work / "vision-model")
        self.disk = work / "disk"
        self.disk.mkdir()
        self.tmpfs = _mount_tmpfs(self.disk, "64m")
        self.counts: Counter[str] = Counter()
        self.totals: Counter[str] = Counter()
        self.jobs = 0
        self.new_job()

    def new_job(self) -> None:
        self.jobs += 1
        self.out = self.disk / f"out-{self.jobs}"
        self.out.mkdir()
        (self.out / "notes.txt").write_text("a file the pipeline did not write\n")

    def command(self, *extra: str, inputs: Path | None = None, out: Path | None = None) -> list[str]:
        delay = self.rng.choice(["0.002", "0.005", "0.01", "0.02"])
        return [sys.executable, "-m", "pipeline", "run", str(inputs or self.inputs), "-o", str(out or self.out),
                "--engine", "fake", "-m", str(self.model), "-q", "--allow-foreign-files",
                "--checkpoint-every", str(self.rng.choice([1, 3, 7, 20])), "--max-in-flight", "4",
                "--lease-timeout", "30", "--engine-option", f"step_delay={delay}", *extra]

    def start(self, *extra: str, kill_at: str | None = None, **where: Path) -> subprocess.Popen:
        self.counts["runs"] += 1
        command = self.command(*extra, **where)
        if kill_at:  # the same command, through a bootstrap that kills it at that instant
            command[1:3] = ["-c", KILL_AT_FIRST_MANIFEST]
        return subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "PIPELINE_CHAOS_KILL": kill_at or ""})

    def finish(self, proc: subprocess.Popen, timeout: float = 120) -> int:
        _, err = proc.communicate(timeout=timeout)
        self.counts[f"exit {proc.returncode}"] += 1
        if proc.returncode not in (0, 3):
            raise SystemExit(f"a run exited {proc.returncode}:\n{err[-3000:]}")
        if proc.returncode == 3 and "another run" in err:
            self.counts["second writer refused"] += 1
        if proc.returncode == 3 and "No space left" in err:
            self.counts["stopped by a full disk"] += 1
        if proc.returncode == 3 and "interrupted" in err:
            self.counts["interrupted, exit 3"] += 1
        return proc.returncode

    def kill_later(self, proc: subprocess.Popen, low: float = 0.2, high: float = 3.0) -> None:
        time.sleep(self.rng.uniform(low, high))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            self.counts["kills"] += 1
        proc.communicate()

    # ---- rounds -------------------------------------------------------------------------------
    def round(self, action: str) -> None:
        self.counts[f"round {action}"] += 1
        if action == "kill":
            self.kill_later(self.start())
        elif action == "two":
            a, b = self.start(), self.start()
            if self.rng.random() < 0.5:
                self.kill_later(self.rng.choice([a, b]))
            for p in (a, b):
                if p.returncode is None:
                    self.finish(p)
        elif action == "dry":
            writer = self.start()
            for _ in range(self.rng.randrange(1, 3)):
                dry = subprocess.run(self.command("--dry-run"), cwd=REPO, capture_output=True, text=True)
                self.counts["dry runs"] += 1
                if dry.returncode not in (0, 3):
                    raise SystemExit(f"a dry run exited {dry.returncode}:\n{dry.stderr[-3000:]}")
            self.kill_later(writer, 0.0, 1.0) if self.rng.random() < 0.5 else self.finish(writer)
        elif action == "disk-full":
            if not self.tmpfs:
                self.counts["disk-full skipped (no tmpfs)"] += 1
                return
            filler = self.disk / "filler"
            free = shutil.disk_usage(self.disk).free
            with open(filler, "wb") as f:
                f.truncate(0)
                f.write(b"\0" * max(0, free - self.rng.randrange(4096, 60_000)))
            try:
                self.finish(self.start())
            finally:
                filler.unlink()
        elif action == "signal":
            proc = self.start("--order", self.rng.choice(["input", "auto", "prefix"]))
            time.sleep(self.rng.uniform(0.3, 3.0))
            if proc.poll() is None:
                proc.send_signal(self.rng.choice([signal.SIGTERM, signal.SIGINT]))
                self.counts["signals"] += 1
            self.finish(proc)
        elif action == "collide":
            self.collide()
        elif action == "manifest":
            self.first_manifest()
        self.check_records()

    def first_manifest(self) -> None:
        """A job killed during its first manifest write: every rerun must finish it (the
        temporary file is ours, never a foreign file that blocks the job)."""
        import polars as pl

        out = self.disk / f"manifest-{self.counts['round manifest']}"
        killed = self.start(inputs=self.colliding, out=out, kill_at=self.rng.choice(["write", "rename"]))
        killed.communicate(timeout=120)
        if killed.returncode == -signal.SIGKILL and not (out / "_manifest.json").exists():
            self.counts["first manifest kills"] += 1
        while self.finish(self.start(inputs=self.colliding, out=out)) != 0:
            pass
        df = pl.concat([pl.read_parquet(p) for p in sorted(out.glob("part-*.parquet"))])
        self.totals.update({"colliding rows in": self.colliding_rows, "colliding rows out": df.height,
                            "colliding duplicated": df.height - df["custom_id"].n_unique(),
                            "colliding lost": self.colliding_rows - df["custom_id"].n_unique(),
                            "debris files": len([p for p in out.iterdir() if p.name.startswith(".tmp-")])})
        shutil.rmtree(out)

    def collide(self) -> None:
        """A job over files that display alike: killed mid-run, finished by reruns, then every
        line must have exactly one row, with ids of its own."""
        import polars as pl

        out = self.disk / f"colliding-{self.counts['round collide']}"
        self.kill_later(self.start(inputs=self.colliding, out=out), 0.5, 3.0)
        while self.finish(self.start(inputs=self.colliding, out=out)) != 0:
            pass
        df = pl.concat([pl.read_parquet(p) for p in sorted(out.glob("part-*.parquet"))])
        ids = df["custom_id"].n_unique()
        self.totals.update({"colliding rows in": self.colliding_rows, "colliding rows out": df.height,
                            "colliding duplicated": df.height - ids, "colliding lost": self.colliding_rows - ids})
        shutil.rmtree(out)

    def check_records(self) -> None:
        """Committed records never cover one line twice, whatever happened."""
        from pipeline.output.folder import Output
        from pipeline.storage import Location

        self.counts["duplicated"] += Output(Location.of(str(self.out))).read_state().committed.repeated

    def complete(self) -> bool:
        return (self.out / "_SUCCESS").exists()

    def verify(self) -> None:
        """The job's folder holds one row per input line; then the next job starts."""
        import polars as pl

        parts = sorted(self.out.glob("part-*.parquet"))
        df = pl.concat([pl.read_parquet(p) for p in parts])
        keys = Counter(zip(df["source_file"].to_list(), df["source_line"].to_list(), strict=True))
        from pipeline.output.folder import Output
        from pipeline.storage import Location

        recorded = {r["part"] for r in Output(Location.of(str(self.out))).read_state().records}
        self.totals.update({
            "image rows": int(df["custom_id"].str.starts_with("img-").sum()),
            "jobs completed": 1,
            "rows in": self.expected,
            "rows out": df.height,
            "duplicated": sum(n - 1 for n in keys.values() if n > 1),
            "lost": self.expected - len(keys),
            "error rows": int(df["error"].is_not_null().sum()),
            "debris files": len({p.name for p in parts} - recorded),
            "foreign files lost": int(not (self.out / "notes.txt").exists()),
        })
        shutil.rmtree(self.out)
        self.new_job()

    def final(self) -> dict[str, int]:
        # a run killed a moment ago may still hold a lease: its pid is dead, so this takes over
        code = self.finish(self.start(), timeout=600)
        if code != 0:
            code = self.finish(self.start(), timeout=600)
        self.verify()
        return {**self.totals, "duplicated": self.totals["duplicated"] + self.counts["duplicated"],
                "lost": self.totals["lost"] + self.totals["colliding lost"],
                "final exit": code}


def _mount_tmpfs(path: Path, size: str) -> bool:
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                         capture_output=True)
    return res.returncode == 0


def run(rounds: int, seed: int, rows: int) -> dict[str, int]:
    work = Path(tempfile.mkdtemp(prefix="pipeline-chaos-"))
    chaos = None
    try:
        chaos = Chaos(work, seed, rows)
        for i in range(rounds):
            chaos.round(ACTIONS[i % len(ACTIONS)] if i < len(ACTIONS) else chaos.rng.choice(ACTIONS))
            if chaos.complete():
                chaos.verify()
        result = chaos.final()
        return {**{k: v for k, v in sorted(chaos.counts.items()) if k != "duplicated"}, **result}
    finally:
        if chaos is not None and chaos.tmpfs:
            subprocess.run(["umount", "-l", str(chaos.disk)], check=False)
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rows", type=int, default=600, help="rows per JSON-lines input file")
    args = parser.parse_args()
    started = time.monotonic()
    result = run(args.rounds, args.seed, args.rows)
    print(f"chaos: {args.rounds} rounds, seed {args.seed}, {time.monotonic() - started:.0f} s")
    for key, value in result.items():
        print(f"  {key:32s} {value}")
    ok = (result["duplicated"] == 0 and result["lost"] == 0 and result["rows out"] == result["rows in"]
          and result["debris files"] == 0 and result["foreign files lost"] == 0
          and result.get("colliding duplicated", 0) == 0)
    print("PASS: every input line has exactly one row" if ok else "FAIL")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
