"""The output folder: who may write it, what it holds, and how a part is committed.

Layout (every name ours; anything else in the folder is a foreign file and is never touched):

    _manifest.json            the job (fingerprint, inputs, options) and its attempts
    _lease/<gen>.json         the writer: one at a time (see lease.py)
    _commits/<attempt>-<seq>.json   one record per committed part: its rows' (file, line) keys,
                              and the rows held for a repair (`pending`: their attempts so far)
    part-<attempt>-<seq>.parquet    the rows (or .jsonl with --format openai)
    results/<input>.results.jsonl   line formats: each input's lines, assembled from the parts
                              when every request has its row (results.py)
    _report.json, _SUCCESS    written last, when every request has its row
    _report.html              the page `pipeline report DIR` writes

Commit protocol (the lease holder's job alone):
1. the part's bytes go to a name no other attempt uses: on local disk through a temporary name
   and a rename, on object stores as a single PUT;
2. its commit record is written (one small file: work per checkpoint stays bounded however long
   the job runs). A part without a record is not committed.
3. when every request has its row: with a line format, the per-input result files (results.py),
   then `_report.json`, then `_SUCCESS` (exclusive create).

An attempt's records count only up to the cutoff that the next writer wrote into the manifest
when it took over, so a writer that lost its lease while paused can never add rows twice.
Only files that the manifest's attempts prove ours are ever removed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.exits import STOPS, UserError
from pipeline.output.formats import FORMAT_EXT, LINE_FORMATS, encode, failed
from pipeline.output.lease import FOLDER as LEASES
from pipeline.output.lease import Lease, LeaseLost
from pipeline.output.results import RESULTS, assemble
from pipeline.output.stats import part_stats
from pipeline.storage import Location, StorageError

log = logging.getLogger("pipeline")
MANIFEST = "_manifest.json"
REPORT = "_report.json"
SUCCESS = "_SUCCESS"
COMMITS = "_commits"
REPORT_PAGE = "_report.html"  # `pipeline report DIR` writes it
_PART = re.compile(r"^part-([0-9a-f]{8})-(\d{5,})\.(parquet|jsonl)$")
_RECORD = re.compile(r"^([0-9a-f]{8})-(\d{5,})\.json$")
_TMP = re.compile(r"^\.tmp-[0-9a-f]{12}-(.+)$")  # storage.put_atomic's temporary names
# the files we write through a temporary name at the top of the folder: a leftover of one is ours
# in every state of the folder, even before the first manifest exists
_OURS_ATOMIC = frozenset({MANIFEST, REPORT, REPORT_PAGE})


class OutputConflict(UserError):
    """The output folder holds a different job's output, or files this tool did not write."""


__all__ = ["Claim", "Committed", "LeaseLost", "Output", "OutputConflict", "PartWriter", "State", "StorageError"]


def fingerprint(detail: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(detail, sort_keys=True).encode()).hexdigest()[:32]


@dataclass
class Committed:
    """Which (input file, line) pairs already have a committed row: one bitmap per input file."""

    bitmaps: dict[int, np.ndarray] = field(default_factory=dict)
    count: int = 0  # distinct lines
    repeated: int = 0  # lines added again: two records covering one line (never, if all is well)

    def add(self, file_index: int, ranges: list[list[int]]) -> None:
        """Mark the lines of `ranges` ([first, last] pairs, each inclusive) of one input file."""
        spans = np.asarray(ranges, dtype=np.int64).reshape(-1, 2)
        spans = spans[spans[:, 1] >= spans[:, 0]]
        if not len(spans):
            return
        lengths = spans[:, 1] - spans[:, 0] + 1
        # every line of every range, without a Python loop (prefix order commits one range a row)
        lines = np.arange(int(lengths.sum())) + np.repeat(spans[:, 0] - (np.cumsum(lengths) - lengths), lengths)
        top = int(spans[:, 1].max())
        bits = self.bitmaps.get(file_index)
        if bits is None or len(bits) <= top:
            grown = np.zeros(max(top + 1, 2 * len(bits) if bits is not None else 0), dtype=bool)
            if bits is not None:
                grown[: len(bits)] = bits
            bits = self.bitmaps[file_index] = grown
        new = len(lines) - int(bits[lines].sum())
        self.count += new
        self.repeated += len(lines) - new
        bits[lines] = True

    def __contains__(self, key: tuple[int, int]) -> bool:
        bits = self.bitmaps.get(key[0])
        return bits is not None and key[1] < len(bits) and bool(bits[key[1]])


