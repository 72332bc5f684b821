"""Taking turns: no two sweeps against the same server or on the same CPUs at once.

pytest-xdist workers, or two pytest runs side by side, would otherwise measure
each other. A sweep holds one lock file for its server and one for each CPU the
server may use, taken in a fixed order so two sweeps can never wait on each
other in a circle. Sweeps on disjoint CPUs against different servers still run
side by side. The wait is timed, reported, and never part of a measurement.

Locks are ``flock`` locks: the kernel releases them when their holder dies, so a
pytest or xdist worker killed mid-sweep never blocks the next one. What such a
holder cannot undo, the CPUs it confined the server to (``--ollama-cpu-cpus``),
it notes beside the locks while confining; the next sweep against that server
reads the note and gives the server back its mask from before.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from filelock import FileLock, Timeout

from .errors import OllamaCpuError
from .processes import process_started

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
                    f"to finish ({folder / name}.lock). Another pytest may be stuck: end it "
                    "and run again (a killed one releases its locks at once)"
                ) from None
        yield time.perf_counter() - started


def confinement_note(folder: Path, server_pid: int, server_started: float) -> Path:
    """Where a sweep notes the server's mask while it keeps the server confined."""
    return folder / f"confined-{server_pid}-{server_started:.2f}.json"


def note_confinement(note: Path, original: set[int], confined: set[int]) -> None:
    """Note ``original`` (best effort: no note means only a killed run is not undone)."""
    record = {
        "pid": os.getpid(),
        "started": process_started(os.getpid()),
        "original": sorted(original),
        "confined": sorted(confined),
    }
    with contextlib.suppress(OSError):
        temp = note.with_name(note.name + f".{os.getpid()}.tmp")
        temp.write_text(json.dumps(record))
        os.replace(temp, note)


def left_confined(note: Path, current: set[int]) -> set[int] | None:
    """The server's mask from before a confinement its (dead) sweep never undid.

    None when there is no such note, its sweep is still alive, or the server's mask
    is no longer the one that sweep set (someone changed it since: that one stays).
    """
    try:
        record = json.loads(note.read_text())
        pid, started = int(record["pid"]), record["started"]
        original, confined = set(record["original"]), set(record["confined"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if started is not None and process_started(pid) == started:
        return None  # its sweep is still running
    if current != confined or not original:
        clear_confinement(note)  # changed since by someone else: theirs stays
        return None
    return original


def clear_confinement(note: Path) -> None:
    with contextlib.suppress(OSError):
        note.unlink()
