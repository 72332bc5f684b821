"""Verdicts in a pytest run: thresholds from marker and options, failures, policies."""

from __future__ import annotations

import json

import pytest

from .conftest import run_fake
from .fake_ollama import Behaviour, FakeOllama

# the fake's throughput is 20 * threads ** 0.8 tokens/s: efficiency 0.87 at 2 threads,
# 0.76 at 4, speedup 1.74 at 2 and 3.03 at 4; without jitter every sample is equal


def run(pytester: pytest.Pytester, fake: FakeOllama, *args: str) -> pytest.RunResult:
    return run_fake(pytester, fake, "--ollama-cpu-rounds=2", *args)


def test_thresholds_met_pass_and_the_summary_shows_verdict_and_recommendation(
    pytester: pytest.Pytester, fake_ollama: FakeOllama
) -> None:
    pytester.makepyfile(
        """
import pytest

@pytest.mark.threads(1, 2, 4, min_efficiency=0.7, min_speedup=2.5)
def test_scales(ollama_cpu):
    ollama_cpu.generate("x", num_predict=8)
"""
    )
    result = run(pytester, fake_ollama)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "*recommended num_thread 4 (60.6 tokens/s; Modelfile: PARAMETER num_thread 4)",
            "*ok  num_thread=4: speedup 3.03 (*% CI 3.03-3.03) not below 2.5",
            "*ok  num_thread=2: efficiency 0.87 (*% CI 0.87-0.87) not below 0.7",
            "*ok  num_thread=4: efficiency 0.76 (*% CI 0.76-0.76) not below 0.7",
            "*verdict after 1 of 4 planned looks, 6 samples in all, alpha 0.01",
        ]
    )


def test_a_fixture_asked_for_at_run_time_gets_its_verdicts_applied(
    pytester: pytest.Pytester, fake_ollama: FakeOllama
) -> None:
    # request.getfixturevalue: the test does not name the fixture among its arguments
    # (so it takes its thread counts and thresholds from the options)
    pytester.makepyfile(
        """
def test_scales(request):
    request.getfixturevalue("ollama_cpu").generate("x", num_predict=8)
"""
    )
    result = run(
        pytester, fake_ollama, "--ollama-cpu-threads=1,2,4", "--ollama-cpu-min-efficiency=0.8"
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["num_thread=4: efficiency 0.76 (*) below 0.8: cause: *"])


def test_a_threshold_shown_missed_fails_the_test_with_the_numbers(
    pytester: pytest.Pytester, fake_ollama: FakeOllama
) -> None:
    pytester.makepyfile(
        """
import pytest

@pytest.mark.threads(1, 2, 4, min_efficiency=0.8)
def test_scales(ollama_cpu):
    ollama_cpu.generate("x", num_predict=8)
"""
    )
    out = pytester.path / "r.json"
    result = run(pytester, fake_ollama, f"--ollama-cpu-json={out}")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*_ test_scales _*",
            "num_thread=4: efficiency 0.76 (*% CI 0.76-0.76) below 0.8*",
            "*FAILED  num_thread=4: efficiency 0.76*",
        ]
    )
    (sweep,) = json.loads(out.read_text())["sweeps"]
    assert sweep["thresholds"]["min_efficiency"] == 0.8
    assert sweep["verdict"]["outcome"] == "fail"
    assert [c["outcome"] for c in sweep["verdict"]["checks"]] == ["pass", "fail"]
    assert sweep["verdict"]["recommendation"]["modelfile"] == "PARAMETER num_thread 4"


def test_a_failing_body_is_reported_as_it_is(
    pytester: pytest.Pytester, fake_ollama: FakeOllama
) -> None:
    pytester.makepyfile(
        """
import pytest

@pytest.mark.threads(1, 2, min_efficiency=0.99)
def test_body_fails(ollama_cpu):
    ollama_cpu.generate("x", num_predict=8)
    assert False, "the test's own assertion"
"""
    )
    result = run(pytester, fake_ollama)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*the test's own assertion*"])


def test_options_set_thresholds_for_every_test_and_the_marker_overrides(
    pytester: pytest.Pytester, fake_ollama: FakeOllama
) -> None:
    pytester.makeini("[pytest]\nollama_cpu_min_efficiency = 0.8\n")
    pytester.makepyfile(
        """
import pytest

@pytest.mark.threads(1, 2)
def test_from_ini(ollama_cpu):
    ollama_cpu.generate("x", num_predict=8)

@pytest.mark.threads(1, 4)
def test_from_ini_fails(ollama_cpu):
    ollama_cpu.generate("x", num_predict=8)

@pytest.mark.threads(1, 4, min_efficiency=0.5)
def test_marker_wins(ollama_cpu):
    ollama_cpu.generate("x", num_predict=8)
"""
    )
    result = run(pytester, fake_ollama)
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["FAILED *::test_from_ini_fails*"])
    result = run(pytester, fake_ollama, "--ollama-cpu-min-efficiency=0.7")
    result.assert_outcomes(passed=3)


