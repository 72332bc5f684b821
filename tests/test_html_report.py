"""The HTML report's content: which tests, thread counts, verdicts and charts it holds,
that it fetches nothing and escapes what runs put in it; the --ollama-cpu-html option
and the ``report`` command, against the fake server. No browser: see
test_html_browser.py for the page as a browser draws it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from pytest_ollama_cpu import cli, html_report
from pytest_ollama_cpu.comparison import compare
from pytest_ollama_cpu.records import RecordedSweep
from pytest_ollama_cpu.results import Sample
from pytest_ollama_cpu.rules import parse_rule
from pytest_ollama_cpu.saved_runs import SavedRun, saved_run_document
from pytest_ollama_cpu.thresholds import Thresholds
from pytest_ollama_cpu.verdicts import evaluate

from .conftest import run_fake
from .fake_ollama import FakeOllama
from .test_roofline import _noisy, roof_sweep
from .test_verdicts import disturbed, sample, sweep_of

pytest.importorskip("matplotlib", reason="the report's charts need the 'report' extra")

FACTS = html_report.PageFacts("2025-01-01 00:00 UTC", "0.0.0", "host x, model m")


def scaling(threads: int, centre: float, n: int = 6) -> list[Sample]:
    return [sample(threads, centre * (1 + 0.01 * (i - (n - 1) / 2))) for i in range(n)]


def two_tests() -> list[RecordedSweep]:
    """A sweep of 1, 2 and 4 threads against a roofline that passes its thresholds, and
    one of 1 and 2 threads with a disturbed sample whose speedup is shown too low."""
    good = roof_sweep({1: _noisy(1, 60.0), 2: _noisy(2, 110.0, seed=2), 4: _noisy(4, 150.0)})
    thresholds = Thresholds(min_utilization=0.7, min_speedup=1.5)
    slow = sweep_of({1: scaling(1, 40.0), 2: [*scaling(2, 41.0), disturbed(2, 12.0)]})
    slow_thresholds = Thresholds(min_speedup=1.6)
    return [
        RecordedSweep(
            "tests/test_perf.py::test_scales", good, evaluate(good, thresholds), thresholds
        ),
        RecordedSweep(
            "tests/test_perf.py::test_flat",
            slow,
            evaluate(slow, slow_thresholds),
            slow_thresholds,
            order=1,
        ),
    ]


def svgs(page: str) -> list[str]:
    return re.findall(r"<svg\b.*?</svg>", page, flags=re.S)


def section(page: str, anchor: str) -> str:
    found = re.search(rf'<section[^>]*id="{anchor}".*?</section>', page, flags=re.S)
    assert found is not None, anchor
    return found.group()


def test_every_test_thread_count_verdict_and_the_recommendation_are_on_the_page() -> None:
    recorded = two_tests()
    page = html_report.render(recorded, FACTS)
    session = section(page, "session")
    for index, r in enumerate(recorded, 1):
        assert f'<a href="#sweep-{index}">{r.nodeid}</a>' in session
        assert f'id="sweep-{index}"' in page
    # the rows of each sweep's table start with their thread count
    scales, flat = section(page, "sweep-1"), section(page, "sweep-2")
    assert re.findall(r"<tr[^>]*><td>(\d+)</td>", scales)[:3] == ["1", "2", "4"]
    assert re.findall(r"<tr[^>]*><td>(\d+)</td>", flat)[:2] == ["1", "2"]
    # verdicts: one passed, one failed, each check with its interval and threshold
    assert "passed" in session and "FAILED" in session
    assert "speedup" in flat and "99" in flat and "CI" in flat and "<td>1.6</td>" in flat
    assert 'class="text outcome fail">FAILED' in flat
    # the recommended num_thread: in the session table, and its row highlighted
    assert recorded[0].verdict is not None
    pick = recorded[0].verdict.recommendation
    assert pick is not None
    assert f"recommended num_thread {pick.threads}" in scales
    assert re.search(rf'<tr class="pick"><td>{pick.threads}</td>', scales)
    # the header: the machine, the server and the model
    assert "cpu" in page and "http://127.0.0.1:11434" in page and "host x, model m" in page


def test_every_chart_is_inline_svg_and_nothing_is_fetched() -> None:
    page = html_report.render(two_tests(), FACTS)
    charts = svgs(page)
    # a scaling and a utilization chart per sweep
    assert len(charts) == 4
    assert f'<body data-charts="{len(charts)}">' in page
    assert all('class="chart"' in chart for chart in charts)
    assert "<img" not in page and "<link" not in page and "@import" not in page
    assert not re.findall(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", page)
    assert "url(http" not in page
    assert html_report.GENERATOR_META in page
    assert "Content-Security-Policy" in page and "default-src 'none'" in page
    # charts never share an element id: a page's ids are unique
    ids = re.findall(r'\bid="([^"]+)"', page)
    assert len(ids) == len(set(ids))


def test_the_same_run_draws_the_same_page() -> None:
    recorded = two_tests()
    assert html_report.render(recorded, FACTS) == html_report.render(recorded, FACTS)


def test_disturbed_samples_are_marked() -> None:
    page = html_report.render(two_tests(), FACTS)
    scales, flat = section(page, "sweep-1"), section(page, "sweep-2")
    # drawn as vermillion crosses, which nothing else in a scaling chart is
    assert "#d55e00" in svgs(flat)[0]
    assert "#d55e00" not in svgs(scales)[0]
    # counted in the table's 'aside' column, and said under it
    assert re.search(r"<tr><td>2</td><td>2</td><td>6</td><td>1</td>", flat)
    assert "disturbed: 1 of 13 samples" in flat


def test_the_page_is_escaped() -> None:
    [first, second] = two_tests()
    nasty = replace(first, nodeid='tests/t.py::test_x[<script>alert("x")</script>]')
    model = replace(second.sweep.model, name="m<b>&")
    other = replace(second, sweep=replace(second.sweep, model=model))
    page = html_report.render([nasty, other], FACTS)
    assert "<script>alert" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert "m&lt;b&gt;&amp;" in page and "m<b>" not in page
    # the page's one script is its own
    assert page.count("<script>") == 1


def test_a_comparison_shows_each_row_and_a_forest_plot_with_regressions_marked() -> None:
    [before] = [r for r in two_tests() if r.nodeid.endswith("test_scales")]
    slower = roof_sweep({1: _noisy(1, 60.0), 2: _noisy(2, 80.0, seed=2), 4: _noisy(4, 150.0)})
    now = replace(before, sweep=slower, verdict=evaluate(slower, Thresholds()))
    commit: dict[str, object] = {"id": "abc", "dirty": False}
    old = SavedRun(Path("0001_base.json"), saved_run_document([before], {}, commit))
    new = SavedRun(None, saved_run_document([now], {}, commit))
    comparison = compare(old, new, [parse_rule("tokens_per_second:5%")], 0.01)
    assert [row.threads for row in comparison.regressions] == [2]
    page = html_report.render([now], FACTS, comparison)
    part = section(page, "comparison")
    assert "1 regression" in part
    assert len(svgs(part)) == 1  # the forest plot
    assert "#d55e00" in svgs(part)[0]  # a regression, and the rule's line
    rows = re.findall(
        r'<tr( class="regression")?><td class="text">test_scales</td><td>(\d)</td>', part
    )
    assert rows == [("", "1"), (' class="regression"', "2"), ("", "4")]
    assert "REGRESSION (&gt; 5% worse)" in part


def test_a_history_has_a_label_and_a_value_per_run() -> None:
    runs = []
    for centre in (60.0, 58.0, 61.0):
        sweep = sweep_of({1: scaling(1, centre), 2: scaling(2, centre * 1.5)})
        runs.append((RecordedSweep("tests/t.py::test_a", sweep),))
    labels = ("0001_a\nabc\n2025-01-01", "0002_b\nabd\n2025-01-02", "0003_c\nabe\n2025-01-03")
    history = html_report.History(labels, tuple(runs))
    page = html_report.render(list(runs[-1]), FACTS, history=history)
    part = section(page, "history")
    assert len(svgs(part)) == 1
    for label in labels:
        assert label.replace("\n", " ") in part
    # the table under the chart: a row per thread count, a median per run
    assert re.search(
        r'<td class="text">tokens/s</td><td>1</td><td>60.0</td><td>58.0</td><td>61.0</td>', part
    )


def test_matplotlib_is_loaded_only_to_draw_a_page() -> None:
    code = (
        "import sys, pytest_ollama_cpu.plugin, pytest_ollama_cpu.cli\n"
        "assert 'matplotlib' not in sys.modules, 'imported at start-up'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# -- --ollama-cpu-html in a run ----------------------------------------------------------

SUITE = """
import pytest

