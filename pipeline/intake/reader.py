"""Reading input files: a scan (rows, integrity, content digest) and a stream of raw rows.

`read_rows` yields `(line, row)` where row is the decoded JSON value or a `Problem` saying why
the line cannot be read. It is total: whatever the bytes, each non-blank line gives exactly one
item, so one bad line can never stop a job. What cannot be read to its end gives one file-level
problem at the line where it broke:

- a compressed file is decompressed in full by `scan` before any of its rows runs; a corrupt or
  truncated one gives a single `unreadable_file` row and none of its (possibly garbage) lines;
- a Parquet file whose pages break mid-way gives its rows up to the break, then that row;
- transient storage errors while reading are retried by reopening the file and skipping the
  lines already read; past the retries the run stops resumable (StorageError, exit 3).
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from fsspec.spec import AbstractBufferedFile

from pipeline import storage
from pipeline.intake.resume import EVERY, FileStart, Jump, Positions, Resume, Seed
from pipeline.intake.sources import InputFile
from pipeline.records import FailedRequest, Problem, Source, is_text
from pipeline.storage import StorageError, is_transient

DEFAULT_MAX_LINE_BYTES = 8 * 1024 * 1024
_BOM = b"\xef\xbb\xbf"
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


@dataclass(frozen=True)
class Scan:
    """What a first pass over a file found."""

    rows: int | None  # lines (JSON lines) or rows (Parquet); None where not counted
    broken: Problem | None = None  # the file cannot be read to its end
    broken_line: int = 0
    digest: str | None = None  # sha256 of the file's bytes (--verify-content)


def scan(file: InputFile, *, digest: bool = False) -> Scan:
    """Count a file's rows where that is cheap or needed, verify compressed files end to end,
    and hash the content when asked, or when the file has no version (an http server that sends
    no ETag): then its content is what shows that it changed. Remote plain files are only read
    to be hashed."""
    digest = digest or file.version is None
    try:
        return storage.retrying(f"reading {file.display}", lambda: _scan(file, digest))
    except Exception as e:
        if is_transient(e):  # still failing after the retries
            raise StorageError(f"reading {file.display} failed: {e}") from None
        raise


def _scan(file: InputFile, digest: bool) -> Scan:
    if file.format == "parquet":
        return _scan_parquet(file, digest)
    if file.format in ("csv", "arrow"):
        return _scan_table(file, digest)
    if file.compression is None and not file.location.local and not digest:
        return Scan(None)
    hasher = hashlib.sha256() if digest else None
    lines, last = 0, b"\n"
    try:
        with file.location.open("rb") as raw:
            source = _Hashing(raw, hasher) if hasher else raw
            stream = _decompressed(source, file.compression)
            while chunk := stream.read(1 << 22):
                lines += chunk.count(b"\n")
                last = chunk[-1:]
    except Exception as e:  # corrupt or truncated compressed data
        return _broken(file, lines + 1, e)
    return Scan(lines + (last != b"\n"), digest=hasher.hexdigest() if hasher else None)


def _content_digest(file: InputFile) -> str:
    """sha256 of the file's bytes as stored (--verify-content), read in a pass of its own."""
    hasher = hashlib.sha256()
    with file.location.open("rb") as f:
        while chunk := f.read(1 << 22):
            hasher.update(chunk)
    return hasher.hexdigest()


def _scan_parquet(file: InputFile, digest: bool) -> Scan:
    import pyarrow.parquet as pq

    found = _content_digest(file) if digest else None
    try:
        with file.location.open("rb") as f:
            rows = pq.ParquetFile(f).metadata.num_rows
    except Exception as e:
        return _broken(file, 1, e, found)
    return Scan(rows, digest=found)


def _broken(file: InputFile, line: int, e: Exception, digest: str | None = None) -> Scan:
    """The scan of a file that breaks at `line`. Storage errors are raised again: a transient one
    is retried, the rest stop the run resumably."""
    if isinstance(e, StorageError) or is_transient(e):
        raise e
    return Scan(None, _unreadable(file, line, e), line, digest)