@dataclass
class State:
    """What an output folder holds, read without changing anything."""

    manifest: dict[str, Any] | None
    records: list[dict[str, Any]]  # accepted commit records, in commit order
    complete: bool
    foreign: list[str]  # names this tool did not write
    debris: list[str]  # our files that no accepted record covers (removable)
    # the records' keys, read into bitmaps: the records themselves are kept without them (in
    # prefix order a record holds one range per row: 20M rows would be gigabytes of lists)
    committed: Committed = field(default_factory=Committed)
    # rows held for a repair when their record was committed, and not committed since: (input
    # file, line) -> the entry the run that held them wrote (verdicts/repairs.py reads it)
    pending: dict[tuple[int, int], Any] = field(default_factory=dict)

    @property
    def fingerprint(self) -> str | None:
        return (self.manifest or {}).get("fingerprint")


class Output:
    """One job's output folder, local or on any fsspec filesystem."""

    def __init__(self, loc: Location, fmt: str = "parquet", schema=None):
        self.loc, self.fmt = loc, fmt
        self.schema = schema  # the parts' Arrow schema; None: schema.OUTPUT_SCHEMA

    @property
    def display(self) -> str:
        return self.loc.display

    def job_state(self) -> State:
        """The state of a folder that must hold a job of this tool (status, report)."""
        self.check_not_file()
        state = self.read_state()
        if state.manifest is None:
            raise FileNotFoundError(f"{self.display} holds no job of this tool (no _manifest.json). "
                                    "Hint: pass the --output folder of a `pipeline run`")
        return state

    def keep_committed_columns(self, records: list[dict[str, Any]]) -> str | None:
        """On a resume, write the parts still to come with the columns of the job's committed parts:
        an earlier version of this tool may have started the job with other columns, and every part
        of one job must read as one table. Returns what differs (for a warning), or None."""
        if self.fmt != "parquet" or not records:
            return None
        import pyarrow as pa
        import pyarrow.parquet as pq

        from pipeline.schema import OUTPUT_SCHEMA

        data = self.loc.child(records[0]["part"]).cat()
        if data is None:
            return None
        kept, ours = pq.read_schema(pa.BufferReader(data)).remove_metadata(), self.schema or OUTPUT_SCHEMA
        if kept.equals(ours, check_metadata=False):
            return None
        self.schema = kept
        dropped = [n for n in ours.names if n not in kept.names]
        empty = [n for n in kept.names if n not in ours.names]
        return (f"{self.display}: this job's committed parts have other columns than this version of pipeline "
                f"writes (an earlier version started the job); its remaining rows keep the job's columns, so "
                f"every part reads as one table (not written: {', '.join(dropped) or 'none'}; left empty: "
                f"{', '.join(empty) or 'none'}). Hint: for this version's columns, run into a new --output "
                "folder or pass --overwrite")

    def check_not_file(self) -> None:
        info = self.loc.info()
        if info is not None and info.get("type") != "directory":
            raise OutputConflict(f"--output {self.display} is a file; the output is a folder of part "
                                 "files. Hint: name a new or empty folder")

    def read_report(self) -> dict[str, Any]:
        """The finished run's `_report.json` ({} when there is none or it cannot be read)."""
        data = self.loc.child(REPORT).cat()
        try:
            report = json.loads(data) if data else {}
        except ValueError:
            return {}
        return report if isinstance(report, dict) else {}

    def read_state(self) -> State:
        """Classify every name in the folder; changes nothing."""
        names = self.loc.names()
        raw = self.loc.child(MANIFEST).cat() if MANIFEST in names else None
        manifest = _json(raw, self.loc.child(MANIFEST), _valid_manifest) if raw is not None else None
        attempts = {a["id"]: a.get("cutoff") for a in (manifest or {}).get("attempts", [])}
        # the first version's manifest listed its parts itself: they are ours too
        legacy = {p.get("name") for p in (manifest or {}).get("parts", []) if isinstance(p, dict)}
        accepted: list[str] = []
        debris: list[str] = []
        if manifest is not None and COMMITS in names:
            for name in self.loc.child(COMMITS).names():
                m = _RECORD.match(name)
                if m is None or m.group(1) not in attempts:
                    continue  # not ours: left alone
                cutoff = attempts[m.group(1)]
                if cutoff is not None and int(m.group(2)) > cutoff:
                    debris.append(f"{COMMITS}/{name}")
                    continue
                accepted.append(name)
        records, committed, pending = self._read_records(accepted)
        covered = {r["part"] for r in records}
        foreign: list[str] = []
        ours_fixed = ({MANIFEST, REPORT, SUCCESS, COMMITS, REPORT_PAGE, LEASES} if manifest is not None
                      else {COMMITS, LEASES})
        if manifest is not None and manifest.get("format") in LINE_FORMATS:
            ours_fixed.add(RESULTS)
        for name in names:
            tmp = _TMP.match(name)
            base = tmp.group(1) if tmp else name
            part = _PART.match(base)
            if part and (part.group(1) in attempts or base in legacy):
                if tmp or name not in covered:
                    debris.append(name)
            elif base in ours_fixed or (tmp and base in _OURS_ATOMIC):
                if tmp:  # a write killed before its rename (the first manifest's too): ours, removable
                    debris.append(name)
            else:
                foreign.append(name)
        complete = manifest is not None and SUCCESS in names
        return State(manifest, records, complete, foreign, debris, committed, pending)

    def _read_records(self, names: list[str], batch: int = 256) -> tuple[list[dict[str, Any]], Committed, dict]:
        """The commit records of these names, in commit order and without their keys, the lines
        their keys cover, and the rows still pending (the latest record's entry of each line not
        committed); read `batch` records at a time, so memory holds one batch."""
        records, committed, held = [], Committed(), []
        for start in range(0, len(names), batch):
            paths = [f"{COMMITS}/{n}" for n in names[start : start + batch]]
            contents = self._cat_many(paths)
            for path in paths:
                record = _json(contents.pop(path), self.loc.child(path), _valid_record)
                for idx, ranges in record["keys"].items():
                    committed.add(int(idx), ranges)
                if record.get("pending"):
                    held.append((record["order"], record["part"], record["pending"]))
                records.append(_without_keys(record))
        records.sort(key=lambda r: (r["order"], r["part"]))
        pending: dict[tuple[int, int], Any] = {}
        for _, _, entries in sorted(held, key=lambda h: h[:2]):  # a later record's entry wins
            for file, lines in entries.items():
                for line, entry in lines.items():
                    if (int(file), int(line)) not in committed:
                        pending[int(file), int(line)] = entry
        return records, committed, pending

    def _cat_many(self, names: list[str]) -> dict[str, bytes]:
        if not names:
            return {}
        paths = {self.loc.child(n).path: n for n in names}
        got = self.loc._call("reading", lambda: self.loc.fs.cat(list(paths)))
        return {paths[p]: data for p, data in got.items()}

    # ---- claiming --------------------------------------------------------------------------
    def claim(self, detail: dict[str, Any], *, overwrite: bool, allow_foreign: bool,
              lease_timeout: float, about: dict[str, Any] | None = None) -> Claim:
        """Take the folder for this job: lease it, record a new attempt (cutting off every earlier
        attempt at what it committed), remove our own debris. Returns the writer."""
        self.check_not_file()
        self.loc.makedirs()
        self.loc.child(COMMITS).makedirs()
        lease = Lease.acquire(self.loc, lease_timeout)
        try:
            state = self.read_state()
            refuse_foreign(self, state, allow_foreign)
            fp = fingerprint(detail)
            if state.manifest is not None and state.fingerprint != fp:
                if not overwrite:
                    raise OutputConflict(conflict_message(self, state, detail))
                self._remove(_ours(state))
                state = self.read_state()
            manifest = state.manifest or {"version": 2, "fingerprint": fp, "job": detail,
                                          "format": self.fmt, "created": _now(), "attempts": []}
            attempt = uuid.uuid4().hex[:8]
            last_seq = _last_seqs(state)
            for a in manifest["attempts"]:
                if a.get("cutoff") is None:
                    a["cutoff"] = last_seq.get(a["id"], 0)
            manifest["attempts"].append({"id": attempt, "lease": lease.generation, "started": _now(),
                                         "cutoff": None, **(about or {})})
            lease.check()
            self.loc.child(MANIFEST).put_atomic(json.dumps(manifest, indent=1).encode())
            self._remove(state.debris + [f"{COMMITS}/{n}" for n in _beyond_cutoff(self.loc, manifest)])
            lease.remove_older()
        except BaseException:
            lease.release()
            raise
        return Claim(self, lease, manifest, attempt, state, detail)

    def _remove(self, names: list[str]) -> None:
        for name in names:
            self.loc.child(name).rm(recursive=name == RESULTS)


