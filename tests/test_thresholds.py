"""A threshold is defined once, as a field of ``Thresholds``: everything that names the
thresholds (the marker, the options, ``sweep.check``, the record, the README) follows it."""

from __future__ import annotations

import inspect
import re
from dataclasses import fields
from typing import Any

import pytest

from pytest_ollama_cpu.markers import MARKER_HELP, parse_marker
from pytest_ollama_cpu.options import ALL_OPTIONS, THRESHOLD_OPTIONS, resolve_settings
from pytest_ollama_cpu.thresholds import THRESHOLD_KEYWORDS, THRESHOLDS, Thresholds
from pytest_ollama_cpu.verdicts import check

from .conftest import ROOT

#: every field of Thresholds but alpha is a threshold, in the fields' order
NAMES = [f.name for f in fields(Thresholds) if f.name != "alpha"]


#: an ini file that sets nothing
NO_INI: dict[str, Any] = {}


def test_the_thresholds_are_the_fields_of_thresholds() -> None:
    assert list(THRESHOLDS) == NAMES
    assert list(THRESHOLD_KEYWORDS) == NAMES


def test_the_marker_takes_every_threshold_and_its_help_lists_them() -> None:
    for name in NAMES:
        assert f"{name}=None" in MARKER_HELP
        assert parse_marker((1, 2), {name: 1.5}).thresholds == {name: 1.5}


def test_every_threshold_has_its_option_ini_key_and_message() -> None:
    assert list(THRESHOLD_OPTIONS) == NAMES
    for name, spec in THRESHOLD_OPTIONS.items():
        assert spec in ALL_OPTIONS
        assert spec.flag == "--ollama-cpu-" + name.replace("_", "-")
        assert spec.ini == "ollama_cpu_" + name
        assert spec.setting == name
        assert spec.help == THRESHOLDS[name].help
        settings = resolve_settings({spec.dest: "1.5"}.get, NO_INI.get, {})
        assert getattr(settings.thresholds, name) == 1.5
        with pytest.raises(pytest.UsageError, match=f"e.g. {THRESHOLDS[name].example}$"):
            resolve_settings({spec.dest: "0"}.get, NO_INI.get, {})


def test_sweep_check_takes_every_threshold_as_a_keyword_of_its_type() -> None:
    # written out for an IDE's sake: they must stay the fields, with the fields' types
    keywords = {
        name: param.annotation
        for name, param in inspect.signature(check).parameters.items()
        if param.kind is inspect.Parameter.KEYWORD_ONLY
    }
    assert keywords == {f.name: f.type for f in fields(Thresholds)}


def test_every_threshold_is_recorded_and_counts() -> None:
    for name in NAMES:
        one = Thresholds(**{name: 0.5})
        assert one.any
        assert Thresholds.from_dict(one.to_dict()) == one
    assert not Thresholds().any
    assert list(Thresholds().to_dict()) == [*NAMES, "alpha"]


def test_the_readme_names_every_threshold() -> None:
    readme = (ROOT / "README.md").read_text()
    signature = re.search(r"`@pytest\.mark\.threads\((.*?)\)`", readme, re.DOTALL)
    assert signature is not None
    for name in NAMES:
        assert f"{name}=None" in signature.group(1), name  # the marker's signature
        assert f"| `{name}=" in readme, name  # the Verdicts table
        assert f"`--ollama-cpu-{name.replace('_', '-')} X`" in readme, name  # the options
