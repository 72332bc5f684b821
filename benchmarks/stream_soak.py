"""Streamed replies in a long loop: how many end done, how many Ollama's runaway guard
stopped, and how many were cut (none should be).

Runs sweeps as the fixture does (``SweepRunner``: streamed requests with the server's
CPU times read before, at the first token and after, the runner found by psutil, the
disturbance check and its retakes), alternating generate and chat and the order of the
thread counts, against the embedded Ollama started with ``OLLAMA_DEBUG=1``, so that its
log says each time its guard ("prediction aborted, token repeat limit reached") ended a
reply. Every streamed reply is counted by how it ended, as the plugin's client read it.
A reply the guard stopped is retaken by the sweep (``sampler.SHORT_REPLY_TRIES``).

    .venv/bin/python benchmarks/stream_soak.py [--requests 2000] [--num-predict 48]

Prints a line per block and, at the end, the counts, the guard's lines in the server's
log, and the seconds taken. Exits 1 if any reply was cut.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pytest_ollama_cpu import client as client_module  # noqa: E402
from pytest_ollama_cpu.client import (  # noqa: E402
    BadReply,
    OllamaClient,
    RepeatStopped,
    RequestKind,
)
from pytest_ollama_cpu.connection import ServerFacts  # noqa: E402
from pytest_ollama_cpu.embedded import MODEL_NAME, running  # noqa: E402
from pytest_ollama_cpu.errors import OllamaCpuError  # noqa: E402
from pytest_ollama_cpu.machine import read_machine_facts  # noqa: E402
from pytest_ollama_cpu.processes import locate_server  # noqa: E402
from pytest_ollama_cpu.sampler import SweepRunner, Workload  # noqa: E402

GUARD_LINE = "prediction aborted, token repeat limit reached"

#: the example project's two requests; its chat at 48 tokens met the guard in CI
WORKLOADS: dict[str, dict[str, Any]] = {
    "generate": {"prompt": "Explain what a CPU cache is."},
    "chat": {"messages": [{"role": "user", "content": "Name three uses of a hash table."}]},
}


class CountingClient(OllamaClient):
    """The plugin's client, counting how each streamed reply ended."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ended: collections.Counter[str] = collections.Counter()
        self.cuts: list[str] = []

    def _reply(self, request: Any, on_first: Any, what: str, model: str) -> dict[str, Any]:
        streamed = on_first is not None
        try:
            reply = super()._reply(request, on_first, what, model)
        except RepeatStopped:
            self.ended["stopped by the runaway guard"] += 1
            raise
        except BadReply as exc:
            self.ended["cut"] += 1
            self.cuts.append(str(exc))
            raise
        except OllamaCpuError as exc:
            self.ended[f"other error ({type(exc).__name__})"] += 1
            raise
        self.ended["done" if streamed else "done (not streamed)"] += 1
        return reply


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--num-predict", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=10, help="samples per thread count a block")
    args = parser.parse_args()

    os.environ["OLLAMA_DEBUG"] = "1"  # the server logs each time its guard stops a reply
    cpus = sorted(os.sched_getaffinity(0))
    threads = [1, 2] if len(cpus) >= 2 else [1]
    started = time.monotonic()
    with running(ROOT / ".ollama-embedded") as server:
        client = CountingClient(server.host, timeout=120)
        located = locate_server(server.host)
        assert located.server is not None, located.why
        facts = ServerFacts(server.host, client.version(), True, located.reason)
        machine = read_machine_facts(located.server.pid)
        runner = SweepRunner(client, located.server, facts, machine)
        model = client.model_facts(MODEL_NAME)
        log_from = server.log_path.stat().st_size
        block = 0
        interrupted = 0
        while sum(client.ended.values()) < args.requests:
            kind: RequestKind = "generate" if block % 2 == 0 else "chat"
            order = threads if block % 4 < 2 else threads[::-1]
            workload = Workload(kind, MODEL_NAME, args.num_predict, **WORKLOADS[kind])
            try:
                sweep = runner.run(workload, model, order, args.rounds)
                rates = ", ".join(
                    f"{r.threads}: {r.tokens_per_second.median:.1f}"
                    for r in sweep
                    if r.samples and not r.busy
                )
            except OllamaCpuError as exc:
                interrupted += 1
                rates = f"interrupted: {exc}"
            block += 1
            print(
                f"block {block:3d} {kind:8s} threads {order}: {dict(client.ended)} "
                f"(tokens/s {rates})",
                flush=True,
            )
        client.close()
        log = server.log_path.read_bytes()[log_from:].decode(errors="replace")
    took = time.monotonic() - started
    total = sum(client.ended.values())
    print(f"\n{total} streamed requests in {took:.0f} s, {block} blocks, {interrupted} stopped")
    for how, count in client.ended.most_common():
        print(f"  {how}: {count}")
    print(f"the server's log: {log.count(GUARD_LINE)} x '{GUARD_LINE}'")
    print(f"guard: {client_module.REPEAT_GUARD_PIECES} pieces of one text in a row")
    for cut in client.cuts:
        print(f"  cut: {cut}")
    return 1 if client.ended["cut"] else 0


if __name__ == "__main__":
    sys.exit(main())
