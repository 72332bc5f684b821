"""Settings from the command line, the environment and the ini file: what is refused and why."""

from __future__ import annotations

import os
import re
from dataclasses import fields, replace
from pathlib import Path

import pytest

from pytest_ollama_cpu.disturbance import RetakeBudget
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
    THRESHOLD_OPTIONS,
    TIMEOUT,
    OptionSpec,
    Settings,
    Sources,
    resolve_settings,
)
from pytest_ollama_cpu.rules import parse_rule
from pytest_ollama_cpu.thresholds import Thresholds

from .conftest import PLUGIN_ENV, ROOT, assert_usage_error, run_fake
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


# -- precedence, read directly (resolve_settings) ----------------------------------------------

ROOTDIR = Path("/the/rootdir")  # where the ini file's relative paths lead
LAST_CPU = (os.cpu_count() or 1) - 1

#: two good values for every option that takes one, as given and as read (a path as
#: given on the command line; from the ini file it is in ROOTDIR), and its default
GOOD: dict[OptionSpec, tuple[str, str, object, object, object]] = {
    HOST: ("a:1", "b:2", "http://a:1", "http://b:2", "http://127.0.0.1:11434"),
    MODEL: ("tiny", "big", "tiny", "big", None),
    ROUNDS: ("3", "4", 3, 4, 5),
    MAX_ROUNDS: ("9", "12", 9, 12, None),
    NUM_PREDICT: ("8", "64", 8, 64, 32),
    THREADS: ("1, 2", "auto", (1, 2), ("auto",), ("auto",)),
    TIMEOUT: ("2.5", "60", 2.5, 60.0, 300.0),
    JSON: ("a.json", "b.json", Path("a.json"), Path("b.json"), None),
    HTML: ("a.html", "b.html", Path("a.html"), Path("b.html"), None),
    **{spec: ("1.5", "2", 1.5, 2.0, None) for spec in THRESHOLD_OPTIONS.values()},
    ALPHA: ("0.05", "0.2", 0.05, 0.2, 0.01),
    INCONCLUSIVE: (" Fail", "skip", "fail", "skip", "pass"),
    ROOFLINE_PROBE: ("OFF", "fresh", "off", "fresh", "on"),
    RETAKES: ("0", "3", 0, 3, 5),
    QUIET_WAIT: ("0", "2.5", 0.0, 2.5, 10.0),
    CPUS: ("0", f"0-{LAST_CPU}", (0,), tuple(range(LAST_CPU + 1)), None),
    SAVE: ("first", "second", "first", "second", None),
    STORAGE: ("runs", "old", Path("runs"), Path("old"), Path(".benchmarks")),
    COMPARE: ("latest", "3", "latest", "3", None),
    COMPARE_FAIL: (
        "ttft:10%",
        "tokens_per_second:5%",
        (parse_rule("ttft:10%"),),
        (parse_rule("tokens_per_second:5%"),),
        (),
    ),
    COMPARE_MARKDOWN: ("a.md", "b.md", Path("a.md"), Path("b.md"), None),
}
FLAGS = (ENABLE, AUTOSAVE, COMPARE_STRICT)


def test_every_option_has_good_values_here() -> None:
    assert set(GOOD) | set(FLAGS) == set(ALL_OPTIONS)


def setting(settings: Settings, name: str) -> object:
    """A setting by its OptionSpec's name, wherever Settings keeps it."""
    for holder in (settings, settings.thresholds, settings.retake_budget):
        if name in {f.name for f in fields(holder)}:
            return getattr(holder, name)
    raise AssertionError(f"no setting {name}")


def test_every_option_fills_a_setting() -> None:
    # an OptionSpec's setting is a Settings field, or one inside the thresholds or the
    # retake budget; the host fills two (the URL and its credentials)
    parts = {"thresholds", "retake_budget", "credentials"}
    expected = {f.name for f in fields(Settings)} - parts
    expected |= {f.name for f in fields(Thresholds)} | {f.name for f in fields(RetakeBudget)}
    assert sorted(spec.setting for spec in ALL_OPTIONS) == sorted(expected)


def _resolve(spec: OptionSpec, cli: str | None, env: str | None, ini: str | None) -> object:
    def stored(text: str | None) -> object:
        return [text] if spec.repeat and text is not None else text

    options = {spec.dest: stored(cli)}
    if spec is COMPARE_FAIL:
        options[COMPARE.dest] = "latest"  # a rule needs a baseline
    environ = {spec.env: env} if spec.env and env is not None else {}
    settings = resolve_settings(options.get, {spec.ini: stored(ini)}.get, environ, ROOTDIR)
    return setting(settings, spec.setting)


#: (command line, environment, ini file) -> which of GOOD's values wins
PRECEDENCE = {
    "default": ((None, None, None), "default"),
    "ini": ((None, None, "b"), "b from ini"),
    "env>ini": ((None, "a", "b"), "a"),
    "cli>env>ini": (("a", "b", "b"), "a"),
    "cli>ini": (("a", None, "b"), "a"),
}


