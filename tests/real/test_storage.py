"""`pipeline run` reading from and writing to object storage: S3 (moto), GCS (fake-gcs-server)
and Azure Blob (azurite) on loopback, and memory://, all through the same fsspec code path.

Options reach the filesystems as users pass them: `--storage-option KEY=VALUE` on the command
line (S3's `endpoint_url` directly, or inside `client_kwargs`).
"""

import json
import logging
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import REPO, chat_line, committed_records, invoke
from fsspec.core import strip_protocol

pytestmark = pytest.mark.storage

FAKE = ["--engine", "fake", "-m", "smollm2", "-q"]
S3_KEY, S3_SECRET = "AKIAPIPELINEPROBE", "pipeline-probe-secret-0123456789"


@dataclass
class Store:
    root: str  # a fresh prefix for one test
    options: list[str]  # --storage-option arguments for the CLI
    fs: fsspec.AbstractFileSystem  # the test's own view of the store
    secrets: tuple[str, ...]  # what must never be written anywhere

    def put(self, name, data: bytes) -> str:
        self.fs.pipe_file(f"{self.root}/{name}", data)
        return f"{self.root}/{name}"

    def read(self, name) -> bytes:
        return self.fs.cat_file(f"{self.root}/{name}")

    def exists(self, name) -> bool:
        self.fs.invalidate_cache()
        return self.fs.exists(f"{self.root}/{name}")

    def rows(self, directory):
        self.fs.invalidate_cache()
        parts = sorted(self.fs.glob(f"{self.root}/{directory}/part-*.parquet"))
        tables = [pq.read_table(self.fs.open(p, "rb")) for p in parts]
        return pa.concat_tables(tables).to_pylist() if tables else []


def _options(pairs: dict) -> list[str]:
    return [arg for k, v in pairs.items() for arg in ("--storage-option", f"{k}={v}")]


@pytest.fixture(scope="module", params=["s3", "gs", "az", "memory"])
def server(request):
    import storage_servers as ss

    if request.param == "memory":
        yield {"protocol": "memory", "root": "memory://pipeline-tests", "storage_options": {}, "cli": {}, "secrets": ()}
        return
    if request.param == "az":
        try:
            ss.azurite_blob_bin()
        except ss.StorageServerError:
            pytest.skip(f"azurite is not installed: run `make azurite` ({ss.AZURITE_INSTALL_CMD})")
    start = {"s3": ss.moto_s3, "gs": ss.fake_gcs, "az": ss.azurite_blob}[request.param]
    with start() as srv:
        if srv["protocol"] == "s3":  # what a user types: the endpoint and the keys
            srv["cli"] = {"endpoint_url": srv["endpoint_url"], "key": S3_KEY, "secret": S3_SECRET}
            # the same through botocore's client_kwargs (values are YAML: a flow mapping works)
            srv["cli_nested"] = {"client_kwargs": json.dumps({"endpoint_url": srv["endpoint_url"]}),
                                 "key": S3_KEY, "secret": S3_SECRET}
            srv["secrets"] = (S3_KEY, S3_SECRET)
        elif srv["protocol"] == "gs":
            srv["cli"] = {"endpoint_url": srv["endpoint_url"], "token": "anon"}
            srv["secrets"] = ()
        else:
            srv["cli"] = {"connection_string": srv["storage_options"]["connection_string"]}
            srv["secrets"] = (ss.AZURITE_KEY,)
        yield srv


@pytest.fixture
def store(server):
    fs = fsspec.filesystem(server["protocol"], skip_instance_cache=True, **server["storage_options"])
    return Store(f"{server['root']}/{uuid.uuid4().hex[:12]}", _options(server["cli"]), fs, server["secrets"])


def upload_inputs(store: Store, n: int = 12) -> str:
    """A JSON-lines file and a Parquet file under one prefix; returns the prefix URL."""
    lines = [chat_line(f"j{i}", f"jsonl question {i}", max_tokens=4) for i in range(n)]
    store.put("in/a.jsonl", "".join(json.dumps(r) + "\n" for r in lines).encode())
    buf = pa.BufferOutputStream()
    pq.write_table(pa.table({
        "custom_id": [f"p{i}" for i in range(4)],
        "messages": [[{"role": "user", "content": f"parquet question {i}"}] for i in range(4)],
    }), buf)
    store.put("in/b.parquet", buf.getvalue().to_pybytes())
    return f"{store.root}/in"


def server_options(store: Store) -> dict:
    """The storage options of the test's own filesystem, for reading the output folder's state."""
    return dict(store.fs.storage_options)


