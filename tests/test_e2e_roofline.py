"""The roofline on the genuine Ollama: the machine's limits probed as the server may use
the machine (free, confined to one CPU, in a 1-CPU cgroup quota), the model's cost
per token from its facts, each row's share, and the causes they show."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pytest_ollama_cpu.embedded import EmbeddedServer

from .conftest import cpu_quota, run_embedded, run_quiet

pytestmark = pytest.mark.e2e

SWEEP = """
import pytest

@pytest.mark.threads(1, 2)
def test_generation(ollama_cpu):
    ollama_cpu.generate("Explain what a CPU cache is.")
"""


def _sweep(path: str) -> dict[str, Any]:
    data = json.loads(Path(path).read_text())
    (sweep,) = data["sweeps"]
    return {"data": data, "sweep": sweep}


def test_a_free_server_gets_limits_per_thread_count_and_shares_per_row(
    pytester: pytest.Pytester, embedded_ollama: EmbeddedServer
) -> None:
    pytester.makepyfile(SWEEP)
    out = pytester.path / "run.json"
    # every row's limits and shares: both thread counts must be measured
    result = run_quiet(pytester, embedded_ollama, f"--ollama-cpu-json={out}")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "machine limits: memory read * GB/s at 1 thread, * at 2; *",
            "*tg roof*pp roof*",
            "  roofline: 253.1 MB of weights read per generated token + 18.4 kB of KV cache a "
            "position; 0.201 GFLOP per prompt token + 73.7 kFLOP a position",
            "  limits: generation * tokens/s at 1 thread, * at 2 (* GB/s memory read at 1 "
            "thread, * at 2); prefill * tokens/s at 1 thread, * at 2 (* GFLOP/s fp32 "
            "multiply-add at 1 thread, * at 2)",
            "*generation reaches *% of the memory limit at 1 thread (limit * tokens/s)*",
        ]
    )
    found = _sweep(str(out))
    data, sweep = found["data"], found["sweep"]
    limits = data["limits"]
    assert limits == data["machines"][0]["limits"]
    assert set(limits["limits"]) == {"1", "2"}
    for row in sweep["results"]:
        assert row["limits"]["read_bytes_per_second"] > 1e9  # more than a GB/s: memory
        assert row["limits"]["flops_per_second"] > 1e9
        for name in ("generation_roofline", "prefill_roofline"):
            median = row["summary"][name]["median"]
            # a measurement, not a constant: a share of a limit that is really there
            assert 0.01 < median < 1.05, (name, median)
    assert sweep["roofline"]["model"]["block_parameters"] == 100270080


def test_min_roofline_fails_with_the_measured_cause_and_passes_a_low_bar(
    pytester: pytest.Pytester, embedded_ollama: EmbeddedServer
) -> None:
    pytester.makepyfile(
        """
import pytest

@pytest.mark.threads(1, min_roofline=0.99)
def test_at_the_limit(ollama_cpu):
    ollama_cpu.generate("Explain what a CPU cache is.")

@pytest.mark.threads(1, min_roofline=0.02)
def test_a_low_bar(ollama_cpu):
    ollama_cpu.generate("Explain what a CPU cache is.")
"""
    )
    result = run_embedded(pytester, embedded_ollama, "-p", "no:randomly")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "num_thread=1: memory roofline 0.* (*CI *) below 0.99: cause: generation reaches "
            "*% of the memory limit at 1 thread (limit * tokens/s)*",
        ]
    )


def test_a_server_confined_to_one_cpu_is_probed_on_that_cpu(
    pytester: pytest.Pytester, embedded_ollama: EmbeddedServer, cpus: int
) -> None:
    pytester.makepyfile(SWEEP)
    out = pytester.path / "run.json"
    result = run_embedded(
        pytester, embedded_ollama, "--ollama-cpu-cpus=0", f"--ollama-cpu-json={out}"
    )
    result.assert_outcomes(passed=1)
    limits = _sweep(str(out))["data"]["limits"]
    assert limits["cpus"] == [0]
    one, two = limits["limits"]["1"], limits["limits"]["2"]
    # two readers on one CPU take turns: no more arithmetic than one
    assert two["flops_per_second"] < 1.3 * one["flops_per_second"]


def test_a_server_in_a_one_cpu_quota_is_probed_under_the_quota(
    pytester: pytest.Pytester, embedded_ollama: EmbeddedServer, cpus: int
) -> None:
    pytester.makepyfile(SWEEP)
    out = pytester.path / "run.json"
    assert embedded_ollama.process is not None
    with cpu_quota(embedded_ollama.process.pid, 1.0) as group:
        result = run_embedded(pytester, embedded_ollama, f"--ollama-cpu-json={out}")
    result.assert_outcomes(passed=1)
    limits = _sweep(str(out))["data"]["limits"]
    assert limits["cgroup"] == "/" + group.name
    one, two = limits["limits"]["1"], limits["limits"]["2"]
    # two workers under one CPU's quota: about one CPU's arithmetic, not two
    assert two["flops_per_second"] < 1.3 * one["flops_per_second"]
