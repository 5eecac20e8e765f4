"""The lab's registry (lab/registry.py, refimage/registry_images.py, `roslab registry`),
against the real docker-registry, with images written by skopeo (Debian's) as `docker
save` tarballs and OCI layouts: start and stop, nothing left listening (on Ctrl-C and
SIGKILL too), add, list, remove, not found, and corrupt input named."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tarfile
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from interrupt import at_a_terminal, survivors, tagged_env  # tests/ is on sys.path

from lab.errors import ImageError
from lab.registry import Registry, listening, parse_ref
from refimage.registry_images import seed

ROOT = Path(__file__).resolve().parent.parent
needs_skopeo = pytest.mark.skipif(shutil.which("skopeo") is None,
                                  reason="skopeo is not installed (./setup installs it)")


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A registry holding the lab's own images (busybox from busybox-static)."""
    with Registry(tmp_path_factory.mktemp("seeded")) as registry:
        assert seed(registry)[0] == "busybox:latest"
        yield registry


def _skopeo(registry: Registry, src: str, dest: str) -> None:
    subprocess.run(["skopeo", "copy", "--quiet", "--src-tls-verify=false",
                    "--override-arch=amd64", f"docker://{registry.address}/library/{src}", dest],
                   check=True, capture_output=True, timeout=120)


def test_start_stop_leaves_nothing_listening(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "storage")
    with registry:
        assert listening(registry.address)
        with urllib.request.urlopen(f"{registry.url}/v2/", timeout=5) as resp:
            assert resp.status == 200
        proc = registry.proc
        assert proc is not None
    assert proc.poll() is not None, "the server outlived its registry"
    assert not listening(registry.address)
    assert registry.proc is None and registry._scratch is None