@pytest.mark.parametrize(
    ("policy", "outcome", "line"),
    [
        (
            "pass",
            {"passed": 1},
            "WARNING *::test_noisy: inconclusive (undecided after the most rounds*",
        ),
        ("fail", {"failed": 1}, "*inconclusive (undecided after the most rounds allowed*:*"),
        (
            "skip",
            {"skipped": 1},
            "SKIPPED *inconclusive (undecided after the most rounds allowed**",
        ),
    ],
)
def test_undecided_verdicts_follow_the_policy(
    pytester: pytest.Pytester, policy: str, outcome: dict[str, int], line: str
) -> None:
    pytester.makepyfile(
        """
import pytest

@pytest.mark.threads(1, 2, min_efficiency=0.87, max_rounds=4)
def test_noisy(ollama_cpu):
    ollama_cpu.generate("x", num_predict=8)
"""
    )
    # very noisy throughput, true efficiency on the threshold: cannot be decided
    with FakeOllama(Behaviour(jitter=0.4, seed=7)) as fake:
        result = run(pytester, fake, f"--ollama-cpu-inconclusive={policy}", "-rs")
        # 2 rounds, then 2 more at each thread count: the runner still has 2 threads
        # loaded, so 2 goes first without a warm-up; coming back to 1 needs one
        sent = [r["options"]["num_thread"] for r in fake.behaviour.requests]
        assert sent == [1, 1, 1, 2, 2, 2] + [2, 2] + [1, 1, 1]
    result.assert_outcomes(**outcome)
    result.stdout.fnmatch_lines([line])
    result.stdout.fnmatch_lines(["*UNDECIDED  num_thread=2: efficiency*undecided against 0.87*"])


def test_sweep_check_applies_thresholds_explicitly(
    pytester: pytest.Pytester, fake_ollama: FakeOllama
) -> None:
    pytester.makepyfile(
        """
import pytest

@pytest.mark.threads(1, 2)
def test_explicit(ollama_cpu):
    sweep = ollama_cpu.generate("x", num_predict=8)
    assert sweep.check(min_speedup=1.5)
    verdict = sweep.check(min_speedup=1.9)
    assert not verdict
    assert "num_thread=2: speedup 1.74" in verdict.message()
"""
    )
    run(pytester, fake_ollama).assert_outcomes(passed=1)


@pytest.mark.parametrize(
    ("marker", "message"),
    [
        ("threads(1, 2, min_efficiency=0)", "min_efficiency=0 must be a number above 0"),
        ("threads(1, 2, min_speedup={0: 1.5})", "thread count 0 (a key of min_speedup)"),
        ("threads(1, 2, alpha=0.7)", "alpha=0.7 must be a number between 0 and 0.5"),
        ("threads(1, 2, max_rounds=0)", "max_rounds=0 must be a whole number of 1 or more"),
        ("threads(1, 2, min_utilisation=0.8)", "unknown keyword min_utilisation"),
    ],
)
def test_bad_threshold_keywords(pytester: pytest.Pytester, marker: str, message: str) -> None:
    pytester.makepyfile(
        f"""
import pytest

@pytest.mark.{marker}
def test_bad(ollama_cpu):
    pass
"""
    )
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.INTERRUPTED  # a collection error
    result.stdout.fnmatch_lines([f"*::test_bad: bad @pytest.mark.threads*{message}*"])


@pytest.mark.parametrize(
    ("arg", "message"),
    [
        ("--ollama-cpu-min-efficiency=abc", "*expected a finite number above 0, e.g. 0.7"),
        ("--ollama-cpu-alpha=1", "*expected a number between 0 and 0.5*"),
        ("--ollama-cpu-inconclusive=maybe", "*expected one of pass, fail, skip"),
        ("--ollama-cpu-max-rounds=-3", "*expected a whole number of 1 or more"),
    ],
)
def test_bad_threshold_options(pytester: pytest.Pytester, arg: str, message: str) -> None:
    pytester.makepyfile("def test_plain():\n    pass\n")
    result = pytester.runpytest(arg)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: {arg.split('=')[0]}: *{message}"])


def test_utilization_that_cannot_be_measured_is_said_plainly(
    pytester: pytest.Pytester, fake_ollama: FakeOllama
) -> None:
    # the fake answers in microseconds: far too fast to measure CPU time
    pytester.makepyfile(
        """
import pytest

@pytest.mark.threads(1, 2, min_utilization=0.8)
def test_util(ollama_cpu):
    ollama_cpu.generate("x", num_predict=8)
"""
    )
    result = run(pytester, fake_ollama, "--ollama-cpu-inconclusive=fail")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*NOT MEASURED  num_thread=1: thread utilization not decided: every request took "
            "under a quarter second*raise num_predict",
        ]
    )
    # nothing more to learn from more samples: no extra rounds were taken
    assert len(fake_ollama.behaviour.requests) == 2 * (1 + 2)
