"""The plugin's behaviour in a pytest run, against the fake server."""

from __future__ import annotations

import json
import re
from collections.abc import Callable

import pytest

from .conftest import assert_usage_error, run_fake
from .fake_ollama import Behaviour, FakeOllama

SWEEP_TEST = """
import pytest

@pytest.mark.threads(1, 2, rounds=2)
def test_sweep(ollama_cpu):
    sweep = ollama_cpu.generate("hello", num_predict=8)
    assert sweep[2].tokens_per_second.median > sweep[1].tokens_per_second.median
    assert sweep.speedup(1) == 1.0
    assert sweep.efficiency(2) == pytest.approx(sweep.speedup(2) / 2)
"""


def test_skipped_without_the_flag_with_a_reason_naming_it(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        SWEEP_TEST
        + """
def test_without_marker(ollama_cpu):
    ollama_cpu.generate("x")

def test_ordinary():
    pass
"""
    )
    result = pytester.runpytest("-rs")
    result.assert_outcomes(passed=1, skipped=2)
    result.stdout.fnmatch_lines(["*run pytest with --ollama-cpu to measure it*"])
    result.stdout.no_fnmatch_line("*ollama-cpu: host*")


def test_the_plugin_can_be_switched_off(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_plain():\n    pass\n")
    result = pytester.runpytest("-p", "no:ollama_cpu")
    result.assert_outcomes(passed=1)
    result = pytester.runpytest("-p", "no:ollama_cpu", "--ollama-cpu")
    assert result.ret == pytest.ExitCode.USAGE_ERROR


@pytest.mark.parametrize(
    ("marker", "message"),
    [
        ("threads(0)", "thread count 0 must be 1 or more"),
        ("threads(1, 'many')", "thread count 'many' is not a whole number"),
        ("threads(1, rounds=-1)", "rounds=-1 must be a whole number"),
        ("threads(1, min_speed=3)", "unknown keyword min_speed"),
    ],
)
def test_bad_marker_is_a_collection_error_naming_test_and_argument(
    pytester: pytest.Pytester, marker: str, message: str
) -> None:
    pytester.makepyfile(
        f"""
import pytest

@pytest.mark.{marker}
def test_bad(ollama_cpu):
    pass
"""
    )
    # also without --ollama-cpu: a typo should not wait for the next measuring run
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(
        [
            "*ERROR collecting test_bad_marker*",
            f"*test_bad_marker*::test_bad: bad @pytest.mark.threads*{message}*",
            "*Interrupted: 1 error during collection*",
        ]
    )


BAD_MARKERS = {
    "test_first": """
import pytest

@pytest.mark.threads(0, 2)
def test_zero(ollama_cpu):
    pass

@pytest.mark.threads(1, colour="red")
def test_colour(ollama_cpu):
    pass

@pytest.mark.threads(1, 2)
def test_good(ollama_cpu):
    pass
""",
    "test_second": """
import pytest

pytestmark = pytest.mark.threads("many")

def test_a(ollama_cpu):
    pass

def test_b(ollama_cpu):
    pass
""",
    "test_fine": "def test_plain():\n    pass\n",
}


@pytest.mark.parametrize("xdist", [[], ["-n", "2"]], ids=["plain", "xdist"])
def test_every_bad_marker_is_listed_in_one_run(pytester: pytest.Pytester, xdist: list[str]) -> None:
    pytester.makepyfile(**BAD_MARKERS)
    result = pytester.runpytest(*xdist)
    assert result.ret != pytest.ExitCode.OK
    # each names its test (a module's marker its module), shows the marker and says what
    # to change; as with any collection error, none of the tests of those modules ran
    result.stdout.fnmatch_lines(
        [
            "*ERROR collecting test_first.py*",
            "test_first.py::test_zero: bad @pytest.mark.threads(0, 2): thread count 0 must be "
            "1 or more",
            "test_first.py::test_colour: bad @pytest.mark.threads(1, colour='red'): unknown "
            "keyword colour; the threads marker takes rounds, max_rounds, *",
            "*ERROR collecting test_second.py*",
            "test_second.py: bad @pytest.mark.threads('many'): thread count 'many' is not a "
            "whole number; use ints, a range or 'auto'",
        ],
        consecutive=False,
    )
    output = result.stdout.str()
    # the module's marker once, not once per test it covers
    assert [line for line in result.outlines if line.startswith("test_second.py")] == [
        "test_second.py: bad @pytest.mark.threads('many'): thread count 'many' is not a whole "
        "number; use ints, a range or 'auto'"
    ]
    assert "test_good" not in output and "Traceback" not in output
    assert "INTERNALERROR" not in output + result.stderr.str()
    if not xdist:
        assert result.ret == pytest.ExitCode.INTERRUPTED
        result.stdout.fnmatch_lines(["*Interrupted: 2 errors during collection*"])
        result.assert_outcomes(errors=2)


def test_a_marker_without_the_fixture_is_warned_about(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
import pytest

pytestmark = pytest.mark.threads(1, 2)  # a module's mark covers helpers too: no warning

@pytest.mark.threads(1, 2)
def test_forgot_the_fixture():
    pass

def test_helper():
    pass
"""
    )
    with FakeOllama(Behaviour()) as fake:
        result = pytester.runpytest(
            "--ollama-cpu", f"--ollama-cpu-host={fake.host}", "-W", "default"
        )
        strict = pytester.runpytest(
            "--ollama-cpu",
            f"--ollama-cpu-host={fake.host}",
            "-W",
            "error::pytest_ollama_cpu.plugin.OllamaCpuWarning",
        )
    # without --ollama-cpu it is not skipped as a performance test would be: it runs, warned
    plain = pytester.runpytest("-W", "default::pytest_ollama_cpu.plugin.OllamaCpuWarning")
    plain.assert_outcomes(passed=2)
    assert plain.stdout.str().count("OllamaCpuWarning") == 1
    # under -W error (or filterwarnings = error) the test fails with the same words
    strict.assert_outcomes(passed=1, failed=1)
    strict.stdout.fnmatch_lines(["OllamaCpuWarning: @pytest.mark.threads(...) on a test*"])
    assert "plugin.py" not in strict.stdout.str()
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            "*test_forgot_the_fixture*",
            "*OllamaCpuWarning: @pytest.mark.threads(...) on a test that does not use the "
            "ollama_cpu fixture measures nothing: add ollama_cpu to the test's arguments*",
        ]
    )
    assert result.stdout.str().count("OllamaCpuWarning") == 1


@pytest.mark.parametrize(
    ("args", "env", "ini", "message"),
    [
        (
            ["--ollama-cpu-rounds=abc"],
            {},
            "",
            "--ollama-cpu-rounds: 'abc' (from the command line) is not "
            "valid: expected a whole number of 1 or more",
        ),
        (
            [],
            {"OLLAMA_CPU_ROUNDS": "0"},
            "",
            "--ollama-cpu-rounds: '0' (from environment variable OLLAMA_CPU_ROUNDS)*",
        ),
        (
            [],
            {},
            "ollama_cpu_num_predict = -5",
            "--ollama-cpu-num-predict: '-5' (from ini option ollama_cpu_num_predict)*",
        ),
        (["--ollama-cpu-threads=1,zero"], {}, "", "*'zero' is not a whole number*"),
        (["--ollama-cpu-timeout=0"], {}, "", "*expected a finite number of seconds above 0*"),
        (["--ollama-cpu-host=ftp://x"], {}, "", "*only http:// and https:// reach*not ftp://*"),
        (
            ["--ollama-cpu-retakes=-1"],
            {},
            "",
            "--ollama-cpu-retakes: '-1' (from the command line) is not valid: expected a whole "
            "number of 0 or more (0: *",
        ),
        (
            [],
            {},
            "ollama_cpu_quiet_wait = soon",
            "--ollama-cpu-quiet-wait: 'soon' (from ini option ollama_cpu_quiet_wait) is not "
            "valid: expected a finite number of seconds, 0 or more (0: *",
        ),
        (["--ollama-cpu-quiet-wait=nan"], {}, "", "*a finite number of seconds, 0 or more*"),
        (["--ollama-cpu-quiet-wait=inf"], {}, "", "*a finite number of seconds, 0 or more*"),
    ],
)
def test_bad_settings_say_where_they_came_from(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    env: dict[str, str],
    ini: str,
    message: str,
) -> None:
    assert_usage_error(pytester, monkeypatch, args, env, ini, message)


def test_the_retake_budget_comes_from_the_options(pytester: pytest.Pytester) -> None:
    from pytest_ollama_cpu.disturbance import RetakeBudget
    from pytest_ollama_cpu.options import resolve_settings

    pytester.makeini("[pytest]\nollama_cpu_retakes = 2\nollama_cpu_quiet_wait = 0\n")
    config = pytester.parseconfig()
    settings = resolve_settings(config.getoption, config.getini, {})
    assert settings.retake_budget == RetakeBudget(retakes=2, quiet_wait=0.0)
    config = pytester.parseconfig("--ollama-cpu-retakes=0", "--ollama-cpu-quiet-wait=2.5")
    settings = resolve_settings(config.getoption, config.getini, {})
    assert settings.retake_budget == RetakeBudget(retakes=0, quiet_wait=2.5)
    config = pytester.parseconfig("-p", "no:cacheprovider")
    assert resolve_settings(config.getoption, lambda _name: None, {}).retake_budget == (
        RetakeBudget(retakes=5, quiet_wait=10.0)
    )


def test_precedence_marker_cli_env_ini(
    pytester: pytest.Pytester, fake_ollama: FakeOllama, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makeini("[pytest]\nollama_cpu_rounds = 7\nollama_cpu_threads = 1\n")
    pytester.makepyfile(
        """
import pytest

def test_settings(ollama_cpu):
    ollama_cpu.generate("x", num_predict=8)

@pytest.mark.threads(1, rounds=1)
def test_marker_rounds(ollama_cpu):
    ollama_cpu.generate("x", num_predict=8)
"""
    )
    requests = fake_ollama.behaviour.requests
    # ini alone: 1 warm-up + 7 rounds for the first test, 1 + 1 for the second
    run_fake(pytester, fake_ollama).assert_outcomes(passed=2)
    assert len(requests) == 8 + 2
    requests.clear()
    monkeypatch.setenv("OLLAMA_CPU_ROUNDS", "3")
    run_fake(pytester, fake_ollama).assert_outcomes(passed=2)
    assert len(requests) == 4 + 2
    requests.clear()
    run_fake(pytester, fake_ollama, "--ollama-cpu-rounds=2").assert_outcomes(passed=2)
    assert len(requests) == 3 + 2


def test_a_sweep_requests_and_reports(pytester: pytest.Pytester, fake_ollama: FakeOllama) -> None:
    pytester.makepyfile(SWEEP_TEST)
    result = run_fake(pytester, fake_ollama)
    result.assert_outcomes(passed=1)
    sent = [r["options"] for r in fake_ollama.behaviour.requests]
    assert [o["num_thread"] for o in sent] == [1, 1, 1, 2, 2, 2]
    assert all(o["num_predict"] == 8 and o["temperature"] == 0 for o in sent)
    assert len({o["seed"] for o in sent}) == 1
    # each prompt starts with a line of its own, of one length, whose first character
    # differs from the last request's: Ollama's prompt cache cannot serve any of them
    prompts = [r["prompt"] for r in fake_ollama.behaviour.requests]
    assert all(re.fullmatch(r"[1-9][0-9]{7}\.\nhello", p) for p in prompts), prompts
    assert all(a[0] != b[0] for a, b in zip(prompts, prompts[1:], strict=False))
    result.stdout.fnmatch_lines(
        [
            "ollama-cpu: host http://127.0.0.1:*, model tiny, rounds 5, num_predict 32*",
            "ollama-cpu: Ollama 0.0.0-fake; server pid *",
            "ollama-cpu: model tiny: fake, 1M, Q4, 0 MB, digest ffffffffffff",
            "ollama-cpu: *usable CPUs*",
            "*= ollama-cpu: thread sweeps =*",
            "*::test_sweep: generate with tiny (1M, Q4), 8 tokens per request, 8-token prompt "
            "(a unique first line per request: no prompt cache hits)",
            "*threads*runner*tokens/s*speedup*efficiency*prefill tok/s*pp speedup*TTFT s*"
            "thread util*machine util*",
            "*1*20.0*1.00*1.00*",
            "*2*34.8*1.74*0.87*",
        ]
    )


def test_without_a_marker_the_default_threads_are_swept(
    pytester: pytest.Pytester, fake_ollama: FakeOllama
) -> None:
    pytester.makepyfile(
        """
def test_default(ollama_cpu):
    sweep = ollama_cpu.chat([{"role": "user", "content": "hi"}], num_predict=8)
    assert [r.threads for r in sweep] == ollama_cpu.threads
"""
    )
    run_fake(
        pytester, fake_ollama, "--ollama-cpu-rounds=1", "--ollama-cpu-threads=1,3"
    ).assert_outcomes(passed=1)
    assert [r["options"]["num_thread"] for r in fake_ollama.behaviour.requests] == [1, 1, 3, 3]
    assert all("messages" in r for r in fake_ollama.behaviour.requests)


def test_json_has_every_raw_sample_and_the_machine(
    pytester: pytest.Pytester, fake_ollama: FakeOllama
) -> None:
    pytester.makepyfile(SWEEP_TEST)
    out = pytester.path / "results.json"
    result = run_fake(pytester, fake_ollama, f"--ollama-cpu-json={out}")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([f"ollama-cpu: samples written to {out}"])
    data = json.loads(out.read_text())
    assert data["format"] == "pytest-ollama-cpu" and data["schema_version"] == 1
    assert data["machine"]["usable_cpus"] > 0 and data["machine"]["cpu_model"]
    assert data["server"]["version"] == "0.0.0-fake"
    (sweep,) = data["sweeps"]
    assert sweep["test"].endswith("::test_sweep")
    assert sweep["model"]["digest"] == "f" * 64
    assert [r["threads"] for r in sweep["results"]] == [1, 2]
    two = sweep["results"][1]
    assert len(two["samples"]) == 2 and two["warmup"]["round"] == 0
    assert two["samples"][0]["timings"]["eval_count"] == 8
    assert two["summary"]["tokens_per_second"]["median"] == pytest.approx(34.82, abs=0.01)
    assert two["speedup"] == pytest.approx(2**0.8, rel=1e-3)
    assert not list(pytester.path.glob(".results.json.*.tmp"))

    # a second run replaces our own file...
    run_fake(pytester, fake_ollama, f"--ollama-cpu-json={out}").assert_outcomes(passed=1)
    assert json.loads(out.read_text())["datetime"] != data["datetime"]


def test_json_never_overwrites_a_file_that_is_not_ours(
    pytester: pytest.Pytester, fake_ollama: FakeOllama
) -> None:
    pytester.makepyfile(SWEEP_TEST)
    precious = pytester.path / "notes.json"
    precious.write_text('{"mine": true}')
    result = run_fake(pytester, fake_ollama, f"--ollama-cpu-json={precious}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*notes.json already exists and is not a pytest-ollama-cpu*"])
    assert precious.read_text() == '{"mine": true}'
    result = run_fake(pytester, fake_ollama, f"--ollama-cpu-json={pytester.path}/nope/r.json")
    result.stderr.fnmatch_lines(["*folder */nope does not exist*"])


def test_nothing_listening_is_an_error_that_says_what_to_do(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(SWEEP_TEST)
    result = pytester.runpytest(
        "--ollama-cpu", "--ollama-cpu-host=127.0.0.1:9", "--ollama-cpu-model=tiny"
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "ollama-cpu: NOT CONNECTED: no Ollama server answered at http://127.0.0.1:9*",
            "*no Ollama server answered at http://127.0.0.1:9*ollama serve*--ollama-cpu-host*",
        ]
    )
    result.stdout.no_fnmatch_line("*Traceback*")


def test_a_model_that_is_not_pulled(pytester: pytest.Pytester, fake_ollama: FakeOllama) -> None:
    pytester.makepyfile(SWEEP_TEST)
    result = pytester.runpytest(
        "--ollama-cpu", f"--ollama-cpu-host={fake_ollama.host}", "--ollama-cpu-model=llama9"
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "ollama-cpu: MODEL NOT AVAILABLE: model 'llama9' is not on*",
            "*model 'llama9' is not on the Ollama server*models there: tiny*'ollama pull llama9'*",
        ]
    )


def test_no_model_configured(pytester: pytest.Pytester, fake_ollama: FakeOllama) -> None:
    pytester.makepyfile(SWEEP_TEST)
    result = pytester.runpytest("--ollama-cpu", f"--ollama-cpu-host={fake_ollama.host}")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "ollama-cpu: NO MODEL GIVEN: pass --ollama-cpu-model NAME or set OLLAMA_CPU_MODEL;*",
            "*no model given: pass --ollama-cpu-model NAME*",
        ]
    )


def test_a_server_that_dies_mid_sweep_keeps_what_was_measured(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(SWEEP_TEST)
    out = pytester.path / "partial.json"
    # warm-up + 2 rounds at 1 thread, then the warm-up at 2 threads, then it dies
    with FakeOllama(Behaviour(die_after=4)) as fake:
        result = run_fake(pytester, fake, f"--ollama-cpu-json={out}")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*lost the Ollama server at * while generating with tiny*",
            "*The sweep stopped at 2 threads after 0 of 2 rounds; samples kept: 2 at 1 thread.",
            "*= ollama-cpu: thread sweeps =*",
            "*1*20.0*1.00*",
            "*INCOMPLETE: lost the Ollama server*",
        ]
    )
    data = json.loads(out.read_text())
    (sweep,) = data["sweeps"]
    assert sweep["complete"] is False and "lost the Ollama server" in sweep["error"]
    assert [r["threads"] for r in sweep["results"]] == [1]


def test_a_server_error_is_reported_with_its_text(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(SWEEP_TEST)
    with FakeOllama(Behaviour(error_status=500)) as fake:
        result = run_fake(pytester, fake)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*failed while generating with tiny: llama runner process has terminated (HTTP 500)*"]
    )


def test_a_request_that_takes_too_long(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(SWEEP_TEST)
    with FakeOllama(Behaviour(hang_seconds=3)) as fake:
        result = run_fake(pytester, fake, "--ollama-cpu-timeout=0.5")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*took longer than 0.5s while generating*--ollama-cpu-timeout*"])


def test_options_the_plugin_owns_are_refused(
    pytester: pytest.Pytester, fake_ollama: FakeOllama
) -> None:
    pytester.makepyfile(
        """
import pytest

@pytest.mark.threads(1)
def test_owned(ollama_cpu):
    with pytest.raises(ValueError, match="num_thread are set by the plugin"):
        ollama_cpu.generate("x", options={"num_thread": 8})
    with pytest.raises(ValueError, match="num_predict=0 must be"):
        ollama_cpu.generate("x", num_predict=0)
    with pytest.raises(TypeError, match="list of messages"):
        ollama_cpu.chat("hello")
"""
    )
    run_fake(pytester, fake_ollama).assert_outcomes(passed=1)
    assert fake_ollama.behaviour.requests == []


def test_a_measured_reply_that_carried_a_model_load_is_taken_again(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(SWEEP_TEST)
    out = pytester.path / "r.json"
    # request 3 is the second measured one at 1 thread: the server reloaded the model
    with FakeOllama(Behaviour(reload_on=(3,))) as fake:
        run_fake(pytester, fake, f"--ollama-cpu-json={out}").assert_outcomes(passed=1)
        assert [r["options"]["num_thread"] for r in fake.behaviour.requests] == [1] * 4 + [2] * 3
    one = json.loads(out.read_text())["sweeps"][0]["results"][0]
    assert [s["round"] for s in one["samples"]] == [1, 2]
    assert all(s["timings"]["load_duration"] < 0.1 for s in one["samples"])


@pytest.mark.parametrize(
    ("stop_after", "said"),
    [
        (
            0,
            "*tiny at 1 thread (warm-up) reported no generation (eval_count 0*"
            "the model stopped at once*",
        ),
        (
            1,
            "*tiny at 1 thread (warm-up) stopped after 1 of the 8 tokens asked "
            "(done_reason 'stop': the model ended its answer, or a stop sequence matched): "
            "a rate from so few tokens is not a generation rate*",
        ),
    ],
)
def test_a_reply_too_short_for_a_rate_is_an_error_that_says_why(
    pytester: pytest.Pytester, stop_after: int, said: str
) -> None:
    pytester.makepyfile(SWEEP_TEST)
    with FakeOllama(Behaviour(stop_after=stop_after)) as fake:
        result = run_fake(pytester, fake)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([said, "*Use a prompt that makes the model write at length*"])
    result.stdout.no_fnmatch_line("*recommended num_thread*")


def _short_on(requests: tuple[int, ...]) -> Behaviour:
    return Behaviour(short_on=requests)


def _repeat_on(requests: tuple[int, ...]) -> Behaviour:
    return Behaviour(repeat_on=requests)


@pytest.mark.parametrize(
    ("faulty", "said"),
    [
        (_short_on, "*stopped after 1 of the 8 tokens asked*(3 requests in a row)*"),
        # Ollama's runaway guard ends a reply whose token repeats 31 times, without its
        # timings: nothing to measure, as from a reply that stops at once
        (
            _repeat_on,
            "*the model wrote the same token (white space) 31 times in a row, and Ollama "
            "stops such a reply as a runaway*(3 requests in a row)*",
        ),
    ],
    ids=["stopped-short", "runaway-guard"],
)
def test_a_reply_with_nothing_to_measure_once_is_asked_again(
    pytester: pytest.Pytester, faulty: Callable[[tuple[int, ...]], Behaviour], said: str
) -> None:
    # what the model writes depends on the request's unique first line: one such reply
    # is retaken with another; three in a row end the sweep
    pytester.makepyfile(SWEEP_TEST)
    with FakeOllama(faulty((2, 5))) as fake:
        result = run_fake(pytester, fake)
        assert len(fake.behaviour.requests) == 6 + 2
    result.assert_outcomes(passed=1)
    with FakeOllama(faulty((2, 3, 4))) as fake:
        result = run_fake(pytester, fake)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([said])


def test_replies_that_stop_short_but_give_a_rate_are_named_in_the_summary(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        """
import pytest

@pytest.mark.threads(1, 2, rounds=2)
def test_sweep(ollama_cpu):
    ollama_cpu.generate("hello", num_predict=32)
"""
    )
    out = pytester.path / "r.json"
    with FakeOllama(Behaviour(stop_after=12)) as fake:
        result = run_fake(pytester, fake, f"--ollama-cpu-json={out}")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "*short replies: 4 of 4 samples stopped after 12 of the 32 tokens asked "
            "(done_reason 'stop': the model ended its answer, or a stop sequence matched); "
            "their rates are over the tokens generated*"
        ]
    )
    sample = json.loads(out.read_text())["sweeps"][0]["results"][0]["samples"][0]
    assert sample["timings"]["eval_count"] == 12
    assert sample["timings"]["done_reason"] == "stop"


TOO_FEW_TOKENS = """
import pytest

@pytest.mark.threads(1)
def test_sweep(ollama_cpu):
    ollama_cpu.generate("hello"{asked})
"""


def test_too_few_tokens_asked_for_a_rate_is_refused(
    pytester: pytest.Pytester, fake_ollama: FakeOllama
) -> None:
    pytester.makepyfile(TOO_FEW_TOKENS.format(asked=", num_predict=7"))
    result = run_fake(pytester, fake_ollama)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*num_predict=7 must be a whole number of 8 or more: a rate from fewer tokens*"]
    )
    assert fake_ollama.behaviour.requests == []


def test_too_few_tokens_in_the_option_is_a_usage_error(
    pytester: pytest.Pytester, fake_ollama: FakeOllama
) -> None:
    pytester.makepyfile(TOO_FEW_TOKENS.format(asked=""))
    result = run_fake(pytester, fake_ollama, "--ollama-cpu-num-predict=7")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--ollama-cpu-num-predict*expected a whole number of 8 or more*"])
    assert fake_ollama.behaviour.requests == []


def test_a_remote_server_measures_throughput_but_not_auto_or_utilization(
    pytester: pytest.Pytester, fake_ollama: FakeOllama, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pytest_ollama_cpu.processes as processes

    monkeypatch.setattr(processes, "is_local", lambda host: False)
    pytester.makepyfile(
        SWEEP_TEST
        + """
def test_auto(ollama_cpu):
    ollama_cpu.generate("x", num_predict=8)
"""
    )
    result = run_fake(pytester, fake_ollama)
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "ollama-cpu: Ollama 0.0.0-fake; *is not on this machine, so CPU utilization cannot "
            "be measured; throughput still is",
            "*this test process's (the server's are not visible)*",
            "*threads 'auto' follows the server's usable CPUs, which cannot be read*"
            "@pytest.mark.threads(1, 2, 4)*",
            "*utilization not measured: *is not on this machine*",
        ]
    )


def test_a_cpu_set_that_does_not_exist_is_refused(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_plain():\n    pass\n")
    result = pytester.runpytest("--ollama-cpu-cpus=0,4096-4100")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["ERROR: --ollama-cpu-cpus: '0,4096-4100' *this machine has no CPU 4096-4100 (it has 0-*"]
    )


def test_a_cpu_set_for_a_server_elsewhere_says_it_cannot_be_applied(
    pytester: pytest.Pytester, fake_ollama: FakeOllama, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pytest_ollama_cpu.processes as processes

    monkeypatch.setattr(processes, "is_local", lambda host: False)
    pytester.makepyfile(SWEEP_TEST)
    result = run_fake(pytester, fake_ollama, "--ollama-cpu-cpus=0")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*--ollama-cpu-cpus 0 cannot be applied: * is not on this machine*taskset -c LIST*"]
    )
    assert fake_ollama.behaviour.requests == []


def test_a_prefill_workload_the_server_cannot_count_fails_saying_so(
    pytester: pytest.Pytester, fake_ollama: FakeOllama
) -> None:
    # the fake counts every prompt as 8 tokens: no length reaches 512
    pytester.makepyfile(
        """
import pytest

@pytest.mark.threads(1, 2)
def test_pp(ollama_cpu):
    ollama_cpu.prefill(512)

@pytest.mark.threads(1)
def test_too_short(ollama_cpu):
    ollama_cpu.prefill(16)
"""
    )
    result = run_fake(pytester, fake_ollama)
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(
        [
            "*could not build a prompt of 512 tokens for this model: the nearest had 8 "
            "(Ollama's prompt_eval_count)*",
            "*tokens=16: a prefill workload needs 32 prompt tokens or more*",
        ]
    )
