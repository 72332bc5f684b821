"""Text a person reads: the report header, the per-test tables, the comparison.

Formatting: takes results, returns lines (``Line`` where the terminal shows one in
colour, decided from the data, never from the words). The hooks in ``plugin.py``
only write what these functions return.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from .client import ModelFacts
from .comparison import Comparison
from .disturbance import MARGIN_CORES
from .limits import MachineLimits
from .machine import MachineFacts, cpus_text, threads_text
from .options import MODEL, Settings
from .quantities import (
    GENERATION_RATE,
    GENERATION_ROOFLINE,
    GENERATION_UTILIZATION,
    PREFILL_RATE,
    PREFILL_ROOFLINE,
    PREFILL_UTILIZATION,
    REQUEST_SECONDS,
    TIME_TO_FIRST_TOKEN,
)
from .records import RecordedSweep, by_machine, merged_limits
from .results import Sweep, ThreadResult, stopped_because
from .roofline import OVER_LIMIT, ModelCost
from .run import StartFacts
from .statistics import Summary, format_interval
from .verdicts import Recommendation, Verdict, roofline_cause


@dataclass(frozen=True)
class Line:
    """A line of the terminal summary: red (a regression, an error), yellow (a warning),
    or a heading (pytest's ``=== text ===``)."""

    text: str
    colour: Literal["red", "yellow"] | None = None
    heading: bool = False


COLUMNS = (
    "threads",
    "runner",
    "n",
    "aside",
    "tokens/s",
    "±stdev",
    "mean 95% CI",
    "speedup",
    "efficiency",
    "prefill tok/s",
    "pp speedup",
    "TTFT s",
    "request s",
    "thread util",
    "pp util",
    "tg util",
    "machine util",
    "tg roof",
    "pp roof",
    "other cores",
)

#: what each column of the table means, under the tables
COLUMNS_LEGEND = (
    "runner: threads the Ollama runner was started with; n: undisturbed samples, which "
    "every figure but 'other cores' is computed from; aside: samples set aside because "
    "other processes took CPU the server needed; tokens/s: median generation rate from "
    "Ollama's eval timings; prefill tok/s: median prompt processing rate (prompt_eval); "
    "pp speedup: its speedup; TTFT: median time to first token (load + prompt eval, from "
    "Ollama's timings); request s: median time of the whole request; pp/tg util: "
    "thread utilization while the prompt is processed / while tokens are generated "
    "('-': a phase under a quarter second); util: median CPU "
    "use of the server's process tree per requested thread / per usable CPU; tg roof: "
    "generation rate as a share of the memory limit (the read bandwidth probed at that "
    "thread count / bytes read per token); pp roof: prefill rate as a share of the compute "
    "limit (arithmetic peak probed at that thread count / operations per prompt token); "
    "other cores: CPU busy outside the server on its CPUs, over all samples."
)


def _num(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _median(summary: Summary | None, digits: int = 2) -> str:
    return "-" if summary is None else f"{summary.median:.{digits}f}"


def _ci(summary: Summary) -> str:
    if summary.ci_low is None or summary.ci_high is None:
        return "-"
    return format_interval(summary.ci_low, summary.ci_high, 1)


def _row(sweep: Sweep, result: ThreadResult) -> list[str]:
    runner = result.runner_threads
    if result.undisturbed:
        tps = result.tokens_per_second
        rate = [f"{tps.median:.1f}", "-" if tps.stdev is None else f"{tps.stdev:.1f}", _ci(tps)]
    else:
        rate = ["busy", "-", "-"]
    return [
        str(result.threads),
        "?" if runner is None else str(runner),
        str(len(result.undisturbed)),
        str(len(result.set_aside)),
        *rate,
        _num(sweep.speedup(result.threads)),
        _num(sweep.efficiency(result.threads)),
        _median(result.summary(PREFILL_RATE), PREFILL_RATE.digits),
        _num(sweep.speedup_of(PREFILL_RATE, result.threads)),
        _median(result.summary(TIME_TO_FIRST_TOKEN), TIME_TO_FIRST_TOKEN.digits),
        _median(result.summary(REQUEST_SECONDS), REQUEST_SECONDS.digits),
        _median(result.thread_utilization),
        _median(result.summary(PREFILL_UTILIZATION)),
        _median(result.summary(GENERATION_UTILIZATION)),
        _median(result.machine_utilization),
        _share(result.summary(GENERATION_ROOFLINE)),
        _share(result.summary(PREFILL_ROOFLINE)),
        _median(result.other_cores_busy),
    ]


def _share(summary: Summary | None) -> str:
    """A share of the roofline as a percentage; one above the limit is not believed."""
    if summary is None:
        return "-"
    if summary.median > OVER_LIMIT:
        return "over!"
    return f"{summary.median:.0%}"


def _counts_text(values: dict[int, float], digits: int, unit: str) -> str:
    """'133 tokens/s at 1 thread, 193 at 2'."""
    parts = []
    for i, (threads, value) in enumerate(sorted(values.items())):
        text = f"{value:.{digits}f}"
        if i == 0:
            text += f" {unit} at {threads} thread{'s' * (threads != 1)}"
        else:
            text += f" at {threads}"
        parts.append(text)
    return ", ".join(parts)


def roofline_lines(sweep: Sweep) -> list[str]:
    """The model's cost of a token, the rates the machine's limits allow per thread
    count, and what the roofline shows about each count (``verdicts.roofline_cause``)."""
    if sweep.roofline is None:
        return [f"  roofline: not measured ({sweep.roofline_note})"] if sweep.roofline_note else []
    lines = [f"  roofline: {sweep.roofline.cost.describe()}"]
    limits = {r.threads: sweep.limits_at(r.threads) for r in sweep}
    allowed = []
    for key, what, per_second, scale, unit in (
        ("generation_limit", "generation", "read_bytes_per_second", 1e9, "GB/s memory read"),
        ("prefill_limit", "prefill", "flops_per_second", 1e9, "GFLOP/s fp32 multiply-add"),
    ):
        rates = {t: v for t, lim in limits.items() if (v := lim.get(key)) is not None}
        peaks = {t: v / scale for t, lim in limits.items() if (v := lim.get(per_second))}
        if rates:
            allowed.append(
                f"{what} {_counts_text(rates, 0, 'tokens/s')} ({_counts_text(peaks, 1, unit)})"
            )
    if allowed:
        lines.append(f"  limits: {'; '.join(allowed)}")
    disturbed = [t for t, lim in limits.items() if lim.get("probe_disturbed")]
    if disturbed:
        lines.append(
            f"  limits at {', '.join(map(str, disturbed))} threads were probed while other "
            "processes took CPU: they may be low, and the shares high"
        )
    # the phase the workload is about; prefill too where its phase was long enough
    # to measure (a long prompt), as its limit is another one
    phases = ["prefill" if sweep.focus == PREFILL_RATE.name else "generation"]
    if phases == ["generation"] and any(r.summary(PREFILL_UTILIZATION) for r in sweep):
        phases.append("prefill")
    for phase in phases:
        for result in sweep:
            found = roofline_cause(sweep, result.threads, phase)
            if found is not None:
                lines.append(f"  {found}")
    return lines


def format_table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths, strict=False))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=False)) for row in rows]
    return lines


