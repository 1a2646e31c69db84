"""A CloudServer on loopback inside the test process and what the remote-serving tests share: a client, a STIP
handler without a checkpoint, a self-signed certificate, waiting for a process to be gone."""
from __future__ import annotations

import contextlib
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

import stip
from protocols.stip_over_socket import StipCloudHandler
from transport import RemoteCloud
from transport.cloud_server import CloudServer

from helpers.stip_models import tiny_gpt2


@contextlib.contextmanager
def serving(handler, **kwargs) -> Iterator[CloudServer]:
    """A CloudServer in this process (a thread), closed on exit."""
    server = CloudServer(handler, **kwargs)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.close()
        thread.join(5)


def client(server, **kwargs) -> RemoteCloud:
    return RemoteCloud(f"127.0.0.1:{server.port}", timeout_s=10, **kwargs).start()


def gone(pid: int, wait_s: float = 10.0) -> bool:
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


def stip_handler() -> tuple[StipCloudHandler, stip.DataOwner]:
    """A STIP cloud handler on a tiny GPT-2 (the weights without a checkpoint on disk) and its data owner."""
    handler = StipCloudHandler.__new__(StipCloudHandler)
    developer = stip.ModelDeveloper(tiny_gpt2(), seed=0)
    handler.server = stip.ModelServer(developer.cloud_model())
    return handler, developer.data_owner()


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """(cert, key) for localhost and 127.0.0.1, made by the openssl command (skips without it)."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"], check=True, capture_output=True)
    return cert, key
