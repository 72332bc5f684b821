"""Writing results to disk: versioned JSON (and the HTML report's text), written atomically.

A file is written to a temporary name beside its target and renamed over it,
so an interrupted run never leaves half a file. An existing file is replaced
only when it is one of ours (a results file carries our ``format`` key, a
report our generator mark): anything else at that path is the user's and is
never overwritten.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import OllamaCpuError
from .records import RecordedSweep, by_machine, merged_limits

FORMAT = "pytest-ollama-cpu"
SCHEMA_VERSION = 1


class OutputFileError(OllamaCpuError):
    """The JSON file cannot be written or read; the message names it and what to do."""


def temporary_beside(folder: Path, prefix: str) -> tuple[int, str]:
    """A new temporary file in ``folder`` to be renamed over a result, with the mode a
    plain new file gets under this umask: ``mkstemp``'s own 0600 would leave reports
    and saved runs unreadable to the rest of the team after the rename."""
    fd, temp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=folder)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.fchmod(fd, 0o666 & ~umask)
    except OSError:
        os.close(fd)
        os.unlink(temp)
        raise
    return fd, temp


def advice(error: OSError) -> str:
    """What to do about a file system's refusal to write, in a few words."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return "free some space"
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "make the folder writable"
    return "correct that"


def reason(error: OSError) -> str:
    return error.strerror or str(error)


@dataclass(frozen=True)
class OutputFile:
    """A kind of file the plugin writes: how to tell one of ours (which may be replaced)
    from anything else at that path (which is the user's and never overwritten), and
    the option that names its path, for messages."""

    #: "a pytest-ollama-cpu results file"
    kind: str
    #: the option or argument that names the path: "--ollama-cpu-json"
    flag: str
    is_ours: Callable[[Path], bool]


def is_results_file(path: Path) -> bool:
    """Whether ``path`` holds a results file this plugin wrote (our ``format`` key)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(data, dict) and data.get("format") == FORMAT


RESULTS_FILE = OutputFile("a pytest-ollama-cpu results file", "--ollama-cpu-json", is_results_file)


def _not_written(path: Path, error: OSError, output: OutputFile) -> OutputFileError:
    return OutputFileError(
        f"could not write {path}: {reason(error)}; {path} is left as it was. "
        f"{advice(error).capitalize()}, or give another path with {output.flag}"
    )


def check_writable(path: Path, output: OutputFile = RESULTS_FILE) -> None:
    """Refuse a path that holds something that is not a file of ours of this kind, or
    whose folder cannot be written: before the run, not after it."""
    folder = path.parent if str(path.parent) else Path(".")
    if not path.exists():
        if not folder.exists():
            raise OutputFileError(
                f"cannot write {path}: folder {folder} does not exist; create it first"
            )
    elif path.is_dir():
        raise OutputFileError(f"cannot write {path}: it is a folder; give a file name")
    elif not output.is_ours(path):
        raise OutputFileError(
            f"{path} already exists and is not {output.kind}; it was left untouched. "
            f"Choose another path for {output.flag} or move that file away."
        )
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputFileError(
            f"cannot write {path}: {reason(exc)} in {folder}; {advice(exc)}, or give another "
            f"path with {output.flag}"
        ) from None


def results_document(
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
    write_text_atomic(path, json.dumps(document, indent=2, sort_keys=False) + "\n")


def write_text_atomic(path: Path, text: str, output: OutputFile = RESULTS_FILE) -> None:
    """Write ``text`` whole or not at all, over a file of ours of ``output``'s kind only
    (see ``check_writable``), through a temporary file beside it."""
    check_writable(path, output)
    folder = path.parent if str(path.parent) else Path(".")
    try:
        fd, temp = temporary_beside(folder, f".{path.name}.")
    except OSError as exc:
        raise _not_written(path, exc, output) from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        if isinstance(exc, OSError):
            raise _not_written(path, exc, output) from None
        raise