def _workload_lines(sweep: Sweep, verdict: Verdict) -> list[str]:
    """The count that makes this test's whole request quickest, and whether prefill and
    generation agree on it."""
    request = verdict.for_quantity(REQUEST_SECONDS.name)
    if request is None or len(sweep.results) < 2:
        return []
    timed = [
        (r.threads, summary.median)
        for r in sweep
        if not r.busy and (summary := r.summary(REQUEST_SECONDS)) is not None
    ]
    times = ", ".join(f"{median:.3f} s at {threads}" for threads, median in timed)
    times += " thread" if [t for t, _ in timed] == [1] else " threads"
    if request.shown:
        text = f"whole request: num_thread {request.threads} is quickest ({times})"
    else:
        counts = " or ".join(str(t) for t in sorted({*request.unsettled, request.threads}))
        text = f"whole request: no num_thread shown quickest ({times}; {counts} alike)"
    lines = [f"  {text}{request.busy_note}"]
    prefill = verdict.for_quantity(PREFILL_RATE.name)
    generation = verdict.for_quantity(GENERATION_RATE.name)
    if prefill is not None and generation is not None and _disagree(prefill, generation):
        lines.append(
            f"  the phases disagree: prefill {_said(prefill)}, generation {_said(generation)}; "
            "for this prompt and reply length the whole request decides"
        )
    return lines


def _alike(r: Recommendation) -> set[int]:
    """The counts ``r`` cannot tell from its pick, the pick included."""
    return {r.threads, *r.unsettled}


