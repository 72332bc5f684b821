"""Settings from the command line, the environment and the ini file: what is refused and why."""

from __future__ import annotations

import pytest

from .fake_ollama import FakeOllama

SWEEP = """
import pytest

@pytest.mark.threads(1, rounds=1)
def test_sweep(ollama_cpu):
    ollama_cpu.generate("x", num_predict=4)
"""


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OLLAMA_HOST", "OLLAMA_CPU_MODEL", "OLLAMA_CPU_ROUNDS", "OLLAMA_CPU_ALPHA"):
        monkeypatch.delenv(name, raising=False)


def test_ini_paths_are_relative_to_the_rootdir_from_any_folder(
    pytester: pytest.Pytester, fake_ollama: FakeOllama, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the ini file's paths mean the same files wherever pytest is started, as
    # pytest's own (testpaths, cache_dir) do
    pytester.makeini(
        "[pytest]\n"
        "ollama_cpu_json = samples.json\n"
        "ollama_cpu_storage = runs\n"
        "ollama_cpu_compare_markdown = summary.md\n"
    )
    sub = pytester.mkdir("sub")
    (sub / "test_sweep.py").write_text(SWEEP)
    monkeypatch.chdir(sub)
    # compare with the latest run and save: the first run writes its "no baseline yet" note
    result = pytester.runpytest(
        "--ollama-cpu",
        f"--ollama-cpu-host={fake_ollama.host}",
        "--ollama-cpu-model=tiny",
        "--ollama-cpu-compare",
        "--ollama-cpu-save=first",
        f"--rootdir={pytester.path}",
    )
    result.assert_outcomes(passed=1)
    assert (pytester.path / "samples.json").is_file()
    assert list((pytester.path / "runs").glob("*/0001_first.json"))
    assert "no baseline yet" in (pytester.path / "summary.md").read_text()
    for name in ("samples.json", "runs", "summary.md"):
        assert not (sub / name).exists()
