"""Writing results to disk: versioned JSON, written atomically.

A file is written to a temporary name beside its target and renamed over it,
so an interrupted run never leaves half a file. An existing file is replaced
only when it is one of ours (it carries our ``format`` key): anything else at
that path is the user's and is never overwritten.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .records import RecordedSweep, by_machine

FORMAT = "pytest-ollama-cpu"
SCHEMA_VERSION = 1


class StorageError(Exception):
    pass


def check_writable(path: Path) -> None:
    """Refuse a path that holds something that is not a results file of ours."""
    if not path.exists():
        parent = path.parent if str(path.parent) else Path(".")
        if not parent.exists():
            raise StorageError(
                f"cannot write {path}: folder {parent} does not exist; create it first"
            )
        return
    if path.is_dir():
        raise StorageError(f"cannot write {path}: it is a folder; give a file name")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        data = None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise StorageError(
            f"{path} already exists and is not a pytest-ollama-cpu results file; it was left "
            "untouched. Choose another path for --ollama-cpu-json or move that file away."
        )


def build_document(
    sweeps: Sequence[RecordedSweep], plugin_version: str, settings: dict[str, Any]
) -> dict[str, Any]:
    groups = by_machine(sweeps)
    machines = [
        {"machine": g[0].sweep.machine.to_dict(), "server": g[0].sweep.server.to_dict()}
        for g in groups.values()
    ]
    # one machine: its facts at the top; several: see "machines", and each sweep's own
    machine = machines[0]["machine"] if len(machines) == 1 else None
    server = machines[0]["server"] if len(machines) == 1 else None
    return {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "plugin_version": plugin_version,
        "datetime": _dt.datetime.now(_dt.timezone.utc).isoformat(),
        "settings": settings,
        "machine": machine,
        "server": server,
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
    check_writable(path)
    folder = path.parent if str(path.parent) else Path(".")
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(document, handle, indent=2, sort_keys=False)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
