"""Settings from the command line, the environment and the ini file: what is refused and why."""

from __future__ import annotations

import pytest

from pytest_ollama_cpu.markers import MarkerError, parse_marker
from pytest_ollama_cpu.options import (
    ALL_OPTIONS,
    ALPHA,
    AUTOSAVE,
    COMPARE,
    COMPARE_FAIL,
    COMPARE_MARKDOWN,
    COMPARE_STRICT,
    CPUS,
    ENABLE,
    HOST,
    HTML,
    INCONCLUSIVE,
    JSON,
    MAX_ROUNDS,
    MIN_EFFICIENCY,
    MIN_MACHINE_UTILIZATION,
    MIN_ROOFLINE,
    MIN_SPEEDUP,
    MIN_UTILIZATION,
    MODEL,
    NUM_PREDICT,
    QUIET_WAIT,
    RETAKES,
    ROOFLINE_PROBE,
    ROUNDS,
    SAVE,
    STORAGE,
    THREADS,
    TIMEOUT,
    OptionSpec,
    Settings,
    resolve_settings,
)

from .conftest import assert_usage_error, run_fake
from .fake_ollama import FakeOllama

SWEEP = """
import pytest

@pytest.mark.threads(1, rounds=1)
def test_sweep(ollama_cpu):
    ollama_cpu.generate("x", num_predict=8)
"""


