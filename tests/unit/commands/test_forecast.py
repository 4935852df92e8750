"""Cost planning without an engine: the interval arithmetic, the calibration file's choice of a
match, the plan for a deadline or a budget, the stratified sample and the calibrated ETA."""

import io
import json
import random
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest

from pipeline.commands import calibration
from pipeline.commands.calibration import Measured, Moments
from pipeline.commands.forecast import (
    Z90,
    EtaModel,
    Group,
    Interval,
    Lengths,
    extrapolate,
    parse_deadline,
    plan,
    spread_floor,
    t90,
)
from pipeline.commands.learn import RunLengths, calibrated_eta, compare, status_eta
from pipeline.commands.progress import Progress
from pipeline.commands.sample import Stratifier, stratum

NOW = datetime(2026, 12, 6, 18, 0, tzinfo=timezone.utc)


def test_interval_by_hand():
    """Measured rows count as they are; the rest at the group's mean, with M·s² + M²·s²/n."""
    g = Group(requests=10, upper=1000, measured=4, measured_upper=400, measured_sum=120.0,
              lengths=Lengths(4, 30.0, 16.0))
    r = extrapolate([g])
    assert r.expected == pytest.approx(120 + 6 * 30)
    s2 = max(16.0, spread_floor(4, 100))  # four rows do not measure a spread below the floor
    half = t90(3) * (6 * s2 + 36 * s2 / 4) ** 0.5
    assert r.low == pytest.approx(max(120, 300 - half)) and r.high == pytest.approx(300 + half)
    measured = Group(requests=10, upper=1000, measured=4, measured_upper=400, measured_sum=120.0,
                     lengths=Lengths(4, 30.0, 2000.0))
    half = t90(3) * (6 * 2000 + 36 * 2000 / 4) ** 0.5  # a spread above the floor is taken as measured
    assert extrapolate([measured]).high == pytest.approx(300 + half)


def test_rows_that_all_stopped_at_the_bound_leave_room_below_it():
    """Twelve sampled rows all cut at max_tokens measure no spread; the rest may still stop early,
    so the interval does not shrink to a point (a real sample run once measured 957..959 for a job
    that produced 898)."""
    g = Group(requests=36, upper=36 * 32, measured=12, measured_upper=12 * 32, measured_sum=12 * 32.0,
              lengths=Lengths(12, 32.0, 0.0))
    r = extrapolate([g])
    assert r.high == 36 * 32 and r.low < 36 * 32 - 100
    assert spread_floor(1000, 32) < spread_floor(12, 32) < spread_floor(2, 32)


def test_interval_clipped_to_what_is_possible():
    g = Group(requests=3, upper=30, measured=1, measured_upper=10, measured_sum=10.0,
              lengths=Lengths(5, 9.0, 400.0))
    r = extrapolate([g])
    assert r.low >= 10 and r.high == 30  # never below what was measured, never above the bound


def test_unmeasured_group_takes_the_pooled_ratio():
    g = Group(requests=5, upper=500)
    r = extrapolate([g], Lengths(10, 0.2, 0.01))
    assert r.expected == pytest.approx(100)
    s2 = max(0.01 * 100**2, spread_floor(10, 100))
    half = t90(9) * (5 * s2 + 25 * s2 / 10) ** 0.5
    assert r.high == pytest.approx(100 + half)
    with pytest.raises(ValueError):
        extrapolate([g])


def test_interval_covers_the_truth_about_90_percent_of_the_time():
    """Simulated jobs: two groups of geometric-ish lengths; a stratified sample of 40; the whole
    job's total falls inside the interval in roughly 90% of 400 seeded trials."""
    rng = random.Random(7)
    inside = 0
    for _ in range(400):
        groups = []
        total = 0
        for size, scale in ((600, 40.0), (300, 120.0)):
            lengths = [min(256, int(rng.expovariate(1 / scale))) for _ in range(size)]
            total += sum(lengths)
            n = 40 * size // 900
            sample = rng.sample(lengths, n)
            m = Moments()
            for v in sample:
                m.add(v)
            groups.append(Group(size, 256 * size, n, 256 * n, m.total, m.lengths()))
        r = extrapolate(groups)
        inside += r.low <= total <= r.high
    assert 0.84 <= inside / 400 <= 0.96


def test_t_quantile():
    """Within 2% of Student's t table (two-sided 90%) from 3 degrees of freedom; the normal's at infinity."""
    for df, table in ((3, 2.353), (5, 2.015), (10, 1.812), (30, 1.697)):
        assert t90(df) == pytest.approx(table, rel=0.02)
    assert t90(float("inf")) == Z90


def test_moments_equal_the_two_pass_figures():
    values = [3, 9, 27, 1, 0, 14]
    m = Moments()
    for v in values:
        m.add(v)
    assert m.lengths() == pytest.approx(Lengths.of(values))


