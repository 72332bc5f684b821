"""The ``ollama_cpu`` fixture object: what a test calls to run a sweep.

It turns the test's marker and the run's settings into a workload, runs the
sweep, records it for the report and the JSON file (also when the server fails
half-way), and turns the plugin's errors into test failures with their message
alone, since a traceback into the plugin would not help anyone.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import fields, replace
from typing import Any, NoReturn

import pytest

from .client import ModelFacts, RequestKind
from .connection import Connection, CpuSetRefused
from .errors import OllamaCpuError
from .limits import LimitsProbeError
from .locking import LockTimeout, taking_turns
from .markers import AUTO, ThreadSpec, expand_threads
from .options import Settings
from .progress import Progress
from .quantities import GENERATION_RATE, MIN_RATE_TOKENS, PREFILL_RATE
from .results import Sweep
from .roofline import ModelFactsMissing, Roofline
from .run import RunState
from .sampler import (
    DETERMINISTIC_OPTIONS,
    RESERVED_OPTIONS,
    SweepInterrupted,
    SweepRunner,
    UniqueLines,
    Workload,
)
from .thresholds import Thresholds
from .verdicts import Verdict, check, decide_adaptively
from .workloads import (
    FILLER_TEXT,
    MIN_PREFILL_TOKENS,
    WRITING_PROMPT,
    CalibrationError,
    prefill_prompt,
)

#: Longest wait for other sweeps (other xdist workers, another pytest) to finish.
LOCK_TIMEOUT = 3600.0


class MeasuredSweep(Sweep):
    """What ``ollama_cpu.generate(...)`` and its kin return: the sweep's measurements
    (``sweep[2]`` is 2 threads), and ``check`` to apply thresholds to them."""

    @classmethod
    def of(cls, sweep: Sweep) -> MeasuredSweep:
        return cls(**{f.name: getattr(sweep, f.name) for f in fields(sweep)})

    #: ``sweep.check(min_speedup=1.5, ...)``: see ``verdicts.check``
    check = check


class OllamaCpu:
    """Runs the test's workload at each thread count of its ``threads`` marker."""

    def __init__(
        self,
        state: RunState,
        nodeid: str,
        threads: ThreadSpec,
        rounds: int,
        max_rounds: int,
        thresholds: Thresholds,
        order: int = 0,
        on_progress: Callable[[Progress], None] | None = None,
    ) -> None:
        self._state = state
        self._nodeid = nodeid
        self._threads_spec = threads
        self.rounds = rounds
        self.max_rounds = max(rounds, max_rounds)
        self.thresholds = thresholds
        self._order = order
        self._on_progress = on_progress
        #: verdicts of the sweeps run so far; the plugin applies them when the test ends
        self.verdicts: list[Verdict] = []
        #: the sweeps run so far, for the thread counts a busy machine left unmeasured
        self.sweeps: list[Sweep] = []

    @property
    def settings(self) -> Settings:
        return self._state.settings

    def _connection(self) -> Connection:
        try:
            return self._state.connect()
        except OllamaCpuError as exc:
            message = str(exc)
        # failing outside the except block keeps pytest from chaining the two errors
        pytest.fail(message, pytrace=False)

    @property
    def threads(self) -> list[int]:
        """The thread counts this test sweeps, with ``auto`` expanded."""
        connection = self._connection()
        if AUTO in self._threads_spec and connection.server is None:
            pytest.fail(
                "threads 'auto' follows the server's usable CPUs, which cannot be read: "
                f"{connection.facts.utilization_note}. Give the thread counts instead, e.g. "
                "@pytest.mark.threads(1, 2, 4) or --ollama-cpu-threads=1,2,4",
                pytrace=False,
            )
        return expand_threads(self._threads_spec, connection.machine.usable_threads)

    def generate(
        self,
        prompt: str,
        *,
        model: str | None = None,
        num_predict: int | None = None,
        options: Mapping[str, Any] | None = None,
        prompt_cache: bool = False,
    ) -> MeasuredSweep:
        """Sweep ``/api/generate`` with ``prompt``; returns a ``MeasuredSweep``.

        Each request's prompt starts with a unique line, so Ollama's prompt cache
        cannot serve it and every sample processes the whole prompt;
        ``prompt_cache=True`` sends the prompt as given (a repeat then reuses the cache).
        """
        if not isinstance(prompt, str) or not prompt:
            raise TypeError("generate() needs a non-empty prompt string")
        return self._run("generate", model, num_predict, options, prompt_cache, prompt=prompt)

    def chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        model: str | None = None,
        num_predict: int | None = None,
        options: Mapping[str, Any] | None = None,
        prompt_cache: bool = False,
    ) -> MeasuredSweep:
        """Sweep ``/api/chat`` with ``messages``; returns a ``MeasuredSweep``.

        The first message's content starts with a unique line per request (see
        ``generate``); ``prompt_cache=True`` sends the messages as given.
        """
        if isinstance(messages, (str, bytes)) or not messages:
            raise TypeError(
                "chat() needs a non-empty list of messages such as "
                "[{'role': 'user', 'content': '...'}]"
            )
        return self._run("chat", model, num_predict, options, prompt_cache, messages=list(messages))

    def prefill(
        self,
        tokens: int = 512,
        *,
        model: str | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> MeasuredSweep:
        """Sweep prompt processing, as llama-bench's ``pp512``: a prompt that Ollama
        counts as ``tokens`` prompt tokens (calibrated with its own counts), and the
        fewest generated tokens a rate is taken from (8; llama-bench generates none).
        The recommendation and a plain ``min_speedup`` are about the prefill rate."""
        if isinstance(tokens, bool) or not isinstance(tokens, int):
            raise TypeError(f"tokens={tokens!r} must be a whole number, e.g. 512")
        model_name = self._model(model)
        connection = self._connection()
        unique = UniqueLines()
        counts = [*self.threads, 1]

        def count(prompt: str) -> int:
            request = dict(DETERMINISTIC_OPTIONS, **(options or {}))
            request.update(num_thread=max(counts), num_predict=1)
            timings = connection.client.generate(model_name, unique.next() + prompt, request)
            return timings.prompt_eval_count

        if tokens < MIN_PREFILL_TOKENS:
            raise ValueError(
                f"tokens={tokens!r}: a prefill workload needs {MIN_PREFILL_TOKENS} prompt "
                "tokens or more (the chat template and the request's unique first line take "
                "about 15)"
            )
        return self._run(
            "generate",
            model_name,
            MIN_RATE_TOKENS,
            options,
            False,
            prompt=FILLER_TEXT,  # until calibrated, with the server held for this sweep
            focus=PREFILL_RATE.name,
            calibrate=lambda: prefill_prompt(count, tokens)[0],
        )

    def generation(
        self,
        tokens: int = 128,
        *,
        model: str | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> MeasuredSweep:
        """Sweep generation, as llama-bench's ``tg128``: a short prompt the model writes
        at length about, and ``tokens`` generated tokens a request (a reply that ends
        sooner is asked again with another first line, up to 3 requests)."""
        if isinstance(tokens, bool) or not isinstance(tokens, int):
            raise TypeError(f"tokens={tokens!r} must be a whole number, e.g. 128")
        return self._run(
            "generate", model, tokens, options, False, prompt=WRITING_PROMPT, full_length=True
        )

    def _model(self, model: str | None) -> str:
        name = model or self.settings.model
        if not name:
            pytest.fail(
                "no model given: pass --ollama-cpu-model NAME (or set OLLAMA_CPU_MODEL, or the "
                "ini option ollama_cpu_model), or call generate(..., model=NAME)",
                pytrace=False,
            )
        return name

    def _run(
        self,
        kind: RequestKind,
        model: str | None,
        num_predict: int | None,
        options: Mapping[str, Any] | None,
        prompt_cache: bool,
        prompt: str | None = None,
        messages: Sequence[Mapping[str, Any]] | None = None,
        focus: str = GENERATION_RATE.name,
        calibrate: Callable[[], str] | None = None,
        full_length: bool = False,
    ) -> MeasuredSweep:
        reserved = sorted(set(options or {}) & set(RESERVED_OPTIONS))
        if reserved:
            raise ValueError(
                f"options {', '.join(reserved)} are set by the plugin: use the threads marker "
                "for num_thread and the num_predict argument for num_predict"
            )
        if num_predict is not None and (
            isinstance(num_predict, bool)
            or not isinstance(num_predict, int)
            or num_predict < MIN_RATE_TOKENS
        ):
            raise ValueError(
                f"num_predict={num_predict!r} must be a whole number of {MIN_RATE_TOKENS} or "
                "more: a rate from fewer tokens is mostly timer resolution"
            )
        model_name = self._model(model)
        connection = self._connection()
        try:
            model_facts = connection.client.model_facts(model_name)
        except OllamaCpuError as exc:
            _fail(exc)
        workload = Workload(
            kind=kind,
            model=model_name,
            num_predict=num_predict or self.settings.num_predict,
            prompt=prompt,
            messages=messages,
            options=options,
            prompt_cache=bool(prompt_cache),
            focus=focus,
            full_length=full_length,
        )
        runner = SweepRunner(
            connection.client,
            connection.server,
            connection.facts,
            connection.machine,
            on_progress=self._progress,
            budget=self.settings.retake_budget,
        )
        cpus = connection.machine.affinity if connection.server is not None else ()
        try:
            with (
                taking_turns(self.settings.host, cpus, LOCK_TIMEOUT) as waited,
                connection.confined(),
            ):
                if calibrate is not None:  # its requests must not overlap another sweep
                    workload = replace(workload, prompt=_calibrated(calibrate))
                # probed with the server idle and confined as it is measured
                runner.roofline, runner.roofline_note = self._roofline(
                    connection, model_facts, self.threads
                )
                sweep, verdict = self._sweep(runner, workload, model_facts)
            sweep.waited_seconds = waited
        except (LockTimeout, CpuSetRefused, CalibrationError) as exc:
            _fail(exc)
        except SweepInterrupted as exc:
            self._state.record(self._nodeid, exc.sweep, None, self.thresholds, self._order)
            _fail(exc)
        self._state.record(self._nodeid, sweep, verdict, self.thresholds, self._order)
        self.verdicts.append(verdict)
        self.sweeps.append(sweep)
        return sweep

    def _progress(self, event: Progress) -> None:
        """Pass where the sweep is on to the display, named after this test."""
        if self._on_progress is not None:
            self._on_progress(replace(event, test=self._nodeid))

    def _roofline(
        self, connection: Connection, model: ModelFacts, counts: Sequence[int]
    ) -> tuple[Roofline | None, str | None]:
        """The model's cost of a token against the machine's limits at ``counts``, or
        None and why not: the roofline is a reading aid, never a reason to fail a sweep."""
        if self.settings.roofline == "off":
            return None, "the probe is off (--ollama-cpu-roofline off)"
        if connection.server is None:
            return None, (
                "the server's processes are not visible from here (another machine or user), "
                "so its machine's limits cannot be probed"
            )
        try:
            cost = connection.cost_of(model)
        except (OllamaCpuError, ModelFactsMissing) as exc:
            return None, f"the model's facts could not be read: {exc}"
        try:
            limits = self._state.machine_limits(
                connection, counts, lambda count: self._progress(Progress("probing limits", count))
            )
        except LimitsProbeError as exc:
            return None, f"the probe failed: {exc}"
        note = None
        if cost.block_parameters is None:
            note = f"no compute roofline: {cost.note}"
        if limits.note:
            note = f"{note}; {limits.note}" if note else limits.note
        return Roofline(cost, limits), note

    def _sweep(
        self, runner: SweepRunner, workload: Workload, model_facts: ModelFacts
    ) -> tuple[MeasuredSweep, Verdict]:
        """Sample until every threshold is decided or ``max_rounds`` is reached."""
        sweep = MeasuredSweep.of(runner.run(workload, model_facts, self.threads, self.rounds))

        def take_more(more: dict[int, int]) -> None:
            runner.extend(sweep, workload, more)

        # the saved entry this sweep is compared with carries a #n after the first
        # sweep of the same workload in a test (saved_runs.entry_name)
        repeat = 1 + sum(
            1 for s in self.sweeps if s.model.name == sweep.model.name and s.kind == sweep.kind
        )

        wanted = self._state.sample_plan(self._nodeid, repeat, self.max_rounds)
        verdict = decide_adaptively(
            sweep, self.thresholds, self.rounds, self.max_rounds, take_more, wanted
        )
        return sweep, verdict


def _calibrated(calibrate: Callable[[], str]) -> str:
    try:
        return calibrate()
    except CalibrationError:
        raise
    except OllamaCpuError as exc:
        raise CalibrationError(f"while building the prompt: {exc}") from None


def _fail(exc: Exception) -> NoReturn:
    """Fail the test with the plugin's message alone, not chained to ``exc``."""
    __tracebackhide__ = True
    failure = pytest.fail.Exception(str(exc), pytrace=False)
    failure.__suppress_context__ = True
    raise failure
