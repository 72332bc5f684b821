"""When a busy machine disturbs a sample, and how much retaking it may cost.

Other processes disturb a request only when they take CPU the server needed.
The server may run on the CPUs of its affinity mask, and can use at most
``min(threads, usable CPUs)`` of them (usable CPUs: the mask capped by its
cgroup quota). The rest is *spare*: load there costs the server nothing. So a
sample is disturbed when the cores other processes kept busy on the server's
CPUs exceed the spare by more than ``MARGIN_CORES``:

- 2 CPUs, 1 thread, a neighbour on one core: spare 1, other 1.0: not disturbed;
- 2 CPUs, 2 threads, the same neighbour: spare 0, other 1.0: disturbed by 1.0;
- 2 CPUs, a 1-CPU quota, 2 threads, the neighbour: spare 1: not disturbed (the
  busy CPU is one the quota would not let the server use anyway).

Pure functions over plain numbers: the sampler applies them, the report and
the verdicts read what it recorded.
"""

from __future__ import annotations

from dataclasses import dataclass

from .machine import cpus_text

#: Cores that other processes may take beyond the spare before a sample counts as
#: disturbed. Measured on the 2-core development machine: a quiet machine shows
#: 0.00-0.03 cores of "other" per request (pytest itself, the kernel); taking a
#: tenth of a core the threads need slows a synchronised runner by up to ~10%.
MARGIN_CORES = 0.1

#: Disturbed samples a thread count may set aside and take again, per sweep.
DEFAULT_RETAKES = 5

#: Seconds a thread count may spend, per sweep, waiting for its CPUs to be quiet.
DEFAULT_QUIET_WAIT = 10.0

#: Length of one look at the idle server's CPUs while waiting for quiet: psutil's
#: CPU times tick at 10 ms, so a quarter second reads other load to ~0.04 cores.
QUIET_WINDOW = 0.25


def spare_cpus(cpus: int, threads: int, usable: float) -> float:
    """CPUs of the server's ``cpus`` that ``threads`` threads cannot use anyway."""
    return max(0.0, float(cpus) - min(float(threads), usable))


def excess_cores(other_cores: float | None, spare: float | None) -> float | None:
    """Cores other processes took beyond the spare (``None`` when not measured)."""
    if other_cores is None or spare is None:
        return None
    return other_cores - spare


def is_disturbed(other_cores: float | None, spare: float | None) -> bool:
    """Whether other processes took CPU the server needed (unknown counts as not)."""
    excess = excess_cores(other_cores, spare)
    return excess is not None and excess > MARGIN_CORES


@dataclass(frozen=True)
class RetakeBudget:
    """How far a sweep goes to get undisturbed samples at one thread count.

    ``retakes``: disturbed samples set aside and taken again; ``quiet_wait``:
    seconds of waiting for the CPUs to be quiet before a retake. Both per thread
    count and sweep, so a sweep on a busy machine stays bounded in time. With
    ``quiet_wait`` 0 a disturbed sample is taken again at once.
    """

    retakes: int = DEFAULT_RETAKES
    quiet_wait: float = DEFAULT_QUIET_WAIT


def describe_load(other_cores: float, cpus: int) -> str:
    """'other processes used 1.02 of the server's 2 CPUs'."""
    return f"other processes used {other_cores:.2f} of the server's {cpus_text(cpus)}"
