"""Charts as inline SVG, rendered on the server: no JavaScript, no CDN, nothing to download.

Every function returns ``Markup`` (safe to place in a template) built only from numbers this
module formats and labels it escapes, so a chart can never carry markup from its input. Colours
and sizes are SVG presentation attributes, never ``style=`` (the dashboard's Content-Security-Policy
forbids inline styles).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from markupsafe import Markup, escape

LINE = "#2563eb"
SECOND = "#db2777"
BAND = "#bfdbfe"
ACTUAL = "#94a3b8"


def _finite(values: Sequence[float | None]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def _scale(lo: float, hi: float, out_lo: float, out_hi: float) -> tuple[float, float]:
    """(a, b) with out = a * x + b mapping [lo, hi] onto [out_lo, out_hi] (flat data: the middle)."""
    if hi - lo < 1e-12:
        return 0.0, (out_lo + out_hi) / 2
    a = (out_hi - out_lo) / (hi - lo)
    return a, out_lo - a * lo


def _points(values: Sequence[float | None], width: float, height: float, pad: float,
            lo: float, hi: float) -> list[tuple[float, float] | None]:
    n = len(values)
    ax, bx = _scale(0, max(n - 1, 1), pad, width - pad)
    ay, by = _scale(lo, hi, height - pad, pad)
    out: list[tuple[float, float] | None] = []
    for i, v in enumerate(values):
        ok = v is not None and math.isfinite(float(v))
        out.append((ax * i + bx, ay * float(v) + by) if ok else None)  # type: ignore[arg-type]
    return out


def _path(points: list[tuple[float, float] | None]) -> str:
    """An SVG path through the points; a missing value starts a new segment."""
    parts, pen = [], "M"
    for p in points:
        if p is None:
            pen = "M"
            continue
        parts.append(f"{pen}{p[0]:.1f},{p[1]:.1f}")
        pen = "L"
    return " ".join(parts)


def sparkline(values: Sequence[float | None], width: int = 120, height: int = 28, label: str = "") -> Markup:
    """A small line with its last point marked; ``label`` is the accessible name."""
    vals = _finite(values)
    if not vals:
        return Markup('<span class="muted">no data</span>')
    lo, hi = min(vals), max(vals)
    pts = _points(values, width, height, 3, lo, hi)
    last = next((p for p in reversed(pts) if p is not None), None)
    dot = f'<circle cx="{last[0]:.1f}" cy="{last[1]:.1f}" r="2.5" fill="{LINE}"/>' if last else ""
    return Markup(
        f'<svg class="spark" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
        f'aria-label="{escape(label)}"><path d="{_path(pts)}" fill="none" stroke="{LINE}" stroke-width="1.5"/>'
        f"{dot}</svg>"
    )


def line_chart(series: dict[str, Sequence[float | None]], x_labels: Sequence[str], width: int = 560,
               height: int = 200, title: str = "") -> Markup:
    """Up to two lines, each on its own vertical scale (e.g. loss and a validation metric), with a legend."""
    colours = (LINE, SECOND)
    names = list(series)[:2]
    pad, left, bottom = 8, 8, 22
    inner_h = height - bottom
    body, legend = [], []
    for k, name in enumerate(names):
        vals = _finite(series[name])
        if not vals:
            continue
        lo, hi = min(vals), max(vals)
        pts = _points(series[name], width - left, inner_h, pad, lo, hi)
        pts = [None if p is None else (p[0] + left, p[1]) for p in pts]
        body.append(f'<path d="{_path(pts)}" fill="none" stroke="{colours[k]}" stroke-width="2"/>')
        body += [f'<circle cx="{p[0]:.1f}" cy="{p[1]:.1f}" r="2" fill="{colours[k]}"/>' for p in pts if p]
        legend.append(f'<text x="{left + 4 + 230 * k}" y="{height - 6}" font-size="11" fill="{colours[k]}">'
                      f"{escape(name)} ({lo:.4g} to {hi:.4g})</text>")
    if not body:
        return Markup('<p class="muted">no data</p>')
    ticks = []
    n = len(x_labels)
    if n:
        ax, bx = _scale(0, max(n - 1, 1), pad + left, width - pad)
        step = max(1, n // 8)
        for i in range(0, n, step):
            ticks.append(f'<text x="{ax * i + bx:.1f}" y="{inner_h + 4}" font-size="9" fill="#64748b" '
                         f'text-anchor="middle">{escape(x_labels[i])}</text>')
    return Markup(
        f'<svg class="chart" viewBox="0 0 {width} {height + 6}" role="img" aria-label="{escape(title)}" '
        f'preserveAspectRatio="xMidYMid meet"><line x1="{left}" y1="{inner_h - pad}" x2="{width}" '
        f'y2="{inner_h - pad}" stroke="#e2e8f0"/>{"".join(body)}{"".join(ticks)}{"".join(legend)}</svg>'
    )


def forecast_chart(actual: Sequence[float], forecasts: Sequence[tuple[int, float, float, float]],
                   labels: Sequence[str], width: int = 560, height: int = 200, title: str = "") -> Markup:
    """Bars of actual counts per period and the forecasts (period index, mean, low, high) as points
    with their interval; a forecast may sit one period past the data (the future)."""
    n = max(len(actual), max((f[0] for f in forecasts), default=-1) + 1)
    if n == 0:
        return Markup('<p class="muted">no data</p>')
    top = max([*_finite(actual), *(f[3] for f in forecasts), 1.0])
    bottom, pad = 22, 8
    inner_h = height - bottom
    slot = (width - 2 * pad) / n
    ay, by = _scale(0, top, inner_h - pad, pad)
    parts = []
    for i, v in enumerate(actual):
        y = ay * v + by
        parts.append(f'<rect x="{pad + i * slot + slot * 0.15:.1f}" y="{y:.1f}" width="{slot * 0.7:.1f}" '
                     f'height="{max(inner_h - pad - y, 0):.1f}" fill="{ACTUAL}"><title>actual {v:g}</title></rect>')
    for i, mean, lo, hi in forecasts:
        x = pad + i * slot + slot / 2
        parts.append(f'<line x1="{x:.1f}" y1="{ay * lo + by:.1f}" x2="{x:.1f}" y2="{ay * hi + by:.1f}" '
                     f'stroke="{SECOND}" stroke-width="3" stroke-opacity="0.45"/>')
        parts.append(f'<circle cx="{x:.1f}" cy="{ay * mean + by:.1f}" r="4" fill="{SECOND}">'
                     f"<title>forecast {mean:.2f} ({lo:g} to {hi:g})</title></circle>")
    for i, lab in enumerate(labels[:n]):
        parts.append(f'<text x="{pad + i * slot + slot / 2:.1f}" y="{inner_h + 8}" font-size="9" fill="#64748b" '
                     f'text-anchor="middle">{escape(lab)}</text>')
    legend = (f'<text x="{pad}" y="{height - 2}" font-size="11" fill="{ACTUAL}">bars: actual</text>'
              f'<text x="{pad + 100}" y="{height - 2}" font-size="11" fill="{SECOND}">dots: forecast with '
              "interval</text>")
    return Markup(f'<svg class="chart" viewBox="0 0 {width} {height + 4}" role="img" aria-label="{escape(title)}">'
                  f'{"".join(parts)}{legend}</svg>')


def bar(share: float, width: int = 100, height: int = 10, label: str = "") -> Markup:
    """A horizontal bar for a probability or share in [0, 1]."""
    s = min(max(float(share), 0.0), 1.0) if math.isfinite(float(share)) else 0.0
    return Markup(f'<svg class="bar" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
                  f'aria-label="{escape(label)} {s:.0%}"><rect width="{width}" height="{height}" fill="#e2e8f0"/>'
                  f'<rect width="{s * width:.1f}" height="{height}" fill="{LINE}"/></svg>')
