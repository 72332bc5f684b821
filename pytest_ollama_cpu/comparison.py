"""Comparing two saved runs: which rows got significantly worse, by how much.

Pure functions over two documents in the saved layout (``saved_runs.py``), so the
plugin (this run against a baseline) and the ``compare`` command (two files)
share every line. A rule such as ``tokens_per_second:5%`` fails a row only when
the samples show, at confidence 1 - alpha, that the drop is larger than 5%;
alpha is shared over all rows and rules (Bonferroni).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .disturbance import describe_load
from .rules import NO_RULE, Rule, parse_rule
from .saved_runs import EXTRA_KEY, SavedRun
from .statistics import (
    Difference,
    Shift,
    absolute_shift,
    detectable_drop,
    geometric_mean,
    mean,
    relative_shift,
    spread_upper_factor,
    stdev,
)


@dataclass(frozen=True)
class Row:
    """One entry (test, model, thread count) under one rule."""

    fullname: str
    test: str
    threads: int
    rule: Rule
    baseline: float | None
    now: float | None
    shift: Shift | None
    regression: bool
    #: why the row could not be compared because a machine was busy, if it was
    busy: str | None = None
    #: the one-sided significance this row was tested at, and how many rows and rules
    #: shared the run's alpha (Bonferroni)
    alpha: float = 0.01
    tests: int = 1
    #: undisturbed samples the test read: (baseline, now)
    samples: tuple[int, int] = (0, 0)
    #: the generation rate's mean share of the memory roofline: (baseline, now); None
    #: where a run probed no limits
    roofline: tuple[float | None, float | None] = (None, None)

    @property
    def p_adjusted(self) -> float | None:
        """The p-value the decision used, adjusted for the rows and rules compared: the row
        is a regression when it is below the run's alpha."""
        if self.shift is None:
            return None
        return min(1.0, self.shift.p_value * self.tests)

    @property
    def detectable(self) -> float | None:
        """The drop this row would have caught 9 times in 10 (a fraction for a % rule)."""
        if self.shift is None or self.rule.size == 0:
            return None
        drop = detectable_drop(self.shift, self.rule.drop, self.alpha, self.rule.relative)
        return self.rule.shown_size(drop)

    @property
    def detectable_text(self) -> str:
        drop = self.detectable
        if drop is None:
            return "-"
        if self.rule.relative:
            return f"{drop:.0%}" if drop < 1 else ">99%"
        return f"{drop:.{self._digits}f}"

    @property
    def change(self) -> str:
        if self.shift is None:
            return "-"
        estimate = self.rule.shown(self.shift.estimate)
        if self.rule.relative:
            return f"{_unsigned_zero(estimate - 1, 3):+.1%}"
        return f"{_unsigned_zero(estimate, self._digits):+.{self._digits}f}"

    @property
    def _digits(self) -> int:
        return self.rule.measure.digits

    @property
    def _shown_bounds(self) -> tuple[float, float]:
        assert self.shift is not None
        low, high = sorted((self.rule.shown(self.shift.low), self.rule.shown(self.shift.high)))
        return low, high

    @property
    def interval(self) -> str:
        if self.shift is None:
            return "-"
        low, high = self._shown_bounds
        if self.rule.relative:
            low, high = _unsigned_zero(low - 1, 3), _unsigned_zero(high - 1, 3)
            return f"{low:+.1%} to {high:+.1%}"
        low, high = _unsigned_zero(low, self._digits), _unsigned_zero(high, self._digits)
        return f"{low:+.{self._digits}f} to {high:+.{self._digits}f}"

    @property
    def undecided(self) -> bool:
        """Passed, but only because the samples are too few or too noisy to show a
        drop of the rule's size: the gate could not have caught one."""
        if self.shift is None or self.regression or self.rule.size == 0:
            return False
        return self.shift.low < self.rule.no_change - self.rule.drop

    @property
    def verdict(self) -> str:
        if self.busy is not None:
            return "busy: not compared"
        if self.shift is None:
            return "not compared"
        if self.regression:
            way = "worse" if self.rule.measure.higher_is_better else "higher"
            return f"REGRESSION (> {self.rule.describe_size()} {way})"
        if self.shift.low > self.rule.no_change:
            return "better"
        if self.rule.size == 0:  # no rule given: the table informs, nothing is judged
            return "worse" if self.shift.high < self.rule.no_change else "no change shown"
        if self.undecided:
            change = "drop" if self.rule.measure.higher_is_better else "rise"
            return f"ok? a {self.rule.describe_size()} {change} not ruled out"
        return "ok"

    def to_dict(self) -> dict[str, Any]:
        return {
            "fullname": self.fullname,
            "test": self.test,
            "threads": self.threads,
            "rule": self.rule.text,
            "baseline": self.baseline,
            "now": self.now,
            # in the quantity's own terms (a time's ratio, not its inverse's)
            "change": None if self.shift is None else self.rule.shown(self.shift.estimate),
            "low": None if self.shift is None else self._shown_bounds[0],
            "high": None if self.shift is None else self._shown_bounds[1],
            "p_value": None if self.shift is None else self.shift.p_value,
            "p_adjusted": self.p_adjusted,
            "detectable": self.detectable,
            "regression": self.regression,
            "undecided": self.undecided,
            "busy": self.busy,
            "samples": {"baseline": self.samples[0], "now": self.samples[1]},
            "verdict": self.verdict,
        }


