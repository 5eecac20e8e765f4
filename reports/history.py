"""Bench history: JSON Lines, one boot per line, append-only.

Why this format: a line per boot survives a crash mid-run (at worst the last line is
cut, and readers skip it), files from many machines merge by concatenation plus a
dedup on `id`, and every record carries its own context (host, date, platform, arch,
image version), so a record means the same thing wherever it ends up. Records are
plain dicts: readers keep fields they do not know (newer schema versions) and
`merge` passes them through untouched, so an old lab never destroys new data.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import tempfile
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lab.errors import ConfigError

SCHEMA = 1  # bump on an incompatible change; readers keep records of any version

Record = dict[str, Any]

# Image files whose sizes a bench records when the image folder holds them (the
# reference image issue asks bench to print initrd and ISO sizes).
SIZE_PATTERNS = {"initrd": ("initrd*",), "vmlinuz": ("vmlinuz*",), "iso": ("*.iso",)}

# Top-level fields a `key=value` filter may name.
FILTER_KEYS = ("platform", "arch", "board", "place", "accel", "host", "image_version", "run_id",
               "ok")


def utc_now() -> str:
    """ISO 8601 UTC, second precision: sorts as text and means the same on every host."""
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def machine_context(info: Mapping[str, Any]) -> dict[str, Any]:
    """What a record and an allure label say about a machine, from `Machine.info`."""
    image = info.get("image") or info.get("image_path")
    return {
        "platform": str(info.get("platform") or "unknown"),
        "arch": str(info.get("arch") or "unknown"),
        "board": str(info.get("board") or ""),  # qemu: pc, virt or raspi3b
        "accel": str(info.get("accel") or "unknown"),
        "image": str(image) if image else None,
        "image_version": str(info.get("image_version") or "unknown"),
        # a physical box: its labgrid place (the board says what kind of box it is)
        **({"place": str(info["place"])} if info.get("place") else {}),
    }


def image_sizes(image: Path | str | None) -> dict[str, int]:
    """Bytes of initrd/vmlinuz/ISO in the image folder (or beside an image file)."""
    if not image:
        return {}
    path = Path(image)
    folder = path if path.is_dir() else path.parent
    if not folder.is_dir():
        return {}
    sizes: dict[str, int] = {}
    for name, patterns in SIZE_PATTERNS.items():
        for pattern in patterns:
            found = sorted(p for p in folder.glob(pattern) if p.is_file())
            if found:
                sizes[name] = found[0].stat().st_size
                break
    return sizes


def new_record(
    *,
    context: Mapping[str, Any],
    milestones: Mapping[str, float],
    ok: bool,
    error: str | None = None,
    run_id: str,
    boot: int,
    sizes: Mapping[str, int] | None = None,
    console_log: str | None = None,
    host: str | None = None,
    date: str | None = None,
) -> Record:
    """One boot. `milestones` are seconds since power-on (Timeline.to_dict())."""
    return {
        "schema": SCHEMA,
        "id": uuid.uuid4().hex,
        "date": date or utc_now(),
        "host": host or socket.gethostname(),
        **dict(context),
        "run_id": run_id,
        "boot": boot,
        "ok": ok,
        "error": error,
        "milestones": {k: round(float(v), 3) for k, v in milestones.items()},
        "sizes": dict(sizes or {}),
        "console_log": console_log,
    }


def append(path: Path, record: Record) -> None:
    """Append one record and make it durable now: a bench killed later keeps it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as fh:
        # A previous writer killed mid-line left no newline: start on a fresh line so
        # only that cut record is lost, not this one too.
        if fh.tell() > 0:
            with open(path, "rb") as check:
                check.seek(-1, os.SEEK_END)
                if check.read(1) != b"\n":
                    fh.write(b"\n")
        fh.write(json.dumps(record, sort_keys=True).encode() + b"\n")
        fh.flush()
        os.fsync(fh.fileno())


def iter_records(path: Path, *, warn: bool = True) -> Iterator[Record]:
    """Records of a history file; unreadable lines are skipped with a warning."""
    if not path.exists():
        raise ConfigError(f"bench history {path} does not exist")
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                if warn:
                    print(
                        f"roslab: {path}:{lineno}: skipping a cut or corrupt line", file=sys.stderr
                    )
                continue
            if isinstance(record, dict) and "id" in record:
                yield record
            elif warn:
                print(
                    f"roslab: {path}:{lineno}: skipping a line that is no record", file=sys.stderr
                )


def read(paths: Path | Iterable[Path]) -> list[Record]:
    if isinstance(paths, Path):
        paths = [paths]
    return [r for p in paths for r in iter_records(p)]


@dataclass(frozen=True)
class MergeResult:
    written: int
    duplicates: int
    conflicts: int  # same id, different content: the first one read is kept


def merge(inputs: Iterable[Path], output: Path) -> MergeResult:
    """Union of histories, deduplicated by record id, sorted by (date, id).

    Sorting makes merge order-independent (merge A B == merge B A), and the write is
    atomic so `-o` may name one of the inputs.
    """
    seen: dict[str, Record] = {}
    duplicates = conflicts = 0
    for path in inputs:
        for record in iter_records(path):
            rid = str(record["id"])
            if rid in seen:
                duplicates += 1
                conflicts += seen[rid] != record
                continue
            seen[rid] = record
    records = sorted(seen.values(), key=lambda r: (str(r.get("date", "")), str(r["id"])))
    write(output, records)
    return MergeResult(written=len(records), duplicates=duplicates, conflicts=conflicts)


def write(path: Path, records: Iterable[Record]) -> None:
    """Replace `path` with `records`, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            for record in records:
                fh.write(json.dumps(record, sort_keys=True) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def parse_filters(specs: Iterable[str]) -> list[tuple[str, str, str]]:
    """`key=value`, `since=YYYY-MM-DD[Thh:mm:ss]`, `until=...` -> (key, op, value).

    Validated here, before anything is read, so a typo is an error and not an empty
    selection that compares nothing.
    """
    out: list[tuple[str, str, str]] = []
    for spec in specs:
        key, sep, value = spec.partition("=")
        key = key.strip()
        if not sep or not value:
            raise ConfigError(f"filter {spec!r}: expected key=value")
        if key == "since":
            out.append(("date", ">=", value))
        elif key == "until":
            out.append(("date", "<", value))
        elif key in FILTER_KEYS:
            out.append((key, "==", value))
        else:
            known = ", ".join((*FILTER_KEYS, "since", "until"))
            raise ConfigError(f"filter {spec!r}: unknown key {key!r} (known: {known})")
    return out


def select(records: Iterable[Record], filters: Iterable[tuple[str, str, str]]) -> list[Record]:
    filters = list(filters)

    def keep(record: Record) -> bool:
        for key, op, value in filters:
            have = record.get(key)
            text = str(have).lower() if isinstance(have, bool) else str(have)
            if op == "==" and text != value:
                return False
            if op == ">=" and text < value:
                return False
            if op == "<" and text >= value:
                return False
        return True

    return [r for r in records if keep(r)]
