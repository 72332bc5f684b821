"""How much time does the adaptive sweep save? Against the real (embedded) Ollama.

For a few threshold scenarios this runs, in one process and one after the other
on the same server:

- the adaptive sweep the plugin uses: ``--rounds`` samples per thread count,
  then more only where a verdict is still open, up to ``--max-rounds``;
- a fixed sweep of ``--max-rounds`` samples per thread count, judged once; or,
  with ``--llama-bench``, a sweep as llama-bench measures generation (tg128): a
  warm-up and 5 repetitions of 128 generated tokens per thread count;

and prints each one's verdict, number of samples and wall time, and the ratio
of wall times. The verdicts should agree; the adaptive one should cost less
wherever the answer is clear.

    .venv/bin/python benchmarks/adaptive_vs_fixed.py [--rounds 3] [--max-rounds 12]
    .venv/bin/python benchmarks/adaptive_vs_fixed.py --llama-bench --rounds 5 \
        --max-rounds 20 --num-predict 64     # the plugin's defaults vs tg128
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from pytest_ollama_cpu.client import OllamaClient
from pytest_ollama_cpu.connection import ServerFacts
from pytest_ollama_cpu.embedded import MODEL_NAME, running
from pytest_ollama_cpu.machine import read_machine_facts
from pytest_ollama_cpu.processes import locate_server
from pytest_ollama_cpu.results import Sweep
from pytest_ollama_cpu.sampler import SweepRunner, Workload
from pytest_ollama_cpu.thresholds import Thresholds
from pytest_ollama_cpu.verdicts import Verdict, decide_adaptively, evaluate

ROOT = Path(__file__).resolve().parent.parent

SCENARIOS = {
    "clear pass (efficiency >= 0.3, utilization >= 0.5)": Thresholds(
        min_efficiency=0.3, min_utilization=0.5
    ),
    "clear fail (speedup >= 2.5)": Thresholds(min_speedup=2.5),
    "near the edge (efficiency >= 0.55)": Thresholds(min_efficiency=0.55),
}


def outcome(verdict: Verdict) -> str:
    return "fail" if verdict.failed else "undecided" if verdict.inconclusive else "pass"


def samples(sweep: Sweep) -> int:
    return sum(len(r.samples) for r in sweep)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-rounds", type=int, default=12)
    parser.add_argument("--num-predict", type=int, default=32)
    parser.add_argument(
        "--llama-bench",
        action="store_true",
        help="compare with llama-bench's tg128 (128 tokens, a warm-up and 5 repetitions)",
    )
    args = parser.parse_args()
    fixed_rounds = 5 if args.llama_bench else args.max_rounds
    fixed_predict = 128 if args.llama_bench else args.num_predict

    with running(ROOT / ".ollama-embedded") as embedded:
        client = OllamaClient(embedded.host, timeout=300)
        located = locate_server(embedded.host)
        machine = read_machine_facts(located.server.pid if located.server else None)
        facts = ServerFacts(embedded.host, client.version(), located.server is not None, "")
        model = client.model_facts(MODEL_NAME)
        runner = SweepRunner(client, located.server, facts, machine)
        workload = Workload(
            "generate", MODEL_NAME, args.num_predict, prompt="Explain what a CPU cache is."
        )
        fixed_workload = Workload(
            "generate", MODEL_NAME, fixed_predict, prompt="Explain what a CPU cache is."
        )
        threads = [1, machine.usable_threads] if machine.usable_threads > 1 else [1, 2]
        print(f"machine: {machine.describe()}")
        print(
            f"threads {threads}: adaptive {args.rounds}..{args.max_rounds} rounds of "
            f"{args.num_predict} tokens vs fixed {fixed_rounds} rounds of {fixed_predict} tokens\n"
        )
        header = (
            f"{'scenario':<52} {'adaptive':>9} {'samples':>7} {'wall s':>7}   "
            f"{'fixed':>9} {'samples':>7} {'wall s':>7}   {'time ratio':>10}"
        )
        print(header)
        for name, thresholds in SCENARIOS.items():
            started = time.perf_counter()
            sweep = runner.run(workload, model, threads, args.rounds)

            def take_more(more: dict[int, int], sweep: Sweep = sweep) -> None:
                runner.extend(sweep, workload, more)

            adaptive = decide_adaptively(sweep, thresholds, args.rounds, args.max_rounds, take_more)
            adaptive_wall = time.perf_counter() - started
            adaptive_samples = samples(sweep)

            started = time.perf_counter()
            fixed_sweep = runner.run(fixed_workload, model, threads, fixed_rounds)
            fixed = evaluate(fixed_sweep, thresholds)
            fixed_wall = time.perf_counter() - started

            print(
                f"{name:<52} {outcome(adaptive):>9} {adaptive_samples:>7} {adaptive_wall:>7.1f}   "
                f"{outcome(fixed):>9} {samples(fixed_sweep):>7} {fixed_wall:>7.1f}   "
                f"{adaptive_wall / fixed_wall:>10.2f}"
            )
        client.close()


if __name__ == "__main__":
    main()
