"""Audio in requests: a transcription's or translation's `file_url` and chat `input_audio` parts,
fetched and checked before the engine sees them, under the image rules (images.py, media.py).

The same fetch (a data: URI, or a path or URL under the job's media rules: `--allowed-local-media-path`,
`--allowed-media-domains`, `--media-storage`, a timeout and retries), the same limits
(`--image-max-bytes` per file, `--image-bytes-per-request` together) and the same error rows, with
`audio` in their codes: `invalid_audio`, `audio_too_large`, `audio_not_allowed`, `audio_fetch_failed`,
and `unsupported_content` for audio sent to a model that hears none. Each audio is decoded whole
(soundfile, as vLLM's `load_audio` decodes it first) and its seconds are measured: the request's
`audio_seconds`, which its usage, its cost and `estimate` take. A file_url becomes a data: URI of
the checked bytes; an input_audio part keeps its base64. The work runs on the image threads
(`images.resolve_all`), in input order.
"""

from __future__ import annotations

import base64
import io
import re
from dataclasses import replace

from pipeline.endpoints import ENDPOINTS
from pipeline.intake.images import ImagePolicy, _failed, _inline_bytes, base64_bytes, fetched
from pipeline.intake.images import resolve as resolve_images
from pipeline.models.render import audio_parts
from pipeline.records import FailedRequest, Invalid, Request, short

# soundfile's names of the containers it decodes, and the media type each data: URI gets
FORMATS = {"WAV": "audio/wav", "MP3": "audio/mpeg", "FLAC": "audio/flac", "OGG": "audio/ogg",
           "AIFF": "audio/aiff", "WAVEX": "audio/wav"}


def has_audio(item: Request | FailedRequest) -> bool:
    return isinstance(item, Request) and (_is_speech(item) or next(audio_parts(item.messages), None) is not None)


def _is_speech(request: Request) -> bool:
    return ENDPOINTS[request.endpoint].prompt_field == "file_url"


def resolve(item: Request | FailedRequest, policy: ImagePolicy) -> Request | FailedRequest:
    """The request with its images (images.resolve) and every audio checked, and its audio seconds
    measured; or the FailedRequest saying which audio is wrong and why."""
    item = resolve_images(item, policy)
    if not has_audio(item):
        return item
    param = "file_url"
    try:
        if policy.audio is False:
            raise Invalid("unsupported_content", f"the request sends audio, and {policy.model} hears none; use a "
                          "speech model (e.g. openai/whisper-large-v3) or an audio-language model "
                          "(e.g. Qwen/Qwen2-Audio-7B-Instruct)", _first_param(item))
        total, seconds = 0, 0.0
        if _is_speech(item):
            data, uri = _file(item.body["file_url"], policy)
            total, seconds = len(data), _seconds(data, param, policy, total)
            return replace(item.with_body(file_url=uri), audio_seconds=seconds)
        for param, part in audio_parts(item.messages):
            data = base64_bytes(part["input_audio"]["data"], param, "audio")
            total += len(data)
            seconds += _seconds(data, param, policy, total)
        return replace(item, audio_seconds=seconds)
    except Invalid as e:
        return _failed(item, e)
    except MemoryError:
        return _failed(item, Invalid("audio_too_large", f"{param}: out of memory while checking the audio. Hint: "
                                     "lower --image-workers", param))


def _first_param(item: Request) -> str:
    return "file_url" if _is_speech(item) else next(audio_parts(item.messages))[0]


def _file(url: str, policy: ImagePolicy) -> tuple[bytes, str]:
    """A file_url's bytes, and the data: URI the engine gets."""
    if url.startswith("data:"):
        data = _inline_bytes(url, "file_url", "audio")
        return data, url
    data = fetched(url, "file_url", policy, "audio")
    return data, f"data:application/octet-stream;base64,{base64.b64encode(data).decode()}"


def _seconds(data: bytes, param: str, policy: ImagePolicy, total: int) -> float:
    """The audio's seconds, after the size checks and a whole decode."""
    if len(data) > policy.max_bytes:
        raise Invalid("audio_too_large", f"{param} is {len(data):,} bytes or more; at most {policy.max_bytes:,} are "
                      "accepted. Hint: shorten the audio or raise --image-max-bytes", param)
    if total > policy.bytes_per_request:
        raise Invalid("audio_too_large", f"the request's audio up to {param} is over {policy.bytes_per_request:,} "
                      "bytes together. Hint: split the request or raise --image-bytes-per-request", param)
    return check(data, param)[1]


def check(data: bytes, param: str) -> tuple[str, float]:
    """Decode the audio whole (what vLLM will do); its media type and seconds, or Invalid."""
    try:
        import soundfile
    except ImportError:
        raise Invalid("invalid_audio", f"{param} cannot be checked: the soundfile package is not installed. Hint: "
                      "pip install soundfile (the engine's extras have it)", param) from None
    try:
        with soundfile.SoundFile(io.BytesIO(data)) as f:
            fmt, rate = f.format, f.samplerate
            frames = len(f.read(dtype="float32", always_2d=True))
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - libsndfile raises several kinds for bad bytes
        why = re.sub(r"Error opening <[^>]*>: ", "", str(e))  # libsndfile names the buffer object
        raise Invalid("invalid_audio", f"{param} could not be decoded as audio ({type(e).__name__}: "
                      f"{short(why, 100)}); send WAV, MP3, FLAC or OGG", param) from None
    if fmt not in FORMATS or frames == 0 or not rate:
        what = f"a {fmt} file" if fmt not in FORMATS else "empty"
        raise Invalid("invalid_audio", f"{param} is {what}; send WAV, MP3, FLAC or OGG with sound in it", param)
    return FORMATS[fmt], frames / rate

