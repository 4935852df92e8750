"""Images in requests: every image_url part fetched, decoded and checked before the engine sees it.

vLLM fails a whole `LLM.chat` call for one undecodable image or one request over the image limit
(our engine adds requests one by one, so only that request, but without naming the part), so no
image reaches it unchecked: `resolve_all` fetches each part's bytes (a data: URI, a path or
any fsspec URL, with the job's storage options, a size limit, a timeout and retries), decodes them
with PIL, and puts them back as a data: URI of the validated bytes. A bad image makes its request
an error row naming the part (`messages[0].content[1].image_url`) and the cause.

The work runs on a thread pool (PIL releases the GIL while decoding; fetches wait on the network),
a bounded number of requests ahead of the consumer, in input order: memory stays bounded however
many images a file holds, and none of it runs inside the engine's loop. Data URIs cross the pipe to
the engine process as the compressed bytes (base64): a decoded PIL image is width x height x 3
bytes, ten to a hundred times more for photos (bench/io_scale.py measures both).
"""

from __future__ import annotations

import base64
import binascii
import io
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

from pipeline.models.render import image_parts
from pipeline.records import FailedRequest, Invalid, Request, short

FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp", "GIF": "image/gif",
           "BMP": "image/bmp", "TIFF": "image/tiff"}


@dataclass(frozen=True)
class ImagePolicy:
    """How a job's images are fetched and checked."""

    max_bytes: int = 20 * 1024 * 1024  # --image-max-bytes: per image, fetched or inline
    limit: int | None = None  # --limit-mm-per-prompt image=N: images per request
    timeout: float = 30.0  # seconds per fetch
    retries: int = 2  # more tries after a failed fetch (not after a missing file)
    workers: int = 8
    ahead: int = 64  # requests in flight ahead of the consumer
    storage_options: dict[str, Any] = field(default_factory=dict)
    model: str | None = None
    vision: bool | None = None  # is the model a vision-language model (None: unknown, or no model)


def resolve(item: Request | FailedRequest, policy: ImagePolicy) -> Request | FailedRequest:
    """The request with every image checked and inlined as a data: URI, or the FailedRequest
    saying which image is wrong and why."""
    if not isinstance(item, Request):
        return item
    parts = list(image_parts(item.messages))
    if not parts:
        return item
    try:
        _refuse(parts, policy)
        urls = {param: inline(part["image_url"]["url"], param, policy) for param, part in parts}
    except Invalid as e:
        failed = FailedRequest.about(e.problem, item)  # its file index too: the resume key
        return replace(failed, carried=item.carried, shape=item.shape)
    return replace(item, messages=_with_urls(item.messages, urls))


def _refuse(parts: list[tuple[str, dict[str, Any]]], policy: ImagePolicy) -> None:
    param = parts[0][0]
    if policy.vision is False:
        from pipeline.models.vision import EXAMPLES

        raise Invalid("unsupported_content", f"{param} is an image, and {policy.model} is a text-only model; "
                      f"use a vision-language model, e.g. {EXAMPLES}", param)
    if policy.limit is not None and len(parts) > policy.limit:
        from pipeline.models.vision import too_many_images

        problem = too_many_images([p for p, _ in parts], policy.limit)
        raise Invalid(problem.code, problem.message, problem.param)


def _with_urls(messages: list[dict[str, Any]], urls: dict[str, str]) -> list[dict[str, Any]]:
    out = []
    for i, msg in enumerate(messages):
        content = msg.get("content")
        if isinstance(content, list) and any(f"messages[{i}].content[{j}].image_url" in urls for j in range(len(content))):
            content = [{**p, "image_url": {**p["image_url"], "url": urls[f"messages[{i}].content[{j}].image_url"]}}
                       if p.get("type") == "image_url" else p for j, p in enumerate(content)]
            msg = {**msg, "content": content}
        out.append(msg)
    return out


def inline(url: str, param: str, policy: ImagePolicy) -> str:
    """The image at `url` as a data: URI of its checked bytes; Invalid saying what is wrong."""
    data = _inline_bytes(url, param) if url.startswith("data:") else fetch(url, param, policy)
    if len(data) > policy.max_bytes:  # a fetch stops one byte over: its size is not known
        size = f"{len(data):,} bytes" if url.startswith("data:") else f"over {policy.max_bytes:,} bytes"
        raise Invalid("image_too_large", f"{param} is {size}; at most {policy.max_bytes:,} are "
                      "accepted. Hint: shrink the image or raise --image-max-bytes", param)
    mime = check(data, param)
    if url.startswith("data:"):  # the same base64, with the media type the bytes are
        return f"data:{mime};base64,{url.partition(',')[2]}"
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def _inline_bytes(url: str, param: str) -> bytes:
    head, sep, payload = url.partition(",")
    if not sep or not head.endswith(";base64"):
        raise Invalid("invalid_image", f"{param} is a data: URI that is not base64 "
                      "(data:image/png;base64,...)", param)
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise Invalid("invalid_image", f"{param} holds data that is not valid base64", param) from None


