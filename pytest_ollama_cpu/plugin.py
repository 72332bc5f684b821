"""pytest entry point: hooks and the fixture, each a few lines over the modules.

Data flows one way: options and marker -> sweep against Ollama (sampler) ->
samples and summaries (results, statistics) -> verdicts -> report and files
(report, outputs). A run without ``--ollama-cpu`` (and without any of the plugin's
file options) reads its options and markers only: the modules that talk to Ollama
and do the statistics (ollama, httpx, numpy, scipy, pytest-benchmark) are imported
when the plugin has work to do.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Generator, Iterable, Iterator
from typing import TYPE_CHECKING

import pytest

from .markers import MARKER_HELP, MARKER_NAME, MarkerError, ThreadsMarker, parse_marker
from .options import ENABLE, Settings, add_options, merge_thresholds, resolve_settings
from .progress import Progress, ProgressDisplay
from .xdist import (
    WORKER_OUTPUT_KEY,
    XDIST_GROUP,
    is_distributing,
    is_worker,
    ungrouped_nodeid,
    worker_progress,
)

if TYPE_CHECKING:  # imported where the plugin has work (see pytest_configure)
    from .fixture import OllamaCpu
    from .outputs import Outputs
    from .results import MachineBusy
    from .run import RunState

FIXTURE_NAME = "ollama_cpu"
SETTINGS_KEY = pytest.StashKey[Settings]()
STATE_KEY: pytest.StashKey[RunState] = pytest.StashKey()
MARKER_KEY = pytest.StashKey[ThreadsMarker]()
FIXTURE_KEY: pytest.StashKey[OllamaCpu] = pytest.StashKey()
OUTPUTS_KEY: pytest.StashKey[Outputs] = pytest.StashKey()
ORDER_KEY = pytest.StashKey[int]()
PROGRESS_KEY: pytest.StashKey[LiveProgress] = pytest.StashKey()


class OllamaCpuWarning(pytest.PytestWarning):
    """Something in a test's set-up that makes its measurement mean less than it seems."""


SKIP_REASON = (
    f"ollama-cpu performance test: run pytest with {ENABLE.flag} to measure it "
    "(needs an Ollama server)"
)


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER_HELP)
    settings = resolve_settings(config.getoption, config.getini, rootpath=config.rootpath)
    config.stash[SETTINGS_KEY] = settings
    if not settings.has_work:
        return  # its tests are skipped; nothing is measured, written or compared
    from .outputs import Outputs
    from .run import RunState
    from .xdist import ProgressRelay, XdistHooks

    outputs = Outputs(settings)
    if not _is_xdist_worker(config):
        outputs.prepare()
    else:
        outputs.load_baseline_quietly()  # the controller reports a bad baseline
    state = RunState(settings, baseline=outputs.baseline)
    config.stash[STATE_KEY] = state
    config.stash[OUTPUTS_KEY] = outputs
    progress = LiveProgress(config)
    config.stash[PROGRESS_KEY] = progress
    config.pluginmanager.register(progress, "ollama_cpu_progress")
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(XdistHooks(state, config), "ollama_cpu_xdist")
        if is_distributing(config) and settings.enabled:
            relay = ProgressRelay(progress.display)
            config.pluginmanager.register(relay, "ollama_cpu_progress_relay")


_is_xdist_worker = is_worker


