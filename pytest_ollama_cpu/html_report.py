"""The HTML report: one self-contained page of a run's sweeps, verdicts and comparison.

The page holds everything it shows: charts are inline SVG (``plots.py``), the
style is inline, and a Content-Security-Policy forbids fetching anything, so it
opens from disk, offline, and prints. Every text from a run (test ids, model
names, messages) is escaped. The figures and sentences are the text report's
(``report.py``), so the two never disagree.

matplotlib draws the charts and is an optional extra: ``plots`` imports it only
when a chart is drawn, so the plugin starts without it, and a run that asks for
a report without it is stopped at start-up instead (``matplotlib_missing``).
"""

from __future__ import annotations

import html
import importlib.util
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from . import plots
from .comparison import Comparison, Row
from .quantities import (
    GENERATION_RATE,
    GENERATION_UTILIZATION,
    MACHINE_UTILIZATION,
    PREFILL_RATE,
    PREFILL_UTILIZATION,
    THREAD_UTILIZATION,
    Quantity,
)
from .records import RecordedSweep, by_machine, merged_limits
from .report import (
    CHECK_MARKS,
    COLUMNS,
    COLUMNS_LEGEND,
    COMPARISON_COLUMNS,
    common_file,
    comparison_legend,
    comparison_notes,
    comparison_rows,
    comparison_title,
    describe_model,
    recommendation_lines,
    sweep_notes,
    table_rows,
    verdict_summary,
    workload_title,
)
from .results_file import OutputFile, write_text_atomic
from .statistics import Summary

GENERATOR = "pytest-ollama-cpu"
#: what marks a page as ours: only such a file is ever replaced
GENERATOR_META = f'<meta name="generator" content="{GENERATOR}">'

#: nothing may be fetched: no script, style, font or image from anywhere
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"
)

INSTALL_HINT = "pip install 'pytest-ollama-cpu[report]'"


def matplotlib_missing(what: str) -> str | None:
    """Why ``what`` (an option, a command) cannot draw its charts, or None where it can."""
    if importlib.util.find_spec("matplotlib") is not None:
        return None
    return (
        f"{what} draws its charts with matplotlib, which is not installed here: {INSTALL_HINT} "
        "(or pip install matplotlib)"
    )


def is_report(path: Path) -> bool:
    """Whether ``path`` holds a page this plugin wrote (its generator mark, in the head)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            head = handle.read(2048)
    except OSError:
        return False
    return GENERATOR_META in head


def report_file(flag: str) -> OutputFile:
    """The report as a file kind, named in messages by the option that gave its path."""
    return OutputFile("a pytest-ollama-cpu HTML report", flag, is_report)


HTML_FILE = report_file("--ollama-cpu-html")


def write(path: Path, page: str, output: OutputFile = HTML_FILE) -> None:
    """Write the page whole or not at all, never over a file that is not a report of ours."""
    write_text_atomic(path, page, output)


@dataclass(frozen=True)
class PageFacts:
    """What the page says beside the sweeps' own facts."""

    #: when the run ended or the page was drawn, in words
    created: str
    plugin_version: str
    #: the run's settings in force (``Settings.describe()``), where known
    settings: str | None = None
    #: where the sweeps come from, where not from this run: "saved run .../0001_x.json"
    source: str | None = None
    #: rebuilt from saved runs: thresholds and their checks were not kept, and the
    #: recommendation was made again from the saved samples
    from_saved_runs: bool = False


@dataclass(frozen=True)
class History:
    """Saved runs in order, each with its sweeps, and a label per run for the x axis."""

    labels: tuple[str, ...]
    runs: tuple[tuple[RecordedSweep, ...], ...]


def _e(text: object) -> str:
    return html.escape(str(text))


# -- the page ------------------------------------------------------------------------

