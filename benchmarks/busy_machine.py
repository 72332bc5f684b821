"""Verdicts, retakes and wall time on a quiet machine and beside a busy neighbour.

Runs real sweeps against the embedded Ollama (Gemma 3 270M) through pytest, each
scenario twice: on a quiet machine, and with one core kept busy by a process in
a session of its own (as another service or CI job would be). Prints per run the
test outcome, each check's outcome, the samples set aside and the time waited
per thread count, and the wall time; then how much longer the busy runs took.

    .venv/bin/python benchmarks/busy_machine.py [--rounds 5] [--quiet-wait 10]

The 1-CPU-quota scenario needs a writable cgroup v1 cpu controller (root).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pytest_ollama_cpu.embedded import (  # noqa: E402
    CGROUP_CPU,
    MODEL_NAME,
    EmbeddedServer,
    cpu_quota,
    running,
)

HEALTHY = """
import pytest

@pytest.mark.threads(1, {cpus}, min_efficiency=0.3, min_utilization=0.7)
def test_sweep(ollama_cpu):
    ollama_cpu.generate("Explain what a CPU cache is.")
"""

BASELINE = """
import pytest

@pytest.mark.threads(1, {cpus})
def test_sweep(ollama_cpu):
    ollama_cpu.generate("Explain what a CPU cache is.")
"""

CGROUP = CGROUP_CPU


@contextlib.contextmanager
def neighbour(on: bool) -> Iterator[None]:
    if not on:
        yield
        return
    code = "import time\nend = time.monotonic() + 900\nwhile time.monotonic() < end: pass"
    process = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    time.sleep(0.5)
    try:
        yield
    finally:
        process.kill()
        process.wait()


@contextlib.contextmanager
def quota(server: EmbeddedServer, cpus: float | None) -> Iterator[None]:
    if cpus is None:
        yield
        return
    assert server.process is not None
    with cpu_quota(server.process.pid, cpus):
        yield


def pytest_run(
    folder: Path, server: EmbeddedServer, args: argparse.Namespace, *extra: str
) -> dict[str, object]:
    out = folder / "run.json"
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "--ollama-cpu",
        f"--ollama-cpu-host={server.host}",
        f"--ollama-cpu-model={MODEL_NAME}",
        f"--ollama-cpu-rounds={args.rounds}",
        f"--ollama-cpu-quiet-wait={args.quiet_wait}",
        f"--ollama-cpu-json={out}",
        *extra,
    ]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=folder, capture_output=True, text=True)
    wall = time.perf_counter() - started
    data = json.loads(out.read_text())
    (sweep,) = data["sweeps"]
    verdict = sweep["verdict"] or {}
    regressions = [line for line in done.stdout.splitlines() if "REGRESSION" in line]
    busy_rows = [line for line in done.stdout.splitlines() if "busy: not compared" in line]
    return {
        "exit": done.returncode,
        "checks": [
            f"{c['quantity']}@{c['threads']}={c['outcome']}" for c in verdict.get("checks", [])
        ],
        "aside": {r["threads"]: r["set_aside"] for r in sweep["results"]},
        "waited": {r["threads"]: round(r["waited_seconds"], 1) for r in sweep["results"]},
        "tps": {
            r["threads"]: None
            if r["summary"]["tokens_per_second"] is None
            else round(r["summary"]["tokens_per_second"]["median"], 1)
            for r in sweep["results"]
        },
        "regressions": len(regressions),
        "busy rows": len(busy_rows),
        "wall": round(wall, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quiet-wait", type=float, default=10.0)
    args = parser.parse_args()
    cpus = len(os.sched_getaffinity(0))
    can_quota = (CGROUP / "cpu.cfs_quota_us").exists() and os.access(CGROUP, os.W_OK)
    results: list[tuple[str, bool, dict[str, object]]] = []
    with running(ROOT / ".ollama-embedded") as server, tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "test_healthy.py").write_text(HEALTHY.format(cpus=cpus))
        (folder / "test_base.py").write_text(BASELINE.format(cpus=cpus))
        # warm the model into memory once
        pytest_run(folder, server, args, "test_base.py")
        pytest_run(folder, server, args, "test_base.py", "--ollama-cpu-save=quiet")
        scenarios: list[tuple[str, float | None, tuple[str, ...]]] = [
            ("healthy server", None, ("test_healthy.py",)),
            (
                "baseline (saved quiet) vs now",
                None,
                (
                    "test_base.py",
                    "--ollama-cpu-compare=quiet",
                    "--ollama-cpu-compare-fail=tokens_per_second:10%",
                ),
            ),
        ]
        if can_quota and cpus >= 2:
            scenarios.append(("server in a 1-CPU quota", 1.0, ("test_healthy.py",)))
        for name, cpu_quota, extra in scenarios:
            for busy in (False, True):
                with quota(server, cpu_quota), neighbour(busy):
                    outcome = pytest_run(folder, server, args, *extra)
                results.append((name, busy, outcome))
                print(f"{name:32} {'neighbour' if busy else 'quiet':9} {outcome}", flush=True)
    print()
    print("| scenario | machine | exit | checks | set aside | waited s | tokens/s | wall s |")
    print("|---|---|---|---|---|---|---|---|")
    for name, busy, o in results:
        listed = o["checks"]
        assert isinstance(listed, list)
        checks = ", ".join(listed) or f"{o['regressions']} regressions, {o['busy rows']} busy rows"
        print(
            f"| {name} | {'neighbour' if busy else 'quiet'} | {o['exit']} | {checks} | "
            f"{o['aside']} | {o['waited']} | {o['tps']} | {o['wall']} |"
        )
    print()
    quiet = {name: o["wall"] for name, busy, o in results if not busy}
    for name, busy, o in results:
        if busy:
            ratio = float(o["wall"]) / float(quiet[name])  # type: ignore[arg-type]
            print(f"{name}: busy / quiet wall time = {ratio:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