class LiveProgress:
    """This process's progress display (``progress.py``) and what keeps it out of pytest's way.

    The display is made when first needed: pytest registers its terminal
    reporter after this plugin's ``pytest_configure``. Sweeps run inside the
    test, where pytest captures output, so the display writes with capture
    suspended, as pytest's live logging does; its line is ended before pytest
    writes a test's outcome.
    """

    def __init__(self, config: pytest.Config) -> None:
        self._config = config
        self._display: ProgressDisplay | None = None
        self._made = False

    def display(self) -> ProgressDisplay | None:
        """The display on pytest's terminal; None without one (``-p no:terminal``)."""
        if not self._made:
            self._made = True
            reporter = self._config.pluginmanager.get_plugin("terminalreporter")
            if reporter is not None:
                writer = self._config.get_terminal_writer()
                self._display = ProgressDisplay(
                    writer,
                    verbosity=int(self._config.getoption("verbose")),
                    # a controller's workers measure side by side: a line each, always
                    tty=bool(reporter.isatty) and not is_distributing(self._config),
                    width=lambda: writer.fullwidth,
                    column=lambda: writer.width_of_current_line,
                )
        return self._display

    def callback(self) -> Callable[[Progress], None] | None:
        """What a sweep tells its progress to: the controller, from an xdist worker;
        else the terminal; None where nobody would see it."""
        if _is_xdist_worker(self._config):
            return worker_progress(self._config)
        display = self.display()
        if display is None or display.silent:
            return None
        capture = self._config.pluginmanager.get_plugin("capturemanager")

        def show(event: Progress) -> None:
            with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
                display.show(event)

        return show

    def _end_line(self) -> None:
        if self._display is not None:
            self._display.end_line()

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_logreport(self) -> None:
        self._end_line()

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self) -> None:
        self._end_line()  # a run stopped mid-sweep (Ctrl-C, -x) reports no outcome


def pytest_report_header(config: pytest.Config) -> list[str] | None:
    state = config.stash.get(STATE_KEY, None)
    if state is None or not state.settings.enabled:
        return None
    from .report import run_header

    distributing = is_distributing(config)  # the workers measure, not this process
    return run_header(state.settings, None if distributing else state.start_facts())


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    """A bad threads marker is a collection error of its module or class, as an import
    error is: every one of them is listed, the session stops before anything runs, and
    ``--continue-on-collection-errors`` and pytest-xdist treat it as they treat those."""
    report = yield
    if report.passed:
        problems = _bad_markers(node for node in report.result if isinstance(node, pytest.Item))
        if problems:
            report.outcome = "failed"
            report.longrepr = "\n".join(problems)
            report.result = []
    return report


def _bad_markers(items: Iterable[pytest.Item]) -> list[str]:
    """What is wrong with each threads marker that cannot be used, once per marker: a
    module's or class's marker is named by the module or class."""
    problems: dict[tuple[str, int], str] = {}
    for item in items:
        node, mark = next(item.iter_markers_with_node(MARKER_NAME), (None, None))
        if node is None or mark is None:
            continue
        try:
            parse_marker(mark.args, mark.kwargs)
        except MarkerError as exc:
            call = ", ".join(
                [*map(repr, mark.args), *(f"{k}={v!r}" for k, v in mark.kwargs.items())]
            )
            problems.setdefault(
                (node.nodeid, id(mark)),
                f"{node.nodeid}: bad @pytest.mark.{MARKER_NAME}({call}): {exc}",
            )
    return list(problems.values())


@pytest.hookimpl(tryfirst=True)  # before xdist reads the xdist_group marks we add
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    enabled = config.stash[SETTINGS_KEY].enabled
    skip = pytest.mark.skip(reason=SKIP_REASON)
    xdist_active = config.pluginmanager.hasplugin("xdist")
    # markers are checked as their modules are collected; this catches any a hook added since
    problems = _bad_markers(items)
    if problems:
        raise pytest.UsageError("\n".join(problems))
    for index, item in enumerate(items):
        item.stash[ORDER_KEY] = index
        marker = item.get_closest_marker(MARKER_NAME)
        if marker is not None:
            item.stash[MARKER_KEY] = parse_marker(marker.args, marker.kwargs)
        uses_fixture = _uses_fixture(item)
        # a marker alone measures nothing: such a test runs as it is, and is warned about
        # when it runs (where warnings filters apply as users expect)
        if uses_fixture and not enabled:
            item.add_marker(skip)
        elif uses_fixture and xdist_active:
            item.add_marker(pytest.mark.xdist_group(XDIST_GROUP))


def _uses_fixture(item: pytest.Item) -> bool:
    return FIXTURE_NAME in getattr(item, "fixturenames", ())