STYLE = """
:root { --ink: #1d1d1f; --muted: #5f6368; --line: #d9dce0; --pass: #0b7a4b;
  --fail: #c0392b; --warn: #9a6700; --pick: #e3f4ec; --bg-soft: #f6f7f9; }
* { box-sizing: border-box; }
body { margin: 0 auto; max-width: 1240px; padding: 1.2rem 1.4rem 3rem; color: var(--ink);
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial,
  sans-serif; }
h1 { font-size: 1.45rem; margin: 0 0 .3rem; }
h2 { font-size: 1.15rem; margin: 0 0 .2rem; word-break: break-all; }
h3 { font-size: .98rem; margin: 1rem 0 .35rem; }
section { border-top: 1px solid var(--line); padding-top: 1rem; margin-top: 1.4rem; }
header dl { display: grid; grid-template-columns: max-content 1fr; gap: .15rem 1rem;
  margin: .6rem 0 0; }
header dt { color: var(--muted); }
header dd { margin: 0; }
.muted, .legend { color: var(--muted); }
.legend { font-size: .8rem; }
.subtitle { color: var(--muted); margin: 0 0 .6rem; }
.charts { display: flex; flex-wrap: wrap; gap: .6rem 1rem; align-items: flex-start; }
.chart-box { min-width: 330px; }
svg.chart { display: block; width: 100%; height: auto; }
.table-wrap { overflow-x: auto; margin: .5rem 0; }
table { border-collapse: collapse; font-size: .82rem; font-variant-numeric: tabular-nums; }
th, td { padding: .22rem .5rem; border-bottom: 1px solid var(--line); text-align: right;
  white-space: nowrap; vertical-align: top; }
th { background: var(--bg-soft); font-weight: 600; }
td.text, th.text { text-align: left; white-space: normal; }
tr.pick td { background: var(--pick); font-weight: 600; }
tr.regression td { background: #fbeae8; }
.outcome { font-weight: 700; }
.pass { color: var(--pass); } .fail { color: var(--fail); }
.undecided, .busy, .unavailable, .saved { color: var(--warn); }
.none { color: var(--muted); }
ul.notes { margin: .4rem 0; padding-left: 1.2rem; font-size: .85rem; }
p.recommendation { font-size: .95rem; margin: .5rem 0 .2rem; }
p.recommendation strong { background: var(--pick); padding: 0 .25rem; }
a { color: #0b57d0; }
@media print {
  body { max-width: none; padding: 0; font-size: 10pt; }
  section { break-before: auto; }
  /* a chart a line on paper, at most its own size: side by side they print too small */
  .charts { display: block; }
  .chart-box { margin-bottom: .4rem; }
  .chart-box, tr { break-inside: avoid; }
  .table-wrap { overflow: visible; }
  table { font-size: 7.5pt; }
  th, td { padding: .1rem .3rem; }
  a { color: inherit; text-decoration: none; }
}
"""

#: counts the charts the browser drew (a non-empty box each), for the browser test
SCRIPT = """
(function () {
  var drawn = 0;
  document.querySelectorAll("svg.chart").forEach(function (svg) {
    var box = svg.getBoundingClientRect();
    if (box.width > 0 && box.height > 0) { drawn += 1; }
  });
  document.body.setAttribute("data-charts-rendered", String(drawn));
})();
"""


#: what a sweep's charts show, under them
CHART_LEGEND = (
    "Dots: every sample of each thread count (x: disturbed by other processes and set "
    "aside, as in the table's 'aside'); blue: the median of the undisturbed samples, its "
    "bar the mean's 95% CI (the table's 'mean 95% CI'); dashed: ideal linear scaling from "
    "the smallest count; purple: the machine's limit at each count where it was probed "
    "(memory read bandwidth / bytes a token for generation, arithmetic peak / operations a "
    "token for prefill); green band: the recommended num_thread (for the other phase, its "
    "own best count). Utilization: cores busy per thread asked for (thread util), per usable "
    "CPU (machine util), and per thread while the prompt is processed (pp util) or tokens "
    "are generated (tg util); dash-dot lines: the test's minimums."
)


