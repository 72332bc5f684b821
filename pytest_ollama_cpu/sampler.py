"""Running a sweep: warm up, then sample, at each thread count in turn.

``num_thread`` is a load-time option: a request with a new value makes Ollama
restart its runner, so the first reply after a change carries the load and is
kept apart as the warm-up. The measured requests use a fixed seed and
temperature 0 so every sample does the same work.

On a busy machine a sample during which other processes took CPU the server
needed (``disturbance.py``) is kept, flagged, and taken again after waiting for
the server's CPUs to be quiet, within a ``RetakeBudget`` per thread count: a
sweep on a machine that stays busy ends in bounded time, with the thread count
marked as given up rather than measured wrongly.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from .client import ModelFacts, OllamaClient, RepeatStopped, RequestKind, Timings
from .connection import ServerFacts
from .disturbance import QUIET_WINDOW, RetakeBudget, is_disturbed, spare_cpus
from .errors import OllamaCpuError
from .machine import MachineFacts
from .processes import CpuSnapshot, ServerProcess
from .progress import Phase, Progress
from .quantities import GENERATION_RATE, MIN_RATE_TOKENS
from .results import Sample, Sweep, ThreadResult, short_reply
from .roofline import Roofline

#: Options the plugin owns; a test may not set them through ``options``.
RESERVED_OPTIONS = ("num_thread", "num_predict")

#: psutil's CPU times tick every 10 ms: below this wall time a request's CPU
#: figures would be mostly rounding, so they are left out.
MIN_CPU_WINDOW = 0.25

#: A measured reply whose load took this long carried a runner (re)start.
RELOAD_SECONDS = 0.25

#: Tokens a warm-up generates: it loads the runner with the new thread count and
#: reads every weight once (each token does), which is all it is for; measured,
#: the first sample after it is no slower than the rest.
WARMUP_TOKENS = 16

#: Requests a sample may take when replies stop too short for a rate: each has its
#: own first line, and what the model writes depends on it.
SHORT_REPLY_TRIES = 3

#: Defaults that make repeated requests do identical work.
DETERMINISTIC_OPTIONS: Mapping[str, Any] = {"seed": 42, "temperature": 0.0}


class ShortReply(OllamaCpuError):
    """A reply generated too few tokens for a generation rate."""


class SweepInterrupted(OllamaCpuError):
    """The server failed mid-sweep; ``sweep`` holds what was measured before."""

    def __init__(self, message: str, sweep: Sweep) -> None:
        super().__init__(message)
        self.sweep = sweep


@dataclass(frozen=True)
class Workload:
    """What each request asks for: ``kind`` is ``generate`` or ``chat``."""

    kind: RequestKind
    model: str
    num_predict: int
    prompt: str | None = None
    messages: Sequence[Mapping[str, Any]] | None = None
    options: Mapping[str, Any] | None = None
    #: False (the default): each request's prompt starts with a line of its own, so
    #: Ollama's prompt cache cannot serve it and every sample processes the whole
    #: prompt; True: the prompt is sent as given, and a repeat reuses the cache
    prompt_cache: bool = False
    #: the rate the test is about (a name in ``quantities.QUANTITIES``): the main
    #: recommendation and plain speedup thresholds use it
    focus: str = GENERATION_RATE.name
    #: every reply must generate ``num_predict`` tokens, as llama-bench's tg N does: a
    #: shorter one (the model ended its answer) is asked again with another first line,
    #: up to ``SHORT_REPLY_TRIES`` requests, and kept (named as short) only after that
    full_length: bool = False


#: Digits of the line that makes each request's prompt unique. Ollama reuses the
#: longest common prefix of the previous prompt: the line starts with a digit that
#: differs from the last request's, so only the chat template's first tokens are
#: shared; a fixed number of digits keeps the prompt's token count fixed.
UNIQUE_DIGITS = 8


class UniqueLines:
    """``12345678.\n``-style first lines, each starting with another digit than the last."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()
        self._last_first = ""

    def next(self) -> str:
        first = self._rng.choice([d for d in "123456789" if d != self._last_first])
        self._last_first = first
        rest = "".join(self._rng.choice("0123456789") for _ in range(UNIQUE_DIGITS - 1))
        return f"{first}{rest}.\n"


