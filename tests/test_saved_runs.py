"""Saved runs and comparisons: the file layout, loading errors, rules, the gate."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pytest_ollama_cpu import saved_runs
from pytest_ollama_cpu.comparison import compare
from pytest_ollama_cpu.report import comparison_lines, comparison_markdown, comparison_report
from pytest_ollama_cpu.rules import RuleError, parse_rule
from pytest_ollama_cpu.saved_runs import SavedRun, SavedRunError, find, load_file, save

from .conftest import run_behaviour
from .fake_ollama import Behaviour

SWEEP_TEST = """
import numpy as np
import pytest

@pytest.mark.threads(1, 2, rounds=4)
def test_sweep(ollama_cpu):
    ollama_cpu.generate("hello", num_predict=8)
"""


def machine_dir(root: Path) -> Path:
    return saved_runs.machine_folder(root / ".benchmarks")


# -- rules ----------------------------------------------------------------------


def test_rules():
    rule = parse_rule("tokens_per_second:5%")
    assert (rule.quantity, rule.size, rule.relative) == ("tokens_per_second", 0.05, True)
    rule = parse_rule("utilization:0.1")
    assert (rule.field, rule.size, rule.relative) == ("thread_utilization", 0.1, False)
    assert parse_rule("tps:10%").quantity == "tokens_per_second"
    assert parse_rule("machine_utilization: 0.05").field == "machine_utilization"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tokens_per_second", "is not a rule: write QUANTITY:SIZE"),
        ("speed:5%", "unknown quantity 'speed'"),
        ("tokens_per_second:150%", "between 0% and 100%"),
        ("utilization:0", "the change must be above 0"),
        ("utilization:-1", "is not a rule"),
    ],
)
def test_bad_rules(text: str, message: str):
    with pytest.raises(RuleError, match=message):
        parse_rule(text)


# -- saving and loading ------------------------------------------------------------


def _document(
    tps_values: list[float], digest: str = "d" * 64, usable: float = 2.0
) -> dict[str, Any]:
    samples = [
        {"tokens_per_second": v, "thread_utilization": 0.95, "machine_utilization": 0.9}
        for v in tps_values
    ]
    entry = {
        "group": "t.py::test_a",
        "name": "test_a[m-generate-t1]",
        "fullname": "t.py::test_a[m-generate-t1]",
        "extra_info": {
            "ollama_cpu": {
                "schema": 1,
                "test": "t.py::test_a",
                "threads": 1,
                "model": {"name": "m", "digest": digest},
                "samples": samples,
            }
        },
        "stats": {"mean": 1.0},
    }
    return {
        "machine_info": {
            "ollama_cpu": {
                "machine": {"cpu_model": "cpu", "usable_cpus": usable},
                "server": {"version": "0.5.4"},
            }
        },
        "commit_info": {},
        "benchmarks": [entry],
        "datetime": "2026-11-28T00:00:00",
        "version": "5.2.3",
        "ollama_cpu": {"schema": 1},
    }


def test_save_numbers_files_and_never_overwrites(tmp_path: Path):
    storage = tmp_path / "store"
    first = save(_document([40.0, 41.0]), storage, "base line!")
    assert first.name == "0001_base-line.json"
    mine = first.parent / "0002_mine.json"
    mine.write_text("my own notes")
    second = save(_document([40.0, 41.0]), storage, "base line!")
    assert second.name == "0003_base-line.json"
    assert mine.read_text() == "my own notes"
    assert not list(first.parent.glob(".saving-*"))
    with pytest.raises(SavedRunError, match="give a name of letters"):
        save(_document([40.0]), storage, "///")


def test_find_by_latest_number_name_and_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    storage = tmp_path / "store"
    with pytest.raises(SavedRunError, match="no saved runs in .* save one first"):
        find(storage, "latest")
    a = save(_document([1.0]), storage, "alpha")
    b = save(_document([1.0]), storage, "beta")
    save(_document([1.0]), storage, "beta2")
    assert find(storage, "latest").name == "0003_beta2.json"
    assert find(storage, "1") == a and find(storage, "0002") == b
    assert find(storage, "alpha") == a
    assert find(storage, "beta") == b  # an exact name wins over a partial one
    again = save(_document([1.0]), storage, "beta")
    assert find(storage, "beta") == again  # a name saved again means its newest run
    with pytest.raises(SavedRunError, match="'bet' matches several saved runs"):
        find(storage, "bet")
    assert find(storage, str(a)) == a
    with pytest.raises(
        SavedRunError,
        match="no saved run 'gamma'.*4 saved there, newest first: 0004_beta.json, 0003_beta2",
    ):
        find(storage, "gamma")
    with pytest.raises(SavedRunError, match=r"does not exist"):
        find(storage, str(tmp_path / "x.json"))
    # an existing file is taken as a path, whatever its name; loading then says what it is
    (tmp_path / "NOTES.md").write_text("# notes")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SavedRunError, match=r"baseline NOTES.md is not valid JSON"):
        load_file(find(storage, "NOTES.md"))
    # ... but a file that happens to share a saved run's name does not hide the run
    (tmp_path / "alpha").write_text("not a run")
    assert find(storage, "alpha") == a
    # names are found as typed, though the file name has them cleaned up
    slashed = save(_document([1.0]), storage, "feat/x 2")
    assert slashed.name == "0005_feat-x-2.json"
    assert find(storage, "feat/x 2") == slashed
    with pytest.raises(SavedRunError, match="feat/y does not exist .neither a file nor a saved"):
        find(storage, "feat/y")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"machine_info": {}, "benchmarks": [', "is not valid JSON.*truncated"),
        ("[1, 2]", "is not a saved run: expected a JSON object"),
        ('{"benchmarks": []}', "not in pytest-benchmark's format \\(missing machine_info\\)"),
        (
            '{"machine_info": {}, "benchmarks": []}',
            "was not saved by pytest-ollama-cpu.*--ollama-cpu-save",
        ),
        (
            '{"machine_info": {}, "benchmarks": [], "ollama_cpu": {"schema": 99}}',
            "schema 99, newer than this pytest-ollama-cpu understands",
        ),
        (
            '{"machine_info": {}, "benchmarks": [{"fullname": "x"}], "ollama_cpu": {"schema": 1}}',
            "benchmark #1 has no samples of ours; the file is damaged",
        ),
    ],
)
def test_unusable_baselines_are_named(tmp_path: Path, content: str, message: str):
    path = tmp_path / "0001_x.json"
    path.write_text(content)
    with pytest.raises(SavedRunError, match=message) as info:
        load_file(path)
    assert str(path) in str(info.value)
    assert path.read_text() == content  # nothing the user saved is touched


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("tokens_per_second", math.nan, "tokens_per_second nan, which should be a positive number"),
        ("tokens_per_second", math.inf, "tokens_per_second inf"),
        ("tokens_per_second", "fast", "tokens_per_second 'fast'"),
        ("tokens_per_second", 0, "tokens_per_second 0, which should be a positive number"),
        ("tokens_per_second", -3.5, "tokens_per_second -3.5"),
        ("tokens_per_second", None, "tokens_per_second None"),
        ("tokens_per_second", True, "tokens_per_second True"),
        ("thread_utilization", -0.1, "thread_utilization -0.1, which should be a number of 0"),
        ("machine_utilization", math.nan, "machine_utilization nan"),
        ("disturbed", "yes", "disturbed 'yes', which should be true or false"),
    ],
)
def test_a_damaged_sample_is_named_not_compared(
    tmp_path: Path, field: str, value: object, message: str
) -> None:
    document = _document([40.0, 40.4, 39.6])
    document["benchmarks"][0]["extra_info"]["ollama_cpu"]["samples"][1][field] = value
    path = tmp_path / "0001_edited.json"
    path.write_text(json.dumps(document))  # NaN and Infinity as Python's json writes them
    with pytest.raises(SavedRunError) as caught:
        load_file(path)
    assert str(caught.value).startswith(
        f"baseline {path}: t.py::test_a[m-generate-t1]: sample 2 has {message}"
    )
    assert str(caught.value).endswith("the file is damaged or was edited by hand")


def test_unreadable_baseline(tmp_path: Path):
    with pytest.raises(SavedRunError, match="does not exist"):
        load_file(tmp_path / "missing.json")
    if os.geteuid() != 0:  # root reads anything
        path = tmp_path / "locked.json"
        path.write_text("{}")
        path.chmod(0)
        with pytest.raises(SavedRunError, match="cannot read baseline"):
            load_file(path)


def test_older_schemas_are_upgraded_on_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    def from_zero(document: dict[str, Any]) -> dict[str, Any]:
        # an imagined schema 0 kept samples under extra_info directly
        for bench in document["benchmarks"]:
            bench["extra_info"] = {"ollama_cpu": {**bench["extra_info"], "schema": 1}}
        document["ollama_cpu"]["schema"] = 1
        return document

    monkeypatch.setitem(saved_runs.UPGRADES, 0, from_zero)
    old = _document([40.0, 41.0])
    for bench in old["benchmarks"]:
        bench["extra_info"] = bench["extra_info"]["ollama_cpu"]
    old["ollama_cpu"]["schema"] = 0
    path = tmp_path / "0001_old.json"
    path.write_text(json.dumps(old))
    loaded = load_file(path)
    assert loaded.document["ollama_cpu"]["schema"] == 1
    assert list(loaded.entries) == ["t.py::test_a[m-generate-t1]"]


# -- comparing ----------------------------------------------------------------------


def test_compare_flags_only_a_drop_shown_larger_than_the_rule():
    old = SavedRun(None, _document([40.0, 40.4, 39.6, 40.2, 39.8]))
    slower = SavedRun(None, _document([36.0, 36.4, 35.6, 36.2, 35.8]))  # -10%
    rules = [parse_rule("tokens_per_second:5%")]
    (row,) = compare(old, slower, rules, 0.01).rows
    assert row.regression and row.verdict == "REGRESSION (> 5% worse)"
    assert row.change == "-10.0%"
    # a 10% drop does not exceed a 15% rule
    (row,) = compare(old, slower, [parse_rule("tokens_per_second:15%")], 0.01).rows
    assert not row.regression and row.verdict == "ok"
    # noisy samples whose mean dropped 10%: not shown, not failed
    noisy = SavedRun(None, _document([30.0, 45.0, 33.0, 40.0, 32.0]))
    result = compare(old, noisy, rules, 0.01)
    (row,) = result.rows
    assert not row.regression
    # ... and the row says that a drop of that size could not have been caught
    assert row.undecided and row.verdict == "ok? a 5% drop not ruled out"
    assert result.undecided == (row,)
    assert "1 row(s) marked 'ok?' passed because" in "\n".join(comparison_lines(result))
    # a row whose interval stays within the rule is plainly ok
    (row,) = compare(old, old, rules, 0.01).rows
    assert row.verdict == "ok" and not row.undecided
    # without rules the table is shown and nothing fails
    assert not compare(old, slower, [], 0.01).regressions
    assert compare(old, slower, [], 0.01).rows[0].verdict == "worse"
    assert compare(old, noisy, [], 0.01).rows[0].verdict == "no change shown"
    faster = SavedRun(None, _document([44.0, 44.4, 43.6, 44.2, 43.8]))
    assert compare(old, faster, rules, 0.01).rows[0].verdict == "better"


def test_compare_says_what_it_could_not_judge():
    old = SavedRun(None, _document([40.0, 40.4, 39.6]))
    rules = [parse_rule("tokens_per_second:5%")]
    # one sample a side (--ollama-cpu-rounds 1): no test, and the summary says so
    single = SavedRun(None, _document([10.0]))
    result = compare(old, single, rules, 0.01)
    (row,) = result.rows
    assert row.verdict == "not compared" and result.not_compared == (row,)
    assert not result.regressions
    assert "1 row(s) 'not compared': fewer than two usable samples" in "\n".join(
        comparison_lines(result)
    )
    # no test in common: the rules were given, but applied to nothing
    renamed = _document([40.0, 40.4, 39.6])
    renamed["benchmarks"][0]["fullname"] = "t.py::test_b[m-generate-t1]"
    result = compare(old, SavedRun(None, renamed), rules, 0.01)
    assert result.gating and not result.rows
    text = "\n".join(comparison_lines(result))
    assert "no test was measured in both runs, so no rule was applied" in text
    assert "only in this run: t.py::test_b[m-generate-t1]" in text
    # without rules, the table and the Markdown say that nothing can fail
    result = compare(old, old, [], 0.01)
    assert not result.gating
    assert "no --ollama-cpu-compare-fail rule, so nothing can fail" in "\n".join(
        comparison_lines(result)
    )
    markdown = comparison_markdown(result)
    assert markdown.startswith("### pytest-ollama-cpu: Comparison (no rule given)")
    assert "98% simultaneous interval" in markdown


def _under_load(
    document: dict[str, Any], values: list[float], other: float = 1.0
) -> dict[str, Any]:
    """Add samples taken while other processes took the CPU the server needed."""
    samples = document["benchmarks"][0]["extra_info"]["ollama_cpu"]["samples"]
    samples += [
        {
            "tokens_per_second": v,
            "thread_utilization": 0.5,
            "machine_utilization": 0.5,
            "other_cores_busy": other,
            "server_cpus": 2,
            "disturbed": True,
        }
        for v in values
    ]
    return document


def test_disturbed_samples_are_never_compared():
    old = SavedRun(None, _document([40.0, 40.4, 39.6, 40.2, 39.8]))
    rules = [parse_rule("tokens_per_second:5%"), parse_rule("utilization:0.1")]
    # set-aside samples at half speed beside undisturbed ones at the baseline's: no drop
    mixed = SavedRun(None, _under_load(_document([40.1, 40.3, 39.7]), [20.0, 21.0]))
    result = compare(old, mixed, rules, 0.01)
    assert not result.regressions and not result.busy
    assert [row.verdict for row in result.rows] == ["ok", "ok"]
    # every sample disturbed: neither a regression nor 'not compared' for lack of rounds
    loaded = SavedRun(None, _under_load(_document([]), [20.0, 21.0, 19.5, 20.5]))
    result = compare(old, loaded, rules, 0.01)
    assert not result.regressions and not result.not_compared
    assert len(result.busy) == 2
    row = result.rows[0]
    assert row.verdict == "busy: not compared" and row.shift is None
    assert row.busy == (
        "now: other processes used 1.00 of the server's 2 CPUs; 4 of 4 samples set aside"
    )
    text = "\n".join(comparison_lines(result))
    assert "t.py::test_a at 1 thread was not compared because the machine was busy (now:" in text
    markdown = comparison_markdown(result)
    assert markdown.startswith(
        "### pytest-ollama-cpu: No regressions (2 row(s) inconclusive: the machine was busy)"
    )
    # a baseline saved on a busy machine says so from its side
    result = compare(loaded, old, rules, 0.01)
    assert result.rows[0].busy is not None and result.rows[0].busy.startswith("baseline: ")
    assert compare(loaded, old, rules, 0.01).to_dict()["busy"]


def test_busy_rows_follow_the_inconclusive_policy():
    from pytest_ollama_cpu.options import Settings
    from pytest_ollama_cpu.outputs import Outputs
    from pytest_ollama_cpu.thresholds import Inconclusive

    old = SavedRun(None, _document([40.0, 40.4, 39.6, 40.2, 39.8]))
    loaded = SavedRun(None, _under_load(_document([]), [20.0, 21.0, 19.5]))
    comparison = compare(old, loaded, [parse_rule("tokens_per_second:5%")], 0.01)

    def outputs(policy: Inconclusive) -> Outputs:
        settings = Settings(True, "http://h:1", "m", 5, 64, ("auto",), 300.0, None)
        return Outputs(replace(settings, inconclusive=policy))

    passing = outputs("pass")
    assert passing._busy_rows(comparison, None) is None
    assert passing.notices == [
        "WARNING 1 comparison row(s) inconclusive because the machine was busy (see the notes "
        "under the comparison): nothing was judged on samples taken under load"
    ]
    failing = outputs("fail")
    assert failing._busy_rows(comparison, None) == pytest.ExitCode.TESTS_FAILED
    assert "--ollama-cpu-inconclusive=fail makes that a failure" in failing.errors[0]


def test_compare_absolute_utilization_and_machine_differences():
    old = SavedRun(None, _document([40.0, 41.0, 39.0]))
    doc = _document([40.0, 41.0, 39.0], digest="e" * 64, usable=1.0)
    for bench in doc["benchmarks"]:
        for s, u in zip(
            bench["extra_info"]["ollama_cpu"]["samples"], (0.5, 0.52, 0.49), strict=True
        ):
            s["thread_utilization"] = u
    new = SavedRun(None, doc)
    result = compare(old, new, [parse_rule("utilization:0.1")], 0.01)
    assert result.regressions and result.rows[0].change == "-0.447"
    assert result.differences == (
        "usable CPUs: 2.0 in the baseline, 1.0 now",
        "model m: digest dddddddddddd in the baseline, eeeeeeeeeeee now",
    )
    # the terminal shows the regressed row and each machine difference in red, from
    # the data: a legend or note that merely mentions a regression stays plain
    lines = comparison_report(result)
    red = [line.text for line in lines if line.colour == "red"]
    assert len(red) == 3
    assert "REGRESSION" in red[0] and "test_a" in red[0]
    assert all("the baseline's machine differs" in text for text in red[1:])
    plain = [line for line in lines if line.colour is None]
    assert any("1 regression(s) at alpha" in line.text for line in plain)  # the legend
    calm = compare(old, old, [parse_rule("utilization:0.1")], 0.01)
    assert [line for line in comparison_report(calm) if line.colour] == []


# -- in a pytest run -------------------------------------------------------------------


def test_save_compare_and_gate_in_a_run(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(SWEEP_TEST)
    folder = machine_dir(pytester.path)
    # a run saved with no baseline to plan from takes the most rounds allowed (4 x 4)
    result = run_behaviour(pytester, Behaviour(jitter=0.005, seed=1), "--ollama-cpu-save=base")
    result.assert_outcomes(passed=1)
    (saved,) = folder.glob("*.json")
    assert saved.name == "0001_base.json"
    result.stdout.fnmatch_lines([f"ollama-cpu: run saved as *{saved.name}"])
    data = json.loads(saved.read_text())
    assert {"machine_info", "commit_info", "benchmarks", "datetime", "version"} <= set(data)
    names = [b["fullname"] for b in data["benchmarks"]]
    assert names == [
        "test_save_compare_and_gate_in_a_run.py::test_sweep[tiny-generate-t1]",
        "test_save_compare_and_gate_in_a_run.py::test_sweep[tiny-generate-t2]",
    ]
    one = data["benchmarks"][0]
    assert one["stats"]["ops"] == pytest.approx(20.0, rel=0.05)  # tokens/s
    assert len(one["stats"]["data"]) == 16 and one["stats"]["rounds"] == 16
    assert len(one["extra_info"]["ollama_cpu"]["samples"]) == 16

    # an unchanged run: compared, no regression, exit 0
    result = run_behaviour(
        pytester,
        Behaviour(jitter=0.02, seed=2),
        "--ollama-cpu-compare",
        "--ollama-cpu-compare-fail=tokens_per_second:5%",
    )
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(
        [
            "*= ollama-cpu: comparison with the baseline =*",
            "baseline *0001_base.json vs this run (tests in *.py)",
            "  test_sweep*1*tokens_per_second:5%*ok",
            "*0 regression(s) at alpha 0.01*",
        ]
    )
    assert len(list(folder.glob("*.json"))) == 1  # comparing alone saves nothing

    # 25% slower: the rows are named and the run fails, though every test passed
    result = run_behaviour(
        pytester,
        Behaviour(jitter=0.02, seed=3, base_rate=15.0),
        "--ollama-cpu-compare=base",
        "--ollama-cpu-compare-fail=tokens_per_second:5%",
        "--ollama-cpu-autosave",
        "--ollama-cpu-compare-markdown=job-summary.md",
    )
    result.assert_outcomes(passed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [
            "  test_sweep*1*tokens_per_second:5%*20.0*1[45].*-2*REGRESSION (> 5% worse)",
            "  test_sweep*2*tokens_per_second:5%*REGRESSION (> 5% worse)",
            "*2 regression(s) at alpha 0.01*",
        ]
    )
    assert sorted(p.name[:4] for p in folder.glob("*.json")) == ["0001", "0002"]
    # planned from the steady baseline: the 4 rounds asked for were enough to gate on
    (second,) = folder.glob("0002_*.json")
    assert len(json.loads(second.read_text())["benchmarks"][0]["stats"]["data"]) == 4
    job_summary = (pytester.path / "job-summary.md").read_text()
    assert job_summary.startswith("### pytest-ollama-cpu: Regressions found")
    assert job_summary.count("**REGRESSION (> 5% worse)**") == 2

    # pytest-benchmark's own compare command reads our files as they are
    bench = subprocess.run(
        [
            str(Path(sys.executable).with_name("pytest-benchmark")),
            "--storage",
            str(pytester.path / ".benchmarks"),
            "compare",
        ],
        capture_output=True,
        text=True,
        cwd=pytester.path,
    )
    assert bench.returncode == 0, bench.stderr
    assert "test_sweep[tiny-generate-t1] (0001_base)" in bench.stdout


def test_a_bad_baseline_stops_the_run_before_measuring(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(SWEEP_TEST)
    fake = Behaviour()
    result = run_behaviour(pytester, fake, "--ollama-cpu-compare")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: no saved runs in *.benchmarks*save one first*"])
    assert fake.requests == []
    broken = pytester.path / "broken.json"
    broken.write_text('{"machine_info": {}, "benchm')
    fake = Behaviour()
    result = run_behaviour(pytester, fake, f"--ollama-cpu-compare={broken}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: baseline {broken} is not valid JSON*"])
    assert fake.requests == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--ollama-cpu-compare-fail=tokens_per_second:5%"],
            "*needs a baseline: add --ollama-cpu-compare*",
        ),
        (
            ["--ollama-cpu-compare", "--ollama-cpu-compare-fail=speed:5%"],
            "--ollama-cpu-compare-fail: 'speed:5%' (from the command line) is not valid*"
            "unknown quantity*",
        ),
        (["--ollama-cpu-storage=pyproject.toml"], "*it is a file; give a folder"),
    ],
)
def test_bad_comparison_options(pytester: pytest.Pytester, args: list[str], message: str) -> None:
    pytester.makefile(".toml", pyproject="")
    pytester.makepyfile("def test_plain():\n    pass\n")
    result = pytester.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: {message}"])


def test_another_machine_warns_and_strict_makes_it_an_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(SWEEP_TEST)
    run_behaviour(pytester, Behaviour(), "--ollama-cpu-save=base").assert_outcomes(passed=1)
    (saved,) = machine_dir(pytester.path).glob("*.json")
    data = json.loads(saved.read_text())
    data["machine_info"]["ollama_cpu"]["server"]["version"] = "0.4.0"
    other = pytester.path / "other-machine.json"
    other.write_text(json.dumps(data))
    result = run_behaviour(pytester, Behaviour(), f"--ollama-cpu-compare={other}")
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(
        [
            "*note: the baseline's machine differs: "
            "Ollama version: 0.4.0 in the baseline, 0.0.0-fake now"
        ]
    )
    result = run_behaviour(
        pytester, Behaviour(), f"--ollama-cpu-compare={other}", "--ollama-cpu-compare-strict"
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stdout.fnmatch_lines(["ollama-cpu: ERROR: the baseline comes from another machine*"])


def test_tests_on_one_side_only_are_listed(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(SWEEP_TEST)
    run_behaviour(pytester, Behaviour(), "--ollama-cpu-save=base").assert_outcomes(passed=1)
    pytester.makepyfile(
        SWEEP_TEST.replace("threads(1, 2,", "threads(1, 3,").replace("test_sweep", "test_new")
    )
    result = run_behaviour(
        pytester, Behaviour(), "--ollama-cpu-compare", "--ollama-cpu-compare-fail=tps:5%"
    )
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(
        [
            "*no test was measured in both runs",
            "*note: only in the baseline: *::test_sweep?tiny-generate-t1?",
            "*note: only in this run: *::test_new?tiny-generate-t3?",
        ]
    )


def test_a_pipelines_first_run_saves_instead_of_failing(pytester: pytest.Pytester) -> None:
    """The README's CI recipe (compare with the latest, autosave) on an empty cache."""
    pytester.makepyfile(SWEEP_TEST)
    summary = pytester.path / "summary.md"
    gate = (
        "--ollama-cpu-compare",
        "--ollama-cpu-autosave",
        "--ollama-cpu-compare-fail=tokens_per_second:50%",
        f"--ollama-cpu-compare-markdown={summary}",
    )
    # runs of another machine id (e.g. after a Python upgrade) are there: comparing
    # nothing would pass the gate unseen, so the user must choose
    other = pytester.path / ".benchmarks" / "Linux-CPython-3.9-32bit"
    other.mkdir(parents=True)
    (other / "0001_old.json").write_text("{}")
    fake = Behaviour()
    refused = run_behaviour(pytester, fake, *gate)
    assert refused.ret == pytest.ExitCode.USAGE_ERROR
    refused.stderr.fnmatch_lines(
        [
            "ERROR: no run of this machine is saved in * to compare with (runs of other machines "
            "are in *: Linux-CPython-3.9-32bit; to compare with one of them anyway, give its "
            "file's path); or, to start this machine's baselines afresh, run once without "
            "--ollama-cpu-compare"
        ]
    )
    assert fake.requests == []
    (other / "0001_old.json").unlink()
    other.rmdir()

    first = run_behaviour(pytester, Behaviour(), *gate)
    assert first.ret == pytest.ExitCode.OK
    first.stdout.fnmatch_lines(
        [
            "ollama-cpu: run saved as *0001_*.json",
            "ollama-cpu: nothing compared: no run of this machine is saved in * yet. This run "
            "is saved as the first baseline: *0001_*.json.",
        ]
    )
    assert summary.read_text().startswith("### pytest-ollama-cpu: no baseline yet\n")
    (saved,) = machine_dir(pytester.path).glob("*.json")
    second = run_behaviour(pytester, Behaviour(), *gate)
    assert second.ret == pytest.ExitCode.OK
    second.stdout.fnmatch_lines([f"baseline *{saved.name} vs *0002_*.json (tests in *.py)"])
    second.stdout.no_fnmatch_line("*nothing compared*")
    assert "### pytest-ollama-cpu: No regressions" in summary.read_text()
    # a name saved again: the earlier run is kept, and the summary says what the name means
    # now, in the form the file name has
    run_behaviour(pytester, Behaviour(), "--ollama-cpu-save=release 1")
    again = run_behaviour(pytester, Behaviour(), "--ollama-cpu-save=release 1")
    again.stdout.fnmatch_lines(
        [
            "ollama-cpu: run saved as *0004_release-1.json",
            "ollama-cpu: the name 'release-1' was saved before (0003_release-1.json, kept): "
            "--ollama-cpu-compare=release-1 now means this run, =3 the earlier one",
        ]
    )
    assert "no baseline yet" not in again.stdout.str()
    # ... and the name works as typed, too
    result = run_behaviour(pytester, Behaviour(), "--ollama-cpu-compare=release 1")
    result.stdout.fnmatch_lines(["baseline *0004_release-1.json vs this run*"])


