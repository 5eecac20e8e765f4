"""The nightly matrix as data (`matrix.yml`), validated once.

A cell is one CI job: platform x arch x image x hardware profile x scenario selection,
with its timeout, budgets file and the secrets it needs (by name). Known failures carry
a scenario id, a tracker link and an expiry date; an expired entry is an error that
names it, so a snoozed failure cannot be forgotten. Allowed flakes name the scenarios
whose pass on a rerun counts as a pass.

Platform and arch names are checked against the code (`drivers.PLATFORMS` and each
driver's capabilities), so the check stays true as platforms land.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lab.errors import ConfigError

DEFAULT_FILE = Path("matrix.yml")
CELL_ID = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")  # a CI job and artifact name as it is
SECRET_NAME = re.compile(r"[A-Z][A-Z0-9_]*")
SCENARIO_ID = re.compile(r"(?P<path>[^:\s]+\.py)::\S+")
MAX_TIMEOUT_MINUTES = 360  # GitHub-hosted runners stop any job after 6 h
MAX_CELLS = 200  # GitLab's parallel:matrix takes 200 jobs, GitHub's matrix 256
REFERENCE = "reference"  # the lab's reference image, built on first use


@dataclass(frozen=True)
class Cell:
    id: str
    platform: str
    arch: str
    image: str = REFERENCE  # "reference", "reference:FILE" (a file of that build) or a path
    hw: str | None = None  # the platform's hardware profile (libvirt: vmware)
    scenarios: tuple[str, ...] = ("scenarios/",)
    keyword: str | None = None  # pytest -k expression narrowing the selection
    budgets: str | None = None  # a budgets file instead of scenarios/budgets.yml
    timeout_minutes: int = 60
    secrets: tuple[str, ...] = ()  # environment variable names the CI job gets
    options: tuple[str, ...] = ()  # further pytest options for this platform
    cloud: bool = False  # derived: its driver leaves objects outside the host (gc after)
    setup: str = ""  # derived: what its driver needs a CI job to start first (as root)
    file_secrets: tuple[str, ...] = ()  # derived: its secrets that are a file's content

    def describe(self) -> str:
        hw = f" hw {self.hw}" if self.hw else ""
        return f"{self.platform} {self.arch} {self.image}{hw}"


@dataclass(frozen=True)
class Entry:
    """A known failure (with `expires`) or an allowed flake, for some cells or all."""

    scenario: str
    tracker: str
    cells: tuple[str, ...] = ()  # empty: every cell
    expires: dt.date | None = None

    def applies(self, cell: str) -> bool:
        return not self.cells or cell in self.cells

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["cells"] = list(self.cells)
        out["expires"] = self.expires.isoformat() if self.expires else None
        return out


@dataclass(frozen=True)
class Matrix:
    path: Path
    cells: tuple[Cell, ...]
    known_failures: tuple[Entry, ...] = ()
    allowed_flakes: tuple[Entry, ...] = ()
    defaults: Mapping[str, Any] = field(default_factory=dict)

    def cell(self, cell_id: str) -> Cell:
        for cell in self.cells:
            if cell.id == cell_id:
                return cell
        raise ConfigError(f"{self.path}: no cell {cell_id!r} (cells: "
                          f"{', '.join(c.id for c in self.cells)})")

    def where(self, filters: Iterable[str]) -> list[Cell]:
        """Cells whose fields match every `key=value`; an unknown key is an error."""
        keys = [k for k in Cell.__dataclass_fields__ if k not in ("scenarios", "secrets",
                                                                   "options")]
        chosen = list(self.cells)
        for spec in filters:
            key, sep, value = spec.partition("=")
            if not sep or key not in keys:
                raise ConfigError(f"--where {spec!r}: expected KEY=VALUE with KEY one of "
                                  f"{', '.join(keys)}")
            chosen = [c for c in chosen if str(getattr(c, key)).lower() == value.lower()]
        return chosen

    def policy(self, cell: str) -> dict[str, list[dict[str, Any]]]:
        """What the report needs to judge a cell's results without the matrix file."""
        return {"known_failures": [e.to_json() for e in self.known_failures if e.applies(cell)],
                "allowed_flakes": [e.to_json() for e in self.allowed_flakes if e.applies(cell)]}