@pytest.mark.parametrize("how", ["SIGINT", "SIGKILL"])
def test_the_server_dies_with_its_harness(tmp_path: Path, how: str) -> None:
    """Ctrl-C unwinds through the `with`; a SIGKILLed harness takes it along (PDEATHSIG)."""
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from pathlib import Path
        from lab.registry import Registry
        with Registry(Path({str(tmp_path)!r})) as reg:
            print(reg.address, reg.proc.pid, flush=True)
            time.sleep(60)
    """)
    # at_a_terminal: under xdist the worker ignores SIGINT, and so would the harness
    harness = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                               text=True, preexec_fn=at_a_terminal)
    assert harness.stdout is not None
    address, pid = harness.stdout.readline().split()
    assert listening(address)
    harness.send_signal(getattr(signal, how))
    harness.wait(30)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (listening(address) or Path(f"/proc/{pid}").exists()):
        time.sleep(0.1)
    assert not listening(address), f"something still listens at {address} after {how}"
    stat = Path(f"/proc/{pid}/stat")
    assert not stat.exists() or stat.read_text().split()[2] == "Z", \
        f"docker-registry {pid} outlived its harness ({how})"


def test_the_lab_images_are_served_for_both_arches(seeded: Registry) -> None:
    entries = {e.ref: e for e in seeded.images()}
    assert "busybox:latest" in entries, entries
    latest = entries["busybox:latest"]
    assert "x86_64" in latest.arches
    got = seeded.manifest("busybox")
    assert got is not None and got[0] == latest.digest
    # pushing again uploads nothing new and names the same image
    assert seed(seeded)[0] == "busybox:latest"
    assert seeded.manifest("busybox:latest") == got


def test_an_absent_image_is_the_registrys_not_found(seeded: Registry) -> None:
    assert seeded.manifest("roslab-no-such-image") is None
    url = f"{seeded.url}/v2/library/roslab-no-such-image/manifests/latest"
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(url, timeout=5)
    assert caught.value.code == 404
    codes = {e["code"] for e in json.loads(caught.value.read())["errors"]}
    assert codes & {"MANIFEST_UNKNOWN", "NAME_UNKNOWN"}, codes


@needs_skopeo
def test_add_list_remove_docker_save_and_oci_layout(seeded: Registry, tmp_path: Path) -> None:
    archive, layout = tmp_path / "saved.tar", tmp_path / "layout"
    _skopeo(seeded, "busybox:latest", f"docker-archive:{archive}:roslab/saved:1")
    _skopeo(seeded, "busybox:latest", f"oci:{layout}:roslab/layout:2")
    with Registry(tmp_path / "storage") as registry:
        assert registry.add_docker_archive(archive) == ["roslab/saved:1"]
        assert registry.add_oci_layout(layout) == ["roslab/layout:2"]
        assert registry.add_oci_layout(layout, "other:3") == ["other:3"]
        refs = {e.ref: e for e in registry.images()}
        assert set(refs) == {"roslab/saved:1", "roslab/layout:2", "other:3"}
        assert refs["roslab/layout:2"].arches == ("x86_64",)
        # skopeo pulls back what was added: a real client reads it
        subprocess.run(["skopeo", "inspect", "--tls-verify=false",
                        f"docker://{registry.address}/roslab/saved:1"], check=True,
                       capture_output=True, timeout=60)
        registry.add_oci_layout(layout, "other:4")  # one manifest, two tags
        registry.remove("other:3")
        assert registry.manifest("other:3") is None
        assert registry.manifest("other:4") is not None, "removing a tag took its sibling"
        registry.remove("other:4")
        registry.remove("roslab/saved:1")
        assert {e.ref for e in registry.images()} == {"roslab/layout:2"}
        with pytest.raises(ImageError, match="has no roslab/saved:1"):
            registry.remove("roslab/saved:1")
        assert not registry.collect_garbage(), "garbage collection ran beside a server"
    assert registry.collect_garbage()
    with Registry(tmp_path / "storage") as registry:  # what stays is intact
        assert {e.ref for e in registry.images()} == {"roslab/layout:2"}


def test_corrupt_input_is_named(tmp_path: Path) -> None:
    noise = tmp_path / "noise.tar"
    noise.write_bytes(bytes(range(256)) * 40)
    empty_tar = tmp_path / "no-manifest.tar"
    with tarfile.open(empty_tar, "w") as tar:
        tar.add(noise, arcname="something")
    layout = tmp_path / "layout"
    layout.mkdir()
    (layout / "index.json").write_text("{not json")
    with Registry(tmp_path / "storage") as registry:
        with pytest.raises(ImageError, match=r"noise.tar: not a `docker save` tarball"):
            registry.add_docker_archive(noise)
        with pytest.raises(ImageError, match=r"no-manifest.tar: .*manifest.json is missing"):
            registry.add_docker_archive(empty_tar)
        with pytest.raises(ImageError, match=r"layout: not a readable OCI image layout"):
            registry.add_oci_layout(layout)
        assert registry.images() == []


@needs_skopeo
def test_a_truncated_tarball_is_named(seeded: Registry, tmp_path: Path) -> None:
    archive = tmp_path / "saved.tar"
    _skopeo(seeded, "busybox:latest", f"docker-archive:{archive}:roslab/saved:1")
    cut = tmp_path / "cut.tar"
    cut.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with Registry(tmp_path / "storage") as registry, \
            pytest.raises(ImageError, match=r"cut.tar: a truncated or damaged"):
        registry.add_docker_archive(cut)


def test_roslab_registry_command(tmp_path: Path) -> None:
    def roslab(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "commands.cli", "registry", "--storage",
                               str(tmp_path / "storage"), *args], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)

    missing = roslab("add", str(tmp_path / "absent.tar"))
    assert missing.returncode == 2 and f"no such file or folder: {tmp_path}/absent.tar" \
        in missing.stderr
    bad = tmp_path / "bad.tar"
    bad.write_bytes(b"\0" * 100)
    corrupt = roslab("add", str(bad))
    assert corrupt.returncode == 2 and f"{bad}: not a `docker save` tarball" \
        in corrupt.stderr
    listed = roslab("list")
    assert listed.returncode == 0 and "empty" in listed.stdout
    gone = roslab("remove", "busybox")
    assert gone.returncode == 2 and "has no busybox:latest" in gone.stderr


def test_parse_ref() -> None:
    assert parse_ref("busybox") == ("library/busybox", "latest")
    assert parse_ref("me/app:1") == ("me/app", "1")
    assert parse_ref("host:5000/app") == ("host:5000/app", "latest")


@pytest.mark.refimage
@pytest.mark.parametrize("end", ["finished", "SIGINT"])
def test_a_run_serves_its_registry_and_stops_it(tmp_path: Path, end: str) -> None:
    """A scenario run on a platform whose guests reach this host starts the registry (the
    report header names it) and stops it when it ends: at the end, or on Ctrl-C while its
    machine boots."""
    args = ["scenarios/test_registry.py", "--platform", "qemu"]
    env, tag = tagged_env()  # its processes, told apart from other tests' runs
    if end == "finished":
        args.append("--collect-only")
    run = subprocess.Popen([sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
                            f"--roslab-artifacts={tmp_path}", *args], cwd=ROOT, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           preexec_fn=at_a_terminal)
    assert run.stdout is not None
    address = ""
    for line in run.stdout:
        if "the lab's registry at http://" in line:
            address = line.split("http://", 1)[1].split()[0]
            assert listening(address)
            if end == "SIGINT":
                time.sleep(3)  # its machine is booting by now
                run.send_signal(signal.SIGINT)
    run.wait(120)
    assert address, "the run's header names no registry"
    assert not listening(address), f"the run ({end}) left its registry listening at {address}"
    assert survivors(tag) == [], f"the run ({end}) left processes behind"