class Claim:
    """The lease holder's handle: commits parts, then finishes the job."""

    def __init__(self, out: Output, lease: Lease, manifest: dict[str, Any], attempt: str,
                 state: State, detail: dict[str, Any]):
        self.out, self.lease, self.manifest, self.attempt = out, lease, manifest, attempt
        self._before = state.committed
        self.pending = state.pending  # rows an earlier attempt held for a repair (State.pending)
        # The records' stats, without their keys: the bitmaps above hold what was committed
        # before, and this run's keys need not stay in memory either.
        self.records = list(state.records)
        self.files = [f["file"] for f in detail["inputs"]]  # displayed names, by index
        self.split_errors = bool(detail["options"].get("split_errors"))
        self._seq = 0
        self.positions = None  # intake's Positions: where input lines lie, handed to each record

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def committed(self) -> Committed:
        """The rows committed before this claim."""
        return self._before

    def commit(self, keyed: list[tuple[int, dict[str, Any]]],
               pending: dict[tuple[int, int], Any] | None = None) -> str:
        """Write one part atomically, then its commit record. `keyed`: (input file index, row)
        pairs; the index, never the displayed `source_file` (two files can display alike), keys
        the row. `pending`: rows held for a repair, (file index, line) -> their entry, committed
        with the record (State.pending); a part may hold no rows and only those."""
        keyed.sort(key=lambda fr: (fr[0], fr[1]["source_line"]))
        rows = [r for _, r in keyed]
        self._seq += 1
        name = f"part-{self.attempt}-{self._seq:05d}.{FORMAT_EXT[self.out.fmt]}"
        self.lease.check()
        self.out.loc.child(name).put_atomic(encode(rows, self.out.fmt, self.out.schema))
        keys: dict[str, list[int]] = {}
        for file, r in keyed:
            keys.setdefault(str(file), []).append(r["source_line"])
        # the part's lines of each input, in the part's order (results.py splits parts with it)
        lines = [[int(k), len(v)] for k, v in keys.items()]
        keys = {k: sorted(set(v)) for k, v in keys.items()}  # one key per request, however many rows
        record = {"part": name, "order": len(self.records), "rows": sum(map(len, keys.values())),
                  "keys": {k: _ranges(v) for k, v in keys.items()}, "lines": lines,
                  "stats": part_stats(rows), "at": _now()}
        if (found := self.positions.take() if self.positions is not None else None):
            record["positions"] = found  # see intake/resume.py
        if pending:
            held: dict[str, dict[str, Any]] = {}
            for (file, line), entry in pending.items():
                held.setdefault(str(file), {})[str(line)] = entry
            record["pending"] = held
        try:
            self.lease.check()
        except LeaseLost:
            self.out.loc.child(name).rm()  # never committed: a successor must not find it
            raise
        self.out.loc.child(f"{COMMITS}/{self.attempt}-{self._seq:05d}.json").put_atomic(
            json.dumps(record).encode())
        self.records.append(_without_keys(record))
        return name

    def finish(self, report: dict[str, Any]) -> bool:
        """Write the report, then the completion marker (exclusive). False when another run
        created the marker first. Debris is removed first, so a finished folder holds only
        committed parts (a writer that lost its lease may have added one past its cutoff)."""
        self.lease.check()
        self.out._remove(self.out.read_state().debris)
        if self.out.fmt in LINE_FORMATS:
            report["result_files"] = assemble(self.out.loc, self.records, self.files, failed=failed,
                                              split_errors=self.split_errors, check=self.lease.check)
        self.lease.check()
        self.out.loc.child(REPORT).put_atomic(json.dumps(report, indent=2).encode())
        marker = json.dumps({"fingerprint": self.manifest["fingerprint"], "requests": report["requests"],
                             "finished": _now()}).encode()
        return self.out.loc.child(SUCCESS).create_exclusive(marker)

    def release(self) -> None:
        self.lease.release()


