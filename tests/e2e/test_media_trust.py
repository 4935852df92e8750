"""A request file is untrusted (docs/security.md): from the user's side, with the fake engine and a
loopback image server, what a request line can and cannot make the pipeline read, fetch, hold in
memory or wait for."""

import http.server
import json
import os
import signal
import struct
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import polars as pl
import pytest
from conftest import REPO, committed_records, invoke, read_output, wait_for_commit, write_jsonl

sys.path.insert(0, str(REPO / "tests"))
from vlm_model import data_url, png, tiny_vlm  # noqa: E402

from pipeline.intake.media import MediaRules  # noqa: E402

PNG = png(40, 30, 1)
LOOPBACK = ["--allow-private-media"]  # the image server of these tests is on 127.0.0.1


@pytest.fixture(scope="session")
def vlm():
    return tiny_vlm()


def chat(custom_id, *urls):
    content = [
        {"type": "text", "text": "What is this?"},
        *({"type": "image_url", "image_url": {"url": u}} for u in urls),
    ]
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": {"messages": [{"role": "user", "content": content}], "max_tokens": 4}}


def run(src, out, vlm, *extra):
    return invoke("run", src, "-o", out, "--engine", "fake", "-m", vlm, "-q", *extra)


def errors(out):
    return {r["custom_id"]: r["error"] for r in read_output(out).to_dicts()}


# ---- a loopback image server that records what it is asked -------------------------------------
class Images(http.server.BaseHTTPRequestHandler):
    """/img/NAME: a PNG; /hop/N: a redirect to /hop/N-1, /hop/0 to /img/hop.png; /to/HOST: a
    redirect to /img/x.png on HOST; /stall/NAME: waits for `release`; /in.jsonl: `body`."""

    def do_GET(self):
        server = self.server
        with server.lock:
            server.seen.append((self.path, dict(self.headers)))
        if self.path.startswith("/stall/"):
            server.arrived.set()
            server.release.wait()
            return self._send(404, b"")
        if self.path.startswith("/img/"):
            return self._send(200, PNG)
        if self.path == "/in.jsonl":
            return self._send(200, server.body)
        if self.path.startswith("/hop/"):
            n = int(self.path.rsplit("/", 1)[1])
            return self._redirect(f"/hop/{n - 1}" if n > 0 else "/img/hop.png")
        if self.path.startswith("/to/"):
            return self._redirect(f"http://{self.path[4:]}:{server.server_address[1]}/img/x.png")
        self._send(404, b"")

    def _redirect(self, where):
        self.send_response(302)
        self.send_header("Location", where)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _send(self, status, body):
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Images)
    srv.daemon_threads = True
    srv.lock, srv.seen, srv.body = threading.Lock(), [], b""
    srv.arrived, srv.release = threading.Event(), threading.Event()
    srv.base = f"http://127.0.0.1:{srv.server_address[1]}"
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv
    srv.release.set()
    srv.shutdown()


def gets(server, prefix="/"):
    with server.lock:
        return [path for path, _ in server.seen if path.startswith(prefix)]


# ---- local files ---------------------------------------------------------------------------------
@pytest.fixture
def files(tmp_path):
    """An allowed folder with a picture, a FIFO, a folder and a symlink out; a secret beside it."""
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    allowed.mkdir()
    outside.mkdir()
    (allowed / "cat.png").write_bytes(PNG)
    (outside / "secret.png").write_bytes(PNG)
    (outside / "unreadable.png").write_bytes(PNG)
    os.mkfifo(allowed / "fifo.png")
    (allowed / "folder.png").mkdir()
    (allowed / "escape.png").symlink_to(outside / "secret.png")
    return allowed, outside


def local_rows(allowed, outside):
    return [chat("inside", str(allowed / "cat.png")), chat("inside-url", f"file://{allowed / 'cat.png'}"),
            chat("secret", str(outside / "secret.png")), chat("secret-url", f"file://{outside / 'secret.png'}"),
            chat("missing", str(allowed / "nowhere.png")), chat("fifo", str(allowed / "fifo.png")),
            chat("folder", str(allowed / "folder.png")), chat("escape", str(allowed / "escape.png")),
            chat("dotdot", f"{allowed}/../outside/secret.png"), chat("device", "/dev/zero")]


def test_local_files_are_refused_unless_a_folder_is_allowed(tmp_path, files, vlm):
    allowed, outside = files
    src = write_jsonl(tmp_path / "in.jsonl", local_rows(allowed, outside))
    res = run(src, tmp_path / "out", vlm)
    assert res.exit_code == 0, res.output
    found = errors(tmp_path / "out")
    assert {e["code"] for e in found.values()} == {"image_not_allowed"}  # every one, the picture too
    assert all("--allowed-local-media-path DIR" in e["message"] for e in found.values())


