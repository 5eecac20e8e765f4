"""Bench history: records from two machines merge, dedup by id, keep their context."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lab.errors import ConfigError
from reports import history


def record(host: str, date: str, version: str, ssh: float) -> dict:
    ctx = {
        "platform": "qemu",
        "arch": "x86_64",
        "accel": "kvm",
        "image": "/img",
        "image_version": version,
    }
    return history.new_record(
        context=ctx,
        milestones={"kernel": 0.5, "ssh": ssh},
        ok=True,
        run_id=f"run-{host}",
        boot=1,
        host=host,
        date=date,
    )


def test_merge_two_machines_dedups_and_keeps_context(tmp_path: Path) -> None:
    a, b, out = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "merged.jsonl"
    ra1 = record("pi-lab-1", "2025-01-02T03:00:00Z", "v1.4.1", 9.5)
    ra2 = record("pi-lab-1", "2025-01-03T03:00:00Z", "v1.4.2", 9.7)
    rb1 = record("x86-box", "2025-01-02T04:00:00Z", "v1.4.1", 4.1)
    for r in (ra1, ra2):
        history.append(a, r)
    history.append(b, rb1)
    history.append(b, ra1)  # b already holds a copy of a's first record (an earlier merge)

    result = history.merge([a, b], out)

    assert (result.written, result.duplicates, result.conflicts) == (3, 1, 0)
    merged = history.read(out)
    assert [r["id"] for r in merged] == [ra1["id"], rb1["id"], ra2["id"]]  # by date
    by_id = {r["id"]: r for r in merged}
    for original in (ra1, ra2, rb1):
        kept = by_id[original["id"]]
        assert kept == original  # host, date, version, platform, arch, schema all kept
        assert kept["schema"] == history.SCHEMA
    assert {r["host"] for r in merged} == {"pi-lab-1", "x86-box"}
    # Merging again (or in the other order) changes nothing: nightly merges are idempotent.
    again = tmp_path / "again.jsonl"
    history.merge([b, out, a], again)
    assert again.read_text() == out.read_text()


def test_merge_keeps_unknown_fields_of_newer_schemas(tmp_path: Path) -> None:
    src = tmp_path / "new.jsonl"
    future = {"schema": 7, "id": "x1", "date": "2031-01-01T00:00:00Z", "power_watts": 4.2}
    src.write_text(json.dumps(future) + "\n")
    history.merge([src], tmp_path / "out.jsonl")
    assert history.read(tmp_path / "out.jsonl") == [future]


def test_cut_last_line_is_skipped_and_next_append_survives(tmp_path: Path, capsys) -> None:
    path = tmp_path / "h.jsonl"
    first = record("h", "2025-01-01T00:00:00Z", "v1", 5.0)
    history.append(path, first)
    with open(path, "a") as fh:
        fh.write('{"schema": 1, "id": "cut-by-a-kill')  # a writer killed mid-line
    second = record("h", "2025-01-01T00:01:00Z", "v1", 5.1)
    history.append(path, second)
    assert [r["id"] for r in history.read(path)] == [first["id"], second["id"]]
    assert "cut or corrupt" in capsys.readouterr().err


def test_filters(tmp_path: Path) -> None:
    records = [
        record("a", "2025-01-01T00:00:00Z", "v1", 5.0),
        record("b", "2025-02-01T00:00:00Z", "v2", 5.0),
    ]
    records[1]["ok"] = False
    sel = history.select
    assert [r["host"] for r in sel(records, history.parse_filters(["image_version=v2"]))] == ["b"]
    assert [r["host"] for r in sel(records, history.parse_filters(["since=2025-01-15"]))] == ["b"]
    assert [r["host"] for r in sel(records, history.parse_filters(["until=2025-01-15"]))] == ["a"]
    assert [r["host"] for r in sel(records, history.parse_filters(["ok=true"]))] == ["a"]
    with pytest.raises(ConfigError, match="unknown key 'verison'"):
        history.parse_filters(["verison=v1"])
    with pytest.raises(ConfigError, match="key=value"):
        history.parse_filters(["platform"])


def test_image_sizes_from_the_image_folder(tmp_path: Path) -> None:
    (tmp_path / "initrd").write_bytes(b"i" * 10)
    (tmp_path / "vmlinuz").write_bytes(b"k" * 20)
    (tmp_path / "rancheros.iso").write_bytes(b"s" * 30)
    expected = {"initrd": 10, "vmlinuz": 20, "iso": 30}
    assert history.image_sizes(tmp_path) == expected
    assert history.image_sizes(tmp_path / "rancheros.iso") == expected  # a file: its folder
    assert history.image_sizes(tmp_path / "nowhere" / "x.img") == {}
