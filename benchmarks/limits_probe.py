"""The limits probe beside a reference tool, per thread count.

    .venv/bin/python benchmarks/limits_probe.py [--threads 1,2] [--runs 1]

Runs ``pytest_ollama_cpu.limits.probe_limits`` with its defaults (256 MiB a
worker, 0.25 s windows, best of 3), the workers pinned round robin to the CPUs
this process may use, and prints per thread count the memory read bandwidth
beside ``sysbench memory --memory-oper=read --memory-block-size=256M`` with as
many threads (where sysbench is installed: ``apt-get install sysbench``, for
the check only), the fp32 multiply-add rate, whether the count was disturbed,
and what each probe cost. ``--runs 2`` probes twice, to show the spread and
the cost of each run.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pytest_ollama_cpu.limits import probe_limits  # noqa: E402


def sysbench_read(threads: int) -> float | None:
    """GB/s of ``sysbench memory`` reading a 256 MiB block each with ``threads`` threads."""
    if shutil.which("sysbench") is None:
        return None
    done = subprocess.run(
        [
            "sysbench",
            "memory",
            "--memory-oper=read",
            "--memory-block-size=256M",  # per thread: far beyond the caches, as the probe
            "--memory-total-size=64G",
            "--time=2",
            f"--threads={threads}",
            "run",
        ],
        capture_output=True,
        text=True,
    )
    found = re.search(r"\(([\d.]+) MiB/sec\)", done.stdout)
    return None if found is None else float(found.group(1)) * 2**20 / 1e9


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    counts = [int(t) for t in args.threads.split(",")]
    cpus = sorted(os.sched_getaffinity(0))
    for run in range(1, args.runs + 1):
        probed = probe_limits(counts, cpus)
        print(f"run {run}: {probed.describe()}")
        for threads in counts:
            limit = probed[threads]
            reference = sysbench_read(threads) if run == 1 else None
            beside = "" if reference is None else f" (sysbench memory read {reference:.1f})"
            print(
                f"  {threads} thread(s): read {limit.gb_per_second:.1f} GB/s{beside}, "
                f"fp32 {limit.gflops:.0f} GFLOP/s, disturbed {limit.disturbed}"
            )
        print(f"  probe cost {probed.cost_seconds:.2f} s")
    print(f"method: {probed.method}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