def read_rows(file: InputFile, found: Scan | None = None, *,
              max_line_bytes: int = DEFAULT_MAX_LINE_BYTES, raw: bool = False,
              start: FileStart | None = None,
              mark: Callable[[int, int], None] | None = None) -> Iterator[tuple[int, Any]]:
    """(line, decoded row or Problem) for every non-blank line, Parquet row or CSV record (its
    line is the record's number, the header not counted) of a file. `raw`: Parquet rows as their
    columns, nulls kept (template jobs), not read as requests. `start`: a resumed run's start
    (resume.py): the lines before it are not read; `mark(line, offset)`: where lines start."""
    if found is not None and found.broken is not None:
        yield found.broken_line, found.broken
        return
    if file.format == "parquet":
        read = _parquet_table_rows if raw else _parquet_rows
    else:
        read = _table_rows if file.format in ("csv", "arrow") else _jsonl_rows
    start = start or FileStart()
    done, tries = start.skip, 0
    while True:
        try:
            for line, row in read(file, done, max_line_bytes, start, mark):
                done = line
                yield line, row
            return
        except StorageError:
            raise
        except Exception as e:
            if is_transient(e) and tries < len(storage.RETRY_DELAYS):
                time.sleep(storage.RETRY_DELAYS[tries])
                tries += 1  # reopen and skip what was read
                continue
            if is_transient(e):
                raise StorageError(f"reading {file.display} failed at line {done + 1}: {e}") from None
            yield done + 1, _unreadable(file, done + 1, e)
            return


def read_all(files: Sequence[InputFile], scans: Sequence[Scan] | None = None, *,
             max_line_bytes: int = DEFAULT_MAX_LINE_BYTES, raw: bool = False,
             resume: Resume | None = None, positions: Positions | None = None) -> Iterator[tuple[Source, int, Any]]:
    """(source, line, row or FailedRequest) over every input file, in order: the stream that
    `requests.validate_rows` (or, with `raw`, `templates.render_rows`) turns into requests.
    `resume`: where a resumed run starts each file (a skipped prefix first gives its `Seed`, as
    line 0); `positions`: told where lines start and where each file ends (resume.py)."""
    for i, file in enumerate(files):
        source = Source(i, file.display, file.identity)
        start = resume.start(i) if resume is not None else None
        if start is not None and start.done:
            continue  # every row committed: not opened
        if start is not None and start.ids is not None and start.skip:
            yield source, 0, Seed(_first_object(file, start.skip, max_line_bytes), start.ids.between(1, start.skip))
        mark = (lambda line, at, i=i: positions.mark(i, line, at)) if positions is not None else None
        rows = start.skip if start is not None else 0
        for line, row in read_rows(file, scans[i] if scans else None, max_line_bytes=max_line_bytes, raw=raw,
                                   start=start, mark=mark):
            if isinstance(row, Jump):  # committed lines passed over: validation sees their ids
                rows += row.last - row.first + 1
                yield source, line, Seed(None, start.ids.between(row.first, row.last))
                continue
            if isinstance(row, Problem):
                row = FailedRequest.of(row, source.default_id(line), source.name, line, file=i)
            rows += 1
            yield source, line, row
        if positions is not None:
            positions.end(i, rows)


def _first_object(file: InputFile, within: int, max_line_bytes: int) -> Any:
    """A file's first object if it lies in its first `within` lines (what fixes its shape)."""
    for line, row in read_rows(file, max_line_bytes=max_line_bytes):
        if isinstance(row, dict) or line > within:
            return row if isinstance(row, dict) and line <= within else None
    return None


def _jsonl_rows(file: InputFile, skip: int, max_line_bytes: int, start: FileStart | None = None,
                mark: Callable[[int, int], None] | None = None) -> Iterator[tuple[int, Any]]:
    """(line, row) of a JSON lines file. A resumed run's `start` (resume.py): lines up to `skip`
    are not decoded; its jumps seek past committed stretches; other committed lines (`bits`) are
    read but not decoded. Committed lines passed over are said as a `Jump` (first..last)."""
    with file.location.open("rb") as raw:
        line, at = _enter(raw, file, start)
        f = _decompressed(raw, file.compression)
        mark = mark if file.compression is None else None  # offsets of a compressed stream: no use
        bits = start.bits if start is not None else None
        run = 0  # the first of the committed lines passed over and not yet said
        while True:
            jump = start.jumps.get(line) if start is not None else None
            if jump is not None and _seek_line(f, jump[1]):
                first, (line, at), run = run or line + 1, jump, 0
                yield line, Jump(first, line)  # lines first..line: all committed
                continue
            data = f.readline(max_line_bytes + 1)
            if not data:
                if run:
                    yield line, Jump(run, line)
                return
            line += 1
            at += len(data)
            long = len(data) > max_line_bytes and not data.endswith(b"\n")
            while long and data and not data.endswith(b"\n"):  # skip the rest of the line
                data = f.readline(1 << 20)
                at += len(data)
            if mark is not None and line % EVERY == 0:
                mark(line, at)
            if line <= skip:
                continue
            if bits is not None and line < len(bits) and bits[line]:
                run = run or line
                continue
            if run:
                yield line - 1, Jump(run, line - 1)
                run = 0
            if long:
                yield line, Problem("line_too_long", f"the line is longer than {max_line_bytes} bytes; "
                                    "split the request or raise --max-line-bytes")
                continue
            if line == 1 and data.startswith(_BOM):
                data = data[len(_BOM):]
            if data.strip():
                yield line, decode_line(data)


