from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_ollama_cpu.embedded import EmbeddedServer, EmbeddedUnavailable, running

from .fake_ollama import Behaviour, FakeOllama

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def fake_ollama() -> Iterator[FakeOllama]:
    with FakeOllama(Behaviour()) as server:
        yield server


@pytest.fixture(scope="session")
def embedded_ollama() -> Iterator[EmbeddedServer]:
    """The genuine Ollama from PyPI with Gemma 3 270M, started once per run.

    Skipped where it cannot run, unless OLLAMA_CPU_REQUIRE_E2E=1 (make test, CI),
    where that is a failure: the end-to-end tests must run there.
    """
    try:
        with running(ROOT / ".ollama-embedded") as server:
            yield server
    except EmbeddedUnavailable as exc:
        if os.environ.get("OLLAMA_CPU_REQUIRE_E2E") == "1":
            pytest.fail(f"the embedded Ollama is required here but cannot run: {exc}")
        pytest.skip(f"the embedded Ollama cannot run here: {exc}")