def check(data: bytes, param: str) -> str:
    """Decode the image fully (what vLLM will do); its media type, or Invalid.

    A full decode, although vLLM decodes the image again in the engine process: it is the check
    that guarantees vLLM's decode and estimate's processor succeed. A lighter one lets images
    through that only a decode refuses (a PNG whose chunks verify, CRCs and all, but whose pixel
    data does not inflate: a broken encoder's), and Pillow's `verify` checks nothing at all for
    JPEG. It costs about what vLLM's own decode costs, runs ahead of the engine on the intake
    threads, and is a third or less of the engine's work per image (docs/images.md)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt = img.format
            img.load()
    except Exception as e:  # noqa: BLE001 - PIL raises many kinds for bad bytes
        raise Invalid("invalid_image", f"{param} could not be decoded as an image ({type(e).__name__}: "
                      f"{short(str(e), 100)}); send PNG, JPEG, WebP or GIF", param) from None
    if fmt not in FORMATS:
        raise Invalid("invalid_image", f"{param} is a {fmt} image; send PNG, JPEG, WebP, GIF, BMP or TIFF", param)
    return FORMATS[fmt]


def fetch(url: str, param: str, policy: ImagePolicy) -> bytes:
    """The bytes at a path or fsspec URL (at most max_bytes + 1 are read), with retries."""
    for attempt in range(policy.retries + 1):
        try:
            return _read(url, policy)
        except (FileNotFoundError, IsADirectoryError, PermissionError) as e:
            cause = e
            break
        except Exception as e:  # noqa: BLE001 - network errors come in every kind
            cause = e
            if attempt < policy.retries:
                time.sleep(min(0.2 * 2**attempt, 2.0))
    raise Invalid("image_fetch_failed", f"{param}: the image at {short(url, 80)} could not be read "
                  f"({type(cause).__name__}: {short(str(cause), 100)})", param)


def _read(url: str, policy: ImagePolicy) -> bytes:
    """One try: the first max_bytes + 1 bytes, within `policy.timeout` seconds on a filesystem that
    waits on the network.

    Every fsspec filesystem that does (http(s), s3fs, gcsfs, adlfs) is async: the read runs as one
    coroutine on fsspec's loop under `asyncio.wait_for`, which cancels it at the deadline, so the
    socket is closed and the wait really ends, whatever each client's own timeouts and retries are
    (botocore's read timeout is 60 s, retried; Azure's retry policy waits longer)."""
    from fsspec.asyn import sync
    from fsspec.exceptions import FSTimeoutError

    from pipeline.storage import Location

    loc = Location.of(url, policy.storage_options)
    if not getattr(loc.fs, "async_impl", False):  # a local path, memory://: nothing to wait for
        with loc.fs.open(loc.path, "rb") as f:
            return f.read(policy.max_bytes + 1)
    try:
        return sync(loc.fs.loop, _head_and_read, loc.fs, loc.path, policy.max_bytes + 1, timeout=policy.timeout)
    except FSTimeoutError:
        raise TimeoutError(f"no answer within {policy.timeout:g} s. Hint: raise --image-timeout for a slow "
                           "store") from None


async def _head_and_read(fs: Any, path: str, limit: int) -> bytes:
    """The first `limit` bytes. The size first (what `fs.open` asks too): a byte range past the
    end of an empty object is an error on S3, GCS and Azure, and an empty image is undecodable."""
    size = (await fs._info(path)).get("size")
    if size == 0:
        return b""
    return await fs._cat_file(path, start=0, end=limit if size is None else min(size, limit))


def resolve_all(items: Iterable[Request | FailedRequest], policy: ImagePolicy) -> Iterator[Request | FailedRequest]:
    """`resolve` over a stream, on a thread pool, at most `policy.ahead` requests ahead, in order."""
    pending: deque[Future | Request | FailedRequest] = deque()
    with ThreadPoolExecutor(policy.workers, thread_name_prefix="images") as pool:
        for item in items:
            has_images = isinstance(item, Request) and next(image_parts(item.messages), None) is not None
            pending.append(pool.submit(resolve, item, policy) if has_images else item)
            while pending and (len(pending) > policy.ahead or not isinstance(pending[0], Future) or pending[0].done()):
                head = pending.popleft()
                yield head.result() if isinstance(head, Future) else head
        while pending:
            head = pending.popleft()
            yield head.result() if isinstance(head, Future) else head
