"""The memory bandwidth probe beside a reference tool, per number of readers.

    .venv/bin/python benchmarks/bandwidth_probe.py [--workers 1,2] [--seconds 0.5]

Prints the probe's read bandwidth (``pytest_ollama_cpu.bandwidth``) and its cost
for each number of workers, pinned to the first CPUs this process may use, and,
where ``sysbench`` is installed (``apt-get install sysbench``, for the check
only), ``sysbench memory --memory-oper=read`` with as many threads.
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

from pytest_ollama_cpu.limits import read_bandwidth  # noqa: E402


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
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--seconds", type=float, default=0.5)
    args = parser.parse_args()
    cpus = sorted(os.sched_getaffinity(0))
    for workers in (int(w) for w in args.workers.split(",")):
        probe = read_bandwidth(workers, cpus[:workers], seconds=args.seconds)
        reference = sysbench_read(workers)
        beside = "" if reference is None else f"; sysbench memory read {reference:.1f} GB/s"
        print(
            f"{workers} reader(s) on CPUs {probe.cpus}: probe {probe.gb_per_second:.1f} GB/s "
            f"in {probe.cost_seconds:.2f} s{beside}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
