"""The ``threads`` marker: which ``num_thread`` values a test sweeps.

``@pytest.mark.threads(1, 2, range(4, 9, 4), "auto", rounds=3)``. Thread counts
are whole numbers of 1 or more, ``range`` objects, or ``"auto"`` (1, 2, 4, ...
up to the usable CPUs, and the usable count itself). The marker is checked at
collection, so a typo fails before any model is loaded; ``"auto"`` is expanded
later, when the server's usable CPUs are known.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from .errors import InputError
from .machine import auto_thread_counts
from .thresholds import THRESHOLD_KEYWORDS, ThresholdError, check_alpha, check_threshold

MARKER_NAME = "threads"

AUTO: Final = "auto"
ThreadSpec = tuple["int | Literal['auto']", ...]

#: the marker's keywords: every threshold (``thresholds.Thresholds``) among them
_KEYWORDS = ("rounds", "max_rounds", *THRESHOLD_KEYWORDS, "alpha")

MARKER_HELP = (
    f"{MARKER_NAME}(*counts, {', '.join(f'{key}=None' for key in _KEYWORDS)}): sweep these "
    "num_thread values with the ollama_cpu fixture; counts are ints, ranges or 'auto' (1, 2, "
    "4, ... up to the usable CPUs). rounds: measured requests per thread count; the min_* "
    "thresholds fail the test when the samples show, at confidence 1 - alpha, that the value "
    "is below them."
)


class MarkerError(InputError):
    """A ``threads`` marker that cannot be used; the message names the bad argument."""


@dataclass(frozen=True)
class ThreadsMarker:
    counts: ThreadSpec
    rounds: int | None = None
    max_rounds: int | None = None
    thresholds: Mapping[str, Any] | None = None
    alpha: float | None = None


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
    try:
        thresholds = {
            key: check_threshold(key, kwargs[key])
            for key in THRESHOLD_KEYWORDS
            if kwargs.get(key) is not None
        }
        alpha = check_alpha(kwargs["alpha"]) if kwargs.get("alpha") is not None else None
    except ThresholdError as exc:
        raise MarkerError(str(exc)) from None
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
