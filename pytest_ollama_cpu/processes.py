"""The Ollama server's processes: where the CPU time goes during a request.

Generation runs in a child of ``ollama serve`` (``ollama_llama_server`` up to
0.5, ``ollama runner`` from 0.6, ``llama-server`` from 0.30), which is restarted
whenever ``num_thread`` changes. So CPU time is summed over the server's whole
process tree, per pid, and the runner's command line tells how many threads it
was really started with.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import psutil

from .host import is_local, split_host

_THREADS_FLAG = re.compile(r"^(?:--threads|-t|--n-threads)(?:=(\d+))?$")


def threads_from_cmdline(cmdline: Sequence[str]) -> int | None:
    """``[... "--threads", "4" ...]`` or ``-t 4`` or ``--threads=4`` -> 4."""
    for i, arg in enumerate(cmdline):
        match = _THREADS_FLAG.match(arg)
        if not match:
            continue
        value = match.group(1) or (cmdline[i + 1] if i + 1 < len(cmdline) else "")
        if value.isdigit():
            return int(value)
    return None


def _is_runner(cmdline: Sequence[str]) -> bool:
    if not cmdline:
        return False
    exe = cmdline[0].rsplit("/", 1)[-1]
    if exe in ("ollama_llama_server", "llama-server"):
        return True
    return "runner" in cmdline[1:2] or threads_from_cmdline(cmdline) is not None


@dataclass(frozen=True)
class Runner:
    pid: int
    threads: int | None
    cmdline: tuple[str, ...]


@dataclass(frozen=True)
class CpuSnapshot:
    """CPU seconds per (pid, start time) of the tree, and the whole machine's busy time."""

    at: float
    tree: dict[tuple[int, float], float]
    machine_busy: float


@dataclass(frozen=True)
class CpuUse:
    """CPU seconds used between two snapshots."""

    wall: float
    server: float
    other: float
    lost_processes: int