def _enter(raw, file: InputFile, start: FileStart | None) -> tuple[int, int]:
    """Seek an uncompressed file to a resumed run's recorded offset, where a line starts (the
    byte before it is a newline); (line before it, offset). Else (0, 0): read from the start."""
    if start is None or not start.offset or file.compression is not None:
        return 0, 0
    return (start.line, start.offset) if _seek_line(raw, start.offset, back=0) else (0, 0)


def _seek_line(f, offset: int, back: int | None = None) -> bool:
    """Seek to `offset` if a line starts there (the byte before it is a newline); else stay put
    (or go to `back`) and say no."""
    here = f.tell() if back is None else back
    try:
        f.seek(offset - 1)
        if f.read(1) == b"\n":
            return True
    except (OSError, ValueError):
        pass
    f.seek(here)
    return False


class CorruptData(ValueError):
    """The decompressor refused the file's bytes (a corrupt or truncated gzip, bz2, xz or zstd
    file): a property of the file, never retried as a storage failure (gzip and bz2 say so with
    an OSError, which would read as one)."""


class _Source(io.RawIOBase):
    """The compressed bytes as read from storage, remembering the last error storage raised, so
    that what the decompressor raises can be told apart from it."""

    def __init__(self, raw):
        self.raw, self.error = raw, None

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        try:
            data = self.raw.read(len(b))
        except BaseException as e:
            self.error = e
            raise
        b[: len(data)] = data
        return len(data)


class _Decompressing(io.RawIOBase):
    """The decompressed bytes; a decompressor's error becomes CorruptData, storage's passes."""

    def __init__(self, stream, source: _Source):
        self.stream, self.source = stream, source

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        try:
            data = self.stream.read(len(b))
        except Exception as e:
            if e is self.source.error:
                raise
            raise CorruptData(f"{type(e).__name__}: {e}") from e
        b[: len(data)] = data
        return len(data)


def _decompressed(raw, compression: str | None):
    """A readable binary stream of the file's decompressed bytes that takes a readline size."""
    if compression is None:
        return io.BufferedReader(raw, 1 << 20) if isinstance(raw, AbstractBufferedFile) else raw
    source = _Source(raw)
    return io.BufferedReader(_Decompressing(_decompressor(source, compression), source), 1 << 20)


def _decompressor(raw, compression: str):
    if compression == "gzip":
        import gzip

        stream = gzip.GzipFile(fileobj=raw, mode="rb")
    elif compression == "bz2":
        import bz2

        stream = bz2.BZ2File(raw, "rb")
    elif compression == "xz":
        import lzma

        stream = lzma.LZMAFile(raw, "rb")
    else:
        stream = _ZstdFrames(raw)
    return stream


class _ZstdFrames(io.RawIOBase):
    """zstd frames one after another, decompressed; a frame cut short raises (zstandard's own
    stream reader returns what it has and nothing else: a truncated file would read as empty)."""

    def __init__(self, raw):
        import zstandard

        self.raw, self.zstd = raw, zstandard
        self.frame, self.fed = None, False
        self.out, self.at = memoryview(b""), 0  # decompressed bytes not yet read, from `at`

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        while self.at == len(self.out):
            chunk = self.raw.read(1 << 20)
            if not chunk:
                if self.fed:
                    raise self.zstd.ZstdError("the last zstd frame is cut short (a truncated file)")
                return 0
            self.out, self.at = memoryview(self._feed(chunk)), 0
        n = min(len(b), len(self.out) - self.at)
        b[:n] = self.out[self.at : self.at + n]
        self.at += n
        return n

    def _feed(self, data: bytes) -> bytes:
        out = []
        while data:
            if self.frame is None:
                self.frame = self.zstd.ZstdDecompressor().decompressobj()
            out.append(self.frame.decompress(data))
            self.fed, data = True, b""
            if self.frame.eof:
                data, self.frame, self.fed = self.frame.unused_data, None, False
        return b"".join(out)


