"""This machine's real noise, kept for simulations: blocks of tokens/s samples.

Each block is what one run of a sweep would see at a thread count: a change of
thread count (the runner restarts), a warm-up, then ``--per`` samples, as the
plugin takes them (seed 42, temperature 0). Blocks alternate between the thread
counts, so slow drifts of the machine fall between blocks, as between runs.

    .venv/bin/python benchmarks/noise_pool.py [--blocks 6] [--per 10] \\
        [--num-predict 32] [--out noise_pool.json]
    .venv/bin/python benchmarks/gate_power.py --only planned --pool noise_pool.json

``gate_power.py --pool`` then draws a baseline from one block and a new run from
another: the shape of this machine's noise (its outliers, its run-to-run drift),
not a log-normal guess.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pytest_ollama_cpu.client import OllamaClient  # noqa: E402
from pytest_ollama_cpu.embedded import MODEL_NAME, running  # noqa: E402
from pytest_ollama_cpu.sampler import DETERMINISTIC_OPTIONS, WARMUP_TOKENS  # noqa: E402

PROMPT = "Explain what a CPU cache is."


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=6)
    parser.add_argument("--per", type=int, default=10)
    parser.add_argument("--num-predict", type=int, default=32)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--out", default="noise_pool.json")
    args = parser.parse_args()
    counts = [int(t) for t in args.threads.split(",")]
    pool: dict[str, list[list[float]]] = {str(t): [] for t in counts}
    with running(ROOT / ".ollama-embedded") as server:
        client = OllamaClient(server.host, 300.0)
        for block in range(args.blocks):
            for threads in counts:
                options = dict(DETERMINISTIC_OPTIONS, num_thread=threads)
                client.generate(MODEL_NAME, PROMPT, dict(options, num_predict=WARMUP_TOKENS))
                rates = []
                for _ in range(args.per):
                    timings = client.generate(
                        MODEL_NAME, PROMPT, dict(options, num_predict=args.num_predict)
                    )
                    rates.append(timings.eval_count / timings.eval_duration)
                pool[str(threads)].append(rates)
                print(f"block {block} t{threads}: " + " ".join(f"{r:.1f}" for r in rates))
        client.close()
    Path(args.out).write_text(json.dumps(pool))
    for threads, blocks in pool.items():
        flat = [r for b in blocks for r in b]
        medians = [statistics.median(b) for b in blocks]
        within = statistics.mean(statistics.stdev(b) / statistics.mean(b) for b in blocks)
        print(
            f"t{threads}: CV within blocks {within:.1%}, "
            f"all {statistics.stdev(flat) / statistics.mean(flat):.1%}; block medians "
            f"{min(medians):.1f}-{max(medians):.1f}"
        )
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