def _disagree(a: Recommendation, b: Recommendation) -> bool:
    """Whether one phase is shown best at a count the other is shown to do worse at."""
    if a.shown and b.shown:
        return a.threads != b.threads
    if a.shown:
        return a.threads not in _alike(b)
    if b.shown:
        return b.threads not in _alike(a)
    return False


def _said(r: Recommendation) -> str:
    if r.shown:
        return f"is best at {r.threads} thread{'s' * (r.threads != 1)}"
    counts = " or ".join(str(t) for t in sorted(_alike(r)))
    return f"cannot tell {counts} threads apart"


def _prompt_words(sweep: Sweep) -> str:
    counts = sorted({s.timings.prompt_eval_count for r in sweep for s in r.samples})
    if not counts or counts[-1] <= 0:
        return ""
    size = str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    if sweep.prompt_cache:
        return f", {size}-token prompt (sent as given: repeats may reuse Ollama's prompt cache)"
    return f", {size}-token prompt (a unique first line per request: no prompt cache hits)"


#: how each check's outcome is shown, in the text report and the HTML report
CHECK_MARKS = {
    "pass": "ok",
    "fail": "FAILED",
    "inconclusive": "UNDECIDED",
    "busy": "BUSY",
    "unavailable": "NOT MEASURED",
}


def workload_title(sweep: Sweep) -> str:
    """'generate with m (270M, Q4_K_M), 32 tokens per request, 18-token prompt (...)'."""
    model = sweep.model
    details = ", ".join(x for x in (model.parameter_size, model.quantization) if x)
    return (
        f"{sweep.kind} with {model.name}{f' ({details})' if details else ''}, "
        f"{sweep.num_predict} tokens per request{_prompt_words(sweep)}"
    )


def sweep_title(recorded: RecordedSweep) -> str:
    """'tests/t.py::test_x: generate with m (270M, Q4_K_M), 32 tokens per request, ...'."""
    return f"{recorded.nodeid}: {workload_title(recorded.sweep)}"


def table_rows(sweep: Sweep) -> list[list[str]]:
    """The sweep's table, a row per thread count, in ``COLUMNS``' order."""
    return [_row(sweep, r) for r in sweep]


def sweep_notes(sweep: Sweep) -> list[str]:
    """What a reader must know beside the table: an incomplete sweep, what was not
    measured, the roofline, short replies, the machine's load, time waited."""
    lines = []
    if not sweep.complete:
        lines.append(f"INCOMPLETE: {sweep.error.splitlines()[0] if sweep.error else ''}")
    if not sweep.server.local:
        lines.append(f"utilization not measured: {sweep.server.utilization_note}")
    mismatched = [
        r for r in sweep if r.runner_threads is not None and r.runner_threads != r.threads
    ]
    for r in mismatched:
        lines.append(
            f"note: asked for {r.threads} threads, the runner was started with {r.runner_threads}"
        )
    lines += [line.strip() for line in roofline_lines(sweep)]
    lines += [line.strip() for line in _short_reply_lines(sweep)]
    lines += [line.strip() for line in _disturbance_lines(sweep)]
    if sweep.waited_seconds >= 0.1:
        lines.append(
            f"waited {sweep.waited_seconds:.1f} s for other sweeps on this server or these "
            "CPUs to finish (not measured)"
        )
    return lines


def recommendation_lines(recorded: RecordedSweep) -> list[str]:
    """The recommended num_thread (or why there is none), and the whole request's."""
    sweep, verdict = recorded.sweep, recorded.verdict
    if verdict is None:
        return []
    lines = []
    if verdict.recommendation is not None:
        lines.append(verdict.recommendation.describe())
    elif any(r.busy for r in sweep):
        lines.append(
            "no recommended num_thread: no thread count got undisturbed samples "
            "(the machine was busy)"
        )
    return lines + [line.strip() for line in _workload_lines(sweep, verdict)]


def verdict_summary(recorded: RecordedSweep) -> str | None:
    """'verdict after 1 of 4 planned looks, 10 samples in all, alpha 0.01'."""
    verdict = recorded.verdict
    if verdict is None or not verdict.checks:
        return None
    samples = sum(len(r.samples) for r in recorded.sweep)
    return (
        f"verdict after {verdict.look} of {verdict.looks} planned looks, "
        f"{samples} samples in all, alpha {verdict.alpha:g}"
    )


