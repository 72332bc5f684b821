"""Writing results to disk: versioned JSON, written atomically.

A file is written to a temporary name beside its target and renamed over it,
so an interrupted run never leaves half a file. An existing file is replaced
only when it is one of ours (it carries our ``format`` key): anything else at
that path is the user's and is never overwritten.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .records import RecordedSweep, by_machine, merged_limits

FORMAT = "pytest-ollama-cpu"
SCHEMA_VERSION = 1


class StorageError(Exception):
    pass


def advice(error: OSError) -> str:
    """What to do about a file system's refusal to write, in a few words."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return "free some space"
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "make the folder writable"
    return "correct that"


def reason(error: OSError) -> str:
    return error.strerror or str(error)


def _not_written(path: Path, error: OSError) -> StorageError:
    return StorageError(
        f"could not write {path}: {reason(error)}; {path} is left as it was. "
        f"{advice(error).capitalize()}, or give another path with --ollama-cpu-json"
    )


def check_writable(path: Path) -> None:
    """Refuse a path that holds something that is not a results file of ours, or
    whose folder cannot be written: before the run, not after it."""
    folder = path.parent if str(path.parent) else Path(".")
    if not path.exists():
        if not folder.exists():
            raise StorageError(
                f"cannot write {path}: folder {folder} does not exist; create it first"
            )
    elif path.is_dir():
        raise StorageError(f"cannot write {path}: it is a folder; give a file name")
    else:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError, RecursionError):
            data = None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise StorageError(
                f"{path} already exists and is not a pytest-ollama-cpu results file; it was "
                "left untouched. Choose another path for --ollama-cpu-json or move that file "
                "away."
            )
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise StorageError(
            f"cannot write {path}: {reason(exc)} in {folder}; {advice(exc)}, or give another "
            "path with --ollama-cpu-json"
        ) from None


def build_document(
    sweeps: Sequence[RecordedSweep], plugin_version: str, settings: dict[str, Any]
) -> dict[str, Any]:
    groups = by_machine(sweeps)
    machines = [
        {
            "machine": g[0].sweep.machine.to_dict(),
            "server": g[0].sweep.server.to_dict(),
            "limits": None if (merged := merged_limits(g)) is None else merged.to_dict(),
        }
        for g in groups.values()
    ]
    # one machine: its facts at the top; several: see "machines", and each sweep's own
    machine = machines[0]["machine"] if len(machines) == 1 else None
    server = machines[0]["server"] if len(machines) == 1 else None
    limits = machines[0]["limits"] if len(machines) == 1 else None
    return {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "plugin_version": plugin_version,
        "datetime": _dt.datetime.now(_dt.timezone.utc).isoformat(),
        "settings": settings,
        "machine": machine,
        "server": server,
        "limits": limits,
        "machines": machines,
        "sweeps": [
            {
                "test": r.nodeid,
                **r.sweep.to_dict(),
                "thresholds": None if r.thresholds is None else r.thresholds.to_dict(),
                "verdict": None if r.verdict is None else r.verdict.to_dict(),
            }
            for r in sweeps
        ],
    }


def write_json_atomic(path: Path, document: dict[str, Any]) -> None:
    """Write ``document`` whole or not at all: a full disk, a refusal or Ctrl-C leaves
    the file at ``path`` as it was and no temporary file behind."""
    check_writable(path)
    folder = path.parent if str(path.parent) else Path(".")
    try:
        fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise _not_written(path, exc) from None
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(document, handle, indent=2, sort_keys=False)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        if isinstance(exc, OSError):
            raise _not_written(path, exc) from None
        raise
