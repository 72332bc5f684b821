"""pytest entry point: hooks and the fixture, each a few lines over the modules.

Data flows one way: options and marker -> sweep against Ollama (sampler) ->
samples and summaries (results, statistics) -> report and JSON (report, storage).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from . import __version__
from .client import OllamaCpuError
from .fixture import OllamaCpu
from .markers import MARKER_HELP, MARKER_NAME, MarkerError, ThreadsMarker, parse_marker
from .options import ENABLE, add_options, resolve_settings
from .report import describe_model, header_lines, summary_lines
from .session import RunState
from .storage import StorageError, build_document, write_json_atomic
from .verdicts import merge_thresholds, test_outcome

FIXTURE_NAME = "ollama_cpu"
STATE_KEY = pytest.StashKey[RunState]()
MARKER_KEY = pytest.StashKey[ThreadsMarker]()
FIXTURE_KEY = pytest.StashKey[OllamaCpu]()

SKIP_REASON = (
    f"ollama-cpu performance test: run pytest with {ENABLE.flag} to measure it "
    "(needs an Ollama server)"
)


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER_HELP)
    settings = resolve_settings(config.getoption, config.getini, rootpath=config.rootpath)
    if settings.json_path is not None and not _is_xdist_worker(config):
        from .storage import check_writable

        try:
            check_writable(settings.json_path)
        except StorageError as exc:
            raise pytest.UsageError(str(exc)) from None
    config.stash[STATE_KEY] = RunState(settings)


def _is_xdist_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def pytest_report_header(config: pytest.Config) -> list[str] | None:
    state = config.stash.get(STATE_KEY, None)
    if state is None or not state.settings.enabled:
        return None
    try:
        connection = state.connect()
    except OllamaCpuError as exc:
        return header_lines(state.settings.describe(), None, None, f"NOT CONNECTED: {exc}")
    model = None
    if state.settings.model:
        try:
            model = describe_model(connection.client.model_facts(state.settings.model))
        except OllamaCpuError as exc:
            model = f"MODEL NOT AVAILABLE: {exc}"
    return header_lines(
        state.settings.describe(),
        connection.facts.version,
        connection.machine,
        connection.facts.utilization_note,
        model,
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    state = config.stash[STATE_KEY]
    skip = pytest.mark.skip(reason=SKIP_REASON)
    for item in items:
        marker = item.get_closest_marker(MARKER_NAME)
        if marker is not None:
            try:
                item.stash[MARKER_KEY] = parse_marker(marker.args, marker.kwargs)
            except MarkerError as exc:
                raise pytest.UsageError(
                    f"{item.nodeid}: bad @pytest.mark.{MARKER_NAME}(...): {exc}"
                ) from None
        uses_plugin = marker is not None or FIXTURE_NAME in getattr(item, "fixturenames", ())
        if uses_plugin and not state.settings.enabled:
            item.add_marker(skip)


@pytest.fixture
def ollama_cpu(request: pytest.FixtureRequest) -> Iterator[OllamaCpu]:
    """Sweeps a workload across the test's ``@pytest.mark.threads(...)`` counts."""
    state = request.config.stash[STATE_KEY]
    if not state.settings.enabled:
        pytest.skip(SKIP_REASON)
    settings = state.settings
    marker = request.node.stash.get(MARKER_KEY, None) or ThreadsMarker(settings.threads)
    rounds = marker.rounds or settings.rounds
    fixture = OllamaCpu(
        state,
        request.node.nodeid,
        marker.counts,
        rounds,
        settings.rounds_limit(rounds, marker.max_rounds),
        merge_thresholds(settings.thresholds, marker.thresholds, marker.alpha),
    )
    request.node.stash[FIXTURE_KEY] = fixture
    yield fixture


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    """Apply the verdicts of the test's sweeps once its body has passed."""
    result = yield
    fixture = item.stash.get(FIXTURE_KEY, None)
    if fixture is None or not fixture.verdicts:
        return result
    state = item.config.stash[STATE_KEY]
    decided = test_outcome(fixture.verdicts, state.settings.inconclusive)
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
    if state is None or not state.sweeps:
        return
    terminalreporter.write_sep("=", "ollama-cpu: thread sweeps")
    for line in summary_lines(state.sweeps):
        terminalreporter.write_line(line)
    for warning in state.warnings:
        terminalreporter.write_line(f"WARNING {warning}", yellow=True)
    if state.json_written is not None:
        terminalreporter.write_line(f"ollama-cpu: samples written to {state.json_written}")


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    config = session.config
    state = config.stash.get(STATE_KEY, None)
    if state is None or state.settings.json_path is None or _is_xdist_worker(config):
        return
    if not state.sweeps:
        return
    document = build_document(state.sweeps, __version__, _settings_dict(state))
    try:
        write_json_atomic(state.settings.json_path, document)
        state.json_written = state.settings.json_path
    except (StorageError, OSError) as exc:
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"ollama-cpu: could not write results: {exc}", red=True)
        session.exitstatus = pytest.ExitCode.INTERNAL_ERROR


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
