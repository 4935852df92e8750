"""A successful `pipeline run` on the real engine keeps stderr for people: the progress and at
most five other lines; what vLLM, torch, Triton and transformers print appears only with -v.
The run is conftest's plain_cli_run (shared with test_cpu_memory.py: one engine load)."""

import pytest

pytestmark = pytest.mark.engine


def test_a_successful_run_prints_progress_and_summary_only(plain_cli_run):
    done, _ = plain_cli_run
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    other = [line for line in lines if not line.startswith("progress: ")]
    assert len(other) <= 5, done.stderr
    assert not any(word in done.stderr for word in ("WARNING", "INFO", "Warning", "it/s]")), done.stderr
    assert "4 requests: 4 ok, 0 failed" in done.stdout