def sweep_lines(recorded: RecordedSweep) -> list[str]:
    sweep = recorded.sweep
    lines = [sweep_title(recorded)]
    rows = table_rows(sweep)
    if rows:
        lines += ["  " + line for line in format_table(rows, COLUMNS)]
    lines += [f"  {line}" for line in sweep_notes(sweep)]
    verdict = recorded.verdict
    if verdict is not None:
        lines += [f"  {line}" for line in recommendation_lines(recorded)]
        for check in verdict.checks:
            mark = CHECK_MARKS.get(check.outcome, "NOT MEASURED")
            lines.append(f"  {mark:>12}  {check.describe(verdict.confidence)}")
        summary = verdict_summary(recorded)
        if summary is not None:
            lines.append(f"  {summary}")
        lines += [f"  note: {n}" for n in verdict.notes]
    return lines


def _disturbance_lines(sweep: Sweep) -> list[str]:
    """What the machine's load cost: samples set aside, time waited, counts given up."""
    lines = []
    for result in sweep:
        if not result.set_aside and result.waited_seconds < 0.1:
            continue
        aside = len(result.set_aside)
        if aside:
            text = (
                f"  retaken: {aside} disturbed sample{'s' if aside != 1 else ''} at "
                f"{threads_text(result.threads)} set aside ({result.describe_load()}, more than "
                f"{MARGIN_CORES:g} beyond the {_spare(result)} they could not use anyway)"
            )
            if result.waited_seconds >= 0.1:
                text += f"; waited {result.waited_seconds:.1f} s for quiet"
        else:
            text = (
                f"  waited {result.waited_seconds:.1f} s at {threads_text(result.threads)} for "
                "quiet: other processes took CPU its threads needed after the warm-up"
            )
        if result.gave_up:
            text += (
                "; gave up: the machine stayed busy (see --ollama-cpu-retakes and "
                "--ollama-cpu-quiet-wait)"
            )
        lines.append(text)
    disturbed, total = sweep.disturbed_samples()
    if disturbed:
        lines.append(
            f"  disturbed: {disturbed} of {total} samples; verdicts, the recommendation and "
            "comparisons use the undisturbed ones only (other tests? see --dist loadgroup in "
            "the README)"
        )
    return lines


def _short_reply_lines(sweep: Sweep) -> list[str]:
    short = sweep.short_replies()
    if not short:
        return []
    counts = sorted({s.timings.eval_count for s in short})
    got = str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    reasons = sorted({stopped_because(s.timings.done_reason) for s in short})
    total = sum(len(r.samples) for r in sweep)
    return [
        f"  short replies: {len(short)} of {total} samples stopped after {got} of the "
        f"{sweep.num_predict} tokens asked ({'; '.join(reasons)}); their rates are over the "
        "tokens generated. For rates over the whole request, use a prompt that makes the "
        "model write at length."
    ]


def _spare(result: ThreadResult) -> str:
    spares = {s.spare_cpus for s in result.samples if s.spare_cpus is not None}
    if len(spares) != 1:
        return "CPUs"
    return cpus_text(spares.pop())


def summary_lines(sweeps: Sequence[RecordedSweep]) -> list[str]:
    lines: list[str] = []
    groups = by_machine(sweeps)
    for recorded_group in groups.values():
        if len(groups) > 1:
            first = recorded_group[0].sweep
            if lines:
                lines.append("")
            lines.append(
                f"--- machine {first.machine.hostname}, server {first.server.host} "
                f"(Ollama {first.server.version}): {first.machine.describe()}"
            )
        limits = merged_limits(recorded_group)
        if limits is not None:
            lines.append(f"machine limits: {limits.describe()}")
        for recorded in recorded_group:
            if lines:
                lines.append("")
            lines += sweep_lines(recorded)
    lines += ["", COLUMNS_LEGEND]
    return lines


def describe_model(model: ModelFacts) -> str:
    size = f"{model.size / 1e6:.0f} MB" if model.size else None
    digest = f"digest {model.digest[:12]}" if model.digest else None
    parts = [p for p in (model.family, model.parameter_size, model.quantization, size, digest) if p]
    return f"model {model.name}: {', '.join(parts)}"


