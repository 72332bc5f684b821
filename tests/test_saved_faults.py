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
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pytest_ollama_cpu import cli, results_file, saved_runs
from pytest_ollama_cpu.results_file import OutputFileError, write_json_atomic
from pytest_ollama_cpu.saved_runs import SavedRunError, find, load_file, save

from .conftest import run_behaviour
from .fake_ollama import Behaviour, FakeOllama
from .test_saved_runs import SWEEP_TEST, _document, machine_dir

ROOT = Path(__file__).resolve().parent.parent
FULLNAME = "t.py::test_a[m-generate-t1]"
DAMAGED = "the file is damaged or was edited by hand"


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
    fake = Behaviour()
    result = run_behaviour(pytester, fake, "--ollama-cpu-compare")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    shown = damaged.relative_to(pytester.path)  # the storage folder as given: relative
    assert (
        f"ERROR: baseline {shown}: {FULLNAME}: sample 2 has {message}; {DAMAGED}"
        in result.stderr.lines
    )
    assert fake.requests == []
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
    with pytest.raises(SavedRunError) as caught:
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


# -- the storage folder ---------------------------------------------------------------


def test_a_storage_path_that_is_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "store"
    path.write_text("my notes")
    message = f"the storage folder {path} is a file, not a folder: move it away or choose"
    with pytest.raises(SavedRunError, match=re.escape(message)):
        find(path, "latest")
    with pytest.raises(SavedRunError, match=re.escape(message)):
        save(_document([40.0]), path, "x")
    with pytest.raises(SavedRunError, match=re.escape(message)):
        saved_runs.check_storage(path)
    status, err = _compare_cli(capsys, "1", "2", "--storage", str(path))
    assert status == 2 and message in err
    # this machine's folder inside it is a file
    store = tmp_path / "other"
    store.mkdir()
    folder = saved_runs.machine_folder(store)
    folder.write_text("mine")
    with pytest.raises(
        SavedRunError, match=re.escape(f"{folder} is a file, not a folder of saved runs")
    ):
        save(_document([40.0]), store, "x")
    with pytest.raises(
        SavedRunError, match=re.escape(f"{folder} is a file, not a folder of saved runs")
    ):
        find(store, "latest")
    assert path.read_text() == "my notes" and folder.read_text() == "mine"


