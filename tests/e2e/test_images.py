"""Images in requests on the fake engine and the estimate (no engine): every input form becomes
checked image_url parts, every bad image an error row naming its part, and estimate's counts
are the tiny VLM's processor's (test_images_real.py holds them to the engine's)."""

import base64
import json
import socket
import sys
import time
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import REPO, invoke, read_output, write_jsonl

from pipeline.intake.images import ImagePolicy, resolve, resolve_all
from pipeline.intake.media import MediaRules
from pipeline.intake.requests import Context, parse_row
from pipeline.records import Request, Source

sys.path.insert(0, str(REPO / "tests"))
from storage_servers import azurite_connection_string  # noqa: E402  (before gcsfs: see there)
from vlm_model import broken_deflate, data_url, jpeg, png, tiny_vlm  # noqa: E402

PNG = png(40, 30, 1)
B64 = base64.b64encode(PNG).decode()


@pytest.fixture(scope="session")
def vlm():
    return tiny_vlm()


@pytest.fixture
def picture(tmp_path):
    path = tmp_path / "cat.png"
    path.write_bytes(PNG)
    return path


def chat(custom_id, *parts, **body):
    content = [{"type": "text", "text": "What is this?"}, *parts]
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": {"messages": [{"role": "user", "content": content}], "max_tokens": 4, **body}}


def image(url, **extra):
    return {"type": "image_url", "image_url": {"url": url, **extra}}


def every_form(path):
    """One row per input form, each with the same image (inline or by path)."""
    return [
        chat("openai-data", image(data_url(PNG), detail="low")),
        chat("openai-path", image(str(path))),
        chat("openai-file-url", image(f"file://{path}")),
        {"custom_id": "responses", "method": "POST", "url": "/v1/responses", "body": {"input": [
            {"role": "user", "content": [{"type": "input_text", "text": "What?"},
                                         {"type": "input_image", "image_url": data_url(PNG), "detail": "auto"}]}]}},
        {"custom_id": "anthropic-b64", "params": {"max_tokens": 4, "messages": [{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": B64}},
            {"type": "text", "text": "What?"}]}]}},
        {"custom_id": "anthropic-url", "params": {"max_tokens": 4, "messages": [{"role": "user", "content": [
            {"type": "image", "source": {"type": "url", "url": str(path)}}]}]}},
        {"key": "gemini-inline", "request": {"contents": [{"role": "user", "parts": [
            {"text": "What?"}, {"inline_data": {"mime_type": "image/png", "data": B64}}]}]}},
        {"key": "gemini-inlineData", "request": {"contents": [{"role": "user", "parts": [
            {"inlineData": {"mimeType": "image/png", "data": B64}}, {"text": "What?"}]}]}},
        {"key": "gemini-file", "request": {"contents": [{"role": "user", "parts": [
            {"file_data": {"mime_type": "image/png", "file_uri": str(path)}}, {"text": "What?"}]}]}},
        {"key": "gemini-fileData", "request": {"contents": [{"role": "user", "parts": [
            {"fileData": {"mimeType": "image/png", "fileUri": str(path)}}]}]}},
    ]


def local(folder, **policy):
    """An ImagePolicy whose requests may name files under `folder` (--allowed-local-media-path)."""
    return ImagePolicy(media=MediaRules(local_root=str(Path(folder).resolve())), **policy)


def test_every_form_becomes_checked_image_url_parts(picture):
    for row in every_form(picture):
        item = resolve(parse_row(row, source=Source(0, "f.jsonl", "f.jsonl"), line=1, ctx=Context()), local(picture.parent))
        assert isinstance(item, Request), item
        parts = [p for m in item.messages if isinstance(m["content"], list) for p in m["content"]]
        [img] = [p for p in parts if p["type"] == "image_url"]
        assert img["image_url"]["url"] == data_url(PNG), row  # fetched, checked, inlined


