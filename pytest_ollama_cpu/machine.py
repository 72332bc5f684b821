"""Facts about the machine a sweep runs on: cores, usable CPUs, cgroup quota.

``os.cpu_count()`` is wrong in containers, VMs with pinned vCPUs and under
``taskset``: the CPUs a process can really use are its affinity mask capped by
its cgroup CPU quota. Both cgroup versions exist in the wild (v2 ``cpu.max``,
v1 ``cpu.cfs_quota_us``/``cpu.cfs_period_us``), and the limits that matter are
those of the Ollama server's process, not of the test process, so every reader
here takes a pid.

The parsers are pure functions over file contents; the readers take the root of
``/sys/fs/cgroup`` and ``/proc`` so tests can point them at a fake tree.
"""

from __future__ import annotations

import math
import os
import platform
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_ROOT = Path("/proc")


@dataclass(frozen=True)
class CgroupQuota:
    """A CPU bandwidth limit: ``quota_us`` of CPU time per ``period_us``."""

    quota_us: int
    period_us: int
    version: int
    path: str

    @property
    def cpus(self) -> float:
        return self.quota_us / self.period_us


def parse_cpu_max(text: str) -> tuple[int, int] | None:
    """Parse cgroup v2 ``cpu.max`` ("max 100000" or "150000 100000")."""
    fields = text.split()
    if not fields or fields[0] == "max":
        return None
    quota = int(fields[0])
    period = int(fields[1]) if len(fields) > 1 else 100_000
    if quota <= 0 or period <= 0:
        return None
    return quota, period


def parse_cfs(quota_text: str, period_text: str) -> tuple[int, int] | None:
    """Parse cgroup v1 ``cpu.cfs_quota_us`` and ``cpu.cfs_period_us`` (-1: no limit)."""
    quota = int(quota_text.strip())
    period = int(period_text.strip())
    if quota <= 0 or period <= 0:
        return None
    return quota, period


def parse_proc_cgroup(text: str) -> dict[str, str]:
    """Map controller name to cgroup path from ``/proc/PID/cgroup``.

    The v2 unified entry ("0::/path") is returned under the key ``""``.
    """
    paths: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.strip().split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            paths[""] = path
        for controller in controllers.split(","):
            if controller:
                paths[controller] = path
    return paths


def _ancestors(path: str) -> list[str]:
    """``/a/b`` -> ``["/a/b", "/a", "/"]``: limits of every ancestor apply."""
    parts = [p for p in path.split("/") if p]
    return ["/" + "/".join(parts[:i]) for i in range(len(parts), -1, -1)]


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def read_cgroup_quota(
    pid: int, cgroup_root: Path = CGROUP_ROOT, proc_root: Path = PROC_ROOT
) -> CgroupQuota | None:
    """The tightest CPU quota over the cgroup of ``pid`` and its ancestors.

    Inside a container the path in ``/proc/PID/cgroup`` may not exist under the
    mounted tree (the container sees its own cgroup as the root), so the walk
    up to the root also finds the container's own limit.
    """
    text = _read(proc_root / str(pid) / "cgroup")
    if text is None:
        return None
    paths = parse_proc_cgroup(text)
    found: list[CgroupQuota] = []
    v1_path = paths.get("cpu")
    if v1_path is not None:
        for mount in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
            base = cgroup_root / mount
            if not base.is_dir():
                continue
            for ancestor in _ancestors(v1_path):
                folder = base / ancestor.lstrip("/")
                quota = _read(folder / "cpu.cfs_quota_us")
                period = _read(folder / "cpu.cfs_period_us")
                if quota is None or period is None:
                    continue
                parsed = parse_cfs(quota, period)
                if parsed:
                    found.append(CgroupQuota(parsed[0], parsed[1], 1, ancestor))
            break
    v2_path = paths.get("")
    if v2_path is not None and (cgroup_root / "cgroup.controllers").exists():
        for ancestor in _ancestors(v2_path):
            text_max = _read(cgroup_root / ancestor.lstrip("/") / "cpu.max")
            if text_max is None:
                continue
            parsed = parse_cpu_max(text_max)
            if parsed:
                found.append(CgroupQuota(parsed[0], parsed[1], 2, ancestor))
    if not found:
        return None
    return min(found, key=lambda q: q.cpus)


def parse_cpu_list(text: str) -> tuple[int, ...]:
    """``"0-3,8"`` -> ``(0, 1, 2, 3, 8)``, as taskset -c and llama-bench's masks read."""
    cpus: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        low, _, high = part.partition("-")
        try:
            first = int(low)
            last = int(high) if high else first
        except ValueError:
            raise ValueError(f"{part!r} is not a CPU number or range; write e.g. 0-3,8") from None
        if first < 0 or last < first:
            raise ValueError(f"{part!r} is not a CPU range from low to high, e.g. 0-3")
        cpus.update(range(first, last + 1))
    if not cpus:
        raise ValueError("no CPUs given; write e.g. 0-3,8")
    return tuple(sorted(cpus))