def test_run_reads_and_writes_the_bucket(store, caplog):
    caplog.set_level(logging.DEBUG)
    inputs = upload_inputs(store)
    out = f"{store.root}/out"
    res = invoke("run", inputs, "-o", out, *FAKE, *store.options, "--checkpoint-every", "5")
    assert res.exit_code == 0, res.output
    rows = store.rows("out")
    assert sorted(r["custom_id"] for r in rows) == sorted([f"j{i}" for i in range(12)] + [f"p{i}" for i in range(4)])
    assert all(r["error"] is None for r in rows)
    # rows name their source with the scheme the user typed (az://, not adlfs's abfs://)
    assert {r["source_file"].split("://")[0] for r in rows} == {inputs.split("://")[0]}
    assert {strip_protocol(r["source_file"]) for r in rows} == {
        strip_protocol(f"{inputs}/a.jsonl"), strip_protocol(f"{inputs}/b.parquet")}
    assert store.exists("out/_SUCCESS")
    report = json.loads(store.read("out/_report.json"))
    assert (report["requests"], report["succeeded"], report["output"]) == (16, 16, out)
    manifest = json.loads(store.read("out/_manifest.json"))
    records = committed_records(out, server_options(store))
    assert len(records) == 4
    # Credentials go to the filesystem only: never into the output, the summary or the logs.
    store.fs.invalidate_cache()
    written = b"".join(store.fs.cat_file(p) for p in store.fs.find(f"{store.root}/out"))
    for secret in store.secrets:
        assert secret.encode() not in written
        assert secret not in res.output and secret not in caplog.text
    assert "storage_option" not in json.dumps(manifest["job"])
    res = invoke("run", inputs, "-o", out, *FAKE, *store.options)
    assert res.exit_code == 0 and "already complete" in res.output


def test_storage_failure_then_resume(store, server, monkeypatch):
    """The upload of the second part is refused; the rerun redoes only what was not committed."""
    from pipeline import storage

    src = store.put("in.jsonl", "".join(json.dumps(chat_line(f"r{i}", f"q{i}")) + "\n" for i in range(20)).encode())
    out = f"{store.root}/out"
    options = _options(server.get("cli_nested", server["cli"]))
    real_put, parts = storage.Location.put_atomic, []

    def refuse_second_part(self, data):
        if self.name.startswith("part-"):
            parts.append(self.name)
            if len(parts) > 1:
                raise storage.StorageError(f"writing {self.display} failed: upload refused (simulated)")
        return real_put(self, data)

    monkeypatch.setattr(storage.Location, "put_atomic", refuse_second_part)
    res = invoke("run", src, "-o", out, *FAKE, *options, "--checkpoint-every", "5")
    assert res.exit_code == 3, res.output
    assert "upload refused" in res.output and "rerun the same command" in res.output
    assert not store.exists("out/_SUCCESS")
    assert len(store.rows("out")) == 5
    monkeypatch.setattr(storage.Location, "put_atomic", real_put)
    res = invoke("run", src, "-o", out, *FAKE, *options, "--checkpoint-every", "5")
    assert res.exit_code == 0, res.output
    rows = store.rows("out")
    assert sorted(r["custom_id"] for r in rows) == sorted(f"r{i}" for i in range(20))
    report = json.loads(store.read("out/_report.json"))
    assert report["resumed"] == 5 and report["requests"] == 20
    assert store.exists("out/_SUCCESS")


@pytest.mark.parametrize("server", ["s3", "gs", "az"], indirect=True)  # memory:// lives in one process
def test_kill_and_resume_on_the_bucket(store, hold):
    """SIGKILL a run once a part is committed on the bucket; the rerun finishes exactly once."""
    n = 40
    src = store.put("in.jsonl", "".join(json.dumps(chat_line(f"r{i}", f"q{i}")) + "\n" for i in range(n)).encode())
    out = f"{store.root}/out"
    cmd = [sys.executable, "-m", "pipeline", "run", src, "-o", out, *FAKE, *store.options,
           "--checkpoint-every", "5", "--max-in-flight", "4", *hold.options()]  # held after a part: killed mid-run
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        store.fs.invalidate_cache()
        if store.fs.glob(f"{store.root}/out/_commits/*.json"):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # committed is what the commit records say: a part uploaded just before the kill is debris
    committed = sum(r["rows"] for r in committed_records(out, server_options(store)))
    assert 0 < committed < n and not store.exists("out/_SUCCESS")
    hold.release()
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    rows = store.rows("out")
    assert sorted(r["custom_id"] for r in rows) == sorted(f"r{i}" for i in range(n))
    report = json.loads(store.read("out/_report.json"))
    assert report["resumed"] == committed and report["requests"] == n
    store.fs.invalidate_cache()
    listed = {p.rsplit("/", 1)[-1] for p in store.fs.glob(f"{store.root}/out/part-*")}
    assert listed == {r["part"] for r in committed_records(out, server_options(store))}  # no debris left


