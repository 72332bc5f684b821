"""The limits probe and its cache: plumbing, disturbed windows, the server's cgroup.

Real probes with small arrays and short windows (the figures themselves are
benchmarks/limits_probe.py's); the cgroup joining also on a fake tree.
"""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import psutil
import pytest

from pytest_ollama_cpu import limits as limits_module
from pytest_ollama_cpu.limits import (
    CACHE_ENV,
    CACHE_KEY,
    Joined,
    Limit,
    LimitsFile,
    LimitsProbeError,
    MachineLimits,
    cached_limits,
    join_cgroup,
    limits_cache_path,
    peek_limits,
    probe_limits,
)

SMALL: dict[str, Any] = {"size": 8 * 2**20, "window": 0.05, "repeats": 2}


def first_cpus(count: int) -> list[int]:
    return sorted(os.sched_getaffinity(0))[:count]


# --- the probe ------------------------------------------------------------------


def test_probe_gives_both_limits_per_count_and_round_trips() -> None:
    cpus = first_cpus(2)
    told: list[int] = []  # the progress display is told each count as it begins
    probed = probe_limits([1, 2], cpus, on_count=told.append, **SMALL)
    assert sorted(probed.limits) == [1, 2] and told == [1, 2]
    assert probed.cpus == tuple(cpus) and probed.cgroup is None and probed.note is None
    for threads in (1, 2):
        limit = probed[threads]
        assert limit.threads == threads
        # at least one pass over 8 MiB, one 512x512 product, in a window: far above these
        assert limit.read_bytes_per_second > 8 * 2**20
        assert limit.flops_per_second > 2 * 512**3
        assert limit.gb_per_second == pytest.approx(limit.read_bytes_per_second / 1e9)
        assert limit.gflops == pytest.approx(limit.flops_per_second / 1e9)
        assert isinstance(limit.disturbed, bool)
    assert 0.2 < probed.cost_seconds < 30
    assert "int64 max over 8 MiB" in probed.method and "512x512" in probed.method
    assert "int8" in probed.method
    assert re.fullmatch(
        r"memory read [\d.]+ GB/s at 1 thread( \(disturbed\))?, [\d.]+ at 2( \(disturbed\))?; "
        r"fp32 multiply-add [\d.e+]+ GFLOP/s at 1( \(disturbed\))?, [\d.e+]+ at 2"
        r"( \(disturbed\))? \(probed in [\d.]+ s\)",
        probed.describe(),
    ), probed.describe()
    again = MachineLimits.from_dict(json.loads(json.dumps(probed.to_dict())))
    assert again == probed
    with pytest.raises(KeyError, match="no limits probed for 3 threads"):
        probed[3]


def test_describe_marks_disturbed_counts_and_cached_ones() -> None:
    limits = MachineLimits(
        limits={
            1: Limit(1, 33.8e9, 126e9, False),
            2: Limit(2, 49.0e9, 251e9, True),
        },
        cpus=(0, 1),
        cgroup="/ollama-slow",
        note=None,
        cost_seconds=0.0,
        method="m",
    )
    assert limits.describe() == (
        "memory read 33.8 GB/s at 1 thread, 49.0 at 2 (disturbed); fp32 multiply-add "
        "126 GFLOP/s at 1, 251 at 2 (disturbed) (from the cache, in the server's cgroup "
        "/ollama-slow)"
    )


@pytest.fixture
def busy_neighbour() -> Iterator[int]:
    """A process spinning on CPU 0, in its own session (so its own autogroup: a
    neighbour in ours would share our group's CPU time instead of taking from it)."""
    process = subprocess.Popen([sys.executable, "-c", "while True: pass"], start_new_session=True)
    try:
        os.sched_setaffinity(process.pid, {0})
        time.sleep(0.1)  # running before the probe's worker starts
        yield process.pid
    finally:
        process.kill()
        process.wait()


@pytest.mark.skipif(0 not in os.sched_getaffinity(0), reason="needs CPU 0")
def test_a_neighbour_on_the_cpu_marks_the_count_disturbed(busy_neighbour: int) -> None:
    probed = probe_limits([1], [0], size=8 * 2**20, window=0.1, repeats=2)
    assert probed[1].disturbed is True
    assert "(disturbed)" in probed.describe()