class _Charts:
    """Numbers the page's charts (each gets its own id prefix) and counts them."""

    def __init__(self) -> None:
        self.count = 0

    def draw(self, make: Callable[[str], str], width: float) -> str:
        """A chart in a box that shares a row by its width in inches, and grows to at
        most a little over its own size (96 CSS pixels an inch): text stays legible and
        a chart alone in its row is not blown up."""
        self.count += 1
        svg = make(f"c{self.count}")
        style = f"flex: {width:g} 1 0; max-width: {width * 96 * 1.15:.0f}px"
        return f'<div class="chart-box" style="{style}">{svg}</div>'


def render(
    sweeps: Sequence[RecordedSweep],
    facts: PageFacts,
    comparison: Comparison | None = None,
    history: History | None = None,
) -> str:
    """The whole page, as text."""
    charts = _Charts()
    body: list[str] = [_header(sweeps, facts), _session_table(sweeps, facts)]
    if comparison is not None:
        body.append(_comparison_section(comparison, charts))
    if history is not None and len(history.runs) > 1:
        body.append(_history_section(history, charts))
    for index, recorded in enumerate(sweeps, 1):
        body.append(_sweep_section(index, recorded, facts, charts))
    body.append(f'<footer class="legend"><p>{_e(COLUMNS_LEGEND)}</p></footer>')
    title = f"pytest-ollama-cpu: {len(sweeps)} sweep{'s' * (len(sweeps) != 1)}"
    if sweeps:
        title += f" on {sweeps[0].sweep.machine.hostname}"
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en">',
            "<head>",
            '<meta charset="utf-8">',
            GENERATOR_META,
            f'<meta http-equiv="Content-Security-Policy" content="{CONTENT_SECURITY_POLICY}">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{_e(title)}</title>",
            f"<style>{STYLE}</style>",
            "</head>",
            f'<body data-charts="{charts.count}">',
            *body,
            f"<script>{SCRIPT}</script>",
            "</body>",
            "</html>",
            "",
        ]
    )


def _header(sweeps: Sequence[RecordedSweep], facts: PageFacts) -> str:
    parts = ["<header>", "<h1>pytest-ollama-cpu report</h1>"]
    said = [f"pytest-ollama-cpu {facts.plugin_version}", facts.created]
    if facts.source:
        said.append(facts.source)
    parts.append(f'<p class="muted">{_e("; ".join(said))}</p>')
    for group in by_machine(sweeps).values():
        first = group[0].sweep
        rows = [
            ("machine", f"{first.machine.hostname}: {first.machine.describe()}"),
            ("server", f"{first.server.host}, Ollama {first.server.version}"),
            ("CPU figures", first.server.utilization_note),
        ]
        models = {r.sweep.model.name: r.sweep.model for r in group}
        rows += [
            ("model", describe_model(m).removeprefix("model ").rstrip(": "))
            for m in models.values()
        ]
        costs = {r.sweep.roofline.cost.describe() for r in group if r.sweep.roofline is not None}
        rows += [("a token's cost", cost) for cost in sorted(costs)]
        limits = merged_limits(group)
        if limits is not None:
            rows.append(("machine limits", limits.describe()))
        parts.append("<dl>")
        parts += [f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in rows]
        parts.append("</dl>")
    if facts.settings:
        parts.append(f'<p class="muted">settings: {_e(facts.settings)}</p>')
    parts.append("</header>")
    return "\n".join(parts)


def _outcome(recorded: RecordedSweep) -> tuple[str, str]:
    """(css class, words) of a sweep's verdict: failed, undecided, busy, passed, or none."""
    verdict = recorded.verdict
    if verdict is None or not verdict.checks:
        return "none", "no thresholds" if verdict is not None else "no verdict"
    if verdict.failed:
        return "fail", "FAILED"
    if verdict.busy and not [c for c in verdict.inconclusive if c.outcome != "busy"]:
        return "busy", "BUSY (undecided)"
    if verdict.inconclusive:
        return "undecided", "UNDECIDED"
    return "pass", "passed"


