"""The run's state: its connection, the sweeps recorded, and what a baseline asks of them.

One ``RunState`` per pytest process (a pytest-xdist worker hands its sweeps and
warnings to the controller's). It holds the saved run this one is compared with and
the gate that plans how many samples each compared row needs, and finds the
machine's limits for the roofline (cached per machine, see ``limits.py``).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .client import ModelFacts
from .comparison import Gate
from .connection import Connection, connect
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
from .machine import parse_proc_cgroup
from .options import Settings
from .records import RecordedSweep
from .results import Sweep
from .roofline import ModelCost, ModelFactsMissing
from .saved_runs import SavedRun, entry_of
from .thresholds import Thresholds
from .verdicts import Verdict


@dataclass(frozen=True)
class StartFacts:
    """What a run finds before its tests, for the header: the server and its machine,
    the model, a token's cost and the machine's limits where already probed; what
    could not be read says why (``error``, ``model_error``)."""

    connection: Connection | None = None
    error: str | None = None
    model: ModelFacts | None = None
    model_error: str | None = None
    cost: ModelCost | None = None
    limits: MachineLimits | None = None


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

    def start_facts(self) -> StartFacts:
        """Connect and read what the header shows; errors are kept as text (each test
        that needs the server says them again)."""
        try:
            connection = self.connect()
        except OllamaCpuError as exc:
            return StartFacts(error=str(exc))
        model = cost = None
        model_error = None
        if self.settings.model:
            try:
                model = connection.client.model_facts(self.settings.model)
            except OllamaCpuError as exc:
                model_error = str(exc)
            else:
                if connection.server is not None and self.settings.roofline != "off":
                    with contextlib.suppress(OllamaCpuError, ModelFactsMissing):
                        cost = connection.cost_of(model)
        limits = self.known_limits(connection)
        return StartFacts(connection, None, model, model_error, cost, limits)

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
            self._connection = connect(self.settings)
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
