"""Engines that keep their prefixes, on the fake engine with a simulated prefix cache: two
engines, shuffled documents x questions; the report's cache plan predicts what each engine's
cache serves, and in prefix order each engine serves about what was predicted, far more than in
the input's order."""

import json
import random

from conftest import invoke, write_jsonl

FAKE = ["--engine", "fake", "-m", "smollm2", "-q", "--data-parallel-size", "2"]


def docs_questions(path, docs=12, questions=6):
    rnd = random.Random(3)
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
    texts = [" ".join(rnd.choice(words) for _ in range(300)) for _ in range(docs)]
    pairs = [(d, q) for d in range(docs) for q in range(questions)]
    rnd.shuffle(pairs)
    return write_jsonl(path, [{"custom_id": f"d{d}q{q}", "body": {"max_tokens": 4, "messages": [
        {"role": "user", "content": f"Document {d}:\n{texts[d]}\n\nQuestion {q}: which word comes first?"}]}}
        for d, q in pairs])


def report_of(tmp_path, src, order):
    out = tmp_path / order
    res = invoke("run", src, "-o", out, *FAKE, "--order", order, "--engine-option", "prefix_cache_blocks=16",
                 "--engine-option", "step_delay=0.05", "--max-in-flight", "4")
    assert res.exit_code == 0, res.output
    return json.loads((out / "_report.json").read_text())


def test_each_engine_serves_what_the_plan_predicted(tmp_path, engines_start_together):
    src = docs_questions(tmp_path / "in.jsonl")
    prefix, plain = report_of(tmp_path, src, "prefix"), report_of(tmp_path, src, "input")
    engines = prefix["cache_plan"]["engines"]
    assert [e["engine"] for e in engines] == [0, 1] and sum(e["requests"] for e in engines) == 72
    assert all(e["requests"] > 0 and e["groups"] < e["requests"] for e in engines)
    for e in engines:  # 16 blocks hold two documents: each engine's group fits
        assert e["predicted_share"] > 0.6 and abs(e["cached_share"] - e["predicted_share"]) < 0.15, e
    assert prefix["cache_plan"]["differs"] == []
    served = sum(e["cached_tokens"] for e in engines)
    assert served > 2 * sum(e["cached_tokens"] for e in plain["cache_plan"]["engines"])
