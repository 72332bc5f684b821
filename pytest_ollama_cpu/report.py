"""Text a person reads: the report header and the per-test tables.

Pure formatting: takes results, returns lines.
"""

from __future__ import annotations

from collections.abc import Sequence

from .client import ModelFacts
from .machine import MachineFacts
from .results import Sweep, ThreadResult
from .session import RecordedSweep
from .statistics import Summary

COLUMNS = (
    "threads",
    "runner",
    "tokens/s",
    "±stdev",
    "95% CI",
    "speedup",
    "efficiency",
    "thread util",
    "machine util",
    "other cores",
)


def _num(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _median(summary: Summary | None, digits: int = 2) -> str:
    return "-" if summary is None else f"{summary.median:.{digits}f}"


def _ci(summary: Summary) -> str:
    if summary.ci_low is None or summary.ci_high is None:
        return "-"
    return f"{summary.ci_low:.1f}-{summary.ci_high:.1f}"


def _row(sweep: Sweep, result: ThreadResult) -> list[str]:
    tps = result.tokens_per_second
    runner = result.runner_threads
    return [
        str(result.threads),
        "?" if runner is None else str(runner),
        f"{tps.median:.1f}",
        "-" if tps.stdev is None else f"{tps.stdev:.1f}",
        _ci(tps),
        _num(sweep.speedup(result.threads)),
        _num(sweep.efficiency(result.threads)),
        _median(result.thread_utilization),
        _median(result.machine_utilization),
        _median(result.other_cores_busy),
    ]


def format_table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths, strict=False))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=False)) for row in rows]
    return lines


def sweep_lines(recorded: RecordedSweep) -> list[str]:
    sweep = recorded.sweep
    model = sweep.model
    details = ", ".join(x for x in (model.parameter_size, model.quantization) if x)
    title = (
        f"{recorded.nodeid}: {sweep.kind} with {model.name}"
        f"{f' ({details})' if details else ''}, {sweep.num_predict} tokens per request"
    )
    lines = [title]
    rows = [_row(sweep, r) for r in sweep]
    if rows:
        lines += ["  " + line for line in format_table(rows, COLUMNS)]
    if not sweep.complete:
        lines.append(f"  INCOMPLETE: {sweep.error.splitlines()[0] if sweep.error else ''}")
    if not sweep.server.local:
        lines.append(f"  utilization not measured: {sweep.server.utilization_note}")
    mismatched = [
        r for r in sweep if r.runner_threads is not None and r.runner_threads != r.threads
    ]
    for r in mismatched:
        lines.append(
            f"  note: asked for {r.threads} threads, the runner was started with {r.runner_threads}"
        )
    verdict = recorded.verdict
    if verdict is not None:
        if verdict.recommendation is not None:
            lines.append(f"  {verdict.recommendation.describe()}")
        for check in verdict.checks:
            mark = {"pass": "ok", "fail": "FAILED", "inconclusive": "UNDECIDED"}.get(
                check.outcome, "NOT MEASURED"
            )
            lines.append(f"  {mark:>12}  {check.describe(verdict.confidence)}")
        if verdict.checks:
            samples = sum(len(r.samples) for r in sweep)
            lines.append(
                f"  verdict after {verdict.look} of {verdict.looks} planned looks, "
                f"{samples} samples in all, alpha {verdict.alpha:g}"
            )
        lines += [f"  note: {n}" for n in verdict.notes]
    return lines


def summary_lines(sweeps: Sequence[RecordedSweep]) -> list[str]:
    lines: list[str] = []
    for recorded in sweeps:
        if lines:
            lines.append("")
        lines += sweep_lines(recorded)
    lines += [
        "",
        "runner: threads the Ollama runner was started with; tokens/s: median generation "
        "rate from Ollama's eval timings; util: median CPU use of the server's process tree "
        "per requested thread / per usable CPU; other cores: CPU busy outside the server.",
    ]
    return lines


def describe_model(model: ModelFacts) -> str:
    size = f"{model.size / 1e6:.0f} MB" if model.size else None
    digest = f"digest {model.digest[:12]}" if model.digest else None
    parts = [p for p in (model.family, model.parameter_size, model.quantization, size, digest) if p]
    return f"model {model.name}: {', '.join(parts)}"


def header_lines(
    settings_text: str,
    version: str | None,
    machine: MachineFacts | None,
    note: str,
    model: str | None = None,
) -> list[str]:
    lines = [f"ollama-cpu: {settings_text}"]
    if version is not None:
        lines.append(f"ollama-cpu: Ollama {version}; {note}")
    else:
        lines.append(f"ollama-cpu: {note}")
    if model is not None:
        lines.append(f"ollama-cpu: {model}")
    if machine is not None:
        lines.append(f"ollama-cpu: {machine.describe()}")
    return lines