def _recommended_text(recorded: RecordedSweep) -> str:
    verdict = recorded.verdict
    if verdict is None or verdict.recommendation is None:
        return "-"
    pick = verdict.recommendation
    measure = _quantity(pick.quantity)
    figure = f"{measure.format(pick.tokens_per_second)} {measure.unit}"
    if pick.shown:
        return f"{pick.threads} ({figure})"
    return f"{pick.threads}? ({figure}; not shown best)"


def _quantity(name: str) -> Quantity:
    from .quantities import QUANTITIES

    return QUANTITIES[name]


def _session_table(sweeps: Sequence[RecordedSweep], facts: PageFacts) -> str:
    rows = []
    for index, recorded in enumerate(sweeps, 1):
        sweep = recorded.sweep
        css, words = _outcome(recorded)
        if facts.from_saved_runs:
            css, words = "saved", "not saved"
        counts = ", ".join(str(r.threads) for r in sweep)
        rows.append(
            "<tr>"
            f'<td class="text"><a href="#sweep-{index}">{_e(recorded.nodeid)}</a></td>'
            f'<td class="text">{_e(sweep.kind)} with {_e(sweep.model.name)}, '
            f"{sweep.num_predict} tokens</td>"
            f"<td>{_e(counts)}</td>"
            f'<td class="text outcome {css}">{_e(words)}</td>'
            f"<td>{_e(_recommended_text(recorded))}</td>"
            "</tr>"
        )
    head = (
        "<tr><th class='text'>test</th><th class='text'>workload</th><th>threads</th>"
        "<th class='text'>verdict</th><th>recommended num_thread</th></tr>"
    )
    note = ""
    if facts.from_saved_runs:
        note = (
            '<p class="saved">Rebuilt from saved runs: a saved run keeps every sample but not '
            "the thresholds or their verdicts, so no check is shown; the recommended "
            "num_thread is made again from the saved samples (alpha 0.01).</p>"
        )
    if not sweeps:
        note += '<p class="muted">Nothing was measured.</p>'
    return (
        '<section id="session"><h2>Tests</h2>'
        f'<div class="table-wrap"><table>{head}{"".join(rows)}</table></div>{note}</section>'
    )


#: columns of words, set flush left; figures are set flush right
TEXT_COLUMNS = frozenset({"test", "rule", "verdict", "rate"})


def _table(
    header: Sequence[str], rows: Iterable[Sequence[str]], classes: Sequence[str] = ()
) -> str:
    """A table of text cells; ``classes``: each row's class ('' for none)."""
    words = [' class="text"' if h in TEXT_COLUMNS else "" for h in header]
    head = "".join(f"<th{w}>{_e(h)}</th>" for h, w in zip(header, words, strict=True))
    body = []
    for i, row in enumerate(rows):
        css = classes[i] if i < len(classes) and classes[i] else ""
        cells = "".join(f"<td{w}>{_e(c)}</td>" for c, w in zip(row, words, strict=True))
        body.append(f'<tr class="{css}">{cells}</tr>' if css else f"<tr>{cells}</tr>")
    return f'<div class="table-wrap"><table><tr>{head}</tr>{"".join(body)}</table></div>'


def _notes(lines: Iterable[str]) -> str:
    items = "".join(f"<li>{_e(line)}</li>" for line in lines)
    return f'<ul class="notes">{items}</ul>' if items else ""


# -- one sweep ------------------------------------------------------------------------


