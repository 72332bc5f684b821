"""Ctrl-C in the middle of a sweep, on the genuine Ollama: the server gets its CPUs back
(every process of its tree, the runner started while it was confined too), and the
JSON file is either whole or not there."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from pytest_ollama_cpu.embedded import MODEL_NAME, EmbeddedServer

pytestmark = pytest.mark.e2e


def thread_masks(pid: int) -> dict[tuple[int, int], set[int]]:
    """(pid, thread id) -> CPU affinity, over the server's whole process tree."""
    masks: dict[tuple[int, int], set[int]] = {}
    server = psutil.Process(pid)
    for process in [server, *server.children(recursive=True)]:
        try:
            for thread in process.threads():
                masks[(process.pid, thread.id)] = os.sched_getaffinity(thread.id)
        except (psutil.Error, ProcessLookupError):
            continue
    return masks


def runners(pid: int) -> list[psutil.Process]:
    found = []
    for child in psutil.Process(pid).children(recursive=True):
        try:  # a runner replaced at a change of thread count may be gone, or a zombie
            if "runner" in child.cmdline()[1:2]:
                found.append(child)
        except psutil.Error:
            continue
    return found


@pytest.fixture
def two_cpus(
    embedded_ollama: EmbeddedServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> int:
    assert embedded_ollama.process is not None
    pid = embedded_ollama.process.pid
    if len(os.sched_getaffinity(pid)) < 2:
        pytest.skip("needs two CPUs: the sweep confines the server to one of them")
    # locks of this test only: another run's sweeps on this machine would make it wait
    monkeypatch.setenv("PYTEST_OLLAMA_CPU_LOCK_DIR", str(tmp_path / "locks"))
    return pid


def test_ctrl_c_mid_sweep_gives_every_server_process_its_cpus_back(
    pytester: pytest.Pytester, embedded_ollama: EmbeddedServer, two_cpus: int
) -> None:
    server_pid = two_cpus
    everything = os.sched_getaffinity(server_pid)
    assert all(mask == everything for mask in thread_masks(server_pid).values())
    before = {p.pid for p in runners(server_pid)}
    pytester.makepyfile(
        """
import pytest

@pytest.mark.threads(1, rounds=1)
def test_first(ollama_cpu):
    ollama_cpu.generate("Say hello.")

@pytest.mark.threads(1, 2, rounds=40)
def test_interrupted(ollama_cpu):
    # another context size than the other tests': a runner of its own, started while
    # the server is confined
    ollama_cpu.generate("Explain what a CPU cache is.", options={"num_ctx": 1024})
"""
    )
    out = pytester.path / "run.json"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "--ollama-cpu",
            f"--ollama-cpu-host={embedded_ollama.host}",
            f"--ollama-cpu-model={MODEL_NAME}",
            "--ollama-cpu-num-predict=32",
            "--ollama-cpu-cpus=0",
            f"--ollama-cpu-json={out}",
        ],
        cwd=pytester.path,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        # mid-sweep: the new runner is up, confined, and generating
        deadline = time.monotonic() + 120
        new: list[psutil.Process] = []
        while time.monotonic() < deadline and process.poll() is None:
            new = [
                p
                for p in runners(server_pid)
                if p.pid not in before and "1024" in p.cmdline() and p.cpu_affinity() == [0]
            ]
            if new:
                break
            time.sleep(0.2)
        assert new, "no runner was started for the interrupted sweep"
        time.sleep(1.5)
        assert process.poll() is None, "the sweep ended before it could be interrupted"
        os.kill(process.pid, signal.SIGINT)
        output, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    text = output.decode(errors="replace")
    assert process.returncode == pytest.ExitCode.INTERRUPTED, text
    assert "KeyboardInterrupt" in text, text
    # every thread of every process of the server may use every CPU again, the runner
    # that was started while confined too (if it is still loaded)
    masks = thread_masks(server_pid)
    assert new[0].pid in {pid for pid, _ in masks}, "the runner is gone: nothing was checked"
    pinned = {key: mask for key, mask in masks.items() if mask != everything}
    assert not pinned, f"still confined after Ctrl-C: {pinned}\n{text}"
    # the JSON file is whole, with the sweep that finished; no temporary file is left
    data = json.loads(out.read_text())
    assert [s["test"].split("::")[-1] for s in data["sweeps"]] == ["test_first"], text
    assert sorted(p.name for p in pytester.path.iterdir() if "run" in p.name) == ["run.json"]


KILLED_SUITE = """
import os
import signal
import threading
from pathlib import Path

import pytest

@pytest.mark.threads(1, rounds=40)
def test_dies(ollama_cpu):
    died = Path(__file__).with_name("died")
    if not died.exists():
        died.touch()
        threading.Timer(5.0, os.kill, (os.getpid(), signal.SIGKILL)).start()
    ollama_cpu.generate("Explain what a CPU cache is.", options={"num_ctx": 768})

@pytest.mark.threads(1, rounds=1)
def test_after(ollama_cpu):
    ollama_cpu.generate("Say hello.")
"""


def pytest_args(server: EmbeddedServer, *args: str) -> list[str]:
    return [
        "-p",
        "no:cacheprovider",
        "--ollama-cpu",
        f"--ollama-cpu-host={server.host}",
        f"--ollama-cpu-model={MODEL_NAME}",
        "--ollama-cpu-num-predict=32",
        *args,
    ]


def test_a_worker_killed_while_confining_is_undone_by_the_next_sweep(
    pytester: pytest.Pytester, embedded_ollama: EmbeddedServer, two_cpus: int
) -> None:
    everything = os.sched_getaffinity(two_cpus)
    pytester.makepyfile(KILLED_SUITE)
    out = pytester.path / "run.json"
    result = pytester.runpytest_subprocess(
        *pytest_args(embedded_ollama, "-n", "1", "--ollama-cpu-cpus=0", f"--ollama-cpu-json={out}"),
        timeout=300,
    )
    result.stdout.fnmatch_lines(["*worker 'gw0' crashed while running*test_dies*"])
    result.assert_outcomes(passed=1, failed=1)
    assert [s["test"].split("::")[-1] for s in json.loads(out.read_text())["sweeps"]] == [
        "test_after"
    ]
    pinned = {k: m for k, m in thread_masks(two_cpus).items() if m != everything}
    assert not pinned, f"still confined after the next sweep: {pinned}"


def test_a_run_killed_while_confining_leaves_the_next_run_the_whole_machine(
    pytester: pytest.Pytester, embedded_ollama: EmbeddedServer, two_cpus: int
) -> None:
    everything = os.sched_getaffinity(two_cpus)
    pytester.makepyfile(KILLED_SUITE)
    killed = pytester.runpytest_subprocess(
        *pytest_args(embedded_ollama, "-p", "no:xdist", "--ollama-cpu-cpus=0", "-k", "test_dies"),
        timeout=300,
    )
    assert killed.ret == -signal.SIGKILL
    # a killed process undoes nothing: the server is left confined, for now
    assert os.sched_getaffinity(two_cpus) == {0}
    out = pytester.path / "run.json"
    after = pytester.runpytest_subprocess(
        *pytest_args(
            embedded_ollama, "-p", "no:xdist", "-k", "test_after", f"--ollama-cpu-json={out}"
        ),
        timeout=300,
    )
    after.assert_outcomes(passed=1)
    assert json.loads(out.read_text())["machine"]["affinity"] == sorted(everything)
    pinned = {k: m for k, m in thread_masks(two_cpus).items() if m != everything}
    assert not pinned, f"still confined after the next run: {pinned}"
