"""The lab's registry: a real OCI registry on this host that guests pull from.

Debian's `docker-registry` (distribution 2.8) serves a folder of the lab's cache
(`ROSLAB_CACHE/registry`), plain HTTP, bound to the host address the platform's driver names
(`Driver.host_address_for_guest`: where its guests reach this host). A run starts its
own server on a free port and stops it at the end; the process dies with the harness
(PR_SET_PDEATHSIG), so nothing is left listening even after a SIGKILL. Runs share the
storage: the filesystem driver writes blobs by rename, so concurrent servers are safe; a
server holds a shared lock on it, and blob garbage collection (which must run alone)
takes it exclusively.

Images go in through the registry's own HTTP API v2 (blob upload, manifest PUT), from a
`docker save` tarball or an OCI image layout: what the server keeps is what a real push
made. Guests are pointed at it as a registry mirror by cloud-config
(`mirror_cloud_config`), as RancherOS users point theirs.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import hashlib
import json
import os
import shutil
import socket
import subprocess
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from lab.cache import cache_root
from lab.driver import Check
from lab.errors import HostError, ImageError
from lab.process import die_with_parent

BINARY = "/usr/bin/docker-registry"
PACKAGE = "docker-registry"  # Debian's package of it
ENV = "ROSLAB_REGISTRY"  # host:port of the run's server, for xdist workers
START_SECONDS = 15.0

# what a registry serves and a Docker pulls (schema 2); OCI media types pass through as given
MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
CONFIG = "application/vnd.docker.container.image.v1+json"
LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
ACCEPT = ", ".join((MANIFEST_LIST, MANIFEST, OCI_INDEX, OCI_MANIFEST))
DEB_ARCH = {"amd64": "x86_64", "arm64": "aarch64"}


def doctor_check() -> Check:
    """`roslab doctor`'s line: the scenarios that pull (lab_registry) need the server."""
    return Check(os.access(BINARY, os.X_OK), f"the lab's registry ({BINARY})",
                 f"apt-get install {PACKAGE} (./setup does); only the scenarios that pull "
                 "images need it", required=False)


def default_storage() -> Path:
    return cache_root() / "registry"


def mirror_cloud_config(address: str) -> dict[str, Any]:
    """The cloud-config that points both of a guest's Dockers at the registry at
    `address` (host:port as the guest reaches it) as their mirror; plain HTTP, so it is
    an insecure registry too (RancherOS's keys)."""
    docker = {"registry_mirror": f"http://{address}", "insecure_registry": [address]}
    return {"rancher": {"docker": dict(docker), "system_docker": dict(docker)}}


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def parse_ref(ref: str) -> tuple[str, str]:
    """'busybox' -> ('library/busybox', 'latest'); 'me/app:1' -> ('me/app', '1'): the
    repository Docker asks a mirror for (official images live under library/)."""
    for hub in ("docker.io/", "index.docker.io/"):  # Docker Hub's names: what a mirror serves
        ref = ref.removeprefix(hub)
    name, _, tag = ref.rpartition(":") if ":" in ref.rsplit("/", 1)[-1] else (ref, "", "")
    if "/" not in name:
        name = f"library/{name}"
    return name, tag or "latest"


def short_name(repo: str) -> str:
    return repo.removeprefix("library/")


@dataclass(frozen=True)
class ImageData:
    """One image to push: its config and its layers (gzip-compressed tar streams)."""

    config: bytes
    layers: tuple[bytes, ...]

    @property
    def arch(self) -> str:
        arch = json.loads(self.config).get("architecture", "")
        return DEB_ARCH.get(arch, arch)


@dataclass(frozen=True)
class Entry:
    """A tag the registry holds: `busybox:latest`, its manifest digest, its arches."""

    repo: str
    tag: str
    digest: str
    arches: tuple[str, ...]

    @property
    def ref(self) -> str:
        return f"{short_name(self.repo)}:{self.tag}"


