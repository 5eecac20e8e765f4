"""`roslab soak`: each boot checked against the image contract and recorded with whose
failure it was; the lab's own failures make the flake rate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from commands.cli import main
from reports.bench import BenchOptions
from reports.soak import lab_failures, run_soak


def _options(tmp_path: Path, image: Path | None, runs: int) -> BenchOptions:
    return BenchOptions(platform="qemu", image=image, runs=runs, arch="x86_64", accel="tcg",
                        history=tmp_path / "history.jsonl", timeout=120)


def _records(tmp_path: Path) -> list[dict]:
    return [json.loads(x) for x in (tmp_path / "history.jsonl").read_text().splitlines()]


def test_a_guest_that_panics_is_the_guests_failure(tiny_guests: dict, tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    with out.open("w") as fh:
        result = run_soak(_options(tmp_path, tiny_guests["panic"], 2), Console(file=fh))
    assert result.failed == 2 and lab_failures(result.records) == []
    assert [(r["kind"], r["blame"]) for r in _records(tmp_path)] == [("soak", "guest")] * 2
    text = out.read_text()
    assert "GuestPanic" in text and "evidence:" in text
    assert "0.0 %" in text  # no lab failure among them


@pytest.mark.refimage
def test_the_reference_image_passes_a_soak_run(tmp_path: Path) -> None:
    history = tmp_path / "history.jsonl"
    code = main(["soak", "--runs", "1", "--accel", "tcg", "--history", str(history),
                 "--timeout", "300"])
    (record,) = _records(tmp_path)
    assert code == 0, record.get("error")
    assert record["ok"] and record["kind"] == "soak" and "blame" not in record
