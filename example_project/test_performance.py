"""An example performance suite: how well does the local model use this machine's CPUs?

Run it against your own Ollama:   pytest example_project --ollama-cpu --ollama-cpu-model llama3.2
or against the embedded one:      make example

Its assertions hold on a busy machine (a CI runner, a laptop with a browser open): samples
during which other processes took CPU the server needed are set aside and retaken, and a
thread count that the load left without undisturbed samples is *busy*, which the plugin
reports as a warning (see --ollama-cpu-inconclusive), never as a failure of the server.
"""

import pytest


@pytest.mark.threads(1, 2)
def test_generation_uses_the_cores(ollama_cpu):
    sweep = ollama_cpu.generate("Explain what a CPU cache is.")
    # Assert on verdicts, not on raw medians: a verdict is a statistical test on the
    # undisturbed samples, so noise cannot fail it and a busy machine leaves it undecided.
    # More threads need not be faster (generation is often memory-bound), but two threads
    # at under half the speed of one would be a broken setup.
    verdict = sweep.check(min_utilization=0.7, min_speedup=0.5)
    assert verdict, verdict.message()
    # Figures of a thread count the load left unmeasured are not known: ask .busy first.
    for result in sweep:
        if not result.busy:
            assert result.tokens_per_second.median > 1
            assert result.runner_threads in (None, result.threads)


@pytest.mark.threads("auto", min_utilization=0.7, min_machine_utilization=0.7)
def test_the_threads_keep_the_cpus_busy(ollama_cpu):
    # fails when the samples show the runner's threads idle or the usable CPUs left unused
    ollama_cpu.generate("Explain what a CPU cache is.")


#: A long context, as a RAG prompt or a chat history would be: several hundred tokens that
#: the model must process (prefill) before its first token. Each request starts with a
#: line of its own, so Ollama's prompt cache never serves a sample. Ask for something the
#: model writes at length about: a reply that stops at once has no generation rate.
CONTEXT = (
    "The processor reads data from memory through a hierarchy of caches. Each level is "
    "larger and slower than the one before it, and a miss at every level costs a trip to "
    "main memory. "
) * 10 + "\nExplain the text above."


@pytest.mark.threads(1, 2, min_speedup={"prefill": 1.3})
def test_a_long_prompt_is_processed_faster_with_more_threads(ollama_cpu):
    # prefill is compute-bound: where generation barely scales, prompt processing
    # should, and time to first token falls with it
    sweep = ollama_cpu.generate(CONTEXT)
    for result in sweep:
        if not result.busy:
            assert result.summary("prefill").median > 1
            assert result.summary("ttft").median > 0


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