@pytest.mark.skipif(0 not in os.sched_getaffinity(0), reason="needs CPU 0")
def test_a_quiet_probe_says_whether_it_was_disturbed() -> None:
    # the machine may have a neighbour of its own: only the field's type is certain
    assert isinstance(probe_limits([1], [0], **SMALL)[1].disturbed, bool)


def test_counts_must_be_positive_whole_numbers() -> None:
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match=f"thread count {bad!r} must be"):
            probe_limits([1, bad], [0])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="cpus must name at least one CPU"):
        probe_limits([1], [])


def test_a_failing_worker_ends_the_probe_with_its_reason() -> None:
    started = time.monotonic()
    with pytest.raises(LimitsProbeError, match=r"worker 0 \(CPU 9999\) failed: .*pin to CPU 9999"):
        probe_limits([1], [9999], **SMALL)
    assert time.monotonic() - started < 20


def test_arrays_shrink_to_fit_memory_and_a_probe_that_cannot_fit_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Memory:
        available = 2 * 2**30

    monkeypatch.setattr(psutil, "virtual_memory", lambda: Memory)  # as limits.py reads it
    assert limits_module._fit_size(256 * 2**20, 2) == 256 * 2**20  # 512 MiB of 1 GiB
    assert limits_module._fit_size(256 * 2**20, 8) == 128 * 2**20
    with pytest.raises(LimitsProbeError, match=r"needs 2048 MiB \(32 workers of 64 MiB\)"):
        limits_module._fit_size(256 * 2**20, 32)


def test_importing_the_module_does_not_import_numpy() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, pytest_ollama_cpu.limits; print('numpy' in sys.modules)",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.strip() == "False"


# --- joining the server's cgroup --------------------------------------------------


def fake_tree(tmp_path: Path, proc_cgroup: str, server_pid: int = 123) -> tuple[Path, Path]:
    proc = tmp_path / "proc"
    (proc / str(server_pid)).mkdir(parents=True)
    (proc / str(server_pid) / "cgroup").write_text(proc_cgroup)
    return tmp_path / "cgroup", proc


def test_joining_a_v1_cgroup_writes_the_pid_into_its_procs(tmp_path: Path) -> None:
    root, proc = fake_tree(tmp_path, "4:memory:/x\n1:cpu:/ollama-slow\n0::/\n")
    target = root / "cpu" / "ollama-slow" / "cgroup.procs"
    target.parent.mkdir(parents=True)
    target.write_text("")
    assert join_cgroup(4242, 123, root, proc) == Joined("/ollama-slow", None)
    assert target.read_text() == "4242\n"


def test_joining_a_v1_cgroup_where_cpu_and_cpuacct_share_a_mount(tmp_path: Path) -> None:
    root, proc = fake_tree(tmp_path, "3:cpu,cpuacct:/a/b\n")
    target = root / "cpu,cpuacct" / "a" / "b" / "cgroup.procs"
    target.parent.mkdir(parents=True)
    target.write_text("")
    assert join_cgroup(7, 123, root, proc) == Joined("/a/b", None)
    assert target.read_text() == "7\n"


def test_joining_a_v2_cgroup(tmp_path: Path) -> None:
    root, proc = fake_tree(tmp_path, "0::/system.slice/ollama.service\n")
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpu memory\n")
    target = root / "system.slice" / "ollama.service" / "cgroup.procs"
    target.parent.mkdir(parents=True)
    target.write_text("")
    assert join_cgroup(9, 123, root, proc) == Joined("/system.slice/ollama.service", None)
    assert target.read_text() == "9\n"


def test_a_server_in_the_root_cgroup_has_nothing_to_join(tmp_path: Path) -> None:
    root, proc = fake_tree(tmp_path, "1:cpu:/\n0::/\n")
    (root / "cpu").mkdir(parents=True)
    (root / "cpu" / "cgroup.procs").write_text("")
    assert join_cgroup(9, 123, root, proc) == Joined(None, None)
    assert (root / "cpu" / "cgroup.procs").read_text() == ""


