"""Numbers as people read them in the run's summary, `pipeline report` (text and page) and
`pipeline estimate`: money without exponents or six-decimal floats, times in s / min / h."""

import json
import re

import pytest
from conftest import chat_line, invoke, write_jsonl

from pipeline.output.humane import duration, figure, rate, share, usd

LONG_FLOAT = re.compile(r"\.0*[1-9]\d{3,}")  # 0.123456, 2.043e-05's digits: more than three significant


@pytest.mark.parametrize(("x", "text"), [
    (7.6e-05, "$0.000076"), (0.0000762345, "$0.0000762"), (0.0123, "$0.0123"), (0.5, "$0.50"),
    (0, "$0.00"), (1, "$1.00"), (1234.567, "$1,234.57"), (None, "–"),
])
def test_money_reads_as_dollars_without_exponents(x, text):
    assert usd(x) == text


@pytest.mark.parametrize(("seconds", "text"), [
    (0.04, "0.04 s"), (1.234, "1.2 s"), (12.6, "13 s"), (59.6, "1 min 0 s"), (184.2, "3 min 4 s"),
    (7501, "2 h 5 min"),
])
def test_times_read_in_seconds_minutes_and_hours(seconds, text):
    assert duration(seconds) == text


def test_rates_shares_and_figures_keep_three_significant_digits():
    assert [rate(x) for x in (0.1234, 12.34, 123.4, 12345.6)] == ["0.123", "12.3", "123", "12,346"]
    assert share(0.84123) == "84.1%" and figure(0.000999) == "0.000999" and figure(2.5) == "2.50"


def test_summary_and_report_show_no_long_floats(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [chat_line(f"r{i}", "word " * 9) for i in range(7)])
    out = tmp_path / "out"
    res = invoke("run", src, "-o", out, "--engine", "fake", "-m", "smollm2", "-q")
    assert res.exit_code == 0, res.output
    raw = json.loads((out / "_report.json").read_text())
    assert isinstance(raw["estimated_cost"], float) and raw["estimated_cost"] < 0.01  # the JSON keeps raw numbers
    assert f"estimated cost: {usd(raw['estimated_cost'])} at" in res.output
    report = invoke("report", out, "--compare", out)
    assert report.exit_code == 0
    html = (out / "_report.html").read_text()
    page = (html.split("<h2>Summary</h2>", 1)[1].split("<h2>Charts</h2>")[0]  # the charts' data stay raw
            + html.split("<h2>Slowest requests</h2>", 1)[1].split("<h2>A sample")[0])
    assert " s</td>" in page  # engine times as durations
    for text in (res.output, report.output, page):
        assert not LONG_FLOAT.search(text), LONG_FLOAT.search(text)
    assert "e-0" not in res.output + report.output + page
