"""A job: its configuration (one frozen dataclass over the option table, filled from the command
line over a job file over defaults) and the front half every command shares, built once.

`Job.open(cfg)` lists the inputs, scans them, reads the template spec and its output layout,
checks the model's names, routes and adapters, and finds the price. `run`, `validate`,
`estimate` and the dry run read requests only through `Job.rows()` and order them only through
`Job.ordered()`, so that they cannot disagree about which rows are valid or what order a run takes.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field, make_dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from pipeline import options
from pipeline.engines.base import KINDS, EngineSpec, default_kv_block_tokens
from pipeline.exits import UserError
from pipeline.intake.endpoints import file_endpoints, runner_for
from pipeline.intake.images import ImagePolicy
from pipeline.intake.limit import FULL, Limit
from pipeline.intake.media import MediaRules
from pipeline.intake.order import order
from pipeline.intake.reader import Scan, scan
from pipeline.intake.requests import Context
from pipeline.intake.resume import Positions, Recorded, Resume, committed_digests, plan_resume
from pipeline.intake.sources import InputFile, list_inputs
from pipeline.intake.stream import request_stream, run_context
from pipeline.intake.templates import OPTION_NAMES as TEMPLATE_OPTIONS
from pipeline.intake.templates import TemplateSpec, callable_identity
from pipeline.models.adapters import Adapter, adapters_fingerprint, lora_engine_args
from pipeline.models.audio import is_audio_model
from pipeline.models.names import is_embedded, output_name, resolve_model
from pipeline.models.prices import Price, find_price
from pipeline.models.reasoning import reasoning_parser
from pipeline.models.vision import is_vision_model
from pipeline.output.layout import Layout
from pipeline.providers import PROVIDERS
from pipeline.records import FailedRequest, Request, Source
from pipeline.storage import Location, masked, remember_secrets


def _field(opt: options.Opt):
    if opt.name in options.KEY_VALUE_OPTIONS:
        return field(default_factory=dict)
    if opt.multiple:
        return field(default=())
    if opt.is_flag:
        return field(default=False)
    return field(default=opt.default)


class _RunConfigMethods:
    def __post_init__(self) -> None:
        # credentials given as options are redacted from every text this process writes
        remember_secrets(self.engine_arg, self.engine_option)
        remember_secrets(self.storage_option, every=True)

    @property
    def storage_options(self) -> dict[str, Any]:
        return self.storage_option

    @property
    def engine_options(self) -> dict[str, Any]:
        return self.engine_option

    def engine_args(self) -> dict[str, Any]:
        """The vLLM EngineArgs this run sets (unset ones keep vLLM's defaults)."""
        args = {k: getattr(self, k) for k in options.ENGINE_ARGS if getattr(self, k) not in (None, {})}
        args.update(self.engine_arg)
        return args

    def output_options(self) -> dict[str, Any]:
        """The options that change what rows say: part of the resume fingerprint."""
        d = asdict(self)
        d["engine_arg"] = masked(d["engine_arg"])  # a token changes no row, and is never written
        return {k: (list(d[k]) if isinstance(d[k], tuple) else callable_identity(d[k]) if callable(d[k]) else d[k])
                for k in options.OUTPUT_OPTIONS}

    def model_names(self) -> frozenset[str]:
        from pipeline.models.names import served_names

        return served_names(self.model, self.served_model_name)


# The configuration of a command that reads requests (run, validate, estimate): one frozen
# dataclass with a field per option of the table (options.py), filled from the command line over a
# job file over defaults; a command's own options are set, the others keep their defaults.
# api.pyi declares its fields with types for the Python API (generated from the same table; a
# test keeps it current).
RunConfig = make_dataclass(
    "RunConfig",
    [("inputs", tuple), *((o.name, Any, _field(o)) for o in options.OPTIONS if o.commands & options.READERS),
     # Python only: names of inputs named by their content (tables the API wrote to its cache), whose
     # identity is that name, not their location or file time (the cache may be lost or moved)
     ("content_inputs", tuple, field(default=()))],
    bases=(_RunConfigMethods,), frozen=True, kw_only=True,
)
RunConfig.__module__ = __name__


@dataclass
class Job:
    """The front half of every command that reads requests, built once (see the module's doc)."""

    cfg: Any  # RunConfig
    files: list[InputFile]
    scans: list[Scan]
    ctx: Context
    adapters: tuple[Adapter, ...] = ()  # --lora
    spec: TemplateSpec | None = None  # a template job's (None: request files)
    layout: Layout | None = None  # its extra output columns
    model_name: str | None = None  # the model's name in output rows (None: no --model)
    price: Price | None = None
    limit: Limit = FULL  # --limit, --sample-seed: a trial run
    images: ImagePolicy | None = None  # how image parts are fetched and checked
    runner: str = "generate"  # the kind of model the run serves (--runner; auto: from the inputs)
    reasoning_parser: str | None = None  # vLLM's reasoning parser that splits thinking from answers
    positions: Positions = field(default_factory=Positions)  # what reading learns (resume.py)

    @classmethod
    def open(cls, cfg, *, exclude: Location | None = None, scanned: dict[int, int] | None = None) -> Job:
        """Check the inputs, template, model names and adapters without side effects; raises what
        the user must fix. `exclude`: the run's output folder, never an input. `scanned`: the
        row counts an earlier attempt's scans recorded (resume.py): those files are not scanned."""
        spec = TemplateSpec.from_values({n: getattr(cfg, n) for n in TEMPLATE_OPTIONS})
        files = list_inputs(list(cfg.inputs), cfg.storage_options, exclude=exclude)
        layout = spec.layout(files) if spec else None
        scans = [_scanned(f, (scanned or {}).get(i), cfg) for i, f in enumerate(files)]
        ctx, adapters = run_context(cfg.model, cfg.served_model_name, cfg.max_n, cfg.route, cfg.lora)
        ctx = replace(ctx, defaults=request_defaults(cfg))
        model_name = price = None
        if cfg.model:
            model_name = output_name(cfg.model, cfg.served_model_name)
            price = find_price(model_name, provider=cfg.provider, price_input=cfg.price_input,
                               price_output=cfg.price_output, price_reasoning=getattr(cfg, "price_reasoning", None))
        runner = _runner(cfg, files, scans, spec)
        provider = PROVIDERS.get(getattr(cfg, "format", None))
        if provider is not None and runner not in provider.runners:
            *some, last = [p.title for p in PROVIDERS.values() if p.format_choice and runner not in p.runners]
            others = f"{', '.join(some)} and {last}" if some else last
            raise UserError(f"--format {cfg.format} has no result for embeddings, score or rerank requests (this run's "
                            f"model is a pooling one): {others} answer messages only. Hint: use "
                            "--format openai, native or parquet")
        if spec is not None and runner == "pooling":
            if spec.system or spec.turns or spec.sample or spec.sample_column or spec.response_schema:
                raise UserError("a template job on an embedding model (--runner pooling) embeds the rendered "
                                "--template-user text only: --template-system, --template-turns, --sample, "
                                "--sample-column and --response-schema have no meaning there; drop them")
            spec = replace(spec, endpoint="embeddings")
        thinking = reasoning_parser(cfg.model, cfg.reasoning_parser,
                                    None if not cfg.model or is_embedded(cfg.model) else cfg.model)
        if cfg.model and thinking is None and cfg.thinking_token_budget is not None:
            raise UserError(f"--thinking-token-budget needs a reasoning parser, and {cfg.model} has none that "
                            "pipeline knows of. Hint: name the model's with --reasoning-parser NAME (deepseek_r1, "
                            "qwen3, openai_gptoss, ...; docs/reasoning.md)")
        ctx = replace(ctx, runner=runner)  # one verdict for a request of the other kind, in every command
        job = cls(cfg, files, scans, ctx, adapters, spec, layout, model_name, price,
                  Limit.of(cfg.limit, cfg.sample_seed), image_policy(cfg), runner, thinking)
        for i, s in enumerate(scans):
            if s.rows is not None and s.broken is None:
                job.positions.scanned(i, s.rows)
        return job

    def rows(self, skip: Callable[[Request | FailedRequest], bool] | None = None,
             resume: Resume | None = None, *, learn: bool = True) -> Iterator[Request | FailedRequest]:
        """Every input row (those a --limit trial takes) as a Request or FailedRequest, in the
        input's order; less those `skip` says (before any image of theirs is fetched), and less
        those `resume` does not read (resume.py). `learn` False: a pass that records no positions
        (the schema preflight's pre-pass)."""
        return request_stream(self.files, self.scans, self.ctx, self.spec,
                              max_line_bytes=self.cfg.max_line_bytes, layout=self.layout, limit=self.limit,
                              images=self.images, skip=skip, resume=resume,
                              positions=self.positions if learn else None)

    def resume(self, committed, records: list[dict[str, Any]], loc: Location, fmt: str) -> Resume | None:
        """Where this job's resumed run reads each input (None: a trial, or nothing committed).
        Partly finished files skip their prefix where its ids can be read back (request files,
        Parquet output)."""
        if self.limit or not committed.count:
            return None
        prefix = self.spec is None and fmt == "parquet"
        sources = [Source(i, f.display, f.identity) for i, f in enumerate(self.files)]
        return plan_resume(self.files, committed, records, prefix=prefix,
                           ids_of=lambda i, size: committed_digests(loc, records, i, size, sources[i].default_id))

    def ordered(self, items: Iterable[Request | FailedRequest]) -> Iterable[Request | FailedRequest]:
        """`items` in the order a run takes them (--order): the one decision run and estimate share."""
        return order(items, self.cfg.order, buffer=self.cfg.order_buffer, buffer_bytes=self.cfg.order_buffer_bytes,
                     kv_block_tokens=self.kv_block_tokens(),
                     decode_first=self.cfg.decode_first is not False)

    def kv_block_tokens(self) -> int:
        """The engines' KV cache block size: --block-size (or --engine-arg block_size), else the
        installed vLLM build's default."""
        return self.cfg.engine_args().get("block_size") or default_kv_block_tokens()

    def total(self) -> int | None:
        """The rows the job takes, where every file's scan counted them."""
        return self.limit.total(self.scans)

    def trial(self) -> dict[str, Any] | None:
        """What a --limit trial takes, for reports (None: the whole input)."""
        return self.limit.describe(self.scans)

    def fingerprint(self) -> dict[str, Any]:
        """What makes two runs the same job: the inputs as scanned, the options that change rows,
        the template and the adapters (resume refuses a different one)."""
        content = set(self.cfg.content_inputs)
        detail = {"inputs": [f.fingerprint(s.digest, by_content=f.location.name in content)
                             for f, s in zip(self.files, self.scans, strict=True)],
                  "options": self.cfg.output_options()}
        if self.spec is not None:
            detail["template"] = self.spec.fingerprint()
        if self.adapters:
            detail["adapters"] = adapters_fingerprint(self.adapters)
        return detail

    def engine_spec(self) -> EngineSpec:
        """What each engine process is started with."""
        cfg = self.cfg
        return EngineSpec(
            kind=cfg.engine, model=resolve_model(cfg.model) if KINDS[cfg.engine].loads_model else cfg.model,
            engine_args={**lora_engine_args(self.adapters), "runner": self.runner,
                         **({"reasoning_parser": self.reasoning_parser} if self.reasoning_parser else {}),
                         **cfg.engine_args()},
            seed_policy=cfg.seed_on_cpu, tool_parser=cfg.tool_call_parser,
            options={"runner": self.runner, **cfg.engine_options},
            lora={a.name: a.path for a in self.adapters},
        )


def _scanned(file: InputFile, rows: int | None, cfg) -> Scan:
    """A file's scan, or the row count an earlier attempt's scan recorded (where no content
    digest is needed: the job's fingerprint then holds the file's size and version)."""
    if rows is not None and not cfg.verify_content and file.version is not None:
        return Scan(rows)
    return scan(file, digest=cfg.verify_content)


def open_resumed(cfg, exclude: Location, records: list[dict[str, Any]], fingerprint: str | None,
                 same: Callable[[dict[str, Any]], bool]) -> Job:
    """Job.open for a run whose output holds earlier attempts: the scans they recorded are
    taken, unless the job turns out to be another (`same(detail)` false): then it scans."""
    scanned = Recorded.of(records).scans if fingerprint else {}
    job = Job.open(cfg, exclude=exclude, scanned=scanned)
    if scanned and not same(job.fingerprint()):
        job = Job.open(cfg, exclude=exclude)
    return job


def request_defaults(cfg) -> tuple[tuple[str, Any], ...]:
    """The job's defaults of request fields (--reasoning-effort, --chat-template-kwargs,
    --thinking-token-budget): what a chat row that sets none of its own takes."""
    values = {"reasoning_effort": cfg.reasoning_effort, "chat_template_kwargs": cfg.chat_template_kwargs or None,
              "thinking_token_budget": cfg.thinking_token_budget}
    return tuple((k, v) for k, v in values.items() if v is not None)


def image_policy(cfg) -> ImagePolicy:
    """The job's image checks: its limits, where images may come from, and whether its model sees images."""
    limit = cfg.limit_mm_per_prompt.get("image")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 0):
        raise UserError(f"--limit-mm-per-prompt image={limit}: N must be a whole number of images")
    return ImagePolicy(max_bytes=cfg.image_max_bytes, max_pixels=cfg.image_max_pixels,
                       per_request=cfg.images_per_request, bytes_per_request=cfg.image_bytes_per_request,
                       limit=limit, workers=cfg.image_workers, media=media_rules(cfg, "--image-timeout"),
                       model=cfg.model, vision=is_vision_model(cfg.model) if cfg.model else None,
                       audio=is_audio_model(cfg.model) if cfg.model else None)


