"""Both halves of a request on the real embedded Ollama: prefill and generation.

Runs, through the plugin, llama-bench's pair (``prefill(512)`` as pp512,
``generation(128)`` as tg128), the example's long-context request, and the same
long prompt sent as given (``prompt_cache=True``, a repeat served from Ollama's
prompt cache), over ``--threads``; then prints per thread count the prefill
rate, time to first token, generation rate, the whole request's time and each
phase's thread utilization, with the recommendations.

    .venv/bin/python benchmarks/phases.py [--threads 1,2] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

SUITE = """
import pytest

CONTEXT = (
    "The processor reads data from memory through a hierarchy of caches. Each level is "
    "larger and slower than the one before it, and a miss at every level costs a trip to "
    "main memory. "
) * 10 + "\\nExplain the text above."

@pytest.mark.threads({threads}, rounds={rounds})
def test_pp512(ollama_cpu):
    ollama_cpu.prefill(512)

@pytest.mark.threads({threads}, rounds={rounds})
def test_tg128(ollama_cpu):
    ollama_cpu.generation(128)

@pytest.mark.threads({threads}, rounds={rounds})
def test_long_context(ollama_cpu):
    ollama_cpu.generate(CONTEXT)

@pytest.mark.threads({threads}, rounds={rounds})
def test_long_context_cached(ollama_cpu):
    ollama_cpu.generate(CONTEXT, prompt_cache=True)
"""

COLUMNS = (
    ("prefill tok/s", "prompt_tokens_per_second", 1),
    ("TTFT s", "time_to_first_token", 3),
    ("tokens/s", "tokens_per_second", 1),
    ("request s", "request_seconds", 3),
    ("pp util", "prefill_thread_utilization", 2),
    ("tg util", "generation_thread_utilization", 2),
)


def median(summary: dict[str, float] | None, digits: int) -> str:
    return "-" if not summary else f"{summary['median']:.{digits}f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        suite = Path(folder) / "test_phases.py"
        suite.write_text(SUITE.format(threads=args.threads, rounds=args.rounds))
        out = Path(folder) / "phases.json"
        command = [
            str(BIN / "pytest-ollama-cpu"),
            "embedded",
            "--",
            str(BIN / "pytest"),
            str(suite),
            "-q",
            "-p",
            "no:cacheprovider",
            "--ollama-cpu",
            f"--ollama-cpu-json={out}",
        ]
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        if not out.exists():
            print(done.stdout[-3000:], done.stderr[-3000:], sep="\n")
            return 1
        document = json.loads(out.read_text())
    for sweep in document["sweeps"]:
        counts = {s["timings"]["prompt_eval_count"] for r in sweep["results"] for s in r["samples"]}
        print(
            f"{sweep['test'].split('::')[-1]}: {min(counts)}-{max(counts)} prompt tokens, "
            f"{sweep['num_predict']} generated, prompt cache "
            f"{'allowed' if sweep['prompt_cache'] else 'defeated'}"
        )
        print("  threads  " + "  ".join(f"{name:>13}" for name, _, _ in COLUMNS))
        for result in sweep["results"]:
            cells = [median(result["summary"].get(key), d) for _, key, d in COLUMNS]
            print(f"  {result['threads']:>7}  " + "  ".join(f"{c:>13}" for c in cells))
        verdict = sweep.get("verdict") or {}
        for found in [verdict.get("recommendation"), *verdict.get("by_phase", [])]:
            if found:
                print(
                    f"  best for {found['quantity']}: {found['threads']} threads"
                    f"{'' if found['shown'] else ' (not shown: the samples cannot tell)'}"
                )
    return 0 if done.returncode == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
