"""Audio vLLM cannot prepare for lack of a package (the CPU build has no torchaudio, which vLLM resamples
with; vLLM's placeholder module then fails looking up its own distribution) is an unsupported_content
row naming the first audio part and saying what to do; the same error on a request without audio
stays invalid_request (no engine)."""

from importlib.metadata import PackageNotFoundError

import pytest
from conftest import source

from pipeline.intake.requests import Context, parse_row

vllm_engine = pytest.importorskip("pipeline.engines.vllm")


def request(*parts):
    return parse_row({"messages": [{"role": "user", "content": [{"type": "text", "text": "Hear:"}, *parts]}]},
                     source=source("f"), line=1, ctx=Context())


def test_audio_the_engine_cannot_resample_says_why():
    engine = object.__new__(vllm_engine.VLLMEngine)
    missing = PackageNotFoundError("No package metadata was found for vllm")
    heard = request({"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}})
    problem = engine._refusal(missing, req=heard)
    assert (problem.code, problem.param) == ("unsupported_content", "messages[0].content[1].input_audio")
    assert "torchaudio" in problem.message and "Hint: send audio at the model's sampling rate" in problem.message
    silent = engine._refusal(missing, req=request())
    assert (silent.code, silent.param) == ("invalid_request", "messages")