def test_the_default_storage_being_a_file_stops_the_run_before_measuring(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(SWEEP_TEST)
    (pytester.path / ".benchmarks").write_text("my notes")
    for flag in ("--ollama-cpu-save=base", "--ollama-cpu-compare"):
        fake = Behaviour()
        result = run_behaviour(pytester, fake, flag)
        assert result.ret == pytest.ExitCode.USAGE_ERROR, flag
        result.stderr.fnmatch_lines(["ERROR: the storage folder .benchmarks is a file, not a *"])
        assert fake.requests == []
    assert (pytester.path / ".benchmarks").read_text() == "my notes"


# -- links in the storage folder ---------------------------------------------------------


def test_a_link_out_of_the_storage_folder_is_never_written_through(tmp_path: Path) -> None:
    store, outside = tmp_path / "store", tmp_path / "outside"
    store.mkdir()
    outside.mkdir()
    folder = saved_runs.machine_folder(store)
    folder.symlink_to(outside)
    message = f"{folder} is a link to {outside.resolve()}, outside the storage folder {store}"
    with pytest.raises(SavedRunError, match=re.escape(message)):
        save(_document([40.0]), store, "x")
    with pytest.raises(SavedRunError, match=re.escape(message)):
        saved_runs.check_storage(store)
    with pytest.raises(SavedRunError, match=re.escape(message)):
        find(store, "latest")
    assert list(outside.iterdir()) == []


def test_a_saved_run_linked_out_of_the_storage_folder_is_not_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A saved run is a file this plugin wrote, and it never writes links: a link whose
    target lies outside the storage folder was put there by hand (or by a hostile
    checkout), and following it unasked would compare with a file nobody chose."""
    store = tmp_path / "store"
    first = _saved(store, _document([40.0, 40.4]), "first")
    secret = tmp_path / "elsewhere.json"
    secret.write_text(GOOD)
    link = first.parent / "0002_linked.json"
    link.symlink_to(secret)
    message = (
        f"saved run {link} is a link to {secret.resolve()}, outside the storage folder {store}; "
        f"it was not read. To compare with that file, give its path"
    )
    for which in ("latest", "2", "linked"):
        with pytest.raises(SavedRunError, match=re.escape(message)):
            find(store, which)
    status, err = _compare_cli(capsys, "1", "latest", "--storage", str(store))
    assert status == 2 and message in err
    # the file named by its own path is the user's choice, and is read
    assert find(store, str(secret)) == secret
    # a link that stays inside the storage folder (e.g. one machine's runs shared with
    # a new Python's folder) is followed
    other = store / "Linux-CPython-3.99-64bit"
    other.symlink_to(first.parent)
    shared = first.parent / "0003_shared.json"
    shared.symlink_to(first)
    assert find(store, "shared") == shared and load_file(shared).entries
    # saving never writes through any link: the next number is taken
    dangling = first.parent / "0004_dangling.json"
    dangling.symlink_to(tmp_path / "nowhere.json")
    assert save(_document([40.0]), store, "next").name == "0005_next.json"
    assert not (tmp_path / "nowhere.json").exists()
    assert secret.read_text() == GOOD


# -- a storage folder that cannot be written --------------------------------------------


def _read_only_runner(folder: Path) -> list[str] | None:
    """A command prefix under which ``folder`` cannot be written, made by a real fault:
    ``chmod`` where it binds (not root), else a read-only bind mount in a private mount
    namespace (root); None where neither can be had."""
    folder.chmod(0o555)
    try:
        probe = folder / "probe"
        probe.write_text("")
    except PermissionError:
        return []  # chmod binds: restored by the caller
    probe.unlink()
    folder.chmod(0o755)
    unshare = shutil.which("unshare")
    if unshare is None:
        return None
    script = f'mount -o bind,ro "{folder}" "{folder}" && exec "$@"'
    prefix = [unshare, "--mount", "--propagation", "private", "sh", "-c", script, "sh"]
    if subprocess.run([*prefix, "true"], capture_output=True).returncode != 0:
        return None
    return prefix


def test_a_read_only_storage_folder_stops_the_run_before_measuring(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(SWEEP_TEST)
    store = pytester.path / "store"
    earlier = _saved(store, _document([40.0, 40.4]), "earlier")
    folder = earlier.parent
    before = _files(store)
    prefix = _read_only_runner(folder)
    if prefix is None:
        pytest.skip("neither chmod nor a read-only bind mount can make a folder read-only here")
    try:
        with FakeOllama(Behaviour()) as fake:
            result = subprocess.run(
                [
                    *prefix,
                    sys.executable,
                    "-m",
                    "pytest",
                    "-p",
                    "no:cacheprovider",
                    "--ollama-cpu",
                    f"--ollama-cpu-host={fake.host}",
                    "--ollama-cpu-model=tiny",
                    f"--ollama-cpu-storage={store}",
                    "--ollama-cpu-save=new",
                ],
                cwd=pytester.path,
                capture_output=True,
                text=True,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
                timeout=120,
            )
        requests = fake.behaviour.requests
    finally:
        folder.chmod(0o755)
    assert result.returncode == pytest.ExitCode.USAGE_ERROR, result.stdout + result.stderr
    assert f"ERROR: cannot save runs in {folder}: " in result.stderr
    assert "make the folder writable, or choose another storage folder with" in (result.stderr)
    assert requests == []
    assert _files(store) == before


def test_a_read_only_storage_folder_in_a_save(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fault faked where the test runs as root (chmod does not bind) and no mount
    can be made: what the user gets is the same."""
    store = tmp_path / "store"
    earlier = _saved(store, _document([40.0, 40.4]), "earlier")
    before = _files(store)
    monkeypatch.setattr(tempfile, "mkstemp", _os_error(errno.EROFS))
    with pytest.raises(SavedRunError) as caught:
        saved_runs.check_storage(store)
    assert str(caught.value) == (
        f"cannot save runs in {earlier.parent}: Read-only file system; make the folder "
        "writable, or choose another storage folder with --ollama-cpu-storage"
    )
    with pytest.raises(SavedRunError) as caught:
        save(_document([40.0]), store, "new")
    assert str(caught.value) == (
        f"{earlier.parent}: Read-only file system; nothing was written there and the runs "
        "saved there are untouched. Make the folder writable, or choose another storage folder "
        "with --ollama-cpu-storage"
    )
    monkeypatch.undo()
    assert _files(store) == before


# -- a full disk, and Ctrl-C, during a save ----------------------------------------------------


def _no_leftovers(store: Path, before: dict[str, bytes]) -> None:
    """Nothing new under ``store``, and every file there as it was."""
    leftovers = [p.name for p in store.rglob(".saving*")]
    assert not leftovers, leftovers
    assert _files(store) == before


def _half_then(exc: BaseException) -> Callable[..., None]:
    """json.dump that writes part of the document, then fails as ``exc``."""

    def dump(document: Any, handle: Any, **kwargs: Any) -> None:
        handle.write(json.dumps(document)[:50])
        handle.flush()
        raise exc

    return dump


def test_a_full_disk_during_a_save(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = tmp_path / "store"
    earlier = _saved(store, _document([40.0, 40.4]), "earlier")
    before = _files(store)
    monkeypatch.setattr(json, "dump", _half_then(OSError(errno.ENOSPC, "No space left on device")))
    with pytest.raises(SavedRunError) as caught:
        save(_document([40.0]), store, "new")
    monkeypatch.undo()
    assert str(caught.value) == (
        f"{earlier.parent}: No space left on device; nothing was written there and the runs "
        "saved there are untouched. Free some space, or choose another storage folder with "
        "--ollama-cpu-storage"
    )
    _no_leftovers(store, before)
    # ENOSPC where the data reaches the disk (fsync), too
    monkeypatch.setattr(os, "fsync", _os_error(errno.ENOSPC))
    with pytest.raises(SavedRunError, match="No space left on device; nothing was written"):
        save(_document([40.0]), store, "new")
    monkeypatch.undo()
    _no_leftovers(store, before)
    assert save(_document([40.0]), store, "new").name == "0002_new.json"


FULL_DISK_CONFTEST = """
import errno, os
import pytest

real_fsync = os.fsync

@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session):
    def fsync(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    os.fsync = fsync

def pytest_unconfigure(config):
    os.fsync = real_fsync
"""


def test_a_full_disk_at_the_end_of_a_run(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(SWEEP_TEST)
    earlier = _saved(pytester.path / ".benchmarks", _document([40.0, 40.4]), "earlier")
    before = _files(pytester.path / ".benchmarks")
    pytester.makeconftest(FULL_DISK_CONFTEST)
    result = run_behaviour(
        pytester, Behaviour(), "--ollama-cpu-save=new", "--ollama-cpu-json=out.json"
    )
    shown = earlier.parent.relative_to(pytester.path)  # the storage folder as given: relative
    assert result.ret == pytest.ExitCode.INTERNAL_ERROR
    result.stdout.fnmatch_lines(
        [
            "ollama-cpu: ERROR: could not write out.json: No space left on device; out.json is "
            "left as it was. Free some space, or give another path with --ollama-cpu-json",
            f"ollama-cpu: ERROR: could not save this run: {shown}: No space left on "
            "device; nothing was written there and the runs saved there are untouched. Free "
            "some space, or choose another storage folder with --ollama-cpu-storage",
        ]
    )
    _no_leftovers(pytester.path / ".benchmarks", before)
    assert not (pytester.path / "out.json").exists()
    assert not list(pytester.path.glob(".out.json.*"))


@pytest.mark.parametrize("where", ["json.dump", "os.link", "after os.link"])
def test_ctrl_c_during_a_save_leaves_no_half_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    store = tmp_path / "store"
    _saved(store, _document([40.0, 40.4]), "earlier")
    before = _files(store)
    if where == "json.dump":
        monkeypatch.setattr(json, "dump", _half_then(KeyboardInterrupt()))
    else:
        real_link = os.link

        def link(source: Any, target: Any, **kwargs: Any) -> None:
            if where == "after os.link":
                real_link(source, target, **kwargs)
            raise KeyboardInterrupt

        monkeypatch.setattr(os, "link", link)
    with pytest.raises(KeyboardInterrupt):
        save(_document([40.0]), store, "new")
    monkeypatch.undo()
    if where == "after os.link":
        # the run is saved whole: the interrupt came after it was in place
        (new,) = [p for p in store.rglob("0002_*.json")]
        assert load_file(new).entries
        new.unlink()
    _no_leftovers(store, before)


# -- run names -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "saved_as"),
    [
        ("../../escape", "escape"),
        ("/etc/passwd", "etc-passwd"),
        ("a/../../b", "a-..-..-b"),
        ("feat/x\x00\n\x1b[31mred", "feat-x-31mred"),
        ("..\\..\\win", "win"),
    ],
)
def test_a_run_name_never_leaves_the_storage_folder(
    tmp_path: Path, name: str, saved_as: str
) -> None:
    store = tmp_path / "deep" / "store"
    path = save(_document([40.0]), store, name)
    assert path.parent == saved_runs.machine_folder(store)
    assert path.name == f"0001_{saved_as}.json"
    assert saved_runs.check_name(name) == saved_as
    assert find(store, name) == path  # found as typed
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == [path]


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "--ollama-cpu-save '': give a name of letters, digits, '.', '_' or '-'"),
        ("///", "--ollama-cpu-save '///': give a name of letters, digits, '.', '_' or '-'"),
        ("\n\t", "--ollama-cpu-save '\\n\\t': give a name of letters"),
        ("3", "--ollama-cpu-save '3': a name of digits alone would be read as a run number"),
        ("latest", "--ollama-cpu-save 'latest': --ollama-cpu-compare reads 'latest' as the"),
        ("x" * 300, "--ollama-cpu-save 'xxxxxxxxxxxxxxxxxxxx...': 300 characters is too long"),
    ],
)
def test_a_bad_run_name_is_refused(tmp_path: Path, name: str, message: str) -> None:
    with pytest.raises(SavedRunError, match=re.escape(message)):
        saved_runs.check_name(name)
    with pytest.raises(SavedRunError, match=re.escape(message)):
        save(_document([40.0]), tmp_path, name)
    assert not list(tmp_path.rglob("*.json"))


