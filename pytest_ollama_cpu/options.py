"""The plugin's settings: one table of options, resolved once into ``Settings``.

Every option is ``--ollama-cpu-*`` on the command line with an ini twin of the
same name in snake case; some also read an environment variable. Precedence,
highest first: the test's marker (for the keywords it takes), the command line,
the environment, the ini file, the default. Each option's ``OptionSpec`` names
the function that reads its value; a bad value is a ``pytest.UsageError`` that
says where the value came from and what is allowed.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args

import pytest

from .disturbance import DEFAULT_QUIET_WAIT, DEFAULT_RETAKES, RetakeBudget
from .host import DEFAULT_HOST, Credentials, Host, mask_password, parse_host, shown_host
from .machine import format_cpu_list, parse_cpu_list
from .markers import (
    AUTO,
    ThreadSpec,
    parse_thread_list,
)
from .quantities import MIN_RATE_TOKENS
from .rules import Rule, parse_rule
from .thresholds import (
    DEFAULT_ALPHA,
    INCONCLUSIVE_POLICIES,
    THRESHOLD_KEYWORDS,
    THRESHOLDS,
    Inconclusive,
    Thresholds,
    ThresholdSpec,
    check_alpha,
    check_threshold,
)

DEFAULT_STORAGE = Path(".benchmarks")
DEFAULT_ROUNDS = 5
DEFAULT_NUM_PREDICT = 32
DEFAULT_TIMEOUT = 300.0
#: When the machine's limits are probed: once a day, in every run, or never.
RooflineProbe = Literal["on", "fresh", "off"]
ROOFLINE_CHOICES: tuple[RooflineProbe, ...] = get_args(RooflineProbe)

_Choice = TypeVar("_Choice", bound=str)

GROUP = "ollama-cpu"


@dataclass(frozen=True)
class Given:
    """One value as given for an option, and where it came from."""

    value: str
    #: "the command line", "environment variable X" or "ini option x": for messages
    source: str
    #: the folder a relative path in it is relative to: the rootdir for the ini file
    #: (as pytest's own ini paths are), else None (the current folder)
    base: Path | None = None

    def path(self) -> Path:
        """The value as a path: ``~`` expanded, a relative one from the ini file in ``base``."""
        path = Path(self.value).expanduser()
        return self.base / path if self.base is not None and not path.is_absolute() else path


#: Reads one given value into the setting, or raises ``ValueError`` saying what is allowed.
Reader = Callable[[Given], Any]


def _text(given: Given) -> str:
    return given.value


def _switch(given: Given) -> bool:
    """A flag: on the command line or true in the ini file (or its environment variable)."""
    value = given.value.strip().lower()
    if value not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        raise ValueError("expected true or false")
    return value in ("1", "true", "yes", "on")


def _number(
    parse: Callable[[str], Any], allowed: str, accept: Callable[[Any], bool] | None = None
) -> Reader:
    """A number that ``parse`` reads (raising ``ValueError`` on a bad one) and ``accept``
    accepts; anything else is refused with ``allowed``."""

    def read(given: Given) -> Any:
        try:
            value = parse(given.value)
        except ValueError:
            raise ValueError(allowed) from None
        if accept is not None and not accept(value):
            raise ValueError(allowed)
        return value

    return read


def _whole_number(least: int, why: str = "") -> Reader:
    """A count of ``least`` or more; ``why`` says what the least means, or why."""
    return _number(int, f"expected a whole number of {least} or more{why}", lambda v: v >= least)


def _choice(choices: tuple[_Choice, ...]) -> Callable[[Given], _Choice]:
    """One of ``choices``, in any case and spacing."""

    def read(given: Given) -> _Choice:
        value = given.value.strip().lower()
        for choice in choices:
            if value == choice:
                return choice
        raise ValueError(f"expected one of {', '.join(choices)}")

    return read


def _file(given: Given) -> Path:
    """The file an option names; a folder is an error."""
    path = given.path()
    if path.is_dir():
        raise ValueError("it is a folder; give a file name")
    return path


def _folder(given: Given) -> Path:
    path = given.path()
    if path.exists() and not path.is_dir():
        raise ValueError("it is a file; give a folder")
    return path


def _host(given: Given) -> Host:
    return parse_host(given.value)


def _threads(given: Given) -> ThreadSpec:
    return parse_thread_list(given.value)


def _cpus(given: Given) -> tuple[int, ...]:
    cpus = parse_cpu_list(given.value)
    present = set(range(os.cpu_count() or 1))
    missing = [c for c in cpus if c not in present]
    if missing:
        raise ValueError(
            f"this machine has no CPU {format_cpu_list(missing)} (it has "
            f"{format_cpu_list(present)})"
        )
    return cpus


def _rule(given: Given) -> Rule:
    return parse_rule(given.value)


@dataclass(frozen=True)
class OptionSpec:
    """One option: how it is given (flag, ini key, environment variable), what it is
    for (help), and how its value is read into the setting it fills."""

    flag: str
    help: str
    #: the ``Settings`` field it fills (a threshold's name and ``alpha`` fill the
    #: ``Thresholds``, ``retakes`` and ``quiet_wait`` the ``RetakeBudget``)
    setting: str
    #: reads one given value (each, for ``repeat``)
    read: Reader = _text
    #: the setting when the option is given nowhere
    default: Any = None
    env: str | None = None
    metavar: str | None = None
    is_flag: bool = False
    #: the value may be left out on the command line (``--flag`` means ``const``)
    const: str | None = None
    #: may be given several times (and as several lines in the ini file)
    repeat: bool = False
    #: how a bad value is shown in its message (a password is not)
    shown: Callable[[str], str] | None = None

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")

    @property
    def ini(self) -> str:
        return self.dest

    def resolve(self, sources: Sources) -> Any:
        """The setting from the first source that gives it, read and checked; the
        default where none does."""
        given = sources.find(self)
        if not given:
            return self.default
        values = [self._read(one) for one in given]
        return tuple(values) if self.repeat else values[0]

    def _read(self, given: Given) -> Any:
        try:
            return self.read(given)
        except ValueError as exc:
            raise _usage_error(given, self, str(exc)) from None


def _usage_error(given: Given, spec: OptionSpec, allowed: str) -> pytest.UsageError:
    value = spec.shown(given.value) if spec.shown is not None else given.value
    return pytest.UsageError(
        f"{spec.flag}: {value!r} (from {given.source}) is not valid: {allowed}"
    )


@dataclass(frozen=True)
class Sources:
    """Where options are given, highest precedence first: the command line, the
    environment, the ini file (whose relative paths are relative to ``rootpath``)."""

    getoption: Callable[[str], Any]
    getini: Callable[[str], Any]
    environ: Mapping[str, str]
    rootpath: Path | None = None

    def find(self, spec: OptionSpec) -> list[Given]:
        """The option's values (one unless ``repeat``) as the first source that gives
        it has them; none when no source does."""
        cli = self.getoption(spec.dest)
        if cli not in (None, [], False):  # a flag not given is None (or False)
            return _values(spec, cli, "the command line")
        if spec.env and self.environ.get(spec.env, "").strip():
            return _values(spec, self.environ[spec.env].strip(), f"environment variable {spec.env}")
        ini = self.getini(spec.ini)
        if ini not in (None, "", [], False):
            return _values(spec, ini, f"ini option {spec.ini}", self.rootpath)
        return []


def _values(spec: OptionSpec, value: Any, source: str, base: Path | None = None) -> list[Given]:
    if isinstance(value, bool):  # a flag's
        value = "true" if value else "false"
    if spec.repeat:  # a list, or text with one value a line as in the ini file
        if not isinstance(value, list):
            value = [line.strip() for line in str(value).splitlines() if line.strip()]
        return [Given(str(item), source, base) for item in value]
    return [Given(str(value), source, base)]


ENABLE = OptionSpec(
    "--ollama-cpu",
    "Run the ollama-cpu performance tests (they are skipped without it).",
    setting="enabled",
    read=_switch,
    default=False,
    is_flag=True,
)
HOST = OptionSpec(
    "--ollama-cpu-host",
    "Ollama server to measure: host[:port], [IPv6][:port] or http(s)://[USER:PASSWORD@]host"
    "[:port][/path] (a path for a reverse proxy; the password is sent, never shown). "
    f"Default: $OLLAMA_HOST, else {DEFAULT_HOST}.",
    setting="host",  # with its credentials
    read=_host,
    default=parse_host(DEFAULT_HOST),
    env="OLLAMA_HOST",
    metavar="URL",
    shown=mask_password,  # never print a password
)
MODEL = OptionSpec(
    "--ollama-cpu-model",
    "Model the sweeps use unless a test names one (must be pulled on the server). "
    "Default: $OLLAMA_CPU_MODEL.",
    setting="model",
    env="OLLAMA_CPU_MODEL",
    metavar="NAME",
)
ROUNDS = OptionSpec(
    "--ollama-cpu-rounds",
    f"Measured requests per thread count, after one warm-up request. Default: {DEFAULT_ROUNDS}.",
    setting="rounds",
    read=_whole_number(1),
    default=DEFAULT_ROUNDS,
    env="OLLAMA_CPU_ROUNDS",
    metavar="N",
)
NUM_PREDICT = OptionSpec(
    "--ollama-cpu-num-predict",
    f"Tokens to generate per request unless a test says otherwise. Default: {DEFAULT_NUM_PREDICT}.",
    setting="num_predict",
    read=_whole_number(MIN_RATE_TOKENS, ": a rate from fewer tokens is mostly timer resolution"),
    default=DEFAULT_NUM_PREDICT,
    metavar="N",
)
THREADS = OptionSpec(
    "--ollama-cpu-threads",
    "Thread counts swept by tests without a threads marker: 'auto' (1, 2, 4, ... up to the "
    "usable CPUs) or a comma-separated list such as '1,2,4'. Default: auto.",
    setting="threads",
    read=_threads,
    default=(AUTO,),
    metavar="LIST",
)
TIMEOUT = OptionSpec(
    "--ollama-cpu-timeout",
    "Seconds one request may take, its whole reply included, before it fails. Default: "
    f"{DEFAULT_TIMEOUT:g}.",
    setting="timeout",
    read=_number(
        float,
        f"expected a finite number of seconds above 0, e.g. {DEFAULT_TIMEOUT:g}",
        lambda v: 0 < v < math.inf,
    ),
    default=DEFAULT_TIMEOUT,
    metavar="SECONDS",
)
JSON = OptionSpec(
    "--ollama-cpu-json",
    "Write every raw sample and the machine facts to this JSON file.",
    setting="json_path",
    read=_file,
    metavar="PATH",
)
HTML = OptionSpec(
    "--ollama-cpu-html",
    "Write a self-contained HTML report (charts of every sweep, its samples, utilization, "
    "verdicts and any comparison) to this file at the end of the run. Needs matplotlib: "
    "pip install 'pytest-ollama-cpu[report]'.",
    setting="html_path",
    read=_file,
    metavar="PATH",
)

MAX_ROUNDS = OptionSpec(
    "--ollama-cpu-max-rounds",
    "Most measured requests per thread count when a threshold is still undecided: the sweep "
    "adds rounds until every verdict is clear or this is reached. Default: 4 x rounds.",
    setting="max_rounds",
    read=_whole_number(1),
    metavar="N",
)


def _threshold_option(name: str, spec: ThresholdSpec) -> OptionSpec:
    """A threshold's option: ``min_speedup`` is ``--ollama-cpu-min-speedup``."""
    return OptionSpec(
        f"--ollama-cpu-{name.replace('_', '-')}",
        spec.help,
        setting=name,
        read=_number(
            lambda text: check_threshold(name, float(text)),
            f"expected a finite number above 0, e.g. {spec.example}",
        ),
        metavar="X",
    )


