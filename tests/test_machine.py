import os
from pathlib import Path

import pytest

from pytest_ollama_cpu.machine import (
    CgroupQuota,
    auto_thread_counts,
    parse_cfs,
    parse_cpu_max,
    parse_proc_cgroup,
    read_cgroup_quota,
    read_machine_facts,
    usable_cpus,
    whole_cpus,
)


def test_parsers():
    assert parse_cpu_max("max 100000\n") is None
    assert parse_cpu_max("150000 100000\n") == (150000, 100000)
    assert parse_cfs("-1\n", "100000\n") is None
    assert parse_cfs("200000", "100000") == (200000, 100000)
    paths = parse_proc_cgroup("12:cpu,cpuacct:/docker/abc\n3:memory:/m\n0::/user.slice\n")
    assert paths["cpu"] == "/docker/abc" and paths["cpuacct"] == "/docker/abc"
    assert paths[""] == "/user.slice" and paths["memory"] == "/m"


def _proc(tmp_path: Path, text: str) -> Path:
    proc = tmp_path / "proc" / "123"
    proc.mkdir(parents=True)
    (proc / "cgroup").write_text(text)
    return tmp_path / "proc"


def test_cgroup_v2_quota_takes_the_tightest_ancestor(tmp_path):
    root = tmp_path / "cg"
    (root / "a" / "b").mkdir(parents=True)
    (root / "cgroup.controllers").write_text("cpu\n")
    (root / "a" / "cpu.max").write_text("150000 100000\n")
    (root / "a" / "b" / "cpu.max").write_text("max 100000\n")
    proc = _proc(tmp_path, "0::/a/b\n")
    quota = read_cgroup_quota(123, cgroup_root=root, proc_root=proc)
    assert quota == CgroupQuota(150000, 100000, 2, "/a")
    assert quota.cpus == 1.5


def test_cgroup_v1_quota_inside_a_container(tmp_path):
    # the container sees its own cgroup as the root; the host path does not exist
    root = tmp_path / "cg"
    (root / "cpu,cpuacct").mkdir(parents=True)
    (root / "cpu,cpuacct" / "cpu.cfs_quota_us").write_text("300000\n")
    (root / "cpu,cpuacct" / "cpu.cfs_period_us").write_text("100000\n")
    proc = _proc(tmp_path, "4:cpu,cpuacct:/kubepods/pod1/c1\n")
    quota = read_cgroup_quota(123, cgroup_root=root, proc_root=proc)
    assert quota is not None and quota.version == 1 and quota.cpus == 3.0


def test_no_quota(tmp_path):
    root = tmp_path / "cg"
    (root / "cpu").mkdir(parents=True)
    (root / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    (root / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    proc = _proc(tmp_path, "1:cpu:/\n")
    assert read_cgroup_quota(123, cgroup_root=root, proc_root=proc) is None
    assert read_cgroup_quota(999, cgroup_root=root, proc_root=proc) is None


def test_usable_cpus_is_affinity_capped_by_quota():
    assert usable_cpus(8, None) == 8.0
    assert usable_cpus(8, CgroupQuota(250000, 100000, 2, "/")) == 2.5
    assert usable_cpus(2, CgroupQuota(400000, 100000, 2, "/")) == 2.0
    assert whole_cpus(2.5) == 2 and whole_cpus(0.5) == 1 and whole_cpus(3.0) == 3


def test_auto_thread_counts():
    assert auto_thread_counts(1) == [1]
    assert auto_thread_counts(2) == [1, 2]
    assert auto_thread_counts(12) == [1, 2, 4, 8, 12]


def test_facts_of_this_process_agree_with_the_os():
    facts = read_machine_facts()
    assert set(facts.affinity) == os.sched_getaffinity(0)
    assert 0 < facts.usable_cpus <= len(facts.affinity)
    assert facts.logical_cores is not None and facts.logical_cores >= len(facts.affinity)
    assert "usable CPUs" in facts.describe()


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs sched_setaffinity")
def test_facts_follow_the_measured_process_affinity():
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        os.sched_setaffinity(child.pid, {0})
        facts = read_machine_facts(child.pid)
        assert facts.affinity == (0,)
        assert facts.usable_cpus == 1.0
        assert facts.measured_pid == child.pid
    finally:
        child.kill()
        child.wait()
