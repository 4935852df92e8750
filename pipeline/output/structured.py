"""Typed structured outputs: a JSON schema (`--response-schema`) as Arrow types, and a completion
parsed into those columns.

The schema's top level must be an object; each of its properties becomes a column. Types follow
the schema: string → string, integer → int64, number → float64, boolean → bool, an `enum` →
its values' type (string for string enums), a nested object → struct, an array → list of its
items' type. `anyOf`/`oneOf` with `null`, a `["T", "null"]` type list and local `$ref`s
(`#/$defs/...`, what pydantic writes) are followed. Anything else (no type, mixed types) is a
string column holding the value as JSON text.

`parse` never raises: a completion that is not JSON or does not match the schema gives every
column null and a `parse_error` saying where and why. It is never dropped.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pyarrow as pa

_ANY = "any"  # no single type: the value as JSON text


class Mismatch(Exception):
    def __init__(self, path: str, message: str):
        super().__init__(f"{path}: {message}" if path else message)


def load_schema(data: Any, where: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the JSON schema, the request's response_format) from a schema file's content: a bare JSON
    schema, OpenAI's `{"name", "schema", "strict"}` or a whole `response_format`."""
    if not isinstance(data, dict):
        raise ValueError(f"{where} must hold a JSON schema object")
    if data.get("type") == "json_schema" and isinstance(data.get("json_schema"), dict):
        spec = data["json_schema"]
    elif isinstance(data.get("schema"), dict) and "properties" not in data:
        spec = data
    else:
        spec = {"name": str(data.get("title") or "response"), "schema": data, "strict": True}
    schema = spec["schema"]
    name = "".join(c if c.isalnum() or c in "_-" else "_" for c in str(spec.get("name") or "response"))[:64]
    resolved = _resolve(schema, schema)
    if _type_of(resolved, schema)[0] != "object" or not isinstance(resolved.get("properties"), dict):
        raise ValueError(f"{where}: the schema's top level must be an object with properties "
                         "(each property becomes a column)")
    arrow_type(schema)  # refuse what cannot be typed now, not at the first row
    fmt = {"type": "json_schema",
           "json_schema": {"name": name, "schema": schema, "strict": bool(spec.get("strict", True))}}
    return schema, fmt


def _resolve(node: Any, root: dict[str, Any], depth: int = 0) -> dict[str, Any]:
    if not isinstance(node, dict):
        return {}
    while "$ref" in node:
        ref = node["$ref"]
        if not isinstance(ref, str) or not ref.startswith("#/") or depth > 32:
            raise ValueError(f"unsupported $ref {ref!r}: only local references (#/$defs/...) are followed")
        target: Any = root
        for part in ref[2:].split("/"):
            target = target.get(part.replace("~1", "/").replace("~0", "~")) if isinstance(target, dict) else None
        if not isinstance(target, dict):
            raise ValueError(f"$ref {ref!r} points nowhere")
        node, depth = target, depth + 1
    return node


def _type_of(node: dict[str, Any], root: dict[str, Any]) -> tuple[str, dict[str, Any], bool]:
    """(one JSON type or _ANY, the node that defines it, whether null is allowed)."""
    node = _resolve(node, root)
    nullable = False
    for key in ("anyOf", "oneOf"):
        if isinstance(node.get(key), list):
            options = [_resolve(o, root) for o in node[key]]
            real = [o for o in options if o.get("type") != "null"]
            nullable = len(real) < len(options)
            if len(real) != 1:
                return _ANY, node, nullable
            kind, sub, inner_null = _type_of(real[0], root)
            return kind, sub, nullable or inner_null
    kind = node.get("type")
    if isinstance(kind, list):
        real = [k for k in kind if k != "null"]
        nullable = len(real) < len(kind)
        kind = real[0] if len(real) == 1 else None
        if kind == "number" and set(real) == {"integer", "number"}:
            kind = "number"
    if kind is None and isinstance(node.get("enum"), list) and node["enum"]:
        values = [v for v in node["enum"] if v is not None]
        nullable = nullable or len(values) < len(node["enum"])
        if values and all(isinstance(v, str) for v in values):
            kind = "string"
        elif values and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            kind = "integer"
        elif values and all(isinstance(v, bool) for v in values):
            kind = "boolean"
    if kind is None and "const" in node:
        kind = {str: "string", bool: "boolean", int: "integer", float: "number"}.get(type(node["const"]))
    if kind is None and isinstance(node.get("properties"), dict):
        kind = "object"
    if kind is None and "items" in node:
        kind = "array"
    if kind not in ("string", "integer", "number", "boolean", "object", "array"):
        return _ANY, node, nullable
    return kind, node, nullable


