"""The one request stream: every input row as a Request or FailedRequest, for every command."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

from pipeline.intake import audio
from pipeline.intake.images import ImagePolicy, resolve_all
from pipeline.intake.limit import FULL, Limit
from pipeline.intake.requests import Context, validate_rows
from pipeline.intake.resume import Positions, Resume
from pipeline.intake.sources import InputFile
from pipeline.intake.templates import TemplateSpec
from pipeline.models.adapters import Adapter, load_adapters
from pipeline.output.layout import Layout
from pipeline.records import FailedRequest, Request, Source


def request_stream(files: Sequence[InputFile], scans, ctx: Context, spec: TemplateSpec | None, *,
                   max_line_bytes: int, layout: Layout | None = None,
                   limit: Limit = FULL, images: ImagePolicy | None = None,
                   skip: Callable[[Request | FailedRequest], bool] | None = None,
                   resume: Resume | None = None,
                   positions: Positions | None = None) -> Iterator[Request | FailedRequest]:
    """Every input row as a Request or FailedRequest: the one stream `validate`, `estimate` and `run`
    read (request files as they are, table rows through the templates); with `limit`, only the
    rows a trial takes (limit.py); less those `skip` says (a resumed run's committed rows), before
    their images are fetched and checked (images.py): a resume does no image work twice.
    `resume`, `positions`: a resumed run's starts, and what the reader records (resume.py)."""
    from pipeline.intake.reader import read_all

    rows = read_all(files, scans, max_line_bytes=max_line_bytes, raw=spec is not None, resume=resume,
                    positions=positions)
    items = validate_rows(rows, ctx) if spec is None else spec.render_rows(rows, ctx, layout)
    items = limit.apply(items, lambda: row_keys(files, scans, max_line_bytes=max_line_bytes))
    if skip is not None:
        items = (item for item in items if not skip(item))
    return resolve_all(items, images or ImagePolicy(), audio.resolve, audio.has_audio)


def row_keys(files: Sequence[InputFile], scans, *, max_line_bytes: int) -> Iterator[tuple[Source, int]]:
    """Every input row's (file, line) in input order, read without validation: the rows a
    `--limit` takes are chosen from these."""
    from pipeline.intake.reader import read_all

    return ((source, line) for source, line, _ in read_all(files, scans, max_line_bytes=max_line_bytes, raw=True))


def run_context(model: str | None, served: tuple[str, ...], max_n: int, routes: dict[str, str] | None,
                lora: dict[str, Any] | None) -> tuple[Context, tuple[Adapter, ...]]:
    """What run, validate and estimate check rows against (the model's names, routes and these
    --lora adapters), and the adapters, checked as load_adapters does."""
    from pipeline.models.names import served_names

    adapters = load_adapters(lora, served_names(model, tuple(served)) if model else frozenset())
    return Context.of(model, tuple(served), max_n, routes, tuple(a.name for a in adapters)), adapters


def trial_keys(trial: dict[str, Any] | None, files: Sequence[InputFile], scans, *,
               max_line_bytes: int) -> set[tuple[str, int]] | None:
    """The (file index, line) keys of the rows that a trial run (its report's `trial`) took from
    these inputs; None for a full run."""
    if not trial:
        return None
    keys = row_keys(files, scans, max_line_bytes=max_line_bytes)
    return Limit.of(trial["limit"], trial.get("sample_seed")).chosen(keys)
