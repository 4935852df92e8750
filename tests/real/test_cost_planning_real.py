"""The honest check of cost planning, on the real vLLM engine and the embedded SmolLM2: estimate
a held-back file from a sample run of a third of it, run the whole file into the same output,
and find the whole run's completion tokens inside the estimate's 90% interval (docs/cost-planning.md
shows these figures)."""

import json

import pytest
from conftest import chat_line, invoke, write_jsonl

pytestmark = pytest.mark.engine

TOPICS = ["the sea", "a cat", "rain", "the moon", "bread", "a river", "winter", "a small town", "music",
          "a garden", "trains", "the wind"]


def held_back(path):
    """36 short requests, never seen by any calibration: three ways of asking, two max_tokens."""
    rows = []
    for i, topic in enumerate(TOPICS):
        rows.append(chat_line(f"w{i}", f"Say one word about {topic}.", max_tokens=16, temperature=0))
        rows.append(chat_line(f"s{i}", f"Write one sentence about {topic}.", max_tokens=32, temperature=0))
        rows.append(chat_line(f"p{i}", f"Write a short poem about {topic}.", max_tokens=32, temperature=0))
    return write_jsonl(path, rows)


def test_whole_run_inside_the_sampled_interval(tmp_path, calibration_file):
    src, out = held_back(tmp_path / "held_back.jsonl"), tmp_path / "out"
    res = invoke("estimate", src, "-m", "smollm2", "--sample-run", "12", "-o", out, "--json", "--workers", "1")
    assert res.exit_code == 0, res.output
    r = json.loads(res.stdout)
    assert r["sample_run"]["rows"] == 12 and r["sample_run"]["gpu"] == "cpu"
    assert (
        r["completion_tokens_low"] < r["completion_tokens_high"] <= r["completion_tokens_upper"] == 12 * (16 + 32 + 32)
    )

    res = invoke("run", src, "-m", "smollm2", "-o", out, "-q")
    assert res.exit_code == 0, res.output
    report = json.loads((out / "_report.json").read_text())
    assert report["resumed"] == 12 and report["requests"] == 36 and report["failed"] == 0
    actual = report["completion_tokens"]
    print(
        f"\nestimate: {r['completion_tokens_expected']} expected, 90% {r['completion_tokens_low']} to "
        f"{r['completion_tokens_high']} (upper bound {r['completion_tokens_upper']}); run: {actual}; "
        f"throughput {r['tokens_per_second']:.0f} tokens/s, engine start {r['sample_run']['engine_start_seconds']} s; "
        f"GPU-hours {r['gpu_hours_low']:.2g}..{r['gpu_hours_high']:.2g}; run took {report['wall_seconds']} s; "
        f"cost {r['cost_usd_low']:.3g}..{r['cost_usd_high']:.3g} vs {report['estimated_cost']:.3g}"
    )
    assert r["completion_tokens_low"] <= actual <= r["completion_tokens_high"]
    assert report["estimate"]["completion_tokens"]["inside"] is True
    assert report["estimate"]["cost_usd"]["inside"] is True  # prompt tokens counted exactly as the engine does
