"""Every read and write goes through fsspec here: local disk, memory://, s3://, gs://, az://, http(s)://.

Inputs are listed once (sorted, so sharding and resume are deterministic) and streamed row by row
with their (file, line), so memory does not grow with the input.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem
from fsspec.spec import AbstractBufferedFile

from .requests import RowError, default_id

JSON_SUFFIXES = (".jsonl", ".json", ".ndjson")
COMPRESSIONS = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd", ".bz2": "bz2", ".xz": "xz"}
PARQUET_SUFFIXES = (".parquet", ".pq")
DEFAULT_MAX_LINE_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class InputFile:
    """One input file: its display URL (no credentials), fsspec path, format and identity."""

    url: str
    path: str
    format: str  # "jsonl" or "parquet"
    compression: str | None
    size: int | None
    version: str | None  # mtime or ETag: what says the file changed

    def fingerprint(self) -> dict[str, Any]:
        return {"url": self.url, "size": self.size, "version": self.version}


def redact(text: str) -> str:
    """Remove credentials from a URL or message: user:password@ and secret-looking query values."""
    text = re.sub(r"(?<=://)[^/@\s]+@", "***@", text)
    return re.sub(
        r"(?i)((?:key|secret|token|sig|signature|password|credential)[a-z_-]*=)[^&\s]+", r"\1***", text
    )


def file_format(path: str) -> tuple[str, str | None] | None:
    """(format, compression) from a file name, or None if it is not an input file."""
    name = path.lower()
    compression = None
    for suffix, comp in COMPRESSIONS.items():
        if name.endswith(suffix):
            name, compression = name[: -len(suffix)], comp
            break
    if name.endswith(JSON_SUFFIXES):
        return "jsonl", compression
    if name.endswith(PARQUET_SUFFIXES) and compression is None:
        return "parquet", None
    return None


def filesystem(url: str, storage_options: dict[str, Any] | None = None):
    """(filesystem, path) for a URL, with the run's storage options."""
    return url_to_fs(url, **(storage_options or {}))


def list_inputs(inputs: list[str], storage_options: dict[str, Any] | None = None) -> list[InputFile]:
    """Expand files, directories and globs into a sorted, de-duplicated list of input files."""
    found: dict[str, InputFile] = {}
    for given in inputs:
        fs, path = filesystem(given, storage_options)
        protocol = given.split("://", 1)[0] + "://" if "://" in given else ""
        if any(c in path for c in "*?["):
            paths = sorted(fs.glob(path))
        elif not fs.exists(path):
            raise FileNotFoundError(f"input not found: {redact(given)}")
        elif fs.isdir(path):
            paths = sorted(fs.find(path))
        else:
            paths = [path]
        matched = [p for p in paths if file_format(p)]
        if not matched:
            raise ValueError(
                f"no input files in {redact(given)}: expected .jsonl/.json (optionally .gz/.zst) or .parquet"
            )
        for p in matched:
            info = fs.info(p)
            fmt, compression = file_format(p)
            url = redact(given) if p == path and "://" in given else redact(_url(fs, p, protocol))
            version = info.get("ETag") or info.get("etag") or info.get("mtime") or info.get("LastModified") or info.get("last_modified") or info.get("updated")
            found[url] = InputFile(url, p, fmt, compression, info.get("size"), str(version) if version is not None else None)
    return [found[u] for u in sorted(found)]


def _url(fs, path: str, protocol: str) -> str:
    if not protocol or protocol == "file://":
        return path
    # with the scheme the user typed: adlfs would write az:// back as abfs://
    return protocol + fs.unstrip_protocol(path).split("://", 1)[1]


def read_rows(
    file: InputFile,
    storage_options: dict[str, Any] | None = None,
    *,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
) -> Iterator[tuple[str, int, Any]]:
    """Yield (source_file, line, row) for every request in a file; unreadable lines yield a RowError."""
    if file.format == "parquet":
        yield from _parquet_rows(file, storage_options)
    else:
        yield from _jsonl_rows(file, storage_options, max_line_bytes)


