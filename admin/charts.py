"""Server-side SVG bar charts: no JavaScript, no CDN, every label escaped."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

WIDTH, HEIGHT = 640, 220
LEFT, RIGHT, TOP, BOTTOM = 56, 8, 12, 28
MAX_X_LABELS = 10


@dataclass(frozen=True)
class Series:
    """One row of values, one per label, drawn in colour `index` (CSS class s0..s3)."""

    name: str
    values: Sequence[float]
    index: int = 0


def axis(largest: float, *, integer: bool = True, ticks: int = 4) -> tuple[float, float]:
    """A round axis top and its tick step: 1, 2 or 5 times a power of ten (whole for counts)."""
    largest = largest if largest > 0 else 1
    raw = largest / ticks
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if raw <= m * magnitude)
    if integer:
        step = max(step, 1)
    return round(math.ceil(largest / step) * step, 10), step


def _number(value: float) -> str:
    return f"{value:g}"


def bar_chart(
    *,
    chart_id: str,
    title: str,
    labels: Sequence[str],
    series: Sequence[Series],
    fmt: Callable[[float], str] = _number,
    max_value: float | None = None,
    integer: bool = True,
) -> Markup:
    """Grouped bars per label with a y axis, a legend and a tooltip title on every bar."""
    largest = max((v for s in series for v in s.values), default=0)
    if max_value:
        top_value, step = max_value, max_value / 4
    else:
        top_value, step = axis(largest, integer=integer)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    count = max(len(labels), 1)
    group_w = plot_w / count
    bar_w = group_w * 0.8 / max(len(series), 1)
    every = math.ceil(count / MAX_X_LABELS)

    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-labelledby="{escape(chart_id)}-title" preserveAspectRatio="xMidYMid meet">',
        f'<title id="{escape(chart_id)}-title">{escape(title)}</title>',
    ]
    for tick in range(round(top_value / step) + 1):
        value = step * tick
        y = TOP + plot_h - plot_h * value / top_value
        parts.append(
            f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>'
            f'<text class="tick" x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">'
            f"{escape(fmt(value))}</text>"
        )
    for i, label in enumerate(labels):
        x0 = LEFT + group_w * i + group_w * 0.1
        for j, line in enumerate(series):
            value = line.values[i] if i < len(line.values) else 0
            h = plot_h * min(value, top_value) / top_value if top_value else 0
            x = x0 + bar_w * j
            parts.append(
                f'<rect class="bar s{line.index % 4}" x="{x:.1f}" y="{TOP + plot_h - h:.1f}" '
                f'width="{max(bar_w - 1, 1):.1f}" height="{h:.1f}">'
                f"<title>{escape(label)}: {escape(line.name)} {escape(fmt(value))}</title></rect>"
            )
        if i % every == 0:
            parts.append(
                f'<text class="tick" x="{LEFT + group_w * (i + 0.5):.1f}" y="{HEIGHT - 8}" '
                f'text-anchor="middle">{escape(label)}</text>'
            )
    parts.append(
        f'<line class="axis" x1="{LEFT}" x2="{WIDTH - RIGHT}" '
        f'y1="{TOP + plot_h}" y2="{TOP + plot_h}"/></svg>'
    )
    legend = "".join(
        f'<li><span class="swatch s{line.index % 4}" aria-hidden="true"></span>'
        f"{escape(line.name)}</li>"
        for line in series
    )
    return Markup(  # noqa: S704 (every value in it went through escape() above)
        f'<figure class="chart-figure">{"".join(parts)}'
        f'<figcaption><ul class="legend">{legend}</ul></figcaption></figure>'
    )