@pytest.mark.threads(1, 2, rounds=2, min_utilization=0.01)
def test_a(ollama_cpu):
    ollama_cpu.generate("prompt a", num_predict=8)

@pytest.mark.threads(1, 3, rounds=2)
def test_b(ollama_cpu):
    ollama_cpu.generate("prompt b", num_predict=8)
"""


def test_the_report_is_written_at_the_end_and_named_in_the_summary(
    pytester: pytest.Pytester, fake_ollama: FakeOllama
) -> None:
    pytester.makepyfile(SUITE)
    result = run_fake(pytester, fake_ollama, "--ollama-cpu-html=report.html")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["ollama-cpu: report written to report.html (* kB, drawn in *s)"])
    page = (pytester.path / "report.html").read_text()
    assert "::test_a</a>" in page and "::test_b</a>" in page
    # the fake's requests are too short for CPU figures: a scaling chart each, and no
    # utilization chart
    assert len(svgs(page)) == 2 and '<body data-charts="2">' in page
    # an earlier report is replaced
    again = run_fake(pytester, fake_ollama, "--ollama-cpu-html=report.html", "-k", "test_a")
    again.assert_outcomes(passed=1, deselected=1)
    assert "::test_b" not in (pytester.path / "report.html").read_text()
    assert [p.name for p in pytester.path.iterdir() if p.name.startswith(".report")] == []


def test_under_xdist_the_controller_alone_writes_the_report(
    pytester: pytest.Pytester, fake_ollama: FakeOllama
) -> None:
    pytest.importorskip("xdist")
    pytester.makepyfile(SUITE)
    result = run_fake(
        pytester, fake_ollama, "--ollama-cpu-html=report.html", "-n", "2", in_subprocess=True
    )
    result.assert_outcomes(passed=2)
    assert result.stdout.str().count("ollama-cpu: report written to") == 1
    page = (pytester.path / "report.html").read_text()
    assert "::test_a" in page and "::test_b" in page
    assert [p.name for p in pytester.path.iterdir() if p.name.startswith(".report")] == []


def test_a_file_that_is_not_a_report_is_never_overwritten(
    pytester: pytest.Pytester, fake_ollama: FakeOllama
) -> None:
    pytester.makepyfile(SUITE)
    mine = pytester.path / "notes.html"
    mine.write_text("<html>my notes</html>")
    result = run_fake(pytester, fake_ollama, f"--ollama-cpu-html={mine}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [f"ERROR: {mine} already exists and is not a pytest-ollama-cpu HTML report; *"]
    )
    assert mine.read_text() == "<html>my notes</html>"
    assert fake_ollama.behaviour.requests == []  # stopped before measuring


def test_a_folder_is_refused(pytester: pytest.Pytester, fake_ollama: FakeOllama) -> None:
    pytester.makepyfile(SUITE)
    pytester.mkdir("out")
    result = run_fake(pytester, fake_ollama, "--ollama-cpu-html=out")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --ollama-cpu-html: 'out' * it is a folder; give a file*"])


def test_without_matplotlib_the_run_stops_saying_what_to_install(
    pytester: pytest.Pytester, fake_ollama: FakeOllama, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(SUITE)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    result = run_fake(pytester, fake_ollama, "--ollama-cpu-html=report.html")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --ollama-cpu-html draws its charts with matplotlib*"])
    assert "pip install 'pytest-ollama-cpu[report]'" in result.stderr.str()
    assert not (pytester.path / "report.html").exists()
    # a run that measures nothing does not need it
    pytester.runpytest("--ollama-cpu-html=report.html").assert_outcomes(skipped=2)


# -- pytest-ollama-cpu report -------------------------------------------------------------


def saved_runs(pytester: pytest.Pytester, fake: FakeOllama, names: list[str]) -> Path:
    pytester.makepyfile(SUITE)
    storage = pytester.path / "runs"
    for name in names:
        run_fake(pytester, fake, f"--ollama-cpu-save={name}", f"--ollama-cpu-storage={storage}")
    return storage


def test_the_report_command_draws_a_saved_run(
    pytester: pytest.Pytester, fake_ollama: FakeOllama, capsys: pytest.CaptureFixture[str]
) -> None:
    storage = saved_runs(pytester, fake_ollama, ["first"])
    capsys.readouterr()
    out = pytester.path / "one.html"
    status = cli.main(["report", "first", "-o", str(out), "--storage", str(storage)])
    assert status == 0, capsys.readouterr().err
    assert capsys.readouterr().out.startswith(f"pytest-ollama-cpu report: {out} (")
    page = out.read_text()
    assert 'id="history"' not in page
    assert "::test_a" in page and "::test_b" in page
    assert "thresholds are not kept in saved runs" in page
    assert "recommended num_thread" in page
    assert len(svgs(page)) == 2


def test_the_report_command_draws_the_history_of_three_runs(
    pytester: pytest.Pytester, fake_ollama: FakeOllama, capsys: pytest.CaptureFixture[str]
) -> None:
    storage = saved_runs(pytester, fake_ollama, ["one", "two", "three"])
    out = pytester.path / "history.html"
    status = cli.main(["report", "1", "2", "3", "-o", str(out), "--storage", str(storage)])
    assert status == 0, capsys.readouterr().err
    part = section(out.read_text(), "history")
    # each run named in the table, with its commit and date above it
    for name in ("0001_one", "0002_two", "0003_three"):
        assert f"<th>{name}</th>" in part
        assert re.search(rf"{name} (\w+\+? )?\d{{4}}-\d\d-\d\d \d\d:\d\d", part)
    # a chart per test, each with a value per run and thread count
    assert len(svgs(part)) == 2
    assert len(re.findall(r"tokens/s</td><td>\d</td>(?:<td>[\d.]+</td>){3}", part)) == 4


def test_a_saved_run_that_cannot_be_read_back_is_named(
    pytester: pytest.Pytester, fake_ollama: FakeOllama, capsys: pytest.CaptureFixture[str]
) -> None:
    storage = saved_runs(pytester, fake_ollama, ["one"])
    [saved] = storage.glob("*/0001_one.json")
    document = json.loads(saved.read_text())
    entry = document["benchmarks"][0]
    del entry["extra_info"]["ollama_cpu"]["samples"][0]["timings"]
    saved.write_text(json.dumps(document))
    out = pytester.path / "x.html"
    assert cli.main(["report", "1", "-o", str(out), "--storage", str(storage)]) == 2
    error = capsys.readouterr().err
    assert f"{saved}: {entry['fullname']}: cannot be read back" in error
    assert "damaged or was edited by hand" in error and "Traceback" not in error
    assert not out.exists()


def test_a_file_put_at_the_path_during_the_run_is_left_and_the_run_fails(
    pytester: pytest.Pytester, fake_ollama: FakeOllama
) -> None:
    # checked at start-up, and again when written: a file that appeared meanwhile is kept
    pytester.makepyfile(
        SUITE
        + """
def test_someone_writes_there():
    with open("report.html", "w") as handle:
        handle.write("theirs")
"""
    )
    result = run_fake(pytester, fake_ollama, "--ollama-cpu-html=report.html")
    result.assert_outcomes(passed=3)
    assert result.ret == pytest.ExitCode.INTERNAL_ERROR
    result.stdout.fnmatch_lines(
        ["ollama-cpu: ERROR: report.html already exists and is not a pytest-ollama-cpu HTML*"]
    )
    assert (pytester.path / "report.html").read_text() == "theirs"
    assert "report written" not in result.stdout.str()
