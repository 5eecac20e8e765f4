"""`ros tls gen` and the user Docker's TLS (`rancher.docker.tls: true`), as RancherOS does
them: one CA kept in the config (rancher.docker.ca_cert/ca_key), a server certificate
for the hostnames given (kept as rancher.docker.server_cert/server_key, written to
/etc/docker/tls), client certificates in /home/rancher/.docker."""

from __future__ import annotations

import ipaddress
import os
import pwd
import secrets
import subprocess
import tempfile

from ros import config, config_cli

SERVER_DIR = "/etc/docker/tls"
CLIENT_DIR = "/home/rancher/.docker"
BITS = "2048"
DAYS = "1080"
ORG = "/O=rancher"


def _openssl(*args: str) -> None:
    result = subprocess.run(["openssl", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise OSError(f"openssl {args[0]} failed: {result.stderr.strip()}")


def _write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o400)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


def _read(path: str) -> str:
    with open(path) as fh:
        return fh.read()


def _ca(cfg: dict, out_dir: str) -> tuple[str, str]:
    """The CA's files in out_dir: the one in the config, else a new one saved there."""
    cert, key = (os.path.join(out_dir, n) for n in ("ca.pem", "ca-key.pem"))
    saved = config.get(cfg, "rancher.docker.ca_cert")
    if saved:
        for path in (cert, key):
            if os.path.exists(path):
                os.unlink(path)
        _write(cert, str(saved))
        _write(key, str(config.get(cfg, "rancher.docker.ca_key") or ""))
        return cert, key
    _openssl("genrsa", "-out", key, BITS)
    _openssl("req", "-x509", "-new", "-key", key, "-days", DAYS, "-subj", ORG, "-out", cert,
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,digitalSignature,keyEncipherment")
    config_cli.set_value("rancher.docker.ca_cert", _read(cert))
    config_cli.set_value("rancher.docker.ca_key", _read(key))
    return cert, key


def _sign(ca: tuple[str, str], cert: str, key: str, hosts: list[str], server: bool) -> None:
    _openssl("genrsa", "-out", key, BITS)
    with tempfile.TemporaryDirectory() as tmp:
        csr, ext = os.path.join(tmp, "csr"), os.path.join(tmp, "ext")
        _openssl("req", "-new", "-key", key, "-subj", ORG, "-out", csr)
        lines = ["keyUsage=critical,digitalSignature,keyEncipherment",
                 f"extendedKeyUsage={'serverAuth,clientAuth' if server else 'clientAuth'}"]
        if server:
            names = []
            for host in hosts:
                try:
                    names.append(f"IP:{ipaddress.ip_address(host)}")
                except ValueError:
                    names.append(f"DNS:{host}")
            lines.append("subjectAltName=" + ",".join(names))
        with open(ext, "w") as fh:
            fh.write("\n".join(lines) + "\n")
        _openssl("x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1], "-days", DAYS,
                 "-set_serial", str(secrets.randbits(63)), "-extfile", ext, "-out", cert)


def generate(server: bool, hosts: list[str], out_dir: str | None) -> int:
    out_dir = out_dir or (SERVER_DIR if server else CLIENT_DIR)
    os.makedirs(out_dir, mode=0o700, exist_ok=True)
    ca = _ca(config.load(), out_dir)
    names = ("server-cert.pem", "server-key.pem") if server else ("cert.pem", "key.pem")
    cert, key = (os.path.join(out_dir, n) for n in names)
    for path in (cert, key):
        if os.path.exists(path):
            os.unlink(path)
    _sign(ca, cert, key, hosts or ["localhost"], server)
    if server:
        config_cli.set_value("rancher.docker.server_cert", _read(cert))
        config_cli.set_value("rancher.docker.server_key", _read(key))
    else:
        rancher = pwd.getpwnam("rancher")
        for root, _, files in os.walk(out_dir):
            for path in [root, *(os.path.join(root, f) for f in files)]:
                os.chown(path, rancher.pw_uid, rancher.pw_gid)
    return 0


def dockerd_args(cfg: dict) -> list[str]:
    """The user Docker's TLS arguments when rancher.docker.tls is on, after writing the
    certificates the config holds to /etc/docker/tls (what `ros tls gen --server` made)."""
    if config.get(cfg, "rancher.docker.tls") is not True:
        return []
    os.makedirs(SERVER_DIR, mode=0o700, exist_ok=True)
    for key, name in (("ca_cert", "ca.pem"), ("ca_key", "ca-key.pem"),
                      ("server_cert", "server-cert.pem"), ("server_key", "server-key.pem")):
        value = config.get(cfg, f"rancher.docker.{key}")
        if value:
            path = os.path.join(SERVER_DIR, name)
            if os.path.exists(path):
                os.unlink(path)
            _write(path, str(value))
    missing = [n for n in ("ca.pem", "server-cert.pem", "server-key.pem")
               if not os.path.exists(os.path.join(SERVER_DIR, n))]
    if missing:
        config.console_print(f"ros: rancher.docker.tls is true but {SERVER_DIR} has no "
                             f"{', '.join(missing)}: run `sudo ros tls gen --server -H HOST`; "
                             "the user Docker starts without TLS")
        return []
    return [str(a) for a in config.get(cfg, "rancher.docker.tls_args") or []]
