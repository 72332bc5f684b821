"""Taking turns: no two sweeps against the same server or on the same CPUs at once.

pytest-xdist workers, or two pytest runs side by side, would otherwise measure
each other. A sweep holds one lock file for its server and one for each CPU the
server may use, taken in a fixed order so two sweeps can never wait on each
other in a circle. Sweeps on disjoint CPUs against different servers still run
side by side. The wait is timed, reported, and never part of a measurement.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from filelock import FileLock, Timeout

from .client import OllamaCpuError

LOCK_DIR_ENV = "PYTEST_OLLAMA_CPU_LOCK_DIR"


def lock_dir() -> Path:
    folder = Path(os.environ.get(LOCK_DIR_ENV) or Path(tempfile.gettempdir()) / "pytest-ollama-cpu")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def lock_names(host: str, cpus: Sequence[int]) -> list[str]:
    """One lock for the server, one per CPU, in the order they are taken."""
    server = "server-" + hashlib.sha1(host.encode()).hexdigest()[:16]
    return sorted({server, *(f"cpu-{c:04d}" for c in cpus)})


class LockTimeout(OllamaCpuError):
    pass


@contextlib.contextmanager
def taking_turns(
    host: str, cpus: Sequence[int], timeout: float, folder: Path | None = None
) -> Iterator[float]:
    """Hold the sweep's locks; yields the seconds spent waiting for them."""
    folder = folder or lock_dir()
    started = time.perf_counter()
    with contextlib.ExitStack() as held:
        for name in lock_names(host, cpus):
            lock = FileLock(str(folder / f"{name}.lock"))
            remaining = max(0.0, timeout - (time.perf_counter() - started))
            try:
                held.enter_context(lock.acquire(timeout=remaining))
            except Timeout:
                raise LockTimeout(
                    f"waited {timeout:g}s for another sweep against {host} or on the same CPUs "
                    f"to finish ({folder / name}.lock). Another pytest may be stuck: end it, or "
                    "raise --ollama-cpu-timeout"
                ) from None
        yield time.perf_counter() - started
