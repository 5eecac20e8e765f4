"""Artifacts made from a staged tree: docker-archive images and the initrd."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import tarfile
from collections.abc import Iterable
from pathlib import Path

from lab.errors import BuildError

FIXED_MTIME = 1_700_000_000  # reproducible layers: same inputs, same digests


def _layer_tar(root: Path, exclude: set[str]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(_walk(root, exclude)):
            rel = path.relative_to(root).as_posix()
            info = tar.gettarinfo(str(path), arcname=rel)
            info.mtime = FIXED_MTIME
            info.uname = info.gname = ""
            if info.isreg():
                with open(path, "rb") as fh:
                    tar.addfile(info, fh)
            else:
                tar.addfile(info)
    return buf.getvalue()


def _walk(root: Path, exclude: set[str]) -> Iterable[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        base = Path(dirpath)
        keep = []
        for d in dirnames:
            rel = (base / d).relative_to(root).as_posix()
            if rel in exclude:
                continue
            keep.append(d)
            yield base / d
        dirnames[:] = keep
        for f in filenames:
            p = base / f
            if p.relative_to(root).as_posix() not in exclude:
                yield p


def _image_config(diff_id: str, arch: str, cmd: list[str] | None, env: list[str] | None) -> bytes:
    config = {
        "architecture": {"x86_64": "amd64", "aarch64": "arm64"}[arch],
        "os": "linux",
        "created": "2023-11-14T22:13:20Z",
        "config": {
            "Env": env or ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": cmd or ["/bin/sh"],
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": "2023-11-14T22:13:20Z", "created_by": "roslab image build"}],
    }
    return json.dumps(config, sort_keys=True).encode()


def write_docker_store(
    root: Path, data_root: Path, tag: str, arch: str, *, exclude: set[str]
) -> str:
    """Lay `root` out as a one-layer image already in a Docker data root (overlay2).

    The layer's files are hard links to the OS's own files, so the initrd stores them
    once and the system Docker starts with its image in place: no `docker load` at
    boot, which costs seconds under emulation and a second copy in RAM (the boot-time
    trap RancherOS hit with images.tar, rancher/os#2474). Only `docker save` of this
    image is not possible (no tar-split data).
    """
    exclude = exclude | {data_root.relative_to(root).as_posix()}
    diff_id = "sha256:" + hashlib.sha256(_layer_tar(root, exclude)).hexdigest()
    config = _image_config(diff_id, arch, None, None)
    image_id = hashlib.sha256(config).hexdigest()
    cache_id = hashlib.sha256(f"roslab-layer {diff_id}".encode()).hexdigest()
    short = hashlib.sha256(cache_id.encode()).hexdigest()[:26].upper()
    layer = data_root / "overlay2" / cache_id
    diff = layer / "diff"
    diff.mkdir(parents=True)
    (layer / "link").write_text(short)
    (data_root / "overlay2/l").mkdir(parents=True, exist_ok=True)
    (data_root / "overlay2/l" / short).symlink_to(f"../{cache_id}/diff")
    for path in sorted(_walk(root, exclude)):
        dest = diff / path.relative_to(root)
        if path.is_symlink():
            dest.symlink_to(os.readlink(path))
        elif path.is_dir():
            dest.mkdir()
            st = path.stat()
            os.chmod(dest, st.st_mode & 0o7777)
            os.chown(dest, st.st_uid, st.st_gid)
        else:
            os.link(path, dest)
    meta = data_root / "image/overlay2"
    layerdb = meta / "layerdb/sha256" / diff_id.split(":")[1]
    layerdb.mkdir(parents=True)
    size = sum(p.lstat().st_size for p in diff.rglob("*") if not p.is_dir())
    (layerdb / "diff").write_text(diff_id)
    (layerdb / "size").write_text(str(size))
    (layerdb / "cache-id").write_text(cache_id)
    content = meta / "imagedb/content/sha256"
    content.mkdir(parents=True)
    (content / image_id).write_bytes(config)
    (meta / "imagedb/metadata/sha256").mkdir(parents=True)
    repo, _, _ = tag.rpartition(":")
    (meta / "repositories.json").write_text(
        json.dumps({"Repositories": {repo: {tag: f"sha256:{image_id}"}}})
    )
    return image_id


def write_docker_archive(
    root: Path,
    out: Path,
    tag: str,
    arch: str,
    *,
    exclude: set[str] = frozenset(),  # type: ignore[assignment]
    cmd: list[str] | None = None,
    env: list[str] | None = None,
) -> str:
    """Write `root` as a one-layer image that `docker load` accepts; returns its image id."""
    layer = _layer_tar(root, set(exclude))
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    config_bytes = _image_config(diff_id, arch, cmd, env)
    image_id = hashlib.sha256(config_bytes).hexdigest()
    layer_dir = diff_id.split(":")[1]
    manifest = [
        {"Config": f"{image_id}.json", "RepoTags": [tag], "Layers": [f"{layer_dir}/layer.tar"]}
    ]
    tmp = out.with_suffix(".partial")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in (
            (f"{layer_dir}/VERSION", b"1.0"),
            (f"{layer_dir}/layer.tar", layer),
            (f"{image_id}.json", config_bytes),
            ("manifest.json", json.dumps(manifest).encode()),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = FIXED_MTIME
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    tmp.rename(out)
    return image_id


def write_initrd(root: Path, out: Path, level: int = 9) -> None:
    """cpio newc of `root`, lz4-compressed (legacy frames, the format the kernel's
    CONFIG_RD_LZ4 reads): the kernel unpacks it as the root filesystem.

    lz4 because under TCG the unpack is emulated code and dominates the early boot: this
    image's 290 MB tree unpacks in about half zstd's time (3.2 against 7.2 s, the same
    host and hour), for an initrd about 1.5x the size (111 against 74 MB).
    """
    tmp = out.with_suffix(".partial")
    files = subprocess.run(
        "find . -mindepth 1 | LC_ALL=C sort", shell=True, cwd=root, capture_output=True, check=True
    ).stdout
    with open(tmp, "wb") as fh:
        cpio = subprocess.Popen(
            ["cpio", "--quiet", "-o", "-H", "newc", "--reproducible"],
            cwd=root,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        lz4 = subprocess.Popen(["lz4", "-l", f"-{level}", "-q", "-c"], stdin=cpio.stdout,
                               stdout=fh)
        assert cpio.stdin is not None and cpio.stdout is not None
        try:
            cpio.stdout.close()
            cpio.stdin.write(files)
            cpio.stdin.close()
            ok = cpio.wait() == 0 and lz4.wait() == 0
        except BaseException:  # Ctrl-C: stop the pipeline, leave no half file
            for child in (cpio, lz4):
                child.kill()
                child.wait()
            tmp.unlink(missing_ok=True)
            raise
    if not ok:
        tmp.unlink(missing_ok=True)
        raise BuildError("writing the initrd failed (cpio or lz4); are both installed?")
    tmp.rename(out)
