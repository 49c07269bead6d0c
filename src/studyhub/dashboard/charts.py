"""Small server-side SVG charts: line charts over time, horizontal bars and sparklines.

Why our own: the pages must work offline and without JavaScript, under a strict Content
Security Policy (no inline scripts or styles). An SVG drawn on the server needs no CDN, no
vendored script and no licence file, shows in every browser and in screenshots, and is tested
like any other function. Colours come from CSS classes (``series-0`` …) in the dashboard's
stylesheet; every data point carries a ``<title>`` so hovering shows its value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Callable, Sequence

from markupsafe import Markup, escape

Formatter = Callable[[float], str]
MAX_MARKERS = 240  # beyond this many points a line gets no per-point markers


@dataclass
class Series:
    label: str
    points: Sequence[tuple[datetime, float]]


def nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 × 10^k that is ≥ ``value`` (axis maximum)."""
    if value <= 0 or not math.isfinite(value):
        return 1.0
    exp = math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        candidate = step * 10 ** exp
        if candidate >= value * (1 - 1e-12):
            return candidate
    return 10 ** (exp + 1)


def nice_ceiling_binary(value: float) -> float:
    """Like :func:`nice_ceiling` in the 1024-based unit ``value`` falls in (axes in bytes get
    round kB / MB / GB labels)."""
    unit = 1.0
    while value / unit >= 1024:
        unit *= 1024
    return nice_ceiling(value / unit) * unit


def _plain(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 100 or v == int(v) else f"{v:.2g}"


def _time_label(t: datetime, span_s: float) -> str:
    if span_s <= 2 * 86400:
        return t.strftime("%H:%M")
    return t.strftime("%m-%d")


def line_chart(series: Sequence[Series], *, title: str, y_format: Formatter = _plain,
               binary: bool = False, width: int = 640, height: int = 200) -> Markup:
    """Lines over time, one per series, on a shared axis from 0 to a nice maximum (1024-based
    when ``binary``, for bytes)."""
    pts = [p for s in series for p in s.points]
    label = escape(title)
    if len(pts) < 2:
        return Markup(f'<p class="chart-empty">{label}: not enough history yet '
                      "(<code>studyhub agent</code> stores a point every capture interval)</p>")
    left, right, top, bottom = 64, 12, 22, 28
    plot_w, plot_h = width - left - right, height - top - bottom
    t0 = min(p[0] for p in pts).timestamp()
    t1 = max(p[0] for p in pts).timestamp()
    span = max(t1 - t0, 1e-9)
    y_max = (nice_ceiling_binary if binary else nice_ceiling)(max(p[1] for p in pts))

    def x(t: datetime) -> float:
        return left + (t.timestamp() - t0) / span * plot_w

    def y(v: float) -> float:
        return top + plot_h - (max(v, 0.0) / y_max) * plot_h

    out = ['<figure class="chart">',
           f'<svg viewBox="0 0 {width} {height}" width="{width}" '
           f'height="{height}" role="img" aria-label="{label}" xmlns="http://www.w3.org/2000/svg">',
           f"<title>{label}</title>",
           f'<text class="chart-title" x="{left}" y="14">{label}</text>']
    for i in range(5):  # y grid and labels
        v = y_max * i / 4
        yy = y(v)
        out.append(f'<line class="grid" x1="{left}" x2="{width - right}" y1="{yy:.1f}" '
                   f'y2="{yy:.1f}"/>')
        out.append(f'<text class="axis" x="{left - 6}" y="{yy + 4:.1f}" '
                   f'text-anchor="end">{escape(y_format(v))}</text>')
    for i in range(5):  # x labels
        t = datetime.fromtimestamp(t0 + span * i / 4, tz=pts[0][0].tzinfo)
        xx = left + plot_w * i / 4
        anchor = "start" if i == 0 else "end" if i == 4 else "middle"
        out.append(f'<text class="axis" x="{xx:.1f}" y="{height - 8}" '
                   f'text-anchor="{anchor}">{escape(_time_label(t, span))}</text>')
    for n, s in enumerate(series):
        if not s.points:
            continue
        cls = f"series-{n % 6}"
        coords = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in s.points)
        out.append(f'<polyline class="line {cls}" fill="none" points="{coords}"/>')
        if len(s.points) <= MAX_MARKERS:
            for t, v in s.points:
                tip = escape(f"{s.label}: {y_format(v)} at {t:%Y-%m-%d %H:%M:%S}")
                out.append(f'<circle class="dot {cls}" cx="{x(t):.1f}" cy="{y(v):.1f}" r="2.5">'
                           f"<title>{tip}</title></circle>")
    out.append("</svg>")
    if len(series) > 1:  # legend, as HTML next to the drawing
        items = "".join(f'<li><span class="swatch series-{n % 6}"></span>{escape(s.label)}</li>'
                        for n, s in enumerate(series))
        out.append(f'<ul class="legend">{items}</ul>')
    out.append("</figure>")
    return Markup("".join(out))


