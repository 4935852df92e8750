"""The registries of the two axes the project grows along: every endpoint (pipeline/endpoints/)
is known to every engine and to intake, and every provider (pipeline/providers/) defines every
member. A failure names the file to add or fill."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

import pipeline
from pipeline.endpoints import ENDPOINTS, RUNNERS, Endpoint
from pipeline.engines.base import KINDS

PACKAGE = Path(pipeline.__file__).parent


def _table(module: str, name: str) -> set[str]:
    """The keys of a module-level dict literal (read from the source: engines import vLLM)."""
    path = PACKAGE.parent / (module.replace(".", "/") + ".py")
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            assert isinstance(node.value, ast.Dict), (
                f"{path.relative_to(PACKAGE.parent)}: {name} must be a dict literal"
            )
            return {k.value for k in node.value.keys if isinstance(k, ast.Constant)}
    raise AssertionError(f"{path.relative_to(PACKAGE.parent)} has no {name} table: add one, keyed by endpoint")


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_engine_submits_every_endpoint(kind):
    module = KINDS[kind].target.split(":")[0]
    keys = _table(module, "SUBMIT")
    missing, unknown = sorted(set(ENDPOINTS) - keys), sorted(keys - set(ENDPOINTS))
    assert not missing, f"{module.replace('.', '/')}.py: add {missing} to SUBMIT (how the engine takes that endpoint)"
    assert not unknown, f"{module.replace('.', '/')}.py: SUBMIT names {unknown}, which pipeline/endpoints/ has not"


def test_the_pooling_queue_steps_every_pooling_endpoint():
    pooling = {name for name, e in ENDPOINTS.items() if e.runner == "pooling"}
    keys = _table("pipeline.engines.pooling", "STEP")
    assert keys == pooling, f"pipeline/engines/pooling.py: STEP must have {sorted(pooling)}, it has {sorted(keys)}"
    keys = _table("pipeline.engines.pooling", "PROTOCOL")
    assert keys == pooling, (
        f"pipeline/engines/pooling.py: PROTOCOL (vLLM's class of each body) must have {sorted(pooling)}")


@pytest.mark.parametrize("name", sorted(ENDPOINTS))
def test_every_endpoint_is_one_file_with_every_member(name):
    endpoint = ENDPOINTS[name]
    file = f"pipeline/endpoints/{name}.py"
    assert isinstance(endpoint, Endpoint) and endpoint.name == name
    assert (PACKAGE / "endpoints" / f"{name}.py").exists(), f"add {file}, building its Endpoint"
    assert endpoint.parse.__module__ == f"pipeline.endpoints.{name}", f"{file}: define its parse there"
    for f in dataclasses.fields(Endpoint):
        optional = ("prompts", "pairs", "default_max_tokens", "template_body", "parts")
        assert getattr(endpoint, f.name) is not None or f.name in optional, (
            f"{file}: its Endpoint has no {f.name}")
    assert endpoint.runner in RUNNERS, f"{file}: runner must be one of {RUNNERS}"
    assert endpoint.urls.match(endpoint.url), f"{file}: its url {endpoint.url!r} must match its own urls"


@pytest.mark.parametrize("name", sorted(ENDPOINTS))
def test_every_endpoint_has_its_line_shape(name):
    from pipeline.intake.shapes import SHAPES_BY_NAME

    endpoint = ENDPOINTS[name]
    shape = SHAPES_BY_NAME.get(endpoint.shape)
    assert shape is not None, (
        f"pipeline/endpoints/{name}.py: its shape {endpoint.shape!r} is no shape of intake/shapes.py"
    )
    assert shape.endpoint == name


@pytest.mark.parametrize("name", sorted(ENDPOINTS))
def test_every_endpoint_body_is_read_back_as_its_own(name):
    """A line of each endpoint's URL is read as a request of that endpoint, whose body parses again."""
    from pipeline.intake.requests import Context, parse_row
    from pipeline.records import Request, Source

    bodies = {"chat": {"messages": [{"role": "user", "content": "hi"}]}, "completions": {"prompt": "hi"},
              "embeddings": {"input": "hi"}, "score": {"queries": "q", "documents": ["a"]},
              "rerank": {"query": "q", "documents": ["a"]},
              "transcriptions": {"file_url": "data:audio/wav;base64,UklGRg==", "language": "en"},
              "translations": {"file_url": "data:audio/wav;base64,UklGRg==", "response_format": "verbose_json"}}
    assert name in bodies, f"tests/unit/test_registry.py: add a body of {name} to this test"
    line = {"custom_id": "x", "method": "POST", "url": ENDPOINTS[name].url, "body": bodies[name]}
    req = parse_row(line, source=Source(0, "in.jsonl", "in.jsonl"), line=1, ctx=Context())
    assert isinstance(req, Request) and req.endpoint == name, req
    again = parse_row({**line, "body": req.body}, source=Source(0, "in.jsonl", "in.jsonl"), line=1,
                      ctx=Context())
    assert again == req


def test_every_provider_defines_every_member():
    from pipeline.providers import PROVIDERS, Provider

    for name, provider in PROVIDERS.items():
        file = f"pipeline/providers/{name}.py"
        assert isinstance(provider, Provider) and provider.name == name
        assert (PACKAGE / "providers" / f"{name}.py").exists(), f"add {file}, building its Provider"
        assert provider.line_out.__module__ == f"pipeline.providers.{name}", f"{file}: define its line_out there"
        for member in ("title", "line_out", "owns", "failed", "summary", "image_field", "runners"):
            assert getattr(provider, member), f"{file}: its Provider has no {member}"
        own_lines = (provider.shape, provider.shape_title, provider.body_in)
        assert all(own_lines) or not any(own_lines), (
            f"{file}: a provider with its own request lines needs shape, shape_title and body_in")


def test_formats_shapes_and_read_back_come_from_the_providers():
    from pipeline.intake.shapes import SHAPES_BY_NAME
    from pipeline.options import OPTIONS
    from pipeline.output.formats import LINE_FORMATS, NATIVE, WRITERS, summary
    from pipeline.providers import PROVIDERS

    [fmt] = [o for o in OPTIONS if o.name == "format"]
    for name, provider in PROVIDERS.items():
        if provider.format_choice:
            assert name in LINE_FORMATS and WRITERS[name] is provider.line_out and name in fmt.type.choices
        if provider.shape is not None:
            assert provider.shape in SHAPES_BY_NAME, f"pipeline/providers/{name}.py: shape {provider.shape!r} unknown"
            assert NATIVE[provider.shape] is provider.line_out
    row = {"custom_id": "x", "model": "m", "served_model": None, "content": "hi", "choices": [
        {"index": 0, "content": "hi", "finish_reason": "stop", "tool_calls": None, "logprobs": None}],
        "error": None, "prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4, "cached_tokens": 0,
        "reasoning_tokens": None, "estimated_cost": None, "images": 2, "finished_at": None, "source_line": 1,
        "reasoning_content": None}
    for name, provider in PROVIDERS.items():  # each line is read back as its own, with its image count
        read = summary(provider.line_out(row))
        assert (read["custom_id"], read["content"], read["images"]) == ("x", "hi", 2), f"pipeline/providers/{name}.py"
