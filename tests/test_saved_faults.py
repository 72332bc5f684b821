"""Saved runs and baselines under bad input and faults.

Each case is a clear error that names the file (and the test and sample, where one
is at fault) and says what to do, and nothing saved before is lost or overwritten.
"""

from __future__ import annotations

import copy
import errno
import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pytest_ollama_cpu import cli, storage
from pytest_ollama_cpu.baseline import BaselineError, load_file, save
from pytest_ollama_cpu.storage import StorageError, write_json_atomic

from .fake_ollama import Behaviour
from .test_baseline import SWEEP_TEST, _document, run

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


# -- 1. damaged samples in a baseline ------------------------------------------------

BAD_SAMPLES = [
    (math.nan, "tokens_per_second nan, which should be a positive number"),
    (math.inf, "tokens_per_second inf, which should be a positive number"),
    (-math.inf, "tokens_per_second -inf, which should be a positive number"),
    ("fast", "tokens_per_second 'fast', which should be a positive number"),
    (0, "tokens_per_second 0, which should be a positive number"),
    (-3.5, "tokens_per_second -3.5, which should be a positive number"),
]


def _with_sample(value: object) -> dict[str, Any]:
    document = _document([40.0, 40.4, 39.6])
    document["benchmarks"][0]["extra_info"]["ollama_cpu"]["samples"][1]["tokens_per_second"] = value
    return document


@pytest.mark.parametrize(("value", "message"), BAD_SAMPLES)
def test_a_damaged_sample_stops_the_compare_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], value: object, message: str
) -> None:
    store = tmp_path / "store"
    good = _saved(store, _document([40.0, 40.4, 39.6]), "good")
    damaged = _saved(store, _with_sample(value), "edited")
    before = damaged.read_bytes()
    # the damaged run as the baseline, and as the run judged: each names its side
    for args, role in (((damaged, good), "baseline"), ((good, damaged), "new run")):
        status, err = _compare_cli(capsys, *map(str, args), "--fail", "tps:5%")
        assert status == 2
        assert err == (
            f"pytest-ollama-cpu compare: {role} {damaged}: {FULLNAME}: sample 2 has "
            f"{message}; {DAMAGED}\n"
        )
    # also when found by number, name or 'latest' in the storage folder
    status, err = _compare_cli(capsys, "good", "latest", "--storage", str(store))
    assert status == 2 and f"new run {damaged}: {FULLNAME}: sample 2 has {message}" in err
    assert "fewer than two" not in err and "%" not in err.replace("5%", "")
    assert damaged.read_bytes() == before


@pytest.mark.parametrize(("value", "message"), BAD_SAMPLES)
def test_a_damaged_sample_stops_the_run_before_measuring(
    pytester: pytest.Pytester, value: object, message: str
) -> None:
    pytester.makepyfile(SWEEP_TEST)
    damaged = _saved(pytester.path / ".benchmarks", _with_sample(value), "edited")
    before = damaged.read_bytes()
    result = run(pytester, Behaviour(), "--ollama-cpu-compare")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    shown = damaged.relative_to(pytester.path)  # the storage folder as given: relative
    assert (
        f"ERROR: baseline {shown}: {FULLNAME}: sample 2 has {message}; {DAMAGED}"
        in result.stderr.lines
    )
    assert result.requests == []  # type: ignore[attr-defined]
    assert damaged.read_bytes() == before


# -- 2. saved runs that are not what they should be ---------------------------------


def _edited(change: Callable[[dict[str, Any]], object]) -> str:
    document = copy.deepcopy(_document([40.0, 40.4, 39.6]))
    change(document)
    return json.dumps(document)


def _ours(document: dict[str, Any]) -> dict[str, Any]:
    extra: dict[str, Any] = document["benchmarks"][0]["extra_info"]["ollama_cpu"]
    return extra


def _disturbed(document: dict[str, Any], name: str, value: object) -> None:
    for sample in _ours(document)["samples"][:2]:
        sample.update(disturbed=True, other_cores_busy=1.0, server_cpus=2)
    _ours(document)["samples"][0][name] = value


GOOD = json.dumps(_document([40.0, 40.4, 39.6]))

