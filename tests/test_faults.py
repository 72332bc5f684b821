"""A server that misbehaves mid-sweep, on the fake server: the faults a real Ollama
cannot be made to produce on cue (an error status, a reply without timings or cut
off, a body that stalls or trickles, a huge one). Each must end the test in bounded
time with a message that says what happened and what to do, keeping every sample
measured before the fault in the summary (INCOMPLETE) and in the JSON file.
The faults a real server produces on cue (killed mid-request, stopped between
requests) are in test_e2e_faults.py."""

from __future__ import annotations

import json
import time
import tracemalloc
from collections.abc import Callable, Mapping
from typing import Any

import pytest

from pytest_ollama_cpu.client import (
    REPEAT_GUARD_PIECES,
    BadReply,
    OllamaClient,
    RepeatStopped,
    ReplyTooLarge,
    RequestTimedOut,
    ServerFailed,
    Timings,
)

from .conftest import run_fake
from .fake_ollama import Behaviour, FakeOllama

# a warm-up and 2 rounds at 1 thread, a warm-up and 2 rounds at 2 threads
SWEEP = """
import pytest

@pytest.mark.threads(1, 2, rounds=2)
def test_sweep(ollama_cpu):
    ollama_cpu.generate("hello", num_predict=8)
"""

#: requests answered well: all of 1 thread, the warm-up and round 1 at 2 threads
BEFORE_THE_FAULT = 5

TIMEOUT = 1.0


def sweep_into_a_fault(
    pytester: pytest.Pytester, behaviour: Behaviour
) -> tuple[pytest.RunResult, dict[str, object], float]:
    """Run SWEEP against a fake that goes wrong at round 2 of 2 threads:
    (the run, its one saved sweep, seconds the run took)."""
    pytester.makepyfile(SWEEP)
    out = pytester.path / "partial.json"
    with FakeOllama(behaviour) as fake:
        started = time.monotonic()
        result = run_fake(
            pytester, fake, f"--ollama-cpu-timeout={TIMEOUT:g}", f"--ollama-cpu-json={out}"
        )
        took = time.monotonic() - started
    result.assert_outcomes(failed=1)
    (sweep,) = json.loads(out.read_text())["sweeps"]
    return result, sweep, took


def assert_every_sample_kept(result: pytest.RunResult, sweep: dict[str, object]) -> None:
    """Both rounds at 1 thread and round 1 at 2 threads, in the table and the JSON."""
    result.stdout.fnmatch_lines(
        [
            "*The sweep stopped at 2 threads after 1 of 2 rounds; samples kept: 2 at 1 "
            "thread, 1 at 2 threads.",
            "*= ollama-cpu: thread sweeps =*",
            "*threads*runner*n*",
            "*1*2*0*",
            "*2*1*0*",
            "*INCOMPLETE: *",
        ]
    )
    assert sweep["complete"] is False
    results = sweep["results"]
    assert isinstance(results, list)
    assert [(r["threads"], len(r["samples"])) for r in results] == [(1, 2), (2, 1)]


def test_an_error_status_mid_sweep(pytester: pytest.Pytester) -> None:
    result, sweep, took = sweep_into_a_fault(
        pytester, Behaviour(fault="error", fault_after=BEFORE_THE_FAULT)
    )
    result.stdout.fnmatch_lines(
        [
            "*the Ollama server at * failed while generating with tiny: llama runner process "
            "has terminated: signal: killed (HTTP 500). Its log says more.",
        ]
    )
    assert_every_sample_kept(result, sweep)
    assert "(HTTP 500)" in str(sweep["error"])
    assert took < 30


@pytest.mark.parametrize(
    "missing",
    [("eval_duration",), ("done", "total_duration", "eval_count", "eval_duration")],
    ids=["no-eval-duration", "not-finished"],
)
def test_a_reply_without_its_timings(pytester: pytest.Pytester, missing: tuple[str, ...]) -> None:
    result, sweep, took = sweep_into_a_fault(
        pytester, Behaviour(fault="missing_fields", fault_after=BEFORE_THE_FAULT, missing=missing)
    )
    result.stdout.fnmatch_lines(
        [
            f"*the Ollama server at * replied to generating with tiny without {missing[0]}*"
            "which every finished Ollama reply carries*--ollama-cpu-host*",
        ]
    )
    assert_every_sample_kept(result, sweep)
    assert took < 30


