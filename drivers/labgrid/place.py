"""The labgrid coordinator, as the driver uses it: a session on its own asyncio loop,
acquiring and releasing a place (with the holder marks `roslab gc` reads, labgrid having
no lease), and what a place, or a labgrid environment file's target, says about its box
(its resource classes and tags) without acquiring it."""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from lab import gc
from lab.errors import ConfigError, PlatformError

T = TypeVar("T")
DEFAULT_COORDINATOR = "127.0.0.1:20408"
PLACE_POLL_SECONDS = 1.0
# the place's tags while a roslab run holds it (labgrid has no lease): `roslab gc` releases
# a place held by this host/user whose holder process is dead
HOLDER_TAG, RUN_TAG = "roslab_holder", "roslab_run"


class PlaceTaken(PlatformError):
    """The place is held by someone else."""


def import_labgrid() -> Any:
    try:
        import labgrid  # noqa: F401

        import drivers.labgrid.parts  # noqa: F401 -- registers IPMIPowerDriver etc.
    except ImportError as exc:
        raise ConfigError(f"--platform labgrid needs labgrid 26: pip install 'roslab[labgrid]' "
                          f"({exc})") from exc


def check_options(options: dict[str, Any]) -> dict[str, Any]:
    place, env = options.get("place"), options.get("labgrid_env")
    if not place and not env:
        raise ConfigError("--platform labgrid needs --place NAME (a place on the coordinator) "
                          "or --labgrid-env FILE (a labgrid environment file)")
    return options


def keeps_root_logging(method: Callable[..., T]) -> Callable[..., T]:
    """labgrid's client logs through the root logger's module functions (logging.error),
    which install a stderr handler on first use: later, every library's warnings (a
    paramiko banner retry while sshd starts) would print. Undo that after each call."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        root = logging.getLogger()
        before = list(root.handlers)
        try:
            return method(*args, **kwargs)
        finally:
            for handler in [h for h in root.handlers if h not in before]:
                root.removeHandler(handler)

    return wrapper


class Session:
    """One coordinator session on its own asyncio loop (labgrid's client is async)."""

    @keeps_root_logging
    def __init__(self, address: str) -> None:
        import asyncio

        from labgrid.remote.client import start_session

        self.address = address
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)  # gRPC's channel binds to the current loop
        try:
            self.session = start_session(address, loop=self.loop, extra={
                "args": argparse.Namespace(allow_unmatched=False, kick=False, place=None,
                                           acquired=None)})
        except Exception as exc:
            self._close_loop()
            raise PlatformError(f"the labgrid coordinator at {address} does not answer "
                                f"({type(exc).__name__}: {exc or 'timed out'}): is "
                                f"labgrid-coordinator running there?") from None

    @property
    def me(self) -> str:
        return f"{self.session.gethostname()}/{self.session.getuser()}"

    @keeps_root_logging
    def sync(self) -> None:
        self.loop.run_until_complete(self.session.sync_with_coordinator())

    def place(self, name: str) -> Any:
        place = self.session.places.get(name)
        if place is None:
            known = ", ".join(sorted(self.session.places)) or "none"
            raise ConfigError(f"no place {name!r} on the labgrid coordinator at "
                              f"{self.address} (places there: {known})")
        return place

    @keeps_root_logging
    def acquire(self, name: str, wait: float) -> None:
        """Acquire `name`, waiting up to `wait` seconds while someone else holds it."""
        deadline = time.monotonic() + wait
        self.session.args.place = name
        while True:
            self.sync()
            holder = self.place(name).acquired
            if not holder:
                try:
                    with contextlib.redirect_stdout(io.StringIO()):  # labgrid's CLI chatter
                        self.loop.run_until_complete(self.session.acquire())
                    self.mark(name, {HOLDER_TAG: gc.holder_token(),
                                     RUN_TAG: gc.run_id().lower().replace("-", "_")})
                    return
                except Exception as exc:  # taken between our look and our request
                    holder = self.place(name).acquired or str(exc)
            if time.monotonic() >= deadline:
                waited = f" (waited {wait:.0f} s)" if wait else ""
                if holder == self.me and gc.holder_alive(
                        self.place(name).tags.get(HOLDER_TAG, "")) is False:
                    raise PlaceTaken(f"place {name!r} is still held by {holder} for a roslab "
                                     f"run that died: `roslab gc --platform labgrid` "
                                     f"releases it")
                raise PlaceTaken(f"place {name!r} is held by {holder}{waited}: wait for it "
                                 f"with --wait-place SECONDS, or ask {holder} to release it")
            time.sleep(PLACE_POLL_SECONDS)

    @keeps_root_logging
    def release(self, name: str) -> None:
        self.sync()
        if self.place(name).acquired == self.me:
            self.mark(name, {HOLDER_TAG: "", RUN_TAG: ""})
            self.session.args.place = name
            with contextlib.redirect_stdout(io.StringIO()):
                self.loop.run_until_complete(self.session.release())

    @keeps_root_logging
    def mark(self, name: str, tags: dict[str, str]) -> None:
        """Set (or with "" remove) the place's tags: the holder marks `roslab gc` reads."""
        self.session.args.place = name
        self.session.args.tags = [f"{k}={v}" for k, v in tags.items()]
        self.loop.run_until_complete(self.session.set_tags())

    @keeps_root_logging
    def close(self) -> None:
        with contextlib.suppress(Exception):
            if getattr(self.session, "pump_task", None) is not None:
                self.loop.run_until_complete(self.session.stop())
            self.loop.run_until_complete(self.session.close())
        self._close_loop()

    def _close_loop(self) -> None:
        """Close our loop and stop it being the thread's current one: a closed current
        loop breaks whatever asyncio user comes next in this process (QEMU's QMP)."""
        import asyncio

        self.loop.close()
        asyncio.set_event_loop(None)


