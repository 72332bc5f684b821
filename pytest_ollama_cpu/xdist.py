"""pytest-xdist glue: results travel from the workers to the controller as plain data.

Workers measure; each test's sweeps travel, as JSON-able data, on the test's
last report (teardown), so a worker that dies later (a crash, the OOM killer)
loses none of the sweeps it finished. What is left at the end goes in
``workeroutput``. The controller alone writes the JSON file, saves, compares
and prints the summary, once, in collection order, as a run without xdist
would. xdist is never imported here: these hooks are registered only when its
plugin is active.

Progress (``progress.py``) cannot wait for a report: a sweep is one test of
minutes. Each worker gets a channel of its own back to the controller (an
execnet channel of the worker's gateway, handed over in ``workerinput``: execnet
carries channels inside data) and sends each event down it as it happens. It
needs no files, so it works for workers on other hosts (``--tx ssh=...``) as
for local ones. The controller shows what arrives at once, from execnet's
receiver thread: its main thread sits in xdist's event loop until the next
report, so waiting for that would show a sweep's progress only once it is
over. The lines are whole (``[gw0] ollama-cpu: ...``), and a lock that the
controller's own writing hooks hold too (``ProgressRelay``) keeps them out of
the middle of xdist's lines.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

import pytest

from .progress import Progress, ProgressDisplay

if TYPE_CHECKING:
    from .run import RunState

WORKER_OUTPUT_KEY = "pytest_ollama_cpu"

#: The ``workerinput`` key of the channel a worker sends its progress down.
PROGRESS_INPUT_KEY = "pytest_ollama_cpu_progress"

#: ``--dist loadgroup`` keeps every test of this group in one worker, one after another.
XDIST_GROUP = "ollama-cpu"


def ungrouped_nodeid(nodeid: str) -> str:
    """The test's id without the ``@group`` that ``--dist loadgroup`` appends: ours, or
    several joined by ``_`` (sorted) when the test has groups of its own too."""
    head, at, suffix = nodeid.rpartition("@")
    if at and "]" not in suffix and XDIST_GROUP in suffix.split("_"):
        return head
    return nodeid


def is_distributing(config: pytest.Config) -> bool:
    """This process is an xdist controller that hands tests to workers."""
    if is_worker(config) or not config.pluginmanager.hasplugin("xdist"):
        return False
    return bool(config.getoption("dist", "no") != "no" or config.getoption("tx", None))


def is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def carry_group_suffix(item: pytest.Item) -> bool:
    """Make ``--dist loadgroup`` see our group under pytest >= 9.2.

    pytest-xdist (3.8) tells the controller a test's group by rewriting
    ``item._nodeid`` to ``NODEID@group`` on the worker; pytest 9.2 keeps the id
    in a structured ``item._id`` and no longer reads ``_nodeid``, so the suffix
    is lost and the group split (pytest-xdist#1386). For our own tests only,
    copy the rewritten id into ``_id``, as the proposed fix (pytest-xdist#1388)
    does. A no-op where xdist's rewrite took effect or pytest's internals
    differ. Returns whether the id was changed.
    """
    rewritten = item.__dict__.get("_nodeid")
    if not isinstance(rewritten, str) or rewritten == item.nodeid:
        return False
    if XDIST_GROUP not in rewritten.rpartition("@")[2].split("_"):
        return False
    try:
        from _pytest.nodeid import NodeId
    except ImportError:  # an older pytest reads _nodeid itself
        return False
    if not isinstance(getattr(item, "_id", None), NodeId):
        return False
    item._id = NodeId.parse(rewritten)
    return item.nodeid == rewritten


def worker_output(state: RunState) -> dict[str, Any]:
    """What the worker has measured and not handed over yet."""
    sweeps, warnings = state.hand_over()
    output = {"sweeps": [r.to_dict() for r in sweeps], "warnings": warnings}
    # execnet carries only plain types: a round trip through JSON guarantees them
    plain: dict[str, Any] = json.loads(json.dumps(output))
    return plain


def take_worker_output(state: RunState, output: dict[str, Any] | None) -> None:
    if not output:
        return
    from .records import RecordedSweep

    state.add(
        [RecordedSweep.from_dict(d) for d in output.get("sweeps", [])],
        list(output.get("warnings", [])),
    )


class XdistHooks:
    """Registered as a plugin only when pytest-xdist is active."""

    def __init__(self, state: RunState, config: pytest.Config) -> None:
        self.state = state
        self.config = config

    @pytest.hookimpl(trylast=True)  # after xdist's worker has rewritten the ids
    def pytest_collection_modifyitems(
        self, config: pytest.Config, items: list[pytest.Item]
    ) -> None:
        if is_worker(config) and config.getvalue("loadgroup"):
            for item in items:
                carry_group_suffix(item)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        report = yield
        if report.when == "teardown" and is_worker(self.config):
            output = worker_output(self.state)
            if output["sweeps"] or output["warnings"]:
                # pytest-xdist sends a report's attributes along with it
                report.__dict__[WORKER_OUTPUT_KEY] = output
        return report

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if is_distributing(self.config):
            take_worker_output(self.state, report.__dict__.get(WORKER_OUTPUT_KEY))

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        take_worker_output(self.state, getattr(node, "workeroutput", {}).get(WORKER_OUTPUT_KEY))


def worker_progress(config: pytest.Config) -> Callable[[Progress], None] | None:
    """How a worker tells the controller where its sweeps are; None where the
    controller shows no progress (``-q``)."""
    channel = getattr(config, "workerinput", {}).get(PROGRESS_INPUT_KEY)
    if channel is None:
        return None

    def send(event: Progress) -> None:
        # OSError: the controller has gone, or dropped the channel; nobody to tell
        with contextlib.suppress(OSError):
            channel.send(event.to_dict())

    return send


Wrapped = Generator[None, object, object]


class ProgressRelay:
    """On an xdist controller that shows progress: a channel per worker, shown as lines.

    ``display`` makes the controller's display when the first worker starts (the
    terminal reporter is registered by then). The lines are written from
    execnet's receiver threads; every hook through which the controller writes
    while tests run holds ``_writing`` too, so a progress line never lands in the
    middle of one of xdist's (``[gw0] [ 50%] PASSED ...``, the dots).
    """

    def __init__(self, display: Callable[[], ProgressDisplay | None]) -> None:
        self._make_display = display
        self._display: ProgressDisplay | None = None
        self._writing = threading.RLock()

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:
        if self._display is None:
            self._display = self._make_display()
        display = self._display
        if display is None or display.silent:
            return
        worker = str(node.gateway.id)
        channel = node.gateway.newchannel()

        def show(data: Any) -> None:
            # an exception here would land in execnet's receiver thread
            try:
                event = Progress.from_dict(data)
            except (ValueError, TypeError, KeyError, AttributeError):
                return
            with self._writing:
                display.show(event, worker=worker)

        channel.setcallback(show)
        node.workerinput[PROGRESS_INPUT_KEY] = channel

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_logstart(self) -> Wrapped:
        with self._writing:
            return (yield)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_logreport(self) -> Wrapped:
        with self._writing:
            return (yield)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_logfinish(self) -> Wrapped:
        with self._writing:
            return (yield)

    @pytest.hookimpl(wrapper=True)
    def pytest_collectreport(self) -> Wrapped:
        with self._writing:
            return (yield)

    @pytest.hookimpl(wrapper=True, optionalhook=True)
    def pytest_testnodedown(self) -> Wrapped:
        with self._writing:
            return (yield)

    @pytest.hookimpl(wrapper=True, optionalhook=True)
    def pytest_testnodeready(self) -> Wrapped:
        with self._writing:
            return (yield)

    @pytest.hookimpl(wrapper=True, optionalhook=True)
    def pytest_xdist_node_collection_finished(self) -> Wrapped:
        with self._writing:
            return (yield)