def test_several_images_interleaved_keep_their_order(picture):
    other = png(20, 20, 2)
    row = chat("two", image(str(picture)), {"type": "text", "text": "and"}, image(data_url(other)))
    item = resolve(parse_row(row, source=Source(0, "f.jsonl", "f.jsonl"), line=1, ctx=Context()),
                   local(picture.parent, limit=2))
    types = [p["type"] for p in item.messages[0]["content"]]
    assert types == ["text", "image_url", "text", "image_url"]
    assert [p["image_url"]["url"] for p in item.messages[0]["content"][1::2]] == [data_url(PNG), data_url(other)]
    # the limit counts a request's images over all its messages; the row names the first one over it
    row["body"]["messages"] += [{"role": "assistant", "content": "ok"},
                                {"role": "user", "content": [image(data_url(other)), {"type": "text", "text": "?"}]}]
    item = resolve(parse_row(row, source=Source(0, "f.jsonl", "f.jsonl"), line=1, ctx=Context()), ImagePolicy(limit=2))
    assert (item.code, item.param) == ("too_many_images", "messages[2].content[0].image_url")
    ok = resolve(parse_row(row, source=Source(0, "f.jsonl", "f.jsonl"), line=1, ctx=Context()),
                 local(picture.parent, limit=3))
    assert [p["type"] for p in ok.messages[2]["content"]] == ["image_url", "text"]


def test_resolve_all_keeps_order_and_bounds_look_ahead():
    rows = [chat(f"r{i}", image(data_url(png(8, 8, i)))) if i % 3 else chat(f"r{i}") for i in range(50)]
    items = [parse_row(r, source=Source(0, "f", "f"), line=i, ctx=Context()) for i, r in enumerate(rows)]
    out = list(resolve_all(iter(items), ImagePolicy(workers=4, ahead=5)))
    assert [o.custom_id for o in out] == [f"r{i}" for i in range(50)]
    assert all(isinstance(o, Request) for o in out)


def bad_rows(tmp_path):
    ppm = tmp_path / "x.ppm"
    ppm.write_bytes(b"P6 1 1 255\n\x00\x00\x00")
    return [
        chat("good", image(data_url(PNG))),
        chat("text-only", max_tokens=3),
        chat("bad-bytes", image(data_url(b"hello, not an image"))),
        chat("bad-base64", image("data:image/png;base64,@@@")),
        chat("unknown-format", image(str(ppm))),
        chat("too-large", image(data_url(png(300, 300, 5)))),
        chat("too-many", image(data_url(PNG)), image(data_url(PNG)), image(data_url(PNG))),
        chat("missing-file", image(str(tmp_path / "nowhere.png"))),
        chat("refused-url", image("http://127.0.0.1:9/cat.png")),
    ]


def test_bad_images_are_error_rows_beside_good_ones(tmp_path, vlm):
    src = write_jsonl(tmp_path / "in.jsonl", bad_rows(tmp_path))
    res = invoke("run", src, "-o", tmp_path / "out", "--engine", "fake", "-m", vlm, "-q",
                 "--limit-mm-per-prompt", "image=2", "--image-max-bytes", "100000", "--image-timeout", "2",
                 "--allowed-local-media-path", tmp_path, "--allow-private-media")
    assert res.exit_code == 0, res.output
    rows = {r["custom_id"]: r for r in read_output(tmp_path / "out").to_dicts()}
    assert rows["good"]["error"] is None and rows["text-only"]["error"] is None
    errors = {k: (r["error"]["code"], r["error"]["param"], r["error"]["line"]) for k, r in rows.items() if r["error"]}
    where = "messages[0].content[1].image_url"
    assert errors == {
        "bad-bytes": ("invalid_image", where, 3), "bad-base64": ("invalid_image", where, 4),
        "unknown-format": ("invalid_image", where, 5), "too-large": ("image_too_large", where, 6),
        "too-many": ("too_many_images", "messages[0].content[3].image_url", 7),
        "missing-file": ("image_not_allowed", where, 8), "refused-url": ("image_fetch_failed", where, 9),
    }
    messages = {k: r["error"]["message"] for k, r in rows.items() if r["error"]}
    assert "could not be decoded" in messages["bad-bytes"] and "PPM" in messages["unknown-format"]
    assert "--image-max-bytes" in messages["too-large"] and "at most 2" in messages["too-many"]
    assert "not a readable regular file under --allowed-local-media-path" in messages["missing-file"]
    assert "ConnectionRefusedError" in messages["refused-url"] and "127.0.0.1:9" in messages["refused-url"]
    report = json.loads((tmp_path / "out" / "_report.json").read_text())
    assert report["images"] == 1  # only the images that reached the engine count
    assert report["errors_by_code"]["invalid_image"] == 3


