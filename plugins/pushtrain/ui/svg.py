"""Charts as inline SVG, drawn on the server: readable without JavaScript, nothing fetched from elsewhere.

Three shapes cover the pipeline page: a line chart (learning curves, accuracy against training seconds),
a bar chart (held-out accuracy per attempt) and a heat map (confusion matrix). Each takes plain numbers and
returns one ``<svg>`` element as a string, with every text escaped. Colours come from the Okabe-Ito palette,
which stays distinguishable with the common colour-vision deficiencies; a dashed line is the second
dimension (training against validation), so no chart relies on colour alone.

Each chart carries ``data-chart`` (its name) and ``data-points`` (how many values it drew), and each drawn
value is an element with class ``point`` or ``bar`` and a ``<title>`` (the browser's tooltip), so a test or
a person can check what was drawn without reading pixels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#7F7F00", "#000000")
MET_COLOUR, BELOW_COLOUR, FAILED_COLOUR, TARGET_COLOUR = "#009E73", "#E69F00", "#999999", "#D55E00"
WIDTH, HEIGHT = 640, 300
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 58, 150, 30, 44  # the right margin holds the legend


@dataclass(frozen=True)
class Series:
    """One line: ``points`` are (x, y) pairs in drawing order."""

    name: str
    points: Sequence[tuple[float, float]]
    colour: str = PALETTE[0]
    dashed: bool = False


@dataclass(frozen=True)
class Bar:
    """One bar; ``value`` None draws a marker for a value that does not exist (a failed attempt)."""

    label: str
    value: float | None
    colour: str
    note: str = ""


def colour(index: int) -> str:
    return PALETTE[index % len(PALETTE)]


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values covering [low, high]: steps of 1, 2 or 5 times a power of ten."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return [0.0, 1.0]
    if high <= low:
        high = low + (abs(low) or 1.0)
    raw_step = (high - low) / max(count, 1)
    magnitude = 10 ** math.floor(math.log10(raw_step))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw_step)
    first = math.floor(low / step) * step
    ticks, value = [], first
    while value <= high + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    if ticks[-1] < high:
        ticks.append(round(value, 12))
    return ticks


def _number(value: float) -> str:
    """A tick or tooltip number: short, no float noise."""
    if value == int(value) and abs(value) < 1e9:
        return str(int(value))
    return f"{value:.4g}"


class _Frame:
    """Maps data coordinates to the plot area inside the margins."""

    def __init__(self, x_ticks: list[float], y_ticks: list[float], width: int, height: int) -> None:
        self.x_low, self.x_high = x_ticks[0], x_ticks[-1]
        self.y_low, self.y_high = y_ticks[0], y_ticks[-1]
        self.left, self.right = MARGIN_LEFT, width - MARGIN_RIGHT
        self.top, self.bottom = MARGIN_TOP, height - MARGIN_BOTTOM

    def x(self, value: float) -> float:
        span = (self.x_high - self.x_low) or 1.0
        return self.left + (value - self.x_low) / span * (self.right - self.left)

    def y(self, value: float) -> float:
        span = (self.y_high - self.y_low) or 1.0
        return self.bottom - (value - self.y_low) / span * (self.bottom - self.top)


def _open(name: str, title: str, width: int, height: int, points: int) -> list[str]:
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" data-chart="{escape(name)}" '
        f'data-points="{points}" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'role="img" aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
        f'<text class="chart-title" x="{MARGIN_LEFT}" y="18" font-size="14" font-weight="600" '
        f'fill="currentColor">{escape(title)}</text>',
    ]


def empty_chart(name: str, title: str, message: str, width: int = WIDTH, height: int = 120) -> str:
    parts = _open(name, title, width, height, 0)
    parts.append(
        f'<text x="{MARGIN_LEFT}" y="{height // 2 + 10}" font-size="13" fill="currentColor" '
        f'class="chart-empty">{escape(message)}</text></svg>'
    )
    return "\n".join(parts)


def _axes(frame: _Frame, x_ticks: list[float], y_ticks: list[float], x_label: str, y_label: str) -> list[str]:
    parts = ['<g class="axes" font-size="11" fill="currentColor" stroke="none">']
    for tick in y_ticks:
        y = frame.y(tick)
        parts.append(
            f'<line x1="{frame.left}" x2="{frame.right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#8884" />'
        )
        parts.append(f'<text x="{frame.left - 6}" y="{y + 4:.1f}" text-anchor="end">{_number(tick)}</text>')
    for tick in x_ticks:
        x = frame.x(tick)
        parts.append(
            f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{frame.bottom}" y2="{frame.bottom + 4}" '
            'stroke="currentColor" />'
        )
        parts.append(f'<text x="{x:.1f}" y="{frame.bottom + 16}" text-anchor="middle">{_number(tick)}</text>')
    parts.append(
        f'<line x1="{frame.left}" x2="{frame.right}" y1="{frame.bottom}" y2="{frame.bottom}" '
        'stroke="currentColor" />'
    )
    parts.append(
        f'<line x1="{frame.left}" x2="{frame.left}" y1="{frame.top}" y2="{frame.bottom}" '
        'stroke="currentColor" />'
    )
    parts.append(
        f'<text x="{(frame.left + frame.right) / 2:.1f}" y="{frame.bottom + 34}" '
        f'text-anchor="middle">{escape(x_label)}</text>'
    )
    middle = (frame.top + frame.bottom) / 2
    parts.append(
        f'<text x="14" y="{middle:.1f}" text-anchor="middle" '
        f'transform="rotate(-90 14 {middle:.1f})">{escape(y_label)}</text>'
    )
    parts.append("</g>")
    return parts


def _reference(frame: _Frame, value: float, label: str) -> list[str]:
    y = frame.y(value)
    return [
        f'<g class="reference" data-value="{value}">',
        f'<line x1="{frame.left}" x2="{frame.right}" y1="{y:.1f}" y2="{y:.1f}" stroke="{TARGET_COLOUR}" '
        'stroke-width="1.5" stroke-dasharray="6 4" />',
        f'<text x="{frame.right - 4}" y="{y - 5:.1f}" font-size="11" text-anchor="end" '
        f'fill="{TARGET_COLOUR}">{escape(label)}</text>',
        "</g>",
    ]


def _legend(entries: list[tuple[str, str, bool]], frame: _Frame) -> list[str]:
    parts = ['<g class="legend" font-size="11" fill="currentColor">']
    for index, (name, stroke, dashed) in enumerate(entries[:14]):
        y = frame.top + 8 + index * 16
        dash = ' stroke-dasharray="5 3"' if dashed else ""
        parts.append(
            f'<line x1="{frame.right + 12}" x2="{frame.right + 32}" y1="{y}" y2="{y}" '
            f'stroke="{stroke}" stroke-width="2"{dash} />'
        )
        parts.append(f'<text x="{frame.right + 38}" y="{y + 4}">{escape(name)}</text>')
    if len(entries) > 14:
        parts.append(
            f'<text x="{frame.right + 12}" y="{frame.top + 8 + 14 * 16 + 4}">'
            f"... {len(entries) - 14} more</text>"
        )
    parts.append("</g>")
    return parts


def _range(values: list[float], fixed: tuple[float, float] | None) -> tuple[float, float]:
    if fixed is not None:
        return fixed
    low, high = min(values), max(values)
    if low == high:
        low, high = low - 0.5, high + 0.5
    return low, high


def line_chart(
    name: str,
    title: str,
    series: Sequence[Series],
    *,
    x_label: str,
    y_label: str,
    y_range: tuple[float, float] | None = None,
    reference: tuple[float, str] | None = None,
    empty_message: str = "no data yet",
) -> str:
    """Lines with a marker per point; ``reference`` draws a dashed horizontal line (the target)."""
    drawn = [s for s in series if s.points]
    if not drawn:
        return empty_chart(name, title, empty_message)
    xs = [x for s in drawn for x, _ in s.points]
    ys = [y for s in drawn for _, y in s.points] + ([reference[0]] if reference else [])
    x_ticks = nice_ticks(*_range(xs, None))
    y_ticks = nice_ticks(*_range(ys, y_range))
    frame = _Frame(x_ticks, y_ticks, WIDTH, HEIGHT)
    parts = _open(name, title, WIDTH, HEIGHT, sum(len(s.points) for s in drawn))
    parts += _axes(frame, x_ticks, y_ticks, x_label, y_label)
    if reference:
        parts += _reference(frame, *reference)
    for line in drawn:
        dash = ' stroke-dasharray="5 3"' if line.dashed else ""
        path = " ".join(
            f"{'M' if i == 0 else 'L'}{frame.x(x):.1f},{frame.y(y):.1f}"
            for i, (x, y) in enumerate(line.points)
        )
        parts.append(f'<g class="series" data-series="{escape(line.name)}">')
        parts.append(f'<path d="{path}" fill="none" stroke="{line.colour}" stroke-width="2"{dash} />')
        for x, y in line.points:
            parts.append(
                f'<circle class="point" cx="{frame.x(x):.1f}" cy="{frame.y(y):.1f}" r="3" '
                f'fill="{line.colour}"><title>{escape(line.name)}: {_number(x)}, {_number(y)}'
                "</title></circle>"
            )
        parts.append("</g>")
    parts += _legend([(s.name, s.colour, s.dashed) for s in drawn], frame)
    parts.append("</svg>")
    return "\n".join(parts)


def bar_chart(
    name: str,
    title: str,
    bars: Sequence[Bar],
    *,
    y_label: str,
    x_label: str = "",
    y_range: tuple[float, float] = (0.0, 1.0),
    reference: tuple[float, str] | None = None,
    empty_message: str = "no data yet",
) -> str:
    """One bar per entry; an entry without a value gets a grey cross where its bar would be."""
    if not bars:
        return empty_chart(name, title, empty_message)
    y_ticks = nice_ticks(*y_range)
    width = max(WIDTH, MARGIN_LEFT + MARGIN_RIGHT + 34 * len(bars))
    frame = _Frame([0.0, float(len(bars))], y_ticks, width, HEIGHT)
    parts = _open(name, title, width, HEIGHT, len(bars))
    parts += _axes(frame, [], y_ticks, x_label, y_label)
    slot = (frame.right - frame.left) / len(bars)
    bar_width = min(48.0, slot * 0.7)
    for index, bar in enumerate(bars):
        centre = frame.x(index + 0.5)
        label = escape(bar.label)
        note = f" ({escape(bar.note)})" if bar.note else ""
        parts.append(
            f'<text x="{centre:.1f}" y="{frame.bottom + 16}" font-size="11" text-anchor="middle" '
            f'fill="currentColor">{label}</text>'
        )
        if bar.value is None:
            y = frame.bottom - 14
            parts.append(
                f'<g class="bar missing" data-label="{label}"><title>{label}: no value{note}</title>'
                f'<path d="M{centre - 7:.1f},{y - 7:.1f} L{centre + 7:.1f},{y + 7:.1f} '
                f'M{centre - 7:.1f},{y + 7:.1f} L{centre + 7:.1f},{y - 7:.1f}" '
                f'stroke="{bar.colour}" stroke-width="3" /></g>'
            )
            continue
        value = min(max(bar.value, y_ticks[0]), y_ticks[-1])
        top = frame.y(value)
        parts.append(
            f'<rect class="bar" data-label="{label}" data-value="{bar.value}" '
            f'x="{centre - bar_width / 2:.1f}" y="{top:.1f}" width="{bar_width:.1f}" '
            f'height="{max(frame.bottom - top, 0.5):.1f}" fill="{bar.colour}">'
            f"<title>{label}: {bar.value:.4f}{note}</title></rect>"
        )
        parts.append(
            f'<text x="{centre:.1f}" y="{top - 4:.1f}" font-size="10" text-anchor="middle" '
            f'fill="currentColor">{bar.value:.3f}</text>'
        )
    if reference:
        parts += _reference(frame, *reference)
    parts.append("</svg>")
    return "\n".join(parts)


def heatmap(
    name: str,
    title: str,
    matrix: Sequence[Sequence[int]],
    labels: Sequence[str],
    *,
    x_label: str = "predicted",
    y_label: str = "true",
) -> str:
    """A confusion matrix: rows are true classes, columns predicted; shade by the share of the row."""
    size = len(matrix)
    if size == 0:
        return empty_chart(name, title, "no confusion matrix")
    cell = max(16, min(40, 400 // size))
    left, top = 70, 40
    width, height = max(left + cell * size + 20, MARGIN_LEFT + 9 * len(title)), top + cell * size + 50
    parts = _open(name, title, width, height, size * size)
    for row_index, row in enumerate(matrix):
        total = sum(row) or 1
        y = top + row_index * cell
        parts.append(
            f'<text x="{left - 6}" y="{y + cell / 2 + 4:.1f}" font-size="11" text-anchor="end" '
            f'fill="currentColor">{escape(labels[row_index])}</text>'
        )
        for column_index, count in enumerate(row):
            share = count / total
            x = left + column_index * cell
            shade = f"rgba(0, 114, 178, {0.08 + 0.92 * share:.3f})" if count else "transparent"
            text_colour = "#fff" if share > 0.5 else "currentColor"
            cell_title = f"true {labels[row_index]}, predicted {labels[column_index]}: {count}"
            parts.append(
                f'<g class="point" data-row="{row_index}" data-column="{column_index}" '
                f'data-count="{count}"><title>{escape(cell_title)}</title>'
                f'<rect x="{x}" y="{y}" width="{cell}" height="{cell}" fill="{shade}" '
                'stroke="#8886" />'
            )
            if count:
                parts.append(
                    f'<text x="{x + cell / 2:.1f}" y="{y + cell / 2 + 4:.1f}" font-size="10" '
                    f'text-anchor="middle" fill="{text_colour}">{count}</text>'
                )
            parts.append("</g>")
    for column_index, label in enumerate(labels):
        x = left + column_index * cell + cell / 2
        parts.append(
            f'<text x="{x:.1f}" y="{top + size * cell + 14}" font-size="11" text-anchor="middle" '
            f'fill="currentColor">{escape(label)}</text>'
        )
    parts.append(
        f'<text x="{left + size * cell / 2:.1f}" y="{top + size * cell + 34}" font-size="11" '
        f'text-anchor="middle" fill="currentColor">{escape(x_label)}</text>'
    )
    parts.append(
        f'<text x="12" y="{top + size * cell / 2:.1f}" font-size="11" text-anchor="middle" '
        f'fill="currentColor" transform="rotate(-90 12 {top + size * cell / 2:.1f})">'
        f"{escape(y_label)}</text>"
    )
    parts.append("</svg>")
    return "\n".join(parts)
