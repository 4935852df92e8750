"""Images in requests: every image_url part fetched, decoded and checked before the engine sees it.

vLLM fails a whole `LLM.chat` call for one undecodable image or one request over the image limit
(our engine adds requests one by one, so only that request, but without naming the part), so no
image reaches it unchecked: `resolve_all` fetches each part's bytes (a data: URI, or a path or URL
under the job's media rules, media.py: a size limit, a timeout and retries), decodes them with PIL,
and puts them back as a data: URI of the validated bytes. A bad image makes its request an error
row naming the part (`messages[0].content[1].image_url`) and the cause.

Memory stays bounded whatever a request holds: an image's pixel count is read from its header
before anything is decoded (`--image-max-pixels`), a request may hold at most
`--images-per-request` images of `--image-bytes-per-request` bytes together (OpenAI's bounds), and
running out of memory on one request makes that request an error row, not the run's end.

The work runs on daemon threads (PIL releases the GIL while decoding; fetches wait on the network),
a bounded number of requests (and bytes) ahead of the consumer, in input order, and none of it runs
inside the engine's loop. Data URIs cross the pipe to the engine process as the compressed bytes
(base64): a decoded PIL image is width x height x 3 bytes, ten to a hundred times more for photos
(bench/io_scale.py measures both).
"""

from __future__ import annotations

import base64
import binascii
import io
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import Any

from pipeline.intake.media import DaemonPool, MediaRules, Refused, fetch
from pipeline.models.render import image_parts, media_bytes
from pipeline.records import FailedRequest, Invalid, Request, short

FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp", "GIF": "image/gif",
           "BMP": "image/bmp", "TIFF": "image/tiff"}
AHEAD_BYTES = 256 * 1024 * 1024  # checked image bytes held ahead of the consumer, at most (about)


@dataclass(frozen=True)
class ImagePolicy:
    """How a job's images are fetched and checked."""

    max_bytes: int = 20 * 1024 * 1024  # --image-max-bytes: per image, fetched or inline
    max_pixels: int = 50_000_000  # --image-max-pixels: width x height, read from the header
    per_request: int = 500  # --images-per-request
    bytes_per_request: int = 50 * 1024 * 1024  # --image-bytes-per-request
    limit: int | None = None  # --limit-mm-per-prompt image=N: images per request
    workers: int = 8
    ahead: int = 64  # requests in flight ahead of the consumer
    media: MediaRules = field(default_factory=MediaRules)  # where images may come from (media.py)
    model: str | None = None
    vision: bool | None = None  # is the model a vision-language model (None: unknown, or no model)
    audio: bool | None = None  # does the model take audio (None: unknown, or no model; intake/audio.py)


def resolve(item: Request | FailedRequest, policy: ImagePolicy) -> Request | FailedRequest:
    """The request with every image checked and inlined as a data: URI, or the FailedRequest
    saying which image is wrong and why (running out of memory on it included)."""
    if not isinstance(item, Request):
        return item
    parts = list(image_parts(item.messages))
    if not parts:
        return item
    try:
        _refuse(parts, policy)
        urls: dict[str, str] = {}
        total, param = 0, parts[0][0]
        for param, part in parts:
            urls[param] = inline(part["image_url"]["url"], param, policy)
            payload = urls[param].partition(",")[2]
            total += len(payload) * 3 // 4 - payload[-2:].count("=")  # the image's bytes
            if total > policy.bytes_per_request:
                raise Invalid(
                    "image_too_large",
                    f"the request's images up to {param} are over {policy.bytes_per_request:,} "
                    "bytes together. Hint: split the request or raise --image-bytes-per-request",
                    param,
                )
    except Invalid as e:
        return _failed(item, e)
    except MemoryError:
        return _failed(item, Invalid("image_too_large", f"{param}: out of memory while checking the image. Hint: lower "
                                     "--image-max-pixels or --image-workers", param))
    return item.with_body(messages=_with_urls(item.messages, urls))


def _failed(item: Request, e: Invalid) -> FailedRequest:
    failed = FailedRequest.about(e.problem, item)  # its file index too: the resume key
    return replace(failed, carried=item.carried, shape=item.shape)


def _refuse(parts: list[tuple[str, dict]], policy: ImagePolicy) -> None:
    param = parts[0][0]
    if policy.vision is False:
        from pipeline.models.vision import EXAMPLES

        raise Invalid("unsupported_content", f"{param} is an image, and {policy.model} is a text-only model; "
                      f"use a vision-language model, e.g. {EXAMPLES}", param)
    for limit, option in (
        (policy.limit, "--limit-mm-per-prompt image=N"),
        (policy.per_request, "--images-per-request"),
    ):
        if limit is not None and len(parts) > limit:
            from pipeline.models.vision import too_many_images

            problem = too_many_images([p for p, _ in parts], limit, option=option)
            raise Invalid(problem.code, problem.message, problem.param)


def _with_urls(messages: list[dict[str, Any]], urls: dict[str, str]) -> list[dict[str, Any]]:
    out = []
    for i, msg in enumerate(messages):
        content = msg.get("content")
        if isinstance(content, list) and any(
            f"messages[{i}].content[{j}].image_url" in urls for j in range(len(content))
        ):
            content = [{**p, "image_url": {**p["image_url"], "url": urls[f"messages[{i}].content[{j}].image_url"]}}
                       if p.get("type") == "image_url" else p for j, p in enumerate(content)]
            msg = {**msg, "content": content}
        out.append(msg)
    return out


