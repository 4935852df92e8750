"""Repairs judged without an engine: never the identical request twice, the policy's bounds."""

import json

import pytest

from pipeline.records import Request
from pipeline.verdicts import repairs
from pipeline.verdicts.repairs import RepairPolicy, Repairs


def req(**params):
    return Request.chat("id", "f.jsonl", 1, [{"role": "user", "content": "x"}], params=params)


def answer(verdict, **cols):
    return [{"verdict": verdict, "verdict_message": "why", "content": "c", "prompt_tokens": 3,
             "completion_tokens": 2, "total_tokens": 5, "estimated_cost": 0.5, **cols}]


def test_the_identical_request_is_never_sent_twice(monkeypatch):
    r = Repairs(RepairPolicy(frozenset({"empty"}), attempts=5))
    monkeypatch.setattr(repairs, "repaired", lambda req, *a: (req, "nothing"))  # a repair that changes nothing
    assert r.next_request(req(), answer("empty")) is None
    monkeypatch.setattr(repairs, "repaired", lambda req, *a: (req.with_body(seed=7), "s"))
    first = r.next_request(req(), answer("empty"))
    assert first is not None and r.next_request(first, answer("empty")) is None  # seed 7 was sent already


def test_sums_over_attempts_and_a_first_answer_is_untouched():
    r = Repairs(RepairPolicy(frozenset({"truncated"})))
    nxt = r.next_request(req(max_tokens=4), answer("truncated"))
    assert nxt.params == {"max_tokens": 8}
    assert r.next_request(nxt, answer("ok")) is None
    final = r.finish(nxt, answer("ok"))[0]
    assert (final["completion_tokens"], final["estimated_cost"], len(final["attempts"])) == (4, 1.0, 2)
    once = Repairs(RepairPolicy(frozenset({"truncated"})))
    assert once.next_request(req(), answer("ok")) is None and "attempts" not in once.finish(req(), answer("ok"))[0]


def test_policy_and_worst_case():
    assert RepairPolicy.of(None) is None and RepairPolicy.of("") is None
    p = RepairPolicy.of("truncated, empty", 2, 100)
    assert p.verdicts == {"truncated", "empty"}
    assert p.worst_case(30) == (2, 60 + 100)  # 30 -> 60 -> 100 (the cap)
    assert RepairPolicy.of(["unparsable"], 3).worst_case(10) == (3, 30)
    with pytest.raises(ValueError, match="--repair ok"):
        RepairPolicy.of("ok")


def test_a_held_row_resumes_at_its_next_attempt_from_its_entry():
    policy = RepairPolicy(frozenset({"truncated", "unparsable"}), attempts=3)
    r = Repairs(policy)
    first = req(max_tokens=4)
    nxt = r.next_request(first, answer("truncated"))
    nxt = r.next_request(nxt, answer("unparsable"))  # a repair turn: two messages more
    entry = json.loads(json.dumps(r.pending(nxt)))  # as committed, and read back by a rerun
    assert entry["next"]["params"] == {"max_tokens": 8} and len(entry["next"]["messages"]) == 2
    again = Repairs(policy)
    resumed = again.resume(first, entry)
    assert resumed == nxt  # the same request as the killed run's next one, not the first
    assert again.counts == {"unparsable": 1}
    assert again.next_request(resumed, answer("ok")) is None
    final = again.finish(resumed, answer("ok"))[0]
    assert [a["change"] for a in final["attempts"]] == [
        "first",
        "max_tokens 4 -> 8",
        "repair turn quoting the unparsable",
    ]
    assert final["completion_tokens"] == 6  # the killed run's attempts count
    assert Repairs(policy).resume(first, {"attempts": []}) is first  # an entry it cannot read: from the start


def test_a_json_check_adds_the_json_grammar_to_a_repair_turn_only_where_the_request_has_no_format():
    row = answer("failed_check")[0]
    policy = RepairPolicy(frozenset({"failed_check"}), json_check=True)
    new, what = repairs.repaired(req(), "failed_check", row, policy, 1)
    assert new.response_format == {"type": "json_object"} and what.endswith("with a JSON grammar")
    own = Request.chat("id", "f.jsonl", 1, [{"role": "user", "content": "x"}], response_format={"type": "text"})
    assert repairs.repaired(own, "failed_check", row, policy, 1)[0].response_format == {"type": "text"}
    plain = RepairPolicy(frozenset({"failed_check"}))  # the check does not read JSON
    assert repairs.repaired(req(), "failed_check", row, plain, 1)[0].response_format is None
    assert repairs.repaired(req(), "schema_mismatch", row, policy, 1)[0].response_format is None


def test_checks_that_read_json_say_so(tmp_path):
    from pydantic import BaseModel

    from pipeline.verdicts.checks import expects_json, row_check

    class Label(BaseModel):
        label: str

    (tmp_path / "s.json").write_text("{}")
    assert expects_json(row_check(check=Label)) and expects_json(row_check(check_schema=str(tmp_path / "s.json")))
    assert not expects_json(row_check(check_regex="x")) and not expects_json(row_check(check=lambda row: None))
    assert expects_json(row_check(check_regex="x", check_schema=str(tmp_path / "s.json")))
