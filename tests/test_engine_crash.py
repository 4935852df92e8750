"""A request that kills the real engine (a per-request seed on the CPU build, passed through with
--seed-on-cpu engine) is isolated with an engine_crash row; the rest of the batch succeeds."""

import json

import pytest
from conftest import chat_line, invoke, read_output, write_jsonl

pytestmark = pytest.mark.engine


def test_seed_crash_is_isolated(tmp_path):
    from pipeline.vllm_engine import current_platform

    if not current_platform.is_cpu():
        pytest.skip("the seed crash is specific to the CPU build of vLLM")
    # The CPU generator fails when a seeded prompt is split over scheduler steps: a prompt longer
    # than --max-num-batched-tokens makes that happen.
    rows = [chat_line("ok-1", "Say hi.", temperature=0, max_tokens=4),
            chat_line("poison", "Tell me a story. " + "Once upon a time " * 40, seed=7, max_tokens=4),
            chat_line("ok-2", "Say bye.", temperature=0, max_tokens=4)]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    res = invoke("run", src, "-o", tmp_path / "out", "-m", "smollm2", "-q", "--seed-on-cpu", "engine",
                 "--max-model-len", "512", "--max-num-batched-tokens", "64", "--max-num-seqs", "4")
    assert res.exit_code == 0, res.output
    rows = {r["custom_id"]: r for r in read_output(tmp_path / "out").to_dicts()}
    assert set(rows) == {"ok-1", "poison", "ok-2"}
    assert rows["poison"]["error"]["code"] == "engine_crash"
    assert "seed" in rows["poison"]["error"]["message"]
    assert rows["ok-1"]["error"] is None and rows["ok-2"]["error"] is None
    report = json.loads((tmp_path / "out" / "_report.json").read_text())
    assert report["engine_restarts"] >= 2 and report["errors_by_code"] == {"engine_crash": 1}