def _sweep_section(
    index: int,
    recorded: RecordedSweep,
    facts: PageFacts,
    charts: _Charts,
) -> str:
    sweep = recorded.sweep
    verdict = recorded.verdict
    parts = [
        f'<section class="sweep" id="sweep-{index}">',
        f"<h2>{_e(recorded.nodeid)}</h2>",
        f'<p class="subtitle">{_e(workload_title(sweep))}</p>',
    ]
    figures = []
    panels = _rate_panels(recorded)
    if panels:
        width = plots.CHART_WIDTH * (1 if len(panels) < 2 else 1.64)
        figures.append(charts.draw(partial(plots.scaling_chart, panels), width))
    series = _utilization_series(recorded)
    if series:
        thresholds = _utilization_thresholds(recorded)
        figures.append(
            charts.draw(partial(plots.utilization_chart, series, thresholds), plots.CHART_WIDTH)
        )
    if figures:
        parts.append(f'<div class="charts">{"".join(figures)}</div>')
        parts.append(f'<p class="legend">{_e(CHART_LEGEND)}</p>')
    pick = verdict.recommendation.threads if verdict and verdict.recommendation else None
    classes = ["pick" if r.threads == pick else "" for r in sweep]
    parts.append(_table(COLUMNS, table_rows(sweep), classes))
    parts.append(_notes(sweep_notes(sweep)))
    advice = recommendation_lines(recorded)
    if advice:
        parts.append(f'<p class="recommendation"><strong>{_e(advice[0])}</strong></p>')
        parts.append(_notes(advice[1:]))
    if verdict is not None and verdict.checks:
        parts.append("<h3>Verdict</h3>")
        parts.append(_checks_table(recorded))
        summary = verdict_summary(recorded)
        if summary:
            parts.append(f'<p class="muted">{_e(summary)}</p>')
    elif facts.from_saved_runs:
        parts.append('<p class="saved">No verdict: thresholds are not kept in saved runs.</p>')
    elif verdict is not None:
        parts.append('<p class="muted">No thresholds were set for this test: no checks.</p>')
    if verdict is not None:
        parts.append(_notes(f"note: {n}" for n in verdict.notes))
    parts.append('<p><a href="#session">back to the tests</a></p></section>')
    return "\n".join(p for p in parts if p)


def _checks_table(recorded: RecordedSweep) -> str:
    verdict = recorded.verdict
    assert verdict is not None
    names = ("outcome", "num_thread", "check", "estimate", "interval", "threshold", "cause")
    head = "<tr>" + "".join(
        f'<th class="text">{h}</th>' if h in ("outcome", "check", "cause") else f"<th>{h}</th>"
        for h in names
    )
    rows = []
    for check in verdict.checks:
        css = {"pass": "pass", "fail": "fail", "busy": "busy"}.get(check.outcome, "undecided")
        estimate = "-" if check.estimate is None else f"{check.estimate:.2f}"
        interval = check.interval_text(verdict.confidence) or "-"
        mark = CHECK_MARKS.get(check.outcome, check.outcome)
        rows.append(
            "<tr>"
            f'<td class="text outcome {css}">{_e(mark)}</td>'
            f"<td>{check.threads}</td>"
            f'<td class="text">{_e(check.quantity)}</td>'
            f"<td>{_e(estimate)}</td><td>{_e(interval)}</td><td>{check.threshold:g}</td>"
            f'<td class="text">{_e(check.cause or "")}</td>'
            "</tr>"
        )
    return f'<div class="table-wrap"><table>{head}</tr>{"".join(rows)}</table></div>'


_LIMITS = {GENERATION_RATE.name: "generation_limit", PREFILL_RATE.name: "prefill_limit"}
_LIMIT_WORDS = {
    GENERATION_RATE.name: "memory limit",
    PREFILL_RATE.name: "compute limit",
}


