"""Secrets stay secret everywhere (issue 34): a credential planted in an image URL, an engine
argument (`hf_token`) and an engine option named like a secret is found in no file of the output
folder (parts, result and error lines, manifest, report, HTML page), in no line of `status` (text
and --json), `validate`, `estimate`'s rows file, the -vv log or the engine's echoed output."""

import json
import subprocess
import sys

from conftest import REPO, invoke, write_jsonl
from vlm_model import tiny_vlm

SECRETS = ("ImgPassw0rdXYZ", "SiGnAtUrE998877", "hf_SeCrEtToKeN123456", "ApiKeyValue424242")
IMAGE = f"http://alice:{SECRETS[0]}@127.0.0.1:9/cat.png?X-Amz-Signature={SECRETS[1]}&w=1"


def requests(tmp_path):
    rows = [{"custom_id": f"r{i}", "body": {"messages": [{"role": "user", "content": f"hi {i}"}]}}
            for i in range(3)]
    rows.append({"custom_id": "img", "body": {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is it?"}, {"type": "image_url", "image_url": {"url": IMAGE}}]}]}})
    return write_jsonl(tmp_path / "in.jsonl", rows)


def assert_clean(text: str, where: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"{secret} in {where}"


def test_a_planted_secret_is_in_no_output_file_status_or_log(tmp_path):
    src, out = requests(tmp_path), tmp_path / "out"
    vlm = str(tiny_vlm())  # a vision model: the image is fetched (and fails), not refused unread
    args = [sys.executable, "-m", "pipeline", "-vv", "run", str(src), "-o", str(out), "--engine", "fake",
            "-m", vlm, "--format", "openai", "--split-errors", "--image-timeout", "1",
            "--engine-arg", f"hf_token={SECRETS[2]}", "--engine-option", f"api_key={SECRETS[3]}",
            "--metrics-file", str(tmp_path / "metrics.prom")]
    run = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "non-default args" in run.stderr and "'hf_token': '***'" in run.stderr  # the engine's echo, redacted
    assert_clean(run.stdout + run.stderr, "the -vv log")
    errors = (out / "results" / "in.errors.jsonl").read_text()
    assert "img" in errors and "127.0.0.1" in errors  # the failed image row is there, its URL redacted
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["job"]["options"]["engine_arg"] == {"hf_token": "***"}
    assert "hf_token=***" in manifest["attempts"][0]["command"] and "api_key=***" in manifest["attempts"][0]["command"]
    assert invoke("report", out).exit_code == 0
    for command in (["status", out], ["status", out, "--json"], ["report", out]):
        res = invoke(*command)
        assert_clean(res.output, " ".join(map(str, command)))
    res = invoke("validate", src, "-m", vlm, "--image-timeout", "1")
    assert_clean(res.output, "validate")
    res = invoke("estimate", src, "-m", vlm, "--image-timeout", "1", "--rows-file", tmp_path / "rows.parquet")
    assert_clean(res.output, "estimate")
    files = [p for p in [*out.rglob("*"), tmp_path / "metrics.prom", tmp_path / "rows.parquet"] if p.is_file()]
    assert any(p.name == "_report.html" for p in files) and len(files) >= 8
    for path in files:
        assert_clean(path.read_bytes().decode(errors="replace"), str(path))


def test_token_rotation_resumes_the_same_job(tmp_path):
    """The masked token is not part of the job: a new token finishes the same job."""
    src, out = requests(tmp_path), tmp_path / "out"
    base = ["run", src, "-o", out, "--engine", "fake", "-m", "smollm2", "-q"]
    assert invoke(*base, "--engine-arg", "hf_token=hf_firsttoken1").exit_code == 0
    res = invoke(*base, "--engine-arg", "hf_token=hf_secondtoken2")
    assert res.exit_code == 0 and "already complete" in res.output, res.output


def test_secret_names_are_whole_words():
    from pipeline.storage import masked, redact, remember_secrets, secret_name

    assert [n for n in ("hf_token", "api_key", "client_secret", "password", "AWS_SECRET_ACCESS_KEY",
                        "max_tokens", "tokenizer", "kv_cache_dtype", "monkey") if secret_name(n)] == [
        "hf_token", "api_key", "client_secret", "password", "AWS_SECRET_ACCESS_KEY"]
    assert masked({"hf_token": "x", "max_tokens": 5, "trust_remote_code": True}) == {
        "hf_token": "***", "max_tokens": 5, "trust_remote_code": True}
    remember_secrets({"password": "hunter2hunter2", "dtype": "bfloat16"})
    assert redact("login hunter2hunter2 with bfloat16") == "login *** with bfloat16"