def run_header(settings: Settings, facts: StartFacts | None) -> list[str]:
    """The lines pytest prints above the tests: settings, server, model, machine and,
    where already probed, its limits. ``facts`` None: the pytest-xdist workers measure,
    each against its own server."""
    if facts is None:
        # the workers measure, each against its own OLLAMA_HOST (see --tx env:)
        return [
            f"ollama-cpu: {settings.describe()}",
            "ollama-cpu: measured by the pytest-xdist workers, each against its own server; "
            "sweeps take turns per server and CPU",
        ]
    connection = facts.connection
    if connection is None:
        return header_lines(settings.describe(), None, None, f"NOT CONNECTED: {facts.error}")
    if facts.model is not None:
        model = describe_model(facts.model)
    elif facts.model_error is not None:
        model = f"MODEL NOT AVAILABLE: {facts.model_error}"
    else:
        model = (
            f"NO MODEL GIVEN: pass {MODEL.flag} NAME or set {MODEL.env}; each test that does "
            "not call generate(..., model=NAME) fails until then"
        )
    return header_lines(
        settings.describe(),
        connection.facts.version,
        connection.machine,
        connection.facts.utilization_note,
        model,
        facts.cost,
        facts.limits,
    )


def header_lines(
    settings_text: str,
    version: str | None,
    machine: MachineFacts | None,
    note: str,
    model: str | None = None,
    cost: ModelCost | None = None,
    limits: MachineLimits | None = None,
) -> list[str]:
    lines = [f"ollama-cpu: {settings_text}"]
    if version is not None:
        lines.append(f"ollama-cpu: Ollama {version}; {note}")
    else:
        lines.append(f"ollama-cpu: {note}")
    if model is not None:
        lines.append(f"ollama-cpu: {model}")
    if cost is not None:
        lines.append(f"ollama-cpu: roofline: {cost.describe()}")
    if machine is not None:
        lines.append(f"ollama-cpu: {machine.describe()}")
    if limits is not None:
        lines.append(f"ollama-cpu: machine limits: {limits.describe()}")
    return lines


# -- comparison with a baseline ------------------------------------------------

COMPARISON_COLUMNS = (
    "test",
    "threads",
    "rule",
    "baseline",
    "now",
    "n",
    "change",
    "interval",
    "p adj.",
    "detects",
    "tg roof",
    "verdict",
)


def common_file(comparison: Comparison) -> str | None:
    """The test file every row comes from, if one: the table then names tests only."""
    files = {row.test.partition("::")[0] for row in comparison.rows}
    if len(files) == 1 and all("::" in row.test for row in comparison.rows):
        return files.pop()
    return None


def comparison_rows(comparison: Comparison) -> list[list[str]]:
    rows = []
    common = common_file(comparison)
    for row in comparison.rows:
        digits = row.rule.measure.digits
        rows.append(
            [
                row.test.partition("::")[2] if common else row.test,
                str(row.threads),
                row.rule.text,
                _num(row.baseline, digits),
                _num(row.now, digits),
                "-" if row.shift is None else f"{row.samples[0]}/{row.samples[1]}",
                row.change,
                row.interval,
                "-" if row.p_adjusted is None else f"{row.p_adjusted:.2g}",
                row.detectable_text,
                _roofline_change(row.roofline),
                row.verdict,
            ]
        )
    return rows


def _roofline_change(shares: tuple[float | None, float | None]) -> str:
    """'56% -> 35%': the generation rate's share of the memory limit, then and now."""
    if shares == (None, None):
        return "-"
    return " -> ".join("-" if v is None else f"{v:.0%}" for v in shares)


def comparison_notes(comparison: Comparison) -> list[str]:
    return [line.text for line in _noted(comparison)]


def _noted(comparison: Comparison) -> list[Line]:
    """The comparison's notes; a machine that differs is red."""
    notes: list[Line] = []
    if comparison.baseline == comparison.new:
        notes.append(
            Line(
                f"the baseline and the new run are the same file ({comparison.new}): name two "
                "different runs"
            )
        )
    notes += [Line(f"the baseline's machine differs: {d}", "red") for d in comparison.differences]
    plain = [f"only in the baseline: {name}" for name in comparison.only_in_baseline]
    plain += [f"only in this run: {name}" for name in comparison.only_in_new]
    if comparison.gating and not comparison.rows:
        plain.append("no test was measured in both runs, so no rule was applied")
    missing = comparison.not_compared
    if missing and comparison.gating:
        plain.append(
            f"{len(missing)} row(s) 'not compared': fewer than two usable samples on a side "
            "(--ollama-cpu-rounds 1, or requests too short for CPU figures), so no rule was "
            "applied to them"
        )
    for row in comparison.busy:
        plain.append(
            f"{row.test} at {threads_text(row.threads)} was not compared because the machine was "
            f"busy ({row.busy}): samples taken under load are never judged"
        )
    undecided = comparison.undecided
    if undecided:
        plain.append(
            f"{len(undecided)} row(s) marked 'ok?' passed because their samples are too few or "
            "too noisy to show a drop of the rule's size, not because there is none: take more "
            "rounds in both runs, or widen the rule"
        )
    return notes + [Line(note) for note in plain]


