"""The clouds' API stand-ins' HTTP side: a threaded server on 127.0.0.1 routing requests to
a stand-in's handlers, recording each (the API-level tests read the sequence back).

They stand in for the cloud at the SDK's HTTP boundary: the drivers and the SDKs run
unchanged, pointed at the stand-in the way a user points them at a private endpoint.
Payload shapes follow each cloud's published API reference.
"""

from __future__ import annotations

import json
import re
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body or b"null")


@dataclass
class Reply:
    status: int = 200
    body: Any = None  # dict/list -> JSON; bytes/str as they are
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[..., Reply]
S = TypeVar("S", bound="StandIn")


class StandIn:
    """Subclasses register handlers with `self.route(METHOD, regex, fn)`; every request
    is recorded; `fail(METHOD, regex, status)` makes the next matching call fail after
    the handler ran (the cloud did the work, the client saw an error)."""

    def __init__(self) -> None:
        self.routes: list[tuple[str, re.Pattern[str], Handler]] = []
        self.requests: list[Request] = []
        self.lock = threading.RLock()
        self._faults: list[tuple[str, re.Pattern[str], int]] = []
        self._server: ThreadingHTTPServer | None = None
        self.port = 0
        self.ca_file: Path | None = None  # with TLS: the certificate a client must trust

    @property
    def url(self) -> str:
        return f"{'https' if self.ca_file else 'http'}://127.0.0.1:{self.port}"

    def route(self, method: str, pattern: str, fn: Handler) -> None:
        self.routes.append((method, re.compile(pattern + r"/?$"), fn))

    def fail(self, method: str, pattern: str, status: int = 500) -> None:
        self._faults.append((method, re.compile(pattern + r"/?$"), status))

    def calls(self, method: str, pattern: str) -> list[Request]:
        rx = re.compile(pattern + r"/?$")
        return [r for r in self.requests if r.method == method and rx.match(r.path)]

    def dispatch(self, req: Request) -> Reply:
        with self.lock:
            self.requests.append(req)
            for method, rx, fn in self.routes:
                m = rx.match(req.path)
                if m and method == req.method:
                    reply = fn(req, *m.groups())
                    for fault in self._faults:
                        if fault[0] == req.method and fault[1].match(req.path):
                            self._faults.remove(fault)
                            return Reply(fault[2], {"error": {"message": "stand-in fault",
                                                              "code": fault[2]}})
                    return reply
            return Reply(404, {"error": {"message": f"no route {req.method} {req.path}",
                                         "code": 404}})

    def start(self, tls_dir: Path | None = None) -> StandIn:
        """Serve on 127.0.0.1 (an ephemeral port); over TLS with a self-signed certificate
        for 127.0.0.1 written to `tls_dir` when given (for SDKs that refuse plain HTTP)."""
        standin = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self) -> None:
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                req = Request(self.command, parts.path, parse_qs(parts.query),
                              {k.lower(): v for k, v in self.headers.items()}, body)
                reply = standin.dispatch(req)
                data = reply.body
                ctype = "application/json"
                if isinstance(data, str):
                    data, ctype = data.encode(), "text/plain"
                elif data is None:
                    data = b""
                elif not isinstance(data, bytes):
                    data = json.dumps(data).encode()
                self.send_response(reply.status)
                self.send_header("Content-Type", reply.headers.pop("Content-Type", ctype))
                for k, v in reply.headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _serve

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        if tls_dir is not None:
            self.ca_file, key = _self_signed(tls_dir)
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(self.ca_file, key)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


def _self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate and key for 127.0.0.1, valid for a day."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "roslab stand-in")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / "standin.crt", directory / "standin.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def pointed_at(standin: S, settings: dict[str, str], env: Any) -> S:
    """`standin`, the settings that point its SDK at it set through `env` (pytest's
    monkeypatch: undone after the test)."""
    for name, value in settings.items():
        env.setenv(name, value)
    return standin


def rfc3339(t: float | None = None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if t is None else t))
