"""Parse and validate one raw input row into a `Request` or a `FailedRequest`: its shape gives
the body, its endpoint's `parse` (pipeline/endpoints/) checks the body.

Validation is a pure function of the row (plus the run's context), so that `validate`,
`estimate` and `run` can never disagree about which rows are valid.
"""

from __future__ import annotations

import fnmatch
import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from pipeline.endpoints import DEFAULT, ENDPOINTS, Origin
from pipeline.intake.resume import Seed
from pipeline.intake.shapes import SHAPES_BY_NAME, Shape, detect
from pipeline.records import (
    FailedRequest,
    Invalid,
    Request,
    Source,
    is_text,
    kind_of,
    short,
)


@dataclass(frozen=True)
class Context:
    """What validation needs to know about the run."""

    # Names under which the run's model may be asked for (its name, alias, served names).
    # Empty: any model is accepted (e.g. `validate` without --model).
    model_names: frozenset[str] = frozenset()
    max_n: int = 4
    # --route PATTERN=MODEL: other names (exact, or globs such as gpt-4o*; * is a catch-all)
    # that requests may use for this run's model or one of its adapters, in the order given.
    routes: tuple[tuple[str, str], ...] = ()
    # --lora NAME=PATH: the names of the LoRA adapters this run serves on its model.
    adapters: frozenset[str] = frozenset()
    # Job defaults of request fields (reasoning_effort, chat_template_kwargs, thinking_token_budget):
    # a chat row that does not set one takes it; chat_template_kwargs merge, the row's keys winning.
    defaults: tuple[tuple[str, Any], ...] = ()
    # The kind of model the run serves (--runner, or what its files need): a valid request for an
    # endpoint of the other kind gets `unsupported_endpoint` here, so that validate, estimate, a dry
    # run and the run give it the same verdict. None: any (a context without a run).
    runner: str | None = None

    @classmethod
    def of(cls, model: str | None, served: tuple[str, ...] = (), max_n: int = 4,
           routes: dict[str, str] | None = None, adapters: tuple[str, ...] = ()) -> Context:
        """The context of a run of `model` (with these adapters); raises ValueError for a route
        to a model this run does not serve."""
        from pipeline.models.names import served_names

        names = served_names(model, tuple(served)) if model else frozenset()
        pairs = tuple((str(k), str(v)) for k, v in (routes or {}).items())
        known = names | set(adapters)
        for pattern, target in pairs:
            if names and target not in known:
                raise ValueError(f"--route {pattern}={target}: this run serves {', '.join(sorted(known))}, "
                                 f"not {target}. Hint: route to one of those names, or add the adapter "
                                 f"with --lora {target}=PATH")
        return cls(names, max_n, pairs, frozenset(adapters))

    def accepts(self, model: str) -> bool:
        return not self.model_names or model in self.model_names or model in self.adapters or any(
            fnmatch.fnmatchcase(model, pattern) for pattern, _ in self.routes)

    def adapter_for(self, model: str | None) -> str | None:
        """The adapter a request for `model` runs with: the adapter of that name, else the target
        of the first route whose pattern matches, if that is an adapter; None: the base model."""
        if model is None or model in self.adapters or model in self.model_names:
            return model if model in self.adapters else None
        target = next((t for pattern, t in self.routes if fnmatch.fnmatchcase(model, pattern)), None)
        return target if target in self.adapters else None


MAX_CUSTOM_ID = 512  # characters