class PartWriter:
    """Buffers output rows and commits a part every `every` rows or `seconds` seconds. As a
    context manager it commits what it holds on leaving, also when the run stops in order
    (exits.STOPS); not when storage or the lease failed, which it could only repeat."""

    def __init__(self, claim: Claim, every: int, seconds: float):
        self.claim, self.every, self.seconds = claim, every, seconds
        self.rows: list[tuple[int, dict[str, Any]]] = []  # (input file index, row)
        self.pending: dict[tuple[int, int], Any] = {}  # rows held for a repair since the last commit
        self.last = time.monotonic()

    def __enter__(self) -> PartWriter:
        return self

    def __exit__(self, kind, error, tb) -> None:
        if error is None or isinstance(error, STOPS):
            self.flush()

    def add_all(self, rows: list[dict[str, Any]], file: int) -> None:
        """One request's rows (one per choice with --explode-choices), from input file `file`
        (its index): always in the same part."""
        self.rows.extend((file, r) for r in rows)
        for r in rows:
            self.pending.pop((file, r["source_line"]), None)  # final now: its record says so
        if len(self.rows) + len(self.pending) >= self.every:
            self.flush()

    def hold(self, file: int, line: int, entry: Any) -> None:
        """A row held for a repair: `entry` (JSON) is committed with the next part, so a killed
        run's rerun continues its repairs where they stood (State.pending)."""
        self.pending[file, line] = entry
        if len(self.rows) + len(self.pending) >= self.every:
            self.flush()

    def tick(self) -> None:
        if (self.rows or self.pending) and time.monotonic() - self.last >= self.seconds:
            self.flush()

    def flush(self) -> None:
        if self.rows or self.pending:
            rows, self.rows = self.rows, []
            pending, self.pending = self.pending, {}
            name = self.claim.commit(rows, pending)
            log.info("committed %s (%d rows, %d held for a repair)", name, len(rows), len(pending))
        self.last = time.monotonic()


