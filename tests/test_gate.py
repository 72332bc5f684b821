"""The baseline gate while a run measures (``comparison.Gate``): which rows ask for
more samples, and that asking for them costs no false regressions.

Samples are drawn log-normal with spreads we set, so the truth is known.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from pytest_ollama_cpu.comparison import GATE_RULE, Gate, compare
from pytest_ollama_cpu.rules import parse_rule
from pytest_ollama_cpu.saved_runs import SavedRun

RULE = parse_rule("tokens_per_second:5%")


def samples(values: Any, **extra: Any) -> list[dict[str, Any]]:
    return [{"tokens_per_second": float(v), **extra} for v in values]


def entry(values: Any, **extra: Any) -> dict[str, Any]:
    return {
        "fullname": "t.py::test_a[m-generate-t2]",
        "extra_info": {
            "ollama_cpu": {
                "test": "t.py::test_a",
                "threads": 2,
                "model": {},
                "samples": samples(values, **extra),
            }
        },
    }


def run_of(values: Any) -> SavedRun:
    return SavedRun(None, {"machine_info": {}, "benchmarks": [entry(values)]})


def steady(rng: np.random.Generator, n: int, cv: float, scale: float = 1.0) -> np.ndarray:
    return 40.0 * scale * np.exp(rng.normal(0.0, cv, n))


def test_alpha_is_shared_over_the_planned_rows_and_rules() -> None:
    gate = Gate.planned([RULE, parse_rule("utilization:0.1")], 0.01, rows=5)
    assert gate.alpha == pytest.approx(0.01 / 10)
    # no rule given: a saved run is made precise enough for the recommended one
    assert Gate.planned([], 0.01, rows=4).rules == (parse_rule(GATE_RULE),)


def test_a_steady_baseline_asks_few_samples_and_a_noisy_one_many() -> None:
    rng = np.random.default_rng(1)
    gate = Gate.planned([RULE], 0.01, rows=2)
    assert gate.samples_needed(samples(steady(rng, 5, 0.003)), 20) <= 5
    assert gate.samples_needed(samples(steady(rng, 5, 0.10)), 20) == 20
    # a baseline of more samples at the same spread leaves less for this run to do
    values = steady(rng, 10, 0.03)
    more = samples(np.tile(values, 4))
    assert gate.samples_needed(more, 60) < gate.samples_needed(samples(values), 60)
    # fewer than two values say nothing of the spread
    assert gate.samples_needed(samples([40.0]), 20) == 0


def test_a_busy_baseline_sizes_nothing() -> None:
    gate = Gate.planned([RULE], 0.01, rows=2)
    busy = entry([40.0, 41.0, 39.0], disturbed=True, other_cores_busy=1.0, server_cpus=2)
    assert gate.baseline_samples(busy) == []
    assert len(gate.baseline_samples(entry([40.0, 41.0, 39.0]))) == 3


def test_a_quantity_the_samples_lack_sizes_nothing() -> None:
    util = Gate.planned([parse_rule("utilization:0.1")], 0.01, rows=2)
    assert util.samples_needed(samples([30.0, 31.0, 29.0]), 20) == 0


def pipeline(
    rng: np.random.Generator,
    gate: Gate,
    cv: float,
    drop: float,
    rounds: int = 5,
    most: int = 20,
    pilot: bool = False,
) -> bool:
    """A saved first run, then a run compared with it, sampled as the plugin samples
    them; whether the row is flagged. ``pilot``: the first run is sized instead from
    its own first look, which it keeps, the design the plugin rejects."""
    old = list(steady(rng, rounds if pilot else most, cv))
    if pilot:
        need = gate.samples_needed(samples(old), most)
        old += list(steady(rng, max(0, need - rounds), cv))
    need = gate.samples_needed(samples(old), most)  # sized from the baseline
    new = list(steady(rng, max(rounds, need), cv, 1 - drop))
    (row,) = compare(run_of(old), run_of(new), [RULE], gate.alpha).rows
    return row.regression


def test_sizing_runs_from_earlier_samples_keeps_false_regressions_within_alpha() -> None:
    """A drop exactly the rule's size may be flagged at most alpha of the time."""
    alpha, trials = 0.05, 4000
    gate = Gate.planned([RULE], alpha, rows=1)
    rng = np.random.default_rng(9)
    flagged = sum(pipeline(rng, gate, 0.02, 0.05) for _ in range(trials)) / trials
    assert flagged <= alpha + 2.5 * (alpha * (1 - alpha) / trials) ** 0.5  # measured 0.041


def test_a_row_is_never_sized_from_its_own_samples() -> None:
    """A run that stopped once its own samples looked steady would keep the samples that
    flatter it (measured with Welch's test: 5.0% false regressions became 6.0% at alpha
    0.05): a saved row with no baseline entry takes the most rounds, whatever its
    samples; one with an entry takes what the entry's samples plan."""
    from pytest_ollama_cpu.client import ModelFacts, Timings
    from pytest_ollama_cpu.connection import ServerFacts
    from pytest_ollama_cpu.machine import MachineFacts
    from pytest_ollama_cpu.options import Settings
    from pytest_ollama_cpu.results import Sample, Sweep, ThreadResult
    from pytest_ollama_cpu.run import RunState

    def sweep_of(values: list[float]) -> Sweep:
        sweep = Sweep(
            "generate",
            ModelFacts("m", None, None, None, None, None),
            64,
            (2,),
            MachineFacts("host", "cpu", 2, 2, (0, 1), None, None, 2.0, 1),
            ServerFacts("http://h:1", "0", True, ""),
        )
        samples_ = tuple(
            Sample(2, i, Timings(1.0, 0.0, 8, 0.1, 64, 64 / v), 1.0, 2.0)
            for i, v in enumerate(values, 1)
        )
        sweep.results[2] = ThreadResult(2, samples_)
        return sweep

    settings = Settings(True, "http://h:1", "m", 5, 64, (2,), 300.0, None, save="base")
    state = RunState(settings)
    plan = state.sample_plan("t.py::test_a", 1, 20)
    assert plan is not None
    steady_values, noisy_values = [40.0, 40.1, 39.9, 40.0, 40.05], [30.0, 50.0, 40.0, 35.0, 45.0]
    assert plan(sweep_of(steady_values)) == plan(sweep_of(noisy_values)) == {2}
    assert plan(sweep_of(steady_values * 4)) == set()  # 20: the most rounds
    # compared with a baseline entry: planned from that entry's samples alone
    base = state.gate
    assert base is not None
    saved = sweep_of(steady_values * 4)
    from pytest_ollama_cpu.records import RecordedSweep
    from pytest_ollama_cpu.saved_runs import saved_run_document

    document = saved_run_document([RecordedSweep("t.py::test_a", saved)], machine={}, commit={})
    settings = Settings(True, "http://h:1", "m", 5, 64, (2,), 300.0, None)
    compared = RunState(settings, baseline=SavedRun(None, document))
    plan = compared.sample_plan("t.py::test_a", 1, 20)
    assert plan is not None
    assert plan(sweep_of(noisy_values)) == plan(sweep_of(steady_values)) == set()


def test_the_sized_gate_catches_a_ten_percent_drop_at_a_three_percent_spread() -> None:
    """The power the README quotes for CV up to 3% (benchmarks/gate_power.py)."""
    gate = Gate.planned([RULE], 0.01, rows=2)
    rng = np.random.default_rng(5)
    trials = 400
    caught = sum(pipeline(rng, gate, 0.03, 0.10) for _ in range(trials))
    assert caught / trials >= 0.9
