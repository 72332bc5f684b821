"""Comparison rules: ``tokens_per_second:5%`` says which change of which quantity is a
regression. Read from the command line, the ini file and the ``compare`` command alike.

``comparison.py`` applies them to two saved runs; they are read here, before any
run, so that a bad rule stops pytest at start-up with the rule's own message.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import InputError
from .quantities import QUANTITIES, Quantity, lookup, names

_RULE = re.compile(r"^\s*([a-z_]+)\s*:\s*([0-9]*\.?[0-9]+)\s*(%?)\s*$")


class RuleError(InputError):
    """A comparison rule that cannot be read; the message shows how to write one."""


@dataclass(frozen=True)
class Rule:
    """Fail when ``quantity`` gets worse by more than ``size`` (a fraction when
    ``relative``): lower for a rate or a utilization, higher for a time.

    Inside, every quantity is compared as "higher is better" (``goodness``): a
    time by its inverse, so one test serves all; ``drop`` is the rule's size on
    that scale (a time 10% higher is an inverse 9.1% lower).
    """

    quantity: str
    size: float
    relative: bool
    text: str

    @property
    def measure(self) -> Quantity:
        return QUANTITIES[self.quantity]

    @property
    def field(self) -> str:
        return self.quantity

    def describe_size(self) -> str:
        return f"{self.size:.0%}" if self.relative else f"{self.size:g}"

    @property
    def no_change(self) -> float:
        """The shift that means "unchanged": a ratio of 1, or a difference of 0."""
        return 1.0 if self.relative else 0.0

    @property
    def drop(self) -> float:
        """The rule's size as a drop of ``goodness``."""
        if self.measure.higher_is_better or not self.relative:
            return self.size
        return self.size / (1 + self.size)

    def shown_size(self, drop: float) -> float:
        """A drop of goodness as a change of the quantity for the worse."""
        if self.measure.higher_is_better or not self.relative:
            return drop
        return drop / (1 - drop) if drop < 1 else math.inf

    def goodness(self, values: Sequence[float]) -> list[float]:
        """``values`` on a higher-is-better scale: a time's inverse (relative) or
        its negative (absolute); rates and utilizations as they are."""
        if self.measure.higher_is_better:
            return list(values)
        if self.relative:
            return [1 / v if v > 0 else math.nan for v in values]
        return [-v for v in values]

    def shown(self, goodness: float) -> float:
        """A shift of goodness as the quantity's own: now / baseline, or now - baseline."""
        if self.measure.higher_is_better:
            return goodness
        if self.relative:
            return 1 / goodness if goodness > 0 else math.inf
        return -goodness


#: Shown when no rule is given: throughput is compared, and nothing can fail.
NO_RULE = Rule("tokens_per_second", 0.0, True, "tokens_per_second (no rule)")


def parse_rule(text: str) -> Rule:
    """``tokens_per_second:5%`` (relative), ``utilization:0.1`` (absolute), ``ttft:10%``."""
    match = _RULE.match(text.lower())
    if not match:
        raise RuleError(
            f"{text!r} is not a rule: write QUANTITY:SIZE, e.g. tokens_per_second:5% "
            f"(a relative change for the worse) or utilization:0.1 (an absolute one); "
            f"quantities: {names()}"
        )
    name, number, percent = match.groups()
    measure = lookup(name)
    if measure is None:
        raise RuleError(f"{text!r}: unknown quantity {name!r}; use one of {names()}")
    size = float(number) / 100 if percent else float(number)
    if percent and not 0 < size < 1:
        raise RuleError(f"{text!r}: a relative change must be between 0% and 100%")
    if size <= 0:
        raise RuleError(f"{text!r}: the change must be above 0")
    return Rule(measure.name, size, bool(percent), text.strip())
