"""The HTML report's charts: plain data in, SVG text out, one function per chart.

Drawn with matplotlib, the scientific Python standard, as SVG: the page holds
them inline, so it opens from disk with nothing fetched, stays sharp at any
zoom and prints as vectors. Text is drawn as paths (``svg.fonttype: path``) so
no font is needed, and element ids are salted and prefixed per chart so that
the same data draws the same file and charts on one page never share an id.

Figures are made with ``matplotlib.figure.Figure``, never ``pyplot``: no
backend is chosen and no figure is registered anywhere, so a test suite that
uses matplotlib itself keeps its backend and its open figures, and a figure is
freed with its last reference. The style is matplotlib's default plus ours,
inside a context that puts the user's ``rcParams`` back afterwards.

matplotlib is imported by the functions that draw, not with this module: the
plugin (and ``html_report``) load without it, and it is needed only when a
page is drawn.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

#: matplotlib's default style plus ours; see the module's docstring for the svg keys
STYLE: dict[str, object] = {
    "svg.fonttype": "path",
    "svg.hashsalt": "pytest-ollama-cpu",
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "xtick.labelsize": 8.5,
    "ytick.labelsize": 8.5,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.6,
    "legend.frameon": False,
    "lines.linewidth": 1.4,
}

# Okabe and Ito's palette: told apart with any colour vision, and in grey print
BLUE = "#0072B2"
ORANGE = "#E69F00"
GREEN = "#009E73"
VERMILLION = "#D55E00"
PURPLE = "#CC79A7"
SKY = "#56B4E9"
GREY = "#777777"

#: one colour per phase or series, in order
SERIES_COLOURS = (BLUE, ORANGE, GREEN, PURPLE, SKY, VERMILLION, GREY)

#: inches: wide enough for a laptop column, small enough for two side by side
CHART_WIDTH = 5.0
CHART_HEIGHT = 3.2


@dataclass(frozen=True)
class Estimate:
    """A median at ``x`` (a thread count, or a run's place) with an interval."""

    x: float
    median: float
    low: float | None = None
    high: float | None = None


@dataclass(frozen=True)
class RatePoint:
    """One thread count of one rate: the median of its undisturbed samples with an
    interval (None where none was undisturbed), every sample, and the machine's limit
    there (None where not known)."""

    threads: int
    estimate: Estimate | None
    samples: tuple[float, ...] = ()
    disturbed: tuple[float, ...] = ()
    limit: float | None = None


@dataclass(frozen=True)
class RatePanel:
    """One rate across thread counts: 'generation rate', tokens/s."""

    title: str
    unit: str
    points: tuple[RatePoint, ...]
    #: the count to highlight, and what it is ("recommended num_thread 1")
    recommended: int | None = None
    recommended_label: str = ""
    #: what bounds the rate: the memory limit (generation), the compute limit (prefill)
    limit_label: str = "machine limit"


@dataclass(frozen=True)
class Series:
    """A line of estimates: a utilization per thread count, or one count across runs."""

    label: str
    points: tuple[Estimate, ...]
    dashed: bool = False


@dataclass(frozen=True)
class Threshold:
    """A rule's line on a chart: 'min_utilization 0.7'."""

    label: str
    value: float


@dataclass(frozen=True)
class ForestRow:
    """One compared row: its change with the interval, and whether it regressed."""

    label: str
    estimate: float
    low: float
    high: float
    regression: bool = False


@dataclass(frozen=True)
class HistoryPanel:
    """One rate across runs: a series per thread count, x the run's place."""

    title: str
    unit: str
    lines: tuple[Series, ...] = field(default_factory=tuple)


# -- drawing ---------------------------------------------------------------------


@contextmanager
def _style() -> Iterator[None]:
    import matplotlib.style

    with matplotlib.style.context(["default", STYLE]):
        yield


def _figure(width: float, height: float) -> Figure:
    """A figure of its own: no pyplot, so no backend and no global list of figures."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _key(**style: object) -> Line2D:
    """A legend entry drawn like a line or marker of the chart."""
    from matplotlib.lines import Line2D

    return Line2D([], [], **style)  # type: ignore[arg-type]


def _key_patch(**style: object) -> Patch:
    from matplotlib.patches import Patch

    return Patch(**style)  # type: ignore[arg-type]


def _svg(figure: Figure, prefix: str) -> str:
    """The figure as an ``<svg>`` element to put inside a page, its ids prefixed so
    that two charts on one page never share one, and trimmed: no XML prologue or
    metadata, no indentation, coordinates to a hundredth of a point (a chart is a
    third of its size otherwise, and looks the same)."""
    buffer = io.StringIO()
    # a tight box: a legend below the axes is never cut off
    figure.savefig(
        buffer, format="svg", metadata={"Date": None}, bbox_inches="tight", pad_inches=0.04
    )
    text = buffer.getvalue()
    text = text[text.index("<svg") :]
    text = re.sub(r"<metadata>.*?</metadata>", "", text, flags=re.S)
    # every id and every reference to one (the only references are to ids); a glyph's
    # id is used for every letter, so it is kept short; SVG 2's plain href
    text = text.replace("DejaVuSans-", "g").replace("xlink:href=", "href=")
    text = text.replace(' xmlns:xlink="http://www.w3.org/1999/xlink"', "")
    text = re.sub(r'(\bid="|href="#|url\(#)', lambda m: f"{m.group(1)}{prefix}", text)
    # text is drawn as paths, so no whitespace between or inside elements matters
    text = re.sub(r">\s+<", "><", re.sub(r"\s*\n\s*", " ", text))
    text = re.sub(
        r'( (?:d|x|y)=")([^"]*)"', lambda m: m.group(1) + _rounded(m.group(2)) + '"', text
    )
    # the page sizes it: full width of its box, height from the aspect ratio
    text = re.sub(r'^<svg([^>]*?) width="[^"]*" height="[^"]*"', r"<svg\1", text, count=1)
    return text.replace("<svg", f'<svg class="chart" role="img" data-chart="{prefix}"', 1)


def _rounded(coordinates: str) -> str:
    """'M 12.345678 3.000001 L 4 5' -> 'M 12.35 3 L 4 5'."""

    def short(match: re.Match[str]) -> str:
        return f"{float(match.group()):.2f}".rstrip("0").rstrip(".")

    return re.sub(r"-?\d+\.\d{3,}", short, coordinates)


def _error_bars(ax: Axes, points: Sequence[Estimate], **style: object) -> float:
    """Medians with their intervals as error bars; the highest point drawn. An interval
    that misses its median (a mean's may, on skewed samples) is cut at the median."""
    medians = [p.median for p in points]
    below = [max(0.0, p.median - (p.median if p.low is None else p.low)) for p in points]
    above = [max(0.0, (p.median if p.high is None else p.high) - p.median) for p in points]
    ax.errorbar([p.x for p in points], medians, yerr=[below, above], capsize=3, **style)  # type: ignore[arg-type]
    return max((m + a for m, a in zip(medians, above, strict=True)), default=0.0)


def _thread_axis(ax: Axes, counts: Sequence[int]) -> None:
    """Thread counts on x: doubling counts on a base-2 log scale, others linear."""
    counts = sorted(set(counts))
    if counts and counts[-1] / counts[0] >= 4:
        ax.set_xscale("log", base=2)
    ax.set_xticks(counts, [str(c) for c in counts])
    ax.minorticks_off()
    low, high = counts[0], counts[-1]
    if ax.get_xscale() == "log":
        ax.set_xlim(low / 2**0.4, high * 2**0.4)
    else:
        pad = max(0.5, (high - low) * 0.12)
        ax.set_xlim(low - pad, high + pad)
    ax.set_xlabel("threads (num_thread)")


def _spread(x: float, n: int, ax: Axes, counts: Sequence[int]) -> list[float]:
    """``n`` positions around ``x`` for one count's samples, so that each shows: a
    fixed pattern, not random jitter, so the same run draws the same chart."""
    if n <= 1:
        return [x] * n
    offsets = [(i / (n - 1) - 0.5) for i in range(n)]
    if ax.get_xscale() == "log":
        return [x * 2 ** (0.22 * o) for o in offsets]
    gaps = [b - a for a, b in zip(sorted(set(counts)), sorted(set(counts))[1:], strict=False)]
    width = 0.22 * (min(gaps) if gaps else 1.0)
    return [x + width * o for o in offsets]


def _legend_below(figure: Figure, handles: list[Line2D | Patch]) -> None:
    """The legend under the charts, in as many columns as the figure's width holds."""
    if handles:
        width = figure.get_figwidth()
        columns = max(1, min(len(handles), int(width / 1.6)))
        figure.legend(handles=handles, loc="outside lower center", ncols=columns)


def _rate_axes(ax: Axes, panel: RatePanel, counts: Sequence[int]) -> list[Line2D | Patch]:
    """One rate: samples, medians with intervals, ideal scaling, the limit, the pick."""
    _thread_axis(ax, counts)
    handles: list[Line2D | Patch] = []
    top = 0.0
    if panel.recommended is not None:
        x = panel.recommended
        if ax.get_xscale() == "log":
            ax.axvspan(x / 2**0.3, x * 2**0.3, color=GREEN, alpha=0.13, lw=0)
        else:
            gaps = [b - a for a, b in zip(counts, counts[1:], strict=False)]
            half = 0.3 * (min(gaps) if gaps else 1.0)
            ax.axvspan(x - half, x + half, color=GREEN, alpha=0.13, lw=0)
        handles.append(_key_patch(color=GREEN, alpha=0.3, label=panel.recommended_label))
    kept_x: list[float] = []
    kept_y: list[float] = []
    aside_x: list[float] = []
    aside_y: list[float] = []
    for point in panel.points:
        values = [*point.samples, *point.disturbed]
        positions = _spread(point.threads, len(values), ax, counts)
        kept_x += positions[: len(point.samples)]
        kept_y += list(point.samples)
        aside_x += positions[len(point.samples) :]
        aside_y += list(point.disturbed)
        top = max([top, *values])
    if kept_x:
        ax.scatter(kept_x, kept_y, s=9, color=GREY, alpha=0.55, lw=0, zorder=2)
        handles.append(_key(ls="", marker="o", ms=3.5, color=GREY, alpha=0.7, label="samples"))
    if aside_x:
        ax.scatter(aside_x, aside_y, s=22, marker="x", color=VERMILLION, lw=1.0, zorder=3)
        handles.append(
            _key(ls="", marker="x", ms=5, color=VERMILLION, label="disturbed, set aside")
        )
    measured = [p.estimate for p in panel.points if p.estimate is not None]
    if measured:
        top = max(top, _error_bars(ax, measured, color=BLUE, marker="o", ms=5, lw=1.6, zorder=4))
        handles.append(_key(color=BLUE, marker="o", ms=5, label="median, mean's 95% CI"))
        first = min(measured, key=lambda e: e.x)
        if len(counts) > 1:
            dense = _dense(counts, ax)
            ideal = [first.median * t / first.x for t in dense]
            ax.plot(dense, ideal, color=GREY, ls="--", lw=1.0, zorder=1)
            handles.append(_key(color=GREY, ls="--", lw=1.0, label="ideal linear scaling"))
    limits = [(p.threads, p.limit) for p in panel.points if p.limit is not None]
    if limits:
        ax.plot(
            [t for t, _ in limits],
            [v for _, v in limits],
            color=PURPLE,
            marker="_",
            ms=14,
            mew=2,
            lw=1.2,
            zorder=3,
        )
        handles.append(_key(color=PURPLE, marker="_", ms=10, mew=2, label=panel.limit_label))
        top = max([top, *(v for _, v in limits)])
    ax.set_ylim(0, top * 1.12 if top > 0 else 1.0)
    ax.set_ylabel(panel.unit)
    ax.set_title(panel.title, loc="left")
    return handles


def _dense(counts: Sequence[int], ax: Axes) -> list[float]:
    """Where to draw a straight line of threads: its ends, or enough points to curve
    smoothly on a log scale."""
    low, high = min(counts), max(counts)
    if ax.get_xscale() != "log":
        return [low, high]
    return [low * (high / low) ** (i / 40) for i in range(41)]


def scaling_chart(panels: Sequence[RatePanel], prefix: str) -> str:
    """Throughput against threads, a panel per rate, as an ``<svg>`` element."""
    counts = sorted({p.threads for panel in panels for p in panel.points})
    with _style():
        figure = _figure(CHART_WIDTH * (1 if len(panels) < 2 else 1.64), CHART_HEIGHT)
        axes = figure.subplots(1, max(1, len(panels)), squeeze=False)[0]
        handles: dict[str, Line2D | Patch] = {}
        for ax, panel in zip(axes, panels, strict=True):
            for handle in _rate_axes(ax, panel, counts):
                handles.setdefault(str(handle.get_label()), handle)
        _legend_below(figure, list(handles.values()))
        return _svg(figure, prefix)


def utilization_chart(
    series: Sequence[Series], thresholds: Sequence[Threshold], prefix: str
) -> str:
    """Utilization per thread count: a line per kind, medians with intervals, the
    rules' minimums, and 1.0 (every thread, or every usable CPU, busy)."""
    counts = sorted({int(p.x) for line in series for p in line.points})
    with _style():
        figure = _figure(CHART_WIDTH, CHART_HEIGHT)
        ax = figure.subplots()
        _thread_axis(ax, counts)
        top = 1.1
        handles: list[Line2D | Patch] = []
        for index, line in enumerate(series):
            colour = SERIES_COLOURS[index % len(SERIES_COLOURS)]
            style = "--" if line.dashed else "-"
            drawn = _error_bars(ax, line.points, color=colour, marker="o", ms=4, ls=style)
            top = max(top, drawn)
            handles.append(_key(color=colour, marker="o", ms=4, ls=style, label=line.label))
        ax.axhline(1.0, color=GREY, lw=0.8, ls=":")
        for threshold in thresholds:
            ax.axhline(threshold.value, color=VERMILLION, lw=1.0, ls="-.")
            handles.append(_key(color=VERMILLION, lw=1.0, ls="-.", label=threshold.label))
        ax.set_ylim(0, top * 1.05)
        ax.set_ylabel("cores busy / threads or CPUs")
        ax.set_title("utilization", loc="left")
        _legend_below(figure, handles)
        return _svg(figure, prefix)


def forest_chart(
    rows: Sequence[ForestRow],
    xlabel: str,
    no_change: float,
    rule: float | None,
    rule_label: str,
    prefix: str,
) -> str:
    """Each compared row's change with its interval (a forest plot): the line of no
    change, the rule's line, regressions in vermillion."""
    with _style():
        height = 1.2 + 0.28 * len(rows)
        figure = _figure(CHART_WIDTH * 1.25, height)
        ax = figure.subplots()
        ys = list(range(len(rows)))[::-1]
        for y, row in zip(ys, rows, strict=True):
            colour = VERMILLION if row.regression else BLUE
            ax.errorbar(
                [row.estimate],
                [y],
                xerr=[[max(0.0, row.estimate - row.low)], [max(0.0, row.high - row.estimate)]],
                color=colour,
                marker="s" if row.regression else "o",
                ms=4.5,
                capsize=2.5,
                lw=1.4,
            )
        ax.axvline(no_change, color=GREY, lw=0.9)
        handles: list[Line2D | Patch] = [
            _key(color=BLUE, marker="o", ms=4.5, label="change (bar: interval)"),
        ]
        if any(r.regression for r in rows):
            handles.append(_key(color=VERMILLION, marker="s", ms=4.5, label="regression"))
        if rule is not None:
            ax.axvline(rule, color=VERMILLION, lw=1.1, ls="--")
            handles.append(_key(color=VERMILLION, ls="--", label=rule_label))
        ax.set_yticks(ys, [r.label for r in rows])
        ax.set_ylim(-0.7, len(rows) - 0.3)
        ax.grid(axis="y", visible=False)
        ax.set_xlabel(xlabel)
        _legend_below(figure, handles)
        return _svg(figure, prefix)


def history_width(runs: int, panels: int = 1) -> float:
    """Inches: room for each run's label in each panel, the panels side by side."""
    return panels * max(CHART_WIDTH * 0.82, min(12.0, 1.0 + 1.1 * runs))


def history_chart(labels: Sequence[str], panels: Sequence[HistoryPanel], prefix: str) -> str:
    """Each rate per thread count across runs (as asv draws a benchmark's history):
    a line per thread count, medians with intervals, the runs on x."""
    with _style():
        figure = _figure(history_width(len(labels), len(panels)), CHART_HEIGHT + 0.4)
        axes = figure.subplots(1, max(1, len(panels)), squeeze=False)[0]
        handles: dict[str, Line2D] = {}
        for ax, panel in zip(axes, panels, strict=True):
            top = 0.0
            for index, line in enumerate(panel.lines):
                if not line.points:
                    continue
                colour = SERIES_COLOURS[index % len(SERIES_COLOURS)]
                top = max(top, _error_bars(ax, line.points, color=colour, marker="o", ms=4))
                handles.setdefault(
                    line.label, _key(color=colour, marker="o", ms=4, label=line.label)
                )
            ax.set_ylim(0, top * 1.12 if top > 0 else 1.0)
            ax.set_xlim(-0.5, len(labels) - 0.5)
            ax.set_xticks(range(len(labels)), list(labels))
            ax.set_ylabel(panel.unit)
            ax.set_title(panel.title, loc="left")
        _legend_below(figure, list(handles.values()))
        return _svg(figure, prefix)
