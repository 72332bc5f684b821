"""Verdicts: is the CPU used well enough? Decided by statistical test, not by noise.

Each threshold becomes one or more checks (a quantity at a thread count). A
check *fails* only when its upper confidence bound is below the threshold, and
*passes* when its lower bound is at or above it; otherwise it is *inconclusive*
and the sweep may take more samples. The confidence level is shared out over
the checks of a test (Bonferroni) and over the looks at the data as samples
are added (``statistics.spent_alpha``), so the chance that a test fails
although every true value meets its threshold stays within ``alpha``.

Which test, and why: see "How verdicts are decided" in the README.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from .machine import cpus_text, threads_text
from .quantities import (
    GENERATION,
    GENERATION_RATE,
    PREFILL_RATE,
    QUANTITIES,
    REQUEST_SECONDS,
    Quantity,
    lookup,
)
from .results import MachineBusy, Sweep, ThreadResult
from .roofline import NEAR_LIMIT, OVER_LIMIT
from .statistics import Bounds, format_interval, mean_bounds, ratio_bounds, spent_alpha
from .thresholds import DEFAULT_ALPHA, Inconclusive, Thresholds, check_alpha, check_threshold

#: ``busy``: too few undisturbed samples, because other processes took the CPU the
#: server needed; never a failure, whatever the samples taken under load say.
Outcome = Literal["pass", "fail", "inconclusive", "unavailable", "busy"]


#: A smaller thread count is recommended when its tokens/s is shown to be at least
#: this share of the best's.
EQUIVALENT_SHARE = 0.95

SPEEDUP = "speedup"
EFFICIENCY = "efficiency"
THREAD_UTILIZATION = "thread utilization"
MACHINE_UTILIZATION = "machine utilization"
ROOFLINE = "roofline"

#: What ``min_roofline`` reads per phase, and what its check is called.
ROOFLINE_BY_PHASE: dict[str, tuple[str, str]] = {
    "generation": ("generation_roofline", "memory roofline"),
    "prefill": ("prefill_roofline", "compute roofline"),
}


@dataclass(frozen=True)
class Check:
    quantity: str
    threads: int
    threshold: float
    outcome: Outcome
    estimate: float | None = None
    low: float | None = None
    high: float | None = None
    cause: str | None = None
    decided_at_look: int | None = None
    #: the one-sided significance each bound was computed at, after the corrections
    alpha_used: float | None = None

    @property
    def involves(self) -> tuple[int, ...]:
        """Thread counts whose samples this check reads."""
        return (self.threads,)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "quantity": self.quantity,
            "threads": self.threads,
            "threshold": self.threshold,
            "outcome": self.outcome,
            "estimate": self.estimate,
            "low": self.low,
            "high": self.high,
            "cause": self.cause,
            "decided_at_look": self.decided_at_look,
            "alpha_used": self.alpha_used,
        }
        if len(self.involves) > 1:
            data["baseline"] = self.involves[0]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Check:
        names = ("quantity", "threads", "threshold", "outcome", "estimate", "low", "high")
        fields: dict[str, Any] = {k: data.get(k) for k in names}
        fields["cause"] = data.get("cause")
        fields["decided_at_look"] = data.get("decided_at_look")
        fields["alpha_used"] = data.get("alpha_used")
        if data.get("baseline") is not None:
            return _RatioCheck(**fields, baseline=int(data["baseline"]))
        return cls(**fields)

    def interval_text(self, confidence: float) -> str | None:
        """'99.95% CI 0.99-1.08': the interval the decision used, labelled with its real
        confidence (``confidence`` where the check does not say)."""
        if self.low is None or self.high is None:
            return None
        level = confidence if self.alpha_used is None else 1 - 2 * self.alpha_used
        return f"{_percent(level)} CI {format_interval(self.low, self.high)}"

    def describe(self, confidence: float) -> str:
        name = f"num_thread={self.threads}: {self.quantity}"
        if self.outcome == "busy":
            return f"{name} not decided because the machine was busy: {self.cause}"
        if self.estimate is None:
            return f"{name} not decided: {self.cause}"
        shown = self.interval_text(confidence)
        interval = "" if shown is None else f" ({shown})"
        relation = {
            "fail": "below",
            "pass": "not below",
            "inconclusive": "undecided against",
            "unavailable": "against",
            "busy": "undecided against",
        }[self.outcome]
        text = f"{name} {self.estimate:.2f}{interval} {relation} {self.threshold:g}"
        if self.cause and self.outcome == "fail":
            text += f": {self.cause}"
        elif self.cause and self.estimate is not None:
            text += f" ({self.cause})"
        return text


def _percent(level: float) -> str:
    """0.99 -> '99%', 0.99958 -> '99.95%': enough digits, rounded down, never '100%'."""
    if level >= 1:
        return "100%"
    digits = max(0, math.ceil(-math.log10(1 - level) - 1e-9) - 2)
    scale = 10**digits
    return f"{math.floor(level * 100 * scale + 1e-9) / scale:.{digits}f}%"


@dataclass(frozen=True)
class _RatioCheck(Check):
    baseline: int = 1

    @property
    def involves(self) -> tuple[int, ...]:
        return (self.baseline, self.threads)


@dataclass(frozen=True)
class Recommendation:
    """The smallest thread count shown to be within 5% of every other count.

    ``unsettled`` are counts the samples could neither show to be as fast nor
    to be slower: with more rounds one of them may be recommended.
    """

    threads: int
    tokens_per_second: float
    best_threads: int
    best_tokens_per_second: float
    unsettled: tuple[int, ...] = ()
    #: thread counts that got too few undisturbed samples to take part
    busy: tuple[int, ...] = ()
    #: whether ``threads`` was shown within 5% of every other count; if not, it is
    #: only the fastest by median, and the samples cannot tell it from ``unsettled``
    shown: bool = True
    #: what the recommendation is best at (a name in ``quantities.QUANTITIES``); the
    #: two figures above are its medians (for a time, lower is better)
    quantity: str = GENERATION_RATE.name

    @property
    def _measure(self) -> Quantity:
        return QUANTITIES[self.quantity]

    def _figure(self, value: float) -> str:
        return f"{self._measure.format(value)} {self._measure.unit}"

    @property
    def modelfile_line(self) -> str:
        return f"PARAMETER num_thread {self.threads}"

    def describe(self) -> str:
        text = self._describe_shown() if self.shown else self._describe_not_shown()
        return text + self.busy_note

    @property
    def busy_note(self) -> str:
        """'; not compared: 2 threads (the machine was busy)', or '' when every count took part."""
        if not self.busy:
            return ""
        counts = ", ".join(str(t) for t in self.busy)
        return f"; not compared: {counts} threads (the machine was busy)"

    def _describe_not_shown(self) -> str:
        counts = " or ".join(str(t) for t in sorted({*self.unsettled, self.threads}))
        threads = threads_text(self.threads)
        return (
            f"no num_thread shown best: {threads} measured fastest "
            f"({self._figure(self.tokens_per_second)}; Modelfile: {self.modelfile_line}), "
            f"but the samples cannot tell {counts} threads apart within "
            f"{1 - EQUIVALENT_SHARE:.0%} (more rounds would)"
        )

    def _describe_shown(self) -> str:
        text = (
            f"recommended num_thread {self.threads} ({self._figure(self.tokens_per_second)}; "
            f"Modelfile: {self.modelfile_line})"
        )
        if self.best_threads != self.threads:
            text += (
                f": as fast as the best within {1 - EQUIVALENT_SHARE:.0%}, "
                f"{self.best_threads} threads at {self._figure(self.best_tokens_per_second)}"
            )
        if self.unsettled:
            counts = " or ".join(str(t) for t in self.unsettled)
            plural = "s" if len(self.unsettled) > 1 or self.unsettled[0] > 1 else ""
            text += (
                f"; {counts} thread{plural} may be as fast, the samples cannot tell yet "
                "(more rounds would)"
            )
        return text

    def to_dict(self) -> dict[str, Any]:
        return {
            "threads": self.threads,
            "tokens_per_second": self.tokens_per_second,
            "best_threads": self.best_threads,
            "best_tokens_per_second": self.best_tokens_per_second,
            "unsettled": list(self.unsettled),
            "busy": list(self.busy),
            "shown": self.shown,
            "modelfile": self.modelfile_line,
            "quantity": self.quantity,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Recommendation:
        return cls(
            int(data["threads"]),
            float(data["tokens_per_second"]),
            int(data["best_threads"]),
            float(data["best_tokens_per_second"]),
            tuple(int(t) for t in data.get("unsettled", ())),
            tuple(int(t) for t in data.get("busy", ())),
            bool(data.get("shown", True)),
            str(data.get("quantity", GENERATION_RATE.name)),
        )


@dataclass(frozen=True)
class Verdict:
    """All checks of one sweep, the recommended thread count, and how it was reached."""

    checks: tuple[Check, ...]
    alpha: float
    look: int
    looks: int
    recommendation: Recommendation | None
    notes: tuple[str, ...] = field(default_factory=tuple)
    #: the best count for the other sides of the workload: its prefill rate and the
    #: whole request's time (this test's prompt length and reply length)
    by_phase: tuple[Recommendation, ...] = ()

    def for_quantity(self, name: str) -> Recommendation | None:
        """The recommendation by ``name`` (a quantity's name), if one was made."""
        found = [r for r in (self.recommendation, *self.by_phase) if r and r.quantity == name]
        return found[0] if found else None

    @property
    def failed(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if c.outcome == "fail")

    @property
    def inconclusive(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if c.outcome in ("inconclusive", "unavailable", "busy"))

    @property
    def busy(self) -> tuple[Check, ...]:
        """Checks left undecided because the machine was busy."""
        return tuple(c for c in self.checks if c.outcome == "busy")

    @property
    def passed(self) -> bool:
        return not self.failed and not self.inconclusive

    def __bool__(self) -> bool:
        return not self.failed

    def undecided_threads(self, sweep: Sweep | None = None) -> set[int]:
        """Thread counts that more samples could help decide: not where a check reads a
        count the machine's load made the sweep give up (more samples elsewhere would
        not decide it)."""
        found: set[int] = set()
        for check in self.checks:
            if check.outcome not in ("inconclusive", "busy"):
                continue
            if sweep is not None and any(
                t in sweep.results and sweep.results[t].gave_up for t in check.involves
            ):
                continue
            found.update(check.involves)
        return found

    @property
    def confidence(self) -> float:
        return 1.0 - self.alpha

    def message(self) -> str:
        lines = [c.describe(self.confidence) for c in self.failed]
        lines += [c.describe(self.confidence) for c in self.inconclusive]
        lines += list(self.notes)
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "alpha": self.alpha,
            "looks": self.look,
            "planned_looks": self.looks,
            "outcome": "fail" if self.failed else "inconclusive" if self.inconclusive else "pass",
            "checks": [c.to_dict() for c in self.checks],
            "recommendation": None
            if self.recommendation is None
            else self.recommendation.to_dict(),
            "by_phase": [r.to_dict() for r in self.by_phase],
            "notes": list(self.notes),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Verdict:
        recommendation = data.get("recommendation")
        return cls(
            tuple(Check.from_dict(c) for c in data["checks"]),
            float(data["alpha"]),
            int(data["looks"]),
            int(data["planned_looks"]),
            None if recommendation is None else Recommendation.from_dict(recommendation),
            tuple(data.get("notes", ())),
            tuple(Recommendation.from_dict(r) for r in data.get("by_phase", ())),
        )


# -- planning and deciding -----------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    #: what the check is called: "speedup", "prefill speedup", "thread utilization"
    quantity: str
    threads: int
    threshold: float
    kind: str = ""
    #: the quantity a speedup or efficiency is a ratio of
    rate: str = GENERATION_RATE.name

    def __post_init__(self) -> None:
        if not self.kind:
            object.__setattr__(self, "kind", self.quantity)


def _per_rate(value: Any, focus: str = GENERATION_RATE.name) -> dict[str, Any]:
    """A speedup or efficiency threshold per rate: a plain one is for the sweep's focus
    (the generation rate, unless the workload is about another)."""
    if value is None:
        return {}
    if isinstance(value, Mapping) and value and all(isinstance(k, str) for k in value):
        rates = {}
        for key, minimum in value.items():
            quantity = lookup(key)
            if quantity is None or not quantity.relative:
                raise ValueError(f"{key!r} is not a rate whose speedup can be checked")
            rates[quantity.name] = minimum
        return rates
    return {focus: value}


def check_name(kind: str, rate: str) -> str:
    """'speedup' for the generation rate (as always), 'prefill speedup' for another."""
    if rate == GENERATION_RATE.name:
        return kind
    quantity = QUANTITIES[rate]
    return f"{quantity.aliases[0] if quantity.aliases else quantity.name} {kind}"


def plan_checks(sweep: Sweep, thresholds: Thresholds) -> list[_Plan]:
    counts = sorted(sweep.results)
    if not counts:
        return []
    base, largest = counts[0], counts[-1]
    plans: list[_Plan] = []
    for rate, speedup in _per_rate(thresholds.min_speedup, sweep.focus).items():
        name = check_name(SPEEDUP, rate)
        if isinstance(speedup, Mapping):
            for t, minimum in sorted(speedup.items()):
                plans.append(_Plan(name, int(t), float(minimum), SPEEDUP, rate))
        elif largest != base:
            plans.append(_Plan(name, largest, float(speedup), SPEEDUP, rate))
    for rate, efficiency in _per_rate(thresholds.min_efficiency, sweep.focus).items():
        name = check_name(EFFICIENCY, rate)
        if isinstance(efficiency, Mapping):
            for t, minimum in sorted(efficiency.items()):
                plans.append(_Plan(name, int(t), float(minimum), EFFICIENCY, rate))
        else:
            plans += [
                _Plan(name, t, float(efficiency), EFFICIENCY, rate) for t in counts if t != base
            ]
    for used, minimum in _per_phase_utilization(thresholds.min_utilization).items():
        name = (
            THREAD_UTILIZATION
            if used == UTILIZATION_BY_PHASE[None]
            else (f"{QUANTITIES[used].phase} {THREAD_UTILIZATION}")
        )
        plans += [_Plan(name, t, float(minimum), THREAD_UTILIZATION, used) for t in counts]
    for phase, minimum in _per_phase_roofline(thresholds.min_roofline, sweep.focus).items():
        used, name = ROOFLINE_BY_PHASE[phase]
        plans += [_Plan(name, t, float(minimum), ROOFLINE, used) for t in counts]
    if thresholds.min_machine_utilization is not None:
        plans.append(
            _Plan(
                MACHINE_UTILIZATION,
                largest,
                thresholds.min_machine_utilization,
                MACHINE_UTILIZATION,
                "machine_utilization",
            )
        )
    return plans


def _classify(bounds: Bounds, threshold: float) -> Outcome:
    if bounds.high < threshold:
        return "fail"
    if bounds.low >= threshold:
        return "pass"
    return "inconclusive"


def _values(result: ThreadResult, quantity: str) -> list[float]:
    """``quantity`` (a name in ``QUANTITIES``) in the undisturbed samples that measured it."""
    raw = [QUANTITIES[quantity].of(s) for s in result.undisturbed]
    return [v for v in raw if v is not None]


#: What ``min_utilization`` reads, per phase named in it (None: the whole request).
UTILIZATION_BY_PHASE: dict[str | None, str] = {
    None: "thread_utilization",
    "prefill": "prefill_thread_utilization",
    "generation": "generation_thread_utilization",
}


def _per_phase_utilization(value: Any) -> dict[str, Any]:
    """``min_utilization`` per quantity read: a plain one is the whole request's."""
    if value is None:
        return {}
    if isinstance(value, Mapping):
        found = {}
        for phase, minimum in value.items():
            if phase not in UTILIZATION_BY_PHASE or phase is None:
                raise ValueError(f"{phase!r} is not a phase: use 'prefill' or 'generation'")
            found[UTILIZATION_BY_PHASE[phase]] = minimum
        return found
    return {UTILIZATION_BY_PHASE[None]: value}


def _per_phase_roofline(value: Any, focus: str) -> dict[str, Any]:
    """``min_roofline`` per phase: a plain one is for the phase of the sweep's focus."""
    if value is None:
        return {}
    if isinstance(value, Mapping):
        bad = [k for k in value if k not in ROOFLINE_BY_PHASE]
        if bad:
            raise ValueError(f"{bad[0]!r} is not a phase: use 'prefill' or 'generation'")
        return dict(value)
    return {QUANTITIES[focus].phase or "generation": value}


def _goodness(result: ThreadResult, rate: str) -> list[float]:
    """``rate`` in the undisturbed samples, higher is better: a time by its inverse."""
    quantity = QUANTITIES[rate]
    values = [quantity.of(s) for s in result.undisturbed]
    if quantity.higher_is_better:
        return [v for v in values if v is not None]
    return [1 / v if v > 0 else 0.0 for v in values if v is not None]


def busy_cause(result: ThreadResult) -> str:
    """How busy the machine was at ``result``'s thread count, and what it cost."""
    aside = len(result.set_aside)
    kept = len(result.undisturbed)
    return (
        f"{result.describe_load()} at {threads_text(result.threads)}; {aside} disturbed "
        f"sample{'s' if aside != 1 else ''} set aside, {kept} undisturbed"
    )


def likely_cause(
    sweep: Sweep, threads: int, quantity: str, rate: str = GENERATION_RATE.name
) -> str:
    """What the machine proves about why ``threads`` fell short, first things first;
    ``rate`` is the quantity the check read (its phase picks the roofline).

    The decision read undisturbed samples only, so load from other processes is
    never the cause here: a count the load disturbed is ``busy``, not failed.
    """
    result = sweep.results.get(threads)
    machine = sweep.machine
    runner = None if result is None else result.runner_threads
    if runner is not None and runner != threads:
        return (
            f"cause: the runner was started with {runner} threads, not {threads}: "
            "the server did not apply num_thread"
        )
    if threads > machine.usable_cpus:
        limits = [f"its affinity allows {cpus_text(len(machine.affinity))}"]
        if machine.cgroup_quota_cpus is not None:
            limits.append(
                f"its cgroup v{machine.cgroup_version} quota {cpus_text(machine.cgroup_quota_cpus)}"
            )
        return (
            f"cause: the server may use only {cpus_text(machine.usable_cpus)} for {threads} "
            f"threads ({', '.join(limits)})"
        )
    if quantity.endswith((THREAD_UTILIZATION, MACHINE_UTILIZATION)):
        return (
            f"no cause shown: the server may use {machine.usable_cpus:g} CPUs and other "
            "processes left it the CPUs it needed, yet its threads were not all running"
        )
    found = roofline_cause(sweep, threads, QUANTITIES[rate].phase or GENERATION)
    if found is not None:
        return f"cause: {found}"
    util = None if result is None else result.thread_utilization
    if util is not None and util.median >= 0.8:
        why = sweep.roofline_note or "the machine's limits were not measured"
        return (
            f"no cause shown: every thread was busy (thread utilization {util.median:.2f}) and "
            "other processes left the CPUs free, yet throughput did not grow with the threads; "
            f"the limit is not the CPUs offered ({why})"
        )
    return "no cause shown by these samples"


def roofline_cause(sweep: Sweep, threads: int, phase: str) -> str | None:
    """What the roofline shows about ``phase`` at ``threads``: at the machine's limit
    (the resource is the cause), well below it with every thread busy (compute or
    overhead), or above it (a figure is wrong); None where it is not measured."""
    result = sweep.results.get(threads)
    if result is None or result.busy:
        return None
    used, _ = ROOFLINE_BY_PHASE[phase]
    summary = result.summary(used)
    if summary is None:
        return None
    share = summary.median
    memory = phase == "generation"
    limit = "memory limit" if memory else "compute limit"
    what = "generation" if memory else "prefill"
    allowed = sweep.limits_at(threads).get("generation_limit" if memory else "prefill_limit")
    rate = f" (limit {allowed:.0f} tokens/s)" if allowed else ""
    at = f"at {threads} thread{'s' * (threads != 1)}"
    if share > OVER_LIMIT:
        source = (
            "the bandwidth probe or the bytes per token"
            if memory
            else ("the arithmetic probe or the operations per token")
        )
        return (
            f"{what} {at} measured above the {limit}{rate}: {source} is wrong, so no share is shown"
        )
    util = result.thread_utilization
    busy = util is not None and util.median >= 0.8
    if share >= NEAR_LIMIT:
        resource = "memory bandwidth" if memory else "the CPUs' arithmetic"
        return (
            f"{what} reaches {share:.0%} of the {limit} {at}{rate}: {resource}, "
            "not threads, is the limit"
        )
    if busy:
        assert util is not None
        return (
            f"{what} reaches {share:.0%} of the {limit} {at}{rate} with every thread busy "
            f"(thread utilization {util.median:.2f}): the limit is compute or overhead "
            "(the runner's kernels, its threads waiting on each other), not "
            + ("memory bandwidth" if memory else "the CPUs' peak arithmetic")
            + _scaling_advice(sweep, threads, phase)
        )
    usable = sweep.machine.usable_cpus
    why = (
        f"its {threads} threads share {cpus_text(usable)}"
        if threads > usable
        else "neither the limit nor busy threads: the threads wait"
    )
    return (
        f"{what} reaches {share:.0%} of the {limit} {at}{rate}"
        + ("" if util is None else f" with threads busy {util.median:.0%} of the time")
        + f": {why}"
    )


def _scaling_advice(sweep: Sweep, threads: int, phase: str) -> str:
    """Whether more threads paid at ``threads`` against the next smaller count: where
    they did, more cores would; where they did not, the overhead grew with them."""
    smaller = [t for t in sweep.results if t < threads and not sweep.results[t].busy]
    if not smaller:
        return ""
    rate = GENERATION_RATE if phase == "generation" else PREFILL_RATE
    now = sweep.results[threads].summary(rate)
    before = sweep.results[max(smaller)].summary(rate)
    if now is None or before is None or before.median <= 0:
        return ""
    if now.median >= 1.1 * before.median:
        return f"; more threads paid ({max(smaller)} -> {threads}): more cores would help"
    return (
        f"; more threads did not pay ({max(smaller)} -> {threads} threads: "
        f"{before.median:.1f} -> {now.median:.1f} tokens/s)"
    )


def _why_no_ratio(
    now: list[float], base: list[float], rate: str, undisturbed: tuple[int, int]
) -> str:
    """Why a ratio of ``rate`` has no bounds: the real reason, not a guess."""
    words = QUANTITIES[rate].words
    if min(undisturbed) < 2:
        return "fewer than two undisturbed samples"
    if min(len(now), len(base)) < 2:
        return f"fewer than two samples measured a {words} (Ollama reported no such timing)"
    return f"a sample's {words} is not a positive number, so no ratio can be formed"


def _decide(sweep: Sweep, plan: _Plan, alpha: float) -> Check:
    counts = sorted(sweep.results)
    base = counts[0]

    def unavailable(cause: str) -> Check:
        return Check(plan.quantity, plan.threads, plan.threshold, "unavailable", cause=cause)

    if plan.threads not in sweep.results:
        return unavailable(f"{threads_text(plan.threads)} were not measured")
    result = sweep.results[plan.threads]
    if plan.kind in (SPEEDUP, EFFICIENCY):
        if plan.threads == base:
            return unavailable(
                f"{plan.quantity} is measured against the smallest thread count, {base}: "
                "sweep at least two thread counts"
            )
        busy = [r for r in (sweep.results[base], result) if r.busy]
        if busy:
            return _RatioCheck(
                plan.quantity,
                plan.threads,
                plan.threshold,
                "busy",
                cause="; ".join(busy_cause(r) for r in busy),
                baseline=base,
            )
        scale = 1.0 if plan.kind == SPEEDUP else base / plan.threads
        now = _goodness(result, plan.rate)
        before = _goodness(sweep.results[base], plan.rate)
        bounds = ratio_bounds(now, before, alpha)
        if bounds is None:
            return _RatioCheck(
                plan.quantity,
                plan.threads,
                plan.threshold,
                "inconclusive",
                cause=_why_no_ratio(
                    now,
                    before,
                    plan.rate,
                    (len(result.undisturbed), len(sweep.results[base].undisturbed)),
                ),
                baseline=base,
            )
        # estimate and bounds are of the same statistic: the ratio of geometric means
        scaled = Bounds(bounds.estimate * scale, bounds.low * scale, bounds.high * scale)
        outcome = _classify(scaled, plan.threshold)
        return _RatioCheck(
            plan.quantity,
            plan.threads,
            plan.threshold,
            outcome,
            scaled.estimate,
            scaled.low,
            scaled.high,
            likely_cause(sweep, plan.threads, plan.quantity, plan.rate)
            if outcome == "fail"
            else None,
            alpha_used=alpha,
            baseline=base,
        )
    if result.busy:
        return Check(plan.quantity, plan.threads, plan.threshold, "busy", cause=busy_cause(result))
    values = _values(result, plan.rate)
    if plan.kind == ROOFLINE:
        if not values:
            why = sweep.roofline_note or f"the limit at {threads_text(plan.threads)} is not known"
            return unavailable(f"no roofline: {why}")
        if sorted(values)[len(values) // 2] > OVER_LIMIT:
            over = roofline_cause(sweep, plan.threads, QUANTITIES[plan.rate].phase or GENERATION)
            return unavailable(over or "above the limit")
    if not values:
        if sweep.server.local:
            phase = QUANTITIES[plan.rate].phase
            if phase == "prefill":
                return unavailable(
                    "every prompt was processed in under a quarter second, too short to "
                    "measure CPU time; use a longer prompt (ollama_cpu.prefill(512))"
                )
            took = "generated its tokens in" if phase else "took"
            return unavailable(
                f"every request {took} under a quarter second, too short to measure CPU "
                "time; raise num_predict"
            )
        return unavailable(sweep.server.utilization_note)
    bounds_ = mean_bounds(values, alpha)
    if bounds_ is None:
        return Check(
            plan.quantity,
            plan.threads,
            plan.threshold,
            "inconclusive",
            cause="fewer than two undisturbed samples",
        )
    outcome = _classify(bounds_, plan.threshold)
    return Check(
        plan.quantity,
        plan.threads,
        plan.threshold,
        outcome,
        bounds_.estimate,
        bounds_.low,
        bounds_.high,
        likely_cause(sweep, plan.threads, plan.quantity, plan.rate) if outcome == "fail" else None,
        alpha_used=alpha,
    )


def recommend(
    sweep: Sweep, alpha: float = DEFAULT_ALPHA, rate: str = GENERATION_RATE.name
) -> Recommendation | None:
    """The smallest thread count shown to be within 5% of every other count measured,
    at ``rate`` (the generation rate unless told; for a time, lower is better).

    "Not significantly slower" would favour too few threads whenever samples are
    noisy (nothing is significant then), so a count must *show* that it is within
    ``EQUIVALENT_SHARE`` of each other count, the faster ones and the larger ones
    alike: the lower bound of its ratio to each is at least 0.95 (alpha shared over
    every ordered pair). Where no count shows it, none is shown best: the best by
    median is named, with the counts the samples cannot tell apart.
    """
    quantity = QUANTITIES[rate]
    busy = tuple(r.threads for r in sweep if r.busy)
    medians = {
        r.threads: summary.median
        for r in sweep
        if r.undisturbed and not r.busy and (summary := r.summary(quantity)) is not None
    }
    measured = [r for r in sweep if r.threads in medians]
    if not measured:
        return None
    sign = 1.0 if quantity.higher_is_better else -1.0
    best = max(measured, key=lambda r: sign * medians[r.threads])
    per_pair = alpha / max(1, len(measured) * (len(measured) - 1))
    chosen: ThreadResult | None = None
    candidates: list[int] = []  # not shown to be more than 5% worse than another count
    for result in measured:
        bounds = [
            ratio_bounds(_goodness(result, rate), _goodness(other, rate), per_pair)
            for other in measured
            if other is not result
        ]
        if chosen is None and all(b is not None and b.low >= EQUIVALENT_SHARE for b in bounds):
            chosen = result
        if not any(b is not None and b.high < EQUIVALENT_SHARE for b in bounds):
            candidates.append(result.threads)
    pick = chosen or best
    unsettled = tuple(
        t for t in candidates if t != pick.threads and (chosen is None or t < chosen.threads)
    )
    return Recommendation(
        pick.threads,
        medians[pick.threads],
        best.threads,
        medians[best.threads],
        unsettled,
        busy,
        shown=chosen is not None,
        quantity=rate,
    )


def evaluate(
    sweep: Sweep,
    thresholds: Thresholds,
    look: int = 1,
    looks: int = 1,
    previous: Verdict | None = None,
    with_recommendation: bool = True,
) -> Verdict:
    """Decide every check at this look; checks decided at an earlier look stay decided.
    ``with_recommendation=False`` leaves out the recommended num_thread, for a look
    that only asks what is still undecided."""
    plans = plan_checks(sweep, thresholds)
    per_check = spent_alpha(thresholds.alpha, look, looks) / max(1, len(plans))
    decided = {
        (c.quantity, c.threads): c
        for c in (previous.checks if previous else ())
        if c.outcome in ("pass", "fail")
    }
    checks: list[Check] = []
    for plan in plans:
        kept = decided.get((plan.quantity, plan.threads))
        if kept is not None:
            checks.append(kept)
            continue
        check = _decide(sweep, plan, per_check)
        if check.outcome in ("pass", "fail"):
            check = _with_look(check, look)
        checks.append(check)
    notes = [
        f"{len(r.set_aside)} disturbed sample(s) at {threads_text(r.threads)} set aside: "
        f"{r.describe_load()}; decided on the {len(r.undisturbed)} undisturbed"
        for r in sweep
        if r.set_aside and not r.busy
    ]
    return Verdict(
        tuple(checks),
        thresholds.alpha,
        look,
        looks,
        recommend(sweep, thresholds.alpha, sweep.focus) if with_recommendation else None,
        tuple(notes),
        recommend_by_phase(sweep, thresholds.alpha) if with_recommendation else (),
    )


def check(
    sweep: Sweep,
    *,
    min_speedup: float | Mapping[Any, Any] | None = None,
    min_efficiency: float | Mapping[str, Any] | None = None,
    min_utilization: float | Mapping[str, float] | None = None,
    min_machine_utilization: float | None = None,
    min_roofline: float | Mapping[str, float] | None = None,
    alpha: float = DEFAULT_ALPHA,
) -> Verdict:
    """``sweep.check(...)``: thresholds applied to the samples as they are (no more
    are taken), each read as a marker's would be; a bad one raises ``ThresholdError``
    (a ``ValueError``) naming it."""
    given = {
        "min_speedup": min_speedup,
        "min_efficiency": min_efficiency,
        "min_utilization": min_utilization,
        "min_machine_utilization": min_machine_utilization,
        "min_roofline": min_roofline,
    }
    checked = {k: check_threshold(k, v) for k, v in given.items() if v is not None}
    return evaluate(sweep, Thresholds(alpha=check_alpha(alpha), **checked))


def recommend_by_phase(sweep: Sweep, alpha: float = DEFAULT_ALPHA) -> tuple[Recommendation, ...]:
    """The best count for prefill and for the whole request, where they were measured
    and are not the sweep's focus."""
    rates = (GENERATION_RATE.name, PREFILL_RATE.name, REQUEST_SECONDS.name)
    found = (recommend(sweep, alpha, rate) for rate in rates if rate != sweep.focus)
    return tuple(r for r in found if r is not None)


def _with_look(check: Check, look: int) -> Check:
    return replace(check, decided_at_look=look)


def planned_looks(thresholds: Thresholds, rounds: int, max_rounds: int, gated: bool = False) -> int:
    """Looks at the data: the first after ``rounds``, then one per ``rounds`` more;
    one look when nothing can ask for more (no threshold and no ``gated`` baseline)."""
    if not (thresholds.any or gated) or max_rounds <= rounds:
        return 1
    return 1 + math.ceil((max_rounds - rounds) / rounds)


def decide_adaptively(
    sweep: Sweep,
    thresholds: Thresholds,
    rounds: int,
    max_rounds: int,
    take_more: Callable[[dict[int, int]], None],
    wanted: Callable[[Sweep], set[int]] | None = None,
) -> Verdict:
    """Look at ``sweep`` after ``rounds`` samples a thread count; while a check is
    undecided, ask ``take_more({threads: n, ...})`` for up to ``rounds`` more
    samples at the thread counts it reads, until everything is decided or each
    has ``max_rounds``. The looks are planned up front, so the error rate can be
    shared out over them; a check decided at one look stays decided.

    ``wanted(sweep)`` names thread counts something else still needs samples at
    (the baseline gate, ``comparison.Gate``); they join the loop, but spend none
    of the verdicts' alpha. While the loop goes on anyway, the counts the
    recommendation cannot yet tell apart get samples too: they cost one more
    visit each, and may settle which num_thread to recommend.
    """
    looks = planned_looks(thresholds, rounds, max_rounds, gated=wanted is not None)
    verdict = evaluate(sweep, thresholds, 1, looks, with_recommendation=False)
    look = 1

    def undecided_now() -> set[int]:
        found = verdict.undecided_threads(sweep)
        if wanted is not None:
            found |= {t for t in wanted(sweep) if t in sweep and not sweep[t].gave_up}
        return found

    undecided = undecided_now()
    while look < looks and undecided:
        look += 1
        recommendation = recommend(sweep, thresholds.alpha, sweep.focus)
        if recommendation is not None and not recommendation.shown:
            undecided |= {*recommendation.unsettled, recommendation.threads}
        more = {
            count: min(rounds, max_rounds - len(sweep[count].undisturbed))
            for count in sorted(undecided)
            if not sweep[count].gave_up
        }
        more = {count: n for count, n in more.items() if n > 0}
        if more:
            take_more(more)
        verdict = evaluate(
            sweep, thresholds, look, looks, previous=verdict, with_recommendation=False
        )
        undecided = undecided_now()
    return replace(
        verdict,
        recommendation=recommend(sweep, thresholds.alpha, sweep.focus),
        by_phase=recommend_by_phase(sweep, thresholds.alpha),
    )


@dataclass(frozen=True)
class Decision:
    """What a test's verdicts mean for it: ``fail``, ``skip`` or ``pass`` (maybe warned)."""

    outcome: Literal["pass", "fail", "skip"]
    message: str = ""
    warning: str | None = None


def decide_test(
    verdicts: Sequence[Verdict],
    inconclusive: Inconclusive,
    busy: MachineBusy | None = None,
    sweeps: Sequence[Sweep] = (),
) -> Decision:
    """Fold the verdicts of one test's sweeps under the ``--ollama-cpu-inconclusive`` policy.

    A thread count of ``sweeps`` that got no undisturbed sample, and ``busy`` (a
    figure the test body asked of such a count), are inconclusive like a check the
    load left undecided: the test's own assertions on them could not be made, and
    that is said, never blamed on the server.
    """
    failed = [v for v in verdicts if v.failed]
    if failed:
        return Decision("fail", "\n".join(v.message() for v in failed))
    undecided = [v for v in verdicts if v.inconclusive]
    unmeasured = [r for sweep in sweeps for r in sweep if r.busy]
    if not undecided and busy is None and not unmeasured:
        return Decision("pass")
    messages = [v.message() for v in undecided]
    if unmeasured:
        messages.append(
            "no undisturbed sample at "
            + "; ".join(f"{threads_text(r.threads)} ({r.describe_load()})" for r in unmeasured)
            + ": the test's figures there were not measured"
        )
    if busy is not None:
        messages.append(f"the test's own assertions could not run: {busy}")
    reasons = [c.outcome for v in undecided for c in v.inconclusive]
    reasons += ["busy"] if busy is not None or unmeasured else []
    if all(r == "busy" for r in reasons):
        why = "because the machine was busy"
    elif "busy" in reasons:
        why = "because the machine was busy, or undecided after the most rounds allowed"
    else:
        why = "undecided after the most rounds allowed, or not measurable"
    text = f"inconclusive ({why}):\n" + "\n".join(messages)
    if inconclusive == "fail":
        return Decision("fail", text)
    if inconclusive == "skip":
        return Decision("skip", text)
    return Decision("pass", warning=text)
