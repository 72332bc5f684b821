from __future__ import annotations

import contextlib
import importlib
import os
import pkgutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

# Loaded here, before any in-process pytester run: such a run restores sys.modules when
# it ends, and a C extension first loaded inside one (the plugin imports its modules, and
# through them numpy, pydantic's core and scipy, only when it has work) cannot be loaded
# again by the next ("cannot load module more than once per process"). A pytest process
# outside these tests loads each once and keeps it.
import scipy.optimize  # noqa: F401
import scipy.special  # noqa: F401

with contextlib.suppress(ImportError):  # the report extra: drawn inside pytester runs too
    import matplotlib.figure  # noqa: F401
    import matplotlib.style  # noqa: F401

import pytest_ollama_cpu
from pytest_ollama_cpu.client import OllamaClient
from pytest_ollama_cpu.embedded import (
    MODEL_NAME,
    EmbeddedServer,
    EmbeddedUnavailable,
    QuotaUnavailable,
    running,
)
from pytest_ollama_cpu.embedded import cpu_quota as embedded_cpu_quota
from pytest_ollama_cpu.locking import LOCK_DIR_ENV, taking_turns

from .fake_ollama import Behaviour, FakeOllama, SpawnedFakeOllama

# (see above) every module of the plugin, and so numpy, ollama, httpx, psutil
for _module in pkgutil.iter_modules(pytest_ollama_cpu.__path__):
    importlib.import_module(f"pytest_ollama_cpu.{_module.name}")

ROOT = Path(__file__).resolve().parent.parent


#: every environment variable the plugin reads for its settings (options.py, ``env=``)
PLUGIN_ENV = (
    "OLLAMA_HOST",
    "OLLAMA_CPU_MODEL",
    "OLLAMA_CPU_ROUNDS",
    "OLLAMA_CPU_ALPHA",
    "OLLAMA_CPU_ROOFLINE",
)