def decode_line(data: bytes) -> Any:
    """One JSON line to a value or a Problem: never raises, whatever the bytes."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        return Problem("invalid_utf8", f"the line is not valid UTF-8 (byte {e.start}); re-encode the file as UTF-8")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        return Problem("invalid_json", f"invalid JSON at column {e.colno}: {e.msg}")
    except RecursionError:
        return Problem("invalid_json", "the JSON is nested too deeply to read; flatten the request")
    except ValueError as e:  # e.g. an integer longer than Python's digit limit
        return Problem("invalid_json", f"invalid JSON: {str(e)[:200]}")
    if _SURROGATE_ESCAPE.search(data):
        where = lone_surrogate(value)
        if where is not None:
            return Problem("invalid_utf8", f"{where} holds a lone surrogate escape (\\ud800-\\udfff), "
                           "which is not text; fix the encoding of the file that wrote it", where)
    return value


def lone_surrogate(value: Any) -> str | None:
    """The path of the first string (or key) that is not valid Unicode text, else None."""
    stack: list[tuple[str, Any]] = [("line", value)]
    while stack:
        path, v = stack.pop()
        if isinstance(v, str):
            if not is_text(v):
                return path
        elif isinstance(v, dict):
            for k, item in v.items():
                if not is_text(k):
                    return f"{path} (a field name)"
                stack.append((k if path == "line" else f"{path}.{k}", item))
        elif isinstance(v, list):
            stack.extend((f"{path}[{i}]", item) for i, item in enumerate(v))
    return None


def _unreadable(file: InputFile, line: int, e: BaseException) -> Problem:
    what = " ".join(str(e).split())[:200] or type(e).__name__
    what = what if isinstance(e, CorruptData) else f"{type(e).__name__}: {what}"
    kind = "compressed " if file.compression else ""
    return Problem("unreadable_file",
                   f"{file.display} cannot be read to its end: the {kind}data breaks at line {line} "
                   f"({what}). No row of it after that point was run. "
                   "Re-create or re-upload the file, then rerun with --overwrite.")


class _Hashing(io.RawIOBase):
    """A read-through stream that hashes what passes."""

    def __init__(self, raw, hasher):
        self.raw, self.hasher = raw, hasher

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        data = self.raw.read(len(b))
        self.hasher.update(data)
        b[: len(data)] = data
        return len(data)


# ---- Parquet ----------------------------------------------------------------------------------
def _parquet_rows(file: InputFile, skip: int, _max_line_bytes: int, start: FileStart | None = None,
                  _mark=None, batch_size: int = 1024):
    import pyarrow.parquet as pq

    with file.location.open("rb") as f:
        pf = pq.ParquetFile(f)
        names = pf.schema_arrow.names
        body_is_text = "body" in names and str(pf.schema_arrow.field("body").type) in ("string", "large_string")
        for line, row in _numbered(*_row_group_batches(pf, start, batch_size), skip):
            yield line, row if isinstance(row, Problem) else _parquet_row(row, body_is_text)


def _parquet_row(row: dict[str, Any], body_is_text: bool) -> Any:
    """Parquet rows: a `body` column (JSON text or struct) or the request fields as columns.

    Null columns mean "not set" (Parquet has no absent field), so they are dropped.
    """
    if "body" not in row:
        return _drop_nulls(row)
    body = row["body"]
    if body_is_text and isinstance(body, str):
        body = decode_line(body.encode("utf-8", "surrogatepass"))
        if isinstance(body, Problem):
            return Problem(body.code, f"column body: {body.message}", "body")
    out = {k: v for k, v in row.items() if v is not None and k != "body"}
    out["body"] = _drop_nulls(body)
    if "url" not in out and "method" not in out and isinstance(out["body"], dict):
        return {**out.pop("body"), **out}  # a body column alone is a bare body with an id
    return out


def _drop_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value


def _parquet_table_rows(file: InputFile, skip: int, _max_line_bytes: int, start: FileStart | None = None,
                        _mark=None, batch_size: int = 1024):
    """A Parquet file's rows as they are: every column, nulls kept (a table, not requests)."""
    import pyarrow.parquet as pq

    with file.location.open("rb") as f:
        yield from _numbered(*_row_group_batches(pq.ParquetFile(f), start, batch_size), skip)


def _row_group_batches(pf, start: FileStart | None, batch_size: int):
    """The batches of a Parquet file from the first row group a resumed run reads (the earlier
    ones are never read), and the number of the rows before them."""
    if start is None or not start.groups:
        return pf.iter_batches(batch_size=batch_size), 0
    groups = range(start.groups, pf.metadata.num_row_groups)
    return pf.iter_batches(batch_size=batch_size, row_groups=list(groups)), start.line


# ---- CSV ----------------------------------------------------------------------------------------
CSV_BLOCK = 1 << 22  # types are inferred from the first block (4 MiB), by pyarrow


