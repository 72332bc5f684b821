"""The plugin's settings: one table of options, resolved once into ``Settings``.

Every option is ``--ollama-cpu-*`` on the command line with an ini twin of the
same name in snake case; some also read an environment variable. Precedence,
highest first: the test's marker (for the keywords it takes), the command line,
the environment, the ini file, the default. A bad value is a
``pytest.UsageError`` that says where the value came from and what is allowed.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import pytest

from .disturbance import DEFAULT_QUIET_WAIT, DEFAULT_RETAKES, RetakeBudget
from .host import DEFAULT_HOST, Credentials, mask_password, parse_host, shown_host
from .machine import format_cpu_list, parse_cpu_list
from .markers import (
    AUTO,
    ThreadSpec,
    parse_thread_list,
)
from .quantities import MIN_RATE_TOKENS
from .rules import Rule, RuleError, parse_rule
from .thresholds import DEFAULT_ALPHA, Thresholds, check_alpha, check_threshold

DEFAULT_STORAGE = Path(".benchmarks")

GROUP = "ollama-cpu"

N = TypeVar("N", int, float)


@dataclass(frozen=True)
class OptionSpec:
    flag: str
    help: str
    env: str | None = None
    metavar: str | None = None
    is_flag: bool = False
    #: the value may be left out on the command line (``--flag`` means ``const``)
    const: str | None = None
    #: may be given several times (and as several lines in the ini file)
    repeat: bool = False

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")

    @property
    def ini(self) -> str:
        return self.dest


ENABLE = OptionSpec(
    "--ollama-cpu",
    "Run the ollama-cpu performance tests (they are skipped without it).",
    is_flag=True,
)
HOST = OptionSpec(
    "--ollama-cpu-host",
    "Ollama server to measure: host[:port], [IPv6][:port] or http(s)://[USER:PASSWORD@]host"
    "[:port][/path] (a path for a reverse proxy; the password is sent, never shown). "
    f"Default: $OLLAMA_HOST, else {DEFAULT_HOST}.",
    env="OLLAMA_HOST",
    metavar="URL",
)
MODEL = OptionSpec(
    "--ollama-cpu-model",
    "Model the sweeps use unless a test names one (must be pulled on the server). "
    "Default: $OLLAMA_CPU_MODEL.",
    env="OLLAMA_CPU_MODEL",
    metavar="NAME",
)
ROUNDS = OptionSpec(
    "--ollama-cpu-rounds",
    "Measured requests per thread count, after one warm-up request. Default: 5.",
    env="OLLAMA_CPU_ROUNDS",
    metavar="N",
)
NUM_PREDICT = OptionSpec(
    "--ollama-cpu-num-predict",
    "Tokens to generate per request unless a test says otherwise. Default: 64.",
    metavar="N",
)
THREADS = OptionSpec(
    "--ollama-cpu-threads",
    "Thread counts swept by tests without a threads marker: 'auto' (1, 2, 4, ... up to the "
    "usable CPUs) or a comma-separated list such as '1,2,4'. Default: auto.",
    metavar="LIST",
)
TIMEOUT = OptionSpec(
    "--ollama-cpu-timeout",
    "Seconds one request may take, its whole reply included, before it fails. Default: 300.",
    metavar="SECONDS",
)
JSON = OptionSpec(
    "--ollama-cpu-json",
    "Write every raw sample and the machine facts to this JSON file.",
    metavar="PATH",
)
HTML = OptionSpec(
    "--ollama-cpu-html",
    "Write a self-contained HTML report (charts of every sweep, its samples, utilization, "
    "verdicts and any comparison) to this file at the end of the run. Needs matplotlib: "
    "pip install 'pytest-ollama-cpu[report]'.",
    metavar="PATH",
)

MAX_ROUNDS = OptionSpec(
    "--ollama-cpu-max-rounds",
    "Most measured requests per thread count when a threshold is still undecided: the sweep "
    "adds rounds until every verdict is clear or this is reached. Default: 4 x rounds.",
    metavar="N",
)
MIN_SPEEDUP = OptionSpec(
    "--ollama-cpu-min-speedup",
    "Fail when the largest thread count's speedup over the smallest is shown to be below this.",
    metavar="X",
)
MIN_EFFICIENCY = OptionSpec(
    "--ollama-cpu-min-efficiency",
    "Fail when a thread count's efficiency (speedup / thread ratio) is shown to be below this.",
    metavar="X",
)
MIN_UTILIZATION = OptionSpec(
    "--ollama-cpu-min-utilization",
    "Fail when a thread count's thread utilization (cores busy / threads) is shown to be "
    "below this.",
    metavar="X",
)
MIN_MACHINE_UTILIZATION = OptionSpec(
    "--ollama-cpu-min-machine-utilization",
    "Fail when the largest thread count's machine utilization (cores busy / usable CPUs) is "
    "shown to be below this.",
    metavar="X",
)
MIN_ROOFLINE = OptionSpec(
    "--ollama-cpu-min-roofline",
    "Fail when a thread count's rate is shown to reach less than this share of the machine's "
    "limit: generation against memory bandwidth, prefill (for a prefill workload) against "
    "arithmetic peak, e.g. 0.5.",
    metavar="X",
)
ROOFLINE_PROBE = OptionSpec(
    "--ollama-cpu-roofline",
    "Probe the machine's memory bandwidth and arithmetic peak per thread count (a few seconds, "
    "cached per machine for a day): on, fresh (probe again now) or off. Default: on.",
    env="OLLAMA_CPU_ROOFLINE",
    metavar="on|fresh|off",
)
ALPHA = OptionSpec(
    "--ollama-cpu-alpha",
    "Significance of the verdicts: the most a test may fail by chance when every threshold is "
    "met. Default: 0.01.",
    env="OLLAMA_CPU_ALPHA",
    metavar="ALPHA",
)
INCONCLUSIVE = OptionSpec(
    "--ollama-cpu-inconclusive",
    "What an undecided verdict does after max-rounds: pass (with a warning in the summary), "
    "fail or skip. Default: pass.",
    metavar="pass|fail|skip",
)
RETAKES = OptionSpec(
    "--ollama-cpu-retakes",
    "Samples a thread count may set aside and take again, per sweep, when other processes took "
    "CPU the server needed; then it is given up as busy (0: at its first disturbed sample). "
    f"Default: {DEFAULT_RETAKES}.",
    metavar="N",
)
QUIET_WAIT = OptionSpec(
    "--ollama-cpu-quiet-wait",
    "Seconds a thread count may wait, per sweep, for the server's CPUs to be quiet before "
    "retaking a disturbed sample; 0 retakes at once. Default: "
    f"{DEFAULT_QUIET_WAIT:g}.",
    metavar="SECONDS",
)

CPUS = OptionSpec(
    "--ollama-cpu-cpus",
    "Confine the Ollama server's runner to these CPUs during each sweep, e.g. 0-3,8 (like "
    "llama-bench's --cpu-mask); usable CPUs and 'auto' follow. Needs a server on this machine "
    "whose CPU affinity pytest may set.",
    metavar="LIST",
)
SAVE = OptionSpec(
    "--ollama-cpu-save",
    "Save this run as NAME in the storage folder, in pytest-benchmark's format.",
    metavar="NAME",
)
AUTOSAVE = OptionSpec(
    "--ollama-cpu-autosave",
    "Save this run in the storage folder, named after the commit and the time.",
    is_flag=True,
)
STORAGE = OptionSpec(
    "--ollama-cpu-storage",
    "Folder of saved runs (one folder per machine inside). Default: .benchmarks",
    metavar="PATH",
)
COMPARE = OptionSpec(
    "--ollama-cpu-compare",
    "Compare this run with a saved one: the latest when no value is given, else its number, "
    "name or path.",
    metavar="NUM|NAME|PATH",
    const="latest",
)
COMPARE_FAIL = OptionSpec(
    "--ollama-cpu-compare-fail",
    "Fail the run when a comparison shows a drop larger than this, e.g. tokens_per_second:5% "
    "(relative) or utilization:0.1 (absolute). May be given several times.",
    metavar="EXPR",
    repeat=True,
)
COMPARE_MARKDOWN = OptionSpec(
    "--ollama-cpu-compare-markdown",
    "Append the comparison as a Markdown table to this file, e.g. $GITHUB_STEP_SUMMARY.",
    metavar="PATH",
)
COMPARE_STRICT = OptionSpec(
    "--ollama-cpu-compare-strict",
    "Make a baseline from another machine (CPU, usable CPUs, Ollama version, model digest) an "
    "error instead of a warning.",
    is_flag=True,
)

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
    MIN_SPEEDUP,
    MIN_EFFICIENCY,
    MIN_UTILIZATION,
    MIN_MACHINE_UTILIZATION,
    MIN_ROOFLINE,
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
THRESHOLD_OPTIONS = {
    "min_speedup": MIN_SPEEDUP,
    "min_efficiency": MIN_EFFICIENCY,
    "min_utilization": MIN_UTILIZATION,
    "min_machine_utilization": MIN_MACHINE_UTILIZATION,
    "min_roofline": MIN_ROOFLINE,
}
#: what a bad value's message suggests instead
THRESHOLD_EXAMPLES = {
    "min_speedup": "1.5",
    "min_efficiency": "0.7",
    "min_utilization": "0.8",
    "min_machine_utilization": "0.5",
    "min_roofline": "0.5",
}
INCONCLUSIVE_CHOICES = ("pass", "fail", "skip")
ROOFLINE_CHOICES = ("on", "fresh", "off")

DEFAULT_ROUNDS = 5
DEFAULT_NUM_PREDICT = 32
DEFAULT_TIMEOUT = 300.0


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
    inconclusive: str = "pass"
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
    roofline: str = "on"

    @property
    def has_work(self) -> bool:
        """Whether the plugin measures, writes or compares anything in this run: without
        ``--ollama-cpu`` and the file options its tests are only skipped."""
        return bool(
            self.enabled
            or self.json_path
            or self.html_path
            or self.save
            or self.autosave
            or self.compare
        )

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


@dataclass(frozen=True)
class _Raw:
    value: str
    source: str


class _Lookup:
    """Finds an option's raw value and remembers where it came from."""

    def __init__(
        self,
        getoption: Callable[[str], Any],
        getini: Callable[[str], Any],
        environ: Mapping[str, str],
    ) -> None:
        self._getoption = getoption
        self._getini = getini
        self._environ = environ

    def __call__(self, spec: OptionSpec) -> _Raw | None:
        cli = self._getoption(spec.dest)
        if cli is not None:
            return _Raw(str(cli), "the command line")
        if spec.env and self._environ.get(spec.env, "").strip():
            return _Raw(self._environ[spec.env].strip(), f"environment variable {spec.env}")
        ini = self._getini(spec.ini)
        if ini not in (None, "", []):
            return _Raw(str(ini), f"ini option {spec.ini}")
        return None


