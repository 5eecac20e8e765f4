"""The bench report: one self-contained HTML file (inline CSS and SVG, no scripts, no
CDN), so it opens from a CI artifact store or a laptop without a network."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from html import escape

import numpy as np

from reports.history import Record
from reports.stats import (
    Summary,
    failure_counts,
    milestone_samples,
    phase_samples,
    service_samples,
)
from reports.svg import Bar, Point, trend, waterfall

TABLE_RUNS = 12  # the trend tables list the most recent runs; the picture shows all

CSS = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 36px; } h3 { font-size: 15px; }
.pair { display: flex; flex-wrap: wrap; gap: 24px; align-items: flex-start; margin: 12px 0 24px; }
figure { margin: 0; }
table { border-collapse: collapse; font-size: 12px; margin-bottom: 12px; }
caption { text-align: left; color: #555; padding-bottom: 4px; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
.meta { color: #555; font-size: 13px; } .bad { color: #b00020; }
"""


def _s(value: float) -> str:
    return f"{value:.3f}"


def html_table(header: Sequence[str], rows: Iterable[Sequence[object]], caption: str = "") -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    cap = f"<caption>{escape(caption)}</caption>" if caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _runs(records: Sequence[Record]) -> list[list[Record]]:
    """Records grouped by bench run, oldest run first."""
    by_run: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        by_run[str(r.get("run_id") or r["id"])].append(r)
    return sorted(by_run.values(), key=lambda run: min(str(r.get("date", "")) for r in run))


def _run_label(run: Sequence[Record]) -> str:
    first = min(run, key=lambda r: str(r.get("date", "")))
    return f"{str(first.get('date', ''))[:16].replace('T', ' ')} {first.get('image_version', '')}"


def _waterfall_section(run: Sequence[Record]) -> str:
    spans = phase_samples(run)
    if not spans:
        return "<p class='bad'>No boot of the latest run completed: no timeline to draw.</p>"
    bars, rows = [], []
    for name, pairs in spans.items():
        starts = np.array([s for s, _ in pairs])
        ends = np.array([e for _, e in pairs])
        end = Summary.of(ends)
        duration = Summary.of(ends - starts)
        bars.append(Bar(name, float(np.median(starts)), end.median, whisker=end.p95))
        rows.append(
            (
                name,
                _s(float(np.median(starts))),
                _s(end.median),
                _s(duration.median),
                _s(duration.p95),
                _s(end.p95),
                end.n,
            )
        )
    picture = waterfall(bars, f"Boot waterfall, latest run ({_run_label(run)}), medians")
    table = html_table(
        ["phase", "start", "end", "duration", "duration p95", "end p95", "n"],
        rows,
        "seconds since power-on; median over completed boots",
    )
    return f"<div class='pair'><figure>{picture}</figure>{table}</div>"


def _services_section(run: Sequence[Record]) -> str:
    """Each system container: created -> started (light), and a one-shot's run to its
    finish (full colour): where the services' share of the boot goes."""
    samples = service_samples(run)
    if not samples:
        return ""
    bars, rows = [], []
    for name, steps in samples.items():
        med = {step: float(np.median(v)) for step, v in steps.items()}
        created = med.get("created", med.get("started", 0.0))
        started = med.get("started", created)
        finished = med.get("finished")
        bars.append(Bar(f"service:{name}", created, finished or started, mid=started))
        rows.append((name, _s(created), _s(started - created),
                     "-" if finished is None else _s(finished - started),
                     len(steps.get("created", []))))
    picture = waterfall(bars, "System containers: created \u2192 started \u2192 finished, medians")
    table = html_table(
        ["container", "created", "create+start", "ran (one-shot)", "n"], rows,
        "seconds; created since power-on, the others durations; median over completed boots",
    )
    return f"<div class='pair'><figure>{picture}</figure>{table}</div>"


def _trend_sections(runs: Sequence[Sequence[Record]]) -> str:
    per_run = [(run, milestone_samples(run)) for run in runs]
    names = list(milestone_samples([r for run in runs for r in run]))
    out = []
    for name in names:
        points, rows = [], []
        for run, samples in per_run:
            if not samples.get(name):
                continue
            s = Summary.of(samples[name])
            points.append(Point(_run_label(run), s.median, s.min, s.max))
            first = run[0]
            rows.append(
                (
                    str(first.get("date", ""))[:10],
                    first.get("image_version", ""),
                    first.get("host", ""),
                    s.n,
                    _s(s.min),
                    _s(s.median),
                    _s(s.p95),
                )
            )
        picture = trend(points, f"{name}: seconds since power-on, per run")
        table = html_table(
            ["date", "version", "host", "n", "min", "median", "p95"],
            reversed(rows[-TABLE_RUNS:]),
            f"{name}, latest {min(len(rows), TABLE_RUNS)} of {len(rows)} runs",
        )
        out.append(
            f"<h3>{escape(name)}</h3><div class='pair'><figure>{picture}</figure>{table}</div>"
        )
    return "".join(out)


def _group_section(key: tuple[str, str, str, str], records: Sequence[Record]) -> str:
    platform, arch, board, accel = key
    runs = _runs(records)
    latest = runs[-1]
    ok, failed = failure_counts(records)
    hosts = sorted({str(r.get("host")) for r in records})
    meta = (
        f"{len(runs)} runs, {ok} completed boots, "
        f"<span class='{'bad' if failed else ''}'>{failed} failed</span>; "
        f"hosts: {escape(', '.join(hosts))}"
    )
    parts = [
        f"<h2>{escape(platform)} / {escape(arch)}{' / ' + escape(board) if board else ''}"
        f" / accel {escape(accel)}</h2>",
        f"<p class='meta'>{meta}</p>",
        _waterfall_section(latest),
        _services_section(latest),
    ]
    errors = [(r.get("boot", ""), r.get("error") or "") for r in latest if not r.get("ok")]
    if errors:
        parts.append(html_table(["boot", "error of a failed boot in the latest run"], errors))
    sizes = next((r["sizes"] for r in reversed(latest) if r.get("sizes")), None)
    if sizes:
        rows = [(name, size, f"{size / 2**20:.1f}") for name, size in sorted(sizes.items())]
        parts.append(html_table(["image file", "bytes", "MiB"], rows, "image sizes, latest run"))
    parts.append("<h2>History per milestone</h2>")
    parts.append(_trend_sections(runs))
    return "".join(parts)


def render(records: Sequence[Record], source: str) -> str:
    groups: dict[tuple[str, str, str, str], list[Record]] = defaultdict(list)
    for r in records:
        key = (str(r.get("platform")), str(r.get("arch")), str(r.get("board") or ""),
               str(r.get("accel")))
        groups[key].append(r)
    body = "".join(_group_section(k, v) for k, v in sorted(groups.items()))
    if not groups:
        body = "<p class='bad'>The history holds no boot records.</p>"
    dates = sorted(str(r.get("date", "")) for r in records)
    span = f"{dates[0]} .. {dates[-1]}" if dates else "-"
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>roslab boot-time report</title><style>{CSS}</style></head><body>"
        f"<h1>roslab boot-time report</h1><p class='meta'>{escape(source)}: "
        f"{len(records)} boot records, {escape(span)}</p>{body}</body></html>"
    )
