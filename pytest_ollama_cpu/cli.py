"""``pytest-ollama-cpu``: the command line.

``pytest-ollama-cpu embedded [-- COMMAND ...]`` runs the embedded Ollama (see
``embedded.py``) on a free loopback port; with a command, it runs the command
with ``OLLAMA_HOST`` and ``OLLAMA_CPU_MODEL`` pointing at it, stops the server
afterwards and exits with the command's status.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from .embedded import DEFAULT_ROOT, MODEL_NAME, EmbeddedUnavailable, running


def _parse_cpus(text: str) -> list[int]:
    cpus: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if "-" in part:
            low, high = part.split("-", 1)
            cpus.extend(range(int(low), int(high) + 1))
        elif part:
            cpus.append(int(part))
    return cpus


def _embedded(args: argparse.Namespace) -> int:
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    cpus = _parse_cpus(args.cpus) if args.cpus else None
    try:
        with running(Path(args.root), port=args.port, cpus=cpus) as server:
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
                except KeyboardInterrupt:
                    return 0
                print(f"the server stopped:\n{server.log_tail()}", file=sys.stderr)
                return 1
            env = dict(os.environ)
            env["OLLAMA_HOST"] = server.host
            env.setdefault("OLLAMA_CPU_MODEL", MODEL_NAME)
            try:
                return subprocess.call(command, env=env)
            except FileNotFoundError:
                print(f"pytest-ollama-cpu: command not found: {command[0]}", file=sys.stderr)
                return 127
    except EmbeddedUnavailable as exc:
        print(f"pytest-ollama-cpu: the embedded Ollama cannot run: {exc}", file=sys.stderr)
        return 3


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pytest-ollama-cpu", description="Tools around the pytest-ollama-cpu plugin."
    )
    commands = parser.add_subparsers(dest="subcommand", required=True)
    embedded = commands.add_parser(
        "embedded",
        help="run the embedded Ollama (from PyPI) with Gemma 3 270M, optionally around a command",
    )
    embedded.add_argument(
        "--root",
        default=str(DEFAULT_ROOT),
        help=f"folder for the server's files and models (default: {DEFAULT_ROOT})",
    )
    embedded.add_argument("--port", type=int, default=None, help="port (default: a free one)")
    embedded.add_argument("--cpus", default=None, help="confine the server to CPUs, e.g. 0-3,8")
    embedded.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND to run")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.subcommand == "embedded":
        return _embedded(args)
    return 2  # pragma: no cover - argparse rejects unknown subcommands


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
