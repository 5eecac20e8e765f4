"""Debian packages for the reference image, through a private apt root.

The host's apt state is never touched: the builder keeps its own sources, lists and
.deb cache under the roslab cache, so the same code fetches amd64 and arm64 packages
on any Debian or Ubuntu host. Debs are cached by exact version (apt keeps the version
in the file name), so a second build downloads nothing.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from lab.cache import cache_root
from lab.errors import BuildError

DEB_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}
DEFAULT_SUITE = "bookworm"
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")


def host_debian_mirror() -> str | None:
    """The Debian mirror the host's apt already uses (deb822 or one-line sources)."""
    candidates = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in candidates:
        try:
            text = path.read_text()
        except OSError:
            continue
        for match in re.finditer(r"^\s*(?:URIs:|deb(?:\s+\[[^\]]*\])?)\s+(\S+)", text, re.M):
            uri = match.group(1)
            if "security" in uri or "ubuntu" in uri:
                continue
            # the suite that follows tells a Debian mirror from another distribution's
            tail = text[match.end() : match.end() + 200]
            if re.search(r"\b(bookworm|trixie|bullseye|stable)\b", tail) or "/debian" in uri:
                return uri.rstrip("/")
    return None


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    arch: str
    path: Path  # the .deb in the cache


class Apt:
    """A private apt for one Debian architecture."""

    def __init__(self, arch: str, mirror: str | None = None, suite: str = DEFAULT_SUITE) -> None:
        if arch not in DEB_ARCH:
            raise BuildError(f"unknown arch {arch!r}: known arches are {', '.join(DEB_ARCH)}")
        self.arch = arch
        self.deb_arch = DEB_ARCH[arch]
        self.mirror = mirror or os.environ.get("ROSLAB_DEBIAN_MIRROR") or host_debian_mirror()
        if not self.mirror:
            raise BuildError(
                "no Debian package source: this host's apt has no Debian mirror; "
                "set ROSLAB_DEBIAN_MIRROR=<url of a Debian mirror> or pass --mirror"
            )
        if not KEYRING.exists():
            raise BuildError(f"{KEYRING} is missing: install the package debian-archive-keyring")
        self.suite = suite
        self.root = cache_root() / "apt" / self.deb_arch
        self.archives = cache_root() / "debs" / self.deb_arch
        for sub in (
            "etc/apt/apt.conf.d",
            "etc/apt/preferences.d",
            "var/lib/apt/lists/partial",
            "var/cache/apt",
            "var/lib/dpkg",
        ):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        (self.archives / "partial").mkdir(parents=True, exist_ok=True)
        (self.root / "var/lib/dpkg/status").touch()
        sources = "".join(
            f"deb [arch={self.deb_arch} signed-by={KEYRING}] {self.mirror} {s} main\n"
            for s in (suite, f"{suite}-updates")
        )
        (self.root / "etc/apt/sources.list").write_text(sources)

    def _apt(self, *args: str, tool: str = "apt-get") -> subprocess.CompletedProcess[str]:
        opts = [
            f"-oDir={self.root}",
            f"-oDir::State::status={self.root}/var/lib/dpkg/status",
            f"-oDir::Cache::archives={self.archives}",
            "-oDir::Etc::trusted=/dev/null",
            "-oDir::Etc::trustedparts=/dev/null",
            f"-oAPT::Architecture={self.deb_arch}",
            f"-oAPT::Architectures={self.deb_arch}",
            "-oDir::Bin::dpkg=/usr/bin/dpkg",
            "-oDir::Bin::methods=/usr/lib/apt/methods",
            "-oDir::Log=/dev/null",
            "-oAPT::Install-Recommends=false",
            "-oAcquire::Retries=2",
            "-oDebug::NoLocking=true",
            "-q",
        ]
        proc = subprocess.run([tool, *opts, *args], capture_output=True, text=True)
        return proc

    def update(self) -> None:
        proc = self._apt("update")
        failed = re.findall(r"^(?:E|W): Failed to fetch (\S+)", proc.stderr + proc.stdout, re.M)
        if proc.returncode != 0 or failed:
            what = ", ".join(failed) or (proc.stderr.strip().splitlines() or ["apt-get update"])[-1]
            raise BuildError(
                f"could not reach the Debian package source {self.mirror} for {self.deb_arch}: "
                f"{what}"
            )

    def lists_present(self) -> bool:
        return any((self.root / "var/lib/apt/lists").glob("*_Packages*"))

    def resolve(self, names: list[str]) -> list[tuple[str, str]]:
        """Every package (with dependencies) a fresh root needs for `names`, as (name, version)."""
        if not self.lists_present():
            self.update()
        proc = self._apt("install", "-s", "-y", *names)
        if proc.returncode != 0:
            raise BuildError(
                "could not resolve packages "
                + " ".join(names)
                + ":\n"
                + proc.stdout[-2000:]
                + proc.stderr[-2000:]
            )
        return re.findall(r"^Inst (\S+?)(?::\S+)? \((\S+) ", proc.stdout, re.M)

    def fetch(self, names: list[str]) -> list[Package]:
        """Download (or take from the cache) `names` and their dependencies."""
        wanted = self.resolve(names)
        missing = [(n, v) for n, v in wanted if self._cached(n, v) is None]
        if missing:
            proc = self._apt("install", "--download-only", "-y", *(f"{n}={v}" for n, v in missing))
            if proc.returncode != 0:
                failed = re.findall(r"Failed to fetch (\S+)", proc.stderr) or [
                    f"{n}={v}" for n, v in missing
                ]
                raise BuildError(
                    f"could not download from {self.mirror}: {', '.join(failed)}\n"
                    + proc.stderr.strip()[-1500:]
                )
        out = []
        for name, version in wanted:
            path = self._cached(name, version)
            if path is None:
                raise BuildError(f"{name} {version} was not downloaded into {self.archives}")
            out.append(Package(name, version, self.deb_arch, path))
        return out

    def _cached(self, name: str, version: str) -> Path | None:
        quoted = version.replace(":", "%3a")
        for arch in (self.deb_arch, "all"):
            path = self.archives / f"{name}_{quoted}_{arch}.deb"
            if path.exists():
                return path
        return None


def extract(deb: Path, dest: Path) -> list[str]:
    """Unpack a .deb's files into `dest` (no maintainer scripts); returns the paths it held.

    `--keep-directory-symlink` keeps the merged-/usr links (bin -> usr/bin) the root has.
    """
    dest.mkdir(parents=True, exist_ok=True)
    fsys = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
    tar = subprocess.run(
        ["tar", "-x", "-v", "--keep-directory-symlink", "--no-same-owner", "-C", str(dest)],
        stdin=fsys.stdout,
        capture_output=True,
        text=True,
    )
    if fsys.wait() != 0 or tar.returncode != 0:
        raise BuildError(f"could not unpack {deb.name}: {tar.stderr.strip()[-500:]}")
    return [line.removeprefix("./") for line in tar.stdout.splitlines()]
