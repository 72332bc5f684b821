import subprocess
import sys

import psutil

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