def place_facts(options: dict[str, Any]) -> tuple[set[str], dict[str, str]]:
    """(resource classes, tags) of the place or environment target, without acquiring."""
    import_labgrid()
    check_options(options)
    place = options.get("place")
    if options.get("labgrid_env") and not place:
        config = env_target_config(options)
        place = env_remote_place(config)
        if not place:  # a box wired to this host
            return set(env_resources(config)), dict(config.get("tags") or {})
        options = {**options, "labgrid_coordinator": env_coordinator(options)}
    session = Session(coordinator_address(options))
    try:
        found = session.place(place)
        classes = {m.cls for m in found.matches}
        for exporter, groups in session.session.resources.items():
            for group_name, group in groups.items():
                for resource_name, resource in group.items():
                    if found.getmatch((exporter, group_name, resource.cls, resource_name)):
                        classes.add(resource.cls)
        return {c for c in classes if c != "*"}, dict(found.tags)
    finally:
        session.close()


def env_remote_place(config: dict[str, Any]) -> str:
    """The place an environment target names by a RemotePlace resource ("" for none)."""
    from labgrid.factory import target_factory

    resources, _ = target_factory.normalize_config(config)
    return next(iter(resources.get("RemotePlace", {})), "")


def env_coordinator(options: dict[str, Any]) -> str:
    """The environment file's `coordinator_address` option, else the usual default."""
    from labgrid.environment import Environment

    return Environment(str(options["labgrid_env"])).config.get_option(
        "coordinator_address", coordinator_address(options))


def coordinator_address(options: dict[str, Any]) -> str:
    return (options.get("labgrid_coordinator") or os.environ.get("LG_COORDINATOR")
            or DEFAULT_COORDINATOR)


def env_target_config(options: dict[str, Any]) -> dict[str, Any]:
    from labgrid.environment import Environment

    path = Path(options["labgrid_env"])
    if not path.is_file():
        raise ConfigError(f"--labgrid-env {path}: no such file")
    try:
        targets = Environment(str(path)).config.get_targets()
    except Exception as exc:
        raise ConfigError(f"--labgrid-env {path}: {exc}") from exc
    role = options.get("labgrid_role") or "main"
    if role not in targets:
        raise ConfigError(f"--labgrid-env {path} has no target {role!r} (has: "
                          f"{', '.join(targets) or 'none'}); pick one with --labgrid-role")
    return targets[role] or {}


def env_resources(config: dict[str, Any]) -> list[str]:
    from labgrid.factory import target_factory

    resources, _ = target_factory.normalize_config(config)
    return list(resources)