def _rate_panels(recorded: RecordedSweep) -> list[plots.RatePanel]:
    """A panel per rate the sweep measured, the one it is about first."""
    sweep, verdict = recorded.sweep, recorded.verdict
    rates = [GENERATION_RATE, PREFILL_RATE]
    rates.sort(key=lambda q: q.name != sweep.focus)
    panels = []
    for quantity in rates:
        points = []
        for result in sweep:
            kept = [v for s in result.undisturbed if (v := quantity.of(s)) is not None]
            aside = [v for s in result.set_aside if (v := quantity.of(s)) is not None]
            limit = sweep.limits_at(result.threads).get(_LIMITS[quantity.name])
            points.append(
                plots.RatePoint(
                    result.threads,
                    _estimate(result.threads, result.summary(quantity)),
                    tuple(kept),
                    tuple(aside),
                    limit if isinstance(limit, float) else None,
                )
            )
        if not any(p.samples or p.disturbed for p in points):
            continue
        pick = verdict.for_quantity(quantity.name) if verdict is not None else None
        label = ""
        if pick is not None:
            main = quantity.name == sweep.focus
            if pick.shown:
                label = (
                    f"recommended num_thread {pick.threads}"
                    if main
                    else f"best count for {quantity.phase}: {pick.threads}"
                )
            else:
                label = f"fastest by median: {pick.threads} (not shown best)"
        panels.append(
            plots.RatePanel(
                f"{quantity.words} ({quantity.unit})",
                quantity.column,
                tuple(points),
                None if pick is None else pick.threads,
                label,
                _LIMIT_WORDS[quantity.name],
            )
        )
    return panels


def _estimate(x: float, summary: Summary | None) -> plots.Estimate | None:
    if summary is None:
        return None
    return plots.Estimate(x, summary.median, summary.ci_low, summary.ci_high)


def _utilization_series(recorded: RecordedSweep) -> list[plots.Series]:
    sweep = recorded.sweep
    found = []
    for quantity, dashed in (
        (THREAD_UTILIZATION, False),
        (MACHINE_UTILIZATION, False),
        (PREFILL_UTILIZATION, True),
        (GENERATION_UTILIZATION, True),
    ):
        points = [
            estimate
            for result in sweep
            if (estimate := _estimate(result.threads, result.summary(quantity))) is not None
        ]
        if points:
            found.append(plots.Series(quantity.column, tuple(points), dashed))
    return found


def _utilization_thresholds(recorded: RecordedSweep) -> list[plots.Threshold]:
    thresholds = recorded.thresholds
    if thresholds is None:
        return []
    found = []
    if isinstance(thresholds.min_utilization, float):
        found.append(
            plots.Threshold(
                f"min_utilization {thresholds.min_utilization:g}", thresholds.min_utilization
            )
        )
    elif thresholds.min_utilization is not None:
        for phase, value in thresholds.min_utilization.items():
            found.append(plots.Threshold(f"min_utilization ({phase}) {value:g}", float(value)))
    if thresholds.min_machine_utilization is not None:
        value = thresholds.min_machine_utilization
        found.append(plots.Threshold(f"min_machine_utilization {value:g}", value))
    return found


# -- a comparison with a baseline ------------------------------------------------------


def _comparison_section(comparison: Comparison, charts: _Charts) -> str:
    regressions = len(comparison.regressions)
    head = (
        f"{regressions} regression{'s' * (regressions != 1)}"
        if comparison.gating
        else "no rule given: nothing can fail"
    )
    parts = [
        '<section id="comparison">',
        "<h2>Baseline against now</h2>",
        f'<p class="subtitle">{_e(comparison_title(comparison))}: '
        f'<span class="outcome {"fail" if regressions else "pass"}">{_e(head)}</span></p>',
    ]
    by_rule: dict[str, list[Row]] = {}
    for row in comparison.rows:
        if row.shift is not None:
            by_rule.setdefault(row.rule.text, []).append(row)
    figures = [
        charts.draw(partial(_forest, comparison, rows), plots.CHART_WIDTH * 1.25)
        for rows in by_rule.values()
    ]
    if figures:
        parts.append(f'<div class="charts">{"".join(figures)}</div>')
    classes = ["regression" if row.regression else "" for row in comparison.rows]
    parts.append(_table(COMPARISON_COLUMNS, comparison_rows(comparison), classes))
    parts.append(_notes(comparison_notes(comparison)))
    parts += [f'<p class="legend">{_e(line)}</p>' for line in comparison_legend(comparison)]
    parts.append("</section>")
    return "\n".join(p for p in parts if p)