def _usage_error(raw: _Raw, spec: OptionSpec, allowed: str) -> pytest.UsageError:
    return pytest.UsageError(
        f"{spec.flag}: {raw.value!r} (from {raw.source}) is not valid: {allowed}"
    )


def _path(raw: _Raw, rootpath: Path | None) -> Path:
    """A path option; a relative one from the ini file is relative to the rootdir."""
    path = Path(raw.value).expanduser()
    if not path.is_absolute() and rootpath is not None and raw.source.startswith("ini"):
        return rootpath / path
    return path


def _number(
    raw: _Raw | None,
    spec: OptionSpec,
    default: N,
    parse: Callable[[str], N],
    accept: Callable[[N], bool],
    allowed: str,
) -> N:
    """A numeric option: ``default`` when not given, else parsed and checked."""
    if raw is None:
        return default
    try:
        value = parse(raw.value)
    except ValueError:
        raise _usage_error(raw, spec, allowed) from None
    if not accept(value):
        raise _usage_error(raw, spec, allowed)
    return value


def _positive_int(raw: _Raw | None, spec: OptionSpec, default: int) -> int:
    return _number(
        raw, spec, default, int, lambda v: v >= 1, "expected a whole number of 1 or more"
    )


def _rate_tokens(raw: _Raw | None, spec: OptionSpec, default: int) -> int:
    return _number(
        raw,
        spec,
        default,
        int,
        lambda v: v >= MIN_RATE_TOKENS,
        f"expected a whole number of {MIN_RATE_TOKENS} or more: a rate from fewer tokens is "
        "mostly timer resolution",
    )


