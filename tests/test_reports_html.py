"""The HTML bench report renders in a real browser (headless Chromium), offline."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest

from reports import history
from reports.fake import DEFAULT_MILESTONES
from reports.html import render

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def nightly_history(runs: int = 9, boots: int = 5) -> list[dict]:
    """A deterministic history: nightly runs, a slowdown from v1.5.0 on, one failed boot."""
    rng = np.random.default_rng(7)
    records = []
    for night in range(runs):
        version = "v1.4.1" if night < 5 else "v1.5.0"
        slow = 0.0 if night < 5 else 0.6
        for boot in range(1, boots + 1):
            marks = {
                k: v * rng.lognormal(0, 0.03) + (slow if v >= 2.0 else 0.0)
                for k, v in DEFAULT_MILESTONES.items()
            }
            ok = not (night == runs - 1 and boot == 2)
            ctx = {
                "platform": "qemu",
                "arch": "x86_64",
                "accel": "kvm",
                "image": "/img",
                "image_version": version,
            }
            records.append(
                history.new_record(
                    context=ctx,
                    milestones=marks,
                    ok=ok,
                    run_id=f"night-{night}",
                    boot=boot,
                    error=None if ok else "BootTimeout: no login prompt <after 600s>",
                    sizes={"initrd": 41_000_000, "iso": 52_000_000},
                    host="ci-runner-1",
                    date=f"2025-03-{night + 1:02d}T02:{boot:02d}:00Z",
                )
            )
    return records


def test_render_is_self_contained() -> None:
    page = render(nightly_history(), "nightly.jsonl")
    assert "<svg" in page and "<table" in page
    assert not re.search(r"<script|<link|https?://(?!www\.w3\.org/2000/svg)", page)
    assert "&lt;after 600s&gt;" in page  # record text is escaped, never markup


def test_render_with_only_failed_boots() -> None:
    records = nightly_history(runs=1, boots=2)
    for r in records:
        r["ok"] = False
    page = render(records, "h.jsonl")
    assert "No boot of the latest run completed" in page and "2 failed" in page
    assert "<h1>" in render([], "empty.jsonl")


def chromium(*args: str) -> str:
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.run(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                f"--user-data-dir={profile}",
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: chromium)")
def test_report_renders_in_chromium(tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    page.write_text(render(nightly_history(), "nightly.jsonl"), "utf-8")

    dom = chromium("--dump-dom", page.as_uri())

    # The browser parsed the pictures as SVG elements with their bars and lines ...
    assert dom.count("<svg") >= 1 + len(DEFAULT_MILESTONES)
    assert "Boot waterfall, latest run" in dom
    assert len(re.findall(r"<rect ", dom)) >= len(DEFAULT_MILESTONES)
    assert "<polyline" in dom
    # ... and the data tables beside them, with the numbers a reader looks for.
    assert dom.count("<table") >= 1 + len(DEFAULT_MILESTONES)
    assert "user-docker" in dom and "v1.5.0" in dom and "ci-runner-1" in dom
    assert "BootTimeout: no login prompt" in dom

    shot = tmp_path / "report.png"
    chromium(f"--screenshot={shot}", "--window-size=1400,1800", page.as_uri())
    assert shot.stat().st_size > 10_000  # a picture, not a blank page


def test_system_containers_show_create_start_and_a_one_shot_s_run() -> None:
    records = nightly_history(runs=1, boots=3)
    for n, r in enumerate(records):
        r["services"] = {
            "udev-cold": {"created": 9.0 + n, "started": 10.0 + n, "finished": 13.0 + n},
            "console": {"created": 20.0, "started": 22.5},
            "user-volumes": {"created": 8.0},  # created only (io.rancher.os.createonly)
        }
    assert not records[1]["ok"]  # a failed boot: its figures do not count
    records[1]["services"]["console"]["started"] = 99.0
    page = render(records, "h.jsonl")
    section = page[page.index("System containers"):]
    rows = re.findall(r"<tr><td>([\w-]+)</td><td>([\d.]+)</td><td>([\d.]+)</td><td>([\d.-]+)</td>",
                      section)
    assert rows == [("user-volumes", "8.000", "0.000", "-"),
                    ("udev-cold", "10.000", "1.000", "3.000"), ("console", "20.000", "2.500", "-")]
    # the one-shot's bar has its light waiting part and its full-colour run
    assert "service:udev-cold: 10.0s \u2192 14.0s (4.00s); running from 11.0s" in section
    assert section.count("fill-opacity='0.35'") == 3
