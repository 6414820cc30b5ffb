"""Small building blocks of Strata's self-contained HTML pages: CSS, escaping, inline-SVG charts, tables.

Shared by the privacy report and the run report; no scripts, no external assets.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf")
CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;max-width:960px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em}
h2{font-size:1.25em;margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:.2em}
.guarantee{border:2px solid #2a6;background:#f3fbf6;padding:1em 1.2em;border-radius:6px}
.guarantee.none{border-color:#c33;background:#fdf3f3}
.big{font-size:1.7em;font-weight:600;margin:.2em 0}
.status{display:inline-block;padding:.15em .6em;border-radius:4px;font-weight:600}
.ok{background:#d8f3e0;color:#185c2e}.fail{background:#f8d7d7;color:#8a1c1c}.na{background:#eee;color:#555}
table{border-collapse:collapse;margin:.6em 0;font-size:.92em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f4f4f4} td.num{text-align:right;font-variant-numeric:tabular-nums}
code,.mono{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.9em;word-break:break-all}
.muted{color:#666} svg{display:block;margin:.5em 0}
"""


def escape(text: object) -> str:
    """Escape `text` for HTML text and attribute values."""
    return html.escape(str(text), quote=True)


def nice_step(span: float, n: int = 5) -> float:
    """Return a round axis step (1, 2, 2.5 or 5 times a power of ten) giving about `n` ticks."""
    raw = max(span, 1e-12) / n
    mag = 10.0 ** math.floor(math.log10(raw))
    return next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)


