"""Live progress: the display on a terminal, in a log and under -q."""

from __future__ import annotations

import io

import pytest

from pytest_ollama_cpu.progress import Progress, ProgressDisplay

ROUND = Progress("round", 2, "t.py::test_x", 3, 5, 65.43, 409.2)
WARMUP = Progress("warm-up", 4, "t.py::test_x")


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_an_event_reads_as_where_the_sweep_is() -> None:
    assert (
        ROUND.describe() == "t.py::test_x  2 threads  round 3/5  65.4 tokens/s (prefill 409 tok/s)"
    )
    assert WARMUP.describe() == "t.py::test_x  4 threads  warm-up"
    assert Progress("waiting for quiet", 1, generation_rate=3.0).describe() == (
        "1 thread  waiting for the CPUs to be quiet  3.0 tokens/s"
    )
    assert Progress("probing limits", 8).describe() == "8 threads  probing the machine's limits"
    assert Progress.from_dict(ROUND.to_dict()) == ROUND
    with pytest.raises(ValueError, match="unknown phase 'lunch'"):
        Progress.from_dict({"phase": "lunch", "threads": 1})


def test_a_terminal_gets_one_line_rewritten_in_place_and_ended() -> None:
    out = FakeTerminal()
    column = [len("test_x.py ")]  # pytest has begun the test's line
    display = ProgressDisplay(
        out, verbosity=0, tty=True, width=lambda: 200, column=lambda: column[0]
    )
    display.show(ROUND)
    display.show(WARMUP)
    display.end_line()
    display.end_line()  # nothing more to end
    long, short = "ollama-cpu: " + ROUND.describe(), "ollama-cpu: " + WARMUP.describe()
    padding = " " * (len(long) - len(short))
    assert out.getvalue() == f"\n\r{long}\r{short}{padding}\n"
    column[0] = 0  # the next line begins where the last one ended: no empty line
    display.show(WARMUP)
    display.end_line()
    assert out.getvalue().endswith(f"{padding}\n\r{short}\n")


def test_a_terminal_line_is_cut_to_the_width() -> None:
    out = FakeTerminal()
    full = "ollama-cpu: " + ROUND.describe()
    short = "ollama-cpu: test_x  2 threads  round 3/5  65.4 tokens/s (prefill 409 tok/s)"
    width = [len(full) + 1]
    display = ProgressDisplay(out, verbosity=1, tty=True, width=lambda: width[0])
    display.show(ROUND)
    assert out.getvalue() == "\r" + full
    width[0] -= 1  # too narrow: the test goes by its name alone
    display.show(ROUND)
    assert out.getvalue().endswith("\r" + short + " " * (len(full) - len(short)))
    width[0] = 31  # and then the line is cut
    display.show(ROUND)
    assert out.getvalue().endswith("\r" + short[:30] + " " * (len(short) - 30))


def test_a_log_gets_whole_lines() -> None:
    out = io.StringIO()
    display = ProgressDisplay(out, verbosity=0, tty=False, column=lambda: 3)
    display.show(WARMUP)
    display.show(ROUND, worker="gw1")
    display.end_line()
    assert out.getvalue() == (
        f"\nollama-cpu: {WARMUP.describe()}\n\n[gw1] ollama-cpu: {ROUND.describe()}\n"
    )
    assert "\r" not in out.getvalue()


@pytest.mark.parametrize("tty", [True, False])
def test_quiet_shows_nothing(tty: bool) -> None:
    out = FakeTerminal()
    display = ProgressDisplay(out, verbosity=-1, tty=tty)
    display.show(ROUND)
    display.end_line()
    assert out.getvalue() == "" and display.silent
