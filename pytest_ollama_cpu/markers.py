"""The ``threads`` marker: which ``num_thread`` values a test sweeps.

``@pytest.mark.threads(1, 2, range(4, 9, 4), "auto", rounds=3)``. Thread counts
are whole numbers of 1 or more, ``range`` objects, or ``"auto"`` (1, 2, 4, ...
up to the usable CPUs, and the usable count itself). The marker is checked at
collection, so a typo fails before any model is loaded; ``"auto"`` is expanded
later, when the server's usable CPUs are known.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from .machine import auto_thread_counts
from .quantities import QUANTITIES, lookup

MARKER_NAME = "threads"
MARKER_HELP = (
    "threads(*counts, rounds=None, max_rounds=None, min_speedup=None, min_efficiency=None, "
    "min_utilization=None, min_machine_utilization=None, min_roofline=None, alpha=None): sweep "
    "these num_thread "
    "values with the ollama_cpu fixture; counts are ints, ranges or 'auto' (1, 2, 4, ... up to "
    "the usable CPUs). rounds: measured requests per thread count; the min_* thresholds fail "
    "the test when the samples show, at confidence 1 - alpha, that the value is below them."
)

AUTO: Final = "auto"
ThreadSpec = tuple["int | Literal['auto']", ...]

THRESHOLD_KEYWORDS = (
    "min_speedup",
    "min_efficiency",
    "min_utilization",
    "min_machine_utilization",
    "min_roofline",
)
_KEYWORDS = ("rounds", "max_rounds", *THRESHOLD_KEYWORDS, "alpha")


class MarkerError(ValueError):
    """A ``threads`` marker that cannot be used; the message names the bad argument."""


@dataclass(frozen=True)
class ThreadsMarker:
    counts: ThreadSpec
    rounds: int | None = None
    max_rounds: int | None = None
    thresholds: Mapping[str, Any] | None = None
    alpha: float | None = None


def check_threshold(name: str, value: Any) -> Any:
    """A threshold is a number above 0. ``min_speedup`` may map thread counts to one;
    ``min_speedup`` and ``min_efficiency`` may map a phase or rate (``"prefill"``,
    ``"generation"``, ``"ttft"``: see ``quantities.py``) to either form."""
    if name in ("min_speedup", "min_efficiency") and isinstance(value, Mapping):
        if not value:
            raise MarkerError(
                f"{name}={{}} is empty; give a minimum, {{threads: minimum}} (min_speedup) "
                "or {'prefill': minimum, 'generation': minimum}"
            )
        if all(isinstance(k, str) for k in value):
            return {_rate_name(name, k): _per_count(f"{name}[{k!r}]", v) for k, v in value.items()}
        if name == "min_speedup":
            return _per_count(name, value)
        raise MarkerError(
            f"{name}={value!r}: the keys of min_efficiency are phases such as 'prefill' or "
            "'generation', not thread counts"
        )
    if name in ("min_utilization", "min_roofline") and isinstance(value, Mapping):
        phases = ("prefill", "generation")
        bad = [k for k in value if k not in phases]
        if not value or bad:
            whole = "the whole request" if name == "min_utilization" else "the workload's rate"
            raise MarkerError(
                f"{name}={value!r}: give a minimum for {whole}, or one per "
                "phase: {'prefill': 0.5, 'generation': 0.5}"
            )
        return {k: _positive(f"{name}[{k!r}]", v) for k, v in value.items()}
    return _positive(name, value)


def _per_count(name: str, value: Any) -> float | dict[int, float]:
    if not isinstance(value, Mapping):
        return _positive(name, value)
    if not value:
        raise MarkerError(f"{name}={{}} is empty; give {{threads: minimum, ...}}")
    return {
        _check_count(t, f"{t!r} (a key of {name})"): _positive(f"{name}[{t!r}]", v)
        for t, v in value.items()
    }


def _rate_name(name: str, key: str) -> str:
    quantity = lookup(key)
    if quantity is None or not quantity.relative:
        rates = ", ".join(
            repr(q.aliases[0] if q.aliases else q.name) for q in QUANTITIES.values() if q.relative
        )
        raise MarkerError(f"{name}: {key!r} is not a phase or a rate to scale; use one of {rates}")
    return quantity.name


def _positive(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise MarkerError(f"{name}={value!r} must be a number above 0")
    try:
        number = float(value)
    except OverflowError:  # an int beyond any float
        number = math.inf
    if not math.isfinite(number):
        raise MarkerError(f"{name}={value!r} must be a finite number above 0")
    return number


def check_alpha(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 0.5:
        raise MarkerError(f"alpha={value!r} must be a number between 0 and 0.5, e.g. 0.01")
    return float(value)


def _check_count(value: Any, shown: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise MarkerError(
            f"thread count {shown} is not a whole number; use ints, a range or 'auto'"
        )
    if value < 1:
        raise MarkerError(f"thread count {shown} must be 1 or more")
    return value


def parse_thread_values(values: Iterable[Any]) -> ThreadSpec:
    counts: list[int | Literal["auto"]] = []
    for value in values:
        if isinstance(value, str) and value.strip().lower() == AUTO:
            counts.append(AUTO)
        elif isinstance(value, range):
            if len(value) == 0:
                raise MarkerError(f"{value!r} is empty")
            counts.extend(_check_count(v, f"{v} (in {value!r})") for v in value)
        else:
            counts.append(_check_count(value, repr(value)))
    if not counts:
        raise MarkerError("no thread counts given; e.g. threads(1, 2) or threads('auto')")
    return tuple(counts)


def parse_thread_list(text: str) -> ThreadSpec:
    """Parse the option form: ``auto`` or ``1,2,4``."""
    values: list[Any] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if part.lower() == AUTO:
            values.append(AUTO)
            continue
        try:
            values.append(int(part))
        except ValueError:
            raise ValueError(
                f"{part!r} is not a whole number; use 'auto' or a list such as 1,2,4"
            ) from None
    try:
        return parse_thread_values(values)
    except MarkerError as exc:
        raise ValueError(str(exc)) from None


def parse_marker(args: Sequence[Any], kwargs: Mapping[str, Any]) -> ThreadsMarker:
    unknown = sorted(set(kwargs) - set(_KEYWORDS))
    if unknown:
        raise MarkerError(
            f"unknown keyword {', '.join(unknown)}; the threads marker takes {', '.join(_KEYWORDS)}"
        )
    for key in ("rounds", "max_rounds"):
        value = kwargs.get(key)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            raise MarkerError(f"{key}={value!r} must be a whole number of 1 or more")
    thresholds = {
        key: check_threshold(key, kwargs[key])
        for key in THRESHOLD_KEYWORDS
        if kwargs.get(key) is not None
    }
    alpha = check_alpha(kwargs["alpha"]) if kwargs.get("alpha") is not None else None
    return ThreadsMarker(
        parse_thread_values(args),
        kwargs.get("rounds"),
        kwargs.get("max_rounds"),
        thresholds or None,
        alpha,
    )


def expand_threads(spec: ThreadSpec, usable: int) -> list[int]:
    """Concrete, sorted, distinct thread counts; ``auto`` follows ``usable``."""
    found: set[int] = set()
    for value in spec:
        if value == AUTO:
            found.update(auto_thread_counts(usable))
        else:
            found.add(int(value))
    return sorted(found)


def parse_cpu_list(text: str) -> tuple[int, ...]:
    """``"0-3,8"`` -> ``(0, 1, 2, 3, 8)``, as taskset -c and llama-bench's masks read."""
    cpus: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        low, _, high = part.partition("-")
        try:
            first = int(low)
            last = int(high) if high else first
        except ValueError:
            raise ValueError(f"{part!r} is not a CPU number or range; write e.g. 0-3,8") from None
        if first < 0 or last < first:
            raise ValueError(f"{part!r} is not a CPU range from low to high, e.g. 0-3")
        cpus.update(range(first, last + 1))
    if not cpus:
        raise ValueError("no CPUs given; write e.g. 0-3,8")
    return tuple(sorted(cpus))


def format_cpu_list(cpus: Iterable[int]) -> str:
    """``(0, 1, 2, 3, 8)`` -> ``"0-3,8"``: the inverse of ``parse_cpu_list``."""
    parts: list[str] = []
    ordered = sorted(set(cpus))
    start = 0
    for i in range(1, len(ordered) + 1):
        if i == len(ordered) or ordered[i] != ordered[i - 1] + 1:
            first, last = ordered[start], ordered[i - 1]
            parts.append(str(first) if first == last else f"{first}-{last}")
            start = i
    return ",".join(parts)