def media_rules(cfg, timeout_option: str) -> MediaRules:
    """Where media named in requests may come from: our options, or vLLM's engine arguments of the
    same names (allowed_local_media_path, allowed_media_domains), which mean the same."""
    folder = cfg.allowed_local_media_path or cfg.engine_arg.get("allowed_local_media_path") or None
    if folder is not None:
        real = os.path.realpath(str(folder))
        if not os.path.isdir(real):
            raise UserError(f"--allowed-local-media-path {folder}: no such folder. Hint: name the folder whose "
                            "files requests may use")
        folder = real
    domains = cfg.allowed_media_domains or cfg.engine_arg.get("allowed_media_domains") or ()
    if isinstance(domains, str):
        domains = (domains,)
    if not isinstance(domains, (list, tuple)) or not all(isinstance(d, str) and d for d in domains):
        raise UserError(f"allowed_media_domains={domains!r}: give host names, e.g. "
                        "--allowed-media-domains images.example.com")
    return MediaRules(local_root=folder, domains=tuple(d.lower().rstrip(".") for d in domains),
                      private=cfg.allow_private_media, storage=tuple(cfg.media_storage),
                      storage_options=cfg.storage_options, timeout=cfg.image_timeout, timeout_option=timeout_option)


PATH_OPTIONS = ("output", "rows_file", "calibrate_from")  # besides the inputs: where placeholders apply