@dataclass(frozen=True)
class Comparison:
    baseline: str
    new: str
    alpha: float
    rows: tuple[Row, ...]
    only_in_baseline: tuple[str, ...] = ()
    only_in_new: tuple[str, ...] = ()
    differences: tuple[str, ...] = field(default_factory=tuple)
    rules: tuple[Rule, ...] = ()

    @property
    def regressions(self) -> tuple[Row, ...]:
        return tuple(r for r in self.rows if r.regression)

    @property
    def undecided(self) -> tuple[Row, ...]:
        return tuple(r for r in self.rows if r.undecided)

    @property
    def not_compared(self) -> tuple[Row, ...]:
        """Rows without a test: fewer than two usable samples on a side (not for load)."""
        return tuple(r for r in self.rows if r.shift is None and r.busy is None)

    @property
    def busy(self) -> tuple[Row, ...]:
        """Rows left undecided because a machine was busy: never regressions."""
        return tuple(r for r in self.rows if r.busy is not None)

    @property
    def gating(self) -> bool:
        """Whether any rule was given, i.e. whether a row can fail."""
        return bool(self.rules)

    def to_dict(self) -> dict[str, Any]:
        return {
            "baseline": self.baseline,
            "new": self.new,
            "alpha": self.alpha,
            "rows": [r.to_dict() for r in self.rows],
            "regressions": [r.fullname + " " + r.rule.text for r in self.regressions],
            "only_in_baseline": list(self.only_in_baseline),
            "only_in_new": list(self.only_in_new),
            "machine_differences": list(self.differences),
            "rules": [r.text for r in self.rules],
            "undecided": [r.fullname + " " + r.rule.text for r in self.undecided],
            "not_compared": [r.fullname + " " + r.rule.text for r in self.not_compared],
            "busy": [r.fullname + " " + r.rule.text for r in self.busy],
        }


def _unsigned_zero(value: float, digits: int) -> float:
    """``-0.0001`` shown with 3 digits is ``+0.000``, not ``-0.000``."""
    return round(value, digits) + 0.0


