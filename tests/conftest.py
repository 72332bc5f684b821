from __future__ import annotations

import contextlib
import importlib
import os
import pkgutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
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
from pytest_ollama_cpu.embedded import (
    MODEL_NAME,
    EmbeddedServer,
    EmbeddedUnavailable,
    QuotaUnavailable,
    running,
)
from pytest_ollama_cpu.embedded import cpu_quota as embedded_cpu_quota
from pytest_ollama_cpu.locking import LOCK_DIR_ENV

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


def busy_cores(seconds: float = 1.0) -> float:
    """Cores kept busy on this machine, watched for ``seconds``."""
    import psutil

    def busy() -> float:
        times = psutil.cpu_times()
        return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))

    before = busy()
    time.sleep(seconds)
    return (busy() - before) / seconds


class _AlreadyBusy(Neighbour):
    """Stands for a neighbour that is already there (make test beside a busy process)."""

    def __init__(self) -> None:  # starts nothing
        pass

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
