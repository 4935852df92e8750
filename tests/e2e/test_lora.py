"""--lora NAME=PATH: LoRA adapters of the run's model, served by the same engine, reachable by
name or by --route; the output keeps requested and served model; `estimate` prices each route.

The adapters are real: peft writes them for the embedded model in set-up (rank 8 on q_proj and
v_proj, random non-zero B so that their outputs differ from the base model's). One engine test
runs the real vLLM engine on the base model and two adapters at once.
"""

import json
import os

import pytest
from conftest import MODEL, chat_line, invoke, read_output, source, write_jsonl

from pipeline.intake.requests import Context, parse_row
from pipeline.models.adapters import adapter_rank, load_adapters, lora_engine_args
from pipeline.models.prices import hosted_price

FAKE = ["--engine", "fake", "-m", "smollm2", "-q"]
PROMPT = "Name a fruit that is yellow."


def make_adapter(path, seed, rank=8):
    """A LoRA adapter of the embedded model, written by peft's save_pretrained."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from pipeline.models.names import resolve_model

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(resolve_model("smollm2"), dtype=torch.float32)
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["q_proj", "v_proj"],
                        init_lora_weights=False, task_type="CAUSAL_LM")
    get_peft_model(base, config).save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("adapters")
    return {"bot1": make_adapter(tmp / "bot1", 1), "bot2": make_adapter(tmp / "bot2", 2)}


def lora_args(adapters):
    return [a for name, path in adapters.items() for a in ("--lora", f"{name}={path}")]


def request(custom_id, model=None, content=PROMPT, **params):
    line = chat_line(custom_id, content, **{"temperature": 0, "max_tokens": 12, **params})
    if model is None:
        del line["body"]["model"]
    else:
        line["body"]["model"] = model
    return line


# ---- parsing, routing, validation (no engine) ----------------------------------------------------
def test_adapters_are_read_and_size_the_engine(adapters, tmp_path):
    loaded = load_adapters({k: str(v) for k, v in adapters.items()})
    assert [(a.name, a.rank, a.path) for a in loaded] == [("bot1", 8, str(adapters["bot1"])),
                                                          ("bot2", 8, str(adapters["bot2"]))]
    assert loaded[0].digest != loaded[1].digest
    assert lora_engine_args(loaded) == {"enable_lora": True, "max_loras": 2, "max_lora_rank": 8}
    assert lora_engine_args(()) == {}
    wide = tmp_path / "wide"
    wide.mkdir()
    (wide / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8, "rank_pattern": {"q_proj": 12}}))
    (wide / "adapter_model.safetensors").write_bytes(b"x")
    assert adapter_rank(json.loads((wide / "adapter_config.json").read_text())) == 12
    both = load_adapters({"a": str(adapters["bot1"]), "w": str(wide)})
    assert lora_engine_args(both)["max_lora_rank"] == 16  # the smallest rank vLLM accepts above 12


def test_requests_name_an_adapter_directly_or_through_a_route():
    ctx = Context.of("smollm2", (), 4, {"ft:*:support-bot:*": "bot1", "gpt-4o*": "smollm2"}, ("bot1", "bot2"))

    def adapter_of(model):
        body = {"messages": [{"role": "user", "content": "x"}], **({"model": model} if model else {})}
        return parse_row({"custom_id": "a", "body": body}, source=source("f"), line=1, ctx=ctx).adapter

    assert adapter_of("bot2") == "bot2"
    assert adapter_of("ft:gpt-4o-mini-2024-07-18:acme:support-bot:x1") == "bot1"
    assert adapter_of("gpt-4o-mini") is None and adapter_of(MODEL) is None and adapter_of(None) is None
    with pytest.raises(ValueError, match="not bot3.*--lora bot3=PATH"):
        Context.of("smollm2", (), 4, {"x": "bot3"}, ("bot1",))


def test_run_keeps_requested_and_served_model(adapters, tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [
        request("base"), request("direct", "bot2"), request("ft", "ft:gpt-4o-mini:acme:support-bot:x1"),
        request("hosted", "gpt-4o-mini"), request("unknown", "claude-3-5-haiku")])
    res = invoke("run", src, "-o", tmp_path / "out", *FAKE, *lora_args(adapters),
                 "--route", "ft:*:support-bot:*=bot1", "--route", "gpt-4o*=smollm2")
    assert res.exit_code == 0, res.output
    rows = {r["custom_id"]: r for r in read_output(tmp_path / "out").to_dicts()}
    seen = {k: (r["requested_model"], r["served_model"], r["model"]) for k, r in rows.items() if not r["error"]}
    assert seen == {
        "base": (None, MODEL, MODEL),
        "direct": ("bot2", "bot2", MODEL),
        "ft": ("ft:gpt-4o-mini:acme:support-bot:x1", "bot1", MODEL),
        "hosted": ("gpt-4o-mini", MODEL, MODEL),
    }
    err = rows["unknown"]["error"]
    assert err["code"] == "model_mismatch" and "bot1, bot2" in err["message"]
    assert rows["unknown"]["served_model"] is None


def test_lora_in_a_job_file_drives_validate_estimate_and_run(adapters, tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [request("a", "support"), request("b", "gpt-4o-mini")])
    job = tmp_path / "job.yaml"
    job.write_text(f"inputs: {src}\noutput: {tmp_path / 'out'}\nmodel: smollm2\nengine: fake\nquiet: true\n"
                   f"lora:\n  support: {adapters['bot1']}\nroute:\n  'gpt-4o*': support\n")
    assert invoke("validate", "--job", job).exit_code == 0
    assert invoke("run", "--job", job).exit_code == 0
    assert read_output(tmp_path / "out")["served_model"].to_list() == ["support", "support"]
    assert invoke("validate", src, "-m", "smollm2").exit_code == 1  # without the adapter: mismatch


@pytest.mark.parametrize("case", ["no-folder", "no-config", "no-weights", "not-lora", "rank", "base-name"])
def test_bad_adapter_is_refused_before_anything_is_written(adapters, tmp_path, case):
    bad = tmp_path / "adapter"
    name, expected = "bot", None
    if case != "no-folder":
        bad.mkdir()
    if case in ("no-weights", "not-lora", "rank"):
        config = {"peft_type": "PREFIX_TUNING" if case == "not-lora" else "LORA", "r": 1024 if case == "rank" else 8}
        (bad / "adapter_config.json").write_text(json.dumps(config))
        if case != "no-weights":
            (bad / "adapter_model.safetensors").write_bytes(b"x")
    if case == "base-name":
        bad, name = adapters["bot1"], "smollm2"
    expected = {
        "no-folder": f"no such folder {bad}", "no-config": f"{bad / 'adapter_config.json'} is missing",
        "no-weights": "holds no adapter_model.safetensors", "not-lora": "PREFIX_TUNING",
        "rank": "rank 1024", "base-name": "smollm2 already names the base model",
    }[case]
    src = write_jsonl(tmp_path / "in.jsonl", [request("a")])
    for command in ("run", "validate", "estimate"):
        args = ["-o", tmp_path / "out", *FAKE] if command == "run" else ["-m", "smollm2"]
        res = invoke(command, src, *args, "--lora", f"{name}={bad}")
        assert res.exit_code == 1, (command, res.output)
        assert f"--lora {name}={bad}" in res.output and expected in res.output, res.output
    if case in ("no-folder", "no-config"):
        assert "save_pretrained" in res.output  # the fix: what such a folder holds
    assert not (tmp_path / "out").exists()


def test_adapters_are_part_of_the_fingerprint(adapters, tmp_path):
    import shutil

    mine = tmp_path / "mine"
    shutil.copytree(adapters["bot1"], mine)
    src = write_jsonl(tmp_path / "in.jsonl", [request("a", "bot")])
    args = ["run", src, "-o", tmp_path / "out", *FAKE, "--lora", f"bot={mine}"]
    assert invoke(*args).exit_code == 0
    assert "already complete" in invoke(*args).output
    weights = mine / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")  # retrained in place: same path, new weights
    res = invoke(*args)
    assert res.exit_code == 1 and "different job" in res.output and "adapters" in res.output, res.output
    res = invoke("run", src, "-o", tmp_path / "out", *FAKE, "--lora", f"bot={adapters['bot2']}", "--overwrite")
    assert res.exit_code == 0, res.output


# ---- estimate: each route at its own price --------------------------------------------------------
def test_hosted_price_names():
    assert hosted_price("gpt-4o-mini").input == hosted_price("gpt-4o-mini-2024-07-18").input
    assert hosted_price("claude-3-5-haiku-20241022") == hosted_price("claude-3-5-haiku-latest")
    ft = hosted_price("ft:gpt-4o-mini-2024-07-18:acme:support-bot:x1")
    assert ft is not None and ft.input > hosted_price("gpt-4o-mini").input
    assert hosted_price("my-own-model") is None and hosted_price("ft:nothing") is None


def test_estimate_prices_each_route(adapters, tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [
        request("base"), request("b2", "bot2"), request("ft1", "ft:gpt-4o-mini:acme:support-bot:x1"),
        request("ft2", "ft:gpt-4o-mini:acme:support-bot:x1", content="A longer question, about bananas?"),
        request("h", "gpt-4o-mini"), request("bad", "gpt-4o-mini", temperature=9)])
    args = ["estimate", src, "-m", "smollm2", *lora_args(adapters), "--route", "ft:*:support-bot:*=bot1",
            "--route", "gpt-4o*=smollm2", "--completion-ratio", "0.25", "--workers", "1"]
    res = invoke(*args, "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.output[: res.output.rindex("}") + 1])
    routes = {(g["requested_model"], g["served_model"]): g for g in out["routes"]}
    assert list(routes) == [(None, MODEL), ("bot2", "bot2"), ("ft:gpt-4o-mini:acme:support-bot:x1", "bot1"),
                            ("gpt-4o-mini", MODEL)]
    assert sum(g["valid"] for g in routes.values()) == out["valid"] == 5  # the invalid row is in no route
    assert sum(g["prompt_tokens"] for g in routes.values()) == out["prompt_tokens"]
    ft = routes[("ft:gpt-4o-mini:acme:support-bot:x1", "bot1")]
    assert ft["adapter"] and ft["valid"] == 2 and ft["completion_tokens_upper"] == 24
    for g in routes.values():  # what runs them: the model's row (an adapter at its base model's price)
        assert g["price"]["source"] == "demo list price"
        assert g["cost_usd_upper"] == pytest.approx((g["prompt_tokens"] + g["completion_tokens_upper"]) * 0.055 / 1e6)
    fine_tuned = hosted_price("ft:gpt-4o-mini")
    assert ft["hosted"]["price"]["source"] == fine_tuned.source
    assert ft["hosted"]["cost_usd_expected"] == pytest.approx(
        fine_tuned.cost(ft["prompt_tokens"], ft["completion_tokens_upper"] * 0.25))
    assert routes[("gpt-4o-mini", MODEL)]["hosted"]["price"]["input"] == hosted_price("gpt-4o-mini").input
    assert routes[(None, MODEL)]["hosted"] is None and routes[("bot2", "bot2")]["hosted"] is None
    text = invoke(*args).output
    assert "per route:" in text and "ft:gpt-4o-mini:acme:support-bot:x1 → bot1 (LoRA)" in text
    assert "openai-batch list price for gpt-4o-mini" in text
    plain = invoke("estimate", src, "-m", "smollm2", "--workers", "1")  # no routes: no route table
    assert "per route:" not in plain.output


# ---- the real engine: base model and two adapters in one run -----------------------------------------
@pytest.mark.engine
def test_one_engine_serves_base_and_two_adapters(adapters, tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [
        request("base"), request("bot1", "ft:gpt-4o-mini:acme:support-bot:x1"), request("bot2", "bot2"),
        request("hosted", "gpt-4o-mini")])
    out = tmp_path / "out"
    res = invoke("run", src, "-o", out, "-m", "smollm2", "--max-model-len", "512", "-q", *lora_args(adapters),
                 "--route", "ft:*:support-bot:*=bot1", "--route", "gpt-4o*=smollm2")
    assert res.exit_code == 0, res.output
    rows = {r["custom_id"]: r for r in read_output(out).to_dicts()}
    assert all(r["error"] is None and r["content"] for r in rows.values()), rows
    assert {k: (r["requested_model"], r["served_model"]) for k, r in rows.items()} == {
        "base": (None, MODEL), "bot1": ("ft:gpt-4o-mini:acme:support-bot:x1", "bot1"),
        "bot2": ("bot2", "bot2"), "hosted": ("gpt-4o-mini", MODEL)}
    texts = {k: r["content"] for k, r in rows.items()}
    # Greedy: the base model answers alike under both names (batching may part long texts, see
    # test_engine_real.py); each adapter changes the answer.
    assert len(os.path.commonprefix([texts["hosted"], texts["base"]])) >= 16, texts
    assert len({texts["base"], texts["bot1"], texts["bot2"]}) == 3, texts
    assert len({r["prompt_tokens"] for r in rows.values()}) == 1  # an adapter adds no prompt tokens
    engine = json.loads((out / "_report.json").read_text())["engine"]
    engine = engine[0] if isinstance(engine, list) else engine
    assert engine["lora"] == {n: str(p) for n, p in adapters.items()}
    assert os.path.isdir(engine["lora"]["bot1"])
