"""`pipeline validate`: the run's checks, no engine; problems printed as FILE:LINE: field: message."""

from __future__ import annotations

from collections import Counter

import click

from pipeline.intake.limit import Limit
from pipeline.intake.reader import scan
from pipeline.intake.sources import list_inputs
from pipeline.intake.stream import request_stream, run_context
from pipeline.intake.templates import TemplateSpec
from pipeline.output.humane import trial_text
from pipeline.records import FailedRequest, Request

MAX_UNKNOWN = 1000  # distinct unknown field names counted


def validate_inputs(
    inputs, *, storage_options, max_line_bytes: int, max_n: int, model: str | None,
    max_model_len: int | None, served_model_name=(), max_errors: int = 100,
    tokenizer: str | None = None, trust_remote_code: bool = False, route: dict | None = None,
    lora: dict | None = None, limit: int | None = None, sample_seed: int | None = None, **template_values,
) -> bool:
    """Print each invalid row and a summary; True when every row is valid. `template_values`:
    the template job options (templates.py), if any."""
    spec = TemplateSpec.from_values(template_values)
    files = list_inputs(list(inputs), storage_options)
    layout = spec.layout(files) if spec else None
    ctx, _ = run_context(model, tuple(served_model_name), max_n, route, lora)
    counter = None
    if model:
        from pipeline.models.tokens import PromptCounter

        counter = PromptCounter(model, max_model_len=max_model_len, tokenizer=tokenizer,
                                trust_remote_code=trust_remote_code)

    total, codes, unknown, shown = 0, Counter(), Counter(), 0
    scans = [scan(f) for f in files]
    trial = Limit.of(limit, sample_seed)
    for item in request_stream(files, scans, ctx, spec, max_line_bytes=max_line_bytes, layout=layout, limit=trial):
        total += 1
        if isinstance(item, Request) and counter is not None:
            item = counter.check(item)
        if isinstance(item, FailedRequest):
            codes[item.code] += 1
            if shown < max_errors:
                shown += 1
                click.echo(f"{item.source_file}:{item.line}: {item.param or item.code}: {item.message}")
        else:
            # bounded: a file with a million different field names keeps its first thousand
            unknown.update(n for n in item.unknown_fields if n in unknown or len(unknown) < MAX_UNKNOWN)
    bad = sum(codes.values())
    click.echo(f"{total} rows in {len(files)} file(s): {total - bad} valid, {bad} invalid", err=True)
    if trial:
        click.echo(trial_text(trial.describe(scans)), err=True)
    if codes:
        click.echo("errors: " + ", ".join(f"{c} ×{n}" for c, n in codes.most_common()), err=True)
    if unknown:
        click.echo("unknown fields (ignored): " + ", ".join(f"{c} ×{n}" for c, n in unknown.most_common(20))
                   + (f" (+{len(unknown) - 20} more names)" if len(unknown) > 20 else ""), err=True)
    if shown < bad:
        click.echo(f"({bad - shown} more problems not shown; raise --max-errors)", err=True)
    return bad == 0
