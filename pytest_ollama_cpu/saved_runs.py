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
that appeared meanwhile. Runs saving at once take turns at choosing numbers, so
no two get the same one. Nothing is written or read through a link that leads
out of the storage folder.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
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
from .client import ModelFacts, request_kind
from .connection import ServerFacts
from .errors import OllamaCpuError
from .limits import MachineLimits
from .machine import MachineFacts
from .quantities import GENERATION_RATE, QUANTITIES
from .records import RecordedSweep, by_machine, merged_limits
from .results import Sample, Sweep, ThreadResult
from .results_file import advice, reason, temporary_beside
from .roofline import ModelCost, Roofline

#: Our part of each entry's ``extra_info``; its ``schema`` says which layout it has.
EXTRA_KEY = "ollama_cpu"
SCHEMA = 1

DEFAULT_STORAGE = Path(".benchmarks")

_NUMBERED = re.compile(r"^(\d{4})_.*\.json$")

#: Longest name a run is saved under: the file name must stay within 255 bytes.
MAX_NAME = 200

#: Runs saving into one folder at once take turns at numbering, for at most this long;
#: a turn is milliseconds long, so one held longer was left by a run that was killed.
NUMBERING_TIMEOUT = 60.0
STALE_TURN = 20.0

_DAMAGED = "the file is damaged or was edited by hand"


class SavedRunError(OllamaCpuError):
    """A saved run that cannot be used; the message names the file and what to do."""


class NoSavedRuns(SavedRunError):
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
                    # the rate the test is about, and whether prompts were sent as given:
                    # a report rebuilt from the run draws it as the run did
                    "focus": sweep.focus,
                    "prompt_cache": sweep.prompt_cache,
                    "model": sweep.model.to_dict(),
                    "server": sweep.server.to_dict(),
                    "machine": sweep.machine.to_dict(),
                    "speedup": sweep.speedup(result.threads),
                    "efficiency": sweep.efficiency(result.threads),
                    # the machine's limits at this count and the rates they allow
                    "limits": sweep.limits_at(result.threads),
                    "model_cost": None if sweep.roofline is None else sweep.roofline.cost.to_dict(),
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
        limits = merged_limits(recorded)
        info[EXTRA_KEY] = {
            "machine": sweep.machine.to_dict(),
            "server": sweep.server.to_dict(),
            "limits": None if limits is None else limits.to_dict(),
        }
    return info