def _gzip(layer: bytes) -> bytes:
    """Layers travel compressed (what a Docker pull expects); mtime 0: same input, same
    digest, so pushing an image again uploads nothing."""
    if layer[:2] == b"\x1f\x8b":
        return layer
    return gzip.compress(layer, compresslevel=6, mtime=0)


def read_docker_archive(path: Path) -> list[tuple[list[str], ImageData]]:
    """The images of a `docker save` tarball, each with its RepoTags; ImageError names the
    file and what is wrong with it."""
    try:
        tar = tarfile.open(path)  # noqa: SIM115 - closed by the `with tar` below
    except tarfile.ReadError:
        raise ImageError(f"{path}: not a `docker save` tarball (not a tar archive, nor a "
                         "compressed one)") from None
    except OSError as exc:
        raise ImageError(f"{path}: cannot be read ({exc.strerror})") from None
    try:
        with tar:
            def member(name: str) -> bytes:
                try:
                    fh = tar.extractfile(name)
                except KeyError:
                    fh = None
                if fh is None:
                    raise ImageError(f"{path}: not a complete `docker save` archive "
                                     f"({name} is missing)")
                return fh.read()

            try:
                manifest = json.loads(member("manifest.json"))
            except json.JSONDecodeError as exc:
                raise ImageError(f"{path}: its manifest.json is not JSON ({exc})") from None
            images = []
            for item in manifest:
                config = member(item["Config"])
                layers = tuple(_gzip(member(name)) for name in item["Layers"])
                diff_ids = json.loads(config).get("rootfs", {}).get("diff_ids", [])
                if len(diff_ids) != len(layers):
                    raise ImageError(f"{path}: {item['Config']} names {len(diff_ids)} layers, "
                                     f"the archive has {len(layers)}")
                images.append((list(item.get("RepoTags") or []), ImageData(config, layers)))
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise ImageError(f"{path}: a truncated or damaged `docker save` tarball "
                         f"({exc})") from None
    except (KeyError, TypeError) as exc:
        raise ImageError(f"{path}: its manifest.json is not a `docker save` manifest "
                         f"(no {exc})") from None
    if not images:
        raise ImageError(f"{path}: a `docker save` archive without images")
    return images