def test_a_streamed_reply_cut_short_is_named_as_such(pytester: pytest.Pytester) -> None:
    """A stream of token pieces that ends before its last piece (done, with the timings)
    was cut: not "not an Ollama server", which a reply of one piece without done is."""
    result, sweep, took = sweep_into_a_fault(
        pytester, Behaviour(fault="cut_stream", fault_after=BEFORE_THE_FAULT)
    )
    result.stdout.fnmatch_lines(
        [
            "*the Ollama server at * ended its streamed reply while generating with tiny after "
            "3 pieces without the last one (done, with the request's timings): the connection "
            "was cut or the server stopped mid-reply. Check its log.",
        ]
    )
    result.stdout.no_fnmatch_line("*which every finished Ollama reply carries*")
    assert_every_sample_kept(result, sweep)
    assert took < 30


@pytest.mark.parametrize("kind", ["generate", "chat"])
def test_a_streamed_reply_the_runaway_guard_stopped_is_named_as_such(kind: str) -> None:
    """Ollama ends a reply whose token (trimmed) came 31 times in a row with HTTP 200 and
    no done piece (the cause of the 'cut' chat replies in CI): that is the model
    repeating itself, not a cut connection, and the message says which token."""
    with FakeOllama(Behaviour(repeat_on=(1,))) as fake:
        client = OllamaClient(fake.host, timeout=5)
        with pytest.raises(RepeatStopped) as stopped:
            if kind == "chat":
                client.chat("tiny", [{"role": "user", "content": "x"}], {}, on_first=lambda: None)
            else:
                client.generate("tiny", "x", {}, on_first=lambda: None)
        # the next request on the same pooled connection is read whole
        assert client.generate("tiny", "x", {"num_predict": 8}, on_first=lambda: None).eval_count
        client.close()
    assert isinstance(stopped.value, BadReply)
    what = "chatting with" if kind == "chat" else "generating with"
    assert str(stopped.value).startswith(
        f"the Ollama server at {fake.host} ended its streamed reply while {what} tiny after "
        "34 pieces without the last one (done, with the request's timings): the model wrote "
        f"the same token (white space) {REPEAT_GUARD_PIECES} times in a row, and Ollama stops "
        "such a reply as a runaway"
    )


def test_a_stream_cut_within_a_shorter_run_of_one_token_is_not_called_the_guard() -> None:
    # the fake's cut stream is 3 pieces of "ok": a run, but far shorter than the guard's
    with FakeOllama(Behaviour(fault="cut_stream")) as fake:
        client = OllamaClient(fake.host, timeout=5)
        with pytest.raises(BadReply, match="the connection was cut") as cut:
            client.generate("tiny", "x", {}, on_first=lambda: None)
        client.close()
    assert not isinstance(cut.value, RepeatStopped)


def test_a_reply_that_generated_nothing(pytester: pytest.Pytester) -> None:
    """Ollama leaves out an eval_count and eval_duration of 0: a reply without both
    generated no token, and says so rather than that the server is not Ollama."""
    result, sweep, took = sweep_into_a_fault(
        pytester, Behaviour(fault="missing_fields", fault_after=BEFORE_THE_FAULT)
    )
    result.stdout.fnmatch_lines(["*eval_count 0*"])
    result.stdout.no_fnmatch_line("*which every finished Ollama reply carries*")
    assert_every_sample_kept(result, sweep)
    assert took < 30


def test_a_malformed_reply(pytester: pytest.Pytester) -> None:
    result, sweep, took = sweep_into_a_fault(
        pytester, Behaviour(fault="malformed", fault_after=BEFORE_THE_FAULT)
    )
    result.stdout.fnmatch_lines(
        ["*the Ollama server at * sent a reply that is not Ollama's while generating with tiny*"]
    )
    result.stdout.no_fnmatch_line("*Traceback*")
    assert_every_sample_kept(result, sweep)
    assert took < 30


@pytest.mark.parametrize("fault", ["stall", "trickle"])
def test_a_reply_that_never_ends(pytester: pytest.Pytester, fault: str) -> None:
    result, sweep, took = sweep_into_a_fault(
        pytester, Behaviour(fault=fault, fault_after=BEFORE_THE_FAULT)
    )
    result.stdout.fnmatch_lines(
        [
            f"*the Ollama server at * took longer than {TIMEOUT:g}s while generating with tiny*"
            "Raise --ollama-cpu-timeout*",
        ]
    )
    assert_every_sample_kept(result, sweep)
    # the timeout is a deadline for the whole request, body included
    assert took < 15