def read_all(
    files: list[InputFile], storage_options: dict[str, Any] | None = None,
    *, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
) -> Iterator[tuple[str, int, Any]]:
    """read_rows over every input file, in order."""
    for f in files:
        yield from read_rows(f, storage_options, max_line_bytes=max_line_bytes)


def _jsonl_rows(file: InputFile, storage_options, max_line_bytes: int):
    fs, _ = filesystem(file.url if "://" in file.url else file.path, storage_options)
    with fs.open(file.path, "rb", compression=file.compression) as opened:
        # zstd's reader and fsspec's remote files (s3, gs, az, http) take no readline size:
        # give them a buffer that does
        bare = file.compression == "zstd" or isinstance(opened, AbstractBufferedFile)
        f = io.BufferedReader(opened, 1 << 20) if bare else opened
        line = 0
        while True:
            raw = f.readline(max_line_bytes + 1)
            if not raw:
                return
            line += 1
            if len(raw) > max_line_bytes and not raw.endswith(b"\n"):
                while raw and not raw.endswith(b"\n"):  # skip the rest of the over-long line
                    raw = f.readline(1 << 20)
                yield file.url, line, _error(file, line, "line_too_long",
                    f"the line is longer than {max_line_bytes} bytes; split the request or raise --max-line-bytes")
                continue
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield file.url, line, _error(file, line, "invalid_utf8",
                    f"the line is not valid UTF-8 (byte {e.start}); re-encode the file as UTF-8")
                continue
            try:
                yield file.url, line, json.loads(text)
            except json.JSONDecodeError as e:
                yield file.url, line, _error(file, line, "invalid_json",
                    f"invalid JSON at column {e.colno}: {e.msg}")


def _error(file: InputFile, line: int, code: str, message: str) -> RowError:
    return RowError(default_id(file.url, line), file.url, line, code, message)


def _parquet_rows(file: InputFile, storage_options, batch_size: int = 1024):
    import pyarrow.parquet as pq

    fs, _ = filesystem(file.url if "://" in file.url else file.path, storage_options)
    with fs.open(file.path, "rb") as f:
        pf = pq.ParquetFile(f)
        body_is_text = "body" in pf.schema_arrow.names and str(pf.schema_arrow.field("body").type) in ("string", "large_string")
        line = 0
        for batch in pf.iter_batches(batch_size=batch_size):
            for row in batch.to_pylist():
                line += 1
                yield file.url, line, _parquet_row(file, line, row, body_is_text)


def _parquet_row(file: InputFile, line: int, row: dict[str, Any], body_is_text: bool):
    """Parquet rows: a `body` column (JSON text or struct) or the request fields as columns.

    Null columns mean "not set" (Parquet has no absent field), so they are dropped.
    """
    if "body" in row:
        body = row["body"]
        if body_is_text and isinstance(body, str):
            try:
                body = json.loads(body)
            except json.JSONDecodeError as e:
                return _error(file, line, "invalid_json", f"column body: invalid JSON at column {e.colno}: {e.msg}")
        out = {k: v for k, v in row.items() if v is not None and k != "body"}
        out["body"] = _drop_nulls(body)
        if "url" not in out and "method" not in out:  # a body column alone is a bare body with an id
            return {**out.pop("body"), **out} if isinstance(out["body"], dict) else out
        return out
    return _drop_nulls(row)


def _drop_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value


def open_output_fs(url: str, storage_options: dict[str, Any] | None = None):
    """(filesystem, root path) of an output directory, created if missing on local disk."""
    fs, root = filesystem(url, storage_options)
    if is_local(fs):
        fs.makedirs(root, exist_ok=True)
    return fs, root.rstrip("/")


def is_local(fs) -> bool:
    """True for local disk, where a rename is atomic; object stores commit by a single PUT."""
    return isinstance(fs, LocalFileSystem)
