"""The ``pytest-ollama-cpu`` command, in-process through ``cli.main``: each subcommand's
argument errors, ``compare`` of saved runs and its exit status, ``report`` writing a
page, ``--help`` and ``--version``; one subprocess checks that the console script is
installed and runs. ``embedded`` against the genuine server: test_e2e_embedded.py."""

from __future__ import annotations

import contextlib
import copy
import json
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pytest_ollama_cpu import __version__, cli, html_report, saved_runs
from pytest_ollama_cpu.embedded import MODEL_NAME, EmbeddedUnavailable
from pytest_ollama_cpu.records import RecordedSweep
from pytest_ollama_cpu.results import Sample

from .conftest import run_behaviour
from .fake_ollama import Behaviour
from .test_saved_runs import SWEEP_TEST
from .test_verdicts import sample, sweep_of

COMMAND = str(Path(sys.executable).with_name("pytest-ollama-cpu"))
NODEID = "tests/test_perf.py::test_sweep"


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``pytest-ollama-cpu ARGS`` in this process: its status, stdout and stderr."""
    status = cli.main(list(args))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def argparse_exit(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """What argparse does with ``ARGS`` (help, version, a usage error): it exits."""
    with pytest.raises(SystemExit) as exited:
        cli.main(list(args))
    captured = capsys.readouterr()
    assert isinstance(exited.value.code, int)
    return exited.value.code, captured.out, captured.err


def flat(text: str) -> str:
    """``text`` with its whitespace as single spaces: argparse wraps help to the terminal."""
    return " ".join(text.split())


# -- saved runs, made as the plugin saves them ---------------------------------------------


def around(threads: int, centre: float, n: int = 6) -> list[Sample]:
    return [sample(threads, centre * (1 + 0.01 * (i - (n - 1) / 2))) for i in range(n)]


def recorded(scale: float) -> list[RecordedSweep]:
    """A sweep of 1 and 2 threads at ``scale`` times the baseline's throughput."""
    sweep = sweep_of({1: around(1, 40.0 * scale), 2: around(2, 70.0 * scale)})
    return [RecordedSweep(NODEID, sweep)]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A storage folder of this machine's saved runs: 1 ``base``; 2 ``slower``, 25%
    slower; 3 ``same``, as fast; 4 ``other``, as fast on another Ollama version. The
    commands only read it."""
    folder = tmp_path_factory.mktemp("cli") / "store"
    base = recorded(1.0)
    machine = saved_runs.machine_info(base)
    other = copy.deepcopy(machine)
    other["ollama_cpu"]["server"]["version"] = "0.4.0"
    commit: dict[str, Any] = {"id": "abc1234", "dirty": False}
    for name, sweeps, info in (
        ("base", base, machine),
        ("slower", recorded(0.75), machine),
        ("same", recorded(1.0), machine),
        ("other", recorded(1.0), other),
    ):
        saved_runs.save(saved_runs.saved_run_document(sweeps, info, commit), folder, name)
    return folder


# -- the command and its help ----------------------------------------------------------------


def test_help_names_the_subcommands(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = argparse_exit(capsys, "--help")
    assert status == 0 and err == ""
    assert out.startswith("usage: pytest-ollama-cpu ")
    for word in ("embedded", "compare", "report", "--version"):
        assert word in out


@pytest.mark.parametrize(
    ("subcommand", "says"),
    [
        ("compare", "Exit status: 0 no regression, 1 regression, 2 bad input."),
        ("report", "Exit status: 0 written, 2 bad input. Needs matplotlib:"),
        ("embedded", "-- COMMAND to run"),
    ],
)
def test_each_subcommand_has_its_help(
    capsys: pytest.CaptureFixture[str], subcommand: str, says: str
) -> None:
    status, out, _ = argparse_exit(capsys, subcommand, "--help")
    assert status == 0
    assert out.startswith(f"usage: pytest-ollama-cpu {subcommand} ")
    assert says in flat(out)


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = argparse_exit(capsys, "--version")
    assert status == 0 and err == ""
    assert out == f"pytest-ollama-cpu {__version__}\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "the following arguments are required: subcommand"),
        (["frobnicate"], "argument subcommand: invalid choice: 'frobnicate'"),
        (["compare", "1"], "the following arguments are required: new"),
        (["compare", "1", "2", "--alpha", "often"], "argument --alpha: invalid float value"),
        (["compare", "1", "2", "--colour"], "unrecognized arguments: --colour"),
        (["report", "1"], "the following arguments are required: -o/--output"),
        (["report", "-o", "x.html"], "the following arguments are required: RUN"),
        (["embedded", "--port", "x"], "argument --port: invalid int value: 'x'"),
    ],
)
def test_a_usage_error_exits_2_with_the_usage(
    capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    status, out, err = argparse_exit(capsys, *args)
    assert status == 2 and out == ""
    assert err.startswith("usage: pytest-ollama-cpu")
    assert message in err


# -- compare: bad input ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--fail", "speed:5%"], "--fail 'speed:5%': unknown quantity 'speed'; use one of"),
        (["--fail", "tokens_per_second"], "--fail 'tokens_per_second' is not a rule"),
        (["--fail", "tps:5%", "--fail", "tps:150%"], "between 0% and 100%"),
        (["--alpha", "0"], "--alpha must be between 0 and 0.5"),
        (["--alpha", "0.5"], "--alpha must be between 0 and 0.5"),
        (
            ["--markdown", "-", "--json", "-"],
            "--markdown - and --json - would mix on stdout; write one of them to a file",
        ),
    ],
)
def test_compare_refuses_bad_options_before_reading_a_run(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, args: list[str], message: str
) -> None:
    # no storage folder at all: the options are checked first
    status, out, err = run_cli(capsys, "compare", "1", "2", "--storage", str(tmp_path), *args)
    assert status == 2 and out == ""
    assert err.startswith("pytest-ollama-cpu compare: ") and message in err
    assert "no saved runs" not in err


def test_compare_names_a_run_it_cannot_find(
    capsys: pytest.CaptureFixture[str], store: Path, tmp_path: Path
) -> None:
    storage = ("--storage", str(store))
    status, out, err = run_cli(capsys, "compare", "base", "7", *storage)
    assert status == 2 and out == ""
    assert err.startswith("pytest-ollama-cpu compare: no saved run '7' in ")
    assert "4 saved there, newest first: 0004_other.json, 0003_same.json" in err
    missing = tmp_path / "missing.json"
    status, _, err = run_cli(capsys, "compare", str(missing), "latest", *storage)
    assert status == 2 and f"{missing} does not exist" in err
    status, _, err = run_cli(capsys, "compare", "1", "2", "--storage", str(tmp_path / "empty"))
    assert status == 2 and "no saved runs in " in err and "save one first" in err
    assert "Traceback" not in err


def test_compare_names_an_output_it_cannot_write(
    capsys: pytest.CaptureFixture[str], store: Path, tmp_path: Path
) -> None:
    storage = ("--storage", str(store))
    nowhere = tmp_path / "no-such-folder" / "out.json"
    status, _, err = run_cli(capsys, "compare", "1", "2", *storage, "--json", str(nowhere))
    assert status == 2
    assert (
        f"pytest-ollama-cpu compare: cannot write {nowhere} (--json): No such file or directory; "
        "nothing was written there. Check that its folder exists and is writable, or give "
        "another path." in err
    )
    status, _, err = run_cli(capsys, "compare", "1", "2", *storage, "--markdown", str(tmp_path))
    assert status == 2
    assert f"cannot write {tmp_path} (--markdown): it is a folder; give a file name" in err


# moved from test_saved_faults.py
@pytest.mark.parametrize("flag", ["--markdown", "--json"])
def test_the_compare_command_never_writes_over_a_file_it_did_not_write(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], store: Path, flag: str
) -> None:
    storage = ("--storage", str(store))
    users = tmp_path / "README.md"
    users.write_text("# my project\n")
    status, _, err = run_cli(capsys, "compare", "1", "2", *storage, flag, str(users))
    assert status == 2
    assert f"{users} ({flag}) already exists and is not a comparison this command wrote" in err
    assert "left untouched. Give another path, or --append to add to it." in err
    assert users.read_text() == "# my project\n"
    # what an earlier compare wrote is replaced whole; --append adds to anything
    ours = tmp_path / "out"
    assert run_cli(capsys, "compare", "1", "2", *storage, flag, str(ours))[0] == 0
    first = ours.read_text()
    assert run_cli(capsys, "compare", "1", "2", *storage, flag, str(ours))[0] == 0
    assert ours.read_text() == first
    status, _, _ = run_cli(capsys, "compare", "1", "2", *storage, flag, str(users), "--append")
    assert status == 0 and users.read_text().startswith("# my project\n")
    assert len(users.read_text()) > len("# my project\n")
    assert not list(tmp_path.glob(".*.tmp"))


# -- compare: two saved runs -----------------------------------------------------------------


def test_a_regression_under_a_rule_exits_1(capsys: pytest.CaptureFixture[str], store: Path) -> None:
    storage = ("--storage", str(store))
    status, out, err = run_cli(capsys, "compare", "base", "slower", "--fail", "tps:5%", *storage)
    assert status == 1 and err == ""
    assert out.startswith(f"baseline {saved_runs.machine_folder(store)}/0001_base.json vs ")
    assert out.count("-25.0%") == 2 and out.count("REGRESSION (> 5% worse)") == 2
    assert "2 regression(s) at alpha 0.01" in out
    # a rule it keeps: 0
    status, out, _ = run_cli(capsys, "compare", "base", "slower", "--fail", "tps:30%", *storage)
    assert status == 0 and "0 regression(s) at alpha 0.01" in out
    # the other way round it got faster: never a regression
    status, out, _ = run_cli(capsys, "compare", "slower", "base", "--fail", "tps:5%", *storage)
    assert status == 0 and out.count("better") == 2


def test_without_a_rule_nothing_fails(capsys: pytest.CaptureFixture[str], store: Path) -> None:
    status, out, _ = run_cli(capsys, "compare", "1", "2", "--storage", str(store))
    assert status == 0
    assert out.count("worse") == 2 and "REGRESSION" not in out
    assert "no --ollama-cpu-compare-fail rule, so nothing can fail" in out


def test_an_unchanged_run_passes(capsys: pytest.CaptureFixture[str], store: Path) -> None:
    storage = ("--storage", str(store))
    status, out, err = run_cli(capsys, "compare", "base", "latest", "--fail", "tps:5%", *storage)
    assert status == 0 and err == ""
    assert "0004_other.json" in out  # 'latest': the newest saved
    status, out, _ = run_cli(capsys, "compare", "1", "same", "--fail", "tps:5%", *storage)
    assert status == 0
    assert out.count(" ok\n") == 2 and "0 regression(s) at alpha 0.01" in out


def test_another_machine_is_a_note_and_strict_makes_it_an_error(
    capsys: pytest.CaptureFixture[str], store: Path
) -> None:
    storage = ("--storage", str(store))
    difference = "Ollama version: 0.0.0 in the baseline, 0.4.0 now"
    status, out, err = run_cli(capsys, "compare", "base", "other", *storage)
    assert status == 0 and err == ""
    assert f"note: the baseline's machine differs: {difference}" in out
    status, out, err = run_cli(capsys, "compare", "base", "other", "--strict", *storage)
    assert status == 2
    assert err == (
        f"pytest-ollama-cpu compare: the runs come from different machines: {difference}\n"
    )
    assert "note: the baseline's machine differs" in out  # the table is still shown
    # the same machine: --strict has nothing to say
    assert run_cli(capsys, "compare", "base", "same", "--strict", *storage)[0] == 0


def test_markdown_and_json_to_files_and_stdout(
    capsys: pytest.CaptureFixture[str], store: Path, tmp_path: Path
) -> None:
    storage = ("--storage", str(store))
    summary, data = tmp_path / "summary.md", tmp_path / "comparison.json"
    status, out, err = run_cli(
        capsys,
        *("compare", "1", "2", "--fail", "tps:5%", *storage),
        *("--markdown", str(summary), "--json", str(data)),
    )
    assert status == 1
    assert "REGRESSION" in out and err == ""  # the table on stdout: nothing else asked there
    assert summary.read_text().startswith("### pytest-ollama-cpu: Regressions found")
    written = json.loads(data.read_text())
    assert {"baseline", "new", "rows"} <= set(written) and len(written["regressions"]) == 2
    # Markdown on stdout: alone there, the table on stderr
    status, out, err = run_cli(capsys, "compare", "1", "3", *storage, "--markdown", "-")
    assert status == 0
    assert out.startswith("### pytest-ollama-cpu: Comparison (no rule given)")
    assert err.startswith("baseline ") and "no change shown" in err


# moved from test_saved_runs.py (test_save_compare_and_gate_in_a_run), where it ran the
# console script on the runs that test saved
def test_compare_reads_the_runs_the_plugin_saved(
    pytester: pytest.Pytester, capsys: pytest.CaptureFixture[str]
) -> None:
    pytester.makepyfile(SWEEP_TEST)
    run_behaviour(pytester, Behaviour(jitter=0.005, seed=1), "--ollama-cpu-save=base")
    run_behaviour(
        pytester, Behaviour(jitter=0.02, seed=3, base_rate=15.0), "--ollama-cpu-save=slower"
    ).assert_outcomes(passed=1)
    capsys.readouterr()
    # with Markdown for a CI job summary; the default storage, .benchmarks, in the
    # current folder (pytester's)
    summary = pytester.path / "summary.md"
    status, out, err = run_cli(
        capsys,
        *("compare", "1", "2", "--fail", "tokens_per_second:5%"),
        *("--markdown", str(summary), "--json", "-"),
    )
    assert status == 1, err
    # stdout holds the JSON asked for and nothing else; the table goes to stderr
    assert json.loads(out)["regressions"]
    assert "REGRESSION" in err
    markdown = summary.read_text()
    assert markdown.startswith("### pytest-ollama-cpu: Regressions found")
    assert "**REGRESSION (> 5% worse)**" in markdown
    status, out, _ = run_cli(capsys, "compare", "1", "1")
    assert status == 0
    assert "note: the baseline and the new run are the same file" in out
    status, _, err = run_cli(capsys, "compare", "1", "2", "--json", "-", "--markdown", "-")
    assert status == 2 and "would mix on stdout" in err


def test_the_console_script_is_installed_and_runs(store: Path) -> None:
    """The one subprocess: the ``pytest-ollama-cpu`` entry point, with real pipes."""
    done = subprocess.run(
        [COMMAND, "compare", "1", "2", "--fail", "tps:5%", "--json", "-", "--storage", str(store)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr
    assert len(json.loads(done.stdout)["regressions"]) == 2
    assert "REGRESSION (> 5% worse)" in done.stderr


# -- report ----------------------------------------------------------------------------------


def test_report_writes_the_page_and_says_so(
    capsys: pytest.CaptureFixture[str], store: Path, tmp_path: Path
) -> None:
    pytest.importorskip("matplotlib", reason="the report's charts need the 'report' extra")
    out = tmp_path / "one.html"
    status, said, err = run_cli(capsys, "report", "1", "-o", str(out), "--storage", str(store))
    assert status == 0, err
    assert said.startswith(f"pytest-ollama-cpu report: {out} (")
    assert said.endswith(" kB; 1 test, 1 run)\n")
    assert html_report.is_report(out)
    page = out.read_text()
    assert NODEID in page and 'id="history"' not in page
    # several runs: their history; the page written before is replaced
    status, said, err = run_cli(
        capsys, "report", "1", "2", "3", "-o", str(out), "--storage", str(store)
    )
    assert status == 0, err
    assert said.endswith(" kB; 1 test, 3 runs)\n")
    assert 'id="history"' in out.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["one.html"]


# moved from test_html_report.py, on this module's saved runs
def test_the_report_command_refuses_bad_input(
    tmp_path: Path, store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("matplotlib", reason="the report's charts need the 'report' extra")
    mine = tmp_path / "mine.html"
    mine.write_text("mine")
    args = ["--storage", str(store)]
    assert cli.main(["report", "1", "-o", str(mine), *args]) == 2
    assert "is not a pytest-ollama-cpu HTML report" in capsys.readouterr().err
    assert mine.read_text() == "mine"
    assert cli.main(["report", "7", "-o", str(tmp_path / "x.html"), *args]) == 2
    assert "no saved run '7'" in capsys.readouterr().err
    assert not (tmp_path / "x.html").exists()


def test_the_report_command_refuses_a_folder_and_a_missing_file(
    tmp_path: Path, store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("matplotlib", reason="the report's charts need the 'report' extra")
    storage = ("--storage", str(store))
    status, out, err = run_cli(capsys, "report", "1", "-o", str(tmp_path), *storage)
    assert status == 2 and out == ""
    assert err == (
        f"pytest-ollama-cpu report: cannot write {tmp_path}: it is a folder; give a file name\n"
    )
    missing = tmp_path / "missing.json"
    status, _, err = run_cli(capsys, "report", str(missing), "-o", str(tmp_path / "x.html"))
    assert status == 2
    assert f"saved run {missing} does not exist (neither a file nor a saved run's name)" in err
    assert list(tmp_path.iterdir()) == []


def test_without_matplotlib_the_report_command_says_what_to_install(
    tmp_path: Path, store: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    out = tmp_path / "x.html"
    status, said, err = run_cli(capsys, "report", "1", "-o", str(out), "--storage", str(store))
    assert status == 2 and said == ""
    assert err.startswith(
        "pytest-ollama-cpu report: pytest-ollama-cpu report draws its charts with matplotlib, "
        "which is not installed here: "
    )
    assert html_report.INSTALL_HINT in err
    assert not out.exists()


# -- embedded, without a server ----------------------------------------------------------------


@dataclass
class NoServer:
    """What ``embedded`` reads of a server that ``running`` would have started."""

    host: str = "http://127.0.0.1:1"
    log_path: Path = Path("serve-1.log")
    process: subprocess.Popen[bytes] | None = None
    started: list[tuple[Path, int | None, Sequence[int] | None]] = field(default_factory=list)

    def log_tail(self) -> str:
        return "the log's last lines"


@pytest.fixture
def no_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[NoServer]:
    """``embedded`` with ``running`` that starts nothing; the stop signals ``embedded``
    takes over are this process's own again afterwards."""
    server = NoServer()

    @contextlib.contextmanager
    def running(root: Path, port: int | None, cpus: Sequence[int] | None) -> Iterator[NoServer]:
        server.started.append((root, port, cpus))
        yield server

    monkeypatch.setattr(cli, "running", running)
    stops = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    handlers = {signum: signal.getsignal(signum) for signum in stops}
    try:
        yield server
    finally:
        for signum, handler in handlers.items():
            if handler is not None:
                signal.signal(signum, handler)


