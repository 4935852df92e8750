"""The output directory: part files committed atomically, the manifest that records them,
and the completion marker written last.

Commit protocol (the writer's job alone):
1. a part's bytes go to a name no other attempt uses (`part-<attempt>-<n>`): on local disk
   through a temporary name and a rename, on object stores as a single PUT;
2. the manifest (the only source of truth for resume) is rewritten with the part and the
   (file, line) keys of its rows;
3. when every request has its row, `_report.json`, then `_SUCCESS` (exclusive create) go last.
A part not in the manifest is debris of a killed attempt and is removed at the next start.
"""

from __future__ import annotations

import hashlib
import io as _io
import json
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .io import is_local, open_output_fs, redact
from .report import part_stats
from .rows import encode_jsonl
from .schema import OUTPUT_SCHEMA

MANIFEST = "_manifest.json"
REPORT = "_report.json"
SUCCESS = "_SUCCESS"
OURS = (MANIFEST, REPORT, SUCCESS)


class StorageError(RuntimeError):
    """Writing the output failed (disk full, upload refused); committed parts stay valid."""


class OutputConflict(RuntimeError):
    """The output directory holds a different job's output."""


def fingerprint(detail: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(detail, sort_keys=True).encode()).hexdigest()[:32]


@dataclass
class Committed:
    """Which (input file, line) pairs already have a committed row: one bitmap per input file."""

    bitmaps: dict[int, np.ndarray] = field(default_factory=dict)
    count: int = 0

    def add(self, file_index: int, ranges: list[list[int]]) -> None:
        top = max(end for _, end in ranges)
        bits = self.bitmaps.get(file_index)
        if bits is None or len(bits) <= top:
            grown = np.zeros(max(top + 1, 2 * len(bits) if bits is not None else 0), dtype=bool)
            if bits is not None:
                grown[: len(bits)] = bits
            bits = self.bitmaps[file_index] = grown
        for start, end in ranges:
            bits[start : end + 1] = True
            self.count += end - start + 1

    def __contains__(self, key: tuple[int, int]) -> bool:
        bits = self.bitmaps.get(key[0])
        return bits is not None and key[1] < len(bits) and bool(bits[key[1]])


def _ranges(lines: list[int]) -> list[list[int]]:
    out: list[list[int]] = []
    for n in sorted(lines):
        if out and n == out[-1][1] + 1:
            out[-1][1] = n
        else:
            out.append([n, n])
    return out