#: one option per threshold (``thresholds.Thresholds``), by the threshold's name
THRESHOLD_OPTIONS = {name: _threshold_option(name, spec) for name, spec in THRESHOLDS.items()}
MIN_SPEEDUP = THRESHOLD_OPTIONS["min_speedup"]
MIN_EFFICIENCY = THRESHOLD_OPTIONS["min_efficiency"]
MIN_UTILIZATION = THRESHOLD_OPTIONS["min_utilization"]
MIN_MACHINE_UTILIZATION = THRESHOLD_OPTIONS["min_machine_utilization"]
MIN_ROOFLINE = THRESHOLD_OPTIONS["min_roofline"]

ROOFLINE_PROBE = OptionSpec(
    "--ollama-cpu-roofline",
    "Probe the machine's memory bandwidth and arithmetic peak per thread count (a few seconds, "
    "cached per machine for a day): on, fresh (probe again now) or off. Default: on.",
    setting="roofline",
    read=_choice(ROOFLINE_CHOICES),
    default=ROOFLINE_CHOICES[0],
    env="OLLAMA_CPU_ROOFLINE",
    metavar="on|fresh|off",
)
ALPHA = OptionSpec(
    "--ollama-cpu-alpha",
    "Significance of the verdicts: the most a test may fail by chance when every threshold is "
    "met. Default: 0.01.",
    setting="alpha",
    read=_number(
        lambda text: check_alpha(float(text)),
        "expected a number between 0 and 0.5, e.g. 0.01",
    ),
    default=DEFAULT_ALPHA,
    env="OLLAMA_CPU_ALPHA",
    metavar="ALPHA",
)
INCONCLUSIVE = OptionSpec(
    "--ollama-cpu-inconclusive",
    "What an undecided verdict does after max-rounds: pass (with a warning in the summary), "
    "fail or skip. Default: pass.",
    setting="inconclusive",
    read=_choice(INCONCLUSIVE_POLICIES),
    default=INCONCLUSIVE_POLICIES[0],
    metavar="pass|fail|skip",
)
RETAKES = OptionSpec(
    "--ollama-cpu-retakes",
    "Samples a thread count may set aside and take again, per sweep, when other processes took "
    "CPU the server needed; then it is given up as busy (0: at its first disturbed sample). "
    f"Default: {DEFAULT_RETAKES}.",
    setting="retakes",  # of the RetakeBudget
    read=_whole_number(0, " (0: a thread count is given up as busy at its first disturbed sample)"),
    default=DEFAULT_RETAKES,
    metavar="N",
)
QUIET_WAIT = OptionSpec(
    "--ollama-cpu-quiet-wait",
    "Seconds a thread count may wait, per sweep, for the server's CPUs to be quiet before "
    "retaking a disturbed sample; 0 retakes at once. Default: "
    f"{DEFAULT_QUIET_WAIT:g}.",
    setting="quiet_wait",  # of the RetakeBudget
    read=_number(
        float,
        "expected a finite number of seconds, 0 or more (0: a disturbed sample is taken again "
        "at once, without waiting)",
        lambda v: 0 <= v < math.inf,
    ),
    default=DEFAULT_QUIET_WAIT,
    metavar="SECONDS",
)