def test_a_text_model_refuses_image_rows_up_front(tmp_path, picture):
    src = write_jsonl(tmp_path / "in.jsonl", [chat("img", image(str(picture))), chat("txt", max_tokens=3)])
    res = invoke("run", src, "-o", tmp_path / "out", "--engine", "fake", "-m", "smollm2", "-q")
    assert res.exit_code == 0, res.output
    rows = {r["custom_id"]: r for r in read_output(tmp_path / "out").to_dicts()}
    assert rows["txt"]["error"] is None
    err = rows["img"]["error"]
    assert err["code"] == "unsupported_content" and err["param"] == "messages[0].content[1].image_url"
    assert "text-only model; use a vision-language model, e.g. Qwen/Qwen2.5-VL" in err["message"]


def test_template_images_from_parquet_datasets_and_csv(tmp_path, vlm, picture):
    other = png(64, 32, 3)
    pq.write_table(pa.table({
        "name": ["a", "b", "c"],
        "raw": pa.array([PNG, other, None], pa.binary()),
        "hf": pa.array([{"bytes": None, "path": str(picture)}, {"bytes": other, "path": "x.png"},
                        {"bytes": None, "path": None}],
                       pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
    }), tmp_path / "t.parquet")
    (tmp_path / "t.csv").write_text("name,file\nd,cat.png\ne,gone.png\n")
    out = tmp_path / "out"
    res = invoke("run", tmp_path / "t.parquet", "-o", out, "--engine", "fake", "-m", vlm, "-q",
                 "--template-user", "Caption {{ name }}", "--template-image", "raw", "--template-image", "hf",
                 "--allowed-local-media-path", tmp_path)
    assert res.exit_code == 0, res.output
    df = read_output(out).sort("source_line")
    assert df["error"].to_list() == [None, None, None] and df["images"].to_list() == [2, 2, 0]
    res = invoke("run", tmp_path / "t.csv", "-o", tmp_path / "out2", "--engine", "fake", "-m", vlm, "-q",
                 "--template-user", "Caption {{ name }}", "--template-image", "file",
                 "--allowed-local-media-path", tmp_path)
    rows = read_output(tmp_path / "out2").sort("source_line").to_dicts()
    assert rows[0]["error"] is None and rows[0]["images"] == 1  # relative to the table's folder
    assert rows[1]["error"]["code"] == "image_not_allowed" and "gone.png" in rows[1]["error"]["message"]


def test_estimate_counts_each_image_by_its_size(tmp_path, vlm):
    rows = [chat("square", image(data_url(png(64, 64)))), chat("wide", image(data_url(png(1000, 100)))),
            chat("two", image(data_url(PNG)), image(data_url(png(97, 513)))), chat("none")]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    res = invoke("estimate", src, "-m", vlm, "--json", "--rows-file", tmp_path / "rows.parquet")
    assert res.exit_code == 0, res.output
    tokens = dict(pl.read_parquet(tmp_path / "rows.parquet").select("custom_id", "prompt_tokens").iter_rows())
    text = tokens["none"]
    # Idefics3 tiles: 107 tokens for a square, 32 for 10:1, 82 for 4:3, 35 for 97x513 (vlm_model.py)
    assert (tokens["square"] - text, tokens["wide"] - text, tokens["two"] - text) == (107, 32, 82 + 35)


def test_samples_job_validates(tmp_path, vlm):
    job = Path(REPO / "samples" / "images" / "job.yaml")
    res = invoke("validate", "--job", job, "-m", vlm)
    assert res.exit_code == 0, res.output


def test_fsspec_urls_are_read_with_the_jobs_storage(tmp_path):
    import fsspec

    fsspec.filesystem("memory").pipe("/imgs/cat.png", PNG)
    store = MediaRules(storage=("memory://imgs",), retries=0)  # --media-storage memory://imgs
    small = resolve(parse_row(chat("big", image("memory://imgs/cat.png"), image(data_url(PNG))),
                              source=Source(0, "f", "f"), line=1, ctx=Context()), ImagePolicy(max_bytes=100, media=store))
    assert small.code == "image_too_large"  # read 101 bytes: the size is not known, only that it is over
    assert small.message.startswith("messages[0].content[1].image_url is over 100 bytes; at most 100 are accepted")
    inline = resolve(parse_row(chat("big", image(data_url(PNG))), source=Source(0, "f", "f"), line=1, ctx=Context()),
                     ImagePolicy(max_bytes=100))
    assert f"is {len(PNG):,} bytes; at most 100" in inline.message
    row = chat("mem", image("memory://imgs/cat.png"), image("memory://imgs/dog.png"))
    item = resolve(parse_row(row, source=Source(0, "f", "f"), line=3, ctx=Context()), ImagePolicy(media=store))
    assert item.code == "image_fetch_failed" and item.param == "messages[0].content[2].image_url"
    assert "memory://imgs/dog.png" in item.message and item.line == 3
    ok = resolve(parse_row(chat("mem", image("memory://imgs/cat.png")), source=Source(0, "f", "f"), line=1, ctx=Context()),
                 ImagePolicy(media=store))
    assert ok.messages[0]["content"][1]["image_url"]["url"] == data_url(PNG)


def image_count(line):
    """The prompt's image count in a result line, read from the extension field of the line's own
    format (docs/output.md); None when the field is absent."""
    if "result" in line:  # Anthropic
        return line["result"]["message"]["usage"].get("input_images")
    if "key" in line:  # Gemini / Vertex
        usage = line["response"]["usageMetadata"]
        assert "promptTokensDetails" not in usage  # the split by modality is not measured: not claimed
        return usage.get("promptImageCount")
    body = line["response"]["body"]
    return body["usage"].get("input_images" if body["object"] == "response" else "prompt_images")


@pytest.mark.parametrize("fmt", ["native", "openai", "anthropic", "gemini", "responses"])
def test_result_lines_count_the_prompts_images_and_report_reads_them(tmp_path, vlm, picture, fmt):
    rows = [*every_form(picture), chat("two", image(str(picture)), image(data_url(PNG))), chat("none")]
    src = tmp_path / "in"  # a file per input shape (a file holds one shape)
    src.mkdir()
    for shape in ("openai", "responses", "anthropic", "gemini"):
        write_jsonl(src / f"{shape}.jsonl", [r for r in rows if r.get("key", r.get("custom_id")).startswith(shape)
                                              or (shape == "openai" and r.get("custom_id") in ("two", "none"))])
    out = tmp_path / "out"
    res = invoke("run", src, "-o", out, "--engine", "fake", "-m", vlm, "-q", "--format", fmt,
                 "--limit-mm-per-prompt", "image=2", "--allowed-local-media-path", tmp_path)
    assert res.exit_code == 0, res.output
    lines = [json.loads(t) for p in out.glob("part-*.jsonl") for t in p.read_text().splitlines()]
    counts = {line.get("key", line.get("custom_id")): image_count(line) for line in lines}
    assert counts == {**{r.get("key", r.get("custom_id")): 1 for r in every_form(picture)}, "two": 2, "none": None}
    if fmt == "native":
        assert {"result" in x or "key" in x or x["response"]["body"]["object"] for x in lines} == {
            True, "chat.completion", "response"}  # every writer was used
    res = invoke("report", out)
    assert res.exit_code == 0, res.output
    assert "12 images" in res.output


# ---- --image-timeout on every store: a loopback port that takes connections and never answers ----
@pytest.fixture
def stalled():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(64)  # the kernel accepts; nothing ever reads or answers
        yield f"http://127.0.0.1:{s.getsockname()[1]}"


def stalled_store(protocol, endpoint):
    """(an image URL, the storage options) that send each protocol's client to the stalled port."""
    return {
        "http": (f"{endpoint}/cat.png", {}),
        "s3": ("s3://bucket/cat.png", {"key": "k", "secret": "s", "client_kwargs": {"endpoint_url": endpoint}}),
        "gs": ("gs://bucket/cat.png", {"endpoint_url": endpoint, "token": "anon"}),
        "az": ("az://container/cat.png", {"connection_string": azurite_connection_string(endpoint)}),
    }[protocol]


@pytest.mark.parametrize("protocol", ["http", "s3", "gs", "az"])
def test_a_stalled_store_is_an_error_row_after_the_timeout(stalled, protocol):
    url, options = stalled_store(protocol, stalled)
    row = chat("slow", image(url))
    start = time.monotonic()
    rules = MediaRules(timeout=0.5, retries=1, storage_options=options, private=True,  # the port is loopback
                       storage=() if protocol == "http" else (url.rpartition("/")[0],))  # --media-storage s3://bucket
    item = resolve(parse_row(row, source=Source(0, "f", "f"), line=2, ctx=Context()), ImagePolicy(media=rules))
    took = time.monotonic() - start
    assert item.code == "image_fetch_failed" and item.param == "messages[0].content[1].image_url", item
    assert "(TimeoutError: 'no answer within 0.5 s" in item.message and "--image-timeout" in item.message
    # two tries of 0.5 s and a 0.2 s pause (1.2 s); the clients alone wait minutes: the bound leaves room
    # for a loaded machine and still fails where the timeout is not applied
    assert 1.0 <= took < 30, took


def test_a_run_with_a_stalled_store_finishes(tmp_path, vlm, stalled):
    url, options = stalled_store("s3", stalled)
    src = write_jsonl(tmp_path / "in.jsonl", [chat("slow", image(url)), chat("good", image(data_url(PNG)))])
    res = invoke("run", src, "-o", tmp_path / "out", "--engine", "fake", "-m", vlm, "-q", "--image-timeout", "0.5",
                 "--media-storage", "s3://bucket", *[a for k, v in options.items() for a in ("--storage-option", f"{k}={json.dumps(v)}")])
    assert res.exit_code == 0, res.output
    rows = {r["custom_id"]: r for r in read_output(tmp_path / "out").to_dicts()}
    assert rows["good"]["error"] is None and rows["good"]["images"] == 1
    assert rows["slow"]["error"]["code"] == "image_fetch_failed" and rows["slow"]["error"]["line"] == 1


# ---- the check decodes fully: truncated, corrupted and garbled images are error rows ---------------
def test_truncated_and_corrupted_images_are_caught():
    from pipeline.intake.images import check
    from pipeline.records import Invalid

    big, photo = png(200, 150, 3), jpeg(200, 150)
    assert check(big, "p") == "image/png" and check(photo, "p") == "image/jpeg"
    flipped = bytearray(big)
    flipped[len(big) // 2] ^= 0xFF  # a bit flipped in transit: the chunk's CRC no longer matches
    garbled = broken_deflate(big)  # every CRC right, the pixel data garbage: only a decode sees it
    for bad in (big[: len(big) // 2], bytes(flipped), garbled, photo[: len(photo) * 9 // 10]):
        with pytest.raises(Invalid, match="could not be decoded"):
            check(bad, "messages[0].content[1].image_url")


def test_parquet_requests_with_image_parts(tmp_path, vlm, picture):
    """A Parquet `messages` column whose parts are structs (Arrow gives every part every field,
    the ones it lacks as null) holds images like JSON lines do."""
    parts = [{"type": "text", "text": "What?", "image_url": None},
             {"type": "image_url", "text": None, "image_url": {"url": str(picture)}}]
    pq.write_table(pa.table({"custom_id": ["a"], "messages": [[{"role": "user", "content": parts}]]}),
                   tmp_path / "in.parquet")
    res = invoke("run", tmp_path / "in.parquet", "-o", tmp_path / "out", "--engine", "fake", "-m", vlm, "-q",
                 "--allowed-local-media-path", tmp_path)
    assert res.exit_code == 0, res.output
    [row] = read_output(tmp_path / "out").to_dicts()
    assert row["error"] is None and row["images"] == 1