def fill_values(inputs: Iterable[str], values: dict[str, Any], mappings: dict[str, dict] | None = None,
                key_values=None) -> dict[str, Any]:
    """A command's option values as RunConfig takes them: KEY=VALUE options as dicts (`mappings`,
    a job file's, then the given pairs or mapping over it, read by `key_values(pairs, flag)`),
    repeatable options as tuples, and {date}-style placeholders in paths filled in (the date and
    run id used are kept in the values). Shared by the command line and the Python API."""
    from pipeline import placeholders

    key_values = key_values or parse_key_values
    out = dict(values)
    found = placeholders.values(out.get("date"), out.get("run_id"))
    out["date"], out["run_id"] = found["date"].isoformat(), found["run_id"]
    for name in PATH_OPTIONS:
        if isinstance(out.get(name), str):
            out[name] = placeholders.resolve(out[name], found)
    out["inputs"] = tuple(placeholders.resolve(i, found) for i in inputs)
    for name in options.KEY_VALUE_OPTIONS:
        if name in out:
            merged = dict((mappings or {}).get(name, {}))
            merged.update(key_values(out[name] or (), options.BY_NAME[name].long))
            out[name] = merged
    for name, value in out.items():
        if isinstance(value, list):
            out[name] = tuple(value)
    return out


