"""The job's own row check, from its options: `check` (a Python callable taking the row dict, a
pydantic model class the content must validate as, or `module:function` naming a callable),
`check_schema` (a JSON schema file the content, parsed as JSON, must fit) and `check_regex` (a
regular expression the whole content must match). Every one given must pass; the first failure's
message is the row's `verdict_message`, its verdict `failed_check`.

A check that parses the content as JSON (`check_schema`, a pydantic model, or a callable with an
attribute `expects_json = True`) says so (`expects_json(check)`): a `--repair failed_check` of a
request without a response_format then adds the engine's JSON grammar to its repair turn.
"""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.verdicts.judge import Check, schema_problem


def row_check(check: Any = None, check_schema: str | None = None, check_regex: str | None = None) -> Check | None:
    """One check of all given (None: none given). Raises ValueError, saying what to fix, for a
    check that cannot be used: an unimportable name, an unreadable schema, a bad regex."""
    checks = [c for c in (_callable(check), _schema(check_schema), _regex(check_regex)) if c is not None]
    if not checks:
        return None
    if len(checks) == 1:
        return checks[0]

    def every(row: dict[str, Any]) -> str | None:
        for c in checks:
            result = c(row)
            if result is False or (isinstance(result, str) and result):
                return result
        return None
    every.expects_json = any(expects_json(c) for c in checks)
    return every


def expects_json(check: Any) -> bool:
    """Whether the check reads the content as JSON (see the module's doc)."""
    return getattr(check, "expects_json", False) is True


def _callable(check: Any) -> Check | None:
    if check is None:
        return None
    if isinstance(check, str):
        check = _import(check)
    if isinstance(check, type) and hasattr(check, "model_validate_json"):
        return _pydantic(check)
    if not callable(check):
        raise ValueError(f"--check must name a callable (module:function), not {check!r}")
    return check


def _import(name: str) -> Callable:
    module, _, attr = name.partition(":")
    if not module or not attr:
        raise ValueError(f"--check {name!r}: give it as module:function (a function of an importable module "
                         "that takes the row dict and returns None to pass or a message to fail)")
    try:
        found = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"--check {name!r} cannot be imported: {e}. Hint: the module must be on PYTHONPATH") from None
    return found


def _pydantic(model: type) -> Check:
    """A pydantic model as a check: the content must validate as it (its first error is the message)."""
    def check(row: dict[str, Any]) -> str | None:
        try:
            model.model_validate_json(row.get("content") or "")
        except ValueError as e:
            errors = e.errors() if hasattr(e, "errors") else []
            if errors:
                first = errors[0]
                where = ".".join(str(p) for p in first.get("loc", ())) or "the top level"
                return f"{model.__name__}: at {where}: {first.get('msg')}"
            return f"{model.__name__}: {e}"
        return None
    check.__name__ = f"pydantic:{model.__module__}.{model.__qualname__}"
    check.expects_json = True
    return check


def _schema(path: str | None) -> Check | None:
    if path is None:
        return None
    import yaml

    try:
        schema = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"--check-schema {path}: cannot be read as JSON or YAML: {e}") from None
    if not isinstance(schema, dict):
        raise ValueError(f"--check-schema {path} must hold a JSON schema object")

    def check(row: dict[str, Any]) -> str | None:
        try:
            value = json.loads(row.get("content") or "")
        except ValueError as e:
            return f"check-schema: the content is not JSON: {e}"
        problem = schema_problem(value, schema)
        return f"check-schema {Path(path).name}: {problem}" if problem else None
    check.expects_json = True
    return check


def _regex(pattern: str | None) -> Check | None:
    if pattern is None:
        return None
    try:
        compiled = re.compile(pattern, re.DOTALL)
    except re.error as e:
        raise ValueError(f"--check-regex {pattern!r} is not a regular expression: {e}") from None

    def check(row: dict[str, Any]) -> str | None:
        if compiled.fullmatch((row.get("content") or "").strip()):
            return None
        return f"check-regex: the content does not match {pattern!r}"
    return check