@pytest.fixture(autouse=True)
def _clean_env(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """No setting leaks in from the shell, and the CPU locks are the test's own.

    A plugin run outside ``e2e`` takes its locks in a folder of its own: with the
    machine-wide folder a fake-server test would wait behind a real sweep on this
    machine (as root, up to an hour). The ``e2e`` tests share one embedded server, so
    they keep the machine-wide folder and take turns on it. The probed-limits cache
    stays shared: probing costs seconds, and the fake server is never probed. A test
    that sets these variables itself does so after this fixture, and wins.
    """
    for name in PLUGIN_ENV:
        monkeypatch.delenv(name, raising=False)
    if request.node.get_closest_marker("e2e") is None:
        monkeypatch.setenv(LOCK_DIR_ENV, str(tmp_path / "locks"))


def run_fake(
    pytester: pytest.Pytester,
    fake: FakeOllama | SpawnedFakeOllama | None,
    *args: str,
    in_subprocess: bool = False,
) -> pytest.RunResult:
    """pytest with the plugin on, measuring ``fake`` (or the host ``args`` name) with
    the model ``tiny``; ``args`` win. ``in_subprocess``: in a pytest process of its own."""
    host = [f"--ollama-cpu-host={fake.host}"] if fake is not None else []
    runner = pytester.runpytest_subprocess if in_subprocess else pytester.runpytest
    return runner("--ollama-cpu", *host, "--ollama-cpu-model=tiny", *args)


def run_behaviour(pytester: pytest.Pytester, behaviour: Behaviour, *args: str) -> pytest.RunResult:
    """``run_fake`` against a fake of its own that behaves as ``behaviour``; the
    requests it answered are in ``behaviour.requests``."""
    with FakeOllama(behaviour) as fake:
        return run_fake(pytester, fake, *args)


@pytest.fixture
def fake_ollama() -> Iterator[FakeOllama]:
    with FakeOllama(Behaviour()) as server:
        yield server


@pytest.fixture(scope="session")
def embedded_ollama() -> Iterator[EmbeddedServer]:
    """The genuine Ollama from PyPI with Gemma 3 270M, started once per run.

    Skipped where it cannot run, unless OLLAMA_CPU_REQUIRE_E2E=1 (make test, CI),
    where that is a failure: the end-to-end tests must run there.
    """
    try:
        with running(ROOT / ".ollama-embedded") as server:
            yield server
    except EmbeddedUnavailable as exc:
        if os.environ.get("OLLAMA_CPU_REQUIRE_E2E") == "1":
            pytest.fail(f"the embedded Ollama is required here but cannot run: {exc}")
        pytest.skip(f"the embedded Ollama cannot run here: {exc}")


def run_embedded(pytester: pytest.Pytester, server: EmbeddedServer, *args: str) -> pytest.RunResult:
    """pytest with the plugin on, measuring ``server`` with short sweeps; ``args`` win."""
    return pytester.runpytest(
        "--ollama-cpu",
        f"--ollama-cpu-host={server.host}",
        f"--ollama-cpu-model={MODEL_NAME}",
        "--ollama-cpu-num-predict=32",
        "--ollama-cpu-rounds=2",
        *args,
    )


def assert_one_section_per_server(
    result: pytest.RunResult, servers: list[EmbeddedServer], out: Path
) -> None:
    """What the plugin promises of many machines: each worker measured its own server,
    the summary has a section per server, the JSON a ``machines`` entry per server."""
    import json

    result.assert_outcomes(passed=2)
    hosts = sorted(s.host for s in servers)
    result.stdout.fnmatch_lines(
        ["ollama-cpu: measured by the pytest-xdist workers, each against its own server*"]
    )
    groups = [line for line in result.stdout.lines if line.startswith("--- machine ")]
    assert sorted(line.split("server ")[1].split(" ")[0] for line in groups) == hosts
    data = json.loads(out.read_text())
    assert data["machine"] is None
    assert sorted(m["server"]["host"] for m in data["machines"]) == hosts
    assert sorted(tuple(m["machine"]["affinity"]) for m in data["machines"]) == sorted(
        (s.cpus or ()) for s in servers
    )
    assert sorted(s["server"]["host"] for s in data["sweeps"]) == hosts


class Neighbour:
    """A busy process in a session of its own, as another service or CI job would be.

    Linux autogroups share CPU between sessions first: a busy loop in the test's
    own session would barely compete with a server started in another one. It
    ends by itself after ``seconds`` and is stopped by its pid.
    """

    def __init__(self, seconds: float = 600.0) -> None:
        code = (
            f"import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end: pass"
        )
        self.process = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)

    #: cores of load that are this neighbour's but not in ``pids`` (see ``_AlreadyBusy``)
    unaccounted = 0.0

    @property
    def pids(self) -> tuple[int, ...]:
        return (self.process.pid,)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)


def assert_usage_error(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    env: dict[str, str],
    ini: str,
    message: str,
) -> None:
    """Settings from the command line, environment and ini file stop a plain run before
    it starts, with ``message``."""
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    if ini:
        pytester.makeini(f"[pytest]\n{ini}\n")
    pytester.makepyfile("def test_plain():\n    pass\n")
    result = pytester.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: {message}"])


def _machine_busy() -> float:
    """CPU seconds the whole machine has been busy (not idle, not waiting on I/O)."""
    times = psutil.cpu_times()
    return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))


def busy_cores(seconds: float = 1.0) -> float:
    """Cores kept busy on this machine, watched for ``seconds``."""
    before = _machine_busy()
    time.sleep(seconds)
    return (_machine_busy() - before) / seconds


class _AlreadyBusy(Neighbour):
    """Stands for a neighbour that is already there (make test beside a busy process)."""

    unaccounted = 1.0  # the busy process found: a core, whose pid is not known

    def __init__(self) -> None:  # starts nothing
        pass

    @property
    def pids(self) -> tuple[int, ...]:
        return ()

    def stop(self) -> None:
        pass


def one_busy_core() -> Neighbour:
    """A neighbour, unless another process already keeps a core busy: the tests that
    use it are about one core taken, and two would leave a one-thread server none."""
    if busy_cores() >= 0.6:
        return _AlreadyBusy()
    busy = Neighbour()
    time.sleep(0.5)  # let the scheduler place it before anything is measured
    return busy


@pytest.fixture
def neighbour() -> Iterator[Neighbour]:
    """One core kept busy by another session's process for the length of the test."""
    busy = one_busy_core()
    try:
        yield busy
    finally:
        busy.stop()


