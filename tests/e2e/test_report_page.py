"""`pipeline report DIR`: the terminal summary, and the HTML page loaded in a real headless
browser (Debian's chromium): charts render, the page needs no network, a screenshot is drawn."""

import json
import shutil
import subprocess

import pytest
from conftest import chat_line, invoke, write_jsonl

FAKE = ["--engine", "fake", "-m", "smollm2", "-q"]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def two_runs(tmp_path):
    rows = [chat_line(f"r{i}", "word " * (i % 7 + 1), max_tokens=i % 5 + 1) for i in range(30)]
    src = write_jsonl(tmp_path / "in.jsonl", rows + ["{bad", chat_line("x", "hi", n=9)])
    assert invoke("run", src, "-o", tmp_path / "prev", *FAKE, "--checkpoint-every", "4").exit_code == 0
    assert invoke("run", src, "-o", tmp_path / "out", *FAKE, "--checkpoint-every", "7", "--max-n", "1").exit_code == 0
    return tmp_path / "out", tmp_path / "prev"


def test_terminal_summary_and_compare(tmp_path):
    out, prev = two_runs(tmp_path)
    res = invoke("report", out, "--compare", prev)
    assert res.exit_code == 0, res.output
    assert "32 requests, 30 ok, 2 failed" in res.output
    assert "invalid_json ×1" in res.output and "in.jsonl:31" in res.output  # an example row per code
    assert "compared with the previous run" in res.output and "error rate" in res.output
    page = (out / "_report.html").read_text()
    assert "Change from the previous run" in page and "Errors by code" in page
    assert "Cost by price row" in page and "demo list price" in page
    assert "Requests per engine" in page and "Slowest requests" in page and "Rows finished over the run" in page
    assert "<script src=" not in page and "<link" not in page  # self-contained: no network to view it
    # the page is the tool's own file: the next run does not call it foreign
    from pipeline.output.folder import Output
    from pipeline.storage import Location

    assert Output(Location.of(str(out))).read_state().foreign == []


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium: `make browser` installs Debian's")
def test_page_renders_in_a_headless_browser(tmp_path):
    out, prev = two_runs(tmp_path)
    page = tmp_path / "page.html"
    assert invoke("report", out, "--compare", prev, "-o", page).exit_code == 0
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             "--virtual-time-budget=10000"]
    dom = subprocess.run([*flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120).stdout
    assert dom.count('class="main-svg"') >= 12  # six charts or more, drawn by plotly in the browser
    assert dom.count("js-plotly-plot") >= 6
    shot = tmp_path / "shot.png"
    subprocess.run([*flags, "--window-size=1400,2000", f"--screenshot={shot}", page.as_uri()],
                   capture_output=True, timeout=120)
    from PIL import Image

    image = Image.open(shot).convert("RGB")
    assert image.size == (1400, 2000)
    colors = image.getcolors(maxcolors=1 << 20)
    assert colors is not None and len(colors) > 200  # charts, not a blank page
    blue = sum(n for n, (r, g, b) in colors if b > 200 and r < 140 and g < 140)
    assert blue > 5000  # plotly's bars are drawn


def test_report_of_a_folder_without_a_job(tmp_path):
    res = invoke("report", tmp_path)
    assert res.exit_code == 1 and "holds no job" in res.output


@pytest.mark.parametrize("fmt", ["openai", "responses"])
def test_openai_format_outputs_are_reported(tmp_path, fmt):
    src = write_jsonl(tmp_path / "in.jsonl", [chat_line("a", "hello there"), "{bad"])
    assert invoke("run", src, "-o", tmp_path / "out", *FAKE, "--format", fmt).exit_code == 0
    res = invoke("report", tmp_path / "out")
    assert res.exit_code == 0 and "2 requests, 1 ok, 1 failed" in res.output
    json.loads(json.dumps(res.output))
