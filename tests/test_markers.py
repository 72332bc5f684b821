import pytest

from pytest_ollama_cpu.markers import (
    AUTO,
    MarkerError,
    expand_threads,
    parse_marker,
    parse_thread_list,
)


def test_ints_ranges_and_auto():
    marker = parse_marker((1, range(2, 5, 2), "auto"), {"rounds": 3})
    assert marker.counts == (1, 2, 4, AUTO)
    assert marker.rounds == 3


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((0,), {}, "thread count 0 must be 1 or more"),
        ((-2,), {}, "thread count -2 must be 1 or more"),
        ((1.5,), {}, "thread count 1.5 is not a whole number"),
        (("two",), {}, "thread count 'two' is not a whole number"),
        ((True,), {}, "thread count True is not a whole number"),
        ((range(0, 2),), {}, "thread count 0 (in range(0, 2)) must be 1 or more"),
        ((range(3, 3),), {}, "range(3, 3) is empty"),
        ((), {}, "no thread counts given"),
        ((1,), {"round": 3}, "unknown keyword round"),
        ((1,), {"rounds": 0}, "rounds=0 must be"),
    ],
)
def test_bad_markers_name_the_argument(args, kwargs, message):
    with pytest.raises(MarkerError) as info:
        parse_marker(args, kwargs)
    assert message in str(info.value)


def test_expand_auto_follows_usable_cpus():
    assert expand_threads((AUTO,), 1) == [1]
    assert expand_threads((AUTO,), 6) == [1, 2, 4, 6]
    assert expand_threads((AUTO,), 8) == [1, 2, 4, 8]
    assert expand_threads((8, AUTO, 1), 2) == [1, 2, 8]


def test_option_list_form():
    assert parse_thread_list("1, 2,4") == (1, 2, 4)
    assert parse_thread_list("auto") == (AUTO,)
    with pytest.raises(ValueError, match="'x' is not a whole number"):
        parse_thread_list("1,x")
    with pytest.raises(ValueError, match="must be 1 or more"):
        parse_thread_list("0")


def test_cpu_lists():
    from pytest_ollama_cpu.machine import format_cpu_list, parse_cpu_list

    assert parse_cpu_list("0-3,8") == (0, 1, 2, 3, 8)
    assert format_cpu_list((8, 0, 1, 2, 3)) == "0-3,8"
    assert format_cpu_list(range(2, 100)) == "2-99"
    assert format_cpu_list([5]) == "5"
    assert parse_cpu_list("3, 1,1") == (1, 3)
    for bad, message in (("x", "not a CPU number"), ("3-1", "from low to high"), ("", "no CPUs")):
        with pytest.raises(ValueError, match=message):
            parse_cpu_list(bad)


def test_speedup_and_efficiency_thresholds_may_name_a_phase() -> None:
    from pytest_ollama_cpu.thresholds import ThresholdError, check_threshold

    assert check_threshold("min_speedup", {"prefill": 1.6, "generation": {2: 1.2}}) == {
        "prompt_tokens_per_second": 1.6,
        "tokens_per_second": {2: 1.2},
    }
    assert check_threshold("min_efficiency", {"ttft": 0.8}) == {"time_to_first_token": 0.8}
    assert check_threshold("min_speedup", {4: 2.0}) == {4: 2.0}
    with pytest.raises(ThresholdError, match="'colour' is not a phase or a rate to scale; use one"):
        check_threshold("min_speedup", {"colour": 2})
    with pytest.raises(ThresholdError, match="utilization"):
        check_threshold("min_efficiency", {"utilization": 0.5})
    with pytest.raises(ThresholdError, match="keys of min_efficiency are phases"):
        check_threshold("min_efficiency", {2: 0.5})
    with pytest.raises(
        ThresholdError, match=r"min_speedup\['prefill'\]=0 must be a number above 0"
    ):
        check_threshold("min_speedup", {"prefill": 0})