def _whole_number(raw: _Raw | None, spec: OptionSpec, default: int, zero: str) -> int:
    """A count that may be 0, which means ``zero``."""
    return _number(
        raw, spec, default, int, lambda v: v >= 0, f"expected a whole number of 0 or more ({zero})"
    )


def _seconds_or_zero(raw: _Raw | None, spec: OptionSpec, default: float, zero: str) -> float:
    return _number(
        raw,
        spec,
        default,
        float,
        lambda v: 0 <= v < math.inf,
        f"expected a finite number of seconds, 0 or more ({zero})",
    )


def _positive_float(raw: _Raw | None, spec: OptionSpec, default: float, example: str) -> float:
    return _number(
        raw,
        spec,
        default,
        float,
        lambda v: 0 < v < math.inf,
        f"expected a finite number of seconds above 0, e.g. {example}",
    )


def _file_path(raw: _Raw | None, spec: OptionSpec, rootpath: Path | None) -> Path | None:
    """The file an option names (an ini value relative to the rootdir); a folder is an error."""
    if raw is None:
        return None
    path = _path(raw, rootpath)
    if path.is_dir():
        raise _usage_error(raw, spec, "it is a folder; give a file name")
    return path


def _choice(raw: _Raw | None, spec: OptionSpec, choices: tuple[str, ...]) -> str:
    """One of ``choices`` (the first when not given), in any case and spacing."""
    if raw is None:
        return choices[0]
    value = raw.value.strip().lower()
    if value not in choices:
        raise _usage_error(raw, spec, f"expected one of {', '.join(choices)}")
    return value


