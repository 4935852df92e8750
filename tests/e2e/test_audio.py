"""Audio on the fake engine and the estimate (no engine): /v1/audio/transcriptions and
/v1/audio/translations lines as vLLM's run_batch defines them, and input_audio chat parts; every
input form checked under the image rules (a bad audio is an error row naming its field), the
audio's seconds, usage and cost per audio minute in the rows and in OpenAI's result lines, and
estimate's counts (test_audio_real.py holds them to the engine's). docs/audio.md."""

import base64
import json
import math
import os
import signal
import subprocess
import sys

import polars as pl
import pytest
from audio_chat_model import tiny_qwen2_audio
from conftest import invoke, read_output, write_jsonl
from speech_model import data_url, tiny_whisper, wav

from pipeline.intake.audio import check, has_audio, resolve
from pipeline.intake.images import ImagePolicy
from pipeline.intake.media import MediaRules
from pipeline.intake.requests import Context, parse_row
from pipeline.records import FailedRequest, Request, Source

FAKE = ["--engine", "fake", "-m", "whisper-1", "-q"]
TWO = wav(2.0)
PRICE = 0.006  # whisper-1's list price per audio minute (pipeline/models/prices.yaml)


def speech_line(custom_id, url="/v1/audio/transcriptions", **body):
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": body}


def chat_audio(custom_id, data, fmt="wav", text="What is said?"):
    return {"custom_id": custom_id, "body": {"messages": [{"role": "user", "content": [
        {"type": "text", "text": text},
        {"type": "input_audio", "input_audio": {"data": base64.b64encode(data).decode(), "format": fmt}}]}]}}


@pytest.fixture
def media(tmp_path):
    (tmp_path / "media").mkdir()
    (tmp_path / "media" / "one.wav").write_bytes(wav(1.5, rate=8000))
    (tmp_path / "media" / "noise.wav").write_bytes(b"RIFF not a wave at all")
    return tmp_path / "media"


@pytest.fixture
def speech_file(tmp_path, media):
    (tmp_path / "in").mkdir()
    return write_jsonl(tmp_path / "in" / "speech.jsonl", [
        speech_line("data", file_url=data_url(TWO), language="en", model="whisper-1"),
        speech_line("path", file_url=str(media / "one.wav")),
        speech_line("url", file_url=(media / "one.wav").as_uri(), response_format="verbose_json"),
        speech_line("outside", file_url="/etc/hostname"),
        speech_line("noise", file_url=str(media / "noise.wav")),
        speech_line("b64", file_url="data:audio/wav;base64,@@@"),
        speech_line("s3", file_url="s3://bucket/a.wav"),
        speech_line("nofile", file="a.wav"),
        speech_line("format", file_url=data_url(TWO), response_format="srt"),
    ])


def _rows(out):
    return {r["custom_id"]: r for r in read_output(out).to_dicts()}


def test_transcription_rows(tmp_path, speech_file, media):
    res = invoke("run", speech_file, "-o", tmp_path / "out", *FAKE, "--allowed-local-media-path", media)
    assert res.exit_code in (0, 3), res.output
    rows = _rows(tmp_path / "out")
    data, path = rows["data"], rows["path"]
    assert data["content"].startswith("fake transcription of 2.00 s ") and data["error"] is None
    assert (data["audio_seconds"], data["prompt_tokens"], data["completion_tokens"]) == (2.0, 4, 6)
    assert data["estimated_cost"] == pytest.approx(2 / 60 * PRICE)
    assert path["audio_seconds"] == 1.5 and path["estimated_cost"] == pytest.approx(2 / 60 * PRICE)  # whole seconds
    assert data["audio_segments"] is None and path["audio_segments"] is None
    [segment] = rows["url"]["audio_segments"]
    assert (segment["start"], segment["end"], segment["text"]) == (0.0, 1.5, rows["url"]["content"])
    assert rows["url"]["audio_language"] == "en"
    errors = {k: (r["error"]["code"], r["error"]["param"]) for k, r in rows.items() if r["error"]}
    assert errors == {"outside": ("audio_not_allowed", "file_url"), "noise": ("invalid_audio", "file_url"),
                      "b64": ("invalid_audio", "file_url"), "s3": ("audio_not_allowed", "file_url"),
                      "nofile": ("invalid_input", "file_url"), "format": ("unsupported_parameter", "response_format")}
    assert "--media-storage" in rows["s3"]["error"]["message"]
    assert (
        "Format not recognised" in rows["noise"]["error"]["message"] and "0x" not in rows["noise"]["error"]["message"]
    )


