"""A small Docker Engine API client over a unix socket (the CLI starts slowly when emulated)."""

from __future__ import annotations

import http.client
import json
import os
import socket
import time
import urllib.parse

SYSTEM_SOCKET = "/var/run/system-docker.sock"
USER_SOCKET = "/var/run/docker.sock"


class DockerError(Exception):
    pass


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout, blocksize=1 << 20)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.path)
        self.sock = sock


class Docker:
    def __init__(self, sock: str = SYSTEM_SOCKET, timeout: float = 120) -> None:
        self.sock = sock
        self.timeout = timeout

    def request(
        self,
        method: str,
        path: str,
        body=None,
        params=None,
        raw: bool = False,
        headers: dict | None = None,
    ):
        if params:
            path += "?" + urllib.parse.urlencode(params)
        conn = _UnixConnection(self.sock, self.timeout)
        hdrs = dict(headers or {})
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            hdrs["Content-Type"] = "application/json"
        try:
            conn.request(method, "/v1.41" + path, body=body, headers=hdrs)
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        if resp.status >= 400:
            try:
                msg = json.loads(data).get("message", data.decode())
            except ValueError:
                msg = data.decode(errors="replace")
            raise DockerError(f"{method} {path}: {resp.status} {msg}")
        if raw:
            return data
        return json.loads(data) if data.strip() else None

    def ping(self) -> bool:
        try:
            conn = _UnixConnection(self.sock, 2)
            conn.request("GET", "/_ping")
            ok = conn.getresponse().status == 200
            conn.close()
            return ok
        except OSError:
            return False

    def wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ping():
                return True
            time.sleep(0.1)
        return False

    def image_exists(self, ref: str) -> bool:
        try:
            self.request("GET", f"/images/{ref}/json")
            return True
        except DockerError:
            return False

    def load(self, tar_path: str) -> None:
        # streamed from the file: the image is too big to hold in memory twice
        with open(tar_path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            out = self.request(
                "POST",
                "/images/load",
                body=fh,
                params={"quiet": "1"},
                raw=True,
                headers={"Content-Type": "application/x-tar", "Content-Length": str(size)},
            )
        if b'"error"' in out:
            raise DockerError(f"loading {tar_path}: {out.decode(errors='replace')}")

    def containers(self, all: bool = True) -> list[dict]:
        return self.request("GET", "/containers/json", params={"all": "1" if all else "0"})

    def inspect(self, name: str) -> dict | None:
        try:
            return self.request("GET", f"/containers/{name}/json")
        except DockerError:
            return None

    def create(self, name: str, config: dict) -> str:
        return self.request("POST", "/containers/create", body=config, params={"name": name})["Id"]

    def start(self, name: str) -> None:
        self.request("POST", f"/containers/{name}/start")

    def wait(self, name: str) -> int:
        return int(self.request("POST", f"/containers/{name}/wait")["StatusCode"])

    def path_exists(self, name: str, path: str) -> bool:
        """Whether `path` exists in container `name` (the archive API's HEAD)."""
        try:
            self.request("HEAD", f"/containers/{name}/archive", params={"path": path}, raw=True)
            return True
        except DockerError:
            return False

    def put_archive(self, name: str, path: str, tar: bytes) -> None:
        """Unpack `tar` at `path` (a folder that exists) in container `name`."""
        self.request("PUT", f"/containers/{name}/archive", body=tar, params={"path": path},
                     raw=True, headers={"Content-Type": "application/x-tar"})

    def restart(self, name: str, timeout: int = 10) -> None:
        self.request("POST", f"/containers/{name}/restart", params={"t": str(timeout)})

    def stop(self, name: str, timeout: int = 10) -> None:
        self.request("POST", f"/containers/{name}/stop", params={"t": str(timeout)})

    def remove(self, name: str) -> None:
        self.request("DELETE", f"/containers/{name}", params={"force": "1"})

    def logs(self, name: str, tail: int = 20) -> str:
        data = self.request(
            "GET",
            f"/containers/{name}/logs",
            params={"stdout": "1", "stderr": "1", "tail": str(tail)},
            raw=True,
        )
        # non-tty logs are multiplexed: 8-byte frame headers before each chunk
        out, i = [], 0
        while i + 8 <= len(data):
            size = int.from_bytes(data[i + 4 : i + 8], "big")
            out.append(data[i + 8 : i + 8 + size])
            i += 8 + size
        return b"".join(out).decode(errors="replace")
