"""Every killed or stopped job is finishable by rerunning the same command (issue 34): a kill
during the first manifest write, input names of any length, a full $TMPDIR while the result files
are assembled, corrupt compressed inputs (one `unreadable_file` row, never a storage retry)."""

import bz2
import errno
import gzip
import json
import lzma
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import zstandard
from conftest import REPO, chat_line, invoke, read_output, write_jsonl

FAKE = ["--engine", "fake", "-m", "smollm2", "-q"]

# A run that SIGKILLs itself at one instant of its first manifest write: after the temporary file
# is written and synced, before (or instead of) its rename: what a kill at that moment leaves.
KILL_AT_FIRST_MANIFEST = """
import os, signal, sys
real = os.replace
def replace(src, dst, *a, **k):
    if str(dst).endswith("_manifest.json") and not os.path.exists(dst):
        os.kill(os.getpid(), signal.SIGKILL)
    return real(src, dst, *a, **k)
os.replace = replace
from pipeline.cli import main
sys.argv[0] = "pipeline"
main()
"""


def lines(n, prefix="r"):
    return [chat_line(f"{prefix}{i}", f"question {i}") for i in range(n)]


def test_a_kill_during_the_first_manifest_write_is_finished_by_a_rerun(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", lines(5))
    out = tmp_path / "out"
    args = ["run", str(src), "-o", str(out), *FAKE]
    killed = subprocess.run([sys.executable, "-c", KILL_AT_FIRST_MANIFEST, *args], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert killed.returncode == -9, killed.stderr
    leftovers = sorted(p.name for p in out.iterdir())
    assert any(n.startswith(".tmp-") and n.endswith("-_manifest.json") for n in leftovers), leftovers
    assert "_manifest.json" not in leftovers
    res = invoke("status", out)  # no job yet: says so, no traceback
    assert res.exit_code == 1 and "no _manifest.json" in res.output
    res = invoke(*args)
    assert res.exit_code == 0, res.output
    assert read_output(out).height == 5
    assert not [p.name for p in out.iterdir() if p.name.startswith(".tmp-")]


def test_result_file_names_fit_the_file_system_whatever_the_input_name(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    long_a = "a" * 240 + "-first.jsonl"  # 252 bytes: a legal name whose result name would not be
    long_b = "a" * 240 + "-other.jsonl"
    accented = "é" * 120 + ".jsonl"  # 246 bytes in UTF-8: shortened without cutting a character
    for i, name in enumerate((long_a, long_b, accented, "short.jsonl")):
        write_jsonl(folder / name, lines(2, prefix=f"f{i}-"))
    names = []
    for out in (tmp_path / "out1", tmp_path / "out2"):
        res = invoke("run", folder, "-o", out, *FAKE, "--format", "openai")
        assert res.exit_code == 0, res.output
        names.append(sorted(p.name for p in (out / "results").iterdir()))
        for p in (out / "results").iterdir():
            assert len(p.name.encode()) <= 255 - len(".tmp-123456789abc-")
            assert len(p.read_text().splitlines()) == 2
    assert names[0] == names[1] and len(set(names[0])) == 4  # the same names on every run, unique
    assert "short.results.jsonl" in names[0]
    assert all(n.startswith("a" * 150) or n.startswith("é" * 50) or n.startswith("short") for n in names[0])


def test_a_full_tmpdir_while_assembling_result_files_is_exit_3_with_a_hint(tmp_path, monkeypatch):
    import tempfile

    src = write_jsonl(tmp_path / "in.jsonl", lines(4))
    out = tmp_path / "out"
    real_dir = tempfile.TemporaryDirectory

    def full_disk(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tempfile, "TemporaryDirectory", full_disk)
    res = invoke("run", src, "-o", out, *FAKE, "--format", "openai")
    assert res.exit_code == 3, res.output
    assert "No space left on device" in res.output and "TMPDIR" in res.output and "Traceback" not in res.output
    assert not (out / "_SUCCESS").exists()
    monkeypatch.setattr(tempfile, "TemporaryDirectory", real_dir)
    res = invoke("run", src, "-o", out, *FAKE, "--format", "openai")
    assert res.exit_code == 0, res.output
    assert len((out / "results" / "in.results.jsonl").read_text().splitlines()) == 4


# ---- corrupt compressed inputs: one unreadable_file row at any offset ---------------------------
def _compress(kind: str, data: bytes) -> bytes:
    return {"gz": gzip.compress, "bz2": bz2.compress, "xz": lzma.compress,
            "zst": zstandard.ZstdCompressor().compress}[kind](data)


def _zstd_whole(data: bytes) -> None:
    """zstd's own one-shot decompression of every frame (its stream reader takes a cut frame for
    the end of the file)."""
    while data:
        d = zstandard.ZstdDecompressor().decompressobj()
        d.decompress(data)
        if not d.eof:
            raise zstandard.ZstdError("cut short")
        data = d.unused_data


def _decompresses(kind: str, data: bytes) -> bool:
    try:
        if kind == "zst":
            _zstd_whole(data)
        else:
            {"gz": gzip.decompress, "bz2": bz2.decompress, "xz": lzma.decompress}[kind](data)
        return True
    except (OSError, EOFError, ValueError, zlib.error, lzma.LZMAError, zstandard.ZstdError):
        return False


@pytest.mark.parametrize("kind", ["gz", "zst", "bz2", "xz"])
@pytest.mark.parametrize("where", [0, 1, 2, 3, 10, 0.5, -8, -4, -1, "cut-5", "cut-half"])
def test_a_corrupt_compressed_input_is_one_unreadable_file_row(tmp_path, kind, where):
    rows = 40
    data = _compress(kind, "".join(json.dumps(r) + "\n" for r in lines(rows)).encode())
    if isinstance(where, str):
        bad = data[:5] if where == "cut-5" else data[: len(data) // 2]
    else:
        at = int(len(data) * where) if isinstance(where, float) else where % len(data)
        bad = bytearray(data)
        bad[at] ^= 0xFF
        bad = bytes(bad)
    src = tmp_path / f"in.jsonl.{kind}"
    src.write_bytes(bad)
    res = invoke("run", src, "-o", tmp_path / "out", *FAKE)
    assert res.exit_code == 0, res.output  # never exit 3 "storage failed, rerun" for bad bytes
    df = read_output(tmp_path / "out")
    if _decompresses(kind, bad):  # a byte the format does not check (a gzip header's time)
        assert df.height == rows and df["error"].is_null().all()
        return
    errors = df["error"].to_list()
    assert df.height == 1 and errors[0]["code"] == "unreadable_file", errors
    assert "cannot be read to its end" in errors[0]["message"] and "Re-create" in errors[0]["message"]
    assert "Interrupted" not in res.output and "rerun" not in res.output.lower()


def test_an_unreadable_storage_read_of_a_compressed_input_is_still_a_storage_failure(tmp_path, monkeypatch):
    """Only the decompressor's refusals are the file's fault: a read that storage fails stays a
    resumable stop (exit 3), not an error row."""
    from pipeline.storage import Location

    src = tmp_path / "in.jsonl.gz"
    src.write_bytes(gzip.compress(b"".join(json.dumps(r).encode() + b"\n" for r in lines(3))))
    real_open = Location.open

    class Dropping:
        def __init__(self, f):
            self.f = f

        def read(self, n=-1):
            raise ConnectionResetError(errno.ECONNRESET, "connection reset by peer")

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(Location, "open", lambda self, *a, **k: Dropping(real_open(self, *a, **k)))
    monkeypatch.setattr("pipeline.storage.RETRY_DELAYS", (0.0,))
    res = invoke("run", src, "-o", tmp_path / "out", *FAKE)
    assert res.exit_code == 3 and "connection reset" in res.output, res.output
    assert Path(tmp_path / "out" / "_SUCCESS").exists() is False



def test_a_broken_image_row_of_a_later_file_is_committed_under_its_own_key(tmp_path):
    """Found by `make chaos` with image rows: an image refused in the second input file was
    committed as line 1 of the FIRST file, so a rerun after a kill skipped that file's line 1
    (lost) and ran the image row again (duplicated)."""
    from pipeline.output.folder import Output
    from pipeline.storage import Location

    (tmp_path / "in").mkdir()
    write_jsonl(tmp_path / "in" / "a.jsonl", lines(1))
    broken = {"custom_id": "img", "body": {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo!!"}}]}]}}
    write_jsonl(tmp_path / "in" / "b.jsonl", [broken])
    model = tmp_path / "vision-model"  # the fake engine's "vision model": a config that says so
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "idefics3", "vision_config": {}}))
    out = tmp_path / "out"
    res = invoke("run", tmp_path / "in", "-o", out, "--engine", "fake", "-m", model, "-q", "--checkpoint-every", "1")
    assert res.exit_code == 0, res.output
    state = Output(Location.of(str(out))).read_state()
    assert state.committed.count == 2 and state.committed.repeated == 0
    assert (0, 1) in state.committed and (1, 1) in state.committed