def test_translation_result_lines_in_openai_format(tmp_path):
    (tmp_path / "in").mkdir()
    url = "/v1/audio/translations"
    write_jsonl(
        tmp_path / "in" / "t.jsonl",
        [
            speech_line("plain", url, file_url=data_url(TWO)),
            speech_line("verbose", url, file_url=data_url(TWO), response_format="verbose_json", language="de"),
        ],
    )
    res = invoke("run", tmp_path / "in", "-o", tmp_path / "out", *FAKE, "--format", "openai")
    assert res.exit_code == 0, res.output
    [results] = (tmp_path / "out").glob("results/*.jsonl")
    lines = {x["custom_id"]: x for x in map(json.loads, results.read_text().splitlines())}
    plain = lines["plain"]["response"]["body"]
    assert plain["text"].startswith("fake translation of 2.00 s")
    assert plain["usage"]["type"] == "duration" and plain["usage"]["seconds"] == 2
    assert plain["usage"]["estimated_cost"] == pytest.approx(2 / 60 * PRICE)
    verbose = lines["verbose"]["response"]["body"]
    assert (verbose["task"], verbose["language"], verbose["duration"]) == ("translate", "en", 2.0)
    assert verbose["segments"][0]["text"] == verbose["text"]


def test_chat_input_audio(tmp_path):
    (tmp_path / "in").mkdir()
    write_jsonl(
        tmp_path / "in" / "c.jsonl",
        [chat_audio("heard", wav(1.0)), chat_audio("bad", b"nope"), chat_audio("fmt", wav(1.0), fmt="ogg")],
    )
    res = invoke("run", tmp_path / "in", "-o", tmp_path / "out", *FAKE)
    assert res.exit_code in (0, 3), res.output
    rows = _rows(tmp_path / "out")
    assert rows["heard"]["content"] == "What is said? [heard 1.00 s of audio]"
    assert rows["heard"]["audio_seconds"] == 1.0
    assert (rows["bad"]["error"]["code"], rows["bad"]["error"]["param"]) == (
        "invalid_audio",
        "messages[0].content[1].input_audio",
    )
    assert (rows["fmt"]["error"]["code"], rows["fmt"]["error"]["param"]) == (
        "invalid_parameter",
        "messages[0].content[1].input_audio.format",
    )


def test_a_text_model_hears_no_audio(tmp_path, speech_file, media):
    res = invoke(
        "run",
        speech_file,
        "-o",
        tmp_path / "out",
        "--engine",
        "fake",
        "-m",
        "smollm2",
        "-q",
        "--allowed-local-media-path",
        media,
    )
    assert res.exit_code in (0, 3), res.output
    row = _rows(tmp_path / "out")["path"]
    assert row["error"]["code"] == "unsupported_content" and "hears none" in row["error"]["message"]


def test_audio_limits_are_the_image_limits(media):
    policy = ImagePolicy(max_bytes=len(TWO) - 1, media=MediaRules(local_root=str(media)))
    req = parse_row(
        speech_line("x", file_url=data_url(TWO)), source=Source(0, "in.jsonl", "in.jsonl"), line=1, ctx=Context()
    )
    assert has_audio(req)
    got = resolve(req, policy)
    assert isinstance(got, FailedRequest) and (got.code, got.param) == ("audio_too_large", "file_url")
    ok = resolve(req, ImagePolicy())
    assert isinstance(ok, Request) and ok.audio_seconds == 2.0 and ok.body["file_url"] == req.body["file_url"]
    assert check(TWO, "file_url") == ("audio/wav", 2.0)