class Registry:
    """A docker-registry server on `storage`, listening on `listen` (a free port).

    `with Registry() as reg:` starts it and stops it; `reg.address` is host:port on this
    host. `Registry.connect(address)` talks to one another process started."""

    def __init__(self, storage: Path | None = None, listen: str = "127.0.0.1") -> None:
        self.storage = storage or default_storage()
        self.listen = listen
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._scratch: Path | None = None
        self._lock: IO[str] | None = None

    @classmethod
    def connect(cls, address: str) -> Registry:
        host, _, port = address.rpartition(":")
        reg = cls(listen=host)
        reg.port = int(port)
        return reg

    @property
    def address(self) -> str:
        return f"{self.listen}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    # -- the server ---------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        return {
            "version": 0.1,
            "log": {"level": "warn", "accesslog": {"disabled": True}},
            "storage": {"filesystem": {"rootdirectory": str(self.storage)},
                        "delete": {"enabled": True}},
            "http": {"addr": self.address, "headers": {"X-Content-Type-Options": ["nosniff"]}},
        }

    def start(self) -> Registry:
        if not os.access(BINARY, os.X_OK):
            raise HostError(f"no {BINARY}: install Debian's {PACKAGE} package "
                            f"(apt-get install {PACKAGE}; ./setup does)")
        self.storage.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.storage / ".lock", "a")  # noqa: SIM115 - held while it runs
        fcntl.flock(self._lock, fcntl.LOCK_SH)
        self._scratch = Path(tempfile.mkdtemp(prefix="roslab-registry-"))
        try:
            for _ in range(3):  # the port may be taken between probing and binding
                self.port = _free_port(self.listen)
                self._spawn()
                if self._wait_up():
                    return self
            raise HostError(f"{BINARY} did not start: {self._log_tail()}")
        except BaseException:
            self.stop()
            raise

    def _spawn(self) -> None:
        assert self._scratch is not None
        conf = self._scratch / "config.yml"
        conf.write_text(json.dumps(self.config()))  # YAML reads JSON
        log = open(self._scratch / "registry.log", "wb")  # noqa: SIM115 - the child's
        with log:
            self.proc = subprocess.Popen([BINARY, "serve", str(conf)], stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT,
                                         preexec_fn=die_with_parent)

    def _wait_up(self) -> bool:
        assert self.proc is not None
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            with contextlib.suppress(OSError), \
                    urllib.request.urlopen(f"{self.url}/v2/", timeout=2) as resp:
                if resp.status == 200:
                    return True
            time.sleep(0.05)
        return False

    def _log_tail(self) -> str:
        path = (self._scratch or Path("/nonexistent")) / "registry.log"
        lines = path.read_text(errors="replace").splitlines() if path.exists() else []
        return " | ".join(lines[-5:]) or "no output"

    def stop(self) -> None:
        """Stop the server (idempotent): SIGTERM, then SIGKILL; its config goes too."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            self.proc = None
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def __enter__(self) -> Registry:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- the HTTP API v2 ----------------------------------------------------------------

    def _request(self, method: str, path: str, data: bytes | None = None,
                 headers: dict[str, str] | None = None,
                 ok: tuple[int, ...] = (200, 201, 202)) -> tuple[int, dict[str, str], bytes]:
        url = path if path.startswith("http") else f"{self.url}{path}"
        req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as exc:
            body = exc.read()
            if exc.code in ok:
                return exc.code, dict(exc.headers), body
            raise ImageError(f"registry {self.address}: {method} {path} -> {exc.code} "
                             f"{body.decode(errors='replace').strip()[:300]}") from None
        except OSError as exc:
            raise HostError(f"registry {self.address} did not answer {method} {path}: "
                            f"{exc}") from None

    def has_blob(self, repo: str, digest: str) -> bool:
        status, _, _ = self._request("HEAD", f"/v2/{repo}/blobs/{digest}", ok=(200, 404))
        return status == 200

    def push_blob(self, repo: str, data: bytes) -> str:
        """Upload `data` unless the repository has it; returns its digest."""
        digest = sha256(data)
        if self.has_blob(repo, digest):
            return digest
        _, headers, _ = self._request("POST", f"/v2/{repo}/blobs/uploads/")
        location = urllib.parse.urljoin(self.url, headers["Location"])
        sep = "&" if "?" in location else "?"
        self._request("PUT", f"{location}{sep}digest={digest}", data=data,
                      headers={"Content-Type": "application/octet-stream"})
        return digest

    def push_manifest(self, repo: str, ref: str, body: bytes, media_type: str) -> str:
        _, headers, _ = self._request("PUT", f"/v2/{repo}/manifests/{ref}", data=body,
                                      headers={"Content-Type": media_type})
        return headers.get("Docker-Content-Digest", sha256(body))

    def _push_one(self, repo: str, image: ImageData) -> tuple[str, bytes]:
        """Push an image's blobs and its manifest by digest; (digest, manifest)."""
        layers = [{"mediaType": LAYER_GZIP, "size": len(layer),
                   "digest": self.push_blob(repo, layer)} for layer in image.layers]
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": MANIFEST,
            "config": {"mediaType": CONFIG, "size": len(image.config),
                       "digest": self.push_blob(repo, image.config)},
            "layers": layers,
        }, sort_keys=True).encode()
        return self.push_manifest(repo, sha256(manifest), manifest, MANIFEST), manifest

    def push(self, ref: str, images: list[ImageData], *, tags: tuple[str, ...] = ()) -> str:
        """Push `images` (one per arch) as `ref` (and `tags` of the same repository): one
        image as itself, several behind a manifest list, as multi-arch images are served.
        Returns the digest `ref` resolves to."""
        repo, tag = parse_ref(ref)
        pushed = [(image, *self._push_one(repo, image)) for image in images]
        if len(pushed) == 1:
            body, media = pushed[0][2], MANIFEST
        else:
            body, media = json.dumps({
                "schemaVersion": 2, "mediaType": MANIFEST_LIST,
                "manifests": [{"mediaType": MANIFEST, "size": len(m), "digest": d,
                               "platform": {"architecture": json.loads(i.config)
                                            ["architecture"], "os": "linux"}}
                              for i, d, m in pushed],
            }, sort_keys=True).encode(), MANIFEST_LIST
        digest = ""
        for t in (tag, *tags):
            digest = self.push_manifest(repo, t, body, media)
        return digest

    def add_docker_archive(self, path: Path) -> list[str]:
        """Push every image of a `docker save` tarball under its tags; returns them."""
        images = read_docker_archive(path)
        if not any(tags for tags, _ in images):
            raise ImageError(f"{path}: its images have no tags (`docker save NAME:TAG`)")
        pushed = []
        for tags, image in images:
            for ref in tags:
                self.push(ref, [image])
                repo, tag = parse_ref(ref)
                pushed.append(f"{short_name(repo)}:{tag}")
        return pushed

    def add_oci_layout(self, path: Path, name: str | None = None) -> list[str]:
        """Push the images of an OCI image layout (index.json, blobs/sha256/) as they are:
        each under `name` (REPO[:TAG]), or the name its index annotates."""
        index = _oci_json(path, "index.json")
        if json.loads((path / "oci-layout").read_bytes() if (path / "oci-layout").exists()
                      else b"{}").get("imageLayoutVersion") is None:
            raise ImageError(f"{path}: not an OCI image layout (no oci-layout file)")
        pushed = []
        for desc in index.get("manifests") or []:
            notes = desc.get("annotations") or {}
            ref = name or notes.get("io.containerd.image.name") or _ref_name(notes)
            if not ref:
                raise ImageError(f"{path}: its image {desc.get('digest')} has no name: "
                                 "give one (--name REPO[:TAG])")
            repo, tag = parse_ref(ref)
            self._push_oci(path, repo, desc)
            self.push_manifest(repo, tag, _oci_blob(path, desc["digest"]), desc["mediaType"])
            pushed.append(f"{short_name(repo)}:{tag}")
        if not pushed:
            raise ImageError(f"{path}: its index.json names no image")
        return pushed

    def _push_oci(self, layout: Path, repo: str, desc: dict[str, Any]) -> None:
        body = _oci_blob(layout, desc["digest"])
        doc = json.loads(body)
        if desc["mediaType"] in (OCI_INDEX, MANIFEST_LIST):
            for child in doc.get("manifests", []):
                if (layout / "blobs" / child["digest"].replace(":", "/")).exists():
                    self._push_oci(layout, repo, child)
                    self.push_manifest(repo, child["digest"], _oci_blob(layout, child["digest"]),
                                       child["mediaType"])
            return
        for blob in (doc["config"], *doc.get("layers", [])):
            self.push_blob(repo, _oci_blob(layout, blob["digest"]))

    # -- what it holds --------------------------------------------------------------------

    def manifest(self, ref: str) -> tuple[str, dict[str, Any]] | None:
        """(digest, manifest) of `ref`, or None when the registry does not have it."""
        repo, tag = parse_ref(ref)
        status, headers, body = self._request("GET", f"/v2/{repo}/manifests/{tag}",
                                              headers={"Accept": ACCEPT}, ok=(200, 404))
        if status == 404:
            return None
        return headers.get("Docker-Content-Digest", sha256(body)), json.loads(body)

    def _arches(self, repo: str, manifest: dict[str, Any]) -> tuple[str, ...]:
        if "manifests" in manifest:
            return tuple(DEB_ARCH.get(m["platform"]["architecture"], m["platform"]
                                      ["architecture"]) for m in manifest["manifests"]
                         if "platform" in m)
        _, _, config = self._request("GET", f"/v2/{repo}/blobs/{manifest['config']['digest']}")
        return (ImageData(config, ()).arch,)

    def images(self) -> list[Entry]:
        entries = []
        for repo in self._repositories():
            _, _, tags = self._request("GET", f"/v2/{repo}/tags/list", ok=(200, 404))
            for tag in sorted(json.loads(tags or b"{}").get("tags") or []):
                got = self.manifest(f"{repo}:{tag}")
                if got is not None:
                    entries.append(Entry(repo, tag, got[0], self._arches(repo, got[1])))
        return entries

    def _repositories(self) -> list[str]:
        repos: list[str] = []
        path: str | None = "/v2/_catalog?n=1000"  # the most a page holds
        while path:
            _, headers, body = self._request("GET", path)
            repos += json.loads(body).get("repositories") or []
            link = headers.get("Link", "")  # '</v2/_catalog?last=x&n=1000>; rel="next"'
            path = link[1:link.index(">")] if link.startswith("<") else None
        return repos

    def remove(self, ref: str) -> None:
        """Remove the tag `ref`; its manifest goes too when no other tag names it (its
        blobs at the next `collect_garbage`). ImageError when the registry lacks it."""
        repo, tag = parse_ref(ref)
        got = self.manifest(ref)
        if got is None:
            raise ImageError(f"the lab's registry has no {short_name(repo)}:{tag}")
        # distribution 2.8 deletes manifests by digest only, which untags every tag naming
        # it: one tag goes by removing its link from the storage this lab owns
        tags_dir = self.storage / "docker/registry/v2/repositories" / repo / "_manifests/tags"
        shutil.rmtree(tags_dir / tag)
        others = [t.name for t in tags_dir.iterdir()] if tags_dir.exists() else []
        if not any((self.manifest(f"{repo}:{t}") or ("",))[0] == got[0] for t in others):
            self._request("DELETE", f"/v2/{repo}/manifests/{got[0]}", ok=(202, 404))
        if not others:
            shutil.rmtree(self.storage / "docker/registry/v2/repositories" / repo)

    def collect_garbage(self) -> bool:
        """Delete blobs no manifest uses (`docker-registry garbage-collect`), when no server
        uses the storage (it must run alone); returns whether it ran."""
        self.storage.mkdir(parents=True, exist_ok=True)
        with open(self.storage / ".lock", "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            with tempfile.TemporaryDirectory(prefix="roslab-registry-gc-") as tmp:
                conf = Path(tmp) / "config.yml"
                conf.write_text(json.dumps(self.config()))
                proc = subprocess.run([BINARY, "garbage-collect", "--delete-untagged",
                                       str(conf)], capture_output=True, text=True)
            if proc.returncode != 0:
                raise HostError(f"docker-registry garbage-collect failed: "
                                f"{proc.stderr.strip()[-300:]}")
        return True


def _ref_name(notes: dict[str, str]) -> str | None:
    """org.opencontainers.image.ref.name, when it names a repository (not a bare tag)."""
    ref = notes.get("org.opencontainers.image.ref.name", "")
    return ref if ref and ("/" in ref or ":" in ref) else None


def _oci_json(layout: Path, name: str) -> dict[str, Any]:
    try:
        data = json.loads((layout / name).read_bytes())
    except (OSError, json.JSONDecodeError) as exc:
        raise ImageError(f"{layout}: not a readable OCI image layout ({name}: {exc})") from None
    if not isinstance(data, dict):
        raise ImageError(f"{layout}: its {name} is not a JSON object")
    return data


def _oci_blob(layout: Path, digest: str) -> bytes:
    path = layout / "blobs" / digest.replace(":", "/")
    try:
        data = path.read_bytes()
    except OSError:
        raise ImageError(f"{layout}: blob {digest} is missing") from None
    if sha256(data) != digest:
        raise ImageError(f"{layout}: blob {digest} is corrupt (its content does not match)")
    return data


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def listening(address: str) -> bool:
    """Whether anything accepts connections at host:port (the tests' 'nothing left')."""
    host, _, port = address.rpartition(":")
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((host, int(port))) == 0
