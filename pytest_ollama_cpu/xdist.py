"""pytest-xdist glue: results travel from the workers to the controller as plain data.

Workers measure; each test's sweeps travel, as JSON-able data, on the test's
last report (teardown), so a worker that dies later (a crash, the OOM killer)
loses none of the sweeps it finished. What is left at the end goes in
``workeroutput``. The controller alone writes the JSON file, saves, compares
and prints the summary, once, in collection order, as a run without xdist
would. xdist is never imported here: these hooks are registered only when its
plugin is active.
"""

from __future__ import annotations

import json
from collections.abc import Generator
from typing import Any

import pytest

from .records import RecordedSweep
from .session import RunState

WORKER_OUTPUT_KEY = "pytest_ollama_cpu"

#: ``--dist loadgroup`` keeps every test of this group in one worker, one after another.
XDIST_GROUP = "ollama-cpu"


def test_id(nodeid: str) -> str:
    """The test's id without the ``@group`` that ``--dist loadgroup`` appends: ours, or
    several joined by ``_`` (sorted) when the test has groups of its own too."""
    head, at, suffix = nodeid.rpartition("@")
    if at and "]" not in suffix and XDIST_GROUP in suffix.split("_"):
        return head
    return nodeid


test_id.__test__ = False  # type: ignore[attr-defined]  # not a test


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
