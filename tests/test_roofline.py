"""The roofline: a token's cost from the model's facts, shares of the machine's limits,
the min_roofline verdict and the causes it names. Pure: no server, no probe."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from pytest_ollama_cpu.client import Timings
from pytest_ollama_cpu.limits import Limit, MachineLimits
from pytest_ollama_cpu.report import roofline_lines
from pytest_ollama_cpu.results import Sample, Sweep, ThreadResult
from pytest_ollama_cpu.roofline import ModelFactsMissing, Roofline, model_cost, share
from pytest_ollama_cpu.thresholds import ThresholdError, Thresholds, check_threshold
from pytest_ollama_cpu.verdicts import evaluate, likely_cause

from .test_verdicts import MACHINE, MODEL, SERVER

#: Gemma 3 270M's facts as the embedded Ollama's /api/show gives them
GEMMA: dict[str, Any] = {
    "general.architecture": "gemma3",
    "general.parameter_count": 268098176,
    "gemma3.attention.head_count": 4,
    "gemma3.attention.head_count_kv": 1,
    "gemma3.attention.key_length": 256,
    "gemma3.attention.value_length": 256,
    "gemma3.block_count": 18,
    "gemma3.embedding_length": 640,
    "gemma3.feed_forward_length": 2048,
    "tokenizer.ggml.tokens": None,
}
GEMMA_SIZE = 253113294


def test_gemma_270m_cost_from_its_facts() -> None:
    cost = model_cost(GEMMA, GEMMA_SIZE)
    # per block: q and o 640x1024, k and v 640x256, three 640x2048 feed-forward matrices
    assert cost.block_parameters == 18 * (2 * 640 * 1024 + 2 * 640 * 256 + 3 * 640 * 2048)
    # the rest of the 268.1M parameters: the 262,144 x 640 embedding table, and the
    # norms (four of 640 and two of 256 a block, one of 640 at the end)
    rest = 262144 * 640 + 18 * (4 * 640 + 2 * 256) + 640
    assert GEMMA["general.parameter_count"] - cost.block_parameters == rest
    assert cost.kv_bytes_per_position == 2 * 18 * 1 * 512
    assert cost.attention_flops_per_position == 2 * 18 * 4 * 512
    assert cost.note is None
    assert cost.bytes_per_token(0) == GEMMA_SIZE
    assert cost.bytes_per_token(100) == GEMMA_SIZE + 100 * 18432
    flops = cost.flops_per_prompt_token(512)
    assert flops == pytest.approx(2 * cost.block_parameters + 73728 * 256)
    text = cost.describe()
    assert "253.1 MB of weights read per generated token" in text
    assert "18.4 kB of KV cache a position" in text
    assert "0.201 GFLOP per prompt token" in text


def test_a_model_whose_shapes_are_not_given_has_no_compute_cost() -> None:
    cost = model_cost({"general.architecture": "mystery"}, 1000)
    assert cost.block_parameters is None and cost.flops_per_prompt_token(10) is None
    assert "do not give its blocks' shapes" in (cost.note or "")
    assert cost.bytes_per_token(5) == 1000  # the memory side needs only the size


def test_a_mixture_of_experts_is_not_estimated() -> None:
    facts = {**GEMMA, "gemma3.expert_count": 8}
    assert "mixture-of-experts" in (model_cost(facts, GEMMA_SIZE).note or "")


def test_shapes_that_give_more_weights_than_parameters_are_refused() -> None:
    facts = {**GEMMA, "general.parameter_count": 1000}
    cost = model_cost(facts, GEMMA_SIZE)
    assert cost.block_parameters is None and "more than its 1,000 parameters" in (cost.note or "")


def test_no_size_is_an_error() -> None:
    with pytest.raises(ModelFactsMissing, match="size"):
        model_cost(GEMMA, None)


def test_share_of_a_roofline() -> None:
    assert share(50.0, 2e8, 2e10) == pytest.approx(0.5)
    assert share(None, 2e8, 2e10) is None
    assert share(50.0, None, 2e10) is None
    assert share(50.0, 2e8, 0.0) is None


LIMITS = MachineLimits(
    limits={
        1: Limit(1, 30e9, 100e9, False),
        2: Limit(2, 50e9, 200e9, False),
    },
    cpus=(0, 1),
    cgroup=None,
    note=None,
    cost_seconds=3.0,
    method="test",
)
ROOF = Roofline(model_cost(GEMMA, GEMMA_SIZE), LIMITS)


def roof_sample(threads: int, tps: float, util: float = 1.0, prompt: int = 100) -> Sample:
    timings = Timings(1.0, 0.0, prompt, prompt / 500, 64, 64 / tps)
    cost = ROOF.for_sample(threads, timings)
    return Sample(
        threads=threads,
        round=1,
        timings=timings,
        wall_seconds=1.0,
        usable_cpus=2.0,
        cpu_seconds=util * threads,
        other_cpu_seconds=0.0,
        runner_threads=threads,
        bytes_per_token=cost.bytes_per_token,
        flops_per_token=cost.flops_per_token,
        read_bytes_per_second=cost.read_bytes_per_second,
        flops_per_second=cost.flops_per_second,
    )


def roof_sweep(data: dict[int, list[Sample]], focus: str = "tokens_per_second") -> Sweep:
    machine = replace(MACHINE, affinity=(0, 1), usable_cpus=2.0)
    sweep = Sweep("generate", MODEL, 64, tuple(sorted(data)), machine, SERVER, roofline=ROOF)
    sweep.focus = focus
    for t, samples in data.items():
        sweep.results[t] = ThreadResult(t, tuple(samples))
    return sweep


def test_a_sample_reads_its_rates_against_the_limits_at_its_thread_count() -> None:
    s = roof_sample(2, 100.0)
    assert s.bytes_per_token is not None and s.flops_per_token is not None
    position = 100 + 64 / 2
    assert s.bytes_per_token == GEMMA_SIZE + 18432 * position
    assert s.generation_roofline == pytest.approx(100 * s.bytes_per_token / 50e9)
    assert s.prefill_roofline == pytest.approx(500 * s.flops_per_token / 200e9)
    again = Sample.from_dict(s.to_dict())
    assert again.generation_roofline == pytest.approx(s.generation_roofline)
    assert s.to_dict()["generation_roofline"] == pytest.approx(s.generation_roofline)


def _noisy(threads: int, centre: float, n: int = 8, seed: int = 1) -> list[Sample]:
    rng = np.random.default_rng(seed)
    return [roof_sample(threads, float(centre * rng.lognormal(0, 0.03))) for _ in range(n)]


def test_min_roofline_fails_where_generation_is_shown_below_it_and_says_why() -> None:
    # 60 tokens/s x ~255 MB = ~15 GB/s: a half of 30 GB/s at 1 thread, ~31% of 50 at 2
    sweep = roof_sweep({1: _noisy(1, 60.0), 2: _noisy(2, 60.0, seed=2)})
    verdict = evaluate(sweep, Thresholds(min_roofline=0.4))
    outcomes = {(c.quantity, c.threads): c.outcome for c in verdict.checks}
    assert outcomes == {("memory roofline", 1): "pass", ("memory roofline", 2): "fail"}
    failed = next(c for c in verdict.checks if c.outcome == "fail")
    assert "below 0.4" in verdict.message()
    assert failed.cause is not None and "with every thread busy" in failed.cause
    assert "of the memory limit at 2 threads" in failed.cause


def test_min_roofline_per_phase_and_for_a_prefill_workload() -> None:
    sweep = roof_sweep({1: _noisy(1, 60.0)}, focus="prompt_tokens_per_second")
    plain = evaluate(sweep, Thresholds(min_roofline=0.01))
    assert [c.quantity for c in plain.checks] == ["compute roofline"]
    both = evaluate(sweep, Thresholds(min_roofline={"prefill": 0.01, "generation": 0.01}))
    assert sorted(c.quantity for c in both.checks) == ["compute roofline", "memory roofline"]
    assert check_threshold("min_roofline", {"prefill": 0.3}) == {"prefill": 0.3}
    with pytest.raises(ThresholdError, match="one per phase"):
        check_threshold("min_roofline", {"decode": 0.3})


def test_a_rate_above_the_roofline_is_not_believed() -> None:
    # 300 tokens/s x 255 MB = 76 GB/s from a machine said to give 30: a figure is wrong
    sweep = roof_sweep({1: _noisy(1, 300.0)})
    check = evaluate(sweep, Thresholds(min_roofline=0.5)).checks[0]
    assert check.outcome == "unavailable"
    assert "above the memory limit" in (check.cause or "")
    assert "is wrong" in (check.cause or "")
    lines = roofline_lines(sweep)
    assert any("above the memory limit" in line for line in lines)


def test_without_a_roofline_the_check_says_why() -> None:
    sweep = roof_sweep({1: _noisy(1, 60.0)})
    sweep.roofline = None
    sweep.roofline_note = "the probe is off (--ollama-cpu-roofline off)"
    sweep.results[1] = ThreadResult(
        1,
        tuple(
            replace(s, read_bytes_per_second=None, bytes_per_token=None)
            for s in sweep.results[1].samples
        ),
    )
    check = evaluate(sweep, Thresholds(min_roofline=0.5)).checks[0]
    assert check.outcome == "unavailable"
    assert check.cause == "no roofline: the probe is off (--ollama-cpu-roofline off)"
    assert roofline_lines(sweep) == [
        "  roofline: not measured (the probe is off (--ollama-cpu-roofline off))"
    ]


def test_causes_from_the_roofline() -> None:
    # near the memory limit at 1 thread: 110 tokens/s x 255 MB = 28 GB/s of 30
    near = roof_sweep({1: _noisy(1, 110.0), 2: _noisy(2, 112.0, seed=3)})
    cause = likely_cause(near, 2, "efficiency")
    assert cause.startswith("cause: generation reaches")
    lines = roofline_lines(near)
    assert any("memory bandwidth, not threads, is the limit" in line for line in lines)
    assert any(line.startswith("  limits: generation") for line in lines)
    # far below it with idle threads: the threads wait
    idle = roof_sweep({2: [roof_sample(2, 30.0, util=0.4) for _ in range(4)]})
    assert any("the threads wait" in line for line in roofline_lines(idle))


def test_a_sweep_keeps_its_roofline_through_its_saved_form() -> None:
    sweep = roof_sweep({1: _noisy(1, 60.0), 2: _noisy(2, 60.0, seed=2)})
    again = Sweep.from_dict(sweep.to_dict())
    assert again.roofline == sweep.roofline
    assert again.limits_at(2) == sweep.limits_at(2)
    bytes_per_token = sweep.results[2].samples[0].bytes_per_token
    assert bytes_per_token is not None
    assert again.limits_at(2)["generation_limit"] == pytest.approx(50e9 / bytes_per_token)
    assert sweep.to_dict()["results"][1]["summary"]["generation_roofline"]["median"] > 0
