"""`make_machine`: a platform name, an image and options -> a checked, unbooted `Machine`.

Everything a user can get wrong (platform, image, arch, cloud-config, datasource, an
option's name) is refused here, before anything starts. The reference image is the
default image: it is built on first use (`refimage.build.ensure_image`), then taken like
any other image.
"""

from __future__ import annotations

import dataclasses
import re
import secrets
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drivers import driver_class
from lab.cloudconfig import DATASOURCES, METADATA_DATASOURCES, CloudConfig
from lab.driver import MachineSpec
from lab.errors import ConfigError, ImageError
from lab.images import CMDLINE_KINDS, Image, datasource_gap
from lab.machine import (
    BAKED_PASSWORD,
    DEFAULT_BOOT_TIMEOUT,
    DEFAULT_CPUS,
    DEFAULT_MEMORY_MB,
    RUN_PASSWORD,
    Machine,
)
from lab.redact import keep_cloud_config_secrets, redact
from lab.registry import Registry, mirror_cloud_config
from lab.ssh import KeyPair


@dataclass(frozen=True)
class MachineOptions:
    """What a caller may ask of a machine beyond platform, image and cloud-config."""

    # merged into ssh_authorized_keys, or served as the instance's key pair by a cloud
    # metadata datasource
    ssh_key: KeyPair | None = None
    allow_invalid: bool = False  # deliver a malformed cloud-config on purpose
    memory_mb: int = DEFAULT_MEMORY_MB
    cpus: int | None = None  # None: DEFAULT_CPUS, or fewer where the platform must
    cmdline_extra: tuple[str, ...] = ()
    blank_disks: tuple[int, ...] = ()  # sizes in bytes
    extra_nics: tuple[str, ...] = ()  # MACs of the NICs after the first
    keep_on_exit: bool = False
    boot_timeout: float = DEFAULT_BOOT_TIMEOUT
    progress: Callable[[str], None] | None = None  # the reference image build's
    name: str | None = None
    platform_options: dict[str, Any] = field(default_factory=dict)  # region, hw, ...
    # the port of the lab's registry on this host: both of the guest's Dockers use it as
    # their mirror, where the platform's machines reach this host (lab/registry.py)
    registry_port: int | None = None

    @classmethod
    def of(cls, opts: dict[str, Any]) -> MachineOptions:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(opts) - known)
        if unknown:  # a misspelt option would otherwise be silently ignored
            raise ConfigError(f"make_machine: unknown option(s) {', '.join(unknown)}; "
                              f"known are {', '.join(sorted(known))}")
        given = {k: v for k, v in opts.items() if v is not None or k == "ssh_key"}
        for name in ("cmdline_extra", "blank_disks", "extra_nics"):
            if name in given:
                given[name] = tuple(given[name])
        if "platform_options" in given:
            given["platform_options"] = dict(given["platform_options"])
        return cls(**given)


def start_registry(platform: str, datasource: str, options: dict[str, Any],
                   say: Callable[[str], None] = lambda _: None) -> Registry | None:
    """The lab's registry for machines of `platform`, started and holding the lab's own
    images (put in once); None where its machines use their own network (a cloud, a box).
    The caller stops it."""
    route = driver_class(platform).host_address_for_guest(datasource, options)
    if route is None:
        return None
    registry = Registry(listen=route.listen).start()
    try:
        if registry.manifest("busybox:latest") is None:
            from refimage.registry_images import seed

            if added := seed(registry, say=say):
                say(f"registry: added {', '.join(added)}")
    except BaseException:
        registry.stop()
        raise
    return registry


def resolve_image(image: Path | str | None, arch: str,
                  progress: Callable[[str], None] | None = None,
                  platform: str = "qemu", options: dict[str, Any] | None = None) -> Image:
    """The user's image, or the reference image (built on first use): its folder, or the
    release file the platform's options boot (libvirt's vmware hardware: the VMware ISO)."""
    if image is None:
        try:
            from refimage.build import ensure_image
        except ImportError as exc:
            raise ImageError(f"no --image given and the reference image builder is "
                             f"unavailable ({exc})") from exc
        folder = ensure_image(arch, progress=progress)
        member = driver_class(platform).reference_artifact(options or {})
        from refimage.disks import NAMES, ensure_disks

        if member in NAMES:  # a cloud's disk: an opt-in part of the build, made on first use
            ensure_disks(folder, progress=progress)
        image = folder / member if member else folder
        if not image.exists():
            raise ImageError(f"the {arch} reference image has no {member} (in {folder})")
    return Image.open(image)


def safe_cpus(platform: str, arch: str, accel: str, cpus: int) -> tuple[int, str | None]:
    """(`cpus`, None), or fewer with the reason when `platform` cannot safely give an
    `arch` guest that many under `accel` (`Driver.most_cpus`)."""
    most = driver_class(platform).most_cpus(arch, accel)
    return most if most is not None and most[0] < cpus else (cpus, None)


_MAC = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")


