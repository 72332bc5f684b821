"""How many bytes a second the machine's memory gives to k reading threads.

Generating a token of a dense model reads about all of its weights once, so the
read bandwidth that k threads get bounds the generation rate at k threads
(issue 13, the memory roofline). The probe: k worker processes, each pinned to
one of the CPUs the server may use, each summing its own array far larger than
the caches, started together behind a barrier and timed for the same window;
the bandwidth is the bytes all of them read over that window. The kernel is
numpy's max of int64, a SIMD loop that streams its input once: on the 2-core
development VM it read 33.1 GB/s on one core where numpy's float64 sum, whose
pairwise additions cost more than the reads, managed 18.7, and ``sysbench
memory --memory-oper=read --memory-block-size=256M`` 29.0.

A stand-alone piece for now: ``benchmarks/bandwidth_probe.py`` sets it beside
``sysbench memory``; the plugin does not call it yet.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

#: Bytes each worker reads round and round: far beyond any last-level cache.
DEFAULT_BYTES = 256 * 2**20

#: Seconds each worker reads for, after all have allocated and touched their array.
DEFAULT_SECONDS = 0.5


@dataclass(frozen=True)
class Bandwidth:
    workers: int
    cpus: tuple[int, ...]
    bytes_per_second: float
    #: wall seconds the probe cost, start-up of the workers included
    cost_seconds: float

    @property
    def gb_per_second(self) -> float:
        return self.bytes_per_second / 1e9


def _reader(
    cpu: int | None, size: int, seconds: float, barrier: Any, results: Any
) -> None:  # pragma: no cover - runs in a worker process
    import numpy as np

    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    data = np.ones(size // 8, dtype=np.int64)  # touched: every page is mapped
    data.max()
    barrier.wait()
    done = 0
    started = time.perf_counter()
    while True:
        data.max()
        done += data.nbytes
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            break
    results.put((done, elapsed))


def read_bandwidth(
    workers: int,
    cpus: Sequence[int] | None = None,
    size: int = DEFAULT_BYTES,
    seconds: float = DEFAULT_SECONDS,
) -> Bandwidth:
    """The read bandwidth ``workers`` processes get together, each pinned to one of
    ``cpus`` in turn (None: left to the scheduler)."""
    if workers < 1:
        raise ValueError(f"workers={workers!r} must be 1 or more")
    pinned = tuple(cpus or ())
    context = mp.get_context("spawn")  # no copy of a pytest process and its threads
    barrier = context.Barrier(workers)
    results = context.Queue()
    begun = time.perf_counter()
    processes = [
        context.Process(
            target=_reader,
            args=(pinned[i % len(pinned)] if pinned else None, size, seconds, barrier, results),
            daemon=True,
        )
        for i in range(workers)
    ]
    for process in processes:
        process.start()
    try:
        measured = [results.get(timeout=60 + 10 * seconds) for _ in processes]
    finally:
        for process in processes:
            process.join(timeout=5)
            if process.is_alive():
                process.kill()
    # all started together behind the barrier and read for the same window
    window = max(elapsed for _, elapsed in measured)
    total = sum(done for done, _ in measured)
    return Bandwidth(workers, pinned, total / window, time.perf_counter() - begun)
