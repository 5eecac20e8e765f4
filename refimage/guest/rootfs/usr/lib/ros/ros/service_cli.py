"""`ros service` (alias `s`): optional services turned on and off in
rancher.services_include, and the OS's service containers under the system Docker."""

from __future__ import annotations

import sys

from ros import catalogue, config, config_cli, services
from ros.docker_api import Docker, DockerError

INCLUDE = "rancher.services_include"


class ServiceError(Exception):
    pass


def _includes(cfg: dict) -> dict:
    return dict(config.get(cfg, INCLUDE) or {})


def _validate(name: str) -> None:
    if catalogue.is_local(name):
        if not name.startswith(catalogue.LOCAL_PREFIX):
            raise ServiceError(f"ERROR: Service should be in path {catalogue.LOCAL_PREFIX}")
    elif name not in catalogue.available():
        raise ServiceError(f"{name} is not a valid service")


def service_list(show_all: bool) -> int:
    """As RancherOS prints it: `enabled  NAME` / `disabled NAME` for the optional services
    (and, with --all, every service of the OS as enabled)."""
    cfg = config.load()
    lines = [f"enabled  {name}" for name in services.declared(cfg)] if show_all else []
    include = _includes(cfg)
    for name in catalogue.available() + [n for n in include if n not in catalogue.available()]:
        lines.append(f"{'enabled ' if include.get(name) is True else 'disabled'} {name}")
    print("\n".join(lines))
    return 0


def enable(names: list[str]) -> int:
    include = _includes(config.load())
    for name in names:
        _validate(name)
        include[name] = True
    config_cli.set_value(INCLUDE, include)
    return 0


def disable(names: list[str], delete: bool = False) -> int:
    include = _includes(config.load())
    changed = False
    for name in names:
        _validate(name)
        if name in include:
            if delete:
                del include[name]
            else:
                include[name] = False
            changed = True
    if changed:
        config_cli.set_value(INCLUDE, include)
    return 0


def _specs(names: list[str]) -> dict[str, dict]:
    declared = services.declared(config.load())
    unknown = [n for n in names if n not in declared]
    if unknown:
        raise ServiceError(f"no such service: {', '.join(unknown)} (an optional service "
                           "starts once enabled: sudo ros service enable NAME)")
    return {n: declared[n] for n in names or declared}


def up(names: list[str]) -> int:
    """Create what is missing and start it (one-shots: wait for them), in the order given."""
    docker = Docker()
    env = {str(k): str(v) for k, v in (config.get(config.load(), "rancher.environment")
                                       or {}).items()}
    for name, spec in _specs(names).items():
        labels = spec.get("labels") or {}
        existing = docker.inspect(name)
        if existing is None:
            docker.create(name, services.container_config(name, spec, env))
        if str(labels.get(services.CREATEONLY, "false")) == "true":
            continue
        if not (existing and existing["State"]["Running"]):
            docker.start(name)
        if str(labels.get(services.DETACH, "true")) == "false" and docker.wait(name) != 0:
            raise ServiceError(f"{name} failed: {docker.logs(name, 5).strip()}")
    return 0


def stop(names: list[str], action: str) -> int:
    docker = Docker()
    for name in _specs(names):
        if docker.inspect(name) is None:
            continue
        if action == "stop":
            docker.stop(name)
        elif action == "restart":
            docker.request("POST", f"/containers/{name}/restart", params={"t": "10"})
        else:  # rm: stopped service containers go, running ones stay (as compose rm)
            if not docker.inspect(name)["State"]["Running"]:
                docker.remove(name)
    return 0


def logs(names: list[str], tail: int) -> int:
    docker = Docker()
    for name in _specs(names):
        if docker.inspect(name) is not None:
            sys.stdout.write(docker.logs(name, tail))
    return 0


def ps(names: list[str]) -> int:
    """Name, Command, State (the Docker status: `Up 3 minutes`, `Exited (0) ...`), Ports."""
    wanted = _specs(names)
    rows = [("Name", "Command", "State", "Ports")]
    for c in Docker().containers(all=True):
        name = c["Names"][0].lstrip("/")
        if name in wanted:
            ports = ", ".join(f"{p.get('PublicPort', '')}->{p['PrivatePort']}/{p['Type']}"
                              for p in c.get("Ports") or [])
            rows.append((name, c.get("Command", ""), c.get("Status", ""), ports))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for row in rows:
        cells = [cell.ljust(w) for cell, w in zip(row[:3], widths, strict=True)]
        print("  ".join([*cells, row[3]]))
    return 0


def run(args) -> int:  # type: ignore[no-untyped-def]
    try:
        if args.sub == "list":
            return service_list(args.all)
        if args.sub == "enable":
            return enable(args.services)
        if args.sub in ("disable", "delete"):
            return disable(args.services, delete=args.sub == "delete")
        if args.sub in ("up", "start"):
            return up(args.services)
        if args.sub in ("stop", "restart", "rm"):
            return stop(args.services, args.sub)
        if args.sub == "logs":
            return logs(args.services, args.tail)
        return ps(args.services)
    except (ServiceError, DockerError) as exc:
        print(f"ros service {args.sub}: {exc}", file=sys.stderr)
        return 1
