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

from .machine import auto_thread_counts

MARKER_NAME = "threads"
MARKER_HELP = (
    "threads(*counts, rounds=None): sweep these num_thread values with the ollama_cpu "
    "fixture; counts are ints, ranges or 'auto' (1, 2, 4, ... up to the usable CPUs). "
    "rounds: measured requests per thread count."
)

AUTO: Final = "auto"
ThreadSpec = tuple["int | Literal['auto']", ...]

_KEYWORDS = ("rounds",)


class MarkerError(ValueError):
    """A ``threads`` marker that cannot be used; the message names the bad argument."""


@dataclass(frozen=True)
class ThreadsMarker:
    counts: ThreadSpec
    rounds: int | None = None


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
    rounds = kwargs.get("rounds")
    if rounds is not None and (
        isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1
    ):
        raise MarkerError(f"rounds={rounds!r} must be a whole number of 1 or more")
    return ThreadsMarker(parse_thread_values(args), rounds)


def expand_threads(spec: ThreadSpec, usable: int) -> list[int]:
    """Concrete, sorted, distinct thread counts; ``auto`` follows ``usable``."""
    found: set[int] = set()
    for value in spec:
        if value == AUTO:
            found.update(auto_thread_counts(usable))
        else:
            found.add(int(value))
    return sorted(found)