def test_each_row_says_what_it_could_have_caught():
    from pytest_ollama_cpu.statistics import Difference, Shift, detectable_drop, t_quantile

    # all the variance on one side: the Behrens-Fisher distribution is that side's t
    shift = Shift(0.9, 0.8, 0.95, 0.5, Difference(-0.1, 0.01, 1.0, 8.0, 4.0))
    reach = (t_quantile(0.99, 8.0) + t_quantile(0.9, 8.0)) * 0.01
    assert detectable_drop(shift, 0.05, 0.01, relative=True) == pytest.approx(
        1 - 0.95 * math.exp(-reach)
    )
    assert detectable_drop(shift, 2.0, 0.01, relative=False) == pytest.approx(2.0 + reach)
    # a drop of exactly that size is caught about 9 times in 10 (the spreads vary: 0.8-0.97)
    rng = np.random.default_rng(11)
    sigma, n, rule = 0.02, 5, parse_rule("tokens_per_second:5%")
    expected = Shift(
        1.0, 1.0, 1.0, 0.5, Difference(0.0, sigma * math.sqrt(2 / n), 0.5, n - 1, n - 1)
    )
    drop = detectable_drop(expected, 0.05, 0.01, relative=True)
    caught = 0
    for _ in range(400):
        old = SavedRun(None, _document(list(40.0 * np.exp(rng.normal(0, sigma, n)))))
        new_values = 40.0 * (1 - drop) * np.exp(rng.normal(0, sigma, n))
        (row,) = compare(old, SavedRun(None, _document(list(new_values))), [rule], 0.01).rows
        caught += row.regression
        assert row.shift is not None
        assert row.p_adjusted == pytest.approx(min(1.0, row.shift.p_value))  # one row
    assert 0.8 <= caught / 400 <= 0.97, caught
    # the table shows the adjusted p and the detectable drop
    text = "\n".join(
        comparison_lines(compare(old, old, [rule, parse_rule("utilization:0.1")], 0.01))
    )
    assert "p adj.  detects" in text and "adjusted for the 2 row(s) compared" in text