CPUS = OptionSpec(
    "--ollama-cpu-cpus",
    "Confine the Ollama server's runner to these CPUs during each sweep, e.g. 0-3,8 (like "
    "llama-bench's --cpu-mask); usable CPUs and 'auto' follow. Needs a server on this machine "
    "whose CPU affinity pytest may set.",
    setting="cpus",
    read=_cpus,
    metavar="LIST",
)
SAVE = OptionSpec(
    "--ollama-cpu-save",
    "Save this run as NAME in the storage folder, in pytest-benchmark's format.",
    setting="save",
    metavar="NAME",
)
AUTOSAVE = OptionSpec(
    "--ollama-cpu-autosave",
    "Save this run in the storage folder, named after the commit and the time.",
    setting="autosave",
    read=_switch,
    default=False,
    is_flag=True,
)
STORAGE = OptionSpec(
    "--ollama-cpu-storage",
    "Folder of saved runs (one folder per machine inside). Default: .benchmarks",
    setting="storage",
    read=_folder,
    default=DEFAULT_STORAGE,
    metavar="PATH",
)
COMPARE = OptionSpec(
    "--ollama-cpu-compare",
    "Compare this run with a saved one: the latest when no value is given, else its number, "
    "name or path.",
    setting="compare",
    metavar="NUM|NAME|PATH",
    const="latest",
)
COMPARE_FAIL = OptionSpec(
    "--ollama-cpu-compare-fail",
    "Fail the run when a comparison shows a drop larger than this, e.g. tokens_per_second:5% "
    "(relative) or utilization:0.1 (absolute). May be given several times.",
    setting="compare_fail",
    read=_rule,
    default=(),
    metavar="EXPR",
    repeat=True,
)
COMPARE_MARKDOWN = OptionSpec(
    "--ollama-cpu-compare-markdown",
    "Append the comparison as a Markdown table to this file, e.g. $GITHUB_STEP_SUMMARY.",
    setting="compare_markdown",
    read=_file,
    metavar="PATH",
)
COMPARE_STRICT = OptionSpec(
    "--ollama-cpu-compare-strict",
    "Make a baseline from another machine (CPU, usable CPUs, Ollama version, model digest) an "
    "error instead of a warning.",
    setting="compare_strict",
    read=_switch,
    default=False,
    is_flag=True,
)