@pytest.mark.parametrize(
    ("spec", "given", "wins"),
    [
        pytest.param(spec, given, wins, id=f"{spec.dest}-{case}")
        for spec in GOOD
        for case, (given, wins) in PRECEDENCE.items()
        if spec.env or given[1] is None  # the environment, where the option reads it
    ],
)
def test_every_option_resolves_with_the_same_precedence(
    spec: OptionSpec, given: tuple[str | None, ...], wins: str
) -> None:
    # the command line, then the environment, then the ini file, then the default: the
    # README's Options section
    a, b, read_a, read_b, default = GOOD[spec]
    texts = {"a": a, "b": b, None: None}
    cli, env, ini = (texts[g] for g in given)
    expected = {"default": default, "a": read_a, "b from ini": read_b}[wins]
    if wins == "b from ini" and isinstance(expected, Path):
        expected = ROOTDIR / expected  # relative to the rootdir, as pytest's own ini paths
    assert _resolve(spec, cli, env, ini) == expected


@pytest.mark.parametrize("spec", FLAGS, ids=lambda spec: spec.dest)
def test_a_flag_is_on_from_the_command_line_or_the_ini_file(spec: OptionSpec) -> None:
    def resolved(cli: bool | None, ini: bool) -> object:
        settings = resolve_settings({spec.dest: cli}.get, {spec.ini: ini}.get, {})
        return setting(settings, spec.setting)

    assert resolved(None, False) is False
    assert resolved(True, False) is True
    assert resolved(None, True) is True


@pytest.mark.parametrize("spec", [JSON, HTML, STORAGE, COMPARE_MARKDOWN], ids=lambda s: s.dest)
def test_a_relative_path_in_the_ini_file_is_in_the_rootdir(
    spec: OptionSpec, tmp_path: Path
) -> None:
    # --ollama-cpu-compare-markdown once skipped this; the JSON and HTML paths did not
    def resolved(cli: str | None, ini: str | None, rootpath: Path | None) -> object:
        settings = resolve_settings({spec.dest: cli}.get, {spec.ini: ini}.get, {}, rootpath)
        return setting(settings, spec.setting)

    assert resolved(None, "out/x", tmp_path) == tmp_path / "out/x"
    assert resolved("out/x", None, tmp_path) == Path("out/x")  # the current folder's
    assert resolved(None, str(tmp_path / "y"), ROOTDIR) == tmp_path / "y"
    assert resolved(None, "~/z", ROOTDIR) == Path.home() / "z"


def test_compare_fail_is_read_as_every_other_option() -> None:
    # --ollama-cpu-compare-fail was read apart (command line, else ini) and would have
    # ignored an environment variable; it has none (the README lists none), and one
    # declared for it is read in its place, one rule a line, as the ini file has them
    spec = replace(COMPARE_FAIL, env="OLLAMA_CPU_COMPARE_FAIL")
    ini = {spec.ini: ["tokens_per_second:50%"]}

    def resolved(environ: dict[str, str]) -> object:
        no_flags: dict[str, object] = {}
        return spec.resolve(Sources(no_flags.get, ini.get, environ))

    assert resolved({}) == (parse_rule("tokens_per_second:50%"),)
    both = resolved({"OLLAMA_CPU_COMPARE_FAIL": "ttft:10%\n utilization:0.1 \n"})
    assert both == (parse_rule("ttft:10%"), parse_rule("utilization:0.1"))
    with pytest.raises(pytest.UsageError) as info:
        resolved({"OLLAMA_CPU_COMPARE_FAIL": "ttft:10%\nspeed:5%"})
    assert str(info.value).startswith(
        "--ollama-cpu-compare-fail: 'speed:5%' (from environment variable "
        "OLLAMA_CPU_COMPARE_FAIL) is not valid: 'speed:5%': unknown quantity 'speed'"
    )


def _readme_options() -> dict[str, tuple[str, str]]:
    """The README's Options table: flag -> (ini key, environment variable or "")."""
    rows = {}
    for line in (ROOT / "README.md").read_text().splitlines():
        if not line.startswith("| `--ollama-cpu"):
            continue
        cells = re.split(r"(?<!\\)\|", line)[1:-1]
        flag, ini, env = (re.findall(r"`([^` =\[]+)", cell) for cell in cells[:3])
        rows[flag[0]] = (ini[0], env[0] if env else "")
    return rows


def test_the_readme_documents_every_option_with_its_ini_key_and_environment_variable() -> None:
    # every environment variable the README gives an option is read (the precedence test
    # above sets each), and no other
    assert _readme_options() == {spec.flag: (spec.ini, spec.env or "") for spec in ALL_OPTIONS}


def test_the_tests_clear_every_environment_variable_the_options_read() -> None:
    assert set(PLUGIN_ENV) == {spec.env for spec in ALL_OPTIONS if spec.env}