def test_a_missing_cgroup_is_a_note_not_a_new_file(tmp_path: Path) -> None:
    root, proc = fake_tree(tmp_path, "1:cpu:/ollama-slow\n")
    (root / "cpu").mkdir(parents=True)
    joined = join_cgroup(9, 123, root, proc)
    assert joined.cgroup is None and joined.note is not None
    assert "could not join the server's cgroup /ollama-slow" in joined.note
    assert "No such file or directory" in joined.note
    assert "without the server's CPU quota" in joined.note
    assert not (root / "cpu" / "ollama-slow").exists()


def test_an_unwritable_cgroup_is_a_note_with_the_reason(tmp_path: Path) -> None:
    root, proc = fake_tree(tmp_path, "1:cpu:/ollama-slow\n")
    (root / "cpu" / "ollama-slow" / "cgroup.procs").mkdir(parents=True)  # cannot be written
    joined = join_cgroup(9, 123, root, proc)
    assert joined.cgroup is None and joined.note is not None
    assert "Is a directory" in joined.note


def test_no_permission_to_join_says_whom_to_run_as(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, proc = fake_tree(tmp_path, "1:cpu:/ollama-slow\n")
    (root / "cpu" / "ollama-slow").mkdir(parents=True)
    (root / "cpu" / "ollama-slow" / "cgroup.procs").write_text("")

    def refuse(*args: Any) -> int:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(os, "open", refuse)  # as limits.py calls it
    note = join_cgroup(9, 123, root, proc).note
    assert note is not None and "Permission denied" in note
    assert "run the tests as root or as the server's user" in note


def test_a_server_that_is_gone_is_a_note(tmp_path: Path) -> None:
    joined = join_cgroup(9, 999, tmp_path / "cgroup", tmp_path / "proc")
    assert joined.cgroup is None and joined.note is not None
    assert "could not read" in joined.note


def test_a_probe_that_cannot_join_the_server_says_so_and_ignores_its_quota() -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()  # a server that has exited: its cgroup cannot be read
    probed = probe_limits([1], first_cpus(1), server_pid=gone.pid, quota_cpus=0.25, **SMALL)
    assert probed.cgroup is None
    assert probed.note is not None and "without the server's CPU quota" in probed.note
    assert probed[1].flops_per_second > 2 * 512**3


def test_under_the_servers_cpu_quota_the_probe_gets_what_the_server_gets() -> None:
    base = Path("/sys/fs/cgroup/cpu")
    if os.geteuid() != 0 or not (base / "cgroup.procs").exists():
        pytest.skip("needs root and a cgroup v1 cpu controller at /sys/fs/cgroup/cpu")
    if (Path("/sys/fs/cgroup") / "cgroup.controllers").exists():
        pytest.skip("cgroup v2 host: this test builds a v1 cgroup")
    group = base / f"pytest-ollama-cpu-limits-test-{os.getpid()}"
    try:
        group.mkdir()
    except OSError as error:
        pytest.skip(f"cannot create a cgroup under {base}: {error.strerror}")
    server = None
    try:
        (group / "cpu.cfs_quota_us").write_text("50000")  # 0.5 CPU a 100 ms period
        server = subprocess.Popen(["sleep", "60"])  # stands in for the server
        (group / "cgroup.procs").write_text(f"{server.pid}\n")
        cpus = first_cpus(1)
        # the reference must be undisturbed: another test's work beside it (pytest -n 2)
        # halves it, and the quota's effect would vanish in that
        for _ in range(5):
            free = probe_limits([1], cpus, size=8 * 2**20, window=0.2, repeats=2)
            if not free[1].disturbed:
                break
        else:
            pytest.skip("the machine stayed busy: no undisturbed reference to compare with")
        held = probe_limits(
            [1],
            cpus,
            server_pid=server.pid,
            quota_cpus=0.5,
            size=8 * 2**20,
            window=0.5,
            repeats=2,
        )
        assert held.cgroup == f"/{group.name}" and held.note is None
        assert held[1].disturbed is False
        assert held[1].flops_per_second < 0.75 * free[1].flops_per_second
        assert f"in the server's cgroup /{group.name}" in held.describe()
    finally:
        if server is not None:
            server.kill()
            server.wait()
        for _ in range(50):  # the workers have been reaped; the kernel may lag a little
            try:
                group.rmdir()
                break
            except OSError:
                time.sleep(0.1)


# --- the cache ------------------------------------------------------------------


class FakeCache:
    """pytest's config.cache as far as cached_limits uses it: JSON in, JSON out."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {}

    def get(self, key: str, default: Any) -> Any:
        return json.loads(self.values[key]) if key in self.values else default

    def set(self, key: str, value: Any) -> None:
        self.values[key] = json.dumps(value)

    def stored(self) -> Any:
        return json.loads(self.values[CACHE_KEY])


FACTS = {"hostname": "box", "cpu_model": "AMD EPYC", "affinity": [0, 1], "quota": None}


class FakeProbe:
    """Figures that say which call made them: read 10 GB/s x threads + the call number."""

    def __init__(self) -> None:
        self.calls: list[list[int]] = []

    def __call__(self, counts: Sequence[int]) -> MachineLimits:
        self.calls.append(list(counts))
        call = len(self.calls)
        return MachineLimits(
            limits={k: Limit(k, 10e9 * k + call, 100e9 * k, False) for k in counts},
            cpus=(0, 1),
            cgroup=None,
            note=None,
            cost_seconds=1.5 * len(counts),
            method="fake",
        )


def test_a_cache_hit_probes_nothing_and_costs_nothing() -> None:
    cache, probe = FakeCache(), FakeProbe()
    first = cached_limits(cache, FACTS, [1, 2], probe, now=lambda: 1000.0)
    second = cached_limits(cache, FACTS, [2, 1], probe, now=lambda: 2000.0)
    assert probe.calls == [[1, 2]]
    assert first.cost_seconds == 3.0 and second.cost_seconds == 0
    assert second.limits == first.limits and list(second.limits) == [2, 1]
    assert "(from the cache)" in second.describe()
    stored = cache.stored()
    assert stored["version"] == 1
    (entry,) = stored["machines"].values()
    assert entry["probed_at"] == 1000.0
    assert json.loads(next(iter(stored["machines"]))) == FACTS


def test_a_partial_hit_probes_only_the_missing_counts_and_merges_them() -> None:
    cache, probe = FakeCache(), FakeProbe()
    cached_limits(cache, FACTS, [1], probe, now=lambda: 1000.0)
    both = cached_limits(cache, FACTS, [1, 2], probe, now=lambda: 1100.0)
    assert probe.calls == [[1], [2]]
    assert both[1].read_bytes_per_second == 10e9 + 1  # from the cache (call 1)
    assert both[2].read_bytes_per_second == 20e9 + 2  # fresh (call 2)
    assert both.cost_seconds == 1.5  # what was probed now
    (entry,) = cache.stored()["machines"].values()
    assert sorted(entry["limits"]["limits"]) == ["1", "2"]
    assert entry["probed_at"] == 1000.0  # as old as its oldest figure
    cached_limits(cache, FACTS, [2, 1], probe, now=lambda: 1200.0)
    assert len(probe.calls) == 2


def test_old_entries_are_probed_again() -> None:
    cache, probe = FakeCache(), FakeProbe()
    cached_limits(cache, FACTS, [1], probe, max_age=60, now=lambda: 1000.0)
    cached_limits(cache, FACTS, [1], probe, max_age=60, now=lambda: 1059.0)
    assert len(probe.calls) == 1
    fresh = cached_limits(cache, FACTS, [1], probe, max_age=60, now=lambda: 1061.0)
    assert len(probe.calls) == 2 and fresh.cost_seconds == 1.5
    assert cache.stored()["machines"][json.dumps(FACTS, sort_keys=True)]["probed_at"] == 1061.0


def test_another_machine_has_its_own_entry() -> None:
    cache, probe = FakeCache(), FakeProbe()
    cached_limits(cache, FACTS, [1], probe, now=lambda: 1000.0)
    cached_limits(cache, {**FACTS, "quota": 0.5}, [1], probe, now=lambda: 1000.0)
    assert len(probe.calls) == 2 and len(cache.stored()["machines"]) == 2


@pytest.mark.parametrize(
    "damaged",
    [
        "not a dict",
        [1, 2],
        {"version": 2, "machines": {}},
        {"version": 1, "machines": []},
        {"version": 1, "machines": {json.dumps(FACTS, sort_keys=True): "x"}},
        {"version": 1, "machines": {json.dumps(FACTS, sort_keys=True): {"probed_at": "x"}}},
        {
            "version": 1,
            "machines": {
                json.dumps(FACTS, sort_keys=True): {
                    "probed_at": 1000.0,
                    "limits": {"limits": {"1": {"threads": "one"}}},
                }
            },
        },
    ],
)
def test_a_damaged_cache_value_is_ignored_and_overwritten(damaged: Any) -> None:
    cache, probe = FakeCache(), FakeProbe()
    cache.set(CACHE_KEY, damaged)
    got = cached_limits(cache, FACTS, [1], probe, now=lambda: 1000.0)
    assert probe.calls == [[1]] and got.cost_seconds == 1.5
    entry = cache.stored()["machines"][json.dumps(FACTS, sort_keys=True)]
    assert MachineLimits.from_dict(entry["limits"])[1] == got[1]


def test_without_a_cache_every_call_probes() -> None:
    probe = FakeProbe()
    cached_limits(None, FACTS, [1, 2], probe)
    cached_limits(None, FACTS, [1, 2], probe)
    assert probe.calls == [[1, 2], [1, 2]]
    with pytest.raises(ValueError, match="thread count 0"):
        cached_limits(None, FACTS, [0], probe)


def test_a_count_probed_under_load_is_probed_again_next_time() -> None:
    cache, probe = FakeCache(), FakeProbe()

    def busy(counts: Sequence[int]) -> MachineLimits:
        found = probe(counts)
        return replace(
            found, limits={k: replace(v, disturbed=k == 2) for k, v in found.limits.items()}
        )

    first = cached_limits(cache, FACTS, [1, 2], busy, now=lambda: 1000.0)
    assert first[2].disturbed and not first[1].disturbed
    again = cached_limits(cache, FACTS, [1, 2], probe, now=lambda: 1100.0)
    assert probe.calls == [[1, 2], [2]]  # only the disturbed count again
    assert not again[2].disturbed and again[1] == first[1]


def test_the_cache_file_keeps_values_and_survives_damage(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "limits.json"
    cache = LimitsFile(path)
    assert cache.get("k", "default") == "default"  # no file yet
    cache.set("k", {"a": 1})
    assert LimitsFile(path).get("k", None) == {"a": 1}
    path.write_text("{half")
    assert cache.get("k", None) is None  # damaged: as if empty, probed again
    cache.set("k", [1])
    assert cache.get("k", None) == [1]
    assert [p.name for p in path.parent.iterdir()] == ["limits.json"]  # no temporary left


def test_the_cache_file_is_per_user_in_the_temporary_folder_unless_told(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv(CACHE_ENV, raising=False)
    assert limits_cache_path().name == "limits.json"
    assert f"pytest-ollama-cpu-{os.getuid()}" in str(limits_cache_path())
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "x.json"))
    assert limits_cache_path() == tmp_path / "x.json"


def test_peeking_reads_the_cache_and_probes_nothing() -> None:
    cache, probe = FakeCache(), FakeProbe()
    assert peek_limits(cache, FACTS, now=lambda: 1000.0) is None
    assert peek_limits(None, FACTS) is None
    cached_limits(cache, FACTS, [1, 2], probe, now=lambda: 1000.0)
    seen = peek_limits(cache, FACTS, now=lambda: 1500.0)
    assert seen is not None and sorted(seen.limits) == [1, 2] and seen.cost_seconds == 0
    assert peek_limits(cache, FACTS, max_age=100, now=lambda: 1500.0) is None  # too old
    assert peek_limits(cache, {**FACTS, "hostname": "other"}, now=lambda: 1500.0) is None
    assert probe.calls == [[1, 2]]