def _busy_seconds(cpus: frozenset[int]) -> float:
    """CPU seconds spent busy so far on ``cpus`` (all CPUs when empty).

    Only the CPUs the server may run on count: load elsewhere on a big host does
    not disturb it. Steal time counts as busy: another VM took that CPU.
    """
    busy = 0.0
    for index, times in enumerate(psutil.cpu_times(percpu=True)):
        if cpus and index not in cpus:
            continue
        idle = times.idle + getattr(times, "iowait", 0.0)
        total = sum(times)
        # guest time is already counted in user time on Linux
        total -= getattr(times, "guest", 0.0) + getattr(times, "guest_nice", 0.0)
        busy += total - idle
    return float(busy)


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Hold SIGINT, SIGTERM and SIGHUP for the duration (delivered afterwards)."""
    held = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    if not hasattr(signal, "pthread_sigmask") or (
        threading.current_thread() is not threading.main_thread()
    ):
        yield  # only the main thread runs Python's signal handlers
        return
    before = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


class ServerProcess:
    """A local Ollama server, found by the port it listens on."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._process = psutil.Process(pid)
        #: with the pid, tells this process from a later one given the same pid
        self.started = float(self._process.create_time())
        try:
            self.cpus = frozenset(self._process.cpu_affinity() or ())
        except (psutil.Error, AttributeError):
            self.cpus = frozenset()

    def _tree(self) -> list[psutil.Process]:
        try:
            return [self._process, *self._process.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def alive(self) -> bool:
        try:
            return bool(self._process.is_running())
        except psutil.Error:
            return False

    def snapshot(self) -> CpuSnapshot:
        tree: dict[tuple[int, float], float] = {}
        for proc in self._tree():
            try:
                with proc.oneshot():
                    times = proc.cpu_times()
                    tree[(proc.pid, proc.create_time())] = times.user + times.system
            except psutil.Error:
                continue
        return CpuSnapshot(time.perf_counter(), tree, _busy_seconds(self.cpus))

    @staticmethod
    def cpu_use(before: CpuSnapshot, after: CpuSnapshot) -> CpuUse:
        server = 0.0
        for key, seconds in after.tree.items():
            server += seconds - before.tree.get(key, 0.0)
        lost = sum(1 for key in before.tree if key not in after.tree)
        machine = max(0.0, after.machine_busy - before.machine_busy)
        return CpuUse(
            wall=after.at - before.at,
            server=max(0.0, server),
            other=max(0.0, machine - server),
            lost_processes=lost,
        )

    def other_load(self, window: float) -> float:
        """Cores other processes keep busy on the server's CPUs, watched for ``window``
        seconds: asked while the server is idle, it tells whether a request now
        would be disturbed."""
        before = self.snapshot()
        time.sleep(window)
        use = self.cpu_use(before, self.snapshot())
        return use.other / use.wall if use.wall > 0 else 0.0

    def _threads(self) -> list[int]:
        """Thread ids of every process of the server: affinity is set per thread."""
        tids: list[int] = []
        for proc in self._tree():
            try:
                tids.extend(t.id for t in proc.threads())
            except psutil.Error:
                continue
        return tids

    def confine(self, cpus: Sequence[int], original: set[int] | None = None) -> dict[int, set[int]]:
        """Run the server and its runners on ``cpus`` only; returns what to restore.

        Runners started later (a new num_thread) inherit the server's mask.
        ``original``, when given, is the server's mask from before an earlier
        confinement that was never undone (its pytest was killed): every thread
        goes back to it, not to the mask it was left with.
        Raises ``PermissionError`` or ``OSError`` when the mask cannot be set;
        what was set by then is undone first, as it is on any interruption.
        """
        wanted = set(cpus)
        previous: dict[int, set[int]] = {}
        try:
            for tid in self._threads():
                try:
                    # noted before it is changed: an interruption between the two
                    # restores a mask that was never changed, which does no harm
                    previous[tid] = set(original) if original else os.sched_getaffinity(tid)
                    os.sched_setaffinity(tid, wanted)
                except ProcessLookupError:
                    previous.pop(tid, None)  # the thread ended meanwhile
        except BaseException:
            self.restore(previous)
            raise
        self.cpus = frozenset(wanted)
        return previous

    def restore(self, previous: dict[int, set[int]]) -> None:
        """Undo ``confine``: every thread of the tree gets its mask back.

        Threads and processes that started while confined (a runner for a new
        num_thread, the server's own new threads) inherited the confined mask;
        they get the server's mask from before. Signals are held meanwhile, so a
        second Ctrl-C cannot leave the server half restored.
        """
        if not previous:
            return
        confined = set(self.cpus)
        server_before = previous.get(self.pid)
        with _signals_held():
            for tid in self._threads():
                before = previous.get(tid)
                if before is None and server_before is not None:
                    try:
                        current = os.sched_getaffinity(tid)
                    except OSError:
                        continue
                    # one that set a mask of its own outside the confinement keeps it
                    if current <= confined:
                        before = server_before
                if before is None:
                    continue
                with contextlib.suppress(OSError):  # ended meanwhile
                    os.sched_setaffinity(tid, before)
        try:
            self.cpus = frozenset(self._process.cpu_affinity() or ())
        except (psutil.Error, AttributeError):
            self.cpus = frozenset()

    def runner(self) -> Runner | None:
        for proc in self._tree()[1:]:
            try:
                cmdline = proc.cmdline()
            except psutil.Error:
                continue
            if _is_runner(cmdline):
                return Runner(proc.pid, threads_from_cmdline(cmdline), tuple(cmdline))
        return None


@dataclass(frozen=True)
class Located:
    """The server's process, where it can be watched; ``why`` says what was found
    ("server pid 42", or why none), and ``so`` what that costs a sweep."""

    server: ServerProcess | None
    why: str
    so: str = ""

    @property
    def reason(self) -> str:
        return f"{self.why}, so {self.so}" if self.so else self.why


def _listening_pid(port: int) -> int | None:
    try:
        connections = psutil.net_connections(kind="tcp")
    except (psutil.AccessDenied, OSError):
        return None
    for conn in connections:
        listening = conn.status == psutil.CONN_LISTEN and conn.laddr
        if listening and conn.laddr.port == port and conn.pid:
            return int(conn.pid)
    return None


def _name(pid: int) -> str:
    try:
        return str(psutil.Process(pid).name())
    except psutil.Error:
        return "?"


#: Processes that forward a port to a server elsewhere (a container, another host):
#: their CPU time is not the model's.
FORWARDERS = frozenset(
    {
        "docker-proxy",
        "rootlessport",
        "slirp4netns",
        "pasta",
        "kubectl",
        "ssh",
        "sshd",
        "socat",
        "nginx",
        "haproxy",
        "envoy",
        "caddy",
        "traefik",
    }
)


def _looks_like_ollama(pid: int) -> bool:
    """False for a known port forwarder, unless it has runner children after all."""
    try:
        process = psutil.Process(pid)
        if process.name() not in FORWARDERS:
            return True
        return any(_is_runner(child.cmdline()) for child in process.children(recursive=True))
    except psutil.Error:
        return False


def _ollama_serve_pids() -> list[int]:
    pids = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = proc.info.get("cmdline") or []
        if (
            len(cmdline) >= 2
            and "ollama" in cmdline[0].rsplit("/", 1)[-1]
            and (cmdline[1] == "serve")
        ):
            pids.append(int(proc.info["pid"]))
    return pids


NOT_MEASURED = "CPU utilization is not measured; throughput still is"


def locate_server(host: str) -> Located:
    """Find the process that serves ``host``; say why when it cannot be watched."""
    if not is_local(host):
        return Located(
            None,
            f"{host} is not on this machine",
            "CPU utilization cannot be measured; throughput still is",
        )
    _, port = split_host(host)
    pid = _listening_pid(port)
    if pid is not None and not _looks_like_ollama(pid):
        # e.g. docker-proxy publishing a container's port: its CPU time is not the model's
        owner = _name(pid)
        candidates = _ollama_serve_pids()
        if len(candidates) != 1:
            return Located(
                None,
                f"port {port} is served by {owner} (pid {pid}), not by an Ollama server on this "
                "machine (a proxy or a container?)",
                NOT_MEASURED,
            )
        pid = candidates[0]
    if pid is None:
        candidates = _ollama_serve_pids()
        if len(candidates) == 1:
            pid = candidates[0]
        else:
            return Located(
                None,
                f"could not tell which process listens on port {port} (run pytest as the "
                "server's user or as root)",
                NOT_MEASURED,
            )
    try:
        return Located(ServerProcess(pid), f"server pid {pid}")
    except psutil.Error as exc:
        return Located(None, f"cannot watch process {pid}: {exc}")


def process_started(pid: int) -> float | None:
    """When the live process ``pid`` started; None when there is none (a killed one
    its parent has not waited for yet, a zombie, is none). With the pid it names one
    process for good: a pid is reused, a pid and its start time are not."""
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        return float(process.create_time())
    except psutil.Error:
        return None