@contextlib.contextmanager
def cpu_quota(pid: int, cpus: float) -> Iterator[Path]:
    """``embedded.cpu_quota``, skipping the test where no cgroup quota can be set."""
    try:
        with embedded_cpu_quota(pid, cpus) as group:
            yield group
    except QuotaUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture
def cpus(embedded_ollama: EmbeddedServer) -> int:
    """The embedded server's CPUs, for tests that need two: one for the server's thread
    and one for a neighbour, or one to confine the server to."""
    assert embedded_ollama.process is not None
    count = len(psutil.Process(embedded_ollama.process.pid).cpu_affinity())
    if count < 2:
        pytest.skip(f"needs two CPUs for the server; it may use {count}")
    return count


# -- machine properties, measured before a test relies on one ------------------------
#
# An end-to-end test asserts what the plugin promises on any machine. Where it also
# needs a property of this machine (prefill pays for threads, a core left spare is
# free, nothing else runs), it measures that property with plain requests or process
# times, apart from the plugin's own statistics, and skips with the measured figure
# when the property does not hold here.

#: A prompt of about 260 tokens: its prefill is long enough to time.
LONG_PROMPT = (
    "The processor reads data from memory through a hierarchy of caches. " * 20
    + "\nExplain the text above."
)


def server_pid(server: EmbeddedServer) -> int:
    assert server.process is not None
    return server.process.pid


def _tree_cpu(pid: int) -> float:
    """CPU seconds of ``pid`` and its descendants, those already ended and reaped
    included (a process's ``children_*`` times hold them)."""
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            t = process.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
    return total


class OtherLoad:
    """Cores that processes other than ``pids`` (and their descendants) kept busy while
    the block ran: the machine's busy time less theirs. Read ``cores`` after the block.

    It is measured apart from the plugin (which reads the same kind of figure per
    sample): a test that expects no load beside its own neighbour checks here whether
    the machine gave it that, and skips saying what it found when it did not."""

    def __init__(self, *pids: int) -> None:
        self.pids = pids
        self.cores = 0.0

    def _own(self) -> float:
        return sum(_tree_cpu(pid) for pid in self.pids)

    def __enter__(self) -> OtherLoad:
        self._started = time.monotonic()
        self._busy, self._theirs = _machine_busy(), self._own()
        return self

    def __exit__(self, *exc: object) -> None:
        wall = max(time.monotonic() - self._started, 1e-9)
        others = (_machine_busy() - self._busy) - (self._own() - self._theirs)
        self.cores = max(0.0, others / wall)


#: cores of load beyond what a test started itself below which the machine gave the
#: test what it planned: nothing else ran
NOTHING_ELSE = 0.05


def skip_where_busy(load: OtherLoad, what: str, neighbour: Neighbour | None = None) -> None:
    """``what`` (the plugin's word that CPUs the test needed were busy) is right only
    where more ran than the test (and its ``neighbour``): skip saying how much, as
    ``load`` measured it apart from the plugin; fail where nothing else ran."""
    beyond = load.cores - (neighbour.unaccounted if neighbour is not None else 0.0)
    beside = " beside its neighbour" if neighbour is not None else ""
    assert beyond >= NOTHING_ELSE, (
        f"{what}, but{beside} other processes kept only {beyond:.2f} cores busy"
    )
    pytest.skip(
        f"the machine was busier than this test plans: {beside.strip() + ', ' if beside else ''}"
        f"other processes kept {beyond:.2f} cores busy (measured over the run apart from "
        f"the plugin), so {what}, rightly"
    )


def busy_in(result: pytest.RunResult) -> bool:
    """Whether the run left a thread count to a busy machine: a check (``BUSY``), a
    comparison row (``busy: not compared``) or the recommendation (``not compared: 2
    threads (the machine was busy)``) says so."""
    return any(
        line.lstrip().startswith("BUSY ")
        or "busy: not compared" in line
        or "the machine was busy" in line
        for line in result.stdout.lines
    )


