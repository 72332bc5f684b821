"""The package reads top-down along the data's way: each module imports only earlier ones.

``STAGES`` is the order, and the README's module map (its "Development" section)
names the modules in this order. A module that imports a later one, at the top,
inside a function or for type checking only, fails here: that arrow is a circle
waiting to happen, and a reader of the map would be misled by it.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "pytest_ollama_cpu"

STAGES = (
    # what everything stands on; knows nothing of a run
    "errors",
    "quantities",
    "statistics",
    "machine",
    "host",
    "processes",
    "client",
    "locking",
    "disturbance",
    "progress",
    "workloads",
    "limits",
    "roofline",
    # what the user asked for
    "thresholds",
    "rules",
    "markers",
    "options",
    # measuring
    "connection",
    "results",
    "sampler",
    # judging
    "verdicts",
    "records",
    # keeping, comparing and showing
    "results_file",
    "saved_runs",
    "comparison",
    "run",
    "report",
    "plots",
    "html_report",
    "outputs",
    # wiring into pytest, and the command line
    "fixture",
    "xdist",
    "plugin",
    "embedded",
    "cli",
)


def imports_of(path: Path) -> set[str]:
    """The package's modules that ``path`` imports, wherever in the file."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                found.add(node.module.split(".")[0])
            elif node.level == 1:  # from . import x
                found.update(alias.name for alias in node.names)
            elif node.module and node.module.startswith("pytest_ollama_cpu."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("pytest_ollama_cpu."):
                    found.add(alias.name.split(".")[1])
    return found - {"__version__"}


def modules() -> list[str]:
    return sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")


def test_every_module_has_a_place_in_the_order() -> None:
    assert sorted(STAGES) == modules(), (
        "a module was added or removed: give it its place in STAGES (and the README's map)"
    )
    assert len(set(STAGES)) == len(STAGES)


@pytest.mark.parametrize("module", STAGES)
def test_a_module_imports_only_earlier_stages(module: str) -> None:
    later = sorted(
        (m for m in imports_of(PACKAGE / f"{module}.py") if STAGES.index(m) > STAGES.index(module)),
        key=STAGES.index,
    )
    assert not later, f"{module}.py imports later stages: {', '.join(later)}"


def test_the_check_sees_every_kind_of_import(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "from .a import x\n"
        "from . import b\n"
        "import pytest_ollama_cpu.c\n"
        "from pytest_ollama_cpu.d import y\n"
        "if TYPE_CHECKING:\n"
        "    from .e import z\n"
        "def f():\n"
        "    from .f import w\n"
    )
    assert imports_of(source) == {"a", "b", "c", "d", "e", "f"}


def test_the_readme_map_names_the_modules_in_this_order() -> None:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("<!-- module map -->")
    end = readme.index("<!-- end of module map -->")
    named: list[str] = []
    for name in re.findall(r"`(\w+)\.py`", readme[start:end]):
        if name not in named:
            named.append(name)
    assert named == list(STAGES)