def test_calibration_takes_the_most_specific_match_and_says_which():
    lines = [
        {"kind": "lengths", "model": "m", "file": "a.jsonl", "max_tokens": 64, "requests": 5, "at": "1"},
        {"kind": "lengths", "model": "m", "file": "b.jsonl", "max_tokens": 64, "requests": 6, "at": "2"},
        {"kind": "lengths", "model": "m", "file": "c.jsonl", "max_tokens": 256, "requests": 7, "at": "3"},
        {"kind": "lengths", "model": "other", "file": "a.jsonl", "max_tokens": 64, "requests": 8, "at": "4"},
    ]
    assert calibration.find_lengths(lines, "m", "s3://x/a.jsonl", 64) == (lines[0], "model, file and max_tokens")
    assert calibration.find_lengths(lines, "m", "z.jsonl", 64) == (lines[1], "model and max_tokens")
    assert calibration.find_lengths(lines, "m", "z.jsonl", 32) == (lines[2], "model")
    assert calibration.find_lengths(lines, "nobody", "a.jsonl", 64) == (None, "none")
    speeds = [{"kind": "throughput", "model": "m", "engine": "vllm", "gpu": "H100", "tokens_per_second": 9},
              {"kind": "throughput", "model": "n", "engine": "vllm", "gpu": "H100", "tokens_per_second": 5},
              {"kind": "throughput", "model": "m", "engine": "vllm", "gpu": "cpu", "tokens_per_second": 1}]
    assert calibration.find_throughput(speeds, "m", "vllm", "H100") == (speeds[0], "model, engine and GPU")
    assert calibration.find_throughput(speeds, "z", "vllm", "H100") == (speeds[1], "engine and GPU")
    assert calibration.find_throughput(speeds, "m", "vllm", None) == (speeds[2], "model, engine and GPU")
    assert calibration.find_throughput(speeds, "m", "fake", None) == (None, "none")


def test_calibration_file_round_trip(calibration_file, monkeypatch):
    m = Measured()
    for c, t in ((10, 4), (20, 6), (30, None)):
        m.add(c, t, 5, 100, 50)
    calibration.append(calibration.lengths_lines("m", {("dir/a.jsonl", 100): m}))
    calibration_file.open("a").write("not json\n")
    [line] = calibration.read()
    assert (line["file"], line["max_tokens"], line["requests"], line["upper_mean"]) == ("a.jsonl", 100, 3, 100)
    assert calibration.dist(line) == Lengths(3, 20.0, 100.0)
    assert calibration.dist(line, "reasoning").mean == pytest.approx(10 / 3, abs=1e-3)
    monkeypatch.setenv("PIPELINE_CALIBRATION", "off")
    calibration.append([{"kind": "x"}])
    assert calibration.path() is None and calibration.read() == []


def test_deadline_forms():
    assert parse_deadline("8h", NOW) == NOW + timedelta(hours=8)
    assert parse_deadline("90m", NOW) == NOW + timedelta(minutes=90)
    assert parse_deadline("06:00", NOW) == datetime(2026, 12, 7, 6, 0, tzinfo=timezone.utc)
    assert parse_deadline("20:30", NOW) == datetime(2026, 12, 6, 20, 30, tzinfo=timezone.utc)
    assert parse_deadline("2026-12-08T00:00", NOW) == datetime(2026, 12, 8, tzinfo=timezone.utc)
    with pytest.raises(ValueError, match="--deadline"):
        parse_deadline("tomorrow", NOW)


def test_plan_for_a_deadline_and_a_budget():
    """100 GPU-hours (120 at the high end) in 10 hours, engines of 2 GPUs that take 0.5 h to start:
    ceil(120 / 2 / 9.5) = 7 engines; their cost counts each GPU's start."""
    p = plan(gpu_hours=Interval(100, 80, 120), gpus_per_engine=2, start_seconds=1800, gpu_hour_usd=2.0,
             hosted=Interval(300, 250, 350), deadline=NOW + timedelta(hours=10), budget=260.0, now=NOW)
    assert (p["engines_high"], p["gpus_high"], p["engines_expected"]) == (7, 14, 6)
    assert p["own_cost_usd_high"] == pytest.approx((120 + 14 * 0.5) * 2)
    assert p["deadline_within_budget"] is True and p["hosted_within_budget"] is False
    assert p["most_engines_in_budget"] == 10  # (260/2 - 120) GPU-hours of starts / 1 per engine
    assert p["hosted_cost_usd_high"] == 350
    late = plan(gpu_hours=Interval(1, 1, 1), gpus_per_engine=1, start_seconds=600, gpu_hour_usd=1.0, hosted=None,
                deadline=NOW + timedelta(minutes=5), budget=None, now=NOW)
    assert late["engines_high"] is None  # an engine cannot even start in time