def run_quiet(
    pytester: pytest.Pytester,
    server: EmbeddedServer,
    *args: str,
    run: Callable[..., pytest.RunResult] = run_embedded,
) -> pytest.RunResult:
    """``run`` (``run_embedded``), for a test whose assertions need every thread count
    measured: where the run left one to a busy machine, the test is skipped saying how
    busy the machine was, or fails where nothing else ran (``skip_where_busy``)."""
    with OtherLoad(os.getpid(), server_pid(server)) as load:
        result = run(pytester, server, *args)
    if busy_in(result):
        skip_where_busy(load, "the plugin left a thread count undecided (busy)")
    return result


def _prompt_rate(client: OllamaClient, threads: int, prompt: str) -> float:
    timings = client.generate(MODEL_NAME, prompt, {"num_thread": threads, "num_predict": 1})
    return timings.prompt_eval_count / timings.prompt_eval_duration


def prompt_rates(server: EmbeddedServer, plan: list[int], prompt: str = LONG_PROMPT) -> list[float]:
    """Prefill tokens/s of one plain request per entry of ``plan`` (thread counts), each
    after a warm-up where the count changes, with a unique first line (no prompt cache
    hits). The plugin's CPU locks are held: no sweep runs beside it."""
    import random

    client = OllamaClient(server.host, timeout=120)
    rng = random.Random()
    rates: list[float] = []
    try:
        with taking_turns(server.host, sorted(os.sched_getaffinity(0)), timeout=600):
            loaded = None
            for threads in plan:
                if threads != loaded:
                    _prompt_rate(client, threads, "warm up")
                    loaded = threads
                rates.append(_prompt_rate(client, threads, f"{rng.random()}\n{prompt}"))
    finally:
        client.close()
    return rates


@pytest.fixture(scope="session")
def prefill_scaling(embedded_ollama: EmbeddedServer) -> float:
    """How many times faster 2 threads process a long prompt than 1 here, from plain
    requests in an A-B-A order (4 each at 1, 2, 1 thread), so that drift cancels.
    Prefill is compute-bound and scales 1.4-2x on the VMs seen so far (the 1-thread
    rate spreads 160-220 tokens/s between requests on one), but a machine whose two CPUs
    are one core's siblings need not: tests of prefill thresholds ask."""
    import statistics

    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two CPUs")
    rates = prompt_rates(embedded_ollama, [1] * 4 + [2] * 4 + [1] * 4)
    one = statistics.median(rates[:4] + rates[8:])
    return statistics.median(rates[4:8]) / one


def needs_prefill_scaling(measured: float, at_least: float) -> None:
    """Skip, with the measured figure, where prefill does not scale enough here."""
    if measured < at_least:
        pytest.skip(
            f"prefill scales {measured:.2f}x from 1 to 2 threads on this machine (plain "
            f"requests, 4 at 1, 2, 1 thread in turn); this test needs {at_least:g}x or more"
        )


def neighbour_slowdown(
    server: EmbeddedServer, neighbour: Neighbour, threads: int = 1, pairs: int = 5
) -> float:
    """How much slower ``threads`` threads generate while ``neighbour`` runs than while
    it is paused (SIGSTOP), interleaved pair by pair in random order: the share lost,
    0.1 for 10%. Whether a core the server does not use is free is the machine's
    property: 1% on one VM, 4-17% on another (shared caches and memory)."""
    import random
    import statistics

    if isinstance(neighbour, _AlreadyBusy):
        pytest.skip("the busy process was not this test's: it cannot be paused to compare")
    client = OllamaClient(server.host, timeout=120)
    rng = random.Random()
    ratios = []

    def rate(running: bool) -> float:
        os.kill(neighbour.process.pid, signal.SIGCONT if running else signal.SIGSTOP)
        time.sleep(0.2)
        t = client.generate(
            MODEL_NAME,
            f"{rng.random()}\nExplain what a CPU cache is.",
            {"num_thread": threads, "num_predict": 32, "seed": 42, "temperature": 0.0},
        )
        return t.eval_count / t.eval_duration

    try:
        with taking_turns(server.host, sorted(os.sched_getaffinity(0)), timeout=600):
            rate(False)  # warm-up: loads the runner at this thread count
            for _ in range(pairs):
                order = [True, False]
                rng.shuffle(order)
                got = {running: rate(running) for running in order}
                ratios.append(got[True] / got[False])
    finally:
        os.kill(neighbour.process.pid, signal.SIGCONT)
        client.close()
    return 1.0 - statistics.median(ratios)
