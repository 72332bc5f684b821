"""pytest-xdist: sweeps take turns, results reach the controller, outputs are written once."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pytest_ollama_cpu.locking import LockTimeout, lock_names, taking_turns
from pytest_ollama_cpu.xdist import carry_group_suffix, ungrouped_nodeid

from .conftest import run_fake
from .fake_ollama import Behaviour, FakeOllama, SpawnedFakeOllama

pytest.importorskip("xdist")

SUITE = """
import pytest

@pytest.mark.threads(1, 2, rounds=2)
def test_a(ollama_cpu):
    ollama_cpu.generate("prompt a", num_predict=8)

@pytest.mark.threads(1, 3, rounds=2)
def test_b(ollama_cpu):
    ollama_cpu.chat([{"role": "user", "content": "prompt b"}], num_predict=8)

@pytest.mark.threads(2, rounds=2)
def test_c(ollama_cpu):
    ollama_cpu.generate("prompt c", num_predict=8)

def test_plain():
    pass
"""


def run(
    pytester: pytest.Pytester, fake: FakeOllama | SpawnedFakeOllama, *args: str
) -> pytest.RunResult:
    return run_fake(pytester, fake, *args, in_subprocess=True)


def comparable(document: dict[str, Any]) -> list[Any]:
    """What must not depend on xdist: tests, order, thread counts, samples and tokens/s."""
    return [
        (
            s["test"],
            s["kind"],
            [
                (r["threads"], len(r["samples"]), [x["tokens_per_second"] for x in r["samples"]])
                for r in s["results"]
            ],
        )
        for s in document["sweeps"]
    ]


def prompt_of(request: dict[str, Any]) -> str:
    """The test's prompt, without the unique first line that defeats the prompt cache."""
    if "prompt" in request:
        return str(request["prompt"]).split("\n", 1)[-1]
    return str(request["messages"][0]["content"]).split("\n", 1)[-1]


