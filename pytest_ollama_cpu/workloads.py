"""Workloads like llama-bench's: a prompt of a requested length, or a long reply.

llama-bench measures prompt processing and generation apart (``pp512``,
``tg128``). ``prefill_prompt`` builds a prompt that Ollama counts as a requested
number of prompt tokens, calibrated with Ollama's own counts (a tokenizer
differs from model to model, so no guess holds): ``count`` sends a prompt and
returns ``prompt_eval_count``. Pure apart from ``count``.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import cycle, islice

from .errors import OllamaCpuError

#: Text a prefill prompt is cut from, and the question after it, which the model
#: answers at some length (a reply that stops at once has no generation rate).
FILLER_TEXT = (
    "The processor reads data from memory through a hierarchy of caches. Each level is "
    "larger and slower than the one before it, and a miss at every level costs a trip to "
    "main memory. Prefetchers guess the next lines to fetch, and the operating system "
    "schedules threads onto cores that share the last level."
)
QUESTION = "\nExplain the text above."

#: A prompt the model writes at length about: a generation workload (``tg``).
#: Measured on Gemma 3 270M: 15 of 15 requests, each with its own first line, wrote
#: 256 tokens; "Write a long story about ..." stopped early in 8 of 20.
WRITING_PROMPT = (
    "Write a detailed essay of at least two thousand words on the history of the lighthouse."
)

#: The fewest prompt tokens a prefill workload asks for: below it the chat template
#: and the unique first line are most of the prompt.
MIN_PREFILL_TOKENS = 32


#: How close a calibrated prompt comes to the tokens asked: 1%, or 2 tokens.
def tolerance(tokens: int) -> int:
    return max(2, tokens // 100)


class CalibrationError(OllamaCpuError):
    pass


def filler(words: int) -> str:
    """``words`` words of ``FILLER`` (repeated as needed), then the question."""
    return " ".join(islice(cycle(FILLER_TEXT.split(" ")), words)) + QUESTION


def prefill_prompt(count: Callable[[str], int], tokens: int, tries: int = 6) -> tuple[str, int]:
    """A prompt whose requests Ollama counts as ``tokens`` prompt tokens (within
    ``tolerance``), and the count it got. Each probe moves by the tokens per word
    seen between the two probes nearest the target."""
    if tokens < MIN_PREFILL_TOKENS:
        raise ValueError(
            f"tokens={tokens!r}: a prefill workload needs {MIN_PREFILL_TOKENS} prompt tokens "
            "or more (the chat template and the request's unique first line take about 15)"
        )
    seen: dict[int, int] = {}
    words = max(1, tokens * 3 // 4)
    for _ in range(tries):
        got = count(filler(words))
        seen[words] = got
        if abs(got - tokens) <= tolerance(tokens):
            return filler(words), got
        nearest = sorted(seen, key=lambda w: abs(seen[w] - tokens))[:2]
        per_word = 1.3
        if len(nearest) == 2 and nearest[0] != nearest[1]:
            a, b = nearest
            per_word = max(0.2, (seen[a] - seen[b]) / (a - b))
        step = round((tokens - got) / per_word)
        words = max(1, words + (step or (1 if got < tokens else -1)))
        if words in seen:
            break
    closest = min(seen, key=lambda w: abs(seen[w] - tokens))
    raise CalibrationError(
        f"could not build a prompt of {tokens} tokens for this model: the nearest had "
        f"{seen[closest]} (Ollama's prompt_eval_count). Ask for another length, or use "
        "generate() with a prompt of your own"
    )
