"""What a sweep measured: samples per thread count, their summaries, the sweep.

Plain dataclasses, no pytest and no network: the sampler fills them, the report,
the JSON file and (later) the verdicts read them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from .client import ModelFacts, RequestKind, Timings, request_kind
from .connection import ServerFacts
from .disturbance import describe_load, excess_cores, spare_cpus
from .errors import OllamaCpuError
from .machine import MachineFacts, threads_text
from .quantities import GENERATION_RATE, MIN_RATE_TOKENS, QUANTITIES, Quantity, lookup, names
from .roofline import Roofline, share
from .statistics import Summary, ratio


def short_reply(timings: Timings, asked: int) -> str | None:
    """Why a reply is too short for a rate (None when it is not), in words.

    A reply must generate the tokens asked for, or at least ``MIN_RATE_TOKENS``
    of them; fewer is a rate of a token or two, mostly timer resolution.
    """
    if timings.eval_duration > 0 and timings.eval_count >= min(asked, MIN_RATE_TOKENS):
        return None
    if timings.eval_count <= 0 or timings.eval_duration <= 0:
        return (
            f"reported no generation (eval_count {timings.eval_count}, eval_duration "
            f"{timings.eval_duration:g} s): the model stopped at once"
        )
    return (
        f"stopped after {timings.eval_count} of the {asked} tokens asked "
        f"({stopped_because(timings.done_reason)})"
    )


def stopped_because(done_reason: str | None) -> str:
    if done_reason == "stop":
        return "done_reason 'stop': the model ended its answer, or a stop sequence matched"
    if done_reason is None:
        return "Ollama did not say why"
    return f"done_reason {done_reason!r}"


@dataclass(frozen=True)
class Sample:
    """One request at one thread count.

    ``cpu_seconds`` is the CPU time of the server's whole process tree during the
    request and ``other_cpu_seconds`` that of everything else on the server's
    CPUs (``server_cpus`` of them); both are ``None`` when the server's processes
    cannot be watched. ``disturbed`` says that other processes took CPU the
    server needed (see ``disturbance.py``): such a sample is kept, but set aside
    from every summary, verdict and comparison. ``started_at`` (wall clock,
    seconds since the epoch) and ``started_monotonic`` date the request, to
    diagnose drift and hiccups later.
    """

    threads: int
    round: int
    timings: Timings
    wall_seconds: float
    usable_cpus: float
    cpu_seconds: float | None = None
    other_cpu_seconds: float | None = None
    runner_threads: int | None = None
    runner_pid: int | None = None
    server_cpus: int | None = None
    disturbed: bool = False
    started_at: float | None = None
    started_monotonic: float | None = None
    #: seconds from sending the request to its first streamed piece (the first token),
    #: and the server's CPU seconds before and after it: each phase's own CPU use;
    #: None where a phase was too short for psutil's 10 ms ticks
    first_token_seconds: float | None = None
    prefill_cpu_seconds: float | None = None
    generation_cpu_seconds: float | None = None
    #: the roofline (``roofline.py``): bytes this request read per generated token and
    #: operations per prompt token (both grow with its positions), and the machine's
    #: read bandwidth and arithmetic peak at its thread count; None where not known
    bytes_per_token: float | None = None
    flops_per_token: float | None = None
    read_bytes_per_second: float | None = None
    flops_per_second: float | None = None

    @property
    def spare_cpus(self) -> float | None:
        """CPUs of the server's that this request's threads could not use anyway."""
        if self.server_cpus is None:
            return None
        return spare_cpus(self.server_cpus, self.threads, self.usable_cpus)

    @property
    def excess_cores(self) -> float | None:
        """Cores other processes took beyond the spare: above the margin, disturbed."""
        return excess_cores(self.other_cores_busy, self.spare_cpus)

    @property
    def tokens_per_second(self) -> float:
        if self.timings.eval_duration <= 0:
            return 0.0
        return self.timings.eval_count / self.timings.eval_duration

    @property
    def prompt_tokens_per_second(self) -> float | None:
        if self.timings.prompt_eval_duration <= 0:
            return None
        return self.timings.prompt_eval_count / self.timings.prompt_eval_duration

    @property
    def time_to_first_token(self) -> float | None:
        """Seconds from the request's arrival to its first generated token, from
        Ollama's timings: loading (none in a measured sample) and prompt processing,
        whose last step yields the first token. The HTTP round trip is not in it."""
        if self.timings.prompt_eval_duration <= 0:
            return None
        return self.timings.load_duration + self.timings.prompt_eval_duration

    @property
    def request_seconds(self) -> float:
        """The request's whole time as the client saw it (wall clock)."""
        return self.wall_seconds

    @property
    def cores_busy(self) -> float | None:
        """Average number of cores the server kept busy during the request."""
        if self.cpu_seconds is None or self.wall_seconds <= 0:
            return None
        return self.cpu_seconds / self.wall_seconds

    @property
    def thread_utilization(self) -> float | None:
        """Cores busy / threads asked for: 1.0 means every thread kept a core busy."""
        busy = self.cores_busy
        return None if busy is None else busy / self.threads

    @property
    def prefill_thread_utilization(self) -> float | None:
        """Cores busy / threads while the prompt was processed (up to the first token)."""
        if self.prefill_cpu_seconds is None or not self.first_token_seconds:
            return None
        return self.prefill_cpu_seconds / self.first_token_seconds / self.threads

    @property
    def generation_thread_utilization(self) -> float | None:
        """Cores busy / threads while tokens were generated (after the first)."""
        if self.generation_cpu_seconds is None or self.first_token_seconds is None:
            return None
        window = self.wall_seconds - self.first_token_seconds
        return None if window <= 0 else self.generation_cpu_seconds / window / self.threads

    @property
    def generation_roofline(self) -> float | None:
        """The generation rate as a share of the memory roofline at this thread count:
        read bandwidth / bytes per token. 1.0: memory gives no more."""
        return share(self.tokens_per_second, self.bytes_per_token, self.read_bytes_per_second)

    @property
    def prefill_roofline(self) -> float | None:
        """The prefill rate as a share of the compute roofline at this thread count:
        peak operations a second / operations per prompt token."""
        return share(self.prompt_tokens_per_second, self.flops_per_token, self.flops_per_second)

    @property
    def machine_utilization(self) -> float | None:
        """Cores busy / usable CPUs: how much of what the machine offers was used."""
        busy = self.cores_busy
        return None if busy is None or self.usable_cpus <= 0 else busy / self.usable_cpus

    @property
    def other_cores_busy(self) -> float | None:
        """Cores kept busy by everything else on the machine: noise for this sample."""
        if self.other_cpu_seconds is None or self.wall_seconds <= 0:
            return None
        return self.other_cpu_seconds / self.wall_seconds

    def to_dict(self) -> dict[str, Any]:
        return {
            "threads": self.threads,
            "round": self.round,
            "tokens_per_second": self.tokens_per_second,
            "prompt_tokens_per_second": self.prompt_tokens_per_second,
            "time_to_first_token": self.time_to_first_token,
            "request_seconds": self.request_seconds,
            "wall_seconds": self.wall_seconds,
            "cpu_seconds": self.cpu_seconds,
            "other_cpu_seconds": self.other_cpu_seconds,
            "thread_utilization": self.thread_utilization,
            "prefill_thread_utilization": self.prefill_thread_utilization,
            "generation_thread_utilization": self.generation_thread_utilization,
            "machine_utilization": self.machine_utilization,
            "usable_cpus": self.usable_cpus,
            "runner_threads": self.runner_threads,
            "runner_pid": self.runner_pid,
            "other_cores_busy": self.other_cores_busy,
            "server_cpus": self.server_cpus,
            "spare_cpus": self.spare_cpus,
            "disturbed": self.disturbed,
            "started_at": self.started_at,
            "started_monotonic": self.started_monotonic,
            "first_token_seconds": self.first_token_seconds,
            "prefill_cpu_seconds": self.prefill_cpu_seconds,
            "generation_cpu_seconds": self.generation_cpu_seconds,
            "bytes_per_token": self.bytes_per_token,
            "flops_per_token": self.flops_per_token,
            "read_bytes_per_second": self.read_bytes_per_second,
            "flops_per_second": self.flops_per_second,
            "generation_roofline": self.generation_roofline,
            "prefill_roofline": self.prefill_roofline,
            "timings": self.timings.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Sample:
        return cls(
            threads=int(data["threads"]),
            round=int(data["round"]),
            timings=Timings.from_dict(data["timings"]),
            wall_seconds=float(data["wall_seconds"]),
            usable_cpus=float(data["usable_cpus"]),
            cpu_seconds=data.get("cpu_seconds"),
            other_cpu_seconds=data.get("other_cpu_seconds"),
            runner_threads=data.get("runner_threads"),
            runner_pid=data.get("runner_pid"),
            server_cpus=data.get("server_cpus"),
            disturbed=bool(data.get("disturbed", False)),
            started_at=data.get("started_at"),
            started_monotonic=data.get("started_monotonic"),
            first_token_seconds=data.get("first_token_seconds"),
            prefill_cpu_seconds=data.get("prefill_cpu_seconds"),
            generation_cpu_seconds=data.get("generation_cpu_seconds"),
            bytes_per_token=data.get("bytes_per_token"),
            flops_per_token=data.get("flops_per_token"),
            read_bytes_per_second=data.get("read_bytes_per_second"),
            flops_per_second=data.get("flops_per_second"),
        )


class MachineBusy(OllamaCpuError):
    """A figure was asked of a thread count whose every sample was disturbed."""


def _summary(values: Sequence[float | None]) -> Summary | None:
    present = [v for v in values if v is not None]
    return Summary.from_values(present) if present else None


@dataclass(frozen=True)
class ThreadResult:
    """All samples taken at one thread count, and the summaries of the undisturbed ones.

    ``samples`` holds every measured request in the order taken, disturbed ones
    included (flagged); the summaries, verdicts and comparisons read only
    ``undisturbed``. ``waited_seconds`` is the time spent waiting for the
    server's CPUs to be quiet, ``gave_up`` that the machine stayed busy beyond
    the retake budget.
    """

    threads: int
    samples: tuple[Sample, ...]
    warmup: Sample | None = None
    waited_seconds: float = 0.0
    gave_up: bool = False

    @cached_property
    def undisturbed(self) -> tuple[Sample, ...]:
        return tuple(s for s in self.samples if not s.disturbed)

    @cached_property
    def set_aside(self) -> tuple[Sample, ...]:
        """Samples during which other processes took CPU the server needed."""
        return tuple(s for s in self.samples if s.disturbed)

    @property
    def busy(self) -> bool:
        """Too few undisturbed samples (under two) to decide anything, because of load."""
        return bool(self.set_aside) and len(self.undisturbed) < 2

    @property
    def load(self) -> float | None:
        """Median cores other processes kept busy during the disturbed samples."""
        values = [s.other_cores_busy for s in self.set_aside if s.other_cores_busy is not None]
        return Summary.from_values(values).median if values else None

    def describe_load(self) -> str:
        """'other processes used 1.02 of the server's 2 CPUs' (during the set-aside samples)."""
        load = self.load
        cpus = next((s.server_cpus for s in self.set_aside if s.server_cpus is not None), None)
        if load is None or cpus is None:
            return "other processes took CPU the server needed"
        return describe_load(load, cpus)

    @cached_property
    def tokens_per_second(self) -> Summary:
        if not self.samples:
            raise ValueError(f"no samples were taken at {threads_text(self.threads)}")
        if not self.undisturbed:
            raise MachineBusy(
                f"no undisturbed sample at {threads_text(self.threads)}: {self.describe_load()} "
                f"during all {len(self.samples)} of them, so its tokens/s is not known. "
                "Measure on a quieter machine, or raise --ollama-cpu-retakes / "
                "--ollama-cpu-quiet-wait"
            )
        return Summary.from_values([s.tokens_per_second for s in self.undisturbed])

    @cached_property
    def prompt_tokens_per_second(self) -> Summary | None:
        return _summary([s.prompt_tokens_per_second for s in self.undisturbed])

    @cached_property
    def wall_seconds(self) -> Summary | None:
        return _summary([s.wall_seconds for s in self.undisturbed])

    def summary(self, quantity: Quantity | str) -> Summary | None:
        """``quantity`` (or its name: ``"prefill"``, ``"ttft"``, ``"tokens_per_second"``,
        see ``quantities.py``) over the undisturbed samples; None where none measured it."""
        if isinstance(quantity, str):
            found = lookup(quantity)
            if found is None:
                raise KeyError(f"{quantity!r} is not a quantity; use one of {names()}")
            quantity = found
        return _summary([quantity.of(s) for s in self.undisturbed])

    @cached_property
    def thread_utilization(self) -> Summary | None:
        return _summary([s.thread_utilization for s in self.undisturbed])

    @cached_property
    def machine_utilization(self) -> Summary | None:
        return _summary([s.machine_utilization for s in self.undisturbed])

    @cached_property
    def other_cores_busy(self) -> Summary | None:
        """Over every sample, disturbed ones included: how busy the machine was."""
        return _summary([s.other_cores_busy for s in self.samples])

    @property
    def median_tokens_per_second(self) -> float | None:
        """The median tokens/s, or ``None`` where no undisturbed sample was taken."""
        return self.tokens_per_second.median if self.undisturbed else None

    @property
    def runner_threads(self) -> int | None:
        """Threads the runner was started with, as its command line says."""
        seen = {s.runner_threads for s in self.samples if s.runner_threads is not None}
        return seen.pop() if len(seen) == 1 else None

    def to_dict(self) -> dict[str, Any]:
        def dump(summary: Summary | None) -> dict[str, Any] | None:
            return None if summary is None else summary.to_dict()

        return {
            "threads": self.threads,
            "runner_threads": self.runner_threads,
            "summary": {
                **{name: dump(self.summary(q)) for name, q in QUANTITIES.items()},
                "wall_seconds": dump(self.wall_seconds),
                "other_cores_busy": dump(self.other_cores_busy),
            },
            "undisturbed": len(self.undisturbed),
            "set_aside": len(self.set_aside),
            "waited_seconds": self.waited_seconds,
            "gave_up": self.gave_up,
            "warmup": None if self.warmup is None else self.warmup.to_dict(),
            "samples": [s.to_dict() for s in self.samples],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ThreadResult:
        warmup = data.get("warmup")
        return cls(
            int(data["threads"]),
            tuple(Sample.from_dict(s) for s in data["samples"]),
            None if warmup is None else Sample.from_dict(warmup),
            float(data.get("waited_seconds", 0.0)),
            bool(data.get("gave_up", False)),
        )


@dataclass
class Sweep:
    """Measurements of one workload across thread counts; ``sweep[2]`` is 2 threads.

    ``complete`` is False when the sweep stopped early (the server failed); the
    thread counts measured until then are kept.
    """

    kind: RequestKind
    model: ModelFacts
    num_predict: int
    threads: tuple[int, ...]
    machine: MachineFacts
    server: ServerFacts
    results: dict[int, ThreadResult] = field(default_factory=dict)
    complete: bool = True
    error: str | None = None
    #: seconds spent waiting for other sweeps to finish (see locking.py), not measured
    waited_seconds: float = 0.0
    #: whether requests were sent as given, so that a repeat could reuse Ollama's
    #: prompt cache; False: each began with a unique line and processed its whole prompt
    prompt_cache: bool = False
    #: the rate the test is about: the main recommendation and plain speedup
    #: thresholds use it (a prefill workload's is the prefill rate)
    focus: str = GENERATION_RATE.name
    #: the model's cost of a token against the machine's limits (None where either is
    #: not known; ``roofline_note`` says why)
    roofline: Roofline | None = None
    roofline_note: str | None = None

    def __getitem__(self, threads: int) -> ThreadResult:
        try:
            return self.results[threads]
        except KeyError:
            measured = ", ".join(str(t) for t in self.results) or "none"
            raise KeyError(
                f"{threads} threads were not measured in this sweep (measured: {measured})"
            ) from None

    def __iter__(self) -> Iterator[ThreadResult]:
        return iter(self.results[t] for t in sorted(self.results))

    def __len__(self) -> int:
        return len(self.results)

    def __contains__(self, threads: object) -> bool:
        return threads in self.results

    @property
    def where(self) -> str:
        """Which machine and server measured this: results are kept apart by it."""
        return f"{self.machine.hostname} {self.server.host}"

    @property
    def baseline(self) -> ThreadResult:
        """The smallest thread count measured: speedups are relative to it."""
        if not self.results:
            raise ValueError("the sweep has no results")
        return self.results[min(self.results)]

    def speedup(self, threads: int) -> float | None:
        """Median tokens/s at ``threads`` over the median at the smallest count
        (undisturbed samples; ``None`` where a side has none)."""
        now, base = self[threads].median_tokens_per_second, self.baseline.median_tokens_per_second
        if now is None or base is None:
            return None
        return ratio(now, base)

    def speedup_of(self, quantity: Quantity, threads: int) -> float | None:
        """How many times better ``quantity``'s median is at ``threads`` than at the
        smallest count: a ratio of rates, or the inverse ratio of times."""
        now, base = self[threads].summary(quantity), self.baseline.summary(quantity)
        if now is None or base is None:
            return None
        if quantity.higher_is_better:
            return ratio(now.median, base.median)
        return ratio(base.median, now.median)

    def efficiency(self, threads: int) -> float | None:
        """Speedup divided by the thread ratio: 1.0 is perfect scaling."""
        speedup = self.speedup(threads)
        if speedup is None:
            return None
        return speedup / (threads / self.baseline.threads)

    def limits_at(self, threads: int) -> dict[str, float | None]:
        """The machine's limits at ``threads`` and the rates they allow this workload
        (medians over the undisturbed samples' own costs per token); ``{}`` where
        there is no roofline."""
        limit = None if self.roofline is None else self.roofline.limit(threads)
        result = self.results.get(threads)
        if limit is None or result is None:
            return {}

        def allowed(per_second: float, costs: list[float | None]) -> float | None:
            present = sorted(c for c in costs if c)
            return per_second / present[len(present) // 2] if present else None

        kept = result.undisturbed
        return {
            "read_bytes_per_second": limit.read_bytes_per_second,
            "flops_per_second": limit.flops_per_second,
            "probe_disturbed": limit.disturbed,
            "generation_limit": allowed(
                limit.read_bytes_per_second, [s.bytes_per_token for s in kept]
            ),
            "prefill_limit": allowed(limit.flops_per_second, [s.flops_per_token for s in kept]),
        }

    def short_replies(self) -> list[Sample]:
        """Samples whose reply stopped before the tokens asked for (yet gave a rate)."""
        return [s for r in self for s in r.samples if s.timings.eval_count < self.num_predict]

    def disturbed_samples(self) -> tuple[int, int]:
        """(samples set aside as disturbed, all samples): how much the machine's load cost."""
        samples = [s for r in self for s in r.samples]
        return sum(1 for s in samples if s.disturbed), len(samples)

    @property
    def waited_for_quiet(self) -> float:
        """Seconds spent waiting for the server's CPUs to be quiet, over all thread counts."""
        return sum(r.waited_seconds for r in self)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "model": self.model.to_dict(),
            "num_predict": self.num_predict,
            "threads": list(self.threads),
            "complete": self.complete,
            "error": self.error,
            "waited_seconds": self.waited_seconds,
            "prompt_cache": self.prompt_cache,
            "focus": self.focus,
            "machine": self.machine.to_dict(),
            "server": self.server.to_dict(),
            "roofline": None if self.roofline is None else self.roofline.to_dict(),
            "roofline_note": self.roofline_note,
            "results": [
                {
                    **r.to_dict(),
                    "speedup": self.speedup(r.threads) if r.samples else None,
                    "efficiency": self.efficiency(r.threads) if r.samples else None,
                    "busy": r.busy,
                    "limits": self.limits_at(r.threads),
                }
                for r in self
            ],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Sweep:
        results = [ThreadResult.from_dict(r) for r in data["results"]]
        roofline = data.get("roofline")
        return cls(
            kind=request_kind(data["kind"]),
            model=ModelFacts.from_dict(data["model"]),
            num_predict=int(data["num_predict"]),
            threads=tuple(data["threads"]),
            machine=MachineFacts.from_dict(data["machine"]),
            server=ServerFacts.from_dict(data["server"]),
            results={r.threads: r for r in results},
            complete=bool(data["complete"]),
            error=data.get("error"),
            waited_seconds=float(data.get("waited_seconds", 0.0)),
            prompt_cache=bool(data.get("prompt_cache", False)),
            focus=str(data.get("focus", GENERATION_RATE.name)),
            roofline=None if roofline is None else Roofline.from_dict(roofline),
            roofline_note=data.get("roofline_note"),
        )