def test_run_names_in_a_run(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(SWEEP_TEST)
    # refused before anything is measured, not after
    fake = Behaviour()
    result = run_behaviour(pytester, fake, "--ollama-cpu-save=///")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --ollama-cpu-save '///': give a name of letters*"])
    assert fake.requests == []
    # cleaned, and the summary says into what
    result = run_behaviour(pytester, Behaviour(), "--ollama-cpu-save=../feat/x")
    assert result.ret == pytest.ExitCode.OK
    (saved,) = machine_dir(pytester.path).glob("*.json")
    assert saved.name == "0001_feat-x.json"
    result.stdout.fnmatch_lines(
        [
            "ollama-cpu: the name '../feat/x' was saved as 'feat-x': file names keep letters, "
            "digits, '.', '_' and '-'; --ollama-cpu-compare finds the run by either"
        ]
    )


# -- two runs saving at once ---------------------------------------------------------------------


def _slow_numbering(monkeypatch: pytest.MonkeyPatch) -> None:
    """Widen the race between choosing a number and taking it."""
    real = saved_runs._next_number

    def slow(folder: Path) -> int:
        number = real(folder)
        time.sleep(0.02)
        return number

    monkeypatch.setattr(saved_runs, "_next_number", slow)


def test_runs_saved_at_once_by_threads_get_numbers_of_their_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = tmp_path / "store"
    earlier = _saved(store, _document([40.0]), "earlier")
    _slow_numbering(monkeypatch)
    saved: list[Path] = []
    errors: list[BaseException] = []

    def saving(i: int) -> None:
        try:
            saved.append(save(_document([40.0 + i]), store, f"run{i}"))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=saving, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    numbers = sorted(saved_runs.run_number(p) for p in saved)
    assert numbers == list(range(2, 10))
    assert len(saved_runs.saved_runs(earlier.parent)) == 9
    for path in saved:  # each file holds its own run
        i = int(saved_runs.run_name(path)[3:])
        entry = next(iter(load_file(path).entries.values()))
        assert entry["extra_info"]["ollama_cpu"]["samples"][0]["tokens_per_second"] == 40.0 + i


SAVING_PROCESS = """
import sys, time
from pathlib import Path
from pytest_ollama_cpu import saved_runs
real = saved_runs._next_number
def slow(folder):
    number = real(folder)
    time.sleep(0.05)
    return number
saved_runs._next_number = slow
while time.time() < {start}:
    time.sleep(0.005)
print(saved_runs.save({{"benchmarks": []}}, Path({store!r}), sys.argv[1]).name)
"""


def test_runs_saved_at_once_by_processes_get_numbers_of_their_own(tmp_path: Path) -> None:
    store = tmp_path / "store"
    script = tmp_path / "saving.py"
    start = time.time() + 4.0  # all start together, once imported
    script.write_text(SAVING_PROCESS.format(start=start, store=str(store)))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    processes = [
        subprocess.Popen(
            [sys.executable, str(script), f"p{i}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for i in range(4)
    ]
    names = []
    for process in processes:
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err
        names.append(out.strip())
    assert sorted(n[:4] for n in names) == ["0001", "0002", "0003", "0004"]
    assert sorted(
        p.name for p in saved_runs.saved_runs(saved_runs.machine_folder(store))
    ) == sorted(names)


def test_a_turn_left_by_a_killed_run_is_taken_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = tmp_path / "store"
    earlier = _saved(store, _document([40.0]), "earlier")
    turn = earlier.parent / ".saving.lock"
    turn.mkdir()  # a run killed while numbering
    old = time.time() - saved_runs.STALE_TURN - 5
    os.utime(turn, (old, old))
    assert save(_document([40.0]), store, "next").name == "0002_next.json"
    assert not turn.exists()
    # one held now: waited for, then a message that says what to do
    turn.mkdir()
    monkeypatch.setattr(saved_runs, "NUMBERING_TIMEOUT", 0.2)
    with pytest.raises(SavedRunError) as caught:
        save(_document([40.0]), store, "third")
    assert str(caught.value) == (
        f"{earlier.parent}: another run has been numbering its file there for 0.2s ({turn} "
        "exists); if no other pytest is saving there, remove it and save again"
    )
    assert [p.name for p in saved_runs.saved_runs(earlier.parent)] == [
        "0001_earlier.json",
        "0002_next.json",
    ]
    assert not list(earlier.parent.glob(".saving-*"))


# -- the --ollama-cpu-json file ----------------------------------------------------------


def test_a_json_path_in_a_read_only_folder_is_refused_before_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "out.json"
    monkeypatch.setattr(tempfile, "mkstemp", _os_error(errno.EROFS))
    with pytest.raises(OutputFileError) as caught:
        results_file.check_writable(path)
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
    old = {"format": results_file.FORMAT, "schema_version": 1, "sweeps": []}
    path.write_text(json.dumps(old))
    before = path.read_bytes()
    for fault in (KeyboardInterrupt(), OSError(errno.ENOSPC, "No space left on device")):
        monkeypatch.setattr(os, "replace", _raising(fault))
        with pytest.raises((KeyboardInterrupt, OutputFileError)) as caught:
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


def test_files_of_ours_get_the_mode_a_new_file_gets_under_the_umask(tmp_path: Path) -> None:
    """mkstemp makes 0600 files: a report or saved run renamed from one would be unreadable
    to the rest of a team."""
    from pytest_ollama_cpu.results_file import temporary_beside

    old = os.umask(0o022)
    try:
        fd, temp = temporary_beside(tmp_path, ".x.")
        os.close(fd)
        assert os.stat(temp).st_mode & 0o777 == 0o644
        os.umask(0o077)
        fd, temp = temporary_beside(tmp_path, ".y.")
        os.close(fd)
        assert os.stat(temp).st_mode & 0o777 == 0o600
    finally:
        os.umask(old)