def test_plain_and_parallel_runs_give_the_same_results(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(SUITE)
    documents = {}
    for label, args in {
        "plain": ["-p", "no:xdist"],
        "n0": ["-n", "0"],
        "n2": ["-n", "2"],
    }.items():
        out = pytester.path / f"{label}.json"
        with FakeOllama(Behaviour(hang_seconds=0.05)) as fake:
            result = run(
                pytester, fake, *args, f"--ollama-cpu-json={out}", "--ollama-cpu-save=" + label
            )
            prompts = [prompt_of(r) for r in fake.behaviour.requests]
        result.assert_outcomes(passed=4)
        result.stdout.fnmatch_lines(["*= ollama-cpu: thread sweeps =*"])
        # one summary, written once, by the controller
        assert result.stdout.str().count("ollama-cpu: thread sweeps") == 1
        assert result.stdout.str().count("::test_a: generate with tiny") == 1
        documents[label] = json.loads(out.read_text())
        # two sweeps never ran at the same time: each test's requests come in one block
        blocks = [p for i, p in enumerate(prompts) if i == 0 or prompts[i - 1] != p]
        assert sorted(blocks) == ["prompt a", "prompt b", "prompt c"], blocks
    assert comparable(documents["plain"]) == comparable(documents["n0"])
    assert comparable(documents["plain"]) == comparable(documents["n2"])
    saved = sorted(p.name for p in (pytester.path / ".benchmarks").glob("*/*.json"))
    assert saved == ["0001_plain.json", "0002_n0.json", "0003_n2.json"]


def test_a_waiting_worker_does_not_count_the_wait(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(SUITE)
    out = pytester.path / "r.json"
    with FakeOllama(Behaviour(hang_seconds=0.3)) as fake:
        result = run(pytester, fake, "-n", "3", f"--ollama-cpu-json={out}")
    result.assert_outcomes(passed=4)
    sweeps = json.loads(out.read_text())["sweeps"]
    waits = sorted(s["waited_seconds"] for s in sweeps)
    assert waits[0] < 0.5 < waits[-1]  # one went first, the others waited their turn
    result.stdout.fnmatch_lines(["*waited * s for other sweeps on this server*(not measured)"])
    for sweep in sweeps:
        for r in sweep["results"]:
            for sample in r["samples"]:
                assert 0.3 <= sample["wall_seconds"] < 1.0


def test_the_performance_tests_are_put_in_one_xdist_group(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
import pytest

@pytest.mark.threads(1)
def test_sweep(request, ollama_cpu):
    mark = request.node.get_closest_marker("xdist_group")
    if request.config.pluginmanager.hasplugin("xdist"):
        assert mark.args == ("ollama-cpu",)
    else:
        assert mark is None

def test_plain(request):
    assert request.node.get_closest_marker("xdist_group") is None
"""
    )
    with FakeOllama(Behaviour()) as fake:
        run(pytester, fake, "-n", "2").assert_outcomes(passed=2)
        # without xdist the mark is not added: a project without xdist knows no such marker
        run(pytester, fake, "-p", "no:xdist", "--strict-markers").assert_outcomes(passed=2)


def test_loadgroup_keeps_the_performance_tests_in_one_worker(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(SUITE)
    with FakeOllama(Behaviour()) as fake:
        result = run(pytester, fake, "-n", "2", "--dist", "loadgroup", "-v")
    result.assert_outcomes(passed=4)
    # (pytest 9.2 + pytest-xdist 3.8 split every group: the plugin carries its own over)
    # the group's @suffix does not leak into the results
    result.stdout.fnmatch_lines(["*::test_a: generate with tiny*"])
    result.stdout.no_fnmatch_line("*@ollama-cpu: generate*")
    workers = {
        line.split("]")[0].split("[")[-1]
        for line in result.stdout.lines
        if "PASSED" in line and "::test_" in line and "test_plain" not in line
    }
    assert len(workers) == 1, workers


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")
def test_other_tests_stealing_cpu_are_set_aside_and_retaken(pytester: pytest.Pytester) -> None:
    cpus = len(os.sched_getaffinity(0))
    pytester.makepyfile(
        f"""
import time
import pytest

@pytest.mark.threads({cpus}, rounds=4)
def test_sweep(ollama_cpu):
    sweep = ollama_cpu.generate("x", num_predict=8)
    # the busy test ended within the wait, and every count got its undisturbed rounds,
    # unless yet another process kept the machine busy: then the count was given up
    assert len(sweep[{cpus}].undisturbed) == 4 or sweep[{cpus}].gave_up

def test_busy_neighbour():
    end = time.monotonic() + 3
    while time.monotonic() < end:
        pass
"""
    )
    # the fake in a process of its own: the busy test must count as another process;
    # all CPUs asked for, so the busy one is a CPU the threads needed
    with SpawnedFakeOllama(Behaviour(hang_seconds=0.4)) as fake:
        result = run(pytester, fake, "-n", "2")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*waited * s* for quiet*", "*recommended num_thread*"])
    # however it fell: a disturbed measured sample is set aside and said so
    if "retaken:" in result.stdout.str():
        result.stdout.fnmatch_lines(
            [
                f"*retaken: * disturbed sample* at {cpus} threads set aside (other processes "
                f"used * of the server's {cpus} CPUs, more than 0.1 beyond the 0 CPUs they "
                "could not use anyway)*",
                "*disturbed: * of * samples; verdicts, the recommendation and comparisons use "
                "the undisturbed ones only (other tests? see --dist loadgroup in the README)",
            ]
        )


def test_locks_are_per_server_and_per_cpu(tmp_path: Path) -> None:
    assert lock_names("http://a:1", [3, 1]) == [
        "cpu-0001",
        "cpu-0003",
        lock_names("http://a:1", [])[0],
    ]
    # disjoint CPUs and different servers: both can be held at once
    with (
        taking_turns("http://a:1", [0], 1.0, tmp_path) as first,
        taking_turns("http://b:1", [1], 1.0, tmp_path) as second,
    ):
        assert first < 0.5 and second < 0.5
    # the same CPU: the second one waits, then gives up with a message
    with (
        taking_turns("http://a:1", [0], 1.0, tmp_path),
        pytest.raises(LockTimeout, match="waited 0.2s for another sweep"),
        taking_turns("http://b:1", [0], 0.2, tmp_path),
    ):
        pass


def test_the_group_suffix_is_stripped_from_test_ids() -> None:
    assert ungrouped_nodeid("t.py::test_a@ollama-cpu") == "t.py::test_a"
    # with a group of the user's too, xdist joins the sorted names with "_"
    assert ungrouped_nodeid("t.py::test_a[x]@db_ollama-cpu") == "t.py::test_a[x]"
    # an "@" of the user's is left alone
    assert ungrouped_nodeid("t.py::test_a[me@host]") == "t.py::test_a[me@host]"
    assert ungrouped_nodeid("t.py::test_a@db") == "t.py::test_a@db"


def test_carrying_the_group_over_touches_only_our_rewritten_items(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile("def test_a():\n    pass\n\ndef test_b():\n    pass\n")
    items, _ = pytester.inline_genitems("-p", "no:xdist")
    ours, theirs = items
    assert not carry_group_suffix(ours)  # nothing rewritten: nothing to do
    # what pytest-xdist 3.8 does on a worker (item._nodeid = ...): an attribute pytest 9.2
    # no longer declares, set in the instance's __dict__ where carry_group_suffix reads it
    ours.__dict__["_nodeid"] = f"{ours.nodeid}@ollama-cpu"
    theirs.__dict__["_nodeid"] = f"{theirs.nodeid}@db"
    before = theirs.nodeid
    # pytest >= 9.2 keeps the id in _id and needs the copy; an older one reads _nodeid
    # itself, so the rewrite has taken effect already and there is nothing to carry over
    assert carry_group_suffix(ours) == (importlib.util.find_spec("_pytest.nodeid") is not None)
    assert ours.nodeid.endswith("::test_a@ollama-cpu")
    assert not carry_group_suffix(theirs) and theirs.nodeid == before


CRASHING_SUITE = """
import os
import signal
import threading
from pathlib import Path

import pytest

@pytest.mark.threads(1, 2, rounds=2)
def test_a(ollama_cpu):
    ollama_cpu.generate("prompt a", num_predict=8)

@pytest.mark.threads(1, 2, rounds=2)
def test_b(ollama_cpu):
    ollama_cpu.generate("prompt b", num_predict=8)

@pytest.mark.threads(1, 2, rounds=30)
def test_dies(ollama_cpu):
    died = Path(__file__).with_name("died")
    if not died.exists():  # once: pytest-xdist gives the test to the new worker again
        died.touch()
        threading.Timer(0.5, lambda: {how}).start()
    ollama_cpu.generate("prompt dies", num_predict=8)

@pytest.mark.threads(1, 2, rounds=2)
def test_c(ollama_cpu):
    ollama_cpu.generate("prompt c", num_predict=8)
"""


@pytest.mark.parametrize("how", ["os._exit(1)", "os.kill(os.getpid(), signal.SIGKILL)"])
def test_a_worker_dying_mid_sweep_loses_no_finished_sweep_and_blocks_nothing(
    pytester: pytest.Pytester, how: str
) -> None:
    """The worker measures test_a and test_b, then dies in test_dies holding the locks;
    its replacement measures test_dies again and test_c without waiting for them."""
    pytester.makepyfile(CRASHING_SUITE.replace("{how}", how))
    out = pytester.path / "r.json"
    with FakeOllama(Behaviour(hang_seconds=0.1)) as fake:
        result = run(pytester, fake, "-n", "2", "--dist", "loadgroup", f"--ollama-cpu-json={out}")
        again = run(pytester, fake, "-n", "2", f"--ollama-cpu-json={out}.again", "-k", "test_c")
    result.stdout.fnmatch_lines(["*worker 'gw*' crashed while running*test_dies*"])
    text = result.stdout.str()
    for test in ("test_a", "test_b", "test_dies", "test_c"):
        assert text.count(f"::{test}: generate with tiny") == 1, text
    sweeps = json.loads(out.read_text())["sweeps"]
    assert [s["test"].split("::")[-1] for s in sweeps] == [
        "test_a",
        "test_b",
        "test_dies",
        "test_c",
    ]
    # the dead worker's locks went with it: nobody waited for them, in this run or the next
    assert all(s["waited_seconds"] < 1.0 for s in sweeps), [s["waited_seconds"] for s in sweeps]
    again.assert_outcomes(passed=1)
    (later,) = json.loads((pytester.path / "r.json.again").read_text())["sweeps"]
    assert later["waited_seconds"] < 1.0


def test_a_lock_held_by_a_killed_process_is_free_at_once(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from pathlib import Path\n"
            "from pytest_ollama_cpu.locking import taking_turns\n"
            "with taking_turns('http://a:1', [0], 5.0, Path(sys.argv[1])):\n"
            "    print('held', flush=True)\n"
            "    time.sleep(600)\n",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        with pytest.raises(LockTimeout), taking_turns("http://a:1", [0], 0.2, tmp_path):
            pass  # held: the lock works
        holder.kill()
        holder.wait(timeout=10)
        with taking_turns("http://a:1", [0], 5.0, tmp_path) as waited:
            assert waited < 0.5
    finally:
        holder.kill()
        holder.wait(timeout=10)
        if holder.stdout is not None:
            holder.stdout.close()
