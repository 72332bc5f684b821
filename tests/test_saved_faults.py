"""Saved runs and baselines under bad input and faults.

Each case is a clear error that names the file (and the test and sample, where one
is at fault) and says what to do, and nothing saved before is lost or overwritten.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pytest_ollama_cpu import cli, storage
from pytest_ollama_cpu.baseline import save
from pytest_ollama_cpu.storage import StorageError, write_json_atomic

ROOT = Path(__file__).resolve().parent.parent
FULLNAME = "t.py::test_a[m-generate-t1]"
DAMAGED = "the file is damaged or was edited by hand"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OLLAMA_HOST", "OLLAMA_CPU_MODEL", "OLLAMA_CPU_ROUNDS", "OLLAMA_CPU_ALPHA"):
        monkeypatch.delenv(name, raising=False)


def _saved(storage_folder: Path, document: dict[str, Any], name: str) -> Path:
    return save(document, storage_folder, name)


def _compare_cli(
    capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[int, str]:  # (status, stderr)
    status = cli.main(["compare", *args])
    return status, capsys.readouterr().err


def _files(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder``, hidden ones included, with its bytes."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def _os_error(code: int) -> Callable[..., tuple[int, str]]:
    def fake(*args: Any, **kwargs: Any) -> tuple[int, str]:
        raise OSError(code, os.strerror(code))

    return fake


# -- the --ollama-cpu-json file ----------------------------------------------------------


def test_a_json_path_in_a_read_only_folder_is_refused_before_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "out.json"
    monkeypatch.setattr(tempfile, "mkstemp", _os_error(errno.EROFS))
    with pytest.raises(StorageError) as caught:
        storage.check_writable(path)
    monkeypatch.undo()
    assert str(caught.value) == (
        f"cannot write {path}: Read-only file system in {tmp_path}; make the folder writable, "
        "or give another path with --ollama-cpu-json"
    )
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_or_a_full_disk_while_writing_the_json_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "out.json"
    old = {"format": storage.FORMAT, "schema_version": 1, "sweeps": []}
    path.write_text(json.dumps(old))
    before = path.read_bytes()
    for fault in (KeyboardInterrupt(), OSError(errno.ENOSPC, "No space left on device")):
        monkeypatch.setattr(os, "replace", _raising(fault))
        with pytest.raises((KeyboardInterrupt, StorageError)) as caught:
            write_json_atomic(path, {**old, "sweeps": [1]})
        monkeypatch.undo()
        assert path.read_bytes() == before
        assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]
    assert str(caught.value) == (
        f"could not write {path}: No space left on device; {path} is left as it was. Free some "
        "space, or give another path with --ollama-cpu-json"
    )


def _raising(exc: BaseException) -> Callable[..., None]:
    def fake(*args: Any, **kwargs: Any) -> None:
        raise exc

    return fake