def parse_row(
    row: Any, *, source: Source, line: int, ctx: Context, shape: Shape | None = None
) -> Request | FailedRequest:
    """Turn one decoded row into a Request, or a FailedRequest saying what is wrong. Total: whatever
    the value, exactly one of the two comes out, and both can be written to Parquet."""
    custom_id = source.default_id(line)
    user = shape_name = None
    try:
        if not isinstance(row, dict):
            raise Invalid("invalid_row", f"a row must be a JSON object, got {kind_of(row)}")
        shape = shape or detect(row)
        shape_name = shape.name
        id_field = shape.id_field(row)  # custom_id; Gemini's lines: key
        given_id = row.get(id_field)
        if given_id is not None:
            if not isinstance(given_id, str) or not given_id:
                raise Invalid("invalid_parameter", f"{id_field} must be a non-empty string", id_field)
            if len(given_id) > MAX_CUSTOM_ID:
                raise Invalid("invalid_parameter", f"{id_field} is {len(given_id)} characters; at most "
                              f"{MAX_CUSTOM_ID} are accepted", id_field)
            if not is_text(given_id):
                raise Invalid("invalid_utf8", f"{id_field} holds a lone surrogate (\\ud800-\\udfff), which "
                              "is not text; fix the encoding of the tool that wrote it", id_field)
            custom_id = given_id
        warnings: list[str] = []
        body = shape.read(row, warnings)
        if isinstance(body, dict) and isinstance(body.get("user"), str) and is_text(body["user"]):
            user = body["user"]
        try:
            request = _parse_body(body, custom_id, source, line, ctx, warnings, shape_name)
        except Invalid as e:
            raise shape.explained(e) from None
        return _served(request, ctx)
    except Invalid as e:
        return FailedRequest(custom_id, source.name, line, e.code, e.message, e.param, user, shape=shape_name,
                             file=source.index)
    except Exception as e:  # a bug of ours must cost one row, never the job (an interruption is no Exception)
        return FailedRequest(custom_id, source.name, line, "invalid_row",
                             f"the row could not be read ({type(e).__name__}: {short(str(e), 120)}); "
                             "please report this with the row", None, user, shape=shape_name, file=source.index)


def _parse_body(
    body: Any, custom_id: str, source: Source, line: int, ctx: Context, warnings: list[str],
    shape: str | None = None,
) -> Request:
    """A body as its endpoint's Request (the endpoint of the line's shape; chat's for a body that names none)."""
    if not isinstance(body, dict):
        raise Invalid("invalid_row", f"the request body must be a JSON object, got {kind_of(body)}", "body")
    model = _model(body.get("model"), ctx)
    endpoint = ENDPOINTS[SHAPES_BY_NAME[shape].endpoint] if shape in SHAPES_BY_NAME else DEFAULT
    return endpoint.parse(body, Origin(custom_id, source, line, model, shape, ctx.adapter_for(model)), ctx, warnings)


def _served(request: Request, ctx: Context) -> Request:
    """The request, if the run's kind of model serves its endpoint."""
    problem = ENDPOINTS[request.endpoint].unsupported(ctx.runner) if ctx.runner is not None else None
    if problem is not None:
        raise Invalid(problem.code, problem.message, problem.param)
    return request


def _model(model: Any, ctx: Context) -> str | None:
    """The model the request names, if this run serves it (its name, a route or an adapter)."""
    if model is not None and not isinstance(model, str):
        raise Invalid("invalid_parameter", f"model must be a string, got {kind_of(model)}", "model")
    if model is not None and not ctx.accepts(model):
        names = ", ".join(sorted(ctx.model_names | ctx.adapters))
        raise Invalid(
            "model_mismatch",
            f"the request asks for model {short(model)} but this run serves {names}. Hint: to run "
            f"it on this model, pass --route '{short(model, 40).strip(chr(39))}=<one of those names>' "
            "(or a pattern such as 'gpt-4o*=...' or '*=...' for every name), or "
            "--served-model-name; or run with -m for that model",
            "model",
        )
    return model


