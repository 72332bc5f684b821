import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from pytest_ollama_cpu.locking import (
    clear_confinement,
    confinement_note,
    left_confined,
    note_confinement,
)
from pytest_ollama_cpu.processes import (
    CpuSnapshot,
    ServerProcess,
    locate_server,
    threads_from_cmdline,
)


def test_threads_from_the_runner_command_line():
    assert threads_from_cmdline(["ollama", "runner", "--model", "m", "--threads", "4"]) == 4
    assert threads_from_cmdline(["llama-server", "-t", "8", "-m", "x"]) == 8
    assert threads_from_cmdline(["llama-server", "--threads=3"]) == 3
    assert threads_from_cmdline(["ollama_llama_server", "--model", "m"]) is None
    assert threads_from_cmdline(["x", "--threads"]) is None


def test_cpu_use_sums_the_tree_and_separates_the_rest():
    before = CpuSnapshot(10.0, {(1, 1.0): 5.0, (2, 2.0): 1.0, (3, 3.0): 0.5}, 100.0)
    # pid 3 exited, pid 4 started during the interval
    after = CpuSnapshot(12.0, {(1, 1.0): 5.5, (2, 2.0): 3.0, (4, 4.0): 0.5}, 104.0)
    use = ServerProcess.cpu_use(before, after)
    assert use.wall == 2.0
    assert use.server == 0.5 + 2.0 + 0.5
    assert use.other == 1.0
    assert use.lost_processes == 1


def test_a_reused_pid_is_a_new_process():
    before = CpuSnapshot(0.0, {(7, 1.0): 9.0}, 0.0)
    after = CpuSnapshot(1.0, {(7, 2.0): 0.25}, 1.0)
    assert ServerProcess.cpu_use(before, after).server == 0.25


def test_watching_a_real_process_tree():
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import subprocess, sys, time;"
            "c = subprocess.Popen([sys.executable, '-c', 'while True: pass', 'runner', "
            "'--threads', '1']); time.sleep(30)",
        ]
    )
    try:
        server = ServerProcess(parent.pid)
        deadline = psutil.time.time() + 10
        while len(psutil.Process(parent.pid).children()) == 0 and psutil.time.time() < deadline:
            psutil.time.sleep(0.05)
        before = server.snapshot()
        psutil.time.sleep(0.5)
        use = server.cpu_use(before, server.snapshot())
        # the busy child keeps about one core busy
        assert 0.25 < use.server / use.wall < 1.3
        runner = server.runner()
        assert runner is not None and runner.threads == 1
    finally:
        for child in psutil.Process(parent.pid).children(recursive=True):
            child.kill()
        parent.kill()
        parent.wait()


def test_remote_servers_are_not_watched():
    located = locate_server("http://192.0.2.10:11434")
    assert located.server is None
    assert "not on this machine" in located.reason


def test_a_port_forwarder_is_not_taken_for_the_server(monkeypatch):
    import pytest_ollama_cpu.processes as processes

    monkeypatch.setattr(processes, "_listening_pid", lambda port: 4242)
    monkeypatch.setattr(processes, "_looks_like_ollama", lambda pid: False)
    monkeypatch.setattr(processes, "_name", lambda pid: "docker-proxy")
    monkeypatch.setattr(processes, "_ollama_serve_pids", lambda: [])
    located = locate_server("http://127.0.0.1:11434")
    assert located.server is None
    assert "port 11434 is served by docker-proxy (pid 4242), not by an Ollama server" in (
        located.reason
    )


STARTS_A_RUNNER_ON_CUE = (
    "import os, subprocess, sys, time\n"
    "while not os.path.exists(sys.argv[1]):\n"
    "    time.sleep(0.02)\n"
    "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)', 'runner'])\n"
    "time.sleep(60)\n"
)

two_cpus = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")


def masks(pid: int) -> set[frozenset[int]]:
    process = psutil.Process(pid)
    return {
        frozenset(os.sched_getaffinity(thread.id))
        for member in [process, *process.children(recursive=True)]
        for thread in member.threads()
    }


def runner_started_on_cue(cue: Path) -> tuple[subprocess.Popen[bytes], ServerProcess]:
    parent = subprocess.Popen([sys.executable, "-c", STARTS_A_RUNNER_ON_CUE, str(cue)])
    return parent, ServerProcess(parent.pid)


def wait_for_runner(pid: int) -> psutil.Process:
    deadline = time.monotonic() + 10
    while not psutil.Process(pid).children() and time.monotonic() < deadline:
        time.sleep(0.02)
    (runner,) = psutil.Process(pid).children()
    return runner


@two_cpus
def test_restoring_reaches_a_runner_started_while_confined(tmp_path: Path) -> None:
    parent, server = runner_started_on_cue(tmp_path / "go")
    try:
        everything = frozenset(os.sched_getaffinity(parent.pid))
        previous = server.confine([0])
        (tmp_path / "go").touch()
        runner = wait_for_runner(parent.pid)
        assert runner.cpu_affinity() == [0]  # inherited from its confined server
        server.restore(previous)
        assert masks(parent.pid) == {everything}
        assert server.cpus == everything
    finally:
        for child in psutil.Process(parent.pid).children(recursive=True):
            child.kill()
        parent.kill()
        parent.wait()


@two_cpus
def test_a_confinement_left_by_a_killed_run_is_undone_from_its_note(tmp_path: Path) -> None:
    parent, server = runner_started_on_cue(tmp_path / "go")
    (tmp_path / "go").touch()
    wait_for_runner(parent.pid)
    everything = set(os.sched_getaffinity(parent.pid))
    note = confinement_note(tmp_path, server.pid, server.started)
    killed = subprocess.Popen([sys.executable, "-c", "pass"])  # stands for the killed run
    killed.wait()
    try:
        server.confine([0])  # what the killed run did, and never undid
        note.write_text(
            f'{{"pid": {killed.pid}, "started": 1.0, "original": {sorted(everything)}, '
            '"confined": [0]}'
        )
        original = left_confined(note, os.sched_getaffinity(parent.pid))
        assert original == everything
        # the next sweep confines and restores: to the mask from before, not to [0]
        previous = server.confine([0], original)
        server.restore(previous)
        assert masks(parent.pid) == {frozenset(everything)}
    finally:
        for child in psutil.Process(parent.pid).children(recursive=True):
            child.kill()
        parent.kill()
        parent.wait()


def test_a_confinement_note_is_only_used_when_its_sweep_is_gone_and_its_mask_unchanged(
    tmp_path: Path,
) -> None:
    note = tmp_path / "confined-1-2.00.json"
    note_confinement(note, {0, 1}, {0})
    assert left_confined(note, {0}) is None  # this process, alive, wrote it
    assert note.exists()
    note.write_text('{"pid": 999999999, "started": 1.0, "original": [0, 1], "confined": [0]}')
    assert left_confined(note, {0}) == {0, 1}
    # the mask was changed since by someone else: theirs stays, the note goes
    assert left_confined(note, {1}) is None
    assert not note.exists()
    note.write_text("{half a note")
    assert left_confined(note, {0}) is None
    clear_confinement(note)
    clear_confinement(note)  # twice: nothing to clear is fine
