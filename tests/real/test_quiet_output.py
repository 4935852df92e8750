"""A successful `pipeline run` on the real engine keeps stderr for people: the progress and at
most five other lines; what vLLM, torch, Triton and transformers print appears only with -v."""

import os
import subprocess
import sys

import pytest
from conftest import REPO, chat_line, write_jsonl

pytestmark = pytest.mark.engine


def test_a_successful_run_prints_progress_and_summary_only(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [chat_line(f"r{i}", "Name a colour.", max_tokens=8) for i in range(4)])
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "pipeline", "run", str(src), "-o", str(tmp_path / "out"),
                           "-m", "smollm2"], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    other = [line for line in lines if not line.startswith("progress: ")]
    assert len(other) <= 5, done.stderr
    assert not any(word in done.stderr for word in ("WARNING", "INFO", "Warning", "it/s]")), done.stderr
    assert "4 requests: 4 ok, 0 failed" in done.stdout