def test_embedded_passes_its_options_and_runs_the_command_against_the_server(
    no_server: NoServer, capfd: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code = (
        "import os, sys\n"
        "print(os.environ['OLLAMA_HOST'], os.environ['OLLAMA_CPU_MODEL'])\n"
        "sys.exit(7)\n"
    )
    status = cli.main(
        [
            *("embedded", "--root", str(tmp_path), "--port", "11500", "--cpus", "0-2, 5"),
            *("--", sys.executable, "-c", code),
        ]
    )
    out, err = capfd.readouterr()
    assert status == 7  # the command's
    assert no_server.started == [(tmp_path, 11500, (0, 1, 2, 5))]
    assert out == f"{no_server.host} {MODEL_NAME}\n"
    assert err == (
        f"pytest-ollama-cpu: embedded Ollama at {no_server.host} with model {MODEL_NAME} "
        f"(log: {no_server.log_path})\n"
    )


def test_embedded_says_which_cpu_list_it_cannot_read(
    no_server: NoServer, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stopped:
        cli.main(["embedded", "--cpus", "0-x", "--", "true"])
    assert stopped.value.code == 2
    assert "argument --cpus: '0-x' is not a CPU number or range; write e.g. 0-3,8" in (
        capsys.readouterr().err
    )
    assert no_server.started == []


def test_embedded_says_when_the_command_is_not_found(
    no_server: NoServer, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    missing = str(tmp_path / "no-such-command")
    status, _, err = run_cli(capsys, "embedded", "--", missing, "--flag")
    assert status == 127
    assert err.endswith(f"pytest-ollama-cpu: command not found: {missing}\n")


def test_embedded_without_a_command_says_when_the_server_stopped(
    no_server: NoServer, capsys: pytest.CaptureFixture[str]
) -> None:
    status, _, err = run_cli(capsys, "embedded")
    assert status == 1
    assert "pytest-ollama-cpu: press Ctrl-C to stop it\n" in err
    assert err.endswith("the server stopped:\nthe log's last lines\n")


def test_embedded_says_why_the_server_cannot_run(
    no_server: NoServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def unavailable(root: Path, port: int | None, cpus: Sequence[int] | None) -> Any:
        raise EmbeddedUnavailable("its pieces are not installed here")

    monkeypatch.setattr(cli, "running", unavailable)
    status, out, err = run_cli(capsys, "embedded", "--", "true")
    assert status == 3 and out == ""
    assert err == (
        "pytest-ollama-cpu: the embedded Ollama cannot run: its pieces are not installed here\n"
    )