def line_chart(series: list[tuple[str, list[tuple[float, float]], bool]], *, x_label: str, y_label: str) -> str:
    """Draw an inline SVG line chart; each series is (label, points, emphasised)."""
    w, h, left, right, top, bottom = 760, 320, 60, 190, 15, 45
    xs = [x for _, pts, _ in series for x, _ in pts]
    ys = [y for _, pts, _ in series for _, y in pts]
    x0, x1 = min(xs), max(xs)
    if x0 == x1:
        x0, x1 = x0 - 1, x1 + 1
    ystep = nice_step(max(ys) or 1.0)
    y1 = ystep * math.ceil((max(ys) or 1.0) / ystep)
    pw, ph = w - left - right, h - top - bottom

    def px(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * pw

    def py(y: float) -> float:
        return top + ph - y / y1 * ph

    out = [
        (
            f'<svg width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" '
            f'aria-label="{escape(y_label)} by {escape(x_label)}">'
        )
    ]
    y = 0.0
    while y <= y1 + 1e-9:
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{py(y):.1f}" y2="{py(y):.1f}" stroke="#e5e5e5"/>')
        out.append(
            f'<text x="{left - 6}" y="{py(y) + 4:.1f}" font-size="11" text-anchor="end">{escape(f"{y:g}")}</text>'
        )
        y += ystep
    xstep = max(1.0, nice_step(x1 - x0, 8))
    x = math.ceil(x0 / xstep) * xstep
    while x <= x1 + 1e-9:
        out.append(f'<line x1="{px(x):.1f}" x2="{px(x):.1f}" y1="{top + ph}" y2="{top + ph + 4}" stroke="#333"/>')
        out.append(
            f'<text x="{px(x):.1f}" y="{top + ph + 17}" font-size="11" text-anchor="middle">{escape(f"{x:g}")}</text>'
        )
        x += xstep
    out.append(f'<line x1="{left}" x2="{left + pw}" y1="{top + ph}" y2="{top + ph}" stroke="#333"/>')
    out.append(f'<line x1="{left}" x2="{left}" y1="{top}" y2="{top + ph}" stroke="#333"/>')
    out.append(
        f'<text x="{left + pw / 2:.1f}" y="{h - 8}" font-size="12" text-anchor="middle">{escape(x_label)}</text>'
    )
    out.append(
        f'<text x="14" y="{top + ph / 2:.1f}" font-size="12" text-anchor="middle" '
        f'transform="rotate(-90 14 {top + ph / 2:.1f})">{escape(y_label)}</text>'
    )
    colours = iter(PALETTE)
    for i, (label, pts, bold) in enumerate(series):
        colour = "#111" if bold else next(colours, "#999")
        path = " ".join(f"{px(a):.1f},{py(b):.1f}" for a, b in pts)
        dash = ' stroke-dasharray="6 3"' if bold else ""
        width = 3 if bold else 1.6
        out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="{width}"{dash} points="{path}"/>')
        if len(pts) <= 40:
            out += [f'<circle cx="{px(a):.1f}" cy="{py(b):.1f}" r="2.5" fill="{colour}"/>' for a, b in pts]
        ly = top + 10 + 18 * i
        out.append(
            f'<line x1="{left + pw + 12}" x2="{left + pw + 36}" y1="{ly}" y2="{ly}" '
            f'stroke="{colour}" stroke-width="{width}"{dash}/>'
        )
        out.append(f'<text x="{left + pw + 42}" y="{ly + 4}" font-size="11">{escape(label)}</text>')
    out.append("</svg>")
    return "".join(out)


def histogram(values: list[float], *, x_label: str) -> str:
    """Draw an inline SVG histogram of `values` (counts per bin)."""
    w, h, bottom, top = 760, 260, 50, 15
    left: float = 60
    lo, hi = min(values), max(values)
    n_bins = 1 if hi - lo < 1e-9 else min(12, max(3, math.ceil(math.sqrt(len(values)))))
    width = (hi - lo) / n_bins if n_bins > 1 else 1.0
    counts = [0] * n_bins
    for v in values:
        counts[min(n_bins - 1, int((v - lo) / width)) if n_bins > 1 else 0] += 1
    pw, ph = w - left - 20, h - top - bottom
    cmax = max(counts)
    bw = min(pw / n_bins, 90.0)
    left += (pw - bw * n_bins) / 2  # few bins: narrow bars, centred
    out = [
        f'<svg width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" aria-label="histogram of {escape(x_label)}">'
    ]
    for i, c in enumerate(counts):
        bh = c / cmax * (ph - 14)
        x, y = left + i * bw, top + ph - bh
        a, b = (lo + i * width, lo + (i + 1) * width) if n_bins > 1 else (lo, hi)
        label = f"{a:.3f}–{b:.3f}" if n_bins > 1 else f"{a:.3f}"
        out.append(
            f'<rect x="{x + 2:.1f}" y="{y:.1f}" width="{bw - 4:.1f}" height="{bh:.1f}" fill="#1f77b4">'
            f"<title>{escape(label)}: {c}</title></rect>"
        )
        out.append(f'<text x="{x + bw / 2:.1f}" y="{y - 3:.1f}" font-size="11" text-anchor="middle">{c}</text>')
        out.append(
            f'<text x="{x + bw / 2:.1f}" y="{top + ph + 15}" font-size="10" text-anchor="middle">{escape(label)}</text>'
        )
    out.append(f'<line x1="{left - 10}" x2="{left + bw * n_bins + 10}" y1="{top + ph}" y2="{top + ph}" stroke="#333"/>')
    out.append(f'<text x="{w / 2:.1f}" y="{h - 10}" font-size="12" text-anchor="middle">{escape(x_label)}</text>')
    out.append(
        f'<text x="14" y="{top + ph / 2:.1f}" font-size="12" text-anchor="middle" '
        f'transform="rotate(-90 14 {top + ph / 2:.1f})">clients</text>'
    )
    out.append("</svg>")
    return "".join(out)


def table(
    head: Sequence[str], rows: Sequence[Sequence[object]], numeric: Sequence[int] = (), mono: Sequence[int] = ()
) -> str:
    """Render an HTML table; cells in `numeric` columns are right-aligned."""
    def cell(i: int, v: object) -> str:
        cls = " class='num'" if i in numeric else " class='mono'" if i in mono else ""
        return f"<td{cls}>{escape(v)}</td>"

    th = "".join(f"<th>{escape(c)}</th>" for c in head)
    body = "".join("<tr>" + "".join(cell(i, v) for i, v in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"
