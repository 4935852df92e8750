"""`pipeline validate`: the run's checks, no engine; problems printed as FILE:LINE: field: message."""

from __future__ import annotations

from collections import Counter

import click

from pipeline.job import Job
from pipeline.output.humane import trial_text
from pipeline.records import FailedRequest, Request
from pipeline.storage import redact
from pipeline.verdicts.preflight import failed_text, make_preflight, screened

MAX_UNKNOWN = 1000  # distinct unknown field names counted


def validate(job: Job) -> bool:
    """Print each invalid row (at most --max-errors) and a summary; True when every row is valid.
    With --model, prompts are also checked against the model's context and chat template."""
    cfg, counter = job.cfg, None
    if cfg.model:
        from pipeline.models.tokens import PromptCounter

        counter = PromptCounter(cfg.model, max_model_len=cfg.max_model_len, tokenizer=cfg.tokenizer,
                                trust_remote_code=cfg.trust_remote_code)
    total, codes, unknown, shown = 0, Counter(), Counter(), 0
    pre = make_preflight(cfg)  # a schema the engine's backend cannot compile makes its rows invalid
    for item in screened(job.rows(), pre):
        total += 1
        if isinstance(item, Request) and counter is not None:
            item = counter.check(item)
        if isinstance(item, FailedRequest):
            codes[item.code] += 1
            if shown < cfg.max_errors:
                shown += 1
                click.echo(f"{item.source_file}:{item.line}: {item.param or item.code}: {redact(item.message)}")
        else:
            # bounded: a file with a million different field names keeps its first thousand
            unknown.update(n for n in item.unknown_fields if n in unknown or len(unknown) < MAX_UNKNOWN)
    bad = sum(codes.values())
    click.echo(f"{total} rows in {len(job.files)} file(s): {total - bad} valid, {bad} invalid", err=True)
    if job.limit:
        click.echo(trial_text(job.trial()), err=True)
    if codes:
        click.echo("errors: " + ", ".join(f"{c} ×{n}" for c, n in codes.most_common()), err=True)
    if unknown:
        click.echo("unknown fields (ignored): " + ", ".join(f"{c} ×{n}" for c, n in unknown.most_common(20))
                   + (f" (+{len(unknown) - 20} more names)" if len(unknown) > 20 else ""), err=True)
    if pre is not None:
        for line in failed_text(pre.describe()):
            click.echo(line, err=True)
        pre.close()
    if shown < bad:
        click.echo(f"({bad - shown} more problems not shown; raise --max-errors)", err=True)
    return bad == 0
