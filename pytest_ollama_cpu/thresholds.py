"""The minimums a test asks for: their names, their checks and their record.

A threshold is given on a ``threads`` marker, by ``Sweep.check`` (verdicts.check)
or on the command line; each is read here, so that a bad value gets the same
message wherever it was written.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import InputError
from .quantities import QUANTITIES, lookup

#: The chance of a false failure each verdict allows by default.
DEFAULT_ALPHA = 0.01

THRESHOLD_KEYWORDS = (
    "min_speedup",
    "min_efficiency",
    "min_utilization",
    "min_machine_utilization",
    "min_roofline",
)


class ThresholdError(InputError):
    """A threshold or alpha that cannot be used; the message names it and says why."""


@dataclass(frozen=True)
class Thresholds:
    """The minimums a test asks for; ``None`` means not checked."""

    #: a minimum for the generation rate's speedup, {threads: minimum}, or either
    #: per rate: {"prompt_tokens_per_second": 1.6, "tokens_per_second": 1.1}
    min_speedup: float | Mapping[Any, Any] | None = None
    min_efficiency: float | Mapping[str, Any] | None = None
    #: a minimum for the whole request, or per phase: {"prefill": 0.8, "generation": 0.8}
    min_utilization: float | Mapping[str, float] | None = None
    min_machine_utilization: float | None = None
    #: the least share of the machine's limit (the roofline) a rate must reach: a
    #: plain one is for the workload's rate, or per phase: {"prefill": 0.3, "generation": 0.5}
    min_roofline: float | Mapping[str, float] | None = None
    alpha: float = DEFAULT_ALPHA

    @property
    def any(self) -> bool:
        return any(
            v is not None
            for v in (
                self.min_speedup,
                self.min_efficiency,
                self.min_utilization,
                self.min_machine_utilization,
                self.min_roofline,
            )
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "min_speedup": _keys_to_text(self.min_speedup),
            "min_efficiency": _keys_to_text(self.min_efficiency),
            "min_utilization": _keys_to_text(self.min_utilization),
            "min_machine_utilization": self.min_machine_utilization,
            "min_roofline": _keys_to_text(self.min_roofline),
            "alpha": self.alpha,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Thresholds:
        return cls(
            min_speedup=_keys_from_text(data.get("min_speedup")),
            min_efficiency=_keys_from_text(data.get("min_efficiency")),
            min_utilization=_keys_from_text(data.get("min_utilization")),
            min_machine_utilization=data.get("min_machine_utilization"),
            min_roofline=_keys_from_text(data.get("min_roofline")),
            alpha=float(data.get("alpha", DEFAULT_ALPHA)),
        )


def _keys_to_text(value: Any) -> Any:
    """JSON keys are text: thread counts become "2", rates stay as they are."""
    if not isinstance(value, Mapping):
        return value
    return {str(k): _keys_to_text(v) for k, v in value.items()}


def _keys_from_text(value: Any) -> Any:
    if not isinstance(value, Mapping):
        return None if value is None else float(value)
    return {int(k) if k.isdigit() else k: _keys_from_text(v) for k, v in value.items()}


def check_threshold(name: str, value: Any) -> Any:
    """A threshold is a number above 0. ``min_speedup`` may map thread counts to one;
    ``min_speedup`` and ``min_efficiency`` may map a phase or rate (``"prefill"``,
    ``"generation"``, ``"ttft"``: see ``quantities.py``) to either form."""
    if name in ("min_speedup", "min_efficiency") and isinstance(value, Mapping):
        if not value:
            raise ThresholdError(
                f"{name}={{}} is empty; give a minimum, {{threads: minimum}} (min_speedup) "
                "or {'prefill': minimum, 'generation': minimum}"
            )
        if all(isinstance(k, str) for k in value):
            return {_rate_name(name, k): _per_count(f"{name}[{k!r}]", v) for k, v in value.items()}
        if name == "min_speedup":
            return _per_count(name, value)
        raise ThresholdError(
            f"{name}={value!r}: the keys of min_efficiency are phases such as 'prefill' or "
            "'generation', not thread counts"
        )
    if name in ("min_utilization", "min_roofline") and isinstance(value, Mapping):
        phases = ("prefill", "generation")
        bad = [k for k in value if k not in phases]
        if not value or bad:
            whole = "the whole request" if name == "min_utilization" else "the workload's rate"
            raise ThresholdError(
                f"{name}={value!r}: give a minimum for {whole}, or one per "
                "phase: {'prefill': 0.5, 'generation': 0.5}"
            )
        return {k: _positive(f"{name}[{k!r}]", v) for k, v in value.items()}
    return _positive(name, value)


def _per_count(name: str, value: Any) -> float | dict[int, float]:
    if not isinstance(value, Mapping):
        return _positive(name, value)
    if not value:
        raise ThresholdError(f"{name}={{}} is empty; give {{threads: minimum, ...}}")
    return {_thread_count(name, t): _positive(f"{name}[{t!r}]", v) for t, v in value.items()}


def _rate_name(name: str, key: str) -> str:
    quantity = lookup(key)
    if quantity is None or not quantity.relative:
        rates = ", ".join(
            repr(q.aliases[0] if q.aliases else q.name) for q in QUANTITIES.values() if q.relative
        )
        raise ThresholdError(
            f"{name}: {key!r} is not a phase or a rate to scale; use one of {rates}"
        )
    return quantity.name


def _positive(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ThresholdError(f"{name}={value!r} must be a number above 0")
    try:
        number = float(value)
    except OverflowError:  # an int beyond any float
        number = math.inf
    if not math.isfinite(number):
        raise ThresholdError(f"{name}={value!r} must be a finite number above 0")
    return number


def check_alpha(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 0.5:
        raise ThresholdError(f"alpha={value!r} must be a number between 0 and 0.5, e.g. 0.01")
    return float(value)


def _thread_count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ThresholdError(
            f"thread count {value!r} (a key of {name}) must be a whole number of 1 or more"
        )
    return value
