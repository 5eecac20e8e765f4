"""System services: compose v1 definitions -> system Docker containers, started in order."""

from __future__ import annotations

import contextlib
import fnmatch
import glob
import os
import platform
import shlex
import threading
import time

from ros import catalogue, config, lazy
from ros.docker_api import Docker, DockerError

cloudinit = lazy("ros.cloudinit")
commands = lazy("ros.commands")

AFTER = "io.rancher.os.after"
DETACH = "io.rancher.os.detach"
CREATEONLY = "io.rancher.os.createonly"
RELOAD = "io.rancher.os.reloadconfig"
ARCH = "io.roslab.arch"
IMAGES = "/usr/share/ros/images"


def uptime() -> float:
    with open("/proc/uptime") as fh:
        return float(fh.read().split()[0])


def declared(cfg: dict) -> dict[str, dict]:
    """The services of this machine's arch, as configured (optional ones once enabled)."""
    services = {**catalogue.included(cfg), **(config.get(cfg, "rancher.services") or {})}
    arch = platform.machine()
    return {
        name: spec
        for name, spec in services.items()
        if isinstance(spec, dict) and (spec.get("labels") or {}).get(ARCH, arch) == arch
    }


def _list(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return shlex.split(value)
    return [str(v) for v in value]


def _env(value, environment: dict[str, str]) -> list[str]:
    """A service's environment as RancherOS builds it: `K=V` as given; a bare `K` (or a
    glob such as `ETCD_*`) takes its value(s) from rancher.environment."""
    items = [f"{k}={v}" if v is not None else str(k) for k, v in value.items()] \
        if isinstance(value, dict) else [str(v) for v in value or []]
    env: dict[str, str] = {}
    for item in items:
        key, eq, val = item.partition("=")
        if eq:
            env[key] = val
        else:
            env.update({k: v for k, v in environment.items() if fnmatch.fnmatchcase(k, key)})
    return [f"{k}={v}" for k, v in env.items()]


def _restart_policy(restart) -> dict:
    """compose's `restart`: no, always, unless-stopped, on-failure[:N]."""
    name, _, retries = str(restart or "no").partition(":")
    policy: dict = {"Name": name}
    if name == "on-failure" and retries.isdigit():
        policy["MaximumRetryCount"] = int(retries)
    return policy


def container_config(name: str, spec: dict, environment: dict[str, str]) -> dict:
    """The system Docker's create body for a compose v1 service; `${VAR}` in any of its
    fields comes from `environment` (rancher.environment, proxies included)."""
    spec = config.substitute(spec, environment)
    labels = {k: str(v) for k, v in (spec.get("labels") or {}).items()}
    labels.setdefault("io.rancher.os.scope", "system")
    host = {
        "NetworkMode": spec.get("net", spec.get("network_mode", "host")),
        "Privileged": bool(spec.get("privileged", False)),
        "RestartPolicy": _restart_policy(spec.get("restart")),
        "Binds": [str(v) for v in spec.get("volumes", [])],
        "VolumesFrom": [str(v) for v in spec.get("volumes_from", [])],
        "LogConfig": {"Type": "json-file", "Config": {"max-size": "25m", "max-file": "2"}},
    }
    for key, field in (("pid", "PidMode"), ("ipc", "IpcMode"), ("uts", "UTSMode")):
        if spec.get(key):
            host[field] = spec[key]
    if spec.get("cap_add"):
        host["CapAdd"] = list(spec["cap_add"])
    if spec.get("init"):  # compose's `init: true`: docker-init is PID 1 and passes signals on
        host["Init"] = True
    body = {
        "Image": spec["image"],
        "Cmd": _list(spec.get("command")) or None,
        "Env": _env(spec.get("environment"), environment),
        "Labels": labels,
        "HostConfig": host,
        "Tty": bool(spec.get("tty", False)),
    }
    if spec.get("entrypoint") is not None:
        body["Entrypoint"] = _list(spec["entrypoint"])
    return body


def load_system_images(docker: Docker) -> None:
    """Load the preloaded service images, then drop the tarballs: the root is in RAM."""
    for tar in sorted(glob.glob(f"{IMAGES}/*.tar")):
        docker.load(tar)
        os.unlink(tar)


class Starter:
    """Starts services as soon as the services they come after are up (one-shots: exited 0)."""

    def __init__(self, docker: Docker) -> None:
        self.docker = docker
        self.cfg = config.load()
        self.services = declared(self.cfg)
        self.done: dict[str, bool] = {}  # name -> succeeded
        self.started_at: dict[str, float] = {}
        self.lock = threading.Condition()
        self.t0 = time.monotonic()

    def deps(self, name: str) -> list[str]:
        spec = self.services[name]
        after = _list(str((spec.get("labels") or {}).get(AFTER, "")).replace(",", " "))
        return [d for d in after + _list(spec.get("volumes_from")) if d]

    def run(self) -> list[str]:
        """Start everything; returns the names of services that failed."""
        launched: set[str] = set()
        threads = []
        with self.lock:
            while True:
                pending = [n for n in self.services if n not in launched]
                if not pending:
                    break
                progressed = False
                for name in pending:
                    deps = self.deps(name)
                    if any(d in self.done and not self.done[d] for d in deps) or any(
                        d not in self.services for d in deps
                    ):
                        launched.add(name)
                        missing = [d for d in deps if d not in self.services or not self.done[d]]
                        self._fail(name, f"not started: it comes after {', '.join(missing)}")
                        progressed = True
                    elif all(self.done.get(d) for d in deps):
                        launched.add(name)
                        t = threading.Thread(target=self._start, args=(name,), daemon=True)
                        t.start()
                        threads.append(t)
                        progressed = True
                if not progressed:
                    if len(self.done) == len(launched):
                        # nothing running can unblock the rest: a cycle or missing service
                        for name in self.services:
                            if name not in launched:
                                launched.add(name)
                                self._fail(name, "not started: its dependencies never came up")
                        continue
                    self.lock.wait()
        for t in threads:
            t.join()
        return [n for n, ok in self.done.items() if not ok]

    def _fail(self, name: str, why: str) -> None:
        self.done[name] = False
        config.console_print(f"ros: service {name} failed: {why}")
        config.boot_log("sysinit", f"{name}: FAILED {why}")

    def _start(self, name: str) -> None:
        spec = self.services[name]
        labels = spec.get("labels") or {}
        ok, why = True, ""
        try:
            existing = self.docker.inspect(name)
            if existing is None:
                env = config.environment(self.cfg)
                self.docker.create(name, container_config(name, spec, env))
                # write_files with `container: NAME` land in it before it first starts
                cloudinit.write_container_files(self.docker, self.cfg, name)
            if str(labels.get(CREATEONLY, "false")) != "true":
                if not (existing and existing["State"]["Running"]):
                    self.docker.start(name)
                if str(labels.get(DETACH, "true")) == "false":
                    code = self.docker.wait(name)
                    if code != 0:
                        ok, why = False, f"exited {code}: {self.docker.logs(name, 5).strip()}"
        except (DockerError, OSError, KeyError) as exc:
            ok, why = False, str(exc)
        except Exception as exc:  # a bug here fails this service; it must not hang the boot
            ok, why = False, f"{type(exc).__name__}: {exc}"
        with self.lock:
            if ok and str(labels.get(RELOAD, "false")) == "true":
                self._reload()
            if ok:
                self.done[name] = True
                config.boot_log("sysinit", f"{name}: up at {uptime():.2f}s uptime")
            else:
                self._fail(name, why)
            self.lock.notify_all()

    def _reload(self) -> None:
        """Re-read the config after cloud-init: user services and settings join the plan."""
        self.cfg = config.load()
        commands.apply_system_docker_registry(self.cfg)
        for name, spec in declared(self.cfg).items():
            if name not in self.services:
                self.services[name] = spec


def sysinit() -> int:
    docker = Docker()
    if not docker.wait_ready(120):
        config.console_print(
            "ros: the system Docker did not answer within 120 s; see /var/log/system-docker.log"
        )
        return 1
    config.boot_log("sysinit", f"system-docker answering at {uptime():.2f}s uptime")
    try:
        commands.apply_system_docker_registry(config.load())  # from the cmdline, a saved config
        load_system_images(docker)
        config.boot_log("sysinit", f"system images loaded at {uptime():.2f}s uptime")
        # images the user preloads for the system Docker (kept on the state partition)
        commands.load_preloaded(docker, f"{commands.PRELOAD}/system-docker")
    except (DockerError, OSError) as exc:
        config.console_print(f"ros: loading the system images failed: {exc}")
        return 1
    failed = Starter(docker).run()
    rel = config.os_release()
    if failed:
        config.console_print(f"ros: failed services: {', '.join(sorted(failed))}")
    config.console_print(f"{rel.get('NAME', 'RoslabOS')} {rel.get('VERSION', '')} started")
    return 1 if failed else 0


STOP_TIMEOUT = 10  # s a service has to exit on SIGTERM before it is killed


def shutdown() -> int:
    """Power-button action: stop services cleanly (newest first), then power off."""
    config.console_print("ros: power button pressed, shutting down")
    docker = Docker(timeout=30)
    me = os.environ.get("HOSTNAME", "")
    try:
        running = [c for c in docker.containers(all=False) if c["Id"][:12] != me[:12]]
        for c in sorted(running, key=lambda c: c["Created"], reverse=True):
            if c["Names"][0].lstrip("/") in ("acpid",):
                continue
            with contextlib.suppress(DockerError):
                docker.stop(c["Id"], timeout=STOP_TIMEOUT)
                state = (docker.inspect(c["Id"]) or {}).get("State", {})
                if state.get("ExitCode") == 137 and not state.get("OOMKilled"):
                    config.console_print(f"ros: {c['Names'][0].lstrip('/')} did not stop on "
                                         f"SIGTERM within {STOP_TIMEOUT} s and was killed")
    except (DockerError, OSError) as exc:
        config.console_print(f"ros: stopping services failed: {exc}")
    os.sync()
    config.console_print("ros: system halted, powering off")
    os.execv("/usr/bin/busybox", ["poweroff", "-f"])
    return 0
