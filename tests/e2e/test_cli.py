"""The command line: help everywhere, job files, validate, dry runs, the OpenAI output format."""

import json

import click
from conftest import chat_line, invoke, read_output, source, write_jsonl

from pipeline.cli import cli


def test_every_command_and_option_has_help():
    for name, command in cli.commands.items():
        assert command.help, name
        for param in command.params:
            if isinstance(param, click.Option) and not param.hidden:
                assert param.help, f"{name} {param.opts}"
        assert invoke(name, "--help").exit_code == 0


def test_version():
    from pipeline import __version__

    res = invoke("--version")
    assert res.exit_code == 0 and f"pipeline, version {__version__}" in res.output


def test_job_file_and_command_line_precedence(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [chat_line("a", "hi")])
    job = tmp_path / "job.yaml"
    job.write_text(f"inputs: [{src}]\noutput: {tmp_path / 'from-job'}\nmodel: smollm2\nengine: fake\n"
                   "checkpoint-every: 7\nprice-input: 1.5\nquiet: true\n")
    res = invoke("run", "--job", job, "-o", tmp_path / "from-cli")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "from-cli" / "_SUCCESS").exists() and not (tmp_path / "from-job").exists()
    manifest = json.loads((tmp_path / "from-cli" / "_manifest.json").read_text())
    assert manifest["job"]["options"]["price_input"] == 1.5