BAD_FILES = [
    ("", "is empty: it was cut short or is not a saved run; give another saved run"),
    (GOOD[: len(GOOD) // 2], "; it may be truncated: give another saved run, or save a new one"),
    ("[]", "is not a saved run: expected a JSON object"),
    ("\udcff", "is not UTF-8 text, so not a saved run"),
    ("[" * 100_000 + "]" * 100_000, "is not valid JSON (maximum recursion depth exceeded"),
    (
        _edited(lambda d: d.update(benchmarks={"a": 1})),
        f": 'benchmarks' is a JSON object, which should be a list; {DAMAGED}",
    ),
    (
        _edited(lambda d: d.update(benchmarks=5)),
        f": 'benchmarks' is the number 5, which should be a list; {DAMAGED}",
    ),
    (
        _edited(lambda d: d.update(machine_info="x")),
        f": 'machine_info' is the string 'x', which should be a JSON object; {DAMAGED}",
    ),
    (
        _edited(lambda d: d["machine_info"].update(ollama_cpu=[1])),
        f": 'machine_info.ollama_cpu' is a list, which should be a JSON object; {DAMAGED}",
    ),
    (
        _edited(lambda d: d["benchmarks"][0].update(stats="fast")),
        f": {FULLNAME}: 'stats' is the string 'fast', which should be a JSON object; {DAMAGED}",
    ),
    (
        _edited(lambda d: d["benchmarks"][0].update(fullname=["x"])),
        f": benchmark #1: 'fullname' is a list, which should be a string; {DAMAGED}",
    ),
    (
        _edited(lambda d: d["benchmarks"][0].update(extra_info="x")),
        "benchmark #1 has no samples of ours; the file is damaged",
    ),
    (
        _edited(lambda d: _ours(d).update(threads="two")),
        f": {FULLNAME}: 'threads' is the string 'two', which should be a whole number of 1 or "
        f"more; {DAMAGED}",
    ),
    (
        _edited(lambda d: _ours(d).pop("test")),
        f": {FULLNAME}: 'test' is missing, which should be a string; {DAMAGED}",
    ),
    (
        _edited(lambda d: _ours(d).update(model="m")),
        f": {FULLNAME}: 'model' is the string 'm', which should be a JSON object; {DAMAGED}",
    ),
    (
        _edited(lambda d: _ours(d).update(samples=[])),
        f": {FULLNAME}: 'samples' is an empty list, which should be a list of samples; {DAMAGED}",
    ),
    (
        _edited(lambda d: _disturbed(d, "other_cores_busy", "lots")),
        f": {FULLNAME}: sample 1 has other_cores_busy 'lots', which should be a number of 0 or "
        f"more; {DAMAGED}",
    ),
    (
        _edited(lambda d: _disturbed(d, "server_cpus", "two")),
        f": {FULLNAME}: sample 1 has server_cpus 'two', which should be a whole number of 1 or "
        f"more; {DAMAGED}",
    ),
    (
        _edited(lambda d: d.update(ollama_cpu={"schema": 2})),
        "has schema 2, newer than this pytest-ollama-cpu understands (1): upgrade",
    ),
    (
        _edited(lambda d: d.update(ollama_cpu={"schema": "1"})),
        f": 'ollama_cpu.schema' is the string '1', which should be a whole number; {DAMAGED}",
    ),
    (
        _edited(lambda d: d.update(ollama_cpu={"schema": True})),
        f": 'ollama_cpu.schema' is true, which should be a whole number; {DAMAGED}",
    ),
    (
        _edited(lambda d: d.update(ollama_cpu={"schema": 0})),
        "has schema 0, which this pytest-ollama-cpu cannot upgrade: save a new baseline with "
        "--ollama-cpu-save NAME",
    ),
]


@pytest.mark.parametrize(("content", "message"), BAD_FILES)
def test_a_damaged_saved_run_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, message: str
) -> None:
    path = tmp_path / "0001_x.json"
    data = content.encode("utf-8", "surrogateescape")
    path.write_bytes(data)
    with pytest.raises(BaselineError) as caught:
        load_file(path)
    assert str(caught.value).startswith(f"baseline {path}")
    assert message in str(caught.value)
    # the command says the same, as an error and not a traceback
    good = tmp_path / "good.json"
    good.write_text(GOOD)
    status, err = _compare_cli(capsys, str(good), str(path))
    assert status == 2
    assert err.startswith(f"pytest-ollama-cpu compare: new run {path}")
    assert "Traceback" not in err
    assert path.read_bytes() == data  # nothing the user saved is touched


def test_a_newer_pytest_benchmark_version_alone_is_no_reason_to_refuse(tmp_path: Path) -> None:
    """Our own schema says what we can read; pytest-benchmark's version is its business."""
    path = tmp_path / "0001_x.json"
    path.write_text(_edited(lambda d: d.update(version="99.0")))
    assert load_file(path).entries


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
