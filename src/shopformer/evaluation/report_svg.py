"""Inline SVG charts and HTML tables for the self-contained HTML report (``pipelines/applications/report_html.py``).

Pure string builders, no plotting library: every chart is an ``<svg>`` element the page embeds
(no ``xmlns`` needed inside HTML5, so the page holds no URL at all). Each point carries a
``<title>`` (hover tooltip) and each series a ``data-series`` name, so the page's few lines of
script can toggle a series by clicking its legend entry. Every text that comes from data (ids,
system names) is escaped here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from html import escape

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")
W, H, LEFT, RIGHT, TOP, BOTTOM = 560, 300, 56, 150, 28, 40


def fmt(x: float | None, digits: int = 4) -> str:
    """A number for a table cell: fixed digits, '–' for missing / NaN."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    if isinstance(x, int):
        return f"{x:,}"
    return f"{x:.{digits}f}"


def _finite(xs: Sequence[float | None]) -> list[float]:
    return [float(x) for x in xs if x is not None and math.isfinite(float(x))]


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        return [lo]
    step = 10 ** math.floor(math.log10((hi - lo) / n))
    for m in (1, 2, 5, 10):
        if (hi - lo) / (step * m) <= n:
            step *= m
            break
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


class _Frame:
    """Maps data coordinates to the plot area and draws axes, ticks and the legend."""

    def __init__(self, xlo: float, xhi: float, ylo: float, yhi: float) -> None:
        pad = (yhi - ylo) * 0.05 or 1.0
        self.xlo, self.xhi = xlo, xhi if xhi > xlo else xlo + 1
        self.ylo, self.yhi = ylo - pad, yhi + pad

    def x(self, v: float) -> float:
        return LEFT + (v - self.xlo) / (self.xhi - self.xlo) * (W - LEFT - RIGHT)

    def y(self, v: float) -> float:
        return TOP + (1 - (v - self.ylo) / (self.yhi - self.ylo)) * (H - TOP - BOTTOM)

    def axes(self, title: str, xlabel: str, ylabel: str, xticks: list[tuple[float, str]] | None = None) -> list[str]:
        out = [f'<text x="{W / 2 - RIGHT / 2:.0f}" y="16" class="t">{escape(title)}</text>',
               f'<line x1="{LEFT}" y1="{H - BOTTOM}" x2="{W - RIGHT}" y2="{H - BOTTOM}" class="ax"/>',
               f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{H - BOTTOM}" class="ax"/>',
               f'<text x="{(LEFT + W - RIGHT) / 2:.0f}" y="{H - 6}" class="l">{escape(xlabel)}</text>',
               f'<text x="12" y="{(TOP + H - BOTTOM) / 2:.0f}" class="l" '
               f'transform="rotate(-90 12 {(TOP + H - BOTTOM) / 2:.0f})">{escape(ylabel)}</text>']
        for v in _ticks(self.ylo, self.yhi):
            out.append(f'<text x="{LEFT - 4}" y="{self.y(v) + 4:.1f}" class="yt">{v:g}</text>'
                       f'<line x1="{LEFT}" y1="{self.y(v):.1f}" x2="{W - RIGHT}" y2="{self.y(v):.1f}" class="g"/>')
        for v, label in xticks if xticks is not None else [(t, f"{t:g}") for t in _ticks(self.xlo, self.xhi)]:
            out.append(f'<text x="{self.x(v):.1f}" y="{H - BOTTOM + 14}" class="xt">{escape(label)}</text>')
        return out


def _legend(names: list[str]) -> list[str]:
    out = []
    for i, name in enumerate(names):
        y = TOP + 6 + 16 * i
        out.append(f'<g class="lg" data-series="{escape(name)}"><rect x="{W - RIGHT + 10}" y="{y - 8}" width="10" '
                   f'height="10" fill="{PALETTE[i % len(PALETTE)]}"/><text x="{W - RIGHT + 24}" y="{y + 1}">'
                   f'{escape(name[:22])}</text></g>')
    return out


def _svg(parts: list[str]) -> str:
    return f'<svg viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img">' + "".join(parts) + "</svg>"


def line_chart(series: Mapping[str, tuple[Sequence[float], Sequence[float | None]]], title: str, xlabel: str,
               ylabel: str, xticks: list[tuple[float, str]] | None = None, diagonal: bool = False) -> str:
    """Lines with hoverable points; ``series``: name -> (xs, ys), None / NaN ys are gaps."""
    xs = _finite([x for sx, _ in series.values() for x in sx])
    ys = _finite([y for _, sy in series.values() for y in sy])
    if not xs or not ys:
        return f'<p class="muted">{escape(title)}: no data</p>'
    lo, hi = min(ys), max(ys)
    if diagonal:
        lo, hi = min(lo, min(xs)), max(hi, max(xs))
    f = _Frame(min(xs), max(xs), lo, hi)
    parts = f.axes(title, xlabel, ylabel, xticks)
    if diagonal:
        parts.append(f'<line x1="{f.x(f.xlo):.1f}" y1="{f.y(f.xlo):.1f}" x2="{f.x(f.xhi):.1f}" y2="{f.y(f.xhi):.1f}" '
                     'class="diag"/>')
    for i, (name, (sx, sy)) in enumerate(series.items()):
        color = PALETTE[i % len(PALETTE)]
        pts = [(float(x), float(y)) for x, y in zip(sx, sy, strict=True) if y is not None and math.isfinite(float(y))]
        path = " ".join(f"{f.x(x):.1f},{f.y(y):.1f}" for x, y in pts)
        dots = "".join(f'<circle cx="{f.x(x):.1f}" cy="{f.y(y):.1f}" r="3" fill="{color}"><title>{escape(name)}: '
                       f'{x:g}, {y:.4g}</title></circle>' for x, y in pts)
        parts.append(f'<g data-series="{escape(name)}"><polyline points="{path}" fill="none" stroke="{color}" '
                     f'stroke-width="1.8"/>{dots}</g>')
    return _svg(parts + _legend(list(series)))