class SeenIds:
    """An exact set of 64-bit id digests in about 8 bytes per id: the latest `recent` digests in
    a Python set, the older ones in sorted numpy arrays, one per bucket of the digest's top
    `bits` bits. A full set is merged into the buckets it touches, so growing never copies the
    whole set at once (the open-addressing table it replaces took 16 to 32 bytes per id and more
    while it doubled: 699 MiB of peak RSS for 20M ids, against 224 MiB; docs/performance.md)."""

    def __init__(self, *, bits: int = 12, recent: int = 1 << 18):
        self.shift, self.limit = 64 - bits, recent
        self.buckets = [np.empty(0, dtype=np.uint64)] * (1 << bits)
        self.recent: set[int] = set()
        self.count = 0

    def add(self, custom_id: str) -> bool:
        """Add an id; True if it was already there."""
        key = int.from_bytes(hashlib.blake2b(custom_id.encode(), digest_size=8).digest(), "little")
        if key in self.recent:
            return True
        bucket = self.buckets[key >> self.shift]
        i = int(bucket.searchsorted(key)) if len(bucket) else 0
        if i < len(bucket) and int(bucket[i]) == key:
            return True
        self.recent.add(key)
        self.count += 1
        if len(self.recent) >= self.limit:
            self._merge()
        return False

    def add_digests(self, digests: np.ndarray) -> None:
        """Add ids' digests (resume.digest): a resumed run's skipped lines. A few go to the recent
        set and are merged as `add`'s are, once it is full (merging at every call would cost the
        whole set each); a batch as large as the recent set is merged into the buckets at once,
        as numbers (18M digests through a Python set took 1.7 GiB and 20 s; docs/performance.md)."""
        self.count += len(digests)
        if len(digests) >= self.limit:
            self._merge_keys(np.sort(np.asarray(digests, dtype=np.uint64)))
            return
        self.recent.update(digests.tolist())
        if len(self.recent) >= self.limit:
            self._merge()

    def _merge(self) -> None:
        if not self.recent:
            return
        keys = np.fromiter(self.recent, dtype=np.uint64, count=len(self.recent))
        keys.sort()
        self.recent = set()
        self._merge_keys(keys)

    def _merge_keys(self, keys: np.ndarray) -> None:
        """Sorted digests merged into the buckets they fall in."""
        tops = keys >> np.uint64(self.shift)
        cuts = np.flatnonzero(np.diff(tops)) + 1
        for chunk in np.split(keys, cuts):
            b = int(chunk[0]) >> self.shift
            merged = np.concatenate((self.buckets[b], chunk))
            merged.sort(kind="stable")  # two sorted runs: a linear merge
            self.buckets[b] = merged


def validate_rows(
    rows: Iterable[tuple[Source, int, Any]], ctx: Context
) -> Iterator[Request | FailedRequest]:
    """Validate a stream of (source, line, row), file after file, and flag a custom_id used twice
    in one file (two files may use the same ids: a row's key is its file and line).

    A row that is already a FailedRequest (unreadable line) passes through.
    """
    seen, shape, current = SeenIds(), None, None
    for source, line, row in rows:
        if source != current:
            seen, shape, current = SeenIds(), None, source
        if isinstance(row, Seed):  # lines a resumed run skipped: the shape they fix, their ids
            shape = detect(row.first) if isinstance(row.first, dict) else shape
            seen.add_digests(row.digests)
            continue
        if isinstance(row, FailedRequest):  # an unreadable line: it takes its file's shape, once known
            yield replace(row, shape=shape.name) if shape is not None else row
            continue
        if shape is None and isinstance(row, dict):
            shape = detect(row)  # a file's shape: that of its first object
        item = parse_row(row, source=source, line=line, ctx=ctx, shape=shape)
        id_field = shape.id_field(row) if isinstance(row, dict) else "custom_id"
        if isinstance(row, dict) and row.get(id_field) == item.custom_id and seen.add(item.custom_id):
            item = FailedRequest(
                item.custom_id, source.name, line, "duplicate_custom_id",
                f"{id_field} {short(item.custom_id)} appears earlier in this file; every request of a "
                "file needs its own id", id_field, item.user, shape=item.shape, file=source.index,
            )
        yield item