def unique_request(workload: Workload, line: str) -> Workload:
    """``workload`` with ``line`` before its prompt, or before the first message's content."""
    if workload.kind == "chat":
        assert workload.messages is not None
        first, *rest = workload.messages
        messages = [dict(first, content=line + str(first.get("content", ""))), *rest]
        return replace(workload, messages=messages)
    assert workload.prompt is not None
    return replace(workload, prompt=line + workload.prompt)


def request_options(workload: Workload, threads: int) -> dict[str, Any]:
    options: dict[str, Any] = dict(DETERMINISTIC_OPTIONS)
    options.update(workload.options or {})
    options["num_thread"] = threads
    options["num_predict"] = workload.num_predict
    return options


class SweepRunner:
    def __init__(
        self,
        client: OllamaClient,
        server: ServerProcess | None,
        server_facts: ServerFacts,
        machine: MachineFacts,
        on_progress: Callable[[Progress], None] | None = None,
        budget: RetakeBudget | None = None,
        roofline: Roofline | None = None,
        roofline_note: str | None = None,
    ) -> None:
        self.client = client
        self.server = server
        self.server_facts = server_facts
        self.machine = machine
        self.budget = budget or RetakeBudget()
        #: the model's cost and the machine's limits each sample is read against
        self.roofline = roofline
        self.roofline_note = roofline_note
        #: told where the sweep is before each request and wait (``progress.py``)
        self._progress = on_progress or (lambda _event: None)
        self._loaded: int | None = None
        self._unique = UniqueLines()

    def _request(
        self, workload: Workload, threads: int, on_first: Callable[[], None] | None = None
    ) -> Timings:
        options = request_options(workload, threads)
        if not workload.prompt_cache:
            workload = unique_request(workload, self._unique.next())
        if workload.kind == "chat":
            assert workload.messages is not None
            return self.client.chat(workload.model, workload.messages, options, on_first=on_first)
        assert workload.prompt is not None
        return self.client.generate(workload.model, workload.prompt, options, on_first=on_first)

    def _sample(self, workload: Workload, threads: int, round_: int) -> Sample:
        """One sample; a reply too short for a rate, or one the server's runaway guard
        stopped (the model repeated a token), is asked again with another unique first
        line (which changes what the model writes), up to ``SHORT_REPLY_TRIES``; so is
        any reply short of ``num_predict`` in a ``full_length`` workload."""
        for attempt in range(1, SHORT_REPLY_TRIES + 1):
            # a failed request leaves the runner's state unknown
            self._loaded = None
            try:
                sample = self._measure(workload, threads, round_)
            except (ShortReply, RepeatStopped) as exc:
                if workload.prompt_cache or attempt == SHORT_REPLY_TRIES:
                    tries = "" if workload.prompt_cache else f" ({attempt} requests in a row)"
                    raise type(exc)(f"{exc}{tries}") from None
                self._loaded = threads
                continue
            self._loaded = threads
            short = sample.timings.eval_count < workload.num_predict
            retry = workload.full_length and not workload.prompt_cache
            if short and retry and attempt < SHORT_REPLY_TRIES:
                continue
            return sample
        raise AssertionError("unreachable")

    def _measure(self, workload: Workload, threads: int, round_: int) -> Sample:
        server = self.server
        before = server.snapshot() if server else None
        started_at, started_monotonic = time.time(), time.monotonic()
        started = time.perf_counter()
        first: list[tuple[float, CpuSnapshot | None]] = []

        def on_first() -> None:  # the first token: prefill ends, generation begins
            first.append((time.perf_counter(), server.snapshot() if server else None))

        timings = self._request(workload, threads, on_first)
        wall = time.perf_counter() - started
        short = short_reply(timings, workload.num_predict)
        if short is not None:
            raise ShortReply(
                f"{workload.model} at {threads} thread{'s' * (threads != 1)}"
                f"{' (warm-up)' if round_ == 0 else ''} "
                f"{short}: a rate from so few tokens is "
                f"not a generation rate (the plugin takes rates from {MIN_RATE_TOKENS} tokens "
                "or more), so nothing was measured. Use a prompt that makes the model write at "
                "length (for example 'Write a long story about a lighthouse keeper.'), and no "
                "stop sequence in options that ends the reply early."
            )
        cpu = other = None
        first_token = first[0][0] - started if first else None
        prefill_cpu = generation_cpu = None
        runner_threads = runner_pid = None
        if server is not None and before is not None:
            use = server.cpu_use(before, server.snapshot())
            # a process of the server that ended mid-request took its CPU time with it
            if wall >= MIN_CPU_WINDOW and use.lost_processes == 0:
                cpu, other = use.server, use.other
            middle = first[0][1] if first else None
            if first_token is not None and middle is not None and use.lost_processes == 0:
                up_to_first = server.cpu_use(before, middle).server
                # each phase's CPU only where it lasted long enough for psutil's ticks
                if first_token >= MIN_CPU_WINDOW:
                    prefill_cpu = up_to_first
                if wall - first_token >= MIN_CPU_WINDOW and cpu is not None:
                    generation_cpu = cpu - up_to_first
            runner = server.runner()
            if runner is not None:
                runner_threads, runner_pid = runner.threads, runner.pid
        cost = None if self.roofline is None else self.roofline.for_sample(threads, timings)
        sample = Sample(
            threads=threads,
            round=round_,
            timings=timings,
            wall_seconds=wall,
            usable_cpus=self.machine.usable_cpus,
            cpu_seconds=cpu,
            other_cpu_seconds=other,
            runner_threads=runner_threads,
            runner_pid=runner_pid,
            server_cpus=len(self.machine.affinity) if server is not None else None,
            started_at=started_at,
            started_monotonic=started_monotonic,
            first_token_seconds=first_token,
            prefill_cpu_seconds=prefill_cpu,
            generation_cpu_seconds=generation_cpu,
            bytes_per_token=None if cost is None else cost.bytes_per_token,
            flops_per_token=None if cost is None else cost.flops_per_token,
            read_bytes_per_second=None if cost is None else cost.read_bytes_per_second,
            flops_per_second=None if cost is None else cost.flops_per_second,
        )
        return replace(sample, disturbed=is_disturbed(sample.other_cores_busy, sample.spare_cpus))

    def _wait_for_quiet(self, threads: int, budget: float) -> tuple[float, bool]:
        """Watch the idle server's CPUs until other processes leave ``threads`` threads
        the CPUs they need, for up to ``budget`` seconds: (seconds waited, quiet)."""
        if self.server is None:
            return 0.0, True
        spare = spare_cpus(len(self.machine.affinity), threads, self.machine.usable_cpus)
        started = time.monotonic()
        while True:
            quiet = not is_disturbed(self.server.other_load(QUIET_WINDOW), spare)
            waited = time.monotonic() - started
            if quiet or waited >= budget:
                return waited, quiet

    def run(
        self, workload: Workload, model: ModelFacts, threads: Sequence[int], rounds: int
    ) -> Sweep:
        """Warm up and take ``rounds`` samples at each thread count, in order."""
        sweep = Sweep(
            kind=workload.kind,
            model=model,
            num_predict=workload.num_predict,
            threads=tuple(threads),
            machine=self.machine,
            server=self.server_facts,
            prompt_cache=workload.prompt_cache,
            focus=workload.focus,
            roofline=self.roofline,
            roofline_note=self.roofline_note,
        )
        # whatever ran before (another test, another client) may have left a runner
        # with these threads loaded in an unknown state: the first visit always warms up
        self._loaded = None
        return self.extend(sweep, workload, {count: rounds for count in threads})

    def extend(self, sweep: Sweep, workload: Workload, more: Mapping[int, int]) -> Sweep:
        """Take ``more[threads]`` more samples at each thread count, in the given order.

        A visit to a thread count other than the one this runner last asked for
        restarts Ollama's runner, so it starts with a warm-up; the thread count
        still loaded is visited first and needs none. A measured reply that
        carries a model load anyway (the server unloaded or restarted the
        runner) is set aside as a warm-up and taken again; so is a disturbed
        one, after waiting for quiet, within the budget (``_visit``). A count
        given up as busy earlier in the sweep is not visited again.
        """
        order = sorted(more, key=lambda t: t != self._loaded)
        for count in order:
            earlier = sweep.results.get(count)
            if earlier is not None and earlier.gave_up:
                continue  # the machine stayed busy beyond the budget: no more tries
            visit = _Visit(count, more[count], earlier)
            try:
                self._visit(workload, visit)
            except OllamaCpuError as exc:
                # every sample taken so far is kept, this thread count's included
                self._store(sweep, visit)
                sweep.complete = False
                sweep.error = str(exc)
                raise SweepInterrupted(
                    f"{exc}\nThe sweep stopped at {count} thread{'s' * (count != 1)} after "
                    f"{visit.good} of {visit.rounds} rounds; {_kept(sweep)}.",
                    sweep,
                ) from None
            self._store(sweep, visit)
        return sweep

    def _visit(self, workload: Workload, visit: _Visit) -> None:
        """Take ``visit.rounds`` undisturbed samples at one thread count, within the budget."""
        count, budget = visit.count, self.budget
        last_disturbed = visit.earlier_disturbed_last
        if self._loaded != count:
            self._tell("warm-up", workload, visit)
            warmup = replace(workload, num_predict=min(workload.num_predict, WARMUP_TOKENS))
            visit.warmup = self._sample(warmup, count, 0)
            last_disturbed = visit.warmup.disturbed
        reloads = 0
        while visit.good < visit.rounds:
            if last_disturbed and budget.quiet_wait > 0:
                self._tell("waiting for quiet", workload, visit)
                spent, quiet = self._wait_for_quiet(count, budget.quiet_wait - visit.waited)
                visit.waited += spent
                if not quiet:
                    visit.gave_up = True
                    if visit.taken_before + len(visit.samples) > 0:
                        return
                    # not one sample yet: take one, so what the load did is on record
            round_ = visit.taken_before + len(visit.samples) + 1
            self._tell("round", workload, visit, round_)
            sample = self._sample(workload, count, round_)
            if sample.timings.load_duration >= RELOAD_SECONDS and reloads < visit.rounds:
                reloads += 1
                visit.warmup = visit.warmup or sample
                continue
            visit.samples.append(sample)
            last_disturbed = sample.disturbed
            if visit.gave_up:
                return
            if sample.disturbed:
                visit.set_aside += 1
                if visit.set_aside > budget.retakes:
                    visit.gave_up = True
                    return

    def _tell(self, phase: Phase, workload: Workload, visit: _Visit, round_: int = 0) -> None:
        """Say where the visit is, with the rates of its thread count's last sample."""
        last = visit.last_sample
        # a prompt the cache served was not processed: its prefill rate means nothing
        prefill = None if last is None or workload.prompt_cache else last.prompt_tokens_per_second
        self._progress(
            Progress(
                phase,
                visit.count,
                round=round_,
                rounds=visit.planned,
                generation_rate=None if last is None else last.tokens_per_second,
                prefill_rate=prefill,
            )
        )

    @staticmethod
    def _store(sweep: Sweep, visit: _Visit) -> None:
        earlier = visit.earlier
        if earlier is None and not visit.samples:
            return
        sweep.results[visit.count] = ThreadResult(
            visit.count,
            (earlier.samples if earlier else ()) + tuple(visit.samples),
            earlier.warmup if earlier else visit.warmup,
            visit.waited,
            visit.gave_up,
        )


