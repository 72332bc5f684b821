"""A sweep as the run keeps it: the test that ran it, its verdict and thresholds.

Above both ``results`` (the measurements) and ``verdicts`` (what they mean), so
neither of those needs the other to travel: a pytest-xdist worker sends these to
the controller, and the report, the JSON file and the saved runs read them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from .limits import MachineLimits
from .results import Sweep
from .thresholds import Thresholds
from .verdicts import Verdict


@dataclass(frozen=True)
class RecordedSweep:
    """A sweep as the run keeps it: which test ran it, and its verdict."""

    nodeid: str
    sweep: Sweep
    verdict: Verdict | None = None
    thresholds: Thresholds | None = None
    #: the test's place in collection order, so results gathered from pytest-xdist
    #: workers are reported in the same order as a run without xdist
    order: int = 0

    def to_dict(self) -> dict[str, Any]:
        """Plain data, e.g. for a pytest-xdist worker to send to the controller."""
        return {
            "nodeid": self.nodeid,
            "sweep": self.sweep.to_dict(),
            "verdict": None if self.verdict is None else self.verdict.to_dict(),
            "thresholds": None if self.thresholds is None else self.thresholds.to_dict(),
            "order": self.order,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RecordedSweep:
        verdict, thresholds = data.get("verdict"), data.get("thresholds")
        return cls(
            data["nodeid"],
            Sweep.from_dict(data["sweep"]),
            None if verdict is None else Verdict.from_dict(verdict),
            None if thresholds is None else Thresholds.from_dict(thresholds),
            int(data.get("order", 0)),
        )


def by_machine(sweeps: Sequence[RecordedSweep]) -> dict[str, list[RecordedSweep]]:
    """Sweeps grouped by the machine and server that measured them, in first-seen order."""
    groups: dict[str, list[RecordedSweep]] = {}
    for recorded in sweeps:
        groups.setdefault(recorded.sweep.where, []).append(recorded)
    return groups


def merged_limits(recorded: Sequence[RecordedSweep]) -> MachineLimits | None:
    """The machine's limits at every thread count the sweeps probed (the first
    sweep's probe facts, with the counts of all)."""
    probed = [r.sweep.roofline.machine for r in recorded if r.sweep.roofline is not None]
    if not probed:
        return None
    counts = {t: limit for machine in probed for t, limit in machine.limits.items()}
    return replace(probed[0], limits=counts, cost_seconds=sum(m.cost_seconds for m in probed))