def refuse_foreign(out: Output, state: State, allow_foreign: bool) -> None:
    clash = sorted(set(state.foreign) & {MANIFEST, REPORT, SUCCESS, *([RESULTS] if out.fmt in LINE_FORMATS else [])})
    if clash and allow_foreign:
        raise OutputConflict(
            f"--output {out.display} holds {', '.join(clash)} written by something else (Spark and "
            "Hadoop write _SUCCESS too); this tool needs those names. Nothing was changed. Hint: "
            "choose a new or empty folder")
    if state.foreign and not allow_foreign:
        shown = ", ".join(state.foreign[:5]) + (f" (+{len(state.foreign) - 5} more)" if len(state.foreign) > 5 else "")
        raise OutputConflict(
            f"--output {out.display} holds files this tool did not write ({shown}). Nothing was "
            "changed. Hint: choose a new or empty folder, or pass --allow-foreign-files to write "
            "beside them (they are never read, changed or deleted)")


def conflict_message(out: Output, state: State, detail: dict[str, Any]) -> str:
    old = (state.manifest or {}).get("job", {})
    limits = [(job.get("options") or {}).get("limit") for job in (old, detail)]
    trial = ""
    if limits[0] != limits[1]:  # a trial (--limit) and another run of the same inputs never mix
        was = f"a trial of {limits[0]} rows (--limit {limits[0]})" if limits[0] else "the full job"
        now = f"a trial of {limits[1]} rows" if limits[1] else "the full job"
        trial = f" It holds {was}; this run is {now}."
    return (f"{out.display} holds the output of a different job ({_diff(old, detail)}).{trial} Nothing "
            "was changed. Hint: use another --output folder, or pass --overwrite to discard that output")


