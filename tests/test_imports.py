"""What the plugin costs a pytest run that does not measure anything.

Every pytest run in a project with the plugin installed imports it, with
``--ollama-cpu`` or without. Such a run reads the plugin's options and markers
only: the libraries that talk to Ollama and do the statistics are imported when
the plugin has work (importing them took 0.45 s here; scipy.special alone
0.2-0.5 s).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

#: imported only when the plugin measures, writes or compares
HEAVY = ("scipy", "numpy", "ollama", "httpx", "psutil", "pytest_benchmark", "matplotlib")
#: in a pytest run: pytest-benchmark is a pytest plugin of its own, which pytest loads
OURS = tuple(m for m in HEAVY if m != "pytest_benchmark")


def test_importing_the_plugin_loads_none_of_the_heavy_libraries() -> None:
    code = (
        "import sys, pytest_ollama_cpu.plugin\n"
        f"loaded = sorted(m for m in {HEAVY!r} if m in sys.modules)\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_command_line_does_not_load_scipy() -> None:
    code = (
        "import sys, pytest_ollama_cpu.cli\n"
        "assert 'scipy' not in sys.modules, sorted(m for m in sys.modules if 'scipy' in m)[:5]\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_run_without_the_flag_skips_its_tests_and_loads_none_of_them(tmp_path: Path) -> None:
    # an ini file may name the results file and the report for every run: without
    # --ollama-cpu they have nothing to hold, and are neither checked nor written
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\nollama_cpu_json = out/r.json\nollama_cpu_html = out/r.html\n"
    )
    (tmp_path / "test_perf.py").write_text(
        "import pytest\n\n"
        "@pytest.mark.threads(1, 2, min_speedup=1.2)\n"
        "def test_measured(ollama_cpu):\n"
        "    ollama_cpu.generate('hello')\n\n"
        "def test_plain():\n"
        "    assert True\n"
    )
    code = (
        "import sys, pytest\n"
        "status = pytest.main(['-q', '-p', 'no:cacheprovider', '-p', 'no:xdist', '-rs', "
        f"{str(tmp_path)!r}])\n"
        "assert status == 0, status\n"
        f"loaded = sorted(m for m in {OURS!r} if m in sys.modules)\n"
        "assert not loaded, loaded\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed, 1 skipped" in result.stdout
    assert "run pytest with --ollama-cpu to measure it" in result.stdout
    assert not (tmp_path / "out").exists()
