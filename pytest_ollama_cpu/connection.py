"""The connection to the Ollama server: found once per run, with the facts of its machine.

The server is contacted on first use, not at start-up, so a run whose tests
are all skipped never waits on the network. ``run.RunState`` remembers a failed
connection and reports it to every test that needs it, with the same message.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from .client import ModelFacts, OllamaClient
from .errors import OllamaCpuError
from .locking import (
    LockTimeout,
    clear_confinement,
    confinement_note,
    left_confined,
    lock_dir,
    note_confinement,
    taking_turns,
)
from .machine import MachineFacts, format_cpu_list, read_machine_facts
from .options import Settings
from .processes import ServerProcess, locate_server
from .roofline import ModelCost, model_cost


@dataclass(frozen=True)
class ServerFacts:
    """What a sweep keeps of the server: where, which version, and whether its
    processes (and so its CPU use) can be watched from here (``utilization_note``: why)."""

    host: str
    version: str
    local: bool
    utilization_note: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "version": self.version,
            "local": self.local,
            "utilization_note": self.utilization_note,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ServerFacts:
        return cls(data["host"], data["version"], bool(data["local"]), data["utilization_note"])


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


def connect(settings: Settings) -> Connection:
    """Reach the server at ``settings.host``, find its process where it runs here, and
    read the facts of its machine; raises ``OllamaCpuError`` saying what failed."""
    auth = settings.credentials.auth if settings.credentials else None
    client = OllamaClient(settings.host, settings.timeout, auth)
    version = client.version()
    located = locate_server(settings.host)
    server = located.server
    if settings.cpus is not None and server is None:
        raise CpuSetRefused(
            f"--ollama-cpu-cpus {format_cpu_list(settings.cpus)} cannot be applied: "
            f"{located.why}. The plugin can confine only a server on this "
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
