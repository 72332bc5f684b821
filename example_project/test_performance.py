"""An example performance suite: how well does the local model use this machine's CPUs?

Run it against your own Ollama:   pytest example_project --ollama-cpu --ollama-cpu-model llama3.2
or against the embedded one:      make example
"""

import pytest


@pytest.mark.threads(1, 2)
def test_generation_uses_the_cores(ollama_cpu):
    sweep = ollama_cpu.generate("Explain what a CPU cache is.", num_predict=64)
    assert sweep[2].tokens_per_second.median > sweep[1].tokens_per_second.median


@pytest.mark.threads("auto", min_utilization=0.7, min_machine_utilization=0.7)
def test_the_threads_keep_the_cpus_busy(ollama_cpu):
    # fails when the samples show the runner's threads idle or the usable CPUs left unused
    ollama_cpu.generate("Explain what a CPU cache is.", num_predict=64)


@pytest.mark.threads("auto", rounds=3)
def test_chat_across_usable_cpus(ollama_cpu):
    sweep = ollama_cpu.chat(
        [{"role": "user", "content": "Name three uses of a hash table."}], num_predict=48
    )
    # every thread count was measured, and the runner really got the threads asked for
    assert len(sweep) == len(ollama_cpu.threads)
    for result in sweep:
        assert result.runner_threads in (None, result.threads)
    # scaling is checked explicitly here, on the samples at hand
    verdict = sweep.check(min_efficiency=0.3)
    assert verdict, verdict.message()