def test_only_regular_files_inside_the_allowed_folder_are_read_and_failures_look_alike(tmp_path, files, vlm):
    """In a process of its own: a FIFO opened for reading would block it forever."""
    allowed, outside = files
    src = write_jsonl(tmp_path / "in.jsonl", local_rows(allowed, outside))
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, "-m", "pipeline", "run", src, "-o", out, "--engine", "fake", "-m", vlm,
                          "-q", "--allowed-local-media-path", allowed], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    found = errors(out)
    assert found["inside"] is None and found["inside-url"] is None
    refused = {k: e for k, e in found.items() if e}
    assert set(refused) == {"secret", "secret-url", "missing", "fifo", "folder", "escape", "dotdot", "device"}
    assert {e["code"] for e in refused.values()} == {"image_not_allowed"}
    # one message whatever the cause, the URL aside: a request cannot learn whether a file exists
    urls = {
        r["custom_id"]: r["body"]["messages"][0]["content"][1]["image_url"]["url"] for r in local_rows(allowed, outside)
    }
    shapes = {e["message"].replace(MediaRules().show(urls[k]), "URL") for k, e in refused.items()}  # as quoted
    assert shapes == {"messages[0].content[1].image_url: the local file URL is not a readable regular file under "
                      f"--allowed-local-media-path {allowed.resolve()}"}


def test_vllms_engine_arg_allows_the_folder_too_and_validate_and_dry_run_follow(tmp_path, files, vlm):
    allowed, outside = files
    rows = [chat("inside", str(allowed / "cat.png")), chat("secret", str(outside / "secret.png"))]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    res = run(src, tmp_path / "out", vlm, "--engine-arg", f"allowed_local_media_path={allowed}")
    assert res.exit_code == 0, res.output
    found = errors(tmp_path / "out")
    assert found["inside"] is None and found["secret"]["code"] == "image_not_allowed"
    res = invoke("validate", src, "-m", vlm)
    assert res.exit_code != 0 and "image_not_allowed" in res.output
    res = invoke("validate", src, "-m", vlm, "--allowed-local-media-path", allowed)
    assert "image_not_allowed" in res.output and res.output.count("image_not_allowed") == 1
    res = run(src, tmp_path / "dry", vlm, "--dry-run")
    assert res.exit_code == 0 and "2 invalid" in res.output.replace(",", ""), res.output


def test_an_allowed_folder_that_does_not_exist_is_a_usage_error(tmp_path, vlm):
    src = write_jsonl(tmp_path / "in.jsonl", [chat("a")])
    res = run(src, tmp_path / "out", vlm, "--allowed-local-media-path", tmp_path / "nowhere")
    assert res.exit_code == 1 and "--allowed-local-media-path" in res.output and "no such folder" in res.output


# ---- remote media: its own connection, public hosts, listed domains, few redirects ---------------
def test_the_jobs_credentials_never_reach_a_host_a_request_names(tmp_path, server, vlm):
    """The input is read with an Authorization header; an image on the same server is fetched
    without it, unless --media-storage names where images may be read with the job's storage."""
    server.body = (json.dumps(chat("img", f"{server.base}/img/cat.png")) + "\n").encode()
    auth = ["--storage-option", 'headers={"Authorization": "Bearer SECRET-TOKEN"}']
    res = run(f"{server.base}/in.jsonl", tmp_path / "out", vlm, *auth, *LOOPBACK)
    assert res.exit_code == 0, res.output
    assert errors(tmp_path / "out") == {"img": None}
    with server.lock:
        sent = {path: headers.get("Authorization") for path, headers in server.seen}
    assert sent == {"/in.jsonl": "Bearer SECRET-TOKEN", "/img/cat.png": None}
    server.seen.clear()
    res = run(f"{server.base}/in.jsonl", tmp_path / "out2", vlm, *auth, "--media-storage", f"{server.base}/img")
    assert res.exit_code == 0, res.output
    with server.lock:
        assert {h.get("Authorization") for p, h in server.seen if p == "/img/cat.png"} == {"Bearer SECRET-TOKEN"}