def inline(url: str, param: str, policy: ImagePolicy) -> str:
    """The image at `url` as a data: URI of its checked bytes; Invalid saying what is wrong."""
    data = _inline_bytes(url, param) if url.startswith("data:") else fetched(url, param, policy)
    if len(data) > policy.max_bytes:  # a fetch stops one byte over: its size is not known
        size = f"{len(data):,} bytes" if url.startswith("data:") else f"over {policy.max_bytes:,} bytes"
        raise Invalid("image_too_large", f"{param} is {size}; at most {policy.max_bytes:,} are "
                      "accepted. Hint: shrink the image or raise --image-max-bytes", param)
    mime = check(data, param, policy.max_pixels)
    if url.startswith("data:"):  # the same base64, with the media type the bytes are
        return f"data:{mime};base64,{url.partition(',')[2]}"
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def _inline_bytes(url: str, param: str, kind: str = "image") -> bytes:
    """The bytes of a data: URI; `kind` (image, audio) names the error code: invalid_<kind>."""
    head, sep, payload = url.partition(",")
    if not sep or not head.endswith(";base64"):
        raise Invalid(f"invalid_{kind}", f"{param} is a data: URI that is not base64 "
                      f"(data:{kind}/{'png' if kind == 'image' else 'wav'};base64,...)", param)
    return base64_bytes(payload, param, kind)


def base64_bytes(payload: str, param: str, kind: str = "image") -> bytes:
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise Invalid(f"invalid_{kind}", f"{param} holds data that is not valid base64", param) from None


def check(data: bytes, param: str, max_pixels: int = ImagePolicy.max_pixels) -> str:
    """Decode the image fully (what vLLM will do); its media type, or Invalid.

    The size is read from the header first (Pillow's `open` reads no pixels) and an image over
    `max_pixels` is refused undecoded: a small PNG of 13000x13000 pixels inflates to gigabytes.
    Then a full decode, although vLLM decodes the image again in the engine process: it is the
    check that guarantees vLLM's decode and estimate's processor succeed. A lighter one lets images
    through that only a decode refuses (a PNG whose chunks verify, CRCs and all, but whose pixel
    data does not inflate: a broken encoder's), and Pillow's `verify` checks nothing at all for
    JPEG. It costs about what vLLM's own decode costs, runs ahead of the engine on the intake
    threads, and is a third or less of the engine's work per image (docs/images.md)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt, (width, height) = img.format, img.size
            if width * height > max_pixels:
                raise Invalid("image_too_large", f"{param} is {width}x{height} pixels ({width * height:,}); at most "
                              f"{max_pixels:,} are decoded. Hint: shrink the image or raise --image-max-pixels", param)
            img.load()
    except (Invalid, MemoryError):
        raise
    except Image.DecompressionBombError as e:  # Pillow's own bound (twice its MAX_IMAGE_PIXELS), from the header
        raise Invalid("image_too_large", f"{param} has too many pixels ({short(str(e), 100)}). Hint: shrink the image",
                      param) from None
    except Exception as e:  # noqa: BLE001 - PIL raises many kinds for bad bytes (DecompressionBombError too)
        raise Invalid("invalid_image", f"{param} could not be decoded as an image ({type(e).__name__}: "
                      f"{short(str(e), 100)}); send PNG, JPEG, WebP or GIF", param) from None
    if fmt not in FORMATS:
        raise Invalid("invalid_image", f"{param} is a {fmt} image; send PNG, JPEG, WebP, GIF, BMP or TIFF", param)
    return FORMATS[fmt]


def fetched(url: str, param: str, policy: ImagePolicy, kind: str = "image") -> bytes:
    """The bytes at a path or URL (at most max_bytes + 1 are read), under the job's media rules;
    `kind` (image, audio) names the error codes: <kind>_not_allowed, <kind>_fetch_failed."""
    rules = policy.media
    try:
        return fetch(url, policy.max_bytes + 1, rules)
    except Refused as e:
        raise Invalid(f"{kind}_not_allowed", f"{param}: {e}", param) from None
    except Exception as e:  # noqa: BLE001 - network errors come in every kind
        raise Invalid(f"{kind}_fetch_failed", f"{param}: the {kind} at {rules.show(url)} could not be read "
                      f"({type(e).__name__}: {short(rules.show(str(e)), 120)})", param) from None


def resolve_all(items: Iterable[Request | FailedRequest], policy: ImagePolicy, one=None,
                needs=None) -> Iterator[Request | FailedRequest]:
    """`resolve` (or `one`, for the items `needs` picks: intake/audio.py checks audio too) over a
    stream, on daemon threads, at most `policy.ahead` requests (and about AHEAD_BYTES of checked
    images) ahead, in order. Closing the stream (a stopped run) cancels every fetch not started
    and waits for none."""
    pending: deque[Future | Request | FailedRequest] = deque()
    pool = DaemonPool(policy.workers, "images")
    one = one or resolve  # looked up at the call (a test may stand in for it)

    def ready() -> bool:
        if not pending:
            return False
        if len(pending) > policy.ahead or not isinstance(pending[0], Future) or pending[0].done():
            return True
        done = (f.result() for f in pending if isinstance(f, Future) and f.done() and not f.exception())
        return sum(media_bytes(r.messages) for r in done if isinstance(r, Request)) > AHEAD_BYTES

    try:
        for item in items:
            has_media = isinstance(item, Request) and (next(image_parts(item.messages), None) is not None
                                                       or (needs is not None and needs(item)))
            pending.append(pool.submit(one, item, policy) if has_media else item)
            while ready():
                head = pending.popleft()
                yield head.result() if isinstance(head, Future) else head
        while pending:
            head = pending.popleft()
            yield head.result() if isinstance(head, Future) else head
    finally:
        pool.close()
