"""The HTML report as a person sees it: drawn by a real headless browser (Debian's
``chromium``), every chart and table rendered, every test and thread count there,
nothing fetched from anywhere, and a screenshot a reviewer can open.

Skipped, with the reason, where no chromium is installed (``.ci/run`` installs it).
The screenshot is saved in the test's tmp_path (its path is printed: ``-s`` shows
it) and copied to ``$OLLAMA_CPU_SCREENSHOT_DIR`` when that is set.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from pytest_ollama_cpu import html_report
from pytest_ollama_cpu.records import RecordedSweep
from pytest_ollama_cpu.thresholds import Thresholds
from pytest_ollama_cpu.verdicts import evaluate

from .test_verdicts import disturbed, sample, sweep_of

pytest.importorskip("matplotlib", reason="the report's charts need the 'report' extra")

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no headless browser to draw the report: install Debian's chromium package "
    "(apt-get install chromium; .ci/run does) to run this test",
)

#: Seconds a browser run may take.
TIMEOUT = 60

TESTS = ("tests/test_speed.py::test_generation", "tests/test_speed.py::test_chat[<long>]")
THREADS = (1, 2)


def _report() -> str:
    """Two tests of two thread counts, CPU figures measured, a disturbed sample."""
    recorded = []
    for order, nodeid in enumerate(TESTS):
        data = {
            t: [sample(t, 40.0 * t**0.5 * (1 + 0.01 * i), util=0.95) for i in range(-3, 4)]
            for t in THREADS
        }
        data[2].append(disturbed(2, 30.0))
        sweep = sweep_of(data)
        thresholds = Thresholds(min_utilization=0.7, min_speedup=1.2)
        verdict = evaluate(sweep, thresholds)
        recorded.append(RecordedSweep(nodeid, sweep, verdict, thresholds, order))
    facts = html_report.PageFacts("2025-01-01 00:00 UTC", "0.0.0", "host x, model m")
    return html_report.render(recorded, facts)


def chromium(page: Path, workdir: Path, *command: str) -> tuple[str, str, Path]:
    """Run the browser on ``page`` with ``command`` (``--dump-dom``, ``--screenshot=``):
    (stdout, its log, its network log). Its own profile in ``workdir``: nothing of the
    user's is read, and two runs never share one."""
    assert CHROMIUM is not None
    net_log = workdir / "net-log.json"
    done = subprocess.run(
        [
            CHROMIUM,
            "--headless=new",
            "--no-sandbox",  # root (CI) cannot use the sandbox
            "--disable-gpu",
            "--hide-scrollbars",
            "--window-size=1280,2400",
            f"--user-data-dir={workdir / 'profile'}",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--enable-logging=stderr",
            "--v=1",
            f"--log-net-log={net_log}",
            *command,
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout, done.stderr, net_log


def page_requests(net_log: Path) -> list[str]:
    """The URLs the page asked the network for. Chromium asks for some of its own (the
    time, an account list) whatever the flags; the page's are those isolated to its
    file:// origin."""
    log: dict[str, Any] = json.loads(net_log.read_text())
    start = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    found = []
    for event in log["events"]:
        params = event.get("params") or {}
        if event["type"] != start or "url" not in params:
            continue
        owner = f"{params.get('network_isolation_key', '')} {params.get('site_for_cookies', '')}"
        if "file://" in owner and not params["url"].startswith("file:"):
            found.append(params["url"])
    return found


def refusals(browser_log: str) -> list[str]:
    """What the page's console said about loads it was refused or scripts that failed."""
    return [
        line
        for line in browser_log.splitlines()
        if ":CONSOLE" in line
        and ("Content Security Policy" in line or "Refused to" in line or "Uncaught" in line)
    ]


def test_the_browser_draws_every_chart_and_table_and_fetches_nothing(tmp_path: Path) -> None:
    source = _report()
    page = tmp_path / "report.html"
    page.write_text(source)
    dom, log, net_log = chromium(page, tmp_path / "dom", "--dump-dom")

    charts = len(re.findall(r'<svg class="chart"', source))
    assert charts == 4  # a scaling and a utilization chart per test
    assert f'data-charts="{charts}"' in dom
    # the page's own script counted each chart the browser laid out with a non-empty box
    assert f'data-charts-rendered="{charts}"' in dom
    assert dom.count("<table") == source.count("<table") > 0
    for nodeid in TESTS:
        assert html.escape(nodeid) in dom
    for number, section in enumerate(re.findall(r'<section class="sweep".*?</section>', dom, re.S)):
        rows = re.findall(r"<tr[^>]*><td>(\d+)</td>", section)
        assert rows[: len(THREADS)] == [str(t) for t in THREADS], f"sweep {number + 1}"

    assert page_requests(net_log) == []
    assert refusals(log) == []


def test_the_checks_would_see_a_fetch_and_a_refused_load(tmp_path: Path) -> None:
    # the test above passes only if its checks can fail: a page that fetches an image
    # is seen in the network log, and with the report's policy, refused in the console
    image = '<img src="http://127.0.0.1:9/chart.png">'
    open_page = tmp_path / "open.html"
    open_page.write_text(f"<!DOCTYPE html><html><body>{image}</body></html>")
    _, _, net_log = chromium(open_page, tmp_path / "open", "--dump-dom")
    assert page_requests(net_log) == ["http://127.0.0.1:9/chart.png"]

    guarded = tmp_path / "guarded.html"
    guarded.write_text(_report().replace("<h1>", f"{image}<h1>", 1))
    _, log, net_log = chromium(guarded, tmp_path / "guarded", "--dump-dom")
    assert page_requests(net_log) == []
    assert len(refusals(log)) == 1 and "127.0.0.1:9/chart.png" in refusals(log)[0]


def test_a_screenshot_of_the_report(tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    page.write_text(_report())
    shot = tmp_path / "report.png"
    chromium(page, tmp_path / "shot", f"--screenshot={shot}")
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    # a blank page of this size is a few kB; charts and tables are many more
    assert len(data) > 50_000, len(data)
    print(f"\nscreenshot of the report: {shot}")
    folder = os.environ.get("OLLAMA_CPU_SCREENSHOT_DIR")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        copy = Path(folder) / "report.png"
        shutil.copyfile(shot, copy)
        print(f"copied to {copy}")