def format_cpu_list(cpus: Iterable[int]) -> str:
    """``(0, 1, 2, 3, 8)`` -> ``"0-3,8"``: the inverse of ``parse_cpu_list``."""
    parts: list[str] = []
    ordered = sorted(set(cpus))
    start = 0
    for i in range(1, len(ordered) + 1):
        if i == len(ordered) or ordered[i] != ordered[i - 1] + 1:
            first, last = ordered[start], ordered[i - 1]
            parts.append(str(first) if first == last else f"{first}-{last}")
            start = i
    return ",".join(parts)


def usable_cpus(affinity_count: int, quota: CgroupQuota | None) -> float:
    """CPUs a process can keep busy: its affinity mask capped by its quota."""
    if quota is None:
        return float(affinity_count)
    return min(float(affinity_count), quota.cpus)


def whole_cpus(usable: float) -> int:
    """Largest whole number of threads that fits the usable CPUs (at least 1)."""
    return max(1, math.floor(usable + 1e-9))


def cpus_text(count: float) -> str:
    """'1 CPU', '2 CPUs', '1.5 CPUs': a count of CPUs as a message says it."""
    return f"{count:g} CPU{'' if count == 1 else 's'}"


def threads_text(count: int) -> str:
    """'1 thread', '2 threads': a thread count as a message says it."""
    return f"{count} thread{'' if count == 1 else 's'}"


def auto_thread_counts(usable: int) -> list[int]:
    """1, 2, 4, ... below ``usable``, and ``usable`` itself."""
    counts = []
    n = 1
    while n < usable:
        counts.append(n)
        n *= 2
    counts.append(usable)
    return counts


def cpu_model() -> str:
    text = _read(PROC_ROOT / "cpuinfo") or ""
    for line in text.splitlines():
        if line.lower().startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown"


@dataclass(frozen=True)
class MachineFacts:
    """What limits a sweep on this machine, read for one process (the server)."""

    hostname: str
    cpu_model: str
    physical_cores: int | None
    logical_cores: int | None
    affinity: tuple[int, ...]
    cgroup_quota_cpus: float | None
    cgroup_version: int | None
    usable_cpus: float
    measured_pid: int | None

    @property
    def usable_threads(self) -> int:
        return whole_cpus(self.usable_cpus)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["affinity"] = list(self.affinity)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MachineFacts:
        values = {f: data.get(f) for f in cls.__dataclass_fields__}
        values["affinity"] = tuple(data.get("affinity") or ())
        return cls(**values)  # type: ignore[arg-type]

    def describe(self) -> str:
        quota = (
            "none"
            if self.cgroup_quota_cpus is None
            else f"{cpus_text(self.cgroup_quota_cpus)} (cgroup v{self.cgroup_version})"
        )
        whose = (
            "the server's"
            if self.measured_pid is not None
            else "this test process's (the server's are not visible)"
        )
        return (
            f"{self.cpu_model}; {self.physical_cores} physical / {self.logical_cores} logical "
            f"cores; usable CPUs {self.usable_cpus:g} (affinity {len(self.affinity)}, "
            f"cgroup quota {quota}; {whose})"
        )


def read_machine_facts(pid: int | None = None, cpus: Sequence[int] | None = None) -> MachineFacts:
    """Facts for ``pid`` (the Ollama server), or for this process when ``None``;
    ``cpus``, when given, is the set the server will be confined to."""
    import psutil  # here: a run without --ollama-cpu reads CPU lists only

    target = pid if pid is not None else os.getpid()
    try:
        affinity = tuple(sorted(psutil.Process(target).cpu_affinity() or []))
    except (psutil.Error, AttributeError, OSError):
        affinity = ()
    if cpus is not None:
        affinity = tuple(sorted(set(cpus)))
    if not affinity:
        affinity = tuple(range(psutil.cpu_count(logical=True) or 1))
    quota = read_cgroup_quota(target)
    return MachineFacts(
        hostname=platform.node(),
        cpu_model=cpu_model(),
        physical_cores=psutil.cpu_count(logical=False),
        logical_cores=psutil.cpu_count(logical=True),
        affinity=affinity,
        cgroup_quota_cpus=None if quota is None else quota.cpus,
        cgroup_version=None if quota is None else quota.version,
        usable_cpus=usable_cpus(len(affinity), quota),
        measured_pid=pid,
    )
