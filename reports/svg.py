"""Inline SVG pictures: a boot waterfall and a trend line. No dependencies, no scripts,
so the HTML report and the allure attachments open offline in any browser."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

FONT = "font-family='system-ui,sans-serif' font-size='12'"


def _colour(name: str) -> str:
    # One colour per stage of a RancherOS boot, so a reader sees where time goes.
    if name in ("firmware", "kernel", "init"):
        return "#4c78a8"
    if name.startswith("service:"):
        return "#f2b880"
    if name in ("system-docker", "services"):
        return "#e45756"
    return "#54a24b"  # login-prompt, started, ssh, user-docker


def nice_step(span: float, ticks: int = 5) -> float:
    """A round tick step (1, 2, 5 x 10^k) giving about `ticks` ticks over `span`."""
    if span <= 0:
        return 1.0
    raw = span / ticks
    power = 10 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= raw)


def _fmt(seconds: float) -> str:
    return f"{seconds:.2f}s" if seconds < 10 else f"{seconds:.1f}s"


@dataclass(frozen=True)
class Bar:
    name: str
    start: float
    end: float
    whisker: float | None = None  # e.g. p95 of the end, drawn as a thin line
    # a bar in two parts: start..mid light (waiting: a container being created and
    # started), mid..end in full colour (running: a one-shot until it finished)
    mid: float | None = None


def waterfall(bars: Sequence[Bar], title: str, width: int = 760) -> str:
    """Rows of phases on a time axis from power-on."""
    label_w, right_pad, row_h, top, bottom = 170, 70, 20, 28, 28
    height = top + row_h * max(len(bars), 1) + bottom
    horizon = max([b.whisker or b.end for b in bars] + [0.001])
    step = nice_step(horizon)
    horizon = math.ceil(horizon / step) * step
    plot_w = width - label_w - right_pad

    def x(t: float) -> float:
        return label_w + plot_w * t / horizon

    parts = [
        f"<svg xmlns='http://www.w3.org/2000/svg' role='img' width='{width}' height='{height}' "
        f"viewBox='0 0 {width} {height}' {FONT}>",
        f"<title>{escape(title)}</title>",
        f"<text x='4' y='16' font-weight='bold'>{escape(title)}</text>",
    ]
    tick = 0.0
    while tick <= horizon + step / 2:
        parts.append(
            f"<line x1='{x(tick):.1f}' y1='{top}' x2='{x(tick):.1f}' "
            f"y2='{height - bottom}' stroke='#ddd'/>"
            f"<text x='{x(tick):.1f}' y='{height - bottom + 14}' text-anchor='middle' "
            f"fill='#555'>{tick:g}s</text>"
        )
        tick += step
    for i, bar in enumerate(bars):
        y = top + i * row_h
        w = max(x(bar.end) - x(bar.start), 1.5)  # an instant phase stays visible
        tip = f"{bar.name}: {_fmt(bar.start)} \u2192 {_fmt(bar.end)} ({_fmt(bar.end - bar.start)})"
        opacity = ""
        if bar.mid is not None:
            tip += f"; running from {_fmt(bar.mid)}"
            opacity = " fill-opacity='0.35'"
        parts.append(
            f"<g class='bar'><title>{escape(tip)}</title>"
            f"<text x='{label_w - 6}' y='{y + 14}' text-anchor='end'>{escape(bar.name)}</text>"
            f"<rect x='{x(bar.start):.1f}' y='{y + 3}' width='{w:.1f}' height='{row_h - 6}' "
            f"fill='{_colour(bar.name)}'{opacity}/>"
        )
        if bar.mid is not None and bar.end > bar.mid:
            parts.append(
                f"<rect x='{x(bar.mid):.1f}' y='{y + 3}' width='{x(bar.end) - x(bar.mid):.1f}' "
                f"height='{row_h - 6}' fill='{_colour(bar.name)}'/>"
            )
        end_label_x = x(bar.end) + 4
        if bar.whisker is not None and bar.whisker > bar.end:
            parts.append(
                f"<line x1='{x(bar.end):.1f}' y1='{y + row_h / 2}' x2='{x(bar.whisker):.1f}' "
                f"y2='{y + row_h / 2}' stroke='#333'/>"
                f"<line x1='{x(bar.whisker):.1f}' y1='{y + 5}' x2='{x(bar.whisker):.1f}' "
                f"y2='{y + row_h - 5}' stroke='#333'/>"
            )
            end_label_x = x(bar.whisker) + 4
        parts.append(
            f"<text x='{end_label_x:.1f}' y='{y + 14}' fill='#333'>{_fmt(bar.end)}</text></g>"
        )
    parts.append("</svg>")
    return "".join(parts)


@dataclass(frozen=True)
class Point:
    label: str  # shown in the tooltip (run date, version)
    median: float
    low: float
    high: float


def trend(points: Sequence[Point], title: str, width: int = 480, height: int = 170) -> str:
    """Median per run as a line, the run's min..max as a band."""
    left, right, top, bottom = 52, 12, 26, 24
    plot_w, plot_h = width - left - right, height - top - bottom
    lo = min([p.low for p in points] + [0.0])
    hi = max([p.high for p in points] + [0.001])
    step = nice_step(hi - lo, 4)
    lo, hi = math.floor(lo / step) * step, math.ceil(hi / step) * step
    count = len(points)

    def x(i: int) -> float:
        return left + (plot_w * i / (count - 1) if count > 1 else plot_w / 2)

    def y(v: float) -> float:
        return top + plot_h * (1 - (v - lo) / (hi - lo))

    parts = [
        f"<svg xmlns='http://www.w3.org/2000/svg' role='img' width='{width}' height='{height}' "
        f"viewBox='0 0 {width} {height}' {FONT}>",
        f"<title>{escape(title)}</title>",
        f"<text x='4' y='16' font-weight='bold'>{escape(title)}</text>",
    ]
    tick = lo
    while tick <= hi + step / 2:
        parts.append(
            f"<line x1='{left}' y1='{y(tick):.1f}' x2='{width - right}' y2='{y(tick):.1f}' "
            f"stroke='#ddd'/><text x='{left - 4}' y='{y(tick) + 4:.1f}' text-anchor='end' "
            f"fill='#555'>{tick:g}s</text>"
        )
        tick += step
    if points:
        band = [f"{x(i):.1f},{y(p.high):.1f}" for i, p in enumerate(points)]
        band += [f"{x(i):.1f},{y(p.low):.1f}" for i, p in reversed(list(enumerate(points)))]
        parts.append(f"<polygon points='{' '.join(band)}' fill='#4c78a8' opacity='0.18'/>")
        line = " ".join(f"{x(i):.1f},{y(p.median):.1f}" for i, p in enumerate(points))
        parts.append(f"<polyline points='{line}' fill='none' stroke='#4c78a8' stroke-width='2'/>")
        for i, p in enumerate(points):
            tip = f"{p.label}: median {_fmt(p.median)} (min {_fmt(p.low)}, max {_fmt(p.high)})"
            parts.append(
                f"<circle cx='{x(i):.1f}' cy='{y(p.median):.1f}' r='3' fill='#4c78a8'>"
                f"<title>{escape(tip)}</title></circle>"
            )
        parts.append(
            f"<text x='{left}' y='{height - 6}' fill='#555'>{escape(points[0].label)}</text>"
        )
        if count > 1:
            parts.append(
                f"<text x='{width - right}' y='{height - 6}' text-anchor='end' fill='#555'>"
                f"{escape(points[-1].label)}</text>"
            )
    parts.append("</svg>")
    return "".join(parts)