def _ours(state: State) -> list[str]:
    """Every file the folder's records prove ours (the lease files stay)."""
    names = [r["part"] for r in state.records] + state.debris
    if (state.manifest or {}).get("format") in LINE_FORMATS:
        names.append(RESULTS)
    return names + [MANIFEST, REPORT, SUCCESS, REPORT_PAGE] + [f"{COMMITS}/{n}" for n in _record_names(state)]


def _record_names(state: State) -> list[str]:
    return [f"{r['part'][5:].rsplit('.', 1)[0]}.json" for r in state.records]


def _last_seqs(state: State) -> dict[str, int]:
    """The highest committed sequence number of each attempt, as listed now."""
    last: dict[str, int] = {}
    for rec in state.records:
        m = _PART.match(rec["part"])
        if m:
            last[m.group(1)] = max(last.get(m.group(1), 0), int(m.group(2)))
    return last


def _beyond_cutoff(loc: Location, manifest: dict[str, Any]) -> list[str]:
    cut = {a["id"]: a["cutoff"] for a in manifest["attempts"] if a.get("cutoff") is not None}
    out = []
    for name in loc.child(COMMITS).names():
        m = _RECORD.match(name)
        if m and m.group(1) in cut and int(m.group(2)) > cut[m.group(1)]:
            out.append(name)
    return out


def _json(data: bytes, loc: Location, valid) -> dict[str, Any]:
    """A manifest or commit record, checked by `valid` (a person may have edited it)."""
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise OutputConflict(f"{loc.display} is not valid JSON: the output folder was changed by "
                             "something else. Hint: move it away, or use another --output folder") from None
    if not isinstance(value, dict) or not valid(value):
        raise OutputConflict(
            f"{loc.display} is not {'a JSON object' if not isinstance(value, dict) else 'as this tool writes it'}: "
            "the output folder was changed by something else. Hint: move it away, or "
            "use another --output folder"
        )
    return value


def _valid_manifest(m: dict[str, Any]) -> bool:
    attempts = m.get("attempts", [])
    return isinstance(attempts, list) and all(
        isinstance(a, dict) and isinstance(a.get("id"), str) and type(a.get("cutoff")) in (int, type(None))
        for a in attempts)


def _valid_record(r: dict[str, Any]) -> bool:
    keys = r.get("keys")
    return (isinstance(r.get("part"), str) and type(r.get("order")) is int and type(r.get("rows")) is int
            and isinstance(r.get("stats", {}), dict) and isinstance(keys, dict)
            and isinstance(r.get("pending", {}), dict)
            and all(k.isdigit() and isinstance(v, dict) and all(n.isdigit() for n in v)
                    for k, v in r.get("pending", {}).items())
            and all(k.isdigit() and isinstance(v, list) and all(
                isinstance(x, list) and len(x) == 2 and all(type(i) is int for i in x) for x in v)
                for k, v in keys.items()))


def _ranges(lines: list[int]) -> list[list[int]]:
    out: list[list[int]] = []
    for n in sorted(lines):
        if out and n == out[-1][1] + 1:
            out[-1][1] = n
        else:
            out.append([n, n])
    return out


def _diff(old: dict[str, Any], new: dict[str, Any]) -> str:
    """Say what differs between two job descriptions: the inputs, and which options."""
    changed = ["inputs"] if old.get("inputs") != new.get("inputs") else []
    old_opts, new_opts = old.get("options", {}), new.get("options", {})
    changed += [f"--{k.replace('_', '-')}" for k in sorted(set(old_opts) | set(new_opts))
                if old_opts.get(k) != new_opts.get(k)]
    return "changed: " + (", ".join(changed) or "job description")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _without_keys(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in ("keys", "pending")}
