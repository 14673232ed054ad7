"""Best reward so far against episode: how fast a strategy finds good policies (the search's own, and
with `compare` the baselines'), as numbers in report.json and a plot (`curves.svg`)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


def best_so_far(rows: Sequence[Mapping[str, Any]], key: str = "reward") -> list[float]:
    """The running maximum of `key` over the episodes, in episode order."""
    out: list[float] = []
    best = -math.inf
    for row in rows:
        value = float(row[key])
        if math.isfinite(value):
            best = max(best, value)
        out.append(best)
    return out


def mean_band(curves: Sequence[Sequence[float]]) -> tuple[list[float], list[float]]:
    """Mean and sample standard deviation over curves, episode by episode (over the curves that are
    that long)."""
    length = max((len(c) for c in curves), default=0)
    mean, std = [], []
    for i in range(length):
        values = [c[i] for c in curves if i < len(c) and math.isfinite(c[i])]
        mean.append(statistics.fmean(values) if values else math.nan)
        std.append(statistics.stdev(values) if len(values) > 1 else 0.0)
    return mean, std


def _xml(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def curves_svg(curves: Mapping[str, Sequence[float]], *, bands: Mapping[str, Sequence[float]] | None = None,
               title: str = "best reward so far", warmup: int | None = None, width: int = 640,
               height: int = 360) -> str:
    """One line per name (x: episode from 1, y: value); `bands` (the same names) shade ±1 standard
    deviation; `warmup` marks where DDPG's warm-up ends."""
    bands = bands or {}
    head = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
            f'<rect width="{width}" height="{height}" fill="white"/>']
    values = [v for name, c in curves.items() for i, v in enumerate(c) if math.isfinite(v)]
    values += [c[i] + s * b[i] for name, c in curves.items() if (b := bands.get(name))
               for i in range(min(len(c), len(b))) if math.isfinite(c[i]) for s in (-1, 1)]
    length = max((len(c) for c in curves.values()), default=0)
    if not values or length == 0:
        return "\n".join(head + [f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle">no episodes</text>',
                                 "</svg>"]) + "\n"
    pad_l, pad_r, pad_t, pad_b = 64, 130, 24, 40
    y0, y1 = min(values), max(values)
    dy = (y1 - y0) or abs(y1) * 0.1 or 0.01
    y0, y1 = y0 - 0.05 * dy, y1 + 0.05 * dy
    x1 = max(length, 2)

    def px(x: float) -> float:
        return pad_l + (x - 1) / (x1 - 1) * (width - pad_l - pad_r)

    def py(y: float) -> float:
        return height - pad_b - (y - y0) / (y1 - y0) * (height - pad_t - pad_b)

    body = [f'<text x="{pad_l}" y="14">{_xml(title)}</text>',
            f'<line x1="{pad_l}" y1="{height - pad_b}" x2="{width - pad_r}" y2="{height - pad_b}" stroke="black"/>',
            f'<line x1="{pad_l}" y1="{pad_t}" x2="{pad_l}" y2="{height - pad_b}" stroke="black"/>',
            f'<text x="{(width - pad_r + pad_l) / 2}" y="{height - 6}" text-anchor="middle">episode</text>']
    decimals = max(2, min(6, math.ceil(-math.log10((y1 - y0) / 4)) + 1)) if y1 > y0 else 3
    for i in range(5):
        yv = y0 + i * (y1 - y0) / 4
        xv = 1 + round(i * (x1 - 1) / 4)
        body.append(f'<text x="{px(xv):.1f}" y="{height - pad_b + 14}" text-anchor="middle">{xv}</text>')
        body.append(f'<text x="{pad_l - 6}" y="{py(yv) + 4:.1f}" text-anchor="end">{yv:.{decimals}f}</text>')
    if warmup and 1 < warmup < length:
        body.append(f'<line x1="{px(warmup):.1f}" y1="{pad_t}" x2="{px(warmup):.1f}" y2="{height - pad_b}" '
                    f'stroke="#999" stroke-dasharray="4 3"/>')
        body.append(f'<text x="{px(warmup) + 4:.1f}" y="{pad_t + 10}" fill="#666">warm-up ends</text>')
    for k, (name, curve) in enumerate(curves.items()):
        colour = COLOURS[k % len(COLOURS)]
        pts = [(i + 1, v) for i, v in enumerate(curve) if math.isfinite(v)]
        band = bands.get(name)
        if band and len(pts) > 1:
            upper = [f"{px(x):.1f},{py(v + band[x - 1]):.1f}" for x, v in pts]
            lower = [f"{px(x):.1f},{py(v - band[x - 1]):.1f}" for x, v in reversed(pts)]
            body.append(f'<polygon points="{" ".join(upper + lower)}" fill="{colour}" fill-opacity="0.15" stroke="none"/>')
        if len(pts) > 1:
            body.append(f'<polyline points="{" ".join(f"{px(x):.1f},{py(v):.1f}" for x, v in pts)}" fill="none" '
                        f'stroke="{colour}" stroke-width="2"/>')
        elif pts:
            body.append(f'<circle cx="{px(pts[0][0]):.1f}" cy="{py(pts[0][1]):.1f}" r="3" fill="{colour}"/>')
        last = pts[-1][1] if pts else math.nan
        body.append(f'<text x="{width - pad_r + 8}" y="{pad_t + 14 + 16 * k}" fill="{colour}">{_xml(name)} '
                    f'{last:.{decimals}f}</text>')
    return "\n".join(head + body + ["</svg>"]) + "\n"
