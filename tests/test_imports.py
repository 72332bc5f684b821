"""What importing the plugin costs a pytest run that does not measure anything."""

from __future__ import annotations

import subprocess
import sys


def test_importing_the_plugin_does_not_load_scipy() -> None:
    """Every pytest run in a project with the plugin installed imports it, with
    --ollama-cpu or without: scipy.special alone costs 0.2-0.5 s (issue 15)."""
    code = (
        "import sys, pytest_ollama_cpu.plugin, pytest_ollama_cpu.cli\n"
        "assert 'scipy' not in sys.modules, sorted(m for m in sys.modules if 'scipy' in m)[:5]\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