def bar_chart(labels: list[str], values: list[float], lo: list[float | None] | None = None,
              hi: list[float | None] | None = None, title: str = "", ylabel: str = "") -> str:
    """Vertical bars with optional CI whiskers (hover: value and interval)."""
    top = _finite([*values, *(hi or [])])
    if not labels or not top:
        return f'<p class="muted">{escape(title)}: no data</p>'
    f = _Frame(-0.5, len(labels) - 0.5, min(0.0, *_finite(values)), max(top))
    parts = f.axes(title, "", ylabel, [(i, lab[:14]) for i, lab in enumerate(labels)])
    bw = (W - LEFT - RIGHT) / len(labels) * 0.6
    for i, (lab, v) in enumerate(zip(labels, values, strict=True)):
        if not math.isfinite(v):
            continue
        a, b = (lo[i], hi[i]) if lo is not None and hi is not None else (None, None)
        ci = f" [{a:.4g}, {b:.4g}]" if a is not None and b is not None else ""
        y0, y1 = f.y(0.0), f.y(v)
        parts.append(f'<rect x="{f.x(i) - bw / 2:.1f}" y="{min(y0, y1):.1f}" width="{bw:.1f}" '
                     f'height="{abs(y0 - y1):.1f}" fill="{PALETTE[i % len(PALETTE)]}"><title>{escape(lab)}: '
                     f'{v:.4g}{ci}</title></rect>')
        if a is not None and b is not None:
            parts.append(f'<line x1="{f.x(i):.1f}" y1="{f.y(a):.1f}" x2="{f.x(i):.1f}" y2="{f.y(b):.1f}" class="ci"/>')
    return _svg(parts)


def table(header: list[str], rows: list[list[str]], raw: bool = False, caption: str = "") -> str:
    """A sortable table (click a header). Cells are escaped unless ``raw`` (already-built HTML)."""
    cell = (lambda s: s) if raw else escape
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(c)}</td>" for c in r) + "</tr>" for r in rows)
    cap = f"<caption>{escape(caption)}</caption>" if caption else ""
    return f'<table class="sortable">{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


STYLE = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1180px;color:#222}
h1{font-size:22px}h2{font-size:18px;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:32px}
h3{font-size:15px;margin-bottom:6px}
table{border-collapse:collapse;margin:8px 0 16px;font-size:13px}caption{text-align:left;color:#555;padding:2px 0}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:right}th{background:#f4f4f4;cursor:pointer}
td:first-child,th:first-child{text-align:left}
.warn{background:#fff4e0;border-left:4px solid #f0a020;padding:6px 10px;margin:4px 0}
.muted{color:#777}.ci-t{color:#777;font-size:11px}.charts{display:flex;flex-wrap:wrap;gap:12px}
svg{background:#fff;border:1px solid #eee}svg text{font-size:11px;fill:#333}svg .t{font-size:13px;font-weight:600;
text-anchor:middle}svg .l{text-anchor:middle;fill:#555}svg .yt{text-anchor:end}svg .xt{text-anchor:middle}
svg .ax{stroke:#444}svg .g{stroke:#eee}svg .ci{stroke:#000;stroke-width:1.5}svg .diag{stroke:#999;stroke-dasharray:4 3}
svg .lg{cursor:pointer}svg .off{opacity:.15}code{background:#f4f4f4;padding:1px 4px}
"""

SCRIPT = """
document.querySelectorAll('svg .lg').forEach(function(g){g.addEventListener('click',function(){
  var n=g.getAttribute('data-series');g.classList.toggle('off');
  g.closest('svg').querySelectorAll('g[data-series]:not(.lg)').forEach(function(s){
    if(s.getAttribute('data-series')===n){s.classList.toggle('off');}});});});
document.querySelectorAll('table.sortable th').forEach(function(th,i){th.addEventListener('click',function(){
  var tb=th.closest('table').tBodies[0],rows=Array.prototype.slice.call(tb.rows),asc=th.dataset.asc!=='1';
  th.dataset.asc=asc?'1':'0';rows.sort(function(a,b){var x=a.cells[i].textContent,y=b.cells[i].textContent,
  p=parseFloat(x.replace(/,/g,'')),q=parseFloat(y.replace(/,/g,''));
  var c=(isNaN(p)||isNaN(q))?x.localeCompare(y):p-q;return asc?c:-c;});
  rows.forEach(function(r){tb.appendChild(r);});});});
"""