#: every option, in the order ``--help`` lists them
ALL_OPTIONS = (
    ENABLE,
    HOST,
    MODEL,
    ROUNDS,
    MAX_ROUNDS,
    NUM_PREDICT,
    THREADS,
    TIMEOUT,
    JSON,
    HTML,
    *THRESHOLD_OPTIONS.values(),
    ALPHA,
    INCONCLUSIVE,
    ROOFLINE_PROBE,
    RETAKES,
    QUIET_WAIT,
    CPUS,
    SAVE,
    AUTOSAVE,
    STORAGE,
    COMPARE,
    COMPARE_FAIL,
    COMPARE_MARKDOWN,
    COMPARE_STRICT,
)


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup(GROUP, "measure Ollama's CPU use across num_thread values")
    for spec in ALL_OPTIONS:
        # argparse formats help with %: a literal one (5%) must be doubled, or --help fails
        flag_help = spec.help.replace("%", "%%")
        if spec.is_flag:
            group.addoption(spec.flag, action="store_true", default=None, help=flag_help)
            parser.addini(spec.ini, spec.help, type="bool", default=False)
        elif spec.repeat:
            group.addoption(
                spec.flag, action="append", default=None, metavar=spec.metavar, help=flag_help
            )
            parser.addini(spec.ini, spec.help, type="linelist", default=[])
        elif spec.const is not None:
            group.addoption(
                spec.flag,
                nargs="?",
                const=spec.const,
                default=None,
                metavar=spec.metavar,
                help=flag_help,
            )
            parser.addini(spec.ini, spec.help, default=None)
        else:
            group.addoption(spec.flag, default=None, metavar=spec.metavar, help=flag_help)
            parser.addini(spec.ini, spec.help, default=None)