def test_job_file_unknown_key(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text("model: smollm2\ntemprature: 3\n")
    res = invoke("run", "--job", job, "x.jsonl", "-o", tmp_path / "o")
    assert res.exit_code == 2 and "temprature" in res.output and "long option names" in res.output


def test_validate_reports_file_line_field(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [
        chat_line("a", "hi"), "{bad", chat_line("b", "x", temperature=7),
        {"custom_id": "c", "method": "POST", "url": "/v1/chat/completions",
         "body": {"model": "HuggingFaceTB/SmolLM2-135M-Instruct", "messages": [], "frob": 1}},
    ])
    res = invoke("validate", src)
    assert res.exit_code == 1
    assert f"{src}:2: invalid_json: invalid JSON" in res.output
    assert f"{src}:3: temperature: temperature must be in [0, 2], got 7" in res.output
    assert f"{src}:4: messages:" in res.output
    assert "4 rows in 1 file(s): 1 valid, 3 invalid" in res.output
    good = write_jsonl(tmp_path / "good.jsonl", [chat_line("a", "hi", frobnicate=1)])
    res = invoke("validate", good)
    assert res.exit_code == 0 and "unknown fields (ignored): frobnicate ×1" in res.output


def test_validate_model_mismatch(tmp_path):
    row = chat_line("a", "hi")
    row["body"]["model"] = "gpt-4o"
    src = write_jsonl(tmp_path / "in.jsonl", [row, chat_line("b", "word " * 300)])
    res = invoke("validate", src, "-m", "smollm2", "--max-model-len", "100")
    assert res.exit_code == 1
    assert f"{src}:1: model: the request asks for model 'gpt-4o'" in res.output
    assert f"{src}:2: " in res.output and "context" in res.output  # over the 100-token context


def test_dry_run_says_what_would_run(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [chat_line("a", "hi"), chat_line("b", "x", n=9)])
    res = invoke("run", src, "-o", tmp_path / "out", "-m", "smollm2", "--dry-run")
    assert res.exit_code == 0
    assert "Would process 1 requests" in res.output and "1 invalid rows" in res.output
    assert not (tmp_path / "out").exists()  # a dry run writes nothing


def test_openai_output_format(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [chat_line("a", "hello there", max_tokens=2), "{bad"])
    res = invoke("run", src, "-o", tmp_path / "out", "-m", "smollm2", "--engine", "fake", "-q", "--format", "openai")
    assert res.exit_code == 0, res.output
    [part] = sorted((tmp_path / "out").glob("part-*.jsonl"))
    lines = [json.loads(line) for line in part.read_text().splitlines()]
    ok, bad = lines
    assert ok["custom_id"] == "a" and ok["error"] is None
    body = ok["response"]["body"]
    assert body["object"] == "chat.completion" and body["choices"][0]["message"]["role"] == "assistant"
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
    assert bad["response"] is None and bad["error"]["code"] == "invalid_json" and "(line 2)" in bad["error"]["message"]
    assert set(bad) == {"id", "custom_id", "response", "error"} and set(bad["error"]) == {"code", "message"}


def test_missing_input_is_a_clear_error(tmp_path):
    res = invoke("run", tmp_path / "nope.jsonl", "-o", tmp_path / "out", "-m", "smollm2")
    assert res.exit_code == 1 and "input not found" in res.output
    res = invoke("run", "-o", tmp_path / "out", "-m", "smollm2")
    assert res.exit_code == 2 and "no INPUT given" in res.output


def test_storage_option_secrets_never_written(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [chat_line("a", "hi")])
    res = invoke("run", src, "-o", tmp_path / "out", "-m", "smollm2", "--engine", "fake", "-q",
                 "--storage-option", "secret=hunter2-token")
    assert res.exit_code == 0, res.output
    for name in ("_manifest.json", "_report.json", "_SUCCESS"):
        assert "hunter2" not in (tmp_path / "out" / name).read_text()
    assert "hunter2" not in res.output


def test_shipped_job_files_use_known_options():
    from pathlib import Path

    from pipeline.job import load_job

    run_params = {p.name for p in cli.commands["run"].params}
    jobs = sorted((Path(__file__).resolve().parents[2] / "jobs").glob("*.yaml"))
    assert len(jobs) >= 2
    for job in jobs:
        keys = set(load_job(str(job)))
        assert keys <= run_params, f"{job.name}: {keys - run_params}"
        assert {"inputs", "output", "model"} <= keys


def test_environment_fallback(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [chat_line("a", "hi")])
    res = invoke("run", src, "-o", tmp_path / "out", "--engine", "fake", "-q", env={"PIPELINE_MODEL": "smollm2"})
    assert res.exit_code == 0, res.output
    assert read_output(tmp_path / "out")["model"].to_list() == ["HuggingFaceTB/SmolLM2-135M-Instruct"]


def test_run_validate_and_estimate_accept_the_same_model_names():
    from pipeline.job import RunConfig
    from pipeline.models.names import served_names

    names = served_names("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert {"smollm2", "HuggingFaceTB/SmolLM2-135M-Instruct"} <= names
    assert served_names("smollm2") == names
    cfg = RunConfig(inputs=("x",), output="o", model="smollm2", served_model_name=("mine",))
    assert cfg.model_names() == names | {"mine"}


def test_validate_accepts_the_alias_of_the_canonical_model(tmp_path):
    row = chat_line("a", "hi")
    row["body"]["model"] = "smollm2"
    src = write_jsonl(tmp_path / "in.jsonl", [row])
    res = invoke("validate", src, "-m", "HuggingFaceTB/SmolLM2-135M-Instruct")
    assert res.exit_code == 0, res.output


def test_one_job_file_drives_run_validate_and_estimate(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [chat_line("a", "hi", max_tokens=3), chat_line("b", "yo")])
    job = tmp_path / "job.yaml"
    job.write_text(
        f"inputs: {src}\noutput: {tmp_path / 'out'}\nmodel: smollm2\nengine: fake\nquiet: true\n"
        "checkpoint_every: 1\nmax_errors: 5\ngpu_hour_usd: 3\n"
        "engine_arg:\n  block_size: 16\n  swap_space: '0123'\n"
        "storage_option:\n  auto_mkdir: true\n")
    res = invoke("run", "--job", job)
    assert res.exit_code == 0, res.output
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    # mapping values arrive as the file typed them: 16 an int, '0123' a string
    assert manifest["job"]["options"]["engine_arg"] == {"block_size": 16, "swap_space": "0123"}
    res = invoke("validate", "--job", job)
    assert res.exit_code == 0, res.output
    res = invoke("estimate", "--job", job, "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.output[: res.output.rindex("}") + 1])["requests"] == 2
    # the command line wins over the file, key by key for KEY=VALUE options
    res = invoke("run", "--job", job, "--engine-arg", "block_size=32", "--dry-run")
    assert res.exit_code == 1 and "--engine-arg" in res.output  # a different job than the one done


def test_job_file_with_a_key_no_command_knows(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text("inputs: x.jsonl\nmodel: smollm2\nchekpoint_every: 5\n")
    res = invoke("validate", "--job", job)
    assert res.exit_code == 2 and "chekpoint_every" in res.output


def test_engine_args_come_from_the_option_table():
    from pipeline import options
    from pipeline.job import RunConfig

    assert {"dtype", "max_num_seqs", "tensor_parallel_size", "enable_prefix_caching"} <= set(options.ENGINE_ARGS)
    assert "engine_arg" in options.OUTPUT_OPTIONS and "checkpoint_every" not in options.OUTPUT_OPTIONS
    cfg = RunConfig(inputs=("x",), output="o", model="m", max_num_seqs=8,
                    engine_arg={"max_num_seqs": 4, "block_size": 16})
    assert cfg.engine_args() == {"max_num_seqs": 4, "block_size": 16, "trust_remote_code": False}


def test_openai_format_with_n_and_tool_calls(tmp_path):
    from pipeline.engines.base import Result
    from pipeline.intake.requests import Context, parse_row
    from pipeline.output.rows import result_row
    from pipeline.providers.openai import openai_line

    src = write_jsonl(tmp_path / "in.jsonl", [chat_line("a", "hello there friend", n=2, max_tokens=2)])
    res = invoke("run", src, "-o", tmp_path / "out", "-m", "smollm2", "--engine", "fake", "-q", "--format", "openai")
    assert res.exit_code == 0, res.output
    [part] = sorted((tmp_path / "out").glob("part-*.jsonl"))
    [line] = [json.loads(x) for x in part.read_text().splitlines()]
    body = line["response"]["body"]
    assert [c["index"] for c in body["choices"]] == [0, 1]
    assert all(c["message"]["content"] == "hello there" and c["finish_reason"] == "length" for c in body["choices"])
    assert body["usage"]["completion_tokens"] == 4

    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
    req = parse_row(chat_line("t", "weather in Paris?", tools=[tool], n=2), source=source("f"), line=1, ctx=Context())
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    result = Result(0, [{"index": 0, "content": None, "tool_calls": [call], "finish_reason": "tool_calls",
                         "logprobs": None},
                        {"index": 1, "content": "sunny", "tool_calls": None, "finish_reason": "stop",
                         "logprobs": None}],
                    12, 7, 0)
    out = openai_line(result_row(req, result, "m", None))
    first, second = out["response"]["body"]["choices"]
    assert first["message"] == {"role": "assistant", "content": None, "tool_calls": [call]}
    assert first["finish_reason"] == "tool_calls" and second["message"] == {"role": "assistant", "content": "sunny"}
    assert out["response"]["body"]["usage"]["total_tokens"] == 19