class OutputDir:
    """One job's output location, local or on any fsspec filesystem."""

    def __init__(self, url: str, storage_options: dict[str, Any] | None, fmt: str = "parquet"):
        self.url, self.fmt = redact(url), fmt
        self.fs, self.root = open_output_fs(url, storage_options)
        self.local = is_local(self.fs)
        self.attempt = uuid.uuid4().hex[:8]
        self.manifest: dict[str, Any] = {}
        self.file_index: dict[str, int] = {}
        self._seq = 0

    def path(self, name: str) -> str:
        return f"{self.root}/{name}"

    # ---- reading state -------------------------------------------------------------------
    def read_json(self, name: str) -> dict[str, Any] | None:
        try:
            return json.loads(self.fs.cat_file(self.path(name)))
        except FileNotFoundError:
            return None

    def complete(self) -> bool:
        return self.fs.exists(self.path(SUCCESS))

    def open(self, detail: dict[str, Any], overwrite: bool) -> Committed:
        """Start or resume the job described by `detail` (inputs and options); returns what is
        already committed. Refuses a directory that holds another job's output."""
        fp = fingerprint(detail)
        old = self.read_json(MANIFEST)
        if old is not None and old.get("fingerprint") != fp and not overwrite:
            raise OutputConflict(
                f"{self.url} holds the output of a different job ({_diff(old.get('job', {}), detail)}). "
                "Hint: use another --output directory, or pass --overwrite to discard that output."
            )
        if overwrite and old is not None and old.get("fingerprint") != fp:
            self._remove_all()
            old = None
        self.manifest = old or {
            "version": 1, "fingerprint": fp, "job": detail, "format": self.fmt,
            "parts": [], "state": "running", "created": _now(),
        }
        self.file_index = {f["url"]: i for i, f in enumerate(detail["inputs"])}
        self._remove_debris()
        committed = Committed()
        for part in self.manifest["parts"]:
            for idx, ranges in part["keys"].items():
                committed.add(int(idx), ranges)
        return committed

    def _listing(self) -> list[str]:
        try:
            return [p.rsplit("/", 1)[-1] for p in self.fs.ls(self.root, detail=False)]
        except FileNotFoundError:
            return []

    def _remove_debris(self) -> None:
        keep = {p["name"] for p in self.manifest["parts"]}
        for name in self._listing():
            if (name.startswith("part-") and name not in keep) or name.startswith(".tmp-"):
                self.fs.rm(self.path(name))

    def _remove_all(self) -> None:
        for name in self._listing():
            if name in OURS or name.startswith(("part-", ".tmp-")):
                self.fs.rm(self.path(name))

    # ---- writing ---------------------------------------------------------------------------
    def commit(self, rows: list[dict[str, Any]]) -> str:
        """Write one part atomically and record it in the manifest."""
        rows.sort(key=lambda r: (self.file_index.get(r["source_file"], -1), r["source_line"]))
        self._seq += 1
        ext = "parquet" if self.fmt == "parquet" else "jsonl"
        name = f"part-{self.attempt}-{self._seq:05d}.{ext}"
        self.put(name, self._encode(rows))
        keys: dict[str, list[int]] = {}
        for r in rows:
            keys.setdefault(str(self.file_index[r["source_file"]]), []).append(r["source_line"])
        self.manifest["parts"].append(
            {"name": name, "rows": len(rows), "keys": {k: _ranges(v) for k, v in keys.items()},
             "stats": part_stats(rows)}
        )
        self.manifest["updated"] = _now()
        self.put(MANIFEST, json.dumps(self.manifest).encode())
        return name

    def _encode(self, rows: list[dict[str, Any]]) -> bytes:
        if self.fmt != "parquet":
            return encode_jsonl(rows)
        table = pa.Table.from_pylist(rows, schema=OUTPUT_SCHEMA)
        buf = _io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        return buf.getvalue()

    def put(self, name: str, data: bytes) -> None:
        """Make `name` hold `data` atomically: readers see the old file or the new, never half."""
        target = self.path(name)
        try:
            if self.local:
                tmp = self.path(f".tmp-{self.attempt}-{name}")
                try:
                    with open(tmp, "wb") as f:
                        f.write(data)
                        f.flush()
                        os.fsync(f.fileno())
                    os.replace(tmp, target)
                finally:
                    if os.path.exists(tmp):
                        os.remove(tmp)
            else:
                self.fs.pipe_file(target, data)
        except OSError as e:
            raise StorageError(f"writing {redact(self.url)}/{name} failed: {e}") from e

    def finish(self, report: dict[str, Any]) -> bool:
        """Write the report, mark the manifest complete, then the completion marker (exclusive).
        Returns False when another run created the marker first."""
        self.put(REPORT, json.dumps(report, indent=2).encode())
        self.manifest["state"] = "complete"
        self.put(MANIFEST, json.dumps(self.manifest).encode())
        marker = json.dumps({"fingerprint": self.manifest["fingerprint"], "requests": report["requests"],
                             "finished": _now()}).encode()
        try:
            create_exclusive(self.fs, self.path(SUCCESS), marker, self.local)
        except FileExistsError:
            return False
        except OSError as e:
            raise StorageError(f"writing {redact(self.url)}/{SUCCESS} failed: {e}") from e
        return True


def create_exclusive(fs, path: str, data: bytes, local: bool) -> None:
    """Create `path` only if it does not exist (raises FileExistsError otherwise).

    fsspec's mode="create" is a conditional PUT on S3 (If-None-Match), GCS (ifGenerationMatch=0)
    and Azure (overwrite=False), checked against moto, fake-gcs-server and azurite.
    """
    if local:
        with open(path, "xb") as f:
            f.write(data)
    else:
        fs.pipe_file(path, data, mode="create")


class PartWriter:
    """Buffers output rows and commits a part every `every` rows or `seconds` seconds."""

    def __init__(self, out: OutputDir, every: int, seconds: float, on_commit: Callable[[str, int], None]):
        self.out, self.every, self.seconds, self.on_commit = out, every, seconds, on_commit
        self.rows: list[dict[str, Any]] = []
        self.last = time.monotonic()

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if len(self.rows) >= self.every:
            self.flush()

    def tick(self) -> None:
        if self.rows and time.monotonic() - self.last >= self.seconds:
            self.flush()

    def flush(self) -> None:
        if self.rows:
            rows, self.rows = self.rows, []
            name = self.out.commit(rows)
            self.on_commit(name, len(rows))
        self.last = time.monotonic()


def _diff(old: dict[str, Any], new: dict[str, Any]) -> str:
    """Say what differs between two job descriptions: the inputs, and which options."""
    changed = ["inputs"] if old.get("inputs") != new.get("inputs") else []
    old_opts, new_opts = old.get("options", {}), new.get("options", {})
    changed += [f"--{k.replace('_', '-')}" for k in sorted(set(old_opts) | set(new_opts))
                if old_opts.get(k) != new_opts.get(k)]
    return "changed: " + (", ".join(changed) or "job description")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