@pytest.mark.parametrize("declared", [False, True], ids=["unannounced", "declared"])
def test_a_huge_reply(pytester: pytest.Pytester, declared: bool) -> None:
    behaviour = Behaviour(fault="huge", fault_after=BEFORE_THE_FAULT, huge_declared=declared)
    result, sweep, took = sweep_into_a_fault(pytester, behaviour)
    result.stdout.fnmatch_lines(
        ["*the Ollama server at * sent more than 16 MiB while generating with tiny*"]
    )
    assert_every_sample_kept(result, sweep)
    assert behaviour.fault_bytes_sent < 64 * 2**20  # the client stopped reading
    assert took < 30


def test_a_huge_reply_is_not_read_into_memory() -> None:
    behaviour = Behaviour(fault="huge", huge_bytes=100 * 2**20)
    with FakeOllama(behaviour) as fake:
        client = OllamaClient(fake.host, timeout=30)
        tracemalloc.start()
        try:
            with pytest.raises(ReplyTooLarge):
                client.generate("tiny", "x", {"num_predict": 8})
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
            client.close()
    # the fake's own 1 MiB chunk is traced too
    assert peak < 40 * 2**20, f"{peak / 2**20:.0f} MiB held for a 100 MiB reply"


def test_the_timeout_bounds_a_trickle_as_a_whole() -> None:
    with FakeOllama(Behaviour(fault="trickle")) as fake:
        client = OllamaClient(fake.host, timeout=0.5)
        started = time.monotonic()
        with pytest.raises(RequestTimedOut, match="took longer than 0.5s"):
            client.generate("tiny", "x", {"num_predict": 8})
        assert time.monotonic() - started < 1.5
        client.close()


def test_the_timeout_bounds_a_stall_after_the_headers() -> None:
    with FakeOllama(Behaviour(fault="stall")) as fake:
        client = OllamaClient(fake.host, timeout=0.5)
        started = time.monotonic()
        with pytest.raises(RequestTimedOut):
            client.generate("tiny", "x", {"num_predict": 8})
        assert time.monotonic() - started < 1.5
        client.close()


def test_a_healthy_reply_after_a_fault_is_read_whole() -> None:
    """The limits are per request: a client that met a fault goes on working."""
    behaviour = Behaviour(fault="error", fault_after=0)
    with FakeOllama(behaviour) as fake:
        client = OllamaClient(fake.host, timeout=5)
        with pytest.raises(ServerFailed):
            client.generate("tiny", "x", {"num_predict": 8})
        behaviour.fault = None
        assert client.generate("tiny", "x", {"num_predict": 8}).eval_count == 8
        client.close()


def test_a_fault_while_taking_more_keeps_the_earlier_samples_and_the_new() -> None:
    """The adaptive loop's extra rounds go through the same path: a fault there keeps
    the first look's samples and those of the extra rounds taken before it."""
    from pytest_ollama_cpu.sampler import SweepInterrupted, SweepRunner

    from .test_sampler import MODEL, SERVER, TWO_CPUS, WORKLOAD, StubClient

    class FailingClient(StubClient):
        def generate(
            self,
            model: str,
            prompt: str,
            options: Mapping[str, Any],
            keep_alive: str | None = None,
            on_first: Callable[[], None] | None = None,
        ) -> Timings:
            if len(self.requests) == 7:  # round 2 of the extra rounds at 2 threads
                raise ServerFailed("the server failed")
            return super().generate(model, prompt, options, keep_alive, on_first)

    client = FailingClient()
    runner = SweepRunner(client, None, SERVER, TWO_CPUS)
    sweep = runner.run(WORKLOAD, MODEL, [1, 2], 2)
    with pytest.raises(SweepInterrupted) as failure:
        runner.extend(sweep, WORKLOAD, {1: 2, 2: 2})  # 2 threads first: still loaded
    assert "samples kept: 2 at 1 thread, 3 at 2 threads." in str(failure.value)
    assert failure.value.sweep is sweep and not sweep.complete
    assert [s.round for s in sweep[2].samples] == [1, 2, 3]
    assert len(sweep[1].samples) == 2