def arrow_type(schema: dict[str, Any], node: dict[str, Any] | None = None, depth: int = 0) -> pa.DataType:
    """The Arrow type of a JSON schema node (the whole schema: a struct of its properties)."""
    if depth > 32:
        raise ValueError("the response schema nests deeper than 32 levels (a recursive $ref?)")
    kind, node, _ = _type_of(schema if node is None else node, schema)
    if kind == "object":
        props = node.get("properties")
        if not isinstance(props, dict) or not props:
            return pa.string()  # a free-form object: JSON text
        return pa.struct([pa.field(str(k), arrow_type(schema, v, depth + 1)) for k, v in props.items()])
    if kind == "array":
        items = node.get("items")
        return pa.list_(arrow_type(schema, items if isinstance(items, dict) else {}, depth + 1))
    return {"string": pa.string(), "integer": pa.int64(), "number": pa.float64(),
            "boolean": pa.bool_()}.get(kind, pa.string())


def fields(schema: dict[str, Any]) -> list[tuple[str, pa.DataType]]:
    """The columns a schema gives: (property name, Arrow type), in the schema's order."""
    t = arrow_type(schema)
    return [(t.field(i).name, t.field(i).type) for i in range(t.num_fields)]


def parse(content: str | None, schema: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    """(property → value, None) for a completion that matches, else (None, parse error)."""
    if content is None:
        return None, "the completion has no text to parse"
    try:
        value = json.loads(content)
    except ValueError as e:
        msg = getattr(e, "msg", str(e))
        where = f" at line {e.lineno} column {e.colno}" if hasattr(e, "lineno") else ""
        return None, f"the completion is not JSON: {msg}{where}"
    except RecursionError:
        return None, "the completion is JSON nested too deeply to read"
    try:
        out = _convert(value, schema, schema, "", 0)
    except Mismatch as e:
        return None, f"the completion does not match the schema: {e}"
    if not isinstance(out, dict):
        return None, "the completion does not match the schema: the top level is not an object"
    return out, None


def _kind(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
            type(None): "null", int: "an integer", float: "a number"}.get(type(value), type(value).__name__)


def _convert(value: Any, node: dict[str, Any], root: dict[str, Any], path: str, depth: int) -> Any:
    if depth > 64:
        raise Mismatch(path, "nested too deeply")
    kind, node, nullable = _type_of(node, root)
    if value is None:
        if nullable or kind == _ANY:
            return None
        raise Mismatch(path or "(top)", "is null, which the schema does not allow")
    enum = node.get("enum")
    if isinstance(enum, list) and value not in enum:
        shown = ", ".join(json.dumps(v) for v in enum[:8])
        raise Mismatch(path or "(top)", f"{json.dumps(value)[:60]} is not one of {shown}")
    if "const" in node and value != node["const"]:
        raise Mismatch(path or "(top)", f"must be {json.dumps(node['const'])[:60]}")
    where = path or "(top)"
    if kind == _ANY:
        return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    if kind == "string":
        if not isinstance(value, str):
            raise Mismatch(where, f"expected a string, got {_kind(value)}")
        return value
    if kind == "boolean":
        if not isinstance(value, bool):
            raise Mismatch(where, f"expected a boolean, got {_kind(value)}")
        return value
    if kind == "integer":
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise Mismatch(where, f"expected an integer, got {_kind(value)}")
        if not -(2**63) <= value < 2**63:
            raise Mismatch(where, "integer out of the 64-bit range")
        return value
    if kind == "number":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise Mismatch(where, f"expected a number, got {_kind(value)}")
        return float(value)
    if kind == "array":
        if not isinstance(value, list):
            raise Mismatch(where, f"expected an array, got {_kind(value)}")
        items = node.get("items") if isinstance(node.get("items"), dict) else {}
        return [_convert(v, items, root, f"{path}[{i}]", depth + 1) for i, v in enumerate(value)]
    # object
    if not isinstance(value, dict):
        raise Mismatch(where, f"expected an object, got {_kind(value)}")
    props = node.get("properties")
    if not isinstance(props, dict) or not props:
        return json.dumps(value, ensure_ascii=False)
    required = node.get("required") if isinstance(node.get("required"), list) else []
    missing = [k for k in required if k not in value]
    if missing:
        raise Mismatch(where, f"required property {missing[0]!r} is missing")
    if node.get("additionalProperties") is False:
        extra = sorted(set(value) - set(props))
        if extra:
            raise Mismatch(where, f"property {extra[0]!r} is not in the schema")
    return {k: _convert(value.get(k), sub, root, f"{path}.{k}" if path else k, depth + 1)
            if k in value else None for k, sub in props.items()}
