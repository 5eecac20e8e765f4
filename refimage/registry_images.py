"""The images the lab's registry serves, built from the Debian packages the reference
image already uses: `busybox` from busybox-static (the same tree the reference image
preloads for its user Docker), one per arch behind one tag, as Docker Hub serves it.

The reference image's own service image is not among them: it is laid out in the initrd
as a Docker store, not as a tarball (refimage/archive.py, write_docker_store), and a
second 300 MB copy for every run's registry would buy no scenario anything.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from lab.cache import cache_root
from lab.errors import LabError
from lab.registry import ImageData, Registry, read_docker_archive
from refimage import archive
from refimage.build import busybox_image_root
from refimage.debs import Apt

ARCHES = ("x86_64", "aarch64")
Progress = Callable[[str], None]


def busybox_archive(arch: str) -> tuple[Path, str]:
    """(a `docker save` tarball of busybox for `arch`, busybox's upstream version),
    built once per package version into the cache."""
    deb = Apt(arch).fetch(["busybox-static"])[0]
    upstream = re.sub(r"^\d+:", "", deb.version).split("-")[0]  # 1:1.35.0-4+b1 -> 1.35.0
    out = cache_root() / "registry-images" / f"busybox_{deb.version.replace(':', '%3a')}_{arch}.tar"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="roslab-registry-image-"))
        try:
            archive.write_docker_archive(busybox_image_root(work, deb), out, "busybox:latest",
                                         arch, cmd=["sh"])
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return out, upstream


def seed(registry: Registry, arches: tuple[str, ...] = ARCHES,
         say: Progress = lambda _: None) -> list[str]:
    """Put the lab's own images in `registry` (a no-op for blobs it already has); an arch
    whose packages cannot be had from here is left out, said through `say`. Returns the
    references pushed."""
    images: list[ImageData] = []
    versions = set()
    for arch in arches:
        try:
            path, version = busybox_archive(arch)
        except LabError as exc:
            say(f"registry: no busybox for {arch}: {str(exc).splitlines()[0]}")
            continue
        images += [image for _, image in read_docker_archive(path)]
        versions.add(version)
    if not images:
        return []
    tags = tuple(sorted(versions)) if len(versions) == 1 else ()
    registry.push("busybox:latest", images, tags=tags)
    return ["busybox:latest", *(f"busybox:{t}" for t in tags)]
