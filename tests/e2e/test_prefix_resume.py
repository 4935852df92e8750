"""Issue 32: --order prefix spills every request past its first buffer to key ranges on disk; a
run killed mid-way and run again gives every id exactly once, and the rerun sends what was not
committed in prefix order (each document's questions side by side past its first buffer)."""

import random
import signal
import subprocess
import sys

from conftest import (
    REPO,
    chat_line,
    committed_records,
    contiguous,
    read_output,
    wait_for_commit,
    write_jsonl,
)

FAKE = ["--engine", "fake", "-m", "smollm2", "-q"]
DOC = "".join(chr(ord("a") + i % 26) for i in range(900))


def docs_rows(docs, questions, seed=7):
    rows = [chat_line(f"d{d:02d}-q{q}", f"Document {d}: {DOC}\n\nQuestion {q}?")
            for d in range(docs) for q in range(questions)]
    random.Random(seed).shuffle(rows)
    return rows


def test_kill_9_mid_run_and_rerun_give_each_id_once_in_prefix_order(tmp_path, hold):
    n, buffer = 15 * 6, 10
    src = write_jsonl(tmp_path / "in.jsonl", docs_rows(15, 6))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "pipeline", "run", str(src), "-o", str(out), *FAKE, "--order", "prefix",
           "--order-buffer", str(buffer)]
    first = subprocess.Popen([*cmd, "--checkpoint-every", "5", "--max-in-flight", "4", *hold.options(),  # held after
                              "--engine-option", f"log_file={tmp_path / 'sent1.txt'}"],  # a part: killed mid-run
                             cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_commit(out, first)
    first.send_signal(signal.SIGKILL)
    first.wait()
    before = sum(r["rows"] for r in committed_records(out))
    assert 0 < before < n
    res = subprocess.run([*cmd, "--engine-option", f"log_file={tmp_path / 'sent2.txt'}"], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    df = read_output(out)
    assert df.height == n and df["custom_id"].n_unique() == n and df["error"].is_null().all()
    sent = (tmp_path / "sent2.txt").read_text().split()
    assert len(sent) == len(set(sent)) == n - before  # nothing committed is sent again
    docs = [cid.split("-")[0] for cid in sent[buffer:]]  # past the rerun's first buffer: the full sort's order
    assert contiguous(docs) and len(set(docs)) > 1