@pytest.fixture
def ollama_cpu(request: pytest.FixtureRequest) -> Iterator[OllamaCpu]:
    """Sweeps a workload across the test's ``@pytest.mark.threads(...)`` counts."""
    if not request.config.stash[SETTINGS_KEY].enabled:
        pytest.skip(SKIP_REASON)
    from .fixture import OllamaCpu

    state = request.config.stash[STATE_KEY]
    settings = state.settings
    marker = request.node.stash.get(MARKER_KEY, None) or ThreadsMarker(settings.threads)
    rounds = marker.rounds or settings.rounds
    fixture = OllamaCpu(
        state,
        ungrouped_nodeid(request.node.nodeid),
        marker.counts,
        rounds,
        settings.rounds_limit(rounds, marker.max_rounds),
        merge_thresholds(settings.thresholds, marker.thresholds, marker.alpha),
        request.node.stash.get(ORDER_KEY, 0),
        request.config.stash[PROGRESS_KEY].callback(),
    )
    request.node.stash[FIXTURE_KEY] = fixture
    yield fixture


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    """Apply the verdicts of the test's sweeps once its body has passed."""
    if not _uses_fixture(item) and any(m.name == MARKER_NAME for m in item.own_markers):
        warning = OllamaCpuWarning(
            f"@pytest.mark.{MARKER_NAME}(...) on a test that does not use the "
            f"{FIXTURE_NAME} fixture measures nothing: add {FIXTURE_NAME} to the "
            "test's arguments, or drop the marker"
        )
        try:
            item.warn(warning)
        except OllamaCpuWarning:  # -W error: the message, not this hook's traceback
            raise pytest.fail.Exception(f"OllamaCpuWarning: {warning}", pytrace=False) from None
    if not item.config.stash[SETTINGS_KEY].enabled:
        return (yield)
    from .results import MachineBusy
    from .verdicts import decide_test

    busy: MachineBusy | None = None
    try:
        result = yield
    except MachineBusy as exc:
        # the body asked for a figure the machine's load left unmeasured: no failure
        busy, result = exc, None
    fixture = item.stash.get(FIXTURE_KEY, None)
    if fixture is None and busy is not None:
        raise busy  # not a sweep of this test's: nothing to fold it into
    if fixture is None or (not fixture.verdicts and busy is None):
        return result
    state = item.config.stash[STATE_KEY]
    decided = decide_test(fixture.verdicts, state.settings.inconclusive, busy, fixture.sweeps)
    if decided.warning:
        state.warnings.append(f"{item.nodeid}: {decided.warning}")
    if decided.outcome == "fail":
        raise pytest.fail.Exception(decided.message, pytrace=False)
    if decided.outcome == "skip":
        raise pytest.skip.Exception(decided.message, _use_item_location=True)
    return result


def pytest_unconfigure(config: pytest.Config) -> None:
    state = config.stash.get(STATE_KEY, None)
    if state is not None:
        state.close()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    state = terminalreporter.config.stash.get(STATE_KEY, None)
    if state is None:
        return
    outputs = terminalreporter.config.stash[OUTPUTS_KEY]
    for line in outputs.terminal_lines(state.ordered(), state.warnings):
        if line.heading:
            terminalreporter.write_sep("=", line.text)
        elif line.colour is None:
            terminalreporter.write_line(line.text)
        else:
            terminalreporter.write_line(line.text, **{line.colour: True})


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    config = session.config
    state = config.stash.get(STATE_KEY, None)
    outputs = config.stash.get(OUTPUTS_KEY, None)
    if state is None or outputs is None:
        return
    if _is_xdist_worker(config):
        from .xdist import worker_output

        config.workeroutput[WORKER_OUTPUT_KEY] = worker_output(state)  # type: ignore[attr-defined]
        return
    status = outputs.finish(state.ordered(), _settings_dict(state))
    if status is not None and session.exitstatus in (pytest.ExitCode.OK, 0):
        session.exitstatus = status


def _settings_dict(state: RunState) -> dict[str, object]:
    s = state.settings
    return {
        "host": s.host,
        "model": s.model,
        "rounds": s.rounds,
        "num_predict": s.num_predict,
        "threads": list(s.threads),
        "timeout": s.timeout,
        "max_rounds": s.max_rounds,
        "thresholds": s.thresholds.to_dict(),
        "inconclusive": s.inconclusive,
    }