def _kept(sweep: Sweep) -> str:
    """What an interrupted sweep keeps: ``samples kept: 2 at 1 thread, 1 at 2 threads``."""
    kept = [f"{len(r.samples)} at {r.threads} thread{'s' * (r.threads != 1)}" for r in sweep]
    return "samples kept: " + ", ".join(kept) if kept else "no sample was taken before"


@dataclass
class _Visit:
    """One stay at a thread count: what it wants, what it took, what it spent."""

    count: int
    rounds: int
    earlier: ThreadResult | None
    warmup: Sample | None = None
    samples: list[Sample] = field(default_factory=list)
    waited: float = 0.0
    set_aside: int = 0
    gave_up: bool = False

    def __post_init__(self) -> None:
        # the budget is per thread count and sweep: earlier visits spent part of it
        if self.earlier is not None:
            self.waited = self.earlier.waited_seconds
            self.set_aside = len(self.earlier.set_aside)

    @property
    def taken_before(self) -> int:
        return len(self.earlier.samples) if self.earlier else 0

    @property
    def earlier_disturbed_last(self) -> bool:
        return bool(self.earlier and self.earlier.samples and self.earlier.samples[-1].disturbed)

    @property
    def planned(self) -> int:
        """Rounds this thread count will have had in the sweep once the visit ends as
        planned: the earlier ones, those asked for, and a retake per sample set aside."""
        retakes = sum(1 for s in self.samples if s.disturbed)
        return self.taken_before + self.rounds + retakes

    @property
    def last_sample(self) -> Sample | None:
        """The latest sample at this thread count, the warm-up's included."""
        if self.samples:
            return self.samples[-1]
        if self.warmup is not None:
            return self.warmup
        return self.earlier.samples[-1] if self.earlier and self.earlier.samples else None

    @property
    def good(self) -> int:
        """Undisturbed samples taken in this visit."""
        return sum(1 for s in self.samples if not s.disturbed)
