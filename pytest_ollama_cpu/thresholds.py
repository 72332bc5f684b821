"""The minimums a test asks for: their names, their checks and their record.

A threshold is given on a ``threads`` marker, by ``sweep.check`` (``verdicts.check``)
or on the command line; each is read here, so that a bad value gets the same
message wherever it was written.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal, get_args

from .errors import InputError
from .quantities import QUANTITIES, lookup

#: The chance of a false failure each verdict allows by default.
DEFAULT_ALPHA = 0.01

#: What a test no threshold could decide becomes (``--ollama-cpu-inconclusive``).
Inconclusive = Literal["pass", "fail", "skip"]
INCONCLUSIVE_POLICIES: tuple[Inconclusive, ...] = get_args(Inconclusive)


class ThresholdError(InputError):
    """A threshold or alpha that cannot be used; the message names it and says why."""


@dataclass(frozen=True)
class ThresholdSpec:
    """What a threshold means and how it may be written: the metadata of its
    ``Thresholds`` field, from which the marker's keywords, the options (flag, ini
    key), their help and their messages, and the record are all derived."""

    #: what it checks: the option's help
    help: str
    #: a good value, for the message about a bad one
    example: str
    #: may map thread counts to minimums: {2: 1.5, 4: 2.5}
    per_count: bool = False
    #: may map rates or phases (any scalable quantity, ``quantities.py``) to minimums,
    #: each of which may map thread counts when ``per_count``
    per_rate: bool = False
    #: may map "prefill" and "generation" to minimums; says what a plain one is for
    per_phase: str | None = None

    @property
    def takes_mapping(self) -> bool:
        return self.per_count or self.per_rate or self.per_phase is not None


def _threshold(spec: ThresholdSpec) -> Any:
    """A ``Thresholds`` field: not checked (None) unless given."""
    return field(default=None, metadata={ThresholdSpec: spec})


@dataclass(frozen=True)
class Thresholds:
    """The minimums a test asks for; ``None`` means not checked. Each field made with
    ``_threshold`` is a threshold; adding one here adds its marker keyword, options
    and record (its check is planned in ``verdicts.plan_checks``)."""

    #: a minimum for the generation rate's speedup, {threads: minimum}, or either
    #: per rate: {"prompt_tokens_per_second": 1.6, "tokens_per_second": 1.1}
    min_speedup: float | Mapping[Any, Any] | None = _threshold(
        ThresholdSpec(
            "Fail when the largest thread count's speedup over the smallest is shown to be "
            "below this.",
            "1.5",
            per_count=True,
            per_rate=True,
        )
    )
    min_efficiency: float | Mapping[str, Any] | None = _threshold(
        ThresholdSpec(
            "Fail when a thread count's efficiency (speedup / thread ratio) is shown to be "
            "below this.",
            "0.7",
            per_rate=True,
        )
    )
    #: a minimum for the whole request, or per phase: {"prefill": 0.8, "generation": 0.8}
    min_utilization: float | Mapping[str, float] | None = _threshold(
        ThresholdSpec(
            "Fail when a thread count's thread utilization (cores busy / threads) is shown "
            "to be below this.",
            "0.8",
            per_phase="the whole request",
        )
    )
    min_machine_utilization: float | None = _threshold(
        ThresholdSpec(
            "Fail when the largest thread count's machine utilization (cores busy / usable "
            "CPUs) is shown to be below this.",
            "0.5",
        )
    )
    #: the least share of the machine's limit (the roofline) a rate must reach: a
    #: plain one is for the workload's rate, or per phase: {"prefill": 0.3, "generation": 0.5}
    min_roofline: float | Mapping[str, float] | None = _threshold(
        ThresholdSpec(
            "Fail when a thread count's rate is shown to reach less than this share of the "
            "machine's limit: generation against memory bandwidth, prefill (for a prefill "
            "workload) against arithmetic peak, e.g. 0.5.",
            "0.5",
            per_phase="the workload's rate",
        )
    )
    alpha: float = DEFAULT_ALPHA

    @property
    def any(self) -> bool:
        return any(getattr(self, name) is not None for name in THRESHOLD_KEYWORDS)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _keys_to_text(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Thresholds:
        return cls(
            alpha=float(data.get("alpha", DEFAULT_ALPHA)),
            **{
                name: _keys_from_text(data.get(name)) if spec.takes_mapping else data.get(name)
                for name, spec in THRESHOLDS.items()
            },
        )


#: Every threshold by its name (a ``Thresholds`` field), in the fields' order.
THRESHOLDS: dict[str, ThresholdSpec] = {
    f.name: f.metadata[ThresholdSpec] for f in fields(Thresholds) if ThresholdSpec in f.metadata
}
THRESHOLD_KEYWORDS = tuple(THRESHOLDS)


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
    """A threshold is a number above 0, or a mapping where its ``ThresholdSpec`` allows:
    thread counts to numbers (``per_count``); phases or rates (``"prefill"``,
    ``"generation"``, ``"ttft"``: see ``quantities.py``) to either form (``per_rate``);
    ``"prefill"`` and ``"generation"`` to numbers (``per_phase``)."""
    spec = THRESHOLDS[name]
    if not isinstance(value, Mapping) or not spec.takes_mapping:
        return _positive(name, value)
    if spec.per_rate:
        if not value:
            raise ThresholdError(
                f"{name}={{}} is empty; give a minimum, {{threads: minimum}} (min_speedup) "
                "or {'prefill': minimum, 'generation': minimum}"
            )
        if all(isinstance(k, str) for k in value):
            return {_rate_name(name, k): _per_count(f"{name}[{k!r}]", v) for k, v in value.items()}
    if spec.per_count:
        return _per_count(name, value)
    if spec.per_rate:
        raise ThresholdError(
            f"{name}={value!r}: the keys of {name} are phases such as 'prefill' or "
            "'generation', not thread counts"
        )
    phases = ("prefill", "generation")
    bad = [k for k in value if k not in phases]
    if not value or bad:
        raise ThresholdError(
            f"{name}={value!r}: give a minimum for {spec.per_phase}, or one per "
            "phase: {'prefill': 0.5, 'generation': 0.5}"
        )
    return {k: _positive(f"{name}[{k!r}]", v) for k, v in value.items()}


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
