"""The memory bandwidth probe: its plumbing (the figures are benchmarks/bandwidth_probe.py's)."""

from __future__ import annotations

import os

import pytest

from pytest_ollama_cpu.limits import read_bandwidth


def test_workers_pinned_to_cpus_read_together_and_report_bytes_a_second() -> None:
    cpus = sorted(os.sched_getaffinity(0))[:2]
    result = read_bandwidth(len(cpus), cpus, size=8 * 2**20, seconds=0.1)
    assert result.workers == len(cpus) and result.cpus == tuple(cpus)
    # at least one pass over 8 MB a worker in its window: more than a few MB/s
    assert result.bytes_per_second > 8 * 2**20
    assert result.gb_per_second == pytest.approx(result.bytes_per_second / 1e9)
    assert 0.1 < result.cost_seconds < 30


def test_no_workers_is_an_error() -> None:
    with pytest.raises(ValueError, match="workers=0 must be 1 or more"):
        read_bandwidth(0)
