"""Does a thread count's level move with each runner load, or with time?

The gate compares a run with a baseline taken earlier; what it cannot see
within a run is a level that moves between runs. This tells the two possible
sources apart at one thread count: ``--loads`` blocks of ``--per`` samples,
each block after a runner restart (a request at another thread count restarts
it), against as many blocks of the same size cut from one long series within a
single runner load. For each it prints the spread within blocks and the excess
spread of block means beyond what that within-block spread explains
(the between-block SD, as a one-way random-effects estimate).

    .venv/bin/python benchmarks/drift_study.py [--threads 2] [--loads 12] \\
        [--per 6] [--single-first]

A between-block SD near 0 for restarts but not for one load says the level
moves with time, not with the load: spreading samples over loads buys nothing,
and the drift between runs is the machine's.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pytest_ollama_cpu.client import OllamaClient  # noqa: E402
from pytest_ollama_cpu.embedded import MODEL_NAME, running  # noqa: E402
from pytest_ollama_cpu.sampler import DETERMINISTIC_OPTIONS, WARMUP_TOKENS  # noqa: E402

PROMPT = "Explain what a CPU cache is."


def between_sd(blocks: list[list[float]]) -> tuple[float, float, float]:
    """(within-block CV, between-block CV beyond the within spread, grand mean)."""
    per = len(blocks[0])
    means = [statistics.mean(b) for b in blocks]
    within = statistics.mean(statistics.variance(b) for b in blocks)
    excess = max(statistics.variance(means) - within / per, 0.0)
    grand = statistics.mean(means)
    return within**0.5 / grand, excess**0.5 / grand, grand


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--loads", type=int, default=12)
    parser.add_argument("--per", type=int, default=6)
    parser.add_argument("--num-predict", type=int, default=32)
    parser.add_argument("--single-first", action="store_true")
    args = parser.parse_args()
    other = 1 if args.threads != 1 else 2

    with running(ROOT / ".ollama-embedded") as server:
        client = OllamaClient(server.host, 300.0)

        def rate(threads: int, tokens: int) -> float:
            options = dict(DETERMINISTIC_OPTIONS, num_thread=threads, num_predict=tokens)
            timings = client.generate(MODEL_NAME, PROMPT, options)
            return timings.eval_count / timings.eval_duration

        def restarts() -> tuple[list[list[float]], float]:
            blocks, cost = [], 0.0
            for _ in range(args.loads):
                rate(other, WARMUP_TOKENS)  # the next request restarts the runner
                start = time.monotonic()
                rate(args.threads, WARMUP_TOKENS)
                cost += time.monotonic() - start
                blocks.append([rate(args.threads, args.num_predict) for _ in range(args.per)])
            return blocks, cost / args.loads

        def one_load() -> list[list[float]]:
            rate(other, WARMUP_TOKENS)
            rate(args.threads, WARMUP_TOKENS)
            series = [rate(args.threads, args.num_predict) for _ in range(args.loads * args.per)]
            return [series[i * args.per : (i + 1) * args.per] for i in range(args.loads)]

        if args.single_first:
            single = one_load()
            reloaded, cost = restarts()
        else:
            reloaded, cost = restarts()
            single = one_load()
        client.close()

    print(f"{args.threads} threads, {args.loads} blocks of {args.per} samples:")
    for name, blocks in (
        ("a runner restart before each block", reloaded),
        ("one runner load", single),
    ):
        within, between, grand = between_sd(blocks)
        means = [statistics.mean(b) for b in blocks]
        print(
            f"  {name}: {grand:.1f} tokens/s, block means {min(means):.1f}-{max(means):.1f}; "
            f"CV within blocks {within:.1%}, between blocks beyond it {between:.1%}"
        )
    print(f"  a restart (load and {WARMUP_TOKENS}-token warm-up) took {cost:.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
