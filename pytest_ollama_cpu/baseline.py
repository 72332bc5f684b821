"""Saved runs in pytest-benchmark's layout and JSON schema, so its tools read them.

A run is saved as ``STORAGE/<machine id>/<NNNN>_<name>.json`` with
``machine_info``, ``commit_info``, ``benchmarks[]``, ``datetime`` and
``version``, built with pytest-benchmark's own helpers. Each entry is one
test, model and thread count; its ``stats`` are in seconds per generated token
(so pytest-benchmark's ``ops`` is tokens/s and lower-is-better holds), and the
raw samples, utilization and machine facts ride along in
``extra_info["ollama_cpu"]``.

Files are never overwritten: a new number is taken, the file is written under a
temporary name and linked into place, which fails rather than replace a file
that appeared meanwhile.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_benchmark import __version__ as _benchmark_version
from pytest_benchmark.plugin import pytest_benchmark_generate_machine_info as _machine_info
from pytest_benchmark.stats import Stats
from pytest_benchmark.utils import get_commit_info as _commit_info
from pytest_benchmark.utils import get_current_time as _current_time
from pytest_benchmark.utils import get_machine_id as _machine_id

from . import __version__
from .records import RecordedSweep, by_machine
from .results import Sweep

#: Our part of each entry's ``extra_info``; its ``schema`` says which layout it has.
EXTRA_KEY = "ollama_cpu"
SCHEMA = 1

DEFAULT_STORAGE = Path(".benchmarks")

_NUMBERED = re.compile(r"^(\d{4})_.*\.json$")


class BaselineError(Exception):
    """A saved run that cannot be used; the message names the file and what to do."""


class NoSavedRuns(BaselineError):
    """The storage holds no run of this machine yet (a pipeline's first run)."""

    def __init__(self, folder: Path, elsewhere: str) -> None:
        super().__init__(
            f"no saved runs in {folder} to compare with: save one first with "
            f"--ollama-cpu-save NAME or --ollama-cpu-autosave{elsewhere}"
        )
        self.folder = folder
        self.elsewhere = elsewhere


# pytest-benchmark's helpers, typed: it ships no annotations


def get_machine_id() -> str:
    return str(_machine_id())  # type: ignore[no-untyped-call]


def get_commit_info() -> dict[str, Any]:
    return dict(_commit_info())  # type: ignore[no-untyped-call]


def benchmark_machine_info() -> dict[str, Any]:
    return dict(_machine_info())  # type: ignore[no-untyped-call]


def _stats_dict(seconds: Sequence[float]) -> dict[str, Any]:
    stats = Stats()  # type: ignore[no-untyped-call]
    for value in seconds:
        stats.update(value)  # type: ignore[no-untyped-call]
    result: dict[str, Any] = stats.as_dict()  # type: ignore[no-untyped-call]
    result["data"] = list(seconds)
    result["iterations"] = 1
    return result


# -- building the document -------------------------------------------------------


def entry_name(
    nodeid: str, sweep: Sweep, threads: int, with_machine: bool = False
) -> tuple[str, str]:
    """(name, fullname) of the entry for one thread count of one sweep; a run over
    several machines or servers names them, so baselines compare like with like."""
    where = ""
    if with_machine:
        where = f"@{sweep.machine.hostname}-{sweep.server.host.split('://')[-1]}"
    suffix = f"[{sweep.model.name}-{sweep.kind}-t{threads}{where}]"
    test = nodeid.split("::")[-1]
    return test + suffix, nodeid + suffix


def entry_of(
    run: SavedRun, nodeid: str, sweep: Sweep, threads: int, repeat: int = 1
) -> dict[str, Any] | None:
    """The entry of ``run`` that this sweep's ``threads`` will be compared with, if any:
    ``repeat`` counts the sweeps of the same workload the test ran, this one included."""
    entries = run.entries
    for with_machine in (False, True):
        fullname = entry_name(nodeid, sweep, threads, with_machine)[1]
        if repeat > 1:
            fullname += f"#{repeat}"
        if fullname in entries:
            return entries[fullname]
    return None


def _entries(
    recorded: RecordedSweep, taken: set[str], with_machine: bool
) -> Iterable[dict[str, Any]]:
    sweep = recorded.sweep
    for result in sweep:
        if not result.samples:
            continue
        name, fullname = entry_name(recorded.nodeid, sweep, result.threads, with_machine)
        n = 2
        base_name, base_full = name, fullname
        while fullname in taken:  # the same test ran the same workload again
            name, fullname = f"{base_name}#{n}", f"{base_full}#{n}"
            n += 1
        taken.add(fullname)
        # pytest-benchmark's stats read the undisturbed samples; all of them were
        # disturbed only where the entry says busy (its samples are flagged either way)
        counted = result.undisturbed or result.samples
        seconds = [
            1.0 / s.tokens_per_second if s.tokens_per_second > 0 else float("inf") for s in counted
        ]
        yield {
            "group": recorded.nodeid,
            "name": name,
            "fullname": fullname,
            "params": {
                "model": sweep.model.name,
                "kind": sweep.kind,
                "threads": result.threads,
                "machine": sweep.machine.hostname,
                "server": sweep.server.host,
            },
            "param": f"{sweep.model.name}-{sweep.kind}-t{result.threads}",
            "extra_info": {
                EXTRA_KEY: {
                    "schema": SCHEMA,
                    "test": recorded.nodeid,
                    "threads": result.threads,
                    "runner_threads": result.runner_threads,
                    "kind": sweep.kind,
                    "num_predict": sweep.num_predict,
                    "model": sweep.model.to_dict(),
                    "server": sweep.server.to_dict(),
                    "machine": sweep.machine.to_dict(),
                    "speedup": sweep.speedup(result.threads),
                    "efficiency": sweep.efficiency(result.threads),
                    "complete": sweep.complete,
                    "busy": result.busy,
                    "set_aside": len(result.set_aside),
                    "waited_seconds": result.waited_seconds,
                    "samples": [s.to_dict() for s in result.samples],
                    "warmup": None if result.warmup is None else result.warmup.to_dict(),
                }
            },
            "options": {"unit": "seconds per generated token", "rounds": len(counted)},
            "stats": _stats_dict(seconds),
        }


def machine_info(recorded: Sequence[RecordedSweep]) -> dict[str, Any]:
    """pytest-benchmark's machine info, with our machine and server facts added."""
    info = benchmark_machine_info()
    if recorded:
        sweep = recorded[0].sweep
        info[EXTRA_KEY] = {
            "machine": sweep.machine.to_dict(),
            "server": sweep.server.to_dict(),
        }
    return info


def build_document(
    recorded: Sequence[RecordedSweep],
    machine: dict[str, Any] | None = None,
    commit: dict[str, Any] | None = None,
) -> dict[str, Any]:
    taken: set[str] = set()
    several = len(by_machine(recorded)) > 1
    benchmarks = [entry for r in recorded for entry in _entries(r, taken, several)]
    return {
        "machine_info": machine if machine is not None else machine_info(recorded),
        "commit_info": commit if commit is not None else get_commit_info(),
        "benchmarks": benchmarks,
        "datetime": _dt.datetime.now(_dt.timezone.utc).isoformat(),
        "version": _benchmark_version,
        EXTRA_KEY: {"schema": SCHEMA, "plugin_version": __version__},
    }


# -- saving ---------------------------------------------------------------------


def autosave_name(commit: dict[str, Any]) -> str:
    """pytest-benchmark's autosave name: commit id, time, and a mark for a dirty tree."""
    name = f"{commit.get('id', 'unversioned')}_{_current_time()}"  # type: ignore[no-untyped-call]
    if commit.get("dirty"):
        name += "_uncommitted-changes"
    return name


def _safe_name(name: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.")
    if not cleaned:
        raise BaselineError(
            f"--ollama-cpu-save {name!r}: give a name of letters, digits, '.', '_' or '-'"
        )
    return cleaned


def machine_folder(storage: Path) -> Path:
    return storage / get_machine_id()


def saved_runs(folder: Path) -> list[Path]:
    """The numbered files ``NNNN_name.json`` in one machine's folder, oldest first."""
    return sorted(p for p in folder.glob("*.json") if _NUMBERED.match(p.name))  # by name


def run_number(path: Path) -> int:
    return int(path.name[:4])


def run_name(path: Path) -> str:
    """``0003_main.json`` -> ``main``."""
    return path.name[5:-5]


def _next_number(folder: Path) -> int:
    return max((run_number(p) for p in saved_runs(folder)), default=0) + 1


def saved_under(storage: Path, name: str) -> list[Path]:
    """Runs of this machine already saved under ``name``, oldest first."""
    wanted = _cleaned(name)
    return [p for p in saved_runs(machine_folder(storage)) if run_name(p) == wanted]


def save(document: dict[str, Any], storage: Path, name: str) -> Path:
    """Write ``document`` as the next numbered file; never replaces an existing file."""
    folder = machine_folder(storage)
    folder.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=".saving-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(document, handle, indent=4)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        for _ in range(100):
            target = folder / f"{_next_number(folder):04d}_{_safe_name(name)}.json"
            try:
                os.link(temp, target)  # fails if target exists: nothing is overwritten
            except FileExistsError:
                continue
            return target
        raise BaselineError(f"could not find a free file name in {folder}")
    finally:
        os.unlink(temp)


# -- loading --------------------------------------------------------------------

#: Upgrades from older schemas of ours, each to the next: {old version: function}.
UPGRADES: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {}


@dataclass(frozen=True)
class SavedRun:
    path: Path | None
    document: dict[str, Any]

    @property
    def label(self) -> str:
        return str(self.path) if self.path is not None else "this run"

    @property
    def entries(self) -> dict[str, dict[str, Any]]:
        return {b["fullname"]: b for b in self.document["benchmarks"]}


def validate(raw: Any, where: str) -> dict[str, Any]:
    """Check the layout and upgrade an older schema of ours; raise ``BaselineError``."""
    if not isinstance(raw, dict):
        raise BaselineError(f"{where} is not a saved run: expected a JSON object")
    document: dict[str, Any] = raw
    missing = [k for k in ("machine_info", "benchmarks") if k not in document]
    if missing:
        raise BaselineError(
            f"{where} is not in pytest-benchmark's format (missing {', '.join(missing)})"
        )
    ours = document.get(EXTRA_KEY)
    if not isinstance(ours, dict) or "schema" not in ours:
        raise BaselineError(
            f"{where} was not saved by pytest-ollama-cpu (no '{EXTRA_KEY}' section): save a "
            "baseline with --ollama-cpu-save or --ollama-cpu-autosave"
        )
    schema = ours["schema"]
    if not isinstance(schema, int) or schema > SCHEMA:
        raise BaselineError(
            f"{where} has schema {schema!r}, newer than this pytest-ollama-cpu understands "
            f"({SCHEMA}): upgrade pytest-ollama-cpu"
        )
    while schema < SCHEMA:
        if schema not in UPGRADES:
            raise BaselineError(f"{where} has schema {schema}, which cannot be upgraded")
        document = UPGRADES[schema](document)
        schema = int(document[EXTRA_KEY]["schema"])
    for i, bench in enumerate(document["benchmarks"]):
        extra = bench.get("extra_info", {}).get(EXTRA_KEY) if isinstance(bench, dict) else None
        if not isinstance(extra, dict) or "samples" not in extra or "fullname" not in bench:
            raise BaselineError(
                f"{where}: benchmark #{i + 1} has no samples of ours; the file is damaged"
            )
        _check_samples(extra["samples"], f"{where}: {bench['fullname']}")
    return document


#: The figures a comparison reads from each saved sample, and what each may be.
SAMPLE_FIGURES: dict[str, tuple[str, Callable[[float], bool]]] = {
    "tokens_per_second": ("a positive number", lambda v: v > 0),
    "thread_utilization": ("a number of 0 or more", lambda v: v >= 0),
    "machine_utilization": ("a number of 0 or more", lambda v: v >= 0),
}


def _number_in_range(value: Any, ok: Callable[[float], bool]) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return math.isfinite(value) and ok(value)


def _check_samples(samples: Any, where: str) -> None:
    """Every figure a comparison would read is a finite number in its range: a NaN or a
    zero must stop the run with its place named, never read as 'ok'."""
    if not isinstance(samples, list):
        raise BaselineError(f"{where}: 'samples' is not a list; the file is damaged")
    for k, sample in enumerate(samples, 1):
        if not isinstance(sample, dict):
            raise BaselineError(f"{where}: sample {k} is not a JSON object; the file is damaged")
        for name, (allowed, ok) in SAMPLE_FIGURES.items():
            value = sample.get(name)
            if value is None and name != "tokens_per_second":
                continue  # not measured (a remote server, a short request)
            if not _number_in_range(value, ok):
                raise BaselineError(
                    f"{where}: sample {k} has {name} {value!r}, which should be {allowed}; "
                    "the file is damaged or was edited by hand"
                )
        if not isinstance(sample.get("disturbed", False), bool):
            raise BaselineError(
                f"{where}: sample {k} has disturbed {sample['disturbed']!r}, which should be "
                "true or false; the file is damaged or was edited by hand"
            )


def load_file(path: Path) -> SavedRun:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BaselineError(f"baseline {path} does not exist") from None
    except OSError as exc:
        raise BaselineError(f"cannot read baseline {path}: {exc.strerror}") from None
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise BaselineError(
            f"baseline {path} is not valid JSON ({exc}); it may be truncated"
        ) from None
    return SavedRun(path, validate(document, f"baseline {path}"))


def _other_machines(storage: Path, folder: Path) -> str:
    """Where runs of other machines lie, for a first run on a new machine or runner."""
    others = sorted(
        p.name for p in storage.glob("*") if p.is_dir() and p != folder and saved_runs(p)
    )
    if not others:
        return ""
    return (
        f" (runs of other machines are in {storage}: {', '.join(others[:5])}; to compare "
        "with one of them anyway, give its file's path)"
    )


def find(storage: Path, which: str) -> Path:
    """Resolve ``latest``, a number (``3``, ``0003``), a name or a path to a saved file.

    Saved runs come first: a file in the current folder that happens to be
    called ``main`` does not hide the run saved as ``main``.
    """
    folder = machine_folder(storage)
    files = saved_runs(folder)
    if files:
        if which == "latest":
            return files[-1]
        if which.isdigit():
            numbered = [p for p in files if run_number(p) == int(which)]
            if numbered:
                return numbered[-1]
        names = {which, _cleaned(which)}
        exact = [p for p in files if run_name(p) in names]
        if exact:
            return exact[-1]  # a name saved again means its newest run
    candidate = Path(which)
    if candidate.is_file():
        return candidate
    if candidate.suffix == ".json" or "/" in which or os.sep in which:
        raise BaselineError(
            f"baseline {candidate} does not exist (neither a file nor a saved run's name)"
        )
    if not files:
        raise NoSavedRuns(folder, _other_machines(storage, folder))
    matches = [] if which.isdigit() else [p for p in files if which in p.name]
    if len(matches) == 1:
        return matches[0]
    listed = ", ".join(p.name for p in reversed(files[-5:]))
    if not matches:
        raise BaselineError(
            f"no saved run {which!r} in {folder}; give a number, a name or a path "
            f"({len(files)} saved there, newest first: {listed})"
        )
    raise BaselineError(
        f"{which!r} matches several saved runs in {folder}: "
        f"{', '.join(p.name for p in matches)}; give the number"
    )


def _cleaned(name: str) -> str:
    """The name as ``save`` writes it into the file name, or the name itself."""
    try:
        return _safe_name(name)
    except BaselineError:
        return name
