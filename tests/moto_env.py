"""moto's EC2 emulator on 127.0.0.1 with boto3 pointed at it by its standard settings:
fresh credentials each time, no config file, no instance metadata, this test's run id."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import gc


@contextlib.contextmanager
def moto_server(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                **extra_env: str) -> Iterator[dict[str, str]]:
    """The environment boto3 reads (`extra_env` added); the server stops on exit."""
    pytest.importorskip("moto", reason="moto[server] runs the EC2 emulator")
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}",
           "AWS_ACCESS_KEY_ID": "AKIA" + secrets.token_hex(8).upper(),
           "AWS_SECRET_ACCESS_KEY": f"aws-secret-{secrets.token_hex(16)}",
           "AWS_EC2_METADATA_DISABLED": "true",  # never ask 169.254.169.254 for a role
           "AWS_CONFIG_FILE": str(tmp_path / "none"),
           "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"), **extra_env}
    for name in ("AWS_PROFILE", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv(gc.RUN_ID_ENV, f"test-{os.getpid()}-{secrets.token_hex(3)}")
    try:
        yield env
    finally:
        server.stop()
