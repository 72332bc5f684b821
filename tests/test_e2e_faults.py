"""The genuine Ollama failing mid-sweep, at round 2 of 2 threads: killed while it
answers, and stopped between two requests (the next one is refused). The test must
fail at once, saying which, and keep every sample taken before, those at 2 threads
included, in the summary (INCOMPLETE) and the JSON file.

Each test runs its own server (a "victim") and breaks it from inside the sweep:
``SweepRunner._sample`` is wrapped, so the fault comes at a known sample whatever a
busy machine made the sweep retake before it.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from pytest_ollama_cpu import sampler
from pytest_ollama_cpu.embedded import EmbeddedServer

from .conftest import run_embedded

pytestmark = pytest.mark.e2e

SWEEP = """
import pytest

@pytest.mark.threads(1, 2, rounds=3)
def test_sweep(ollama_cpu):
    ollama_cpu.generate("Explain what a CPU cache is.")
"""

#: seconds into the faulty request the server is killed; its 96 tokens take over a second
KILL_AFTER = 0.3


@pytest.fixture
def victim(embedded_ollama: EmbeddedServer) -> Iterator[EmbeddedServer]:
    server = EmbeddedServer(embedded_ollama.installation)
    server.start()
    try:
        yield server
    finally:
        server.stop()


class Fault:
    """Runs ``fault`` once, at round 2 of 2 threads, and times that request."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, fault: Callable[[], None]) -> None:
        self.fault = fault
        self.done = False
        self.request_seconds: float | None = None
        real = sampler.SweepRunner._sample

        def sample(runner: Any, workload: Any, threads: int, round_: int) -> Any:
            if self.done or (threads, round_) != (2, 2):
                return real(runner, workload, threads, round_)
            self.done = True
            self.fault()
            started = time.monotonic()
            try:
                return real(runner, workload, threads, round_)
            finally:
                self.request_seconds = time.monotonic() - started

        monkeypatch.setattr(sampler.SweepRunner, "_sample", sample)


def sweep_into(pytester: pytest.Pytester, victim: EmbeddedServer) -> tuple[Any, Any]:
    pytester.makepyfile(SWEEP)
    out = pytester.path / "partial.json"
    result = run_embedded(
        pytester,
        victim,
        "--ollama-cpu-num-predict=96",
        # on a busy machine, retake a disturbed sample at once rather than wait for quiet
        # and perhaps give 2 threads up before round 2, where the fault is
        "--ollama-cpu-quiet-wait=0",
        "--ollama-cpu-retakes=20",
        f"--ollama-cpu-json={out}",
    )
    result.assert_outcomes(failed=1)
    (sweep,) = json.loads(out.read_text())["sweeps"]
    return result, sweep


def assert_every_sample_kept(result: pytest.RunResult, sweep: Any) -> None:
    result.stdout.fnmatch_lines(
        [
            "*The sweep stopped at 2 threads after * of 3 rounds; samples kept: * at 1 thread, "
            "1 at 2 threads.",
            "*= ollama-cpu: thread sweeps =*",
            "*INCOMPLETE: lost the Ollama server*",
        ]
    )
    one, two = sweep["results"]
    assert sweep["complete"] is False
    assert one["threads"] == 1 and len(one["samples"]) >= 3
    # the sample taken at 2 threads before the fault is kept, not only whole thread counts
    assert two["threads"] == 2 and [s["round"] for s in two["samples"]] == [1]
    assert two["samples"][0]["timings"]["eval_count"] > 0


def test_a_real_server_killed_mid_request_keeps_every_sample(
    pytester: pytest.Pytester, victim: EmbeddedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert victim.process is not None
    group = victim.process.pid

    def kill_soon() -> None:
        threading.Timer(KILL_AFTER, os.killpg, (group, signal.SIGKILL)).start()

    fault = Fault(monkeypatch, kill_soon)
    result, sweep = sweep_into(pytester, victim)
    assert fault.done
    result.stdout.fnmatch_lines(
        [
            f"*lost the Ollama server at {victim.host} while generating with gemma3-270m: the "
            "connection broke mid-request*the server stopped or crashed. Check its log, restart "
            "it and run again.",
        ]
    )
    assert_every_sample_kept(result, sweep)
    assert fault.request_seconds is not None and fault.request_seconds < KILL_AFTER + 5


def test_a_real_server_stopped_between_requests_keeps_every_sample(
    pytester: pytest.Pytester, victim: EmbeddedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    fault = Fault(monkeypatch, victim.stop)  # SIGTERM, as a service manager stops it
    result, sweep = sweep_into(pytester, victim)
    assert fault.done
    result.stdout.fnmatch_lines(
        [
            f"*lost the Ollama server at {victim.host} while generating with gemma3-270m: the "
            "connection was refused, nothing listens there any more*",
        ]
    )
    assert_every_sample_kept(result, sweep)
    assert fault.request_seconds is not None and fault.request_seconds < 5
