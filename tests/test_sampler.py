"""The retake loop against scripted load: which samples are set aside, what is waited,
when a thread count is given up. A stub server says how busy the other processes
kept its CPUs during each request and each look while waiting for quiet."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any

import pytest

from pytest_ollama_cpu import sampler
from pytest_ollama_cpu.client import ModelFacts, OllamaClient, Timings
from pytest_ollama_cpu.connection import ServerFacts
from pytest_ollama_cpu.disturbance import RetakeBudget, is_disturbed, spare_cpus
from pytest_ollama_cpu.machine import MachineFacts
from pytest_ollama_cpu.processes import CpuSnapshot, CpuUse, ServerProcess
from pytest_ollama_cpu.progress import Progress
from pytest_ollama_cpu.sampler import SweepRunner, Workload

TWO_CPUS = MachineFacts("h", "cpu", 2, 2, (0, 1), None, None, 2.0, 1)
QUOTA_ONE = MachineFacts("h", "cpu", 2, 2, (0, 1), 1.0, 1, 1.0, 1)
SERVER = ServerFacts("http://127.0.0.1:1", "0", True, "server pid 1")
MODEL = ModelFacts("m", None, None, None, None, None)
WORKLOAD = Workload("generate", "m", 8, prompt="x")


class StubClient(OllamaClient):
    """Answers at once, as a server that loads the model again for another thread
    count; no connection (OllamaClient's own ``__init__`` is not called)."""

    def __init__(self) -> None:
        self.loaded: int | None = None
        self.requests: list[int] = []

    def generate(
        self,
        model: str,
        prompt: str,
        options: Mapping[str, Any],
        keep_alive: str | None = None,
        on_first: Callable[[], None] | None = None,
    ) -> Timings:
        threads = int(options["num_thread"])
        load = 0.5 if threads != self.loaded else 0.0
        self.loaded = threads
        self.requests.append(threads)
        time.sleep(0.01)  # long enough that the snapshots around it time the request
        if on_first is not None:
            on_first()
        time.sleep(0.01)
        return Timings(0.1 + load, load, 4, 0.01, 8, 0.1)


class StubServer(ServerProcess):
    """Other processes' load: ``during`` per request in turn, ``idle`` per look; no
    process behind it (ServerProcess's own ``__init__`` is not called)."""

    cpus = frozenset({0, 1})

    def __init__(self, during: Sequence[float], idle: Sequence[float] = ()) -> None:
        self._during: Iterator[float] = iter(during)
        self._idle = list(idle)
        self._loads: dict[float, float] = {}
        self.looks = 0

    def snapshot(self) -> CpuSnapshot:
        return CpuSnapshot(time.perf_counter(), {}, 0.0)

    # ServerProcess.cpu_use is a static method (a function of the two snapshots); the
    # stub's keeps the scripted load of each request, so it needs the instance
    def cpu_use(self, before: CpuSnapshot, after: CpuSnapshot) -> CpuUse:  # type: ignore[override]
        wall = after.at - before.at
        # one load per request: its phases (from the same start) share it
        if before.at not in self._loads:
            self._loads[before.at] = next(self._during, 0.0)
        load = self._loads[before.at]
        return CpuUse(wall, 1.0 * wall, load * wall, 0)

    def other_load(self, window: float) -> float:
        time.sleep(window)
        self.looks += 1
        return self._idle.pop(0) if self._idle else 0.0

    def runner(self) -> None:
        return None


@pytest.fixture(autouse=True)
def _fast(monkeypatch: pytest.MonkeyPatch) -> None:
    # the stub answers at once: CPU figures of such short requests must still count
    monkeypatch.setattr(sampler, "MIN_CPU_WINDOW", 0.0)
    monkeypatch.setattr(sampler, "QUIET_WINDOW", 0.01)


def sweep_with(
    server: StubServer,
    threads: Sequence[int],
    rounds: int,
    budget: RetakeBudget,
    machine: MachineFacts = TWO_CPUS,
) -> tuple[Any, StubClient]:
    client = StubClient()
    runner = SweepRunner(client, server, SERVER, machine, budget=budget)
    return runner.run(WORKLOAD, MODEL, threads, rounds), client


def test_the_rule_follows_the_spare_cpus() -> None:
    assert spare_cpus(2, 1, 2.0) == 1.0 and spare_cpus(2, 2, 2.0) == 0.0
    assert spare_cpus(2, 2, 1.0) == 1.0  # a 1-CPU quota: the other CPU is spare
    assert spare_cpus(8, 16, 8.0) == 0.0
    assert not is_disturbed(1.0, 1.0) and not is_disturbed(1.09, 1.0)
    assert is_disturbed(1.11, 1.0) and is_disturbed(0.2, 0.0)
    assert not is_disturbed(None, 0.0) and not is_disturbed(5.0, None)  # unknown: not judged


def test_a_quiet_machine_takes_the_rounds_without_waiting() -> None:
    server = StubServer(during=[0.0] * 20)
    sweep, client = sweep_with(server, [1, 2], 3, RetakeBudget(retakes=5, quiet_wait=1.0))
    for count in (1, 2):
        result = sweep[count]
        assert len(result.samples) == 3 and not result.set_aside and not result.gave_up
        assert result.waited_seconds == 0.0
        assert all(s.started_at and s.started_monotonic for s in result.samples)
    assert server.looks == 0
    assert client.requests == [1, 1, 1, 1, 2, 2, 2, 2]  # a warm-up, then three rounds


def test_load_on_the_spare_cpu_disturbs_nothing() -> None:
    # a neighbour on one core of two: one thread has a CPU spare, two threads do not
    server = StubServer(during=[1.0] * 20)
    sweep, _ = sweep_with(server, [1], 3, RetakeBudget(retakes=5, quiet_wait=1.0))
    assert not sweep[1].set_aside and sweep[1].samples[0].other_cores_busy >= 1.0
    server = StubServer(during=[1.0] * 20)
    sweep, _ = sweep_with(server, [2], 3, RetakeBudget(retakes=5, quiet_wait=1.0), QUOTA_ONE)
    assert not sweep[2].set_aside  # the quota leaves a CPU the server may not use anyway


def test_a_disturbed_sample_is_set_aside_and_taken_again_after_quiet() -> None:
    # warm-up quiet, round 1 quiet, rounds 2 and 3 disturbed, the rest quiet
    server = StubServer(during=[0.0, 0.0, 1.0, 1.0, 0.0, 0.0], idle=[1.0, 0.0, 0.0])
    sweep, client = sweep_with(server, [2], 3, RetakeBudget(retakes=5, quiet_wait=5.0))
    result = sweep[2]
    assert [s.disturbed for s in result.samples] == [False, True, True, False, False]
    assert [s.round for s in result.samples] == [1, 2, 3, 4, 5]
    assert len(result.undisturbed) == 3 and len(result.set_aside) == 2
    assert result.tokens_per_second.n == 3 and not result.gave_up and not result.busy
    assert server.looks == 3 and result.waited_seconds > 0  # one busy look, then quiet
    assert len(client.requests) == 6


def test_a_machine_that_stays_busy_is_given_up_in_bounded_time() -> None:
    server = StubServer(during=[1.0] * 50, idle=[1.0] * 500)
    started = time.monotonic()
    sweep, client = sweep_with(server, [2], 5, RetakeBudget(retakes=5, quiet_wait=0.1))
    assert time.monotonic() - started < 5
    result = sweep[2]
    # the warm-up was disturbed, the wait for quiet ran out: one sample on record, given up
    assert result.gave_up and result.busy and len(result.samples) == 1
    assert 0.1 <= result.waited_seconds < 1.0
    assert len(client.requests) == 2
    # later looks at the sweep ask for nothing more at a count given up
    SweepRunner(client, server, SERVER, TWO_CPUS).extend(sweep, WORKLOAD, {2: 5})
    assert len(client.requests) == 2


def test_without_waiting_the_retakes_run_out() -> None:
    server = StubServer(during=[1.0] * 50)
    sweep, client = sweep_with(server, [2], 3, RetakeBudget(retakes=2, quiet_wait=0.0))
    result = sweep[2]
    assert len(result.set_aside) == 3 and not result.undisturbed and result.gave_up
    assert server.looks == 0 and len(client.requests) == 4


def test_the_budget_is_per_thread_count_and_sweep() -> None:
    server = StubServer(during=[0.0, 1.0, 0.0, 0.0] + [1.0, 0.0] + [0.0] * 10)
    client = StubClient()
    runner = SweepRunner(
        client, server, SERVER, TWO_CPUS, budget=RetakeBudget(retakes=1, quiet_wait=0.0)
    )
    sweep = runner.run(WORKLOAD, MODEL, [2], 2)
    assert len(sweep[2].set_aside) == 1 and not sweep[2].gave_up
    runner.extend(sweep, WORKLOAD, {2: 2})
    # the second disturbed sample went over the one retake the sweep allows at 2 threads
    assert len(sweep[2].set_aside) == 2 and sweep[2].gave_up


def test_the_sweep_tells_where_it_is_as_it_goes() -> None:
    # as in the retake test above: rounds 2 and 3 disturbed, one busy look, then quiet
    server = StubServer(during=[0.0, 0.0, 1.0, 1.0, 0.0, 0.0], idle=[1.0, 0.0, 0.0])
    events: list[Progress] = []
    runner = SweepRunner(
        StubClient(),
        server,
        SERVER,
        TWO_CPUS,
        on_progress=events.append,
        budget=RetakeBudget(retakes=5, quiet_wait=5.0),
    )
    runner.run(WORKLOAD, MODEL, [2], 3)
    # each retake adds a round to the plan; rates are the last sample's (the warm-up's too)
    assert [(e.phase, e.round, e.rounds) for e in events] == [
        ("warm-up", 0, 3),
        ("round", 1, 3),
        ("round", 2, 3),
        ("waiting for quiet", 0, 4),
        ("round", 3, 4),
        ("waiting for quiet", 0, 5),
        ("round", 4, 5),
        ("round", 5, 5),
    ]
    assert {e.threads for e in events} == {2} and {e.test for e in events} == {""}
    assert events[0].generation_rate is None and events[0].prefill_rate is None
    assert {(e.generation_rate, e.prefill_rate) for e in events[1:]} == {(80.0, 400.0)}
    # a prompt the cache serves measures no prefill
    events.clear()
    cached = replace(WORKLOAD, prompt_cache=True)
    runner = SweepRunner(StubClient(), None, SERVER, TWO_CPUS, on_progress=events.append)
    runner.run(cached, MODEL, [1], 1)
    assert [(e.phase, e.generation_rate, e.prefill_rate) for e in events] == [
        ("warm-up", None, None),
        ("round", 80.0, None),
    ]


class ShortThenFull(StubClient):
    """Replies of 8 tokens (the model ended its answer early) ``short`` times, then 16."""

    def __init__(self, short: int) -> None:
        super().__init__()
        self.short = short

    def generate(self, *args: Any, **kwargs: Any) -> Timings:
        timings = super().generate(*args, **kwargs)
        tokens = 8 if self.short > 0 else 16
        self.short -= 1
        return replace(timings, eval_count=tokens, done_reason="stop" if tokens < 16 else "length")


@pytest.mark.parametrize(("short", "requests", "kept"), [(1, 3, 16), (9, 6, 8)])
def test_a_full_length_workload_asks_a_short_reply_again_then_keeps_it(
    short: int, requests: int, kept: int
) -> None:
    """generation(N) is tg N: a reply that ends sooner is asked again (another first line),
    up to 3 requests; a plain workload keeps it at once (and the summary names it)."""
    client = ShortThenFull(short)
    runner = SweepRunner(client, StubServer([0.0] * 20), SERVER, TWO_CPUS)
    full = replace(WORKLOAD, num_predict=16, full_length=True)
    sweep = runner.run(full, MODEL, [1], 1)
    # the warm-up's short reply is asked again as well; then the round's
    assert len(client.requests) == requests
    assert [s.timings.eval_count for s in sweep[1].samples] == [kept]
    plain = ShortThenFull(5)
    runner = SweepRunner(plain, StubServer([0.0] * 20), SERVER, TWO_CPUS)
    sweep = runner.run(replace(full, full_length=False), MODEL, [1], 1)
    assert len(plain.requests) == 2 and sweep[1].samples[0].timings.eval_count == 8