def resolve_settings(
    getoption: Callable[[str], Any],
    getini: Callable[[str], Any],
    environ: Mapping[str, str] | None = None,
    rootpath: Path | None = None,
) -> Settings:
    lookup = _Lookup(getoption, getini, os.environ if environ is None else environ)

    enabled = bool(getoption(ENABLE.dest)) or bool(getini(ENABLE.ini))

    raw_host = lookup(HOST)
    try:
        host = parse_host(raw_host.value if raw_host else DEFAULT_HOST)
    except ValueError as exc:
        assert raw_host is not None
        shown = _Raw(mask_password(raw_host.value), raw_host.source)  # never print a password
        raise _usage_error(shown, HOST, str(exc)) from None

    raw_model = lookup(MODEL)
    model = raw_model.value if raw_model else None

    raw_threads = lookup(THREADS)
    threads: ThreadSpec = (AUTO,)
    if raw_threads is not None:
        try:
            threads = parse_thread_list(raw_threads.value)
        except ValueError as exc:
            raise _usage_error(raw_threads, THREADS, str(exc)) from None

    json_path = _file_path(lookup(JSON), JSON, rootpath)
    html_path = _file_path(lookup(HTML), HTML, rootpath)

    thresholds: dict[str, float] = {}
    for key, spec in THRESHOLD_OPTIONS.items():
        raw = lookup(spec)
        if raw is None:
            continue
        try:
            value = check_threshold(key, float(raw.value))
        except ValueError:
            raise _usage_error(
                raw, spec, f"expected a finite number above 0, e.g. {THRESHOLD_EXAMPLES[key]}"
            ) from None
        assert isinstance(value, float)
        thresholds[key] = value
    raw_alpha = lookup(ALPHA)
    alpha = DEFAULT_ALPHA
    if raw_alpha is not None:
        try:
            alpha = check_alpha(float(raw_alpha.value))
        except ValueError:
            raise _usage_error(
                raw_alpha, ALPHA, "expected a number between 0 and 0.5, e.g. 0.01"
            ) from None
    inconclusive = _choice(lookup(INCONCLUSIVE), INCONCLUSIVE, INCONCLUSIVE_CHOICES)
    roofline = _choice(lookup(ROOFLINE_PROBE), ROOFLINE_PROBE, ROOFLINE_CHOICES)
    raw_max = lookup(MAX_ROUNDS)

    raw_storage = lookup(STORAGE)
    storage = DEFAULT_STORAGE
    if raw_storage is not None:
        storage = _path(raw_storage, rootpath)
        if storage.exists() and not storage.is_dir():
            raise _usage_error(raw_storage, STORAGE, "it is a file; give a folder")
    raw_fail = getoption(COMPARE_FAIL.dest) or getini(COMPARE_FAIL.ini) or []
    source = (
        "the command line" if getoption(COMPARE_FAIL.dest) else f"ini option {COMPARE_FAIL.ini}"
    )
    rules = []
    for text in raw_fail:
        try:
            rules.append(parse_rule(text))
        except RuleError as exc:
            raise _usage_error(_Raw(text, source), COMPARE_FAIL, str(exc)) from None
    raw_compare = lookup(COMPARE)
    compare = raw_compare.value if raw_compare is not None else None
    if rules and compare is None:
        raise pytest.UsageError(
            f"{COMPARE_FAIL.flag} needs a baseline: add {COMPARE.flag} (the latest saved run) "
            f"or {COMPARE.flag}=NUM|NAME|PATH"
        )
    raw_save = lookup(SAVE)
    markdown = _file_path(lookup(COMPARE_MARKDOWN), COMPARE_MARKDOWN, rootpath)
    raw_cpus = lookup(CPUS)
    cpus = None
    if raw_cpus is not None:
        try:
            cpus = parse_cpu_list(raw_cpus.value)
        except ValueError as exc:
            raise _usage_error(raw_cpus, CPUS, str(exc)) from None
        present = set(range(os.cpu_count() or 1))
        missing = [c for c in cpus if c not in present]
        if missing:
            raise _usage_error(
                raw_cpus,
                CPUS,
                f"this machine has no CPU {format_cpu_list(missing)} (it has "
                f"{format_cpu_list(present)})",
            )

    return Settings(
        max_rounds=None if raw_max is None else _positive_int(raw_max, MAX_ROUNDS, 1),
        thresholds=Thresholds(alpha=alpha, **thresholds),
        inconclusive=inconclusive,
        roofline=roofline,
        save=None if raw_save is None else raw_save.value,
        autosave=bool(getoption(AUTOSAVE.dest)) or bool(getini(AUTOSAVE.ini)),
        storage=storage,
        compare=compare,
        compare_fail=tuple(rules),
        compare_strict=bool(getoption(COMPARE_STRICT.dest)) or bool(getini(COMPARE_STRICT.ini)),
        compare_markdown=markdown,
        cpus=cpus,
        retake_budget=RetakeBudget(
            retakes=_whole_number(
                lookup(RETAKES),
                RETAKES,
                DEFAULT_RETAKES,
                "0: a thread count is given up as busy at its first disturbed sample",
            ),
            quiet_wait=_seconds_or_zero(
                lookup(QUIET_WAIT),
                QUIET_WAIT,
                DEFAULT_QUIET_WAIT,
                "0: a disturbed sample is taken again at once, without waiting",
            ),
        ),
        enabled=enabled,
        host=host.url,
        credentials=host.credentials,
        model=model,
        rounds=_positive_int(lookup(ROUNDS), ROUNDS, DEFAULT_ROUNDS),
        num_predict=_rate_tokens(lookup(NUM_PREDICT), NUM_PREDICT, DEFAULT_NUM_PREDICT),
        threads=threads,
        timeout=_positive_float(lookup(TIMEOUT), TIMEOUT, DEFAULT_TIMEOUT, "300"),
        json_path=json_path,
        html_path=html_path,
    )


def merge_thresholds(
    defaults: Thresholds, marker: Mapping[str, Any] | None, alpha: float | None
) -> Thresholds:
    """The marker's thresholds over the run's (options, ini), key by key."""
    merged = replace(defaults, **dict(marker or {}))
    return replace(merged, alpha=alpha) if alpha is not None else merged