def open_csv(stream):
    """pyarrow's streaming CSV reader, the same way everywhere (types from the first block).
    UTF-8 is not checked by pyarrow, which would make a column with one bad byte in the first
    block binary (every value `b'...'`) and fail a later block whole: `_numbered` decodes each
    row's text strictly, so a bad byte costs its own row (`invalid_utf8`)."""
    import pyarrow.csv as pcsv

    return pcsv.open_csv(stream, read_options=pcsv.ReadOptions(block_size=CSV_BLOCK),
                         convert_options=pcsv.ConvertOptions(strings_can_be_null=True, check_utf8=False))


def _table_batches(file: InputFile, raw):
    """Record batches of a CSV file (streamed) or an Arrow IPC file (a Hugging Face dataset's
    save_to_disk writes the stream format; the file format is read too)."""
    if file.format == "csv":
        return open_csv(_decompressed(raw, file.compression))
    import pyarrow as pa

    head = raw.read(6)
    raw.seek(0)
    if head != b"ARROW1":
        return pa.ipc.open_stream(raw)  # iterable, with .schema
    reader = pa.ipc.open_file(raw)
    return _Batches(reader.schema, (reader.get_batch(i) for i in range(reader.num_record_batches)))


class _Batches:
    def __init__(self, schema, batches):
        self.schema, self._batches = schema, batches

    def __iter__(self):
        return iter(self._batches)


def _scan_table(file: InputFile, digest: bool) -> Scan:
    found = _content_digest(file) if digest else None
    rows = 0
    try:
        with file.location.open("rb") as raw:
            for batch in _table_batches(file, raw):
                rows += batch.num_rows
    except Exception as e:
        broken = _broken(file, rows + 1, e, found)
        # uncompressed, the rows before the break are sound: read_rows gives them, then the break
        return broken if file.compression else Scan(None, digest=found)
    return Scan(rows, digest=found)


def _table_rows(file: InputFile, skip: int, _max_line_bytes: int, _start=None, _mark=None):
    with file.location.open("rb") as raw:
        yield from _numbered(_table_batches(file, raw), 0, skip)


def _numbered(batches, line: int, skip: int) -> Iterator[tuple[int, dict[str, Any] | Problem]]:
    """(row number from 1, row or Problem) of record batches whose first row follows row `line`,
    without the first `skip` rows (a batch wholly before them is not even converted)."""
    for batch in batches:
        if line + batch.num_rows <= skip:
            line += batch.num_rows
            continue
        for row in _batch_rows(batch):
            line += 1
            if line > skip:
                yield line, row


def _batch_rows(batch) -> list[dict[str, Any] | Problem]:
    """A record batch's rows; a row whose text is not UTF-8 is an `invalid_utf8` Problem."""
    try:
        return batch.to_pylist()
    except UnicodeDecodeError:
        pass
    import pyarrow as pa

    columns = {}
    for name, column in zip(batch.schema.names, batch.columns, strict=True):
        text = pa.types.is_string(column.type) or pa.types.is_large_string(column.type)
        columns[name] = (column.cast(pa.large_binary()) if text else column).to_pylist(), text
    rows: list[dict[str, Any] | Problem] = []
    for i in range(batch.num_rows):
        row: dict[str, Any] | Problem = {}
        for name, (values, text) in columns.items():
            value = values[i]
            if text and value is not None:
                try:
                    value = value.decode("utf-8")
                except UnicodeDecodeError as e:
                    row = Problem("invalid_utf8", f"column {name} is not valid UTF-8 (byte {e.start}); "
                                  "re-encode the file as UTF-8", name)
                    break
            row[name] = value
        rows.append(row)
    return rows


def input_schema(file: InputFile, sample_rows: int = 1000):
    """The Arrow schema of a table file: Parquet's own, CSV's as pyarrow infers it from the first
    block, JSON lines' as inferred from the first `sample_rows` objects (a column whose values
    disagree in type is a string column)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if file.format == "parquet":
        with file.location.open("rb") as f:
            return pq.ParquetFile(f).schema_arrow
    if file.format in ("csv", "arrow"):
        with file.location.open("rb") as raw:
            return _table_batches(file, raw).schema
    rows = []
    for _, row in _jsonl_rows(file, 0, DEFAULT_MAX_LINE_BYTES):
        if isinstance(row, dict):
            rows.append(row)
        if len(rows) >= sample_rows:
            break
    names: dict[str, None] = {}
    for row in rows:
        names.update(dict.fromkeys(row))
    fields = []
    for name in names:
        values = [row.get(name) for row in rows]
        try:
            dtype = pa.array(values).type
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
            dtype = pa.string()
        fields.append(pa.field(name, pa.string() if pa.types.is_null(dtype) else dtype))
    return pa.schema(fields)