@dataclass(frozen=True)
class Settings:
    """Everything a sweep needs to know from configuration, after precedence."""

    enabled: bool
    host: str
    model: str | None
    rounds: int
    num_predict: int
    threads: ThreadSpec
    timeout: float
    json_path: Path | None
    #: the HTML report's path (``--ollama-cpu-html``), or None for no report
    html_path: Path | None = None
    max_rounds: int | None = None
    thresholds: Thresholds = Thresholds()
    inconclusive: Inconclusive = "pass"
    save: str | None = None
    autosave: bool = False
    storage: Path = DEFAULT_STORAGE
    compare: str | None = None
    compare_fail: tuple[Rule, ...] = ()
    compare_strict: bool = False
    compare_markdown: Path | None = None
    cpus: tuple[int, ...] | None = None
    retake_budget: RetakeBudget = RetakeBudget()
    #: the user and password the host's URL carried; ``host`` never holds them
    credentials: Credentials | None = None
    #: probe the machine's limits: "on" (cached), "fresh" or "off"
    roofline: RooflineProbe = "on"

    @property
    def has_work(self) -> bool:
        """Whether the plugin measures, saves or compares in this run. Without
        ``--ollama-cpu`` its tests are only skipped and the results file and report have
        nothing to hold (an ini file may name them for every run); saving and comparing
        still say that nothing was measured."""
        return bool(self.enabled or self.save or self.autosave or self.compare)

    def rounds_limit(self, rounds: int, marker_max: int | None = None) -> int:
        """Most rounds a thread count may get: marker, then option, then 4 x rounds."""
        limit = marker_max or self.max_rounds or 4 * rounds
        return max(limit, rounds)

    def describe(self) -> str:
        threads = ",".join(str(t) for t in self.threads)
        host = shown_host(self.host, self.credentials)  # the password masked
        text = (
            f"host {host}, model {self.model or '(not set)'}, rounds {self.rounds}, "
            f"num_predict {self.num_predict}, threads {threads}, timeout {self.timeout:g}s"
        )
        limits = [
            f"{key} {value:g}"
            for key, value in self.thresholds.to_dict().items()
            if key != "alpha" and isinstance(value, float)
        ]
        if self.cpus is not None:
            text += f", cpus {format_cpu_list(self.cpus)}"
        if self.roofline != "on":
            text += f", roofline probe {self.roofline}"
        if limits:
            text += f"; {', '.join(limits)}, alpha {self.thresholds.alpha:g}"
        return text