def bar_chart(bars: Sequence[tuple[str, float]], *, title: str,
              value_format: Formatter = _plain, width: int = 640) -> Markup:
    """Horizontal bars (label, value), scaled to the largest absolute value; negative values
    are drawn to the left of the zero line."""
    label = escape(title)
    if not bars:
        return Markup(f'<p class="chart-empty">{label}: nothing to show</p>')
    row, top, label_w, value_w = 20, 22, 200, 90
    height = top + row * len(bars) + 6
    plot_w = width - label_w - value_w
    biggest = max(abs(v) for _, v in bars) or 1.0
    has_negative = any(v < 0 for _, v in bars)
    zero = label_w + (plot_w / 2 if has_negative else 0)
    scale = (plot_w / 2 if has_negative else plot_w) / biggest
    out = ['<figure class="chart">',
           f'<svg viewBox="0 0 {width} {height}" width="{width}" '
           f'height="{height}" role="img" aria-label="{label}" xmlns="http://www.w3.org/2000/svg">',
           f"<title>{label}</title>",
           f'<text class="chart-title" x="0" y="14">{label}</text>']
    for i, (name, v) in enumerate(bars):
        yy = top + i * row
        w = abs(v) * scale
        x0 = zero - w if v < 0 else zero
        short = name if len(name) <= 30 else name[:29] + "…"
        cls = "bar negative" if v < 0 else "bar"
        out.append(f'<text class="axis" x="{label_w - 6}" y="{yy + 13}" '
                   f'text-anchor="end">{escape(short)}</text>')
        out.append(f'<rect class="{cls}" x="{x0:.1f}" y="{yy + 3}" width="{max(w, 0.5):.1f}" '
                   f'height="{row - 6}"><title>{escape(name)}: {escape(value_format(v))}</title>'
                   "</rect>")
        out.append(f'<text class="axis" x="{width - value_w + 6}" y="{yy + 13}">'
                   f"{escape(value_format(v))}</text>")
    out.append(f'<line class="zero" x1="{zero:.1f}" x2="{zero:.1f}" y1="{top}" '
               f'y2="{height - 4}"/>')
    out.append("</svg></figure>")
    return Markup("".join(out))


def sparkline(values: Sequence[float], *, title: str, width: int = 120,
              height: int = 24) -> Markup:
    """A tiny line of ``values`` (oldest first), scaled to its own maximum."""
    if len(values) < 2:
        return Markup('<span class="chart-empty">–</span>')
    top = max(values) or 1.0
    step = (width - 2) / (len(values) - 1)
    coords = " ".join(f"{1 + i * step:.1f},{height - 1 - max(v, 0) / top * (height - 2):.1f}"
                      for i, v in enumerate(values))
    label = escape(title)
    return Markup(f'<svg class="sparkline" viewBox="0 0 {width} {height}" width="{width}" '
                  f'height="{height}" role="img" aria-label="{label}" '
                  f'xmlns="http://www.w3.org/2000/svg"><title>{label}</title>'
                  f'<polyline class="line series-0" fill="none" points="{coords}"/></svg>')
