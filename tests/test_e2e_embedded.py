"""``pytest-ollama-cpu embedded`` and ``embedded.running`` on the genuine Ollama: loopback
only, a clear refusal of a taken port, and no server or runner left behind however
the command is stopped."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from pytest_ollama_cpu.embedded import MODEL_NAME, EmbeddedServer, check_port, free_port

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
EMBEDDED_ROOT = ROOT / ".ollama-embedded"


def cli(*args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pytest_ollama_cpu.cli",
        "embedded",
        "--root",
        str(EMBEDDED_ROOT),
        *args,
    ]


def load_a_runner(port: int) -> None:
    httpx.post(
        f"http://127.0.0.1:{port}/api/generate",
        json={"model": MODEL_NAME, "prompt": "Hi.", "stream": False, "options": {"num_predict": 2}},
        timeout=120,
    ).raise_for_status()


def ollama_processes(pid: int) -> list[psutil.Process]:
    """The server and runners under ``pid`` (the command's process)."""
    return [p for p in psutil.Process(pid).children(recursive=True) if "ollama" in p.name()]


def gone(process: psutil.Process) -> bool:
    try:
        return bool(process.status() == psutil.STATUS_ZOMBIE)  # psutil is untyped: Any
    except psutil.NoSuchProcess:
        return True


def wait_gone(processes: list[psutil.Process], seconds: float = 30.0) -> list[psutil.Process]:
    """The processes still there after ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not all(gone(p) for p in processes):
        time.sleep(0.2)
    return [p for p in processes if not gone(p)]


@pytest.fixture
def serving(embedded_ollama: EmbeddedServer) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """``pytest-ollama-cpu embedded --port P`` serving, with a runner loaded; stopped
    (by its pid) whatever the test did. The session's server provisioned the root."""
    port = free_port()
    process = subprocess.Popen(
        cli("--port", str(port)), stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        assert process.stderr is not None
        lines = [process.stderr.readline() for _ in range(2)]
        assert "press Ctrl-C to stop it" in lines[-1], lines
        load_a_runner(port)
        yield process, port
    finally:
        left = ollama_processes(process.pid) if process.poll() is None else []
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)
        for child in left:
            if not gone(child):
                child.kill()
        if process.stderr is not None:
            process.stderr.close()


def test_the_server_and_its_runner_listen_on_loopback_only(
    serving: tuple[subprocess.Popen[str], int],
) -> None:
    process, port = serving
    processes = ollama_processes(process.pid)
    assert len(processes) == 2, processes  # the server and the runner it started
    listening = [
        (p.name(), c.laddr)
        for p in processes
        for c in _listed_connections(p)
        if c.status == psutil.CONN_LISTEN
    ]
    assert port in {addr.port for _, addr in listening}, listening
    assert {addr.ip for _, addr in listening} == {"127.0.0.1"}, listening


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGKILL])
def test_stopping_the_command_leaves_no_ollama_behind(
    serving: tuple[subprocess.Popen[str], int], stop: signal.Signals
) -> None:
    process, port = serving
    processes = ollama_processes(process.pid)
    assert len(processes) == 2, processes
    os.kill(process.pid, stop)
    status = process.wait(timeout=60)
    assert status == (-stop if stop == signal.SIGKILL else 0)
    # a SIGKILL cannot be caught: the server is sent SIGTERM by the kernel as its
    # starter dies (PR_SET_PDEATHSIG), and stops its runner itself
    assert not wait_gone(processes), processes
    check_port(port)  # free again


def test_a_command_is_passed_the_stop_signal_and_its_status_returned(
    embedded_ollama: EmbeddedServer, tmp_path: Path
) -> None:
    said = tmp_path / "said"
    code = (
        "import os, signal, sys, time\n"
        f"def stop(signum, frame):\n    open({str(said)!r}, 'w').write(str(signum)); sys.exit(5)\n"
        "signal.signal(signal.SIGTERM, stop)\n"
        "print(os.environ['OLLAMA_HOST'], flush=True)\n"
        "time.sleep(120)\n"
    )
    process = subprocess.Popen(
        cli("--", sys.executable, "-c", code),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        host = process.stdout.readline().strip()
        processes = ollama_processes(process.pid)
        os.kill(process.pid, signal.SIGTERM)
        assert process.wait(timeout=60) == 5
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()
    assert said.read_text() == str(int(signal.SIGTERM))
    assert not wait_gone(processes), processes
    check_port(int(host.rsplit(":", 1)[1]))


def test_a_port_taken_by_another_ollama_is_refused_not_shared(
    embedded_ollama: EmbeddedServer,
) -> None:
    """Before, the start was answered by the server already there, and the command ran
    against it: a test run would have measured another server than the one started."""
    assert embedded_ollama.process is not None
    result = subprocess.run(
        cli("--port", str(embedded_ollama.port), "--", sys.executable, "-c", "print('RAN')"),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 3, result
    assert "RAN" not in result.stdout
    assert (
        f"port {embedded_ollama.port} on 127.0.0.1 is already in use by "
        f"{embedded_ollama.installation.executable} serve (pid {embedded_ollama.process.pid}). "
        "Stop that, or pick another port (pytest-ollama-cpu embedded --port N), or leave "
        "--port out for a free one"
    ) in result.stderr, result.stderr


def test_a_port_taken_by_anything_else_is_refused_with_the_way_out(
    embedded_ollama: EmbeddedServer,
) -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))  # every address: 127.0.0.1 too
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            cli("--port", str(port)),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode == 3, result
    assert f"port {port} on 127.0.0.1 is already in use by " in result.stderr, result.stderr
    assert f"(pid {os.getpid()})" in result.stderr
    assert "--port N" in result.stderr


def test_a_runner_whose_server_was_killed_is_stopped_by_the_next_start(
    serving: tuple[subprocess.Popen[str], int],
) -> None:
    """The server and its starter killed at once (SIGKILL: nothing runs on the way
    out, the server cannot stop its runner): the runner lives on, holding memory and a
    port; the next start stops it."""
    process, _ = serving
    processes = ollama_processes(process.pid)
    server = next(p for p in processes if p.cmdline()[1:2] == ["serve"])
    runner = next(p for p in processes if p.cmdline()[1:2] == ["runner"])
    process.send_signal(signal.SIGSTOP)  # so that it cannot stop the runner itself
    server.kill()
    assert not wait_gone([server], 10)
    process.kill()
    process.wait(timeout=30)
    time.sleep(1)
    assert not gone(runner), "nothing was left behind: the case is not tested"
    result = subprocess.run(
        cli("--", sys.executable, "-c", "pass"),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert not wait_gone([runner], 10)


def _listed_connections(process: psutil.Process) -> list[Any]:
    """The process's inet connections: net_connections from psutil 6.0 on, connections
    before it (the package allows psutil 5.9)."""
    listed = getattr(process, "net_connections", None) or process.connections
    return list(listed(kind="inet"))