def resolve_settings(
    getoption: Callable[[str], Any],
    getini: Callable[[str], Any],
    environ: Mapping[str, str] | None = None,
    rootpath: Path | None = None,
) -> Settings:
    """Every option resolved (``OptionSpec.resolve``) into the settings of this run."""
    sources = Sources(getoption, getini, os.environ if environ is None else environ, rootpath)
    values = {spec.setting: spec.resolve(sources) for spec in ALL_OPTIONS}
    if values["compare_fail"] and values["compare"] is None:
        raise pytest.UsageError(
            f"{COMPARE_FAIL.flag} needs a baseline: add {COMPARE.flag} (the latest saved run) "
            f"or {COMPARE.flag}=NUM|NAME|PATH"
        )
    # the settings that are parts of one: the host's, the thresholds', the retakes'
    host: Host = values.pop("host")
    thresholds = Thresholds(**{key: values.pop(key) for key in (*THRESHOLD_KEYWORDS, "alpha")})
    budget = RetakeBudget(retakes=values.pop("retakes"), quiet_wait=values.pop("quiet_wait"))
    return Settings(
        host=host.url,
        credentials=host.credentials,
        thresholds=thresholds,
        retake_budget=budget,
        **values,
    )


def merge_thresholds(
    defaults: Thresholds, marker: Mapping[str, Any] | None, alpha: float | None
) -> Thresholds:
    """The marker's thresholds over the run's (options, ini), key by key."""
    merged = replace(defaults, **dict(marker or {}))
    return replace(merged, alpha=alpha) if alpha is not None else merged
