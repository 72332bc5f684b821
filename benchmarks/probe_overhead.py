"""What does measuring cost? The CPU probe's own overhead, against the real Ollama.

Each measured request takes a snapshot of the server's process tree before and
after, and reads the runner's command line. This prints, in one run on the
embedded Ollama with Gemma 3 270M:

- the wall and CPU time of one probe (snapshot + runner lookup), and
- median tokens/s at each thread count with the probe on and off, interleaved,
  and their ratio: the probe must not slow generation down.

    .venv/bin/python benchmarks/probe_overhead.py [--rounds 8] [--num-predict 64]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from pytest_ollama_cpu.client import OllamaClient
from pytest_ollama_cpu.connection import ServerFacts
from pytest_ollama_cpu.embedded import MODEL_NAME, running
from pytest_ollama_cpu.machine import read_machine_facts
from pytest_ollama_cpu.processes import ServerProcess, locate_server
from pytest_ollama_cpu.sampler import SweepRunner, Workload

ROOT = Path(__file__).resolve().parent.parent


def probe_cost(server: ServerProcess, repeat: int = 200) -> tuple[float, float]:
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for _ in range(repeat):
        server.snapshot()
        server.runner()
    return (
        (time.perf_counter() - wall0) / repeat,
        (time.process_time() - cpu0) / repeat,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--num-predict", type=int, default=64)
    args = parser.parse_args()

    with running(ROOT / ".ollama-embedded") as embedded:
        client = OllamaClient(embedded.host, timeout=300)
        located = locate_server(embedded.host)
        assert located.server is not None, located.reason
        machine = read_machine_facts(located.server.pid)
        facts = ServerFacts(embedded.host, client.version(), True, located.reason)
        model = client.model_facts(MODEL_NAME)
        workload = Workload(
            "generate", MODEL_NAME, args.num_predict, prompt="Explain what a CPU cache is."
        )
        with_probe = SweepRunner(client, located.server, facts, machine)
        without_probe = SweepRunner(client, None, facts, machine)

        wall, cpu = probe_cost(located.server)
        print(f"machine: {machine.describe()}")
        print(
            f"one probe (snapshot + runner lookup): {wall * 1e3:.2f} ms wall, "
            f"{cpu * 1e3:.2f} ms CPU; two per request"
        )
        threads = list(range(1, machine.usable_threads + 1))
        on: dict[int, list[float]] = {t: [] for t in threads}
        off: dict[int, list[float]] = {t: [] for t in threads}
        # interleave on/off in blocks so drift hits both alike
        for _ in range(args.rounds):
            for runner, into in ((with_probe, on), (without_probe, off)):
                sweep = runner.run(workload, model, threads, rounds=1)
                for result in sweep:
                    into[result.threads].append(result.tokens_per_second.median)
        print(f"{'threads':>7}  {'probe on tok/s':>14}  {'probe off tok/s':>15}  {'on/off':>6}")
        for t in threads:
            a, b = statistics.median(on[t]), statistics.median(off[t])
            print(f"{t:>7}  {a:>14.2f}  {b:>15.2f}  {a / b:>6.3f}")
        client.close()


if __name__ == "__main__":
    main()
