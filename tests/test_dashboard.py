"""`roslab dashboard` opened in a real browser: Playwright driving the distribution's
Chromium (no browser download). The page renders with no console error, its grid has the
runs stored, a trend plot shows the figures stored, and a failure links to its evidence."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from test_results_db import a_run  # tests/ is on sys.path

from commands.cli import main
from reports.results_db import ResultsDB

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None,
                                reason="chromium is not installed (Debian: chromium)")


@pytest.fixture
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        # --no-sandbox: the tests may run as root, where Chromium's sandbox refuses to start
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


def open_page(browser: object, url: str) -> tuple[object, list[str]]:
    page = browser.new_page(viewport={"width": 1400, "height": 1000})  # type: ignore[attr-defined]
    errors: list[str] = []
    page.on("console", lambda m: errors.append(f"console {m.type}: {m.text}")
            if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url}"))
    page.goto(url)
    page.wait_for_load_state("load")
    return page, errors


def test_dashboard_in_chromium(browser: object, tmp_path: Path) -> None:
    log = tmp_path / "evidence" / "console.log"
    log.parent.mkdir()
    log.write_text("[   31.2] kernel: the last console line before it failed\n")
    db_url = f"sqlite:///{tmp_path / 'roslab.db'}"
    night = datetime(2025, 6, 1, 2, 0)
    with ResultsDB(db_url) as db:
        ids = [db.add(a_run(f"n{i}-{cell}", night + timedelta(days=i),
                            {"t::boot": "failed" if (i, cell) == (2, "aws") else "passed"},
                            cell=cell, user_docker=30 + i + (cell == "aws") * 10,
                            evidence=str(log)))
               for i in range(3) for cell in ("qemu-x86", "aws")]
    site = tmp_path / "site"
    assert main(["dashboard", "-o", str(site), "--results-db", db_url]) == 0

    page, errors = open_page(browser, (site / "index.html").as_uri())
    assert errors == []
    # the grid: a row per cell, a column per night, every stored run linked once
    grid = page.locator("#grid td[data-runs]")
    assert grid.count() == 6
    shown = sorted(int(i) for t in grid.all() for i in t.get_attribute("data-runs").split(","))
    assert shown == sorted(ids)
    failed = page.locator("#grid td.bad")
    assert failed.count() == 1 and failed.get_attribute("data-cell") == "aws"
    assert failed.get_attribute("data-night") == "2025-06-03"
    # a trend plot: one point per run, its tooltip the median stored
    plot = page.locator("figure.trend[data-cell='aws'][data-milestone='user-docker']")
    assert plot.locator("svg").is_visible()
    tips = [t.text_content() for t in plot.locator("circle title").all()]
    assert [t.split(": median ")[1].split("s ")[0] for t in tips] == ["40.0", "41.0", "42.0"]
    # a failure links to its evidence, copied beside the site
    link = page.locator("table.failures a.evidence")
    assert link.count() == 1
    link.click()
    page.wait_for_load_state("load")
    assert "the last console line before it failed" in page.content()
    assert page.url.startswith((site / "evidence").as_uri())
    # a run's own page
    run_page, errors = open_page(browser, (site / "runs" / f"{ids[-1]}.html").as_uri())
    assert errors == [] and "t::boot" in run_page.content()
    assert run_page.locator("a.evidence").count() == 1