def test_a_noisy_baseline_plans_more_samples_for_the_next_run(pytester: pytest.Pytester) -> None:
    """Each row of a compared run gets the samples its comparison needs to catch twice
    the rule's drop 9 times in 10, planned from the baseline's spread; a quantity that
    cannot be planned (no baseline row) stays at the rounds asked for."""
    pytester.makepyfile(SWEEP_TEST)
    folder = machine_dir(pytester.path)
    run_behaviour(pytester, Behaviour(jitter=0.03, seed=1), "--ollama-cpu-save=noisy")
    result = run_behaviour(
        pytester,
        Behaviour(jitter=0.03, seed=2),
        "--ollama-cpu-compare=noisy",
        "--ollama-cpu-compare-fail=tokens_per_second:5%",
        "--ollama-cpu-autosave",
    )
    assert result.ret == pytest.ExitCode.OK
    (second,) = folder.glob("0002_*.json")
    counts = [len(b["stats"]["data"]) for b in json.loads(second.read_text())["benchmarks"]]
    assert all(4 < n <= 16 for n in counts), counts
    # n: the baseline's 16 samples and the ones planned from them
    result.stdout.fnmatch_lines(["  test_sweep*1*tokens_per_second:5%*16/*1?%*ok*"])


# -- rules on every quantity, either way --------------------------------------------