def _samples(entry: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return list(entry["extra_info"][EXTRA_KEY]["samples"])


def _values(entry: Mapping[str, Any], field_name: str) -> list[float]:
    """The undisturbed samples' values: those taken under load are set aside (files
    saved before samples were flagged count as undisturbed)."""
    return _field(undisturbed(entry), field_name)


def undisturbed(entry: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The samples of a saved entry that no other process disturbed (files saved
    before samples were flagged count as undisturbed)."""
    return [s for s in _samples(entry) if not s.get("disturbed")]


#: the share of the machine's limit each compared row shows beside its rule
ROOFLINE_FIELD = "generation_roofline"


def _mean_of(entry: Mapping[str, Any], field_name: str) -> float | None:
    values = _values(entry, field_name)
    return mean(values) if values else None


def _field(samples: Sequence[Mapping[str, Any]], field_name: str) -> list[float]:
    return [float(s[field_name]) for s in samples if s.get(field_name) is not None]


def rule_shift(
    rule: Rule, now: Sequence[float], before: Sequence[float], alpha: float
) -> Shift | None:
    """The test of ``rule`` on two sides' values at one-sided ``alpha``: a ratio for a
    relative rule, a difference for an absolute one; ``None`` where it cannot run."""
    if rule.relative:
        return relative_shift(now, before, rule.drop, alpha)
    return absolute_shift(now, before, rule.drop, alpha)


def busy_reason(entry: Mapping[str, Any], side: str) -> str | None:
    """Why ``entry`` has too few undisturbed samples to compare, if load is the reason."""
    samples = _samples(entry)
    aside = [s for s in samples if s.get("disturbed")]
    if not aside or len(samples) - len(aside) >= 2:
        return None
    loads = sorted(float(s["other_cores_busy"]) for s in aside if s.get("other_cores_busy"))
    cpus = next((s.get("server_cpus") for s in aside if s.get("server_cpus")), None)
    load = (
        describe_load(loads[len(loads) // 2], int(cpus))
        if loads and cpus
        else "other processes took CPU the server needed"
    )
    return f"{side}: {load}; {len(aside)} of {len(samples)} samples set aside"


def machine_differences(old: SavedRun, new: SavedRun) -> list[str]:
    """What differs between the machines, servers and models of two runs."""

    def facts(run: SavedRun) -> dict[str, Any]:
        ours = run.document["machine_info"].get(EXTRA_KEY) or {}
        machine = ours.get("machine") or {}
        server = ours.get("server") or {}
        return {
            "CPU": machine.get("cpu_model"),
            "usable CPUs": machine.get("usable_cpus"),
            "Ollama version": server.get("version"),
        }

    found = []
    a, b = facts(old), facts(new)
    for key in a:
        if a[key] is not None and b[key] is not None and a[key] != b[key]:
            found.append(f"{key}: {a[key]} in the baseline, {b[key]} now")
    digests_old = {
        e["extra_info"][EXTRA_KEY]["model"].get("name"): e["extra_info"][EXTRA_KEY]["model"].get(
            "digest"
        )
        for e in old.document["benchmarks"]
    }
    for entry in new.document["benchmarks"]:
        model = entry["extra_info"][EXTRA_KEY]["model"]
        before = digests_old.get(model.get("name"))
        if before and model.get("digest") and before != model.get("digest"):
            found.append(
                f"model {model['name']}: digest {before[:12]} in the baseline, "
                f"{model['digest'][:12]} now"
            )
            digests_old[model.get("name")] = model.get("digest")  # say it once
    return found


def compare(old: SavedRun, new: SavedRun, rules: Sequence[Rule], alpha: float) -> Comparison:
    old_entries, new_entries = old.entries, new.entries
    common = [name for name in new_entries if name in old_entries]
    # without rules the table still shows throughput, and nothing can fail
    shown = list(rules) or [NO_RULE]
    per_test = alpha / max(1, len(common) * len(shown))
    rows: list[Row] = []
    for name in common:
        before, after = old_entries[name], new_entries[name]
        extra = after["extra_info"][EXTRA_KEY]
        reasons = [busy_reason(before, "baseline"), busy_reason(after, "now")]
        busy = "; ".join(r for r in reasons if r) or None
        for rule in shown:
            a, b = _values(after, rule.field), _values(before, rule.field)
            if busy is not None:
                a = b = []  # never judged on samples taken under load
            shift = rule_shift(rule, rule.goodness(a), rule.goodness(b), per_test)
            regression = shift is not None and shift.high < rule.no_change - rule.drop
            rows.append(
                Row(
                    name,
                    extra["test"],
                    int(extra["threads"]),
                    rule,
                    # the figures the change is computed from: now / baseline for a
                    # relative rule (geometric means), now - baseline for an absolute one
                    geometric_mean(b) if rule.relative else mean(b),
                    geometric_mean(a) if rule.relative else mean(a),
                    shift,
                    regression and bool(rules),
                    busy,
                    per_test,
                    max(1, len(common) * len(shown)),
                    (len(b), len(a)),
                    (_mean_of(before, ROOFLINE_FIELD), _mean_of(after, ROOFLINE_FIELD)),
                )
            )
    return Comparison(
        old.label,
        new.label,
        alpha,
        tuple(rows),
        tuple(n for n in old_entries if n not in new_entries),
        tuple(n for n in new_entries if n not in old_entries),
        tuple(machine_differences(old, new)),
        tuple(rules),
    )


# -- the gate while a run measures ----------------------------------------------
#
# Each row of a run that is compared or saved gets the samples its comparison
# needs to catch a drop of twice its rule's size 9 times in 10, planned from
# the baseline's spread: samples measured before, in another run. A run saved
# with no baseline entry to plan from takes the most rounds allowed. Never is a
# row sized from its own samples: a run that stopped when its own samples
# looked good enough would keep samples that flatter their precision, and runs
# compared with it would be flagged too often (tests/test_gate.py measures it).

#: The rule a saved run is made precise enough for when no rule is given.
GATE_RULE = "tokens_per_second:5%"

#: A row gets enough samples to catch a drop this many times its rule's size
#: with probability ``POWER``.
PRECISION_FACTOR = 2.0
POWER = 0.9


@dataclass(frozen=True)
class Gate:
    """The rules a run is gated on, and the one-sided alpha each row will be tested at."""

    rules: tuple[Rule, ...]
    alpha: float

    @classmethod
    def planned(cls, rules: Sequence[Rule], alpha: float, rows: int) -> Gate:
        """``rows``: the rows the run's alpha will be shared over (an estimate made
        before the run: it sets how many samples are taken, never an error rate)."""
        chosen = tuple(rules) or (parse_rule(GATE_RULE),)
        return cls(chosen, alpha / max(1, rows * len(chosen)))

    def samples_needed(self, baseline: Sequence[Mapping[str, Any]], most: int) -> int:
        """Samples this run needs at a row so that its comparison with ``baseline``
        (that row's samples) catches a drop of ``PRECISION_FACTOR`` times a rule's
        size with probability ``POWER``, if this run is as noisy as the baseline (its
        spread taken at the upper 90% confidence bound). ``most`` where even that many
        would not; 0 where the baseline has fewer than two values."""
        needed = 0
        for rule in self.rules:
            values = rule.goodness(_field(baseline, rule.field))
            sd = stdev(values, log=rule.relative)
            if sd is None:
                continue
            sd *= spread_upper_factor(len(values))
            other = len(values)
            for n in range(2, most + 1):
                error = Difference(
                    0.0,
                    sd * math.sqrt(1 / other + 1 / n),
                    other / (n + other),
                    float(n - 1),
                    float(other - 1),
                )
                shift = Shift(0.0, 0.0, 0.0, 1.0, error)
                if detectable_drop(shift, rule.drop, self.alpha, rule.relative, POWER) <= (
                    PRECISION_FACTOR * rule.drop
                ):
                    needed = max(needed, n)
                    break
            else:
                needed = most
        return needed

    def baseline_samples(self, before: Mapping[str, Any]) -> list[Mapping[str, Any]]:
        """The samples of a baseline entry a comparison reads; none from a busy one."""
        if busy_reason(before, "baseline") is not None:
            return []
        return undisturbed(before)