def test_ini_paths_are_relative_to_the_rootdir_from_any_folder(
    pytester: pytest.Pytester, fake_ollama: FakeOllama, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the ini file's paths mean the same files wherever pytest is started, as
    # pytest's own (testpaths, cache_dir) do
    pytester.makeini(
        "[pytest]\n"
        "ollama_cpu_json = samples.json\n"
        "ollama_cpu_html = report.html\n"
        "ollama_cpu_storage = runs\n"
        "ollama_cpu_compare_markdown = summary.md\n"
    )
    sub = pytester.mkdir("sub")
    (sub / "test_sweep.py").write_text(SWEEP)
    monkeypatch.chdir(sub)
    # compare with the latest run and save: the first run writes its "no baseline yet" note
    result = run_fake(
        pytester,
        fake_ollama,
        "--ollama-cpu-compare",
        "--ollama-cpu-save=first",
        f"--rootdir={pytester.path}",
    )
    result.assert_outcomes(passed=1)
    assert (pytester.path / "samples.json").is_file()
    assert (pytester.path / "report.html").is_file()
    assert list((pytester.path / "runs").glob("*/0001_first.json"))
    assert "no baseline yet" in (pytester.path / "summary.md").read_text()
    for name in ("samples.json", "report.html", "runs", "summary.md"):
        assert not (sub / name).exists()


# -- numeric options -------------------------------------------------------------------------

#: every option that takes a number (or a list of numbers); for those where 0 means
#: something, a word the help must use to say what
NUMERIC = {
    ROUNDS: None,
    MAX_ROUNDS: None,
    NUM_PREDICT: None,
    THREADS: None,
    TIMEOUT: None,
    MIN_SPEEDUP: None,
    MIN_EFFICIENCY: None,
    MIN_UTILIZATION: None,
    MIN_MACHINE_UTILIZATION: None,
    MIN_ROOFLINE: None,
    ALPHA: None,
    RETAKES: "0: at its first disturbed sample",
    QUIET_WAIT: "0 retakes at once",
    CPUS: "e.g. 0-3,8",  # CPU 0 is a CPU
    COMPARE_FAIL: None,
}
#: the rest, and why they are not numbers
NOT_NUMERIC = {
    ENABLE: "a flag",
    AUTOSAVE: "a flag",
    COMPARE_STRICT: "a flag",
    HOST: "a URL (tests/test_hosts.py)",
    MODEL: "a model's name",
    JSON: "a path",
    HTML: "a path",
    STORAGE: "a path",
    COMPARE_MARKDOWN: "a path",
    INCONCLUSIVE: "pass, fail or skip",
    ROOFLINE_PROBE: "on, fresh or off",
    SAVE: "a name",
    COMPARE: "a saved run's number, name or path, looked up among the saved runs",
}
BAD_NUMBERS = ("0", "-1", "nan", "1e309", "inf", "ten")


def test_every_option_is_classified() -> None:
    # a new option must be placed here, so that its numbers get checked below
    assert set(NUMERIC) | set(NOT_NUMERIC) == set(ALL_OPTIONS)
    assert not set(NUMERIC) & set(NOT_NUMERIC)


def _sources(spec: OptionSpec) -> list[str]:
    return ["cli", "ini"] + (["env"] if spec.env else [])


def _given(spec: OptionSpec, value: str) -> str:
    return f"tokens_per_second:{value}" if spec is COMPARE_FAIL else value


@pytest.mark.parametrize(
    ("spec", "value", "source"),
    [
        pytest.param(spec, value, source, id=f"{spec.dest}-{value}-{source}")
        for spec in NUMERIC
        for value in BAD_NUMBERS
        for source in _sources(spec)
    ],
)
def test_a_bad_number_names_the_option_the_value_and_what_is_allowed(
    spec: OptionSpec, value: str, source: str
) -> None:
    text = _given(spec, value)
    stored: object = [text] if spec.repeat else text
    cli = {spec.dest: stored} if source == "cli" else {}
    ini = {spec.ini: stored} if source == "ini" else {}
    env = {spec.env: text} if source == "env" and spec.env else {}
    if spec is COMPARE_FAIL:
        cli[COMPARE.dest] = "latest"  # a rule needs a baseline
    getoption = cli.get
    getini = ini.get
    zero_means = NUMERIC[spec]
    if value == "0" and zero_means is not None:
        # 0 means something here, and the help says what
        resolve_settings(getoption, getini, env)
        assert zero_means in spec.help
        return
    with pytest.raises(pytest.UsageError) as info:
        resolve_settings(getoption, getini, env)
    where = {
        "cli": "the command line",
        "ini": f"ini option {spec.ini}",
        "env": f"environment variable {spec.env}",
    }[source]
    message = str(info.value)
    head = f"{spec.flag}: {text!r} (from {where}) is not valid: "
    assert message.startswith(head), message
    allowed = message[len(head) :]
    # what is allowed, in words a person can act on: a range or an example
    said = ("or more", "above 0", "between", "e.g.", "such as")
    assert any(word in allowed for word in said), message
    if value in ("nan", "inf", "1e309") and "whole number" not in allowed:
        # "above 0" alone would not tell why inf is refused
        assert any(word in allowed for word in ("finite", "between", "e.g.", "such as")), message


@pytest.mark.parametrize(
    ("args", "env", "ini", "message"),
    [
        (
            ["--ollama-cpu-timeout=inf"],
            {},
            "",
            "--ollama-cpu-timeout: 'inf' (from the command line) is not valid: expected a "
            "finite number of seconds above 0, e.g. 300",
        ),
        (
            [],
            {},
            "ollama_cpu_min_speedup = 1e309",
            "--ollama-cpu-min-speedup: '1e309' (from ini option ollama_cpu_min_speedup) is not "
            "valid: expected a finite number above 0, e.g. 1.5",
        ),
        (
            [],
            {"OLLAMA_CPU_ALPHA": "nan"},
            "",
            "--ollama-cpu-alpha: 'nan' (from environment variable OLLAMA_CPU_ALPHA) is not "
            "valid: expected a number between 0 and 0.5, e.g. 0.01",
        ),
    ],
)
def test_a_bad_number_stops_the_run_before_it_starts(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    env: dict[str, str],
    ini: str,
    message: str,
) -> None:
    assert_usage_error(pytester, monkeypatch, args, env, ini, message)


def test_a_threshold_of_inf_in_a_marker_is_refused() -> None:
    with pytest.raises(MarkerError, match=r"min_speedup=inf must be a finite number above 0"):
        parse_marker((1, 2), {"min_speedup": float("inf")})
    with pytest.raises(MarkerError, match=r"min_efficiency=1000.* must be a finite number"):
        parse_marker((1, 2), {"min_efficiency": 10**400})


def test_help_lists_every_option(pytester: pytest.Pytester) -> None:
    # argparse %-formats help texts: a bare "5%" in one made `pytest --help` crash
    result = pytester.runpytest("--help")
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["*--ollama-cpu-compare-fail=EXPR*", "*tokens_per_second:5% *"])
    for spec in ALL_OPTIONS:
        result.stdout.fnmatch_lines([f"*{spec.flag}*", f"*{spec.ini} (*"])


@pytest.mark.parametrize("source", ["cli", "ini", "env"])
def test_the_roofline_probe_takes_on_fresh_or_off(source: str) -> None:
    def settings(value: str) -> Settings:
        cli = {ROOFLINE_PROBE.dest: value} if source == "cli" else {}
        ini = {ROOFLINE_PROBE.ini: value} if source == "ini" else {}
        env = {"OLLAMA_CPU_ROOFLINE": value} if source == "env" else {}
        return resolve_settings(cli.get, ini.get, env)

    assert settings(" Fresh ").roofline == "fresh"
    assert "roofline probe off" in settings("off").describe()
    with pytest.raises(pytest.UsageError, match="'sometimes' .* expected one of on, fresh, off"):
        settings("sometimes")
