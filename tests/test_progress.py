"""Live progress: the display on a terminal, in a log and under -q; a run's lines with and
without pytest-xdist, against the fake server."""

from __future__ import annotations

import io
import re

import pytest

from pytest_ollama_cpu.progress import Progress, ProgressDisplay

from .conftest import run_fake
from .fake_ollama import Behaviour, FakeOllama

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
def test_a_line_of_unknown_width_counts_as_started(tty: bool) -> None:
    # pytest's writer gives -1 for a line with a control character (a \r status line)
    out = FakeTerminal()
    ProgressDisplay(out, verbosity=0, tty=tty, column=lambda: -1).show(WARMUP)
    assert out.getvalue().startswith("\n")


@pytest.mark.parametrize("tty", [True, False])
def test_quiet_shows_nothing(tty: bool) -> None:
    out = FakeTerminal()
    display = ProgressDisplay(out, verbosity=-1, tty=tty)
    display.show(ROUND)
    display.end_line()
    assert out.getvalue() == "" and display.silent


SUITE = """
import pytest

@pytest.mark.threads(1, 2, rounds=2)
def test_a(ollama_cpu):
    ollama_cpu.generate("prompt a", num_predict=8)

@pytest.mark.threads(3, rounds=3)
def test_b(ollama_cpu):
    ollama_cpu.chat([{"role": "user", "content": "prompt b"}], num_predict=8)

def test_plain():
    pass
"""

RATE = r"\d+\.\d tokens/s \(prefill \d+ tok/s\)"
LINE = re.compile(
    rf"^(\[gw\d\] )?ollama-cpu: test_\w+\.py::test_[ab]  \d threads?  "
    rf"(warm-up|round \d/\d  {RATE})$"
)


def progress_lines(result: pytest.RunResult) -> list[str]:
    return [line for line in result.outlines if "ollama-cpu: test_" in line]


def test_a_run_shows_a_line_per_round_in_a_log(
    pytester: pytest.Pytester, fake_ollama: FakeOllama
) -> None:
    pytester.makepyfile(SUITE)
    result = run_fake(pytester, fake_ollama)
    result.assert_outcomes(passed=3)
    lines = progress_lines(result)
    for line in lines:
        assert LINE.match(line), line
    name = "test_a_run_shows_a_line_per_round_in_a_log.py"
    shown = [line.removeprefix(f"ollama-cpu: {name}::").split("  ")[:3] for line in lines]
    assert shown == [
        ["test_a", "1 thread", "warm-up"],
        ["test_a", "1 thread", "round 1/2"],
        ["test_a", "1 thread", "round 2/2"],
        ["test_a", "2 threads", "warm-up"],
        ["test_a", "2 threads", "round 1/2"],
        ["test_a", "2 threads", "round 2/2"],
        ["test_b", "3 threads", "warm-up"],
        ["test_b", "3 threads", "round 1/3"],
        ["test_b", "3 threads", "round 2/3"],
        ["test_b", "3 threads", "round 3/3"],
    ]
    # pytest's own line for the module goes on after the progress lines
    result.stdout.fnmatch_lines([f"{name} ", "ollama-cpu: *", "*", ".", "ollama-cpu: *"])
    assert re.search(r"^\.\.\s+\[100%\]$", result.stdout.str(), re.MULTILINE)


def test_quiet_runs_show_no_progress(pytester: pytest.Pytester, fake_ollama: FakeOllama) -> None:
    pytester.makepyfile(SUITE)
    result = run_fake(pytester, fake_ollama, "-q")
    result.assert_outcomes(passed=3)
    assert not progress_lines(result)


def test_an_xdist_controller_shows_its_workers_progress_as_whole_lines(
    pytester: pytest.Pytester,
) -> None:
    pytest.importorskip("xdist")
    pytester.makepyfile(SUITE)
    args = ["--ollama-cpu", "--ollama-cpu-model=tiny", "-n", "2"]
    with FakeOllama(Behaviour(hang_seconds=0.05)) as fake:
        result = pytester.runpytest_subprocess(f"--ollama-cpu-host={fake.host}", *args)
        result.assert_outcomes(passed=3)
        lines = progress_lines(result)
        assert len(lines) == 10
        for line in lines:
            assert LINE.match(line) and line.count("ollama-cpu:") == 1, line
        assert {line[:5] for line in lines} <= {"[gw0]", "[gw1]"}
        # every other line is xdist's own and holds no progress
        assert result.stdout.str().count("ollama-cpu: test_") == 10
        for verbose in ("-v",):
            result = pytester.runpytest_subprocess(f"--ollama-cpu-host={fake.host}", *args, verbose)
            lines = progress_lines(result)
            assert len(lines) == 10 and all(LINE.match(line) for line in lines), lines
            result.stdout.fnmatch_lines(["*[[]gw?[]] *PASSED*::test_a*"])
        result = pytester.runpytest_subprocess(f"--ollama-cpu-host={fake.host}", *args, "-q")
        result.assert_outcomes(passed=3)
        assert not progress_lines(result)