def test_private_addresses_are_refused_unless_allowed_and_nothing_is_fetched(tmp_path, server, vlm):
    rows = [
        chat("loopback", f"{server.base}/img/a.png"),
        chat("localhost", server.base.replace("127.0.0.1", "localhost") + "/img/b.png"),
        chat("metadata", "http://169.254.169.254/latest/meta-data/"),
        chat("s3", "s3://bucket/cat.png"),
        chat("mem", "memory://x/cat.png"),
    ]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    for command in (["validate", src, "-m", vlm], ["estimate", src, "-m", vlm], ["run", src, "-o", tmp_path / "dry",
                    "--engine", "fake", "-m", vlm, "--dry-run"]):
        invoke(*command)
    res = run(src, tmp_path / "out", vlm, "--image-timeout", "2")
    assert res.exit_code == 0, res.output
    assert gets(server) == []  # validate, estimate, the dry run and the run fetched nothing
    found = errors(tmp_path / "out")
    assert {k: e["code"] for k, e in found.items()} == dict.fromkeys(found, "image_not_allowed")
    assert (
        "non-public address 127.0.0.1" in found["loopback"]["message"]
        and "--allow-private-media" in found["loopback"]["message"]
    )
    assert "non-public address 169.254.169.254" in found["metadata"]["message"]
    assert "--media-storage s3://BUCKET/PREFIX" in found["s3"]["message"]
    res = run(src, tmp_path / "out2", vlm, "--image-timeout", "2", *LOOPBACK)
    found = errors(tmp_path / "out2")
    assert found["loopback"] is None and found["localhost"] is None
    assert sorted(gets(server)) == ["/img/a.png", "/img/b.png"]


def test_allowed_domains_and_redirects_are_checked_at_every_hop(tmp_path, server, vlm):
    local = server.base.replace("127.0.0.1", "localhost")
    rows = [chat("listed", f"{local}/img/a.png"), chat("unlisted", f"{server.base}/img/b.png"),
            chat("to-unlisted", f"{local}/to/127.0.0.1"), chat("three-hops", f"{local}/hop/2"),
            chat("four-hops", f"{local}/hop/3")]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    res = run(src, tmp_path / "out", vlm, *LOOPBACK, "--engine-arg", 'allowed_media_domains=["localhost"]')
    assert res.exit_code == 0, res.output
    found = errors(tmp_path / "out")
    assert found["listed"] is None and found["three-hops"] is None
    assert "the host 127.0.0.1 is not in --allowed-media-domains" in found["unlisted"]["message"]
    assert "the host 127.0.0.1 is not in --allowed-media-domains" in found["to-unlisted"]["message"]
    assert "more than 3 redirects" in found["four-hops"]["message"]
    assert {found[k]["code"] for k in ("unlisted", "to-unlisted", "four-hops")} == {"image_not_allowed"}
    assert "/img/b.png" not in gets(server) and "/img/x.png" not in gets(server)  # never asked
    # three hops followed; of four, the fourth redirect (/hop/0's) is refused: /img/hop.png is asked for once
    assert sorted(gets(server, "/hop/")) == ["/hop/0", "/hop/0", "/hop/1", "/hop/1", "/hop/2", "/hop/2", "/hop/3"]
    assert gets(server, "/img/hop.png") == ["/img/hop.png"]
    res = run(src, tmp_path / "out2", vlm, *LOOPBACK, "--allowed-media-domains", "localhost")
    assert errors(tmp_path / "out2") == found  # our option means the same


def test_public_addresses(monkeypatch):
    from pipeline.intake.media import is_public

    assert is_public("93.184.216.34") and is_public("2606:2800:220:1:248:1893:25c8:1946")
    for address in ("127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1", "0.0.0.0",
                    "::1", "fe80::1%eth0", "fc00::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1", "224.0.0.1"):
        assert not is_public(address), address


# ---- secrets in URLs stay out of rows and reports -------------------------------------------------
def test_image_url_credentials_are_redacted_in_error_rows_and_reports(tmp_path, server, vlm):
    port = server.server_address[1]
    rows = [chat("signed", f"http://user:PASSWORD1@127.0.0.1:{port}/gone.png?X-Amz-Signature=SIG1&X-Amz-Credential=CRED1"),
            chat("refused", "http://user:PASSWORD2@10.0.0.1/a.png?token=TOKEN2"),
            chat("s3", "s3://bucket/a.png?sig=SIG3")]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out"
    res = run(src, out, vlm, "--format", "openai", "--split-errors")
    assert res.exit_code == 0, res.output
    res = run(src, tmp_path / "out2", vlm, *LOOPBACK, "--image-timeout", "2")
    assert res.exit_code == 0, res.output
    found = errors(tmp_path / "out2")
    assert found["signed"]["code"] == "image_fetch_failed" and "HTTP 404" in found["signed"]["message"]
    invoke("report", out)
    written = "".join(p.read_text(errors="replace") for folder in (out, tmp_path / "out2")
                      for p in folder.rglob("*") if p.is_file() and p.suffix in (".jsonl", ".json", ".html"))
    written += json.dumps(found) + json.dumps(errors(out)) + res.output
    for secret in ("PASSWORD1", "SIG1", "CRED1", "PASSWORD2", "TOKEN2", "SIG3"):
        assert secret not in written, secret
    assert "X-Amz-Signature=***" in found["signed"]["message"]