def comparison_title(comparison: Comparison) -> str:
    common = common_file(comparison)
    where = f" (tests in {common})" if common else ""
    return f"baseline {comparison.baseline} vs {comparison.new}{where}"


def comparison_legend(comparison: Comparison) -> list[str]:
    if comparison.gating:
        verdict = (
            f"{len(comparison.regressions)} regression(s) at alpha {comparison.alpha:g}; p adj.: "
            "one-sided test that the drop exceeds the rule's size, adjusted for the "
            f"{len(comparison.rows)} row(s) compared (Bonferroni): below alpha is a regression; "
            "detects: the drop a row would catch 9 times in 10 at its samples' spread (a drop "
            "of exactly the rule's size passes)"
        )
    else:
        verdict = (
            "no --ollama-cpu-compare-fail rule, so nothing can fail; p adj.: one-sided test "
            f"that throughput dropped at all, adjusted for the {len(comparison.rows)} row(s)"
        )
    return [
        verdict,
        "baseline, now: what the change is computed from (geometric means for % rules, means "
        "otherwise); n: the undisturbed samples compared, baseline/now (a compared run takes "
        "what its baseline's spread calls for); "
        f"interval: {1 - 2 * comparison.alpha:.0%} simultaneous interval of the "
        f"change (each bound one-sided at {1 - comparison.alpha:.0%}); tg roof: the "
        "generation rate's mean share of the memory limit, baseline -> now (a run that probed "
        "no limits: -); a rule such as roofline:0.05 gates on it",
    ]


def comparison_report(comparison: Comparison) -> list[Line]:
    """The comparison for the terminal: a regression's row and a machine that differs
    are red."""
    lines = [Line(comparison_title(comparison))]
    rows = comparison_rows(comparison)
    if rows:
        table = format_table(rows, COMPARISON_COLUMNS)
        lines.append(Line("  " + table[0]))  # the header
        lines += [
            Line("  " + line, "red" if row.regression else None)
            for row, line in zip(comparison.rows, table[1:], strict=True)
        ]
    else:
        lines.append(Line("  no test was measured in both runs"))
    lines += [Line(f"  note: {note.text}", note.colour) for note in _noted(comparison)]
    lines += [Line(f"  {line}") for line in comparison_legend(comparison)]
    return lines


def comparison_lines(comparison: Comparison) -> list[str]:
    """The comparison as plain text (the ``compare`` command's table)."""
    return [line.text for line in comparison_report(comparison)]


def comparison_markdown(comparison: Comparison) -> str:
    regressions = comparison.regressions
    head = "Regressions found" if regressions else "No regressions"
    if comparison.busy:
        head += f" ({len(comparison.busy)} row(s) inconclusive: the machine was busy)"
    if not comparison.gating:
        head = "Comparison (no rule given)"
    common = common_file(comparison)
    where = f", tests in `{common}`" if common else ""
    lines = [
        f"### pytest-ollama-cpu: {head}",
        "",
        f"Baseline `{comparison.baseline}` vs `{comparison.new}`{where}, alpha "
        f"{comparison.alpha:g}.",
        "",
        "| " + " | ".join(COMPARISON_COLUMNS) + " |",
        "|" + "---|" * len(COMPARISON_COLUMNS),
    ]
    for row, cells in zip(comparison.rows, comparison_rows(comparison), strict=True):
        cells = [c.replace("|", "\\|") for c in cells]
        if row.regression:
            cells[-1] = f"**{cells[-1]}**"
        lines.append("| " + " | ".join(cells) + " |")
    notes = comparison_notes(comparison)
    if notes:
        lines += [""] + [f"- {n}" for n in notes]
    lines += [""] + [f"_{line}_  " for line in comparison_legend(comparison)]
    return "\n".join(lines) + "\n"
