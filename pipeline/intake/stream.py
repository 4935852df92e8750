"""The one request stream: every input row as a Request or FailedRequest, for every command."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from pipeline.intake.images import ImagePolicy, resolve_all
from pipeline.intake.requests import Context, validate_rows
from pipeline.intake.sources import InputFile
from pipeline.intake.templates import TemplateSpec
from pipeline.models.adapters import Adapter, load_adapters
from pipeline.output.layout import Layout
from pipeline.records import FailedRequest, Request


def request_stream(files: Sequence[InputFile], scans, ctx: Context, spec: TemplateSpec | None, *,
                   max_line_bytes: int, layout: Layout | None = None,
                   images: ImagePolicy | None = None) -> Iterator[Request | FailedRequest]:
    """Every input row as a Request or FailedRequest: the one stream `validate`, `estimate` and `run`
    read (request files as they are, table rows through the templates), with their images fetched
    and checked (images.py)."""
    from pipeline.intake.reader import read_all

    if spec is None:
        stream = validate_rows(read_all(files, scans, max_line_bytes=max_line_bytes), ctx)
    else:
        stream = spec.render_rows(read_all(files, scans, max_line_bytes=max_line_bytes, raw=True), ctx, layout)
    return resolve_all(stream, images or ImagePolicy())


def run_context(model: str | None, served: tuple[str, ...], max_n: int, routes: dict[str, str] | None,
                lora: dict[str, Any] | None) -> tuple[Context, tuple[Adapter, ...]]:
    """What run, validate and estimate check rows against (the model's names, routes and these
    --lora adapters), and the adapters, checked as load_adapters does."""
    from pipeline.models.names import served_names

    adapters = load_adapters(lora, served_names(model, tuple(served)) if model else frozenset())
    return Context.of(model, tuple(served), max_n, routes, tuple(a.name for a in adapters)), adapters