def check_macs(macs: tuple[str, ...]) -> None:
    """Refuse what a NIC cannot be given: a malformed, multicast or repeated MAC."""
    for mac in macs:
        if not _MAC.fullmatch(mac):
            raise ConfigError(f"extra_nics: {mac!r} is not a MAC address (six lower-case hex "
                              f"pairs joined by ':', like 52:54:00:12:34:59)")
        if int(mac[:2], 16) & 1:
            raise ConfigError(f"extra_nics: {mac} is a multicast address; a NIC needs a "
                              f"unicast one (the first byte even)")
    if len(set(macs)) != len(macs):
        raise ConfigError(f"extra_nics: a MAC is given twice in {', '.join(macs)}")


def make_machine(platform: str, image: Path | str | Image | None, arch: str,
                 cloud_config: str | dict[str, Any] | CloudConfig | None,
                 datasource: str, workdir: Path, accel: str, **opts: Any) -> Machine:
    """Check everything, then make (not boot) a machine in a new directory under `workdir`.

    `opts` are `MachineOptions` fields; an unknown one is refused.
    """
    o = MachineOptions.of(opts)
    cls = driver_class(platform)
    if arch not in cls.capabilities.arches:
        raise ConfigError(f"platform {platform} boots {', '.join(cls.capabilities.arches)}, "
                          f"not {arch!r}")
    img = image if isinstance(image, Image) else resolve_image(
        image, arch, o.progress, platform, o.platform_options)
    img.check_arch(arch)
    caps = cls.capabilities_for(img, arch)
    where = f"platform {platform}" + (f" (board {caps.board})" if caps.board else "")
    if img.kind not in caps.image_kinds:
        raise ImageError(f"{where} cannot boot a {img.kind} image ({img.path})")
    if o.blank_disks and caps.lacks("disks"):
        raise ConfigError(f"{where} cannot attach blank disks: {caps.lacks('disks')}")
    if o.extra_nics:
        if caps.lacks("extra_nics"):
            raise ConfigError(f"{where} cannot give the guest more network interfaces: "
                              f"{caps.lacks('extra_nics')}")
        check_macs(o.extra_nics)
    if datasource == "default":
        datasource = caps.datasources[0] if caps.datasources else "none"
    if datasource not in (*DATASOURCES, *caps.datasources, "none"):
        raise ConfigError(f"unknown datasource {datasource!r}: known are {', '.join(DATASOURCES)}")
    if datasource not in (*caps.datasources, "none"):
        raise ConfigError(f"{where} cannot deliver cloud-config by {datasource}: it can by "
                          f"{', '.join(caps.datasources)}")
    if (gap := datasource_gap(img, datasource)) is not None:
        raise ConfigError(gap)
    cc = cloud_config if isinstance(cloud_config, CloudConfig) else (
        None if cloud_config is None
        else CloudConfig.parse(cloud_config, allow_invalid=o.allow_invalid))
    instance_keys: list[str] = []
    if o.ssh_key is not None and datasource in METADATA_DATASOURCES and \
            cls.delivers_instance_keys:
        instance_keys = [o.ssh_key.public]  # the cloud's key pair, served as metadata
    elif o.ssh_key is not None and cc is not None and cc.script:
        raise ConfigError(f"a user-data script carries no SSH key and {where} serves none by "
                          f"the {datasource} datasource: deliver the script by a cloud's "
                          f"metadata datasource ({', '.join(METADATA_DATASOURCES)}), which "
                          f"serves the key pair beside it")
    elif o.ssh_key is not None:
        extra = {"ssh_authorized_keys": [o.ssh_key.public]}
        cc = CloudConfig.parse(extra) if cc is None else cc.merged(extra)
    route = cls.host_address_for_guest(datasource, o.platform_options) \
        if o.registry_port else None
    if route is not None:
        mirror = mirror_cloud_config(f"{route.guest}:{o.registry_port}")
        cc = CloudConfig.parse(mirror) if cc is None else cc.merged(mirror)
    driver = cls()
    name = o.name or f"{platform}-{arch}-{secrets.token_hex(3)}"
    workdir = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=workdir))
    try:
        accel_used, why = driver.resolve_accel(accel, img, workdir)
        # the default is no more than the platform safely gives; an explicit count is as asked
        cpus = o.cpus if o.cpus is not None else safe_cpus(platform, arch, accel_used,
                                                           DEFAULT_CPUS)[0]
        if cc is not None:
            keep_cloud_config_secrets(cc.data)
            (workdir / "cloud-config.yml").write_text(redact(cc.text))  # evidence, not input
        password = RUN_PASSWORD if img.kind in CMDLINE_KINDS else BAKED_PASSWORD
        spec = MachineSpec(
            name=name, arch=arch, image=img, workdir=workdir, cloud_config=cc,
            # a cloud's metadata service answers even for an instance without user-data
            datasource=datasource if cc is not None or datasource in METADATA_DATASOURCES
            else "none",
            password=password, ssh_keys=instance_keys,
            accel=accel_used, memory_mb=o.memory_mb, cpus=cpus,
            cmdline_extra=list(o.cmdline_extra), blank_disks=list(o.blank_disks),
            extra_nics=list(o.extra_nics),
            keep_on_exit=o.keep_on_exit, options=dict(o.platform_options),
        )
        return Machine(driver, spec, platform, img, o.ssh_key, password, why, o.boot_timeout)
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
