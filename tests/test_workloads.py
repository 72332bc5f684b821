"""Prompts of a requested token length, calibrated with the server's own counts."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from pytest_ollama_cpu.workloads import (
    CalibrationError,
    filler,
    prefill_prompt,
    tolerance,
)


def counter(per_word: float, fixed: int = 15) -> tuple[list[str], Callable[[str], int]]:
    sent: list[str] = []

    def count(prompt: str) -> int:
        sent.append(prompt)
        return fixed + round(per_word * len(prompt.split()))

    return sent, count


@pytest.mark.parametrize("per_word", [0.9, 1.0, 1.3, 1.7, 2.4])
@pytest.mark.parametrize("tokens", [32, 128, 512, 2048])
def test_a_prompt_of_the_tokens_asked_whatever_the_tokenizer(per_word: float, tokens: int) -> None:
    sent, count = counter(per_word)
    prompt, got = prefill_prompt(count, tokens)
    assert abs(got - tokens) <= tolerance(tokens)
    assert prompt.endswith("\nExplain the text above.")
    assert len(sent) <= 4  # a handful of requests, each as long as the prompt


def test_a_model_whose_counts_cannot_be_reached_is_an_error_that_says_so() -> None:
    with pytest.raises(CalibrationError, match="could not build a prompt of 512 tokens"):
        prefill_prompt(lambda prompt: 40, 512)
    with pytest.raises(ValueError, match="needs 32 prompt tokens or more"):
        prefill_prompt(lambda prompt: 40, 16)


def test_the_filler_is_text_with_a_question() -> None:
    assert filler(3) == "The processor reads\nExplain the text above."
    assert len(filler(200).split()) == 200 + 4
