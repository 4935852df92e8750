"""Run configuration: one frozen dataclass, filled from the command line over a job file over
defaults, and validated once at the edge."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, field, make_dataclass
from pathlib import Path
from typing import Any

import yaml

from pipeline import options

KEY_VALUE_OPTIONS = ("storage_option", "engine_arg", "engine_option", "sample", "sample_column", "route", "lora")  # KEY=VALUE..., held as dicts


def _field(opt: options.Opt):
    if opt.name in KEY_VALUE_OPTIONS:
        return field(default_factory=dict)
    if opt.multiple:
        return field(default=())
    if opt.is_flag:
        return field(default=False)
    return field(default=opt.default)


class _RunConfigMethods:
    @property
    def storage_options(self) -> dict[str, Any]:
        return self.storage_option

    @property
    def engine_options(self) -> dict[str, Any]:
        return self.engine_option

    def engine_args(self) -> dict[str, Any]:
        """The vLLM EngineArgs this run sets (unset ones keep vLLM's defaults)."""
        args = {k: getattr(self, k) for k in options.ENGINE_ARGS if getattr(self, k) is not None}
        args.update(self.engine_arg)
        return args

    def output_options(self) -> dict[str, Any]:
        """The options that change what rows say: part of the resume fingerprint."""
        d = asdict(self)
        return {k: (list(d[k]) if isinstance(d[k], tuple) else d[k]) for k in options.OUTPUT_OPTIONS}

    def model_names(self) -> frozenset[str]:
        from pipeline.models.names import served_names

        return served_names(self.model, self.served_model_name)


# `pipeline run`'s configuration: one frozen dataclass with a field per option of the table
# (options.py), filled from the command line over a job file over defaults.
RunConfig = make_dataclass(
    "RunConfig",
    [("inputs", tuple), *((o.name, Any, _field(o)) for o in options.of(options.RUN))],
    bases=(_RunConfigMethods,), frozen=True, kw_only=True,
)
RunConfig.__module__ = __name__


def load_job(path: str) -> dict[str, Any]:
    """Read a job file: its keys are the long option names (dashes or underscores)."""
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        raise ValueError(f"job file not found: {path}") from None
    except yaml.YAMLError as e:
        raise ValueError(f"job file {path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"job file {path} must be a mapping of option names to values")
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
            raise ValueError(f"{what} takes KEY=VALUE; one of them has no '=' or no key "
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
