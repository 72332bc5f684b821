"""Live progress while a sweep runs: what it is at, as data, and how it is shown.

A sweep takes minutes and pytest prints nothing of a test until it ends, so the
sampler tells where it is (``Progress``: the test, the thread count, the round
and the rounds planned, the phase, the last rates) and ``ProgressDisplay``
writes it. The sampler knows nothing of terminals and this module nothing of
pytest: the plugin hands the display pytest's terminal writer, and under
pytest-xdist ``xdist.py`` carries the events from the workers.

How it is shown, and why:

- In a terminal, one line rewritten in place (``\\r``, padded over the previous
  text, cut to the terminal's width so that it never wraps). It begins on a line
  of its own: pytest has already started the test's line (``test_x.py ..`` or,
  with ``-v``, ``test_x.py::test_y``), and a line cannot be rewritten without
  wiping that. It ends with a newline before pytest writes the test's outcome,
  as pytest's own live logging does, so the last state stays on screen and
  pytest's output goes on whole below it.
- Elsewhere (a CI log, a pipe), a ``\\r`` would pile every state onto one line
  of the log: each event is a line of its own. They are a few a second at most,
  so nothing is throttled.
- Under ``-q``, nothing.
- For an xdist controller, whole lines with the worker's id in front
  (``[gw0] ollama-cpu: ...``), also in a terminal: several workers may be
  measuring at once, and one line could show only one of them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal, Protocol, get_args

#: What a sweep is doing: a warm-up request (the runner loads the thread count),
#: a measured round, waiting for other processes to leave the server's CPUs, or
#: probing the machine's memory and compute limits for the roofline.
Phase = Literal["warm-up", "round", "waiting for quiet", "probing limits"]
PHASES: tuple[Phase, ...] = get_args(Phase)

#: In front of every line, as in the report header and the summary.
PREFIX = "ollama-cpu: "


@dataclass(frozen=True)
class Progress:
    """Where a sweep is: ``round`` of ``rounds`` planned at ``threads`` threads.

    ``rounds`` counts the rounds this thread count has had and will have in the
    sweep: it grows when a disturbed sample is retaken or a verdict asks for
    more. The rates are those of the last sample at this thread count (the
    warm-up's included), in tokens per second: what the count gives so far.
    ``prefill_rate`` is None where the prompt cache serves the prompt, which then
    measures nothing.
    """

    phase: Phase
    threads: int
    test: str = ""
    round: int = 0
    rounds: int = 0
    generation_rate: float | None = None
    prefill_rate: float | None = None

    def describe(self, short: bool = False) -> str:
        """``test_x.py::test_y  2 threads  round 3/5  65.4 tokens/s (prefill 409 tok/s)``;
        ``short``: the test by its name alone (``test_y``), for a narrow terminal."""
        test = self.test.rpartition("::")[2] if short else self.test
        parts = [test] if test else []
        parts.append(f"{self.threads} thread{'s' * (self.threads != 1)}")
        if self.phase == "round":
            parts.append(f"round {self.round}/{self.rounds}")
        elif self.phase == "waiting for quiet":
            parts.append("waiting for the CPUs to be quiet")
        elif self.phase == "probing limits":
            parts.append("probing the machine's limits")
        else:
            parts.append(self.phase)
        if self.generation_rate is not None:
            rate = f"{self.generation_rate:.1f} tokens/s"
            if self.prefill_rate is not None:
                rate += f" (prefill {self.prefill_rate:.0f} tok/s)"
            parts.append(rate)
        return "  ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Progress:
        """Read what ``to_dict`` wrote (a worker's event); ValueError if it is not that."""
        phase = data.get("phase")
        if phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r}")

        def rate(name: str) -> float | None:
            value = data.get(name)
            return None if value is None else float(value)

        return cls(
            phase=phase,
            threads=int(data["threads"]),
            test=str(data.get("test", "")),
            round=int(data.get("round", 0)),
            rounds=int(data.get("rounds", 0)),
            generation_rate=rate("generation_rate"),
            prefill_rate=rate("prefill_rate"),
        )


class Writer(Protocol):
    """A text stream, or pytest's terminal writer (whose width count then stays right)."""

    def write(self, text: str, /) -> object: ...

    def flush(self) -> object: ...


def _eighty() -> int:
    return 80


def _at_line_start() -> int:
    return 0


class ProgressDisplay:
    """Shows ``Progress`` events on ``out``; see the module's docstring for how.

    ``verbosity``: pytest's (below 0, ``-q``: nothing is shown). ``tty``: one
    line rewritten in place, else a line per event. ``width``: the terminal's
    columns, read at each event (a window can be resized). ``column``: where
    the cursor is on the current line, as left by whoever else writes to
    ``out`` (pytest's terminal writer counts it): a progress line never starts
    in the middle of another. Not thread-safe: a caller with several threads
    holds a lock around ``show`` (``xdist.ProgressRelay``).
    """

    def __init__(
        self,
        out: Writer,
        *,
        verbosity: int,
        tty: bool,
        width: Callable[[], int] = _eighty,
        column: Callable[[], int] = _at_line_start,
    ) -> None:
        self._out = out
        self._verbosity = verbosity
        self._tty = tty
        self._width = width
        self._column = column
        #: the width of the line being rewritten, None when none is
        self._open: int | None = None

    @property
    def silent(self) -> bool:
        return self._verbosity < 0

    def show(self, event: Progress, worker: str | None = None) -> None:
        """Show ``event``; ``worker``: the xdist worker that measured it (``gw0``)."""
        if self.silent:
            return
        worker_id = "" if worker is None else f"[{worker}] "
        text = worker_id + PREFIX + event.describe()
        if self._tty:
            # one column short of the width: a line that fills it wraps in some terminals
            width = max(self._width() - 1, 1)
            if len(text) > width:  # where the sweep is matters more than the test's path
                text = worker_id + PREFIX + event.describe(short=True)
            self._rewrite(text[:width])
        else:
            self._line(text)
        self._out.flush()

    def end_line(self) -> None:
        """End the line being rewritten, if any, so that others may write after it."""
        if self._open is not None:
            self._open = None
            self._out.write("\n")
            self._out.flush()

    def _line_started(self) -> bool:
        # pytest's writer counts a line holding a control character (its own \r
        # rewrites, xdist's status line) as -1 columns wide: started, too
        return self._column() != 0

    def _line(self, text: str) -> None:
        if self._line_started():
            self._out.write("\n")
        self._out.write(text + "\n")

    def _rewrite(self, text: str) -> None:
        if self._open is None and self._line_started():
            self._out.write("\n")
        self._out.write("\r" + text + " " * max((self._open or 0) - len(text), 0))
        self._open = len(text)
