"""How estimate sees a chat's input_audio parts (no model): the template gets {"type": "audio"} parts
(or one audio token line per audio for string templates), and each clip's length is the samples
vLLM's resampler hands the processor. tests/e2e/test_audio.py counts the tokens with a real
processor; tests/real/test_audio_chat_real.py holds them to the engine's."""

import base64

import pytest
from speech_model import wav

from pipeline.models.audio import samples
from pipeline.models.render import audio_data, conversation


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


MESSAGES = [{"role": "user", "content": [
    {"type": "text", "text": "What is said?"},
    {"type": "input_audio", "input_audio": {"data": b64(wav(0.5)), "format": "wav"}},
    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
    {"type": "input_audio", "input_audio": {"data": b64(wav(0.25)), "format": "wav"}},
]}]


def test_templates_that_loop_over_parts_see_audio_parts_in_place():
    (msg,) = conversation(MESSAGES, "openai")
    assert msg["content"] == [{"type": "text", "text": "What is said?"}, {"type": "audio"}, {"type": "image"},
                              {"type": "audio"}]


def test_string_templates_see_one_placeholder_line_per_audio_before_the_text():
    (msg,) = conversation(MESSAGES, "string", image_token="<image>", audio_token="<|AUDIO|>")
    assert msg["content"] == "<|AUDIO|>\n<image>\n<|AUDIO|>\nWhat is said?"


def test_audio_data_in_order():
    assert audio_data(MESSAGES) == [b64(wav(0.5)), b64(wav(0.25))]


@pytest.mark.parametrize(("seconds", "file_rate", "rate", "expected"), [
    (1.0, 16000, 16000, 16000),
    (1.0, 8000, 16000, 16000),
    (1.5, 44100, 16000, 24000),
    (0.001, 44100, 16000, 16),  # 44 frames: ceil(44 * 16000 / 44100) = 16, as the resamplers round up
    (2.0, 16000, 24000, 48000),
])
def test_samples_are_the_resampled_length(seconds, file_rate, rate, expected):
    assert samples(b64(wav(seconds, rate=file_rate)), rate) == expected
