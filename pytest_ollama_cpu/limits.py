"""The machine's limits at k threads: memory read bandwidth and compute peak.

Generating a token of a dense model reads about all of its weights once, so the
read bandwidth k threads get bounds the generation rate at k threads; prefill
multiplies the prompt's matrices by the weights, so the arithmetic k cores do
bounds the prefill rate (issue 13, the roofline). A sweep's rates say whether
num_thread is used well only beside these two limits: generation that does not
speed up from 1 to 2 threads is the machine's fault when one reader already gets
the memory's whole bandwidth, and the server's when it does not.

The probe, for each thread count k: k worker processes, worker i pinned to the
i-th of the server's CPUs in turn (more workers than CPUs share them, as the
server's threads would), each single-threaded (one BLAS thread), started
together behind a barrier and timed over the same windows. Processes rather
than threads, so that each worker's own CPU time is its own to read.

* Memory: numpy's max of int64 over the worker's own array, far larger than the
  caches (256 MiB). A SIMD loop that streams its input once: on the 2-core
  development VM it read 33.1 GB/s on one core where numpy's float64 sum, whose
  pairwise additions cost more than the reads, managed 18.7, and ``sysbench
  memory --memory-oper=read --memory-block-size=256M`` 29.0.
* Compute: float32 ``a @ b`` of 512x512 matrices (1 MiB each, so they stay in
  cache: a measure of arithmetic, not of memory), 2 * 512**3 flops a product.
  llama.cpp's prefill multiplies quantized weights with int8 dot products, which
  numpy has no fast kernel for; fp32 multiply-add through OpenBLAS is the
  closest honest stand-in: the core's vector throughput, not the rate
  llama.cpp's own kernels reach.

The limits must be the server's: a CPU quota on the server's cgroup slows its
threads, so the workers first join that cgroup (for the cpu controller), and a
probe that cannot (no permission) says so in ``MachineLimits.note``.

Each figure is the best of its windows, STREAM's rule: what the machine offers
is what it gave at best. A window in which some worker did not get its share of
its CPU (its own CPU seconds over the window's wall seconds, below 90% of what
it should get) had a neighbour taking the rest; it says nothing about the
machine and is not taken while an undisturbed window exists, and a count with
no undisturbed window is marked ``disturbed``. That is seen inside the worker,
with no measurement of the rest of the machine.

A count costs about two seconds (six windows and its workers' start), so the
results are cached (pytest's cache) per machine, as the server sees it, for a day.

numpy is imported inside the workers only: importing the plugin stays cheap.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import multiprocessing as mp

# Loaded with the plugin, not at the first probe: a module multiprocessing loads late
# can be loaded twice in one process (pytest's in-process runs restore sys.modules),
# and its objects then no longer pickle ("not the same object as ...").
import multiprocessing.connection
import multiprocessing.queues
import multiprocessing.reduction
import multiprocessing.synchronize
import os
import queue
import signal
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import psutil

from .errors import OllamaCpuError
from .machine import CGROUP_ROOT, PROC_ROOT, parse_proc_cgroup, threads_text

#: Bytes each worker reads round and round: far beyond any last-level cache.
DEFAULT_BYTES = 256 * 2**20

#: The least a worker's array is shrunk to when memory is short: still far beyond the caches.
MIN_BYTES = 64 * 2**20

#: Seconds a timed window lasts.
DEFAULT_WINDOW = 0.25

#: Seconds a timed window lasts under a CPU quota: 10 CFS periods of 100 ms, so
#: where in a window the throttling falls does not swing the figure.
QUOTA_WINDOW = 1.0

#: Side of the square float32 matrices the compute kernel multiplies: 1 MiB each, in cache.
MATRIX = 512

#: A window is disturbed when a worker got less than this part of its share of its CPU.
UNDISTURBED_SHARE = 0.9

CACHE_KEY = "ollama_cpu/limits"
CACHE_VERSION = 1

#: Set to "1" in each worker before numpy loads: k single-threaded workers are timed.
_ONE_THREAD = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")

#: Seconds the workers may take to start (spawn, import numpy, allocate and touch).
_START_TIMEOUT = 120.0

#: Seconds a worker waits for the others at the barrier before it gives up (its
#: parent gone), so no worker outlives a probe that was killed.
_BARRIER_TIMEOUT = 300.0

_KERNELS = ("memory", "compute")


class LimitsProbeError(OllamaCpuError):
    """The limits probe could not measure: a worker failed, or memory is short."""


@dataclass(frozen=True)
class Limit:
    """What ``threads`` workers got together: the best window of each kernel."""

    #: how many worker processes read and computed together (a sweep's num_thread)
    threads: int
    read_bytes_per_second: float
    #: all workers together
    flops_per_second: float
    #: no window had every worker get its share of its CPU: a neighbour took some
    disturbed: bool

    @property
    def gb_per_second(self) -> float:
        return self.read_bytes_per_second / 1e9

    @property
    def gflops(self) -> float:
        return self.flops_per_second / 1e9

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Limit:
        """Raises TypeError, KeyError or ValueError on a damaged dict (a cache may hold one)."""
        disturbed = data["disturbed"]
        if not isinstance(disturbed, bool):
            raise TypeError(f"disturbed={disturbed!r} is not a bool")
        return cls(
            threads=_count(data["threads"]),
            read_bytes_per_second=_rate(data["read_bytes_per_second"]),
            flops_per_second=_rate(data["flops_per_second"]),
            disturbed=disturbed,
        )


@dataclass(frozen=True)
class MachineLimits:
    """The limits per thread count, and how and where they were probed."""

    limits: Mapping[int, Limit]
    #: the CPUs the workers were pinned to, round robin in this order
    cpus: tuple[int, ...]
    #: the server's cgroup the workers ran in ("/ollama-slow"); None: their own
    cgroup: str | None
    #: why the probe could not run as the server does (could not join its cgroup), else None
    note: str | None
    #: wall seconds the probing cost; 0 when every count came from the cache
    cost_seconds: float
    #: one sentence naming both kernels and their sizes, for a report's header
    method: str

    def __getitem__(self, threads: int) -> Limit:
        try:
            return self.limits[threads]
        except KeyError:
            probed = ", ".join(str(k) for k in sorted(self.limits)) or "none"
            raise KeyError(f"no limits probed for {threads} threads (probed: {probed})") from None

    def describe(self) -> str:
        """One line: both limits per count, and what the probing cost."""
        counts = sorted(self.limits)
        if not counts:
            return "no limits probed"
        memory = []
        compute = []
        for i, threads in enumerate(counts):
            limit = self.limits[threads]
            mark = " (disturbed)" if limit.disturbed else ""
            at = threads_text(threads) if i == 0 else str(threads)
            gb = f"{limit.gb_per_second:.1f}" + (" GB/s" if i == 0 else "")
            gflops = _gflops_text(limit.gflops) + (" GFLOP/s" if i == 0 else "")
            memory.append(f"{gb} at {at}{mark}")
            compute.append(f"{gflops} at {threads}{mark}")
        cost = (
            "from the cache" if self.cost_seconds == 0 else f"probed in {self.cost_seconds:.1f} s"
        )
        where = "" if self.cgroup is None else f", in the server's cgroup {self.cgroup}"
        return (
            f"memory read {', '.join(memory)}; fp32 multiply-add {', '.join(compute)} "
            f"({cost}{where})"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "limits": {str(k): self.limits[k].to_dict() for k in sorted(self.limits)},
            "cpus": list(self.cpus),
            "cgroup": self.cgroup,
            "note": self.note,
            "cost_seconds": self.cost_seconds,
            "method": self.method,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MachineLimits:
        """Raises TypeError, KeyError or ValueError on a damaged dict (a cache may hold one)."""
        limits: dict[int, Limit] = {}
        for key, value in data["limits"].items():
            limit = Limit.from_dict(value)
            if int(key) != limit.threads:
                raise ValueError(f"limits[{key!r}] holds {limit.threads} threads")
            limits[limit.threads] = limit
        return cls(
            limits=limits,
            cpus=tuple(_cpu(c) for c in data["cpus"]),
            cgroup=_text_or_none(data["cgroup"]),
            note=_text_or_none(data["note"]),
            cost_seconds=_rate(data["cost_seconds"]),
            method=_text(data["method"]),
        )


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{value!r} is not a positive whole number")
    return value


def _cpu(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{value!r} is not a CPU number")
    return value


def _rate(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{value!r} is not a number")
    if not 0 <= value < math.inf:
        raise ValueError(f"{value!r} is not a rate")
    return float(value)


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{value!r} is not text")
    return value


def _text_or_none(value: Any) -> str | None:
    return None if value is None else _text(value)


def _gflops_text(gflops: float) -> str:
    """126 and 251 as whole numbers; small figures (a tiny test probe) with 3 digits."""
    return f"{gflops:.0f}" if gflops >= 100 else f"{gflops:.3g}"


def _mib(size: float) -> str:
    return f"{size / 2**20:g} MiB"


def _check_counts(counts: Sequence[int]) -> list[int]:
    """The thread counts, each once in the order given; ValueError names a bad one."""
    checked: list[int] = []
    for count in counts:
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"thread count {count!r} must be a positive whole number")
        if count not in checked:
            checked.append(count)
    return checked


@dataclass(frozen=True)
class Joined:
    """Where a worker ended up: the cgroup it joined (None: its own) and why not."""

    cgroup: str | None
    note: str | None


def join_cgroup(
    pid: int,
    server_pid: int,
    cgroup_root: Path = CGROUP_ROOT,
    proc_root: Path = PROC_ROOT,
) -> Joined:
    """Move ``pid`` into ``server_pid``'s cgroup for the cpu controller.

    So that the server's CPU quota slows the probe as it slows the server. v1:
    the cpu controller's own mount (``cpu``, or ``cpu,cpuacct`` where they are
    mounted together); v2 (``cgroup.controllers`` at the root): the unified
    tree. A server in the root cgroup has no quota: nothing to join.
    """
    source = proc_root / str(server_pid) / "cgroup"
    own = "the probe ran in its own cgroup, without the server's CPU quota"
    try:
        paths = parse_proc_cgroup(source.read_text())
    except OSError as error:
        return Joined(None, f"could not read {source} ({error.strerror}): {own}")
    if (cgroup_root / "cgroup.controllers").exists():
        path = paths.get("")
        mounts = [cgroup_root]
    else:
        path = paths.get("cpu")
        mounts = [cgroup_root / name for name in ("cpu", "cpu,cpuacct", "cpuacct,cpu")]
    if path is None:
        return Joined(None, f"{source} names no cgroup for the cpu controller: {own}")
    if path == "/":
        return Joined(None, None)
    mounted = [mount for mount in mounts if mount.is_dir()]
    if not mounted:
        return Joined(None, f"no cpu controller is mounted under {cgroup_root}: {own}")
    target = mounted[0] / path.lstrip("/") / "cgroup.procs"
    try:
        # no O_CREAT: a cgroup that is not there is an error, not a new file
        descriptor = os.open(target, os.O_WRONLY)
        try:
            os.write(descriptor, f"{pid}\n".encode())
        finally:
            os.close(descriptor)
    except OSError as error:
        if error.errno in (errno.EACCES, errno.EPERM):
            advice = "run the tests as root or as the server's user"
        elif error.errno == errno.ENOENT:
            advice = "the server's cgroup is not visible here (another container?)"
        else:
            advice = "run the tests where the server's cgroup can be joined"
        return Joined(
            None,
            f"could not join the server's cgroup {path} (writing {target}: "
            f"{error.strerror or error}): {own}; {advice}",
        )
    return Joined(path, None)


def _worker(
    index: int,
    cpu: int,
    size: int,
    window: float,
    repeats: int,
    server_pid: int | None,
    barrier: Any,
    results: Any,
) -> None:  # pragma: no cover - runs in a worker process
    """Join, pin, allocate, then time every memory window and every compute window.

    Each window: wait for all workers, run the kernel until ``window`` seconds
    have passed, report (work done, wall seconds, own CPU seconds).
    """
    for name in _ONE_THREAD:  # before numpy loads OpenBLAS, which reads them once
        os.environ[name] = "1"
    try:
        joined = Joined(None, None) if server_pid is None else join_cgroup(os.getpid(), server_pid)
        try:
            os.sched_setaffinity(0, {cpu})
        except OSError as error:
            raise LimitsProbeError(f"could not pin to CPU {cpu}: {error.strerror}") from None

        import numpy as np

        data = np.ones(size // 8, dtype=np.int64)  # touched: every page is mapped
        data.max()
        rng = np.random.default_rng(index)
        a = rng.random((MATRIX, MATRIX), dtype=np.float32)
        b = rng.random((MATRIX, MATRIX), dtype=np.float32)
        product = np.empty_like(a)
        np.matmul(a, b, out=product)  # BLAS loaded and warm

        def read() -> None:
            data.max()

        def multiply() -> None:
            np.matmul(a, b, out=product)

        kernels = {"memory": (read, data.nbytes), "compute": (multiply, 2 * MATRIX**3)}
        results.put(("ready", index, joined.cgroup, joined.note))
        for kernel in _KERNELS:
            run, unit = kernels[kernel]
            for repeat in range(repeats):
                barrier.wait(_BARRIER_TIMEOUT)
                done = 0
                cpu_started = time.process_time()
                started = time.perf_counter()
                while True:
                    run()
                    done += unit
                    elapsed = time.perf_counter() - started
                    if elapsed >= window:
                        break
                cpu_seconds = time.process_time() - cpu_started
                results.put(("window", index, kernel, repeat, done, elapsed, cpu_seconds))
    except Exception as error:
        results.put(("error", index, f"{type(error).__name__}: {error}"))


def _collect(
    results: Any, processes: Sequence[Any], placed: Sequence[int], wanted: int, quiet: float
) -> list[tuple[Any, ...]]:
    """``wanted`` messages from the workers; a worker that fails or dies ends the wait
    at once, and ``quiet`` seconds with no message from any ends it too."""
    messages: list[tuple[Any, ...]] = []
    last = time.monotonic()
    while len(messages) < wanted:
        try:
            message: tuple[Any, ...] | None = results.get(timeout=0.2)
        except queue.Empty:
            message = None
        if message is None:
            _check_alive(processes, placed)
            if time.monotonic() - last > quiet:
                raise LimitsProbeError(
                    f"the limits probe's workers sent nothing for {quiet:g} s: "
                    "is the machine overloaded, or a worker stuck?"
                )
            continue
        last = time.monotonic()
        if message[0] == "error":
            index = message[1]
            raise LimitsProbeError(
                f"the limits probe's worker {index} (CPU {placed[index]}) failed: {message[2]}"
            )
        messages.append(message)
    return messages


def _check_alive(processes: Sequence[Any], placed: Sequence[int]) -> None:
    """A worker that died (killed for memory, say) sends no error: its exit code tells."""
    for index, process in enumerate(processes):
        code = process.exitcode
        if code is None or code == 0:
            continue
        if code < 0:
            how = f"was killed by {signal.Signals(-code).name}"
            if code == -signal.SIGKILL:
                how += " (out of memory?)"
        else:
            how = f"exited with status {code}"
        raise LimitsProbeError(f"the limits probe's worker {index} (CPU {placed[index]}) {how}")


def _fit_size(size: int, workers: int) -> int:
    """Bytes per worker so that all ``workers`` arrays fit in half the available memory."""
    available = int(psutil.virtual_memory().available)
    budget = available // 2
    if workers * size <= budget:
        return size
    least = min(size, MIN_BYTES)
    fitted = budget // workers // 8 * 8
    if fitted < least:
        raise LimitsProbeError(
            f"the limits probe needs {_mib(workers * least)} ({workers} workers of "
            f"{_mib(least)}) within half of the {_mib(available)} of memory available: "
            "free some memory or probe fewer threads"
        )
    return fitted


def _probe_count(
    context: Any,
    workers: int,
    cpus: Sequence[int],
    server_pid: int | None,
    quota_cpus: float | None,
    size: int,
    window: float,
    repeats: int,
) -> tuple[Limit, list[Joined]]:
    placed = [cpus[i % len(cpus)] for i in range(workers)]
    barrier = context.Barrier(workers)
    results = context.Queue()
    processes = [
        context.Process(
            target=_worker,
            args=(i, placed[i], size, window, repeats, server_pid, barrier, results),
            daemon=True,
        )
        for i in range(workers)
    ]
    for process in processes:
        process.start()
    finished = False
    try:
        ready = _collect(results, processes, placed, workers, _START_TIMEOUT)
        windows = _collect(
            results, processes, placed, workers * len(_KERNELS) * repeats, 30 + 10 * window
        )
        finished = True
    finally:
        for process in processes:
            process.join(timeout=5 if finished else 0)
            if process.is_alive():
                process.kill()
                process.join()
        results.close()
    joined = [Joined(message[2], message[3]) for message in ready]
    # the quota binds the workers unless they failed to join the server's cgroup:
    # joined, in the root one with it (a container's own limit), or (no server_pid)
    # in this process's, whose quota the caller then passed
    in_quota = quota_cpus is not None and all(j.note is None for j in joined)
    shares = []
    for cpu in placed:
        share = 1 / placed.count(cpu)  # workers that share a CPU split it
        if in_quota and quota_cpus is not None:
            share = min(share, quota_cpus / workers)  # all of them split the quota
        shares.append(share)
    rates: dict[str, list[tuple[float, bool]]] = {kernel: [] for kernel in _KERNELS}
    for kernel in _KERNELS:
        for repeat in range(repeats):
            these = [m for m in windows if m[2] == kernel and m[3] == repeat]
            total = sum(m[4] for m in these)
            longest = max(m[5] for m in these)
            starved = any(m[6] / m[5] < UNDISTURBED_SHARE * shares[m[1]] for m in these if m[5] > 0)
            rates[kernel].append((total / longest, starved))
    best: dict[str, float] = {}
    disturbed = False
    for kernel, measured in rates.items():
        quiet = [rate for rate, starved in measured if not starved]
        best[kernel] = max(quiet or [rate for rate, _ in measured])
        disturbed = disturbed or not quiet
    return Limit(workers, best["memory"], best["compute"], disturbed), joined


def probe_limits(
    counts: Sequence[int],
    cpus: Sequence[int],
    *,
    server_pid: int | None = None,
    quota_cpus: float | None = None,
    size: int = DEFAULT_BYTES,
    window: float | None = None,
    repeats: int = 3,
    on_count: Callable[[int], None] | None = None,
) -> MachineLimits:
    """Probe both limits for each of ``counts`` workers, pinned round robin to ``cpus``.

    ``server_pid``: the workers join that process's cgroup, so its CPU quota
    applies to them as to the server. ``quota_cpus``: that quota in CPUs (as
    ``machine.read_cgroup_quota`` reads it; without ``server_pid``, this
    process's), so that a worker is expected to get only its part of it, not a
    whole CPU, and is not taken for disturbed when throttled; ignored where the
    workers could not join the server's cgroup.
    ``size``: bytes each worker reads, shrunk (to no less than 64 MiB) when all
    of them would not fit in half the available memory. ``window``: seconds per
    timed window (None: 0.25, or 1.0 under a quota). ``on_count``: told each
    count before it is probed (a few seconds each), for the progress display.
    """
    wanted = _check_counts(counts)
    pinned = tuple(_cpu(cpu) for cpu in cpus)
    if not pinned:
        raise ValueError("cpus must name at least one CPU")
    if size < 8:
        raise ValueError(f"size={size!r} must be at least 8 bytes")
    if repeats < 1:
        raise ValueError(f"repeats={repeats!r} must be 1 or more")
    if window is None:
        window = QUOTA_WINDOW if quota_cpus is not None else DEFAULT_WINDOW
    if window <= 0:
        raise ValueError(f"window={window!r} must be more than 0 seconds")
    context = mp.get_context("spawn")  # no copy of a pytest process and its threads
    begun = time.perf_counter()
    limits: dict[int, Limit] = {}
    joined: list[Joined] = []
    shrunk: list[str] = []
    for workers in wanted:
        if on_count is not None:
            on_count(workers)
        fitted = _fit_size(size, workers)
        if fitted != size:
            shrunk.append(f"{_mib(fitted)} at {workers}")
        limits[workers], joined_now = _probe_count(
            context, workers, pinned, server_pid, quota_cpus, fitted, window, repeats
        )
        joined.extend(joined_now)
    cgroups = {j.cgroup for j in joined}
    notes = [j.note for j in joined if j.note]
    cgroup = cgroups.pop() if len(cgroups) == 1 else None
    note = notes[0] if notes else None
    if note is None and len(cgroups) > 1:
        note = "only some workers could join the server's cgroup: figures are unreliable"
    sizes = _mib(size) + (f" ({', '.join(shrunk)}: memory was short)" if shrunk else "")
    method = (
        f"k threads are k single-threaded processes pinned round robin to CPUs "
        f"{', '.join(str(c) for c in pinned)}, each figure the best of {repeats} windows of "
        f"{window:g} s: memory read is numpy's int64 max over {sizes} a process, compute is "
        f"float32 {MATRIX}x{MATRIX} matrix products through OpenBLAS (in cache: the closest "
        "honest stand-in for llama.cpp's prefill, whose matrix multiplies do quantized int8 "
        "dot products)"
    )
    return MachineLimits(
        limits=limits,
        cpus=pinned,
        cgroup=cgroup,
        note=note,
        cost_seconds=time.perf_counter() - begun,
        method=method,
    )


def _stored_machines(value: Any) -> dict[str, Any]:
    """The machines of a cached value; anything damaged is left out (and so overwritten)."""
    if not isinstance(value, dict) or value.get("version") != CACHE_VERSION:
        return {}
    machines = value.get("machines")
    if not isinstance(machines, dict):
        return {}
    return {k: v for k, v in machines.items() if isinstance(k, str) and isinstance(v, dict)}


def _fresh_entry(entry: Any, now: float, max_age: float) -> tuple[MachineLimits, float] | None:
    """A cached machine's limits and when they were probed, if readable and young enough."""
    if not isinstance(entry, dict):
        return None
    try:
        probed_at = _rate(entry["probed_at"])
        limits = MachineLimits.from_dict(entry["limits"])
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    if not 0 <= now - probed_at <= max_age:  # older, or from a clock that went back
        return None
    return limits, probed_at


def _fingerprint(key_facts: Mapping[str, Any]) -> str:
    """The cache's key for a machine as the server sees it: its facts, in a stable text."""
    return json.dumps(dict(key_facts), sort_keys=True, default=str)


def peek_limits(
    cache: Any | None,
    key_facts: Mapping[str, Any],
    max_age: float = 86400.0,
    now: Callable[[], float] = time.time,
) -> MachineLimits | None:
    """Whatever limits ``cache`` holds for this machine, probing nothing (for the
    report header, before any sweep has run)."""
    if cache is None:
        return None
    fingerprint = _fingerprint(key_facts)
    found = _fresh_entry(
        _stored_machines(cache.get(CACHE_KEY, None)).get(fingerprint), now(), max_age
    )
    return None if found is None else replace(found[0], cost_seconds=0.0)


def cached_limits(
    cache: Any | None,
    key_facts: Mapping[str, Any],
    counts: Sequence[int],
    probe: Callable[[Sequence[int]], MachineLimits],
    max_age: float = 86400.0,
    now: Callable[[], float] = time.time,
) -> MachineLimits:
    """The limits for ``counts``, from ``cache`` where it has them, else from ``probe``.

    ``cache`` has ``get(key, default)`` and ``set(key, value)`` (pytest's
    ``config.cache``; None: probe every time). ``key_facts`` identify the
    machine as the server sees it (hostname, CPU model, affinity, cgroup quota
    and path): other facts, other limits. Only the counts the cache lacks are
    probed, and merged into its entry, which keeps its first probing time: an
    entry is as old as its oldest figure. A damaged cache value is ignored and
    overwritten. A count whose probe was disturbed is kept until probed again.
    """
    wanted = _check_counts(counts)
    if cache is None:
        probed = probe(wanted)
        return replace(probed, limits={k: probed[k] for k in wanted})
    fingerprint = _fingerprint(key_facts)
    machines = _stored_machines(cache.get(CACHE_KEY, None))
    found = _fresh_entry(machines.get(fingerprint), now(), max_age)
    cached = None if found is None else found[0]
    # a count probed while other processes took its CPUs is probed again next time
    missing = [k for k in wanted if cached is None or k not in cached.limits or cached[k].disturbed]
    if cached is not None and not missing:
        return replace(cached, limits={k: cached[k] for k in wanted}, cost_seconds=0.0)
    probed = probe(missing)
    merged = {**(cached.limits if cached is not None else {}), **probed.limits}
    machines[fingerprint] = {
        "probed_at": found[1] if found is not None else now(),
        "limits": replace(probed, limits=merged).to_dict(),
    }
    cache.set(CACHE_KEY, {"version": CACHE_VERSION, "machines": machines})
    return replace(probed, limits={k: merged[k] for k in wanted})


#: How long probed limits are kept: a machine's memory and arithmetic do not change
#: between runs, and a reboot (a new BIOS setting, another VM host) empties the folder.
DAY = 86400.0

#: Where the limits are kept, one file a machine; tests point it elsewhere.
CACHE_ENV = "PYTEST_OLLAMA_CPU_LIMITS_CACHE"


def limits_cache_path() -> Path:
    """The machine's cache file: in the temporary folder, shared by every project and
    pytest run of this user on the machine, so that a suite pays the probe once."""
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured)
    return Path(tempfile.gettempdir()) / f"pytest-ollama-cpu-{os.getuid()}" / "limits.json"


class LimitsFile:
    """A ``get``/``set`` cache (as ``cached_limits`` takes) kept in one JSON file.

    Written whole to a temporary file and renamed over, so a reader never sees
    half a file; a file that cannot be read or written is treated as empty, as
    the limits can always be probed again.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def get(self, key: str, default: Any) -> Any:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return default
        return data.get(key, default) if isinstance(data, dict) else default

    def set(self, key: str, value: Any) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            data = {key: value}
            with tempfile.NamedTemporaryFile(
                "w", dir=self.path.parent, prefix=".limits-", suffix=".tmp", delete=False
            ) as file:
                json.dump(data, file)
            os.replace(file.name, self.path)
        except OSError:
            with contextlib.suppress(OSError, UnboundLocalError):
                os.unlink(file.name)