def test_estimate_counts_clips_seconds_and_audio_minutes(tmp_path):
    model = tiny_whisper()
    (tmp_path / "in").mkdir()
    write_jsonl(
        tmp_path / "in" / "s.jsonl",
        [
            speech_line("short", file_url=data_url(TWO)),
            speech_line("long", file_url=data_url(wav(61.0, rate=4000)), max_completion_tokens=10),
        ],
    )
    res = invoke("estimate", tmp_path / "in", "-m", model, "--json", "--price-input", "0", "--price-output", "0")
    assert res.exit_code == 0, res.output
    got = json.loads(res.output[res.output.index("{") : res.output.rindex("}") + 1])
    # 4 decoder-prompt tokens a clip: 61 s is 3 clips of at most 30 s (vLLM's split_audio)
    assert (got["valid"], got["prompt_tokens"], got["audio_seconds"]) == (2, 4 + 3 * 4, 63.0)
    assert got["completion_tokens_upper"] == (448 - 4) + 3 * 10


def test_estimate_counts_a_chats_audio_tokens_by_the_clips_length(tmp_path):
    """Qwen2-Audio's processor: one <|AUDIO|> per 40 ms of audio at 16 kHz (whatever the file's rate),
    at most 30 s, plus "Audio N: <|audio_bos|>...<|audio_eos|>\n" (8 tokens) per part."""
    rows = [chat_audio("one", wav(1.0)), chat_audio("8k", wav(1.0, rate=8000)), chat_audio("long", wav(31.0)),
            {"custom_id": "none", "body": {"messages": [{"role": "user", "content": "What is said?"}]}}]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    res = invoke("estimate", src, "-m", tiny_qwen2_audio(), "--json", "--rows-file", tmp_path / "rows.parquet")
    assert res.exit_code == 0, res.output
    tokens = dict(pl.read_parquet(tmp_path / "rows.parquet").select("custom_id", "prompt_tokens").iter_rows())
    text = tokens["none"]
    assert (tokens["one"] - text, tokens["8k"] - text, tokens["long"] - text) == (25 + 8, 25 + 8, 750 + 8)


def test_estimate_forks_its_tokenizers_safely_after_torch_ran_in_the_process(tmp_path):
    """A process whose torch already ran a parallel region (a model built in-process, as this suite
    does on a fresh machine) forks estimate's tokenizer processes; GNU OpenMP's thread pool does not
    survive a fork, and a 31 s clip's stft in the child used to wait forever (CI hung on it)."""
    src = write_jsonl(tmp_path / "in.jsonl", [chat_audio("long", wav(31.0)), chat_audio("one", wav(1.0))])
    script = ("import sys, torch\n"
              "torch.set_num_threads(2)\n"
              "torch.randn(4_000_000).exp().sum()  # an OpenMP parallel region: its pool is now up\n"
              "from pipeline.cli import cli\n"
              "cli(sys.argv[1:])\n")
    cmd = [sys.executable, "-c", script, "estimate", str(src), "-m", tiny_qwen2_audio(), "--json", "--workers", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        out, err = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the forked tokenizers too
        proc.communicate()
        raise AssertionError("estimate hung in its forked tokenizer processes") from None
    assert proc.returncode == 0, err
    assert json.loads(out[out.index("{"):out.rindex("}") + 1])["valid"] == 2


def test_estimate_bills_audio_minutes(tmp_path):
    from pipeline.models.prices import Price

    price = Price(0.0, 0.0, audio_minute=PRICE)
    assert price.cost(4, 6, 0, 61.2) == pytest.approx(math.ceil(61.2) / 60 * PRICE)
    assert price.cost(4, 6) == 0.0
    import pyarrow as pa

    from pipeline.commands.estimate import _cost  # the --rows-file's cost columns, over Arrow

    got = _cost(price, pa.array([4.0, 4.0]), pa.array([6.0, 6.0]), pa.array([0.0, 0.0]), pa.array([62.0, 0.0]))
    assert got.to_pylist() == pytest.approx([62 / 60 * PRICE, 0.0])


def test_speech_requests_are_greedy_by_default_and_never_merged_into_n():
    from pipeline.engines.bodies import determined
    from pipeline.engines.sampled import mergeable

    def parsed(**body):
        return parse_row(
            speech_line("x", file_url=data_url(TWO), **body),
            source=Source(0, "in.jsonl", "in.jsonl"),
            line=1,
            ctx=Context(),
        )

    assert determined(parsed())  # vLLM's transcription temperature is 0 unless the line sets one
    hot = parsed(temperature=0.7)
    assert not determined(hot) and not mergeable(hot)  # its clips are engine requests of their own
