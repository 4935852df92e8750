"""Data parallel on one machine: several engines fed from one queue give the same rows as one,
and a dead engine's requests are redone by the others."""

import json
from pathlib import Path

import pytest
from conftest import chat_line, invoke, read_output, write_jsonl

FAKE = ["--engine", "fake", "-m", "smollm2", "-q"]
# One request at a time per engine, without prefix caching: greedy text depends on what else is
# in the engine's batch and cache (vLLM does not promise batch invariance), so the runs compare
# engines on equal terms. One at a time also keeps the engine that is ready first from finishing
# the file before the other is up (engines here start seconds apart).
REAL = ["-m", "smollm2", "--max-model-len", "512", "--max-in-flight", "1", "--no-enable-prefix-caching", "-q"]
# vLLM's CPU build binds every engine's threads to the same cores ("auto" picks core 0 on this
# 2-core machine), so a second engine crawls while the first runs; unbound, one thread each,
# two engines share the cores (and every run computes with the same thread count).
ENGINE_ENV = {"VLLM_CPU_OMP_THREADS_BIND": "nobind", "OMP_NUM_THREADS": "1"}
TOPICS = ["the sea", "a cat", "mountains", "bread", "the moon", "a train", "rain", "a garden",
          "winter", "a library", "coffee", "a bicycle", "a river", "snow", "a violin", "the desert"]


def scale_lines():
    """Greedy requests (same text whatever engine runs them), sampled ones, and two error rows.
    Greedy answers of 16 tokens: enough text to tell any two topics' answers apart, for a third of
    the generation time of 48 (the runs send one request at a time)."""
    lines = [chat_line(f"greedy-{i}", f"Write one sentence about {t}.", temperature=0, max_tokens=16)
             for i, t in enumerate(TOPICS)]
    lines += [chat_line(f"sampled-{i}", f"Name a colour for {t}.", temperature=0.9, max_tokens=8)
              for i, t in enumerate(TOPICS[:4])]
    lines.append(chat_line("too-long", "word " * 800, max_tokens=4))  # over --max-model-len 512
    lines.append(chat_line("bad-temperature", "hi", temperature=7))
    return lines


def local_baseline(tmp_path_factory) -> dict[str, dict]:
    """Rows of one engine on the local executor; computed once per session (test_ray compares too)."""
    base = tmp_path_factory.getbasetemp() / "local-baseline"
    out = base / "out"
    if not (out / "_SUCCESS").exists():
        base.mkdir(exist_ok=True)
        src = write_jsonl(base / "in.jsonl", scale_lines())
        res = invoke("run", src, "-o", out, *REAL, env=ENGINE_ENV)
        assert res.exit_code == 0, res.output
    return {r["custom_id"]: r for r in read_output(out).to_dicts()}


def assert_same_rows(rows: dict[str, dict], baseline: dict[str, dict]) -> None:
    assert sorted(rows) == sorted(baseline)
    for cid, row in rows.items():
        base = baseline[cid]
        assert row["prompt_tokens"] == base["prompt_tokens"], (cid, row["error"])
        assert (row["error"] or {}).get("code") == (base["error"] or {}).get("code"), cid
        if cid.startswith("greedy-"):
            assert row["content"] and row["content"] == base["content"], cid
            assert row["completion_tokens"] == base["completion_tokens"], cid
    assert baseline["too-long"]["error"]["code"] == "context_length_exceeded"
    assert baseline["bad-temperature"]["error"]["code"] == "invalid_parameter"


@pytest.fixture
def submissions(monkeypatch):
    """Which worker each request was handed to, in order (a request handed out twice was redone)."""
    from pipeline.engines.dispatcher import Dispatcher

    handed: list[tuple[int, str]] = []
    real = Dispatcher._submit

    def record(self, i, w, reqs):
        handed.extend((i, r.custom_id) for r in reqs)
        return real(self, i, w, reqs)

    monkeypatch.setattr(Dispatcher, "_submit", record)
    return handed


@pytest.mark.engine
def test_two_engines_give_the_rows_of_one(tmp_path, tmp_path_factory, submissions, engines_start_together):
    baseline = local_baseline(tmp_path_factory)
    submissions.clear()
    src = write_jsonl(tmp_path / "in.jsonl", scale_lines())
    res = invoke("run", src, "-o", tmp_path / "out", *REAL, "--data-parallel-size", "2", env=ENGINE_ENV)
    assert res.exit_code == 0, res.output
    rows = {r["custom_id"]: r for r in read_output(tmp_path / "out").to_dicts()}
    assert_same_rows(rows, baseline)
    report = json.loads((tmp_path / "out" / "_report.json").read_text())
    assert report["engines"] == 2 and report["engine_restarts"] == 0
    assert {worker for worker, _ in submissions} == {0, 1}, f"one engine did all the work: {submissions}"
    plan = report["cache_plan"]["engines"]  # each engine's predicted and served prefix share
    assert [e["engine"] for e in plan] == [0, 1] and all(e["cached_share"] is not None for e in plan), plan
    print(f"\ncache plan: {report['cache_plan']}")


def test_dead_worker_requests_are_redone(tmp_path, submissions):
    n = 80
    src = write_jsonl(tmp_path / "in.jsonl", [chat_line(f"r{i}", f"q{i}") for i in range(n)])
    marker, sent = tmp_path / "died", tmp_path / "sent.log"
    res = invoke("run", src, "-o", tmp_path / "out", *FAKE, "--data-parallel-size", "2",
                 "--max-in-flight", "4", "--engine-option", "step_delay=0.05",
                 "--engine-option", "die_at=10", "--engine-option", f"die_marker={marker}",
                 "--engine-option", f"log_file={sent}")
    assert res.exit_code == 0, res.output
    assert marker.exists()
    df = read_output(tmp_path / "out")
    assert sorted(df["custom_id"].to_list()) == sorted(f"r{i}" for i in range(n))  # exactly one row each
    assert df["error"].is_null().all()
    report = json.loads((tmp_path / "out" / "_report.json").read_text())
    assert (report["engines"], report["engine_restarts"], report["requests"]) == (2, 1, n)
    assert {worker for worker, _ in submissions} == {0, 1}
    # what the dead engine held was handed out again, and only that
    handed = [cid for _, cid in submissions]
    redone = {cid for cid in handed if handed.count(cid) > 1}
    assert 0 < len(redone) <= 4
    assert len(handed) == n + len(redone)
    received = Path(sent).read_text().split()
    assert set(received) == {f"r{i}" for i in range(n)}