# ---- bounded memory ----------------------------------------------------------------------------
def huge_png(width, height):
    """A PNG whose header says width x height (and whose pixel data is a few bytes): what a pixel
    bomb looks like to a check that reads the header."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_pixel_bombs_and_crowded_requests_are_error_rows(tmp_path, vlm, monkeypatch):
    import PIL.Image

    loaded = []
    real_load = PIL.Image.Image.load
    monkeypatch.setattr(PIL.Image.Image, "load", lambda self: loaded.append(self.size) or real_load(self))
    rows = [chat("bomb", data_url(huge_png(13000, 13000))), chat("pillow-bomb", data_url(huge_png(20000, 20000))),
            chat("ok", data_url(PNG)), chat("many", *[data_url(PNG)] * 3), chat("heavy", data_url(PNG), data_url(PNG))]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    res = run(src, tmp_path / "out", vlm, "--images-per-request", "2", "--image-bytes-per-request", str(len(PNG) + 10))
    assert res.exit_code == 0, res.output
    found = errors(tmp_path / "out")
    assert found["ok"] is None
    assert found["bomb"]["code"] == "image_too_large" and "13000x13000 pixels" in found["bomb"]["message"]
    assert "--image-max-pixels" in found["bomb"]["message"] and found["pillow-bomb"]["code"] == "image_too_large"
    assert (13000, 13000) not in loaded and (20000, 20000) not in loaded  # refused from the header, never decoded
    assert found["many"]["code"] == "too_many_images" and "--images-per-request" in found["many"]["message"]
    assert found["many"]["param"] == "messages[0].content[3].image_url"
    assert found["heavy"]["code"] == "image_too_large" and "--image-bytes-per-request" in found["heavy"]["message"]
    assert found["heavy"]["param"] == "messages[0].content[2].image_url"


def test_running_out_of_memory_on_one_image_is_that_rows_error(tmp_path, vlm, monkeypatch):
    import PIL.Image

    real_load = PIL.Image.Image.load

    def load(self):
        if self.size == (41, 41):
            raise MemoryError()
        return real_load(self)

    rows = [chat("a", data_url(PNG)), chat("oom", data_url(png(41, 41))), chat("b", data_url(PNG))]
    monkeypatch.setattr(PIL.Image.Image, "load", load)
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    res = run(src, tmp_path / "out", vlm)
    assert res.exit_code == 0, res.output
    found = errors(tmp_path / "out")
    assert found["a"] is None and found["b"] is None
    assert found["oom"]["code"] == "image_too_large" and "out of memory" in found["oom"]["message"]


# ---- stops and resumes -------------------------------------------------------------------------
@pytest.mark.parametrize("order", ["auto", "input"])
def test_sigterm_with_stalled_image_hosts_commits_and_exits_at_once(tmp_path, server, vlm, order):
    rows = [chat(f"t{i}") for i in range(3)] + [chat(f"s{i}", f"{server.base}/stall/{i}.png") for i in range(30)]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "run", str(src), "-o", str(tmp_path / "out"),
                             "--engine", "fake", "-m", vlm, "-q", "--order", order, "--image-timeout", "300",
                             *LOOPBACK], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert server.arrived.wait(120), "no image was asked for"
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)  # the stalled fetches would hold it 300 s and more
    finally:
        proc.kill()
    assert proc.returncode == 3 and "interrupted" in stderr, stderr


def test_a_resumed_run_fetches_no_image_of_a_committed_row(tmp_path, server, vlm, hold):
    n = 40
    src = write_jsonl(tmp_path / "in.jsonl", [chat(f"r{i}", f"{server.base}/img/{i}.png") for i in range(n)])
    out = tmp_path / "out"
    args = ["run", str(src), "-o", str(out), "--engine", "fake", "-m", vlm, "-q", "--checkpoint-every", "5",
            "--max-in-flight", "4", "--order", "input", *LOOPBACK]
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", *args, *hold.options()], cwd=REPO,  # killed mid-run
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_commit(out, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        proc.kill()
    # what a rerun sees as committed: the parts its commit records name (a part written just before
    # the kill may have no record yet: its rows are redone)
    parts = {r["part"] for r in committed_records(out)}
    committed = set(pl.concat([pl.read_parquet(out / p) for p in sorted(parts)])["custom_id"].to_list())
    assert 0 < len(committed) < n
    with server.lock:
        server.seen.clear()
    res = invoke(*args)
    assert res.exit_code == 0, res.output
    fetched = {Path(p).stem for p in gets(server, "/img/")}
    assert fetched == {str(i) for i in range(n)} - {c[1:] for c in committed}  # each row not committed, once
    assert len(gets(server, "/img/")) == n - len(committed)
    assert sorted(read_output(out)["custom_id"].to_list()) == sorted(f"r{i}" for i in range(n))