def test_completion_marker_and_lease_are_exclusive(store, server):
    """Two runs that race for the same output: only one creates the lease generation, only one
    the completion marker (conditional create on the store)."""
    from pipeline.output.lease import Lease, OutputBusy
    from pipeline.storage import Location

    folder = Location.of(f"{store.root}/out", server["storage_options"])
    assert folder.child("_SUCCESS").create_exclusive(b"first") is True
    assert folder.child("_SUCCESS").create_exclusive(b"again") is False
    assert store.read("out/_SUCCESS") == b"first"
    lease = Lease.acquire(folder, timeout=30)
    try:
        with pytest.raises(OutputBusy, match="another run"):
            Lease.acquire(folder, timeout=30)
        assert folder.child("_lease/1.json").create_exclusive(b"{}") is False
    finally:
        lease.release()
    Lease.acquire(folder, timeout=30).release()  # a released lease is free


def test_partition_prefixes_on_the_bucket_are_distinct_inputs(store):
    for key in ("partition_key=1", "partition_key=2", "token=x"):
        store.put(f"lake/{key}/part.jsonl",
                  "".join(json.dumps(chat_line(f"{key}-{i}", f"q{i}")) + "\n" for i in range(3)).encode())
    res = invoke("run", f"{store.root}/lake", "-o", f"{store.root}/out", *FAKE, *store.options)
    assert res.exit_code == 0, res.output
    rows = store.rows("out")
    assert len(rows) == 9 and len({r["custom_id"] for r in rows}) == 9
    assert {r["source_file"].rsplit("/", 2)[1] for r in rows} == {"partition_key=1", "partition_key=2", "token=x"}


@pytest.mark.parametrize("server", ["s3"], indirect=True)
def test_debug_logging_never_prints_credentials(store):
    src = store.put("in.jsonl", (json.dumps(chat_line("a", "hi")) + "\n").encode())
    res = subprocess.run([sys.executable, "-m", "pipeline", "-vv", "run", src, "-o", f"{store.root}/out",
                          *FAKE, *store.options], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "DEBUG" in res.stderr or "INFO pipeline" in res.stderr  # -vv does log: ours
    for secret in store.secrets:
        assert secret not in res.stderr and secret not in res.stdout
    assert "botocore" not in res.stderr


def test_result_files_of_a_line_format_on_the_bucket(store):
    inputs = upload_inputs(store)
    out = f"{store.root}/out"
    res = invoke("run", inputs, "-o", out, *FAKE, *store.options, "--format", "openai", "--split-errors",
                 "--checkpoint-every", "5")
    assert res.exit_code == 0, res.output
    lines = store.read("out/results/a.results.jsonl").decode().splitlines()
    assert sorted(json.loads(line)["custom_id"] for line in lines) == sorted(f"j{i}" for i in range(12))
    assert len(store.read("out/results/b.results.jsonl").splitlines()) == 4
    assert not store.exists("out/results/a.errors.jsonl")  # no failed request: no error file
    res = invoke("run", inputs, "-o", out, *FAKE, *store.options, "--format", "native", "--overwrite")
    assert res.exit_code == 0, res.output  # the old job's result files removed, the new ones written
    assert len(store.read("out/results/a.results.jsonl").splitlines()) == 12


def test_images_are_read_from_the_bucket(store, tmp_path):
    """Image URLs on the store (a byte range after the object's size), beside an empty object and a
    missing one: each its own error row."""
    from vlm_model import png, tiny_vlm

    picture = png(40, 30, 1)
    store.put("img/cat.png", picture)
    store.put("img/empty.png", b"")

    def ask(custom_id, name):
        return {"custom_id": custom_id, "body": {"max_tokens": 2, "messages": [{"role": "user", "content": [
            {"type": "text", "text": "What?"},
            {"type": "image_url", "image_url": {"url": f"{store.root}/img/{name}"}}]}]}}

    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(ask(*x)) + "\n" for x in [("cat", "cat.png"), ("empty", "empty.png"),
                                                                 ("gone", "gone.png")]))
    res = invoke("run", src, "-o", tmp_path / "out", "--engine", "fake", "-m", tiny_vlm(), "-q", *store.options,
                 "--media-storage", f"{store.root}/img")  # the job's credentials serve media from there only
    assert res.exit_code == 0, res.output
    rows = {r["custom_id"]: r for r in pq.read_table(tmp_path / "out").to_pylist()}
    assert rows["cat"]["error"] is None and rows["cat"]["images"] == 1
    assert rows["empty"]["error"]["code"] == "invalid_image", rows["empty"]["error"]
    assert (rows["gone"]["error"]["code"] == "image_fetch_failed"
            and "FileNotFoundError" in rows["gone"]["error"]["message"])
