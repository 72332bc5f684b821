"""What a sweep measures, one quantity at a time: the table everything else reads.

A quantity is one thing: its name (in rules, files and the JSON), its column,
its words, its unit, which way is better, how it is read from one sample, and
whether two runs are compared by ratio (rates, times) or by difference
(utilizations). Comparison rules, the report's columns, the saved files and the
verdicts look a quantity up here; a new quantity is a line in ``QUANTITIES``.

Samples are read through ``read`` from the dict a ``Sample`` saves
(``Sample.to_dict``), so a saved run and a live one are read the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: the phases of one request: prompt processing, then token generation
PREFILL = "prefill"
GENERATION = "generation"

#: The fewest generated tokens a rate is taken from: a reply that stops sooner
#: (the model ended its answer, a stop sequence matched) times a token or two,
#: milliseconds, and its "rate" says nothing about generation speed.
MIN_RATE_TOKENS = 8


@dataclass(frozen=True)
class Quantity:
    name: str
    #: a table column's header
    column: str
    #: in a sentence: "the generation rate"
    words: str
    unit: str
    higher_is_better: bool
    #: compared between runs as a ratio (True) or a difference (False)
    relative: bool
    digits: int
    phase: str | None = None
    aliases: tuple[str, ...] = ()

    def read(self, sample: Mapping[str, Any]) -> float | None:
        """This quantity in one saved sample; None where it was not measured."""
        value = sample.get(self.name)
        return None if value is None else float(value)

    def of(self, sample: Any) -> float | None:
        """This quantity of a live ``Sample``: the property its saved key is named after."""
        value = getattr(sample, self.name)
        return None if value is None else float(value)

    def format(self, value: float | None) -> str:
        return "-" if value is None else f"{value:.{self.digits}f}"

    @property
    def worse(self) -> str:
        """Which way is worse, in words: for messages and the comparison table."""
        return "lower" if self.higher_is_better else "higher"


GENERATION_RATE = Quantity(
    "tokens_per_second",
    "tokens/s",
    "generation rate",
    "tokens/s",
    higher_is_better=True,
    relative=True,
    digits=1,
    phase=GENERATION,
    aliases=("tps", "throughput", "generation"),
)
PREFILL_RATE = Quantity(
    "prompt_tokens_per_second",
    "prefill tok/s",
    "prefill rate",
    "tokens/s",
    higher_is_better=True,
    relative=True,
    digits=1,
    phase=PREFILL,
    aliases=("prefill", "pp"),
)
TIME_TO_FIRST_TOKEN = Quantity(
    "time_to_first_token",
    "TTFT s",
    "time to first token",
    "s",
    higher_is_better=False,
    relative=True,
    digits=3,
    phase=PREFILL,
    aliases=("ttft",),
)
REQUEST_SECONDS = Quantity(
    "request_seconds",
    "request s",
    "request time",
    "s",
    higher_is_better=False,
    relative=True,
    digits=3,
    aliases=("total", "request"),
)
THREAD_UTILIZATION = Quantity(
    "thread_utilization",
    "thread util",
    "thread utilization",
    "",
    higher_is_better=True,
    relative=False,
    digits=3,
    aliases=("utilization",),
)
PREFILL_UTILIZATION = Quantity(
    "prefill_thread_utilization",
    "pp util",
    "thread utilization while the prompt is processed",
    "",
    higher_is_better=True,
    relative=False,
    digits=3,
    phase=PREFILL,
    aliases=("prefill_utilization",),
)
GENERATION_UTILIZATION = Quantity(
    "generation_thread_utilization",
    "tg util",
    "thread utilization while tokens are generated",
    "",
    higher_is_better=True,
    relative=False,
    digits=3,
    phase=GENERATION,
    aliases=("generation_utilization",),
)
MACHINE_UTILIZATION = Quantity(
    "machine_utilization",
    "machine util",
    "machine utilization",
    "",
    higher_is_better=True,
    relative=False,
    digits=3,
)
GENERATION_ROOFLINE = Quantity(
    "generation_roofline",
    "tg roof",
    "share of the memory limit that generation reaches",
    "",
    higher_is_better=True,
    relative=False,
    digits=3,
    phase=GENERATION,
    aliases=("roofline", "tg_roofline"),
)
PREFILL_ROOFLINE = Quantity(
    "prefill_roofline",
    "pp roof",
    "share of the compute limit that prefill reaches",
    "",
    higher_is_better=True,
    relative=False,
    digits=3,
    phase=PREFILL,
    aliases=("pp_roofline",),
)

QUANTITIES: dict[str, Quantity] = {
    q.name: q
    for q in (
        GENERATION_RATE,
        PREFILL_RATE,
        TIME_TO_FIRST_TOKEN,
        REQUEST_SECONDS,
        THREAD_UTILIZATION,
        PREFILL_UTILIZATION,
        GENERATION_UTILIZATION,
        MACHINE_UTILIZATION,
        GENERATION_ROOFLINE,
        PREFILL_ROOFLINE,
    )
}
_BY_ALIAS = {alias: q for q in QUANTITIES.values() for alias in q.aliases}


def lookup(name: str) -> Quantity | None:
    """The quantity called ``name`` or one of its aliases (case-insensitive)."""
    key = name.strip().lower()
    return QUANTITIES.get(key) or _BY_ALIAS.get(key)


def names() -> str:
    """Every name a rule may use, for messages."""
    return ", ".join(
        f"{q.name} ({', '.join(q.aliases)})" if q.aliases else q.name for q in QUANTITIES.values()
    )