def _runner(cfg, files: list[InputFile], scans: list[Scan], spec: TemplateSpec | None) -> str:
    """The kind of model the run serves: --runner, else the kind its request files need (a template
    job: generate; with --runner pooling it embeds its rendered rows); a folder that mixes kinds is
    refused either way."""
    try:
        needed = "generate" if spec else runner_for(file_endpoints(files, scans, max_line_bytes=cfg.max_line_bytes))
    except ValueError as e:
        raise UserError(str(e)) from None
    return needed if cfg.runner == "auto" else cfg.runner


def load_job(path: str) -> dict[str, Any]:
    """Read a job file: its keys are the long option names (dashes or underscores)."""
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        raise UserError(f"job file not found: {path}") from None
    except yaml.YAMLError as e:
        raise UserError(f"job file {path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise UserError(f"job file {path} must be a mapping of option names to values")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


_JSON_SCALAR = re.compile(r"^(-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?|true|false|null)$")


def parse_key_values(pairs: tuple[str, ...] | list[str] | dict, what: str) -> dict[str, Any]:
    """`key=value` pairs into a dict. A value stays the string the user gave unless it is clearly
    JSON (a JSON number, true/false/null, or a JSON object, array or quoted string): `0123`,
    `1_000`, `12:30:00`, `yes` and `*secret` stay strings."""
    if isinstance(pairs, dict):
        return dict(pairs)
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UserError(f"{what} takes KEY=VALUE; one of them has no '=' or no key "
                             "(not shown: it may hold a secret)")
        out[key.strip().replace("-", "_") if what == "--engine-arg" else key.strip()] = json_or_text(value)
    return out


def json_or_text(value: str) -> Any:
    text = value.strip()
    if _JSON_SCALAR.match(text) or text[:1] in ("{", "[", '"'):
        try:
            return json.loads(text)
        except ValueError:
            pass
    return value
