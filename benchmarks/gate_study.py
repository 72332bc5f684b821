"""The baseline gate on the real server: A/A reruns and known, induced slowdowns.

Saves a baseline of a ``threads(1, 2)`` sweep on the embedded Ollama, then
- reruns the same server unchanged ``--aa`` times (A/A): every regression row is
  a false alarm, and the spread of the changes is the run-to-run noise;
- reruns it in cgroup CPU quotas that slow it by a known amount (``--quota``,
  e.g. 0.9 CPU slows one thread by about 10%), ``--slow`` times each: the share
  of rows flagged is the gate's power against that drop.
Each rerun is compared with the baseline by the plugin's own ``compare`` under
the rule ``--rule``; the table gives per thread count the changes, how often a
row was flagged, and the median ``detects`` figure.

    .venv/bin/python benchmarks/gate_study.py [--rounds 5] [--aa 6] [--slow 4] \\
        [--quota 0.9 --quota 1.7] [--rule tokens_per_second:5%]

The baseline is saved as the plugin saves a first run (the most rounds at each
thread count); each rerun is compared with it by the plugin as CI would run it
(``--ollama-cpu-compare``), so its samples are planned from the baseline's.

The quotas need a writable cgroup v1 cpu controller (root); without one only the
A/A part runs.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pytest_ollama_cpu.comparison import compare  # noqa: E402
from pytest_ollama_cpu.embedded import (  # noqa: E402
    CGROUP_CPU,
    MODEL_NAME,
    EmbeddedServer,
    cpu_quota,
    running,
)
from pytest_ollama_cpu.rules import parse_rule  # noqa: E402
from pytest_ollama_cpu.saved_runs import find, load_file  # noqa: E402

SWEEP = """
import pytest

@pytest.mark.threads(1, 2)
def test_generation(ollama_cpu):
    ollama_cpu.generate("Explain what a CPU cache is.")
"""

CGROUP = CGROUP_CPU


@contextlib.contextmanager
def quota(server: EmbeddedServer, cpus: float | None) -> Iterator[None]:
    if cpus is None:
        yield
        return
    assert server.process is not None
    with cpu_quota(server.process.pid, cpus):
        yield


def measure(folder: Path, server: EmbeddedServer, rounds: int, name: str, *gate: str) -> Path:
    """One run of the sweep, saved as ``name``; ``gate``: options that compare it with
    the baseline as CI would (the rows' samples are planned from the baseline's)."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--ollama-cpu",
            f"--ollama-cpu-host={server.host}",
            f"--ollama-cpu-model={MODEL_NAME}",
            f"--ollama-cpu-rounds={rounds}",
            f"--ollama-cpu-save={name}",
            *gate,
        ],
        cwd=folder,
        capture_output=True,
        text=True,
    )
    if done.returncode not in (0, 1):  # 1: the gate found a regression
        raise SystemExit(f"the run {name} failed:\n{done.stdout[-3000:]}{done.stderr[-2000:]}")
    return find(folder / ".benchmarks", name)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--aa", type=int, default=6)
    parser.add_argument("--slow", type=int, default=4)
    parser.add_argument("--quota", type=float, action="append")
    parser.add_argument("--rule", default="tokens_per_second:5%")
    parser.add_argument("--alpha", type=float, default=0.01)
    args = parser.parse_args()
    rule = parse_rule(args.rule)
    quotas = args.quota or [0.9, 1.7]
    if not ((CGROUP / "cpu.cfs_quota_us").exists() and os.access(CGROUP, os.W_OK)):
        print("no writable cgroup v1 cpu controller: A/A reruns only")
        quotas = []
    rows: dict[tuple[str, int], list[tuple[float, bool, float | None]]] = {}
    with running(ROOT / ".ollama-embedded") as server, tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "test_sweep.py").write_text(SWEEP)
        os.chdir(folder)  # find() resolves names in the storage folder of this machine
        baseline = load_file(measure(folder, server, args.rounds, "baseline"))
        plan = [("A/A (unchanged)", None)] * args.aa
        plan += [(f"quota {q:g} CPU", q) for q in quotas for _ in range(args.slow)]
        gate = ("--ollama-cpu-compare=baseline", f"--ollama-cpu-compare-fail={rule.text}")
        for i, (label, cpus) in enumerate(plan):
            with quota(server, cpus):
                run = load_file(measure(folder, server, args.rounds, f"run{i}", *gate))
            comparison = compare(baseline, run, [rule], args.alpha)
            counts = {
                int(e["extra_info"]["ollama_cpu"]["threads"]): len(e["stats"]["data"])
                for e in run.document["benchmarks"]
            }
            for row in comparison.rows:
                change = -1.0 if row.shift is None else row.shift.estimate - 1
                rows.setdefault((label, row.threads), []).append(
                    (change, row.regression, row.detectable, counts.get(row.threads, 0))
                )
            print(
                f"{label:18} "
                + "  ".join(
                    f"t{r.threads} n {counts.get(r.threads, 0)} {r.change:>7} {r.verdict}"
                    + (f" (detects {r.detectable_text})" if r.detectable is not None else "")
                    for r in comparison.rows
                ),
                flush=True,
            )
    print()
    base_counts = {
        int(e["extra_info"]["ollama_cpu"]["threads"]): len(e["stats"]["data"])
        for e in baseline.document["benchmarks"]
    }
    print(
        f"rule {rule.text}, {args.rounds} rounds, alpha {args.alpha} over the "
        f"{len(comparison.rows)} rows of a run; baseline samples: "
        + ", ".join(f"t{t} {n}" for t, n in sorted(base_counts.items()))
    )
    print(
        "| runs | threads | runs | samples now (mean) | changes (median, min to max) "
        "| flagged | median detects |"
    )
    print("|---|---|---|---|---|---|---|")
    for (label, threads), found in rows.items():
        changes = [c for c, _, _, _ in found]
        flagged = sum(1 for _, r, _, _ in found if r)
        detects = [d for _, _, d, _ in found if d is not None]
        shown = f"{statistics.median(detects):.0%}" if detects else "-"
        samples = statistics.mean(n for _, _, _, n in found)
        print(
            f"| {label} | {threads} | {len(found)} | {samples:.1f} | "
            f"{statistics.median(changes):+.1%} ({min(changes):+.1%} to {max(changes):+.1%}) "
            f"| {flagged}/{len(found)} | {shown} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