def saved_run_document(
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


def check_name(name: str) -> str:
    """The name as a saved run's file name has it: runs of other characters become '-',
    so no name leads out of the storage folder. Refuses a name that would be lost in
    cleaning, too long for a file, or read as something else by --ollama-cpu-compare."""
    if len(name) > MAX_NAME:
        raise SavedRunError(
            f"--ollama-cpu-save {name[:20] + '...'!r}: {len(name)} characters is too long "
            f"for a file name; give at most {MAX_NAME}"
        )
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.")
    if not cleaned:
        raise SavedRunError(
            f"--ollama-cpu-save {name!r}: give a name of letters, digits, '.', '_' or '-'"
        )
    if cleaned.isdigit():
        raise SavedRunError(
            f"--ollama-cpu-save {name!r}: a name of digits alone would be read as a run "
            f"number by --ollama-cpu-compare; add a letter, e.g. 'v{cleaned}'"
        )
    if cleaned == "latest":
        raise SavedRunError(
            f"--ollama-cpu-save {name!r}: --ollama-cpu-compare reads 'latest' as the newest "
            "run, whatever its name; choose another name"
        )
    return cleaned


def machine_folder(storage: Path) -> Path:
    return storage / get_machine_id()


def _outside(path: Path, storage: Path) -> Path | None:
    """Where ``path`` really leads, if that is outside ``storage``."""
    target = Path(os.path.realpath(path))
    root = Path(os.path.realpath(storage))
    return None if target == root or root in target.parents else target


def _folder_of_this_machine(storage: Path) -> Path:
    """This machine's folder of saved runs, once it is known to be usable: refuses a
    storage path that is a file and a folder reached through a link out of it."""
    if storage.exists() and not storage.is_dir():
        raise SavedRunError(
            f"the storage folder {storage} is a file, not a folder: move it away or choose "
            "another storage folder"
        )
    folder = machine_folder(storage)
    target = _outside(folder, storage) if folder.is_symlink() else None
    if target is not None:
        raise SavedRunError(
            f"{folder} is a link to {target}, outside the storage folder {storage}: runs are "
            "neither saved nor read through a link out of the storage folder. Remove the "
            "link, or choose another storage folder"
        )
    if folder.exists() and not folder.is_dir():
        raise SavedRunError(f"{folder} is a file, not a folder of saved runs: move it away")
    return folder


def check_storage(storage: Path) -> None:
    """Refuse, before anything is measured, a storage folder a run could not be saved in."""
    folder = _folder_of_this_machine(storage)
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise SavedRunError(
            f"cannot save runs in {folder}: {existing} is a file, not a folder; move it away "
            "or choose another storage folder with --ollama-cpu-storage"
        )
    try:
        fd, probe = tempfile.mkstemp(prefix=".saving-", suffix=".tmp", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise SavedRunError(
            f"cannot save runs in {existing}: {reason(exc)}; {advice(exc)}, or choose another "
            "storage folder with --ollama-cpu-storage"
        ) from None


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


def _not_saved(folder: Path, error: OSError) -> SavedRunError:
    return SavedRunError(
        f"{folder}: {reason(error)}; nothing was written there and the runs saved there are "
        f"untouched. {advice(error).capitalize()}, or choose another storage folder with "
        "--ollama-cpu-storage"
    )


@contextlib.contextmanager
def _numbering(folder: Path) -> Iterator[None]:
    """One run at a time chooses a number and takes it: two runs saving at once would
    otherwise both take the next number, under different names.

    The turn is a folder made and removed: atomic on every file system, never
    followed if something else has that name, and nothing is left behind.
    """
    turn = folder / ".saving.lock"
    deadline = time.monotonic() + NUMBERING_TIMEOUT
    while True:
        try:
            os.mkdir(turn)
            break
        except FileExistsError:
            pass
        with contextlib.suppress(OSError):
            if time.time() - turn.lstat().st_mtime > STALE_TURN:
                os.rmdir(turn)  # left by a run killed while numbering
                continue
        if time.monotonic() > deadline:
            raise SavedRunError(
                f"{folder}: another run has been numbering its file there for "
                f"{NUMBERING_TIMEOUT:g}s ({turn} exists); if no other pytest is saving there, "
                "remove it and save again"
            )
        time.sleep(0.01)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.rmdir(turn)


def save(document: dict[str, Any], storage: Path, name: str) -> Path:
    """Write ``document`` as the next numbered file; never replaces an existing file.

    A full disk, a refusal or Ctrl-C leaves no file and no temporary file behind.
    """
    cleaned = check_name(name)
    folder = _folder_of_this_machine(storage)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, temp = temporary_beside(folder, ".saving-")
    except OSError as exc:
        raise _not_saved(folder, exc) from None
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(document, handle, indent=4)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        with _numbering(folder):
            for _ in range(100):
                target = folder / f"{_next_number(folder):04d}_{cleaned}.json"
                try:
                    os.link(temp, target)  # fails if target exists, a link included
                except FileExistsError:
                    continue
                return target
        raise SavedRunError(f"could not find a free file name in {folder}")
    except OSError as exc:
        raise _not_saved(folder, exc) from None
    finally:
        with contextlib.suppress(OSError):
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
    """Check the layout and upgrade an older schema of ours; raise ``SavedRunError``.

    Whatever a comparison or the gate reads from the file is checked here, so a file
    damaged or edited by hand stops with its place named, never a traceback or a row
    judged on a NaN."""
    if not isinstance(raw, dict):
        raise SavedRunError(f"{where} is not a saved run: expected a JSON object")
    document: dict[str, Any] = raw
    missing = [k for k in ("machine_info", "benchmarks") if k not in document]
    if missing:
        raise SavedRunError(
            f"{where} is not in pytest-benchmark's format (missing {', '.join(missing)})"
        )
    ours = document.get(EXTRA_KEY)
    if not isinstance(ours, dict) or "schema" not in ours:
        raise SavedRunError(
            f"{where} was not saved by pytest-ollama-cpu (no '{EXTRA_KEY}' section): save a "
            "baseline with --ollama-cpu-save or --ollama-cpu-autosave"
        )
    schema = _expect(ours["schema"], _is_whole, "a whole number", where, f"{EXTRA_KEY}.schema")
    if schema > SCHEMA:
        raise SavedRunError(
            f"{where} has schema {schema!r}, newer than this pytest-ollama-cpu understands "
            f"({SCHEMA}): upgrade pytest-ollama-cpu"
        )
    while schema < SCHEMA:
        if schema not in UPGRADES:
            raise SavedRunError(
                f"{where} has schema {schema}, which this pytest-ollama-cpu cannot upgrade: "
                "save a new baseline with --ollama-cpu-save NAME"
            )
        document = UPGRADES[schema](document)
        schema = int(document[EXTRA_KEY]["schema"])
    info = _expect(document["machine_info"], _is_object, "a JSON object", where, "machine_info")
    name = f"machine_info.{EXTRA_KEY}"
    facts = _expect(info.get(EXTRA_KEY, {}), _is_object, "a JSON object", where, name)
    for key in ("machine", "server"):
        name = f"machine_info.{EXTRA_KEY}.{key}"
        _expect(facts.get(key, {}), _is_object_or_null, "a JSON object", where, name)
    benchmarks = _expect(document["benchmarks"], _is_list, "a list", where, "benchmarks")
    for i, bench in enumerate(benchmarks, 1):
        extra = bench.get("extra_info") if isinstance(bench, dict) else None
        extra = extra.get(EXTRA_KEY) if isinstance(extra, dict) else None
        if not isinstance(extra, dict) or "samples" not in extra:
            raise SavedRunError(
                f"{where}: benchmark #{i} has no samples of ours; the file is damaged"
            )
        fullname = bench.get("fullname", _MISSING)
        _expect(fullname, _is_text, "a string", f"{where}: benchmark #{i}", "fullname")
        _check_entry(bench, extra, f"{where}: {fullname}")
    return document


_MISSING = object()


def _is_object(value: Any) -> bool:
    return isinstance(value, dict)


def _is_object_or_null(value: Any) -> bool:
    return value is None or isinstance(value, dict)


def _is_list(value: Any) -> bool:
    return isinstance(value, list)


def _is_text(value: Any) -> bool:
    return isinstance(value, str)


def _is_text_or_null(value: Any) -> bool:
    return value is None or isinstance(value, str)


def _is_whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_count(value: Any) -> bool:
    return _is_whole(value) and value >= 1


def _shown(value: Any) -> str:
    """A JSON value as a message names it: its kind, and short values themselves."""
    if value is _MISSING:
        return "missing"
    if isinstance(value, dict):
        return "a JSON object"
    if isinstance(value, list):
        return "a list" if value else "an empty list"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f"the string {value[:40]!r}" + ("..." if len(value) > 40 else "")
    return f"the number {value!r}"


def _expect(value: Any, ok: Callable[[Any], bool], allowed: str, where: str, name: str) -> Any:
    if not ok(value):
        raise SavedRunError(
            f"{where}: '{name}' is {_shown(value)}, which should be {allowed}; {_DAMAGED}"
        )
    return value


def _check_entry(bench: dict[str, Any], extra: dict[str, Any], where: str) -> None:
    """The parts of one entry a comparison reads."""
    _expect(bench.get("stats", _MISSING), _is_object, "a JSON object", where, "stats")
    _expect(extra.get("test", _MISSING), _is_text, "a string", where, "test")
    threads = extra.get("threads", _MISSING)
    _expect(threads, _is_count, "a whole number of 1 or more", where, "threads")
    model = _expect(extra.get("model", _MISSING), _is_object, "a JSON object", where, "model")
    for key in ("name", "digest"):
        _expect(model.get(key), _is_text_or_null, "a string", where, f"model.{key}")
    samples = extra["samples"]
    _expect(samples, lambda v: _is_list(v) and bool(v), "a list of samples", where, "samples")
    _check_samples(samples, where)


#: The figures a comparison reads from each saved sample, and what each may be.
SAMPLE_FIGURES: dict[str, tuple[str, Callable[[float], bool]]] = {
    # every quantity a rule can name: a rate or a time is compared by ratio, so it must
    # be positive; a utilization by difference
    **{
        name: ("a positive number", lambda v: v > 0)
        if q.relative
        else ("a number of 0 or more", lambda v: v >= 0)
        for name, q in QUANTITIES.items()
    },
    # read where samples were set aside, to say how busy the machine was
    "other_cores_busy": ("a number of 0 or more", lambda v: v >= 0),
    "server_cpus": ("a whole number of 1 or more", lambda v: v >= 1 and v == int(v)),
}


def _number_in_range(value: Any, ok: Callable[[float], bool]) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return math.isfinite(value) and ok(value)


def _check_samples(samples: list[Any], where: str) -> None:
    """Every figure a comparison would read is a finite number in its range: a NaN or a
    zero must stop the run with its place named, never read as 'ok'."""
    for k, sample in enumerate(samples, 1):
        if not isinstance(sample, dict):
            raise SavedRunError(f"{where}: sample {k} is not a JSON object; the file is damaged")
        for name, (allowed, ok) in SAMPLE_FIGURES.items():
            value = sample.get(name)
            if value is None and name != "tokens_per_second":
                continue  # not measured (a remote server, a short request)
            if not _number_in_range(value, ok):
                raise SavedRunError(
                    f"{where}: sample {k} has {name} {value!r}, which should be {allowed}; "
                    f"{_DAMAGED}"
                )
        if not isinstance(sample.get("disturbed", False), bool):
            raise SavedRunError(
                f"{where}: sample {k} has disturbed {sample['disturbed']!r}, which should be "
                f"true or false; {_DAMAGED}"
            )


def load_file(path: Path, role: str = "baseline") -> SavedRun:
    """Read and check a saved run; ``role`` names it in messages ("baseline", "new run")."""
    where = f"{role} {path}"
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise SavedRunError(f"{where} does not exist") from None
    except OSError as exc:
        raise SavedRunError(f"cannot read {where}: {reason(exc)}") from None
    if not data.strip():
        raise SavedRunError(
            f"{where} is empty: it was cut short or is not a saved run; give another saved "
            "run, or save a new one with --ollama-cpu-save NAME"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise SavedRunError(
            f"{where} is not UTF-8 text, so not a saved run; give a file saved with "
            "--ollama-cpu-save or --ollama-cpu-autosave"
        ) from None
    try:
        document = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise SavedRunError(
            f"{where} is not valid JSON ({exc}); it may be truncated: give another saved "
            "run, or save a new one with --ollama-cpu-save NAME"
        ) from None
    return SavedRun(path, validate(document, where))


def recorded_sweeps(run: SavedRun) -> list[RecordedSweep]:
    """The sweeps of a saved run, rebuilt from its entries (a sweep per test, workload,
    model, machine and repeat; a thread count per entry), in the run's order. Their
    thresholds and verdicts were not saved, so they have none."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for entry in run.document["benchmarks"]:
        extra = entry["extra_info"][EXTRA_KEY]
        params = entry.get("params") or {}
        repeat = str(entry["fullname"]).rpartition("]")[2]  # "" or "#2"
        model = (extra.get("model") or {}).get("name")
        key = (
            extra["test"],
            extra.get("kind"),
            model,
            params.get("machine"),
            params.get("server"),
            repeat,
        )
        groups.setdefault(key, []).append(entry)
    facts = run.document["machine_info"].get(EXTRA_KEY) or {}
    found: list[RecordedSweep] = []
    for key, entries in groups.items():
        where = f"{run.label}: {entries[0]['fullname']}"
        try:
            found.append(RecordedSweep(key[0], _sweep_of(entries, facts), order=len(found)))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise SavedRunError(f"{where}: cannot be read back ({exc!r}); {_DAMAGED}") from None
    return found


def _sweep_of(entries: Sequence[dict[str, Any]], facts: dict[str, Any]) -> Sweep:
    """One sweep from its entries, a thread count each."""
    first = entries[0]["extra_info"][EXTRA_KEY]
    results = {}
    for entry in entries:
        extra = entry["extra_info"][EXTRA_KEY]
        warmup = extra.get("warmup")
        results[int(extra["threads"])] = ThreadResult(
            int(extra["threads"]),
            tuple(Sample.from_dict(s) for s in extra["samples"]),
            None if warmup is None else Sample.from_dict(warmup),
            float(extra.get("waited_seconds") or 0.0),
        )
    roofline = None
    if first.get("model_cost") and facts.get("limits"):
        roofline = Roofline(
            ModelCost.from_dict(first["model_cost"]), MachineLimits.from_dict(facts["limits"])
        )
    return Sweep(
        kind=request_kind(first.get("kind") or "generate"),
        model=ModelFacts.from_dict(first["model"]),
        num_predict=int(first.get("num_predict") or 0),
        threads=tuple(sorted(results)),
        machine=MachineFacts.from_dict(first.get("machine") or facts.get("machine") or {}),
        server=ServerFacts.from_dict(first.get("server") or facts.get("server") or {}),
        results=dict(sorted(results.items())),
        complete=all(bool(e["extra_info"][EXTRA_KEY].get("complete", True)) for e in entries),
        prompt_cache=bool(first.get("prompt_cache", False)),
        focus=str(first.get("focus") or GENERATION_RATE.name),
        roofline=roofline,
    )


def run_label(run: SavedRun) -> str:
    """The run on a history's axis: its name, then its commit and when it was saved
    ('0003_main', 'a1b2c3d4', '2025-11-29 12:25' on three lines), as asv labels a
    benchmark's runs."""
    commit = run.document.get("commit_info") or {}
    ident = str(commit.get("id") or "")[:8] or "no commit"
    if commit.get("dirty"):
        ident += "+"
    when = str(run.document.get("datetime") or "")
    with contextlib.suppress(ValueError):
        when = _dt.datetime.fromisoformat(when).strftime("%Y-%m-%d %H:%M")
    name = run.path.stem if run.path is not None else "this run"
    return f"{name}\n{ident}\n{when}".rstrip()


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


def find(storage: Path, which: str, role: str = "baseline") -> Path:
    """Resolve ``latest``, a number (``3``, ``0003``), a name or a path to a saved file;
    ``role`` names it in an error ("baseline", "new run", "saved run").

    Saved runs come first: a file in the current folder that happens to be
    called ``main`` does not hide the run saved as ``main``. A path is read as
    given; a saved run that is a link out of the storage folder is refused.
    """
    folder = _folder_of_this_machine(storage)
    files = saved_runs(folder)
    if files:
        if which == "latest":
            return _not_led_out(files[-1], storage)
        if which.isdigit():
            numbered = [p for p in files if run_number(p) == int(which)]
            if numbered:
                return _not_led_out(numbered[-1], storage)
        names = {which, _cleaned(which)}
        exact = [p for p in files if run_name(p) in names]
        if exact:
            return _not_led_out(exact[-1], storage)  # a name saved again: its newest run
    candidate = Path(which)
    if candidate.is_file():
        return candidate
    if candidate.suffix == ".json" or "/" in which or os.sep in which:
        raise SavedRunError(
            f"{role} {candidate} does not exist (neither a file nor a saved run's name)"
        )
    if not files:
        raise NoSavedRuns(folder, _other_machines(storage, folder))
    matches = [] if which.isdigit() else [p for p in files if which in p.name]
    if len(matches) == 1:
        return _not_led_out(matches[0], storage)
    listed = ", ".join(p.name for p in reversed(files[-5:]))
    if not matches:
        raise SavedRunError(
            f"no saved run {which!r} in {folder}; give a number, a name or a path "
            f"({len(files)} saved there, newest first: {listed})"
        )
    raise SavedRunError(
        f"{which!r} matches several saved runs in {folder}: "
        f"{', '.join(p.name for p in matches)}; give the number"
    )


def _not_led_out(path: Path, storage: Path) -> Path:
    """A saved run found in the storage folder, unless it is a link out of it: this
    plugin never saves a link, so such a link was put there by hand or by a checkout,
    and comparing with its target unasked would compare with a file nobody chose."""
    target = _outside(path, storage) if path.is_symlink() else None
    if target is not None:
        raise SavedRunError(
            f"saved run {path} is a link to {target}, outside the storage folder {storage}; "
            f"it was not read. To compare with that file, give its path ({target}); or "
            "remove the link"
        )
    return path


def _cleaned(name: str) -> str:
    """The name as ``save`` writes it into the file name, or the name itself."""
    try:
        return check_name(name)
    except SavedRunError:
        return name