def _forest(comparison: Comparison, rows: Sequence[Row], prefix: str) -> str:
    """One rule's rows: change and interval in the quantity's own terms, in % for a %
    rule, with the rule's line where a rate (or a time) fails."""
    rule = rows[0].rule
    measure = rule.measure
    common = common_file(comparison)
    drawn = []
    for row in rows:
        data = row.to_dict()
        scale = 100.0 if rule.relative else 1.0
        shift = 1.0 if rule.relative else 0.0
        test = row.test.partition("::")[2] if common else row.test
        drawn.append(
            plots.ForestRow(
                f"{test} t{row.threads}",
                (data["change"] - shift) * scale,
                (data["low"] - shift) * scale,
                (data["high"] - shift) * scale,
                row.regression,
            )
        )
    line = None
    if rule.size > 0:
        size = rule.size * (100.0 if rule.relative else 1.0)
        line = -size if measure.higher_is_better else size
    unit = "%" if rule.relative else measure.unit or "difference"
    xlabel = f"{measure.words}: now against the baseline ({unit})"
    label = f"rule {rule.text}: {measure.worse} than this fails"
    return plots.forest_chart(drawn, xlabel, 0.0, line, label, prefix)


# -- a history of saved runs -----------------------------------------------------------


def _key(recorded: RecordedSweep, seen: dict[tuple[str, ...], int]) -> tuple[str, ...]:
    """What makes a sweep the same one in another run: test, workload, model, where,
    and how many such sweeps the test ran before it."""
    sweep = recorded.sweep
    base = (recorded.nodeid, sweep.kind, sweep.model.name, sweep.where)
    seen[base] = seen.get(base, 0) + 1
    return (*base, str(seen[base]))


def _history_section(history: History, charts: _Charts) -> str:
    keyed: list[dict[tuple[str, ...], RecordedSweep]] = []
    order: list[tuple[str, ...]] = []
    for run in history.runs:
        seen: dict[tuple[str, ...], int] = {}
        found = {_key(r, seen): r for r in run}
        keyed.append(found)
        order += [k for k in found if k not in order]
    labels = [label.replace("\n", " ") for label in history.labels]
    parts = [
        '<section id="history">',
        "<h2>History</h2>",
        f'<p class="subtitle">{len(history.runs)} saved runs, oldest first: '
        f"{_e('; '.join(labels))}. Medians of the undisturbed samples; bars: the mean's 95% "
        "CI.</p>",
    ]
    for key in order:
        runs = [found.get(key) for found in keyed]
        present = [r for r in runs if r is not None]
        focus = present[-1].sweep.focus
        rates = [GENERATION_RATE, PREFILL_RATE]
        rates.sort(key=lambda q: q.name != focus)
        panels = []
        rows = []
        for quantity in rates:
            counts = sorted({r.threads for p in present for r in p.sweep})
            lines = []
            for threads in counts:
                values = [
                    None
                    if run is None or threads not in run.sweep
                    else _estimate(place, run.sweep[threads].summary(quantity))
                    for place, run in enumerate(runs)
                ]
                points = tuple(v for v in values if v is not None)
                if points:
                    label = f"{threads} thread{'s' * (threads != 1)}"
                    lines.append(plots.Series(label, points))
                    rows.append(
                        [quantity.column, str(threads)]
                        + [quantity.format(v.median if v else None) for v in values]
                    )
            if lines:
                panels.append(
                    plots.HistoryPanel(
                        f"{quantity.words} ({quantity.unit})", quantity.column, tuple(lines)
                    )
                )
        if not panels:
            continue
        nodeid, kind, model = key[0], key[1], key[2]
        parts.append(
            f'<h3>{_e(nodeid)} <span class="muted">({_e(kind)} with {_e(model)})</span></h3>'
        )
        width = plots.history_width(len(labels), len(panels))
        parts.append(
            '<div class="charts">'
            + charts.draw(partial(plots.history_chart, history.labels, panels), width)
            + "</div>"
        )
        # each run by its label's first line (its name); the subtitle has the rest
        names = [label.split("\n")[0] for label in history.labels]
        parts.append(_table(["rate", "threads", *names], rows))
    parts.append("</section>")
    return "\n".join(parts)