# -- loading and validation ----------------------------------------------------------------

CELL_KEYS = {f for f in Cell.__dataclass_fields__ if f not in ("cloud", "setup")}
TOP_KEYS = {"defaults", "cells", "known_failures", "allowed_flakes"}


def load(path: Path = DEFAULT_FILE, today: dt.date | None = None) -> Matrix:
    """Read and check the whole matrix; ConfigError lists every problem, each naming its
    cell (or entry), before anything runs."""
    if not path.is_file():
        raise ConfigError(f"matrix file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text("utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with `cells:`")
    problems: list[str] = [f"unknown top-level key {k!r} (known: {', '.join(sorted(TOP_KEYS))})"
                           for k in data if k not in TOP_KEYS]
    root = path.resolve().parent  # scenario paths are relative to the matrix file
    defaults = data.get("defaults") or {}
    if not isinstance(defaults, dict):
        problems.append("defaults: expected a mapping")
        defaults = {}
    problems += [f"defaults: unknown key {k!r}" for k in defaults if k not in CELL_KEYS]
    raw_cells = data.get("cells")
    if not isinstance(raw_cells, list) or not raw_cells:
        problems.append("cells: expected a non-empty list")
        raw_cells = []
    cells: list[Cell] = []
    for index, raw in enumerate(raw_cells):
        cell, cell_problems = _cell({**defaults, **raw} if isinstance(raw, dict) else raw,
                                    index, root)
        problems += cell_problems
        if cell is not None:
            if any(c.id == cell.id for c in cells):
                problems.append(f"cell {cell.id!r}: the id is used twice")
            cells.append(cell)
    if len(cells) > MAX_CELLS:
        problems.append(f"cells: {len(cells)} cells, more than a CI matrix takes ({MAX_CELLS})")
    ids = {c.id for c in cells}
    today = today or dt.datetime.now(dt.UTC).date()
    known = _entries(data.get("known_failures"), "known_failures", ids, root, problems,
                     today, needs_expiry=True)
    flakes = _entries(data.get("allowed_flakes"), "allowed_flakes", ids, root, problems,
                      today, needs_expiry=False)
    if problems:
        raise ConfigError(f"{path} refused:\n  " + "\n  ".join(problems))
    return Matrix(path, tuple(cells), tuple(known), tuple(flakes), defaults)


def _cell(raw: Any, index: int, root: Path) -> tuple[Cell | None, list[str]]:
    from drivers import PLATFORMS, driver_class

    if not isinstance(raw, dict):
        return None, [f"cell #{index + 1}: expected a mapping, got {raw!r}"]
    cid = raw.get("id")
    name = f"cell {cid!r}" if cid else f"cell #{index + 1}"
    problems = [f"{name}: unknown key {k!r} (known: {', '.join(sorted(CELL_KEYS))})"
                for k in raw if k not in CELL_KEYS]
    if not isinstance(cid, str) or not CELL_ID.fullmatch(cid):
        problems.append(f"{name}: `id` must be lower-case letters, digits, - and _ "
                        "(it names the CI job and its artifact)")
    for key in ("platform", "arch"):
        if not isinstance(raw.get(key), str):
            problems.append(f"{name}: `{key}` is required")
    platform, arch = raw.get("platform"), raw.get("arch")
    cloud, setup, file_kinds = False, "", ()
    if isinstance(platform, str):
        if platform not in PLATFORMS:
            problems.append(f"{name}: unknown platform {platform!r} (implemented: "
                            f"{', '.join(sorted(PLATFORMS))})")
        else:
            cls = driver_class(platform)
            cloud, setup, file_kinds = cls.leaves_garbage, cls.ci_setup, cls.file_secrets
            if isinstance(arch, str) and arch not in cls.capabilities.arches:
                problems.append(f"{name}: platform {platform} boots "
                                f"{', '.join(cls.capabilities.arches)}, not {arch!r}")
    scenarios = _strings(raw.get("scenarios", Cell.scenarios), f"{name}: scenarios", problems)
    for sel in scenarios:
        if not (root / sel.split("::")[0]).exists():
            problems.append(f"{name}: scenario selection {sel!r} does not exist under {root}")
    secrets = _strings(raw.get("secrets", ()), f"{name}: secrets", problems)
    for secret in secrets:
        if not SECRET_NAME.fullmatch(secret) or secret.startswith("GITHUB_"):
            problems.append(f"{name}: secret {secret!r} is not a secret's name (upper-case "
                            "letters, digits, _; not GITHUB_*): name secrets, never paste values")
    timeout = raw.get("timeout_minutes", Cell.timeout_minutes)
    if not isinstance(timeout, int) or isinstance(timeout, bool) or \
            not 1 <= timeout <= MAX_TIMEOUT_MINUTES:
        problems.append(f"{name}: timeout_minutes must be an integer 1..{MAX_TIMEOUT_MINUTES}")
    budgets = raw.get("budgets")
    if budgets is not None and not (isinstance(budgets, str) and (root / budgets).is_file()):
        problems.append(f"{name}: budgets file {budgets!r} does not exist under {root}")
    for key in ("image", "hw", "keyword"):
        if key in raw and not (isinstance(raw[key], str) and raw[key].strip()):
            problems.append(f"{name}: `{key}` must be a non-empty string")
    options = _strings(raw.get("options", ()), f"{name}: options", problems)
    if problems:
        return None, problems
    return Cell(id=cid, platform=platform, arch=arch, image=raw.get("image", REFERENCE),
                hw=raw.get("hw"), scenarios=scenarios, keyword=raw.get("keyword"),
                budgets=budgets, timeout_minutes=timeout, secrets=secrets, options=options,
                cloud=cloud, setup=setup,
                file_secrets=tuple(s for s in secrets if s in file_kinds)), []


def _strings(value: Any, what: str, problems: list[str]) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        problems.append(f"{what}: expected a list of strings")
        return ()
    return tuple(value)


def _entries(raw: Any, section: str, ids: set[str], root: Path, problems: list[str],
             today: dt.date, needs_expiry: bool) -> list[Entry]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        problems.append(f"{section}: expected a list")
        return []
    out = []
    for index, item in enumerate(raw):
        if not isinstance(item, dict):
            problems.append(f"{section} #{index + 1}: expected a mapping")
            continue
        scenario = item.get("scenario")
        cells = _strings(item.get("cells", ()), f"{section} #{index + 1}: cells", problems)
        where = ", ".join(f"cell {c!r}" for c in cells) or "every cell"
        name = f"{section} {scenario!r} ({where})"
        allowed = {"scenario", "tracker", "cells"} | ({"expires"} if needs_expiry else set())
        problems += [f"{name}: unknown key {k!r}" for k in item if k not in allowed]
        match = SCENARIO_ID.fullmatch(scenario) if isinstance(scenario, str) else None
        if match is None:
            problems.append(f"{name}: `scenario` must be a pytest id, "
                            "e.g. scenarios/test_boot.py::test_reaches_every_boot_milestone")
        elif not (root / match["path"]).is_file():
            problems.append(f"{name}: {match['path']} does not exist")
        tracker = item.get("tracker")
        if not isinstance(tracker, str) or not re.match(r"https?://\S+$", tracker):
            problems.append(f"{name}: `tracker` must be the issue's http(s) link")
        problems += [f"{name}: no cell {c!r} in this matrix" for c in cells if c not in ids]
        expires = item.get("expires")
        if needs_expiry:
            if not isinstance(expires, dt.date):
                problems.append(f"{name}: `expires` must be a date (YYYY-MM-DD)")
                expires = None
            elif expires < today:
                problems.append(f"{name}: expired on {expires.isoformat()} ({tracker}): fix "
                                "the failure or renew the entry with a new date")
        out.append(Entry(scenario=str(scenario), tracker=str(tracker), cells=cells,
                         expires=expires if needs_expiry else None))
    return out