def _timed(ttft: list[float], prefill: list[float], tmp_path: Path, name: str) -> SavedRun:
    document = _document([40.0 + 0.1 * i for i in range(len(ttft))])
    samples = document["benchmarks"][0]["extra_info"]["ollama_cpu"]["samples"]
    for sample, t, p in zip(samples, ttft, prefill, strict=True):
        sample.update(time_to_first_token=t, prompt_tokens_per_second=p)
    return load_file(save(document, tmp_path / "store", name))


def test_a_time_rule_fails_when_the_time_is_shown_higher_and_a_rate_rule_when_lower(
    tmp_path: Path,
) -> None:
    base = _timed([0.50, 0.51, 0.49, 0.50, 0.52], [300, 298, 303, 301, 299], tmp_path, "a")
    slower = _timed([0.98, 1.01, 0.99, 1.00, 1.02], [150, 152, 149, 151, 150], tmp_path, "b")
    rules = [parse_rule("ttft:10%"), parse_rule("prefill:10%")]
    assert [r.quantity for r in rules] == ["time_to_first_token", "prompt_tokens_per_second"]
    result = compare(base, slower, rules, 0.01)
    ttft, prefill = result.rows[0], result.rows[1]
    assert ttft.regression and prefill.regression
    assert ttft.verdict == "REGRESSION (> 10% higher)"
    assert prefill.verdict == "REGRESSION (> 10% worse)"
    # shown in the time's own terms: about twice as long, not its inverse halved
    assert ttft.change == "+98.4%" and ttft.baseline is not None and ttft.baseline < 0.6
    assert ttft.to_dict()["low"] > 1.8 and ttft.to_dict()["high"] < 2.2
    assert prefill.change.startswith("-49.")
    # the other way round, both got better: never a regression
    better = compare(slower, base, rules, 0.01)
    assert [r.verdict for r in better.rows] == ["better", "better"]
    # a time 5% higher under a 10% rule passes, shown as such
    same = _timed([0.525, 0.535, 0.515, 0.525, 0.546], [300, 298, 303, 301, 299], tmp_path, "c")
    row = compare(base, same, rules[:1], 0.01).rows[0]
    assert not row.regression and row.change == "+5.0%"


def test_without_the_flag_a_compare_says_nothing_was_measured(pytester: pytest.Pytester) -> None:
    """--ollama-cpu-compare (say from a CI ini file) in a run without --ollama-cpu: the
    baseline is still found (a bad one stops the run), and the summary says why nothing
    was compared instead of passing silently."""
    pytester.makepyfile(SWEEP_TEST)
    first = run_behaviour(pytester, Behaviour(), "--ollama-cpu-save=base")
    first.assert_outcomes(passed=1)
    plain = pytester.runpytest("-p", "no:cacheprovider", "--ollama-cpu-compare=base")
    plain.assert_outcomes(skipped=1)
    assert plain.ret == pytest.ExitCode.OK
    plain.stdout.fnmatch_lines(
        ["ollama-cpu: nothing was measured, so nothing was saved or compared"]
    )
    missing = pytester.runpytest("-p", "no:cacheprovider", "--ollama-cpu-compare=nosuch")
    assert missing.ret == pytest.ExitCode.USAGE_ERROR
    missing.stderr.fnmatch_lines(["ERROR: no saved run 'nosuch' in *"])
