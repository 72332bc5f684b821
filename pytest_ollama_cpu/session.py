"""Per-run state: the connection to Ollama, found once, and the sweeps recorded.

The server is contacted on first use, not at start-up, so a run whose tests
are all skipped never waits on the network. A failed connection is remembered
and reported to every test that needs it, with the same message.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from .baseline import SavedRun, entry_of
from .client import ModelFacts, OllamaClient
from .comparison import Gate
from .errors import OllamaCpuError
from .limits import (
    DAY,
    LimitsFile,
    MachineLimits,
    cached_limits,
    limits_cache_path,
    peek_limits,
    probe_limits,
)
from .locking import (
    LockTimeout,
    clear_confinement,
    confinement_note,
    left_confined,
    lock_dir,
    note_confinement,
    taking_turns,
)
from .machine import MachineFacts, format_cpu_list, parse_proc_cgroup, read_machine_facts
from .options import Settings
from .processes import ServerProcess, locate_server
from .records import RecordedSweep
from .results import ServerFacts, Sweep
from .roofline import ModelCost, model_cost
from .thresholds import Thresholds
from .verdicts import Verdict


@dataclass(frozen=True)
class Connection:
    client: OllamaClient
    server: ServerProcess | None
    facts: ServerFacts
    machine: MachineFacts
    cpus: tuple[int, ...] | None = None

    def cost_of(self, model: ModelFacts) -> ModelCost:
        """The model's cost of a token, from its facts on the server; raises
        ``OllamaCpuError`` or ``ModelFactsMissing`` where they cannot be read."""
        return model_cost(self.client.model_info(model.name), model.size)

    @contextlib.contextmanager
    def confined(self) -> Iterator[None]:
        """Keep the server on ``cpus`` (``--ollama-cpu-cpus``) for the duration.

        Called with the server's lock held. However the sweep ends, Ctrl-C
        included, every process of the server's tree gets its mask back; a note
        beside the locks lets the next sweep undo what a killed one could not.
        """
        if self.cpus is None or self.server is None:
            yield
            return
        server = self.server
        note = confinement_note(lock_dir(), server.pid, server.started)
        previous: dict[int, set[int]] = {}
        try:
            current = os.sched_getaffinity(server.pid)
            original = left_confined(note, current)
            note_confinement(note, original or current, set(self.cpus))
            previous = server.confine(self.cpus, original)
        except OSError as exc:
            clear_confinement(note)
            raise CpuSetRefused(
                f"cannot confine the Ollama server (pid {server.pid}) to CPUs "
                f"{format_cpu_list(self.cpus)}: {exc.strerror or exc}. Run pytest as the server's "
                "user or as root, or start the server under 'taskset -c LIST' and drop "
                "--ollama-cpu-cpus."
            ) from None
        try:
            yield
        finally:
            server.restore(previous)
            clear_confinement(note)


class CpuSetRefused(OllamaCpuError):
    pass


@dataclass
class RunState:
    settings: Settings
    sweeps: list[RecordedSweep] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    #: the saved run this one is compared with, where one is
    baseline: SavedRun | None = None
    #: what the comparison and the saved run need of each sweep while it runs; None
    #: when the run is neither compared nor saved
    gate: Gate | None = None
    _connection: Connection | None = None
    _error: OllamaCpuError | None = None
    #: how many of ``sweeps`` and ``warnings`` a worker has handed to the controller
    _handed_over: tuple[int, int] = (0, 0)
    #: when the run began (epoch seconds): ``--ollama-cpu-roofline fresh`` probes again
    #: what was probed before it
    started: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        s = self.settings
        if self.gate is None and (self.baseline is not None or s.save or s.autosave):
            # alpha is shared over the baseline's rows: the comparison's rows, unless
            # tests were added or dropped since (it sets sample counts, not error rates)
            rows = len(self.baseline.entries) if self.baseline is not None else 1
            self.gate = Gate.planned(s.compare_fail, s.thresholds.alpha, rows)

    def sample_plan(
        self, nodeid: str, repeat: int, most: int
    ) -> Callable[[Sweep], set[int]] | None:
        """What the gate asks of a sweep of test ``nodeid`` (its ``repeat``-th of the
        same workload): a function naming the thread counts with fewer samples than
        their comparison needs (``comparison.Gate.samples_needed``, from the baseline
        entry's samples), or, in a run that is saved, ``most`` where there is no
        baseline entry to plan from. ``None`` for a run neither compared nor saved."""
        gate, baseline = self.gate, self.baseline
        if gate is None:
            return None
        saving = bool(self.settings.save or self.settings.autosave)
        needed: dict[int, int] = {}  # fixed by the baseline: planned once a count

        def need(sweep: Sweep, threads: int) -> int:
            if threads not in needed:
                before = entry_of(baseline, nodeid, sweep, threads, repeat) if baseline else None
                if before is not None:
                    needed[threads] = gate.samples_needed(gate.baseline_samples(before), most)
                else:
                    needed[threads] = most if saving else 0
            return needed[threads]

        def wanted(sweep: Sweep) -> set[int]:
            return {r.threads for r in sweep if len(r.undisturbed) < need(sweep, r.threads)}

        return wanted

    def machine_limits(
        self,
        connection: Connection,
        counts: Sequence[int],
        on_probe: Callable[[int], None] | None = None,
    ) -> MachineLimits:
        """The limits of the server's machine at ``counts``, as the server may use it
        (its CPUs, its cgroup quota): from the machine's cache file where probed
        within a day (``fresh``: within this run), else probed now and kept there;
        ``on_probe`` is told each count as its probe begins."""
        server, machine = connection.server, connection.machine
        assert server is not None
        return cached_limits(
            LimitsFile(limits_cache_path()),
            _limits_key(connection),
            counts,
            lambda missing: probe_limits(
                missing,
                machine.affinity,
                server_pid=server.pid,
                quota_cpus=machine.cgroup_quota_cpus,
                on_count=on_probe,
            ),
            max_age=self._limits_age(),
        )

    def known_limits(self, connection: Connection) -> MachineLimits | None:
        """The limits already probed for the server's machine, probing nothing."""
        if connection.server is None or self.settings.roofline == "off":
            return None
        cache = LimitsFile(limits_cache_path())
        return peek_limits(cache, _limits_key(connection), self._limits_age())

    def _limits_age(self) -> float:
        """How old probed limits may be: a day, or this run's age (``fresh``)."""
        return time.time() - self.started if self.settings.roofline == "fresh" else DAY

    def connect(self) -> Connection:
        """The connection, made on first call; raises the same error every time."""
        if self._connection is not None:
            return self._connection
        if self._error is not None:
            raise self._error
        try:
            self._connection = _connect(self.settings)
        except OllamaCpuError as exc:
            self._error = exc
            raise
        return self._connection

    @property
    def connection(self) -> Connection | None:
        return self._connection

    def close(self) -> None:
        if self._connection is not None:
            self._connection.client.close()

    def record(
        self,
        nodeid: str,
        sweep: Sweep,
        verdict: Verdict | None = None,
        thresholds: Thresholds | None = None,
        order: int = 0,
    ) -> None:
        self.sweeps.append(RecordedSweep(nodeid, sweep, verdict, thresholds, order))

    def hand_over(self) -> tuple[list[RecordedSweep], list[str]]:
        """The sweeps and warnings not handed over yet (by a pytest-xdist worker)."""
        sweeps, warnings = self._handed_over
        self._handed_over = (len(self.sweeps), len(self.warnings))
        return self.sweeps[sweeps:], self.warnings[warnings:]

    def add(self, recorded: list[RecordedSweep], warnings: list[str]) -> None:
        """Take in results measured elsewhere (a pytest-xdist worker)."""
        self.sweeps.extend(recorded)
        self.warnings.extend(warnings)

    def ordered(self) -> list[RecordedSweep]:
        """The sweeps in collection order, however they arrived."""
        return sorted(self.sweeps, key=lambda r: r.order)


def _limits_key(connection: Connection) -> dict[str, Any]:
    """What makes the machine's limits as the server sees them: other CPUs, another
    quota or cgroup, another machine: other limits."""
    machine, server = connection.machine, connection.server
    assert server is not None
    cgroups = parse_proc_cgroup(_read_text(f"/proc/{server.pid}/cgroup"))
    return {
        "hostname": machine.hostname,
        "cpu_model": machine.cpu_model,
        "cpus": list(machine.affinity),
        "quota_cpus": machine.cgroup_quota_cpus,
        "cgroup": cgroups.get("cpu", cgroups.get("")),
    }


def _read_text(path: str) -> str:
    try:
        with open(path) as file:
            return file.read()
    except OSError:
        return ""


def _connect(settings: Settings) -> Connection:
    auth = settings.credentials.auth if settings.credentials else None
    client = OllamaClient(settings.host, settings.timeout, auth)
    version = client.version()
    located = locate_server(settings.host)
    server = located.server
    if settings.cpus is not None and server is None:
        raise CpuSetRefused(
            f"--ollama-cpu-cpus {format_cpu_list(settings.cpus)} cannot be applied: "
            f"{located.reason.split(', so')[0]}. The plugin can confine only a server on this "
            "machine; start a remote server under 'taskset -c LIST' instead."
        )
    if server is not None:
        _undo_killed_confinement(settings.host, server)
    machine = read_machine_facts(server.pid if server else None, settings.cpus)
    facts = ServerFacts(
        host=settings.host,
        version=version,
        local=server is not None,
        utilization_note=located.reason,
    )
    return Connection(client, server, facts, machine, settings.cpus)


def _undo_killed_confinement(host: str, server: ServerProcess) -> None:
    """A sweep killed while it kept the server confined (``--ollama-cpu-cpus``) left
    it so: give it its mask back before its usable CPUs are read, unless a sweep is
    running against it now (that one does it, under the lock)."""
    note = confinement_note(lock_dir(), server.pid, server.started)
    if not note.exists():
        return
    with contextlib.suppress(LockTimeout, OSError), taking_turns(host, (), 0.0):
        original = left_confined(note, os.sched_getaffinity(server.pid))
        if original:
            server.confine(sorted(original))  # every thread of the tree, back to it
            clear_confinement(note)