def test_stratified_sample_shares_and_is_the_same_every_time():
    def req(file, line, max_tokens):
        return SimpleNamespace(file=file, line=line, source_file=f"f{file}", max_tokens=max_tokens, n=1,
                               messages=[{"role": "user", "content": "Same start for all"}])

    def chosen(seed):
        s = Stratifier(10, seed)
        for line in range(1, 101):
            s.add(req(0, line, 16 if line <= 80 else 512), 16, 0, b"")
        for line in range(1, 3):
            s.add(req(1, line, 16), 16, 0, b"")
        return s, s.chosen()

    s, rows = chosen(1)
    assert sorted(s.shares().values()) == [1, 2, 7]  # 80 / 20 / 2 rows, each stratum at least one
    assert len(rows) == 10 and rows == chosen(1)[1] and rows != chosen(2)[1]
    assert sum(1 for (f, _) in rows if f == 1) == 1


def test_strata_split_ways_of_asking():
    """Prompts shorter than a KV block are told apart by how their last message starts."""
    def req(text):
        return SimpleNamespace(file=0, line=1, source_file="f", max_tokens=8, n=1,
                               messages=[{"role": "user", "content": [{"type": "text", "text": text}]}])

    assert stratum(req("Write a poem about the sea"), b"") == stratum(req("Write a poem about rain"), b"")
    assert stratum(req("Say one word about the sea"), b"") != stratum(req("Write a poem about rain"), b"")
    assert stratum(req("x"), b"\1" * 32) == stratum(req("y"), b"\1" * 32)  # a whole block: its digest decides


def test_progress_eta_from_the_calibrated_model():
    clock = iter([0.0, 40.0, 80.0]).__next__
    out = io.StringIO()
    p = Progress(100, quiet=False, interval=30, stream=out, clock=clock,
                 eta=EtaModel(tokens_per_request=50, tokens_per_second=10, source="calibrated: test"))
    p.update(20)
    assert "ETA 6 min 40 s (calibrated: test)" in out.getvalue()  # 80 requests × 50 tokens / 10 per s
    p.update(40)
    assert "ETA 3 min 20 s" in out.getvalue()


def test_eta_from_the_calibration_file():
    lines = [{"kind": "lengths", "model": "m", "requests": 10, "prompt_mean": 20, "completion": {"mean": 80}},
             {"kind": "lengths", "model": "m", "requests": 30, "prompt_mean": 20, "completion": {"mean": 40}},
             {"kind": "throughput", "model": "m", "engine": "vllm", "gpu": "H100", "tokens_per_second": 100}]
    eta = calibrated_eta("m", "vllm", 2, lines)
    assert eta.tokens_per_request == pytest.approx(70) and eta.tokens_per_second == 200
    assert eta.seconds_left(40) == pytest.approx(14)
    assert calibrated_eta("m", "fake", 2, lines) is None and calibrated_eta("x", "vllm", 2, lines) is None


def test_status_eta_reads_the_job_and_its_engines(calibration_file):
    calibration_file.write_text("".join(json.dumps(x) + "\n" for x in [
        {"kind": "lengths", "model": "my-model", "requests": 1, "prompt_mean": 10, "completion": {"mean": 90}},
        {"kind": "throughput", "model": "my-model", "engine": "vllm", "gpu": "cpu", "tokens_per_second": 50}]))
    manifest = {"job": {"options": {"model": "m", "served_model_name": ["my-model"], "engine": "vllm"}},
                "attempts": [{"engines": 4}]}
    seconds, source = status_eta(manifest, 100)
    assert seconds == pytest.approx(100 * 100 / 200) and "my-model" in source


def test_run_lengths_leave_the_engine_start_out():
    clock = iter([100.0, 101.0, 103.0]).__next__
    lengths = RunLengths(clock)
    req = SimpleNamespace(source_file="a.jsonl", max_tokens=64, n=1)
    for c in (10, 20, 30):
        lengths.add(req, SimpleNamespace(error=None, completion_tokens=c, reasoning_tokens=None, prompt_tokens=5))
    assert lengths.tokens_per_second(gpus=1) == pytest.approx((25 + 35) / 3)
    assert lengths.groups[("a.jsonl", 64)].completion.lengths().mean == 20


def test_compare_says_whether_the_run_fell_inside():
    estimate = {"at": "t", "completion_tokens_expected": 100, "completion_tokens_low": 80,
                "completion_tokens_high": 120, "cost_usd_expected": 1.0, "cost_usd_low": 0.8, "cost_usd_high": 1.2,
                "seconds_expected": 60}
    c = compare(estimate, {"completion_tokens": 130, "estimated_cost": 1.1, "wall_seconds": 70})
    assert c["completion_tokens"]["inside"] is False and c["cost_usd"]["inside"] is True
    assert (c["seconds_expected"], c["wall_seconds"]) == (60, 70)


@pytest.mark.parametrize("seed", range(20))
def test_shares_add_up_to_the_sample(seed):
    rng = random.Random(seed)
    s = Stratifier(rng.randint(1, 60), 0)
    for k in range(rng.randint(1, 30)):
        s.strata[(k,)] = SimpleNamespace(size=rng.randint(1, 40))
    shares = s.shares()
    assert sum(shares.values()) == min(s.rows, sum(x.size for x in s.strata.values()))
    assert all(0 <= shares[k] <= s.strata[k].size for k in shares)
