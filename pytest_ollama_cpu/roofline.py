"""How close a rate comes to the machine's limit: the memory and compute rooflines.

Generating a token of a dense model reads about all of its weights once (and
the keys and values of every earlier position), so the read bandwidth that k
threads get bounds the generation rate at k threads:
``tokens/s <= bandwidth / bytes read per token``. Processing the prompt is
arithmetic: about two operations per weight of the model's blocks per prompt
token (a multiply and an add), plus attention over the earlier positions, so
the machine's peak rate of arithmetic at k threads bounds the prefill rate.
The machine's side is probed (``limits.py``); the model's side comes from
its own facts (Ollama's ``/api/show``), here. Pure functions and data only.

What is counted, and what is not:

- bytes per generated token: the model's size (every weight is read once a
  token; a model whose input embedding table is not also its output layer
  reads one row of it, so its bound is a few per cent low) plus the key and
  value cache of the positions before it, in 16-bit floats (Ollama's default
  ``OLLAMA_KV_CACHE_TYPE``; a sliding-window layer reads fewer, so this is at
  most what is read).
- operations per prompt token: 2 x the weights of the attention and
  feed-forward matrices of every block (a gated feed-forward of three
  matrices, as in Llama, Gemma, Qwen, Mistral and Phi-3), plus 2 x (key +
  value length) x heads x blocks per earlier position. The output layer is
  left out: Ollama asks for the logits of the prompt's last token only.
  Mixture-of-experts models are not estimated (which experts a token uses is
  not in the model's facts).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from .errors import OllamaCpuError

if TYPE_CHECKING:
    from .client import Timings
    from .limits import Limit, MachineLimits

#: Bytes of one stored key or value element: a 16-bit float (Ollama's default cache type).
KV_ELEMENT_BYTES = 2

#: A rate this share of its roofline or more is at the limit: the resource is the cause.
NEAR_LIMIT = 0.7

#: A rate above its roofline by more than this share is not believed: a figure is wrong.
OVER_LIMIT = 1.05


class ModelFactsMissing(OllamaCpuError, ValueError):
    """The model's facts do not give what a figure needs; the message says what."""


@dataclass(frozen=True)
class ModelCost:
    """What one token costs the machine, from the model's facts.

    ``None`` where the facts do not say; ``note`` says why, in words.
    """

    architecture: str | None
    #: bytes of the model's weights (its size in Ollama's model list)
    weight_bytes: int
    parameters: int | None
    #: weights of the attention and feed-forward matrices of all blocks
    block_parameters: int | None
    #: bytes of the key and value cache one position adds, over all blocks
    kv_bytes_per_position: int | None
    #: operations one token's attention spends on each earlier position
    attention_flops_per_position: int | None
    note: str | None = None

    def bytes_per_token(self, position: float) -> float:
        """Bytes read to generate the token at ``position`` (positions before it)."""
        return self.weight_bytes + (self.kv_bytes_per_position or 0) * max(position, 0.0)

    def flops_per_prompt_token(self, prompt_tokens: float) -> float | None:
        """Operations per token of a prompt of ``prompt_tokens`` (causal attention:
        a token attends to half of them on average)."""
        if self.block_parameters is None:
            return None
        attention = (self.attention_flops_per_position or 0) * max(prompt_tokens, 0.0) / 2
        return 2 * self.block_parameters + attention

    def describe(self) -> str:
        """'253.1 MB read per generated token (weights 253.1 MB + KV cache 18.4 kB a
        position); 0.201 GFLOP per prompt token + 36.9 kFLOP a position'."""
        read = f"{self.weight_bytes / 1e6:.1f} MB of weights read per generated token"
        if self.kv_bytes_per_position:
            read += f" + {self.kv_bytes_per_position / 1e3:.1f} kB of KV cache a position"
        if self.block_parameters is None:
            ops = f"operations per prompt token not known ({self.note})"
        else:
            ops = f"{2 * self.block_parameters / 1e9:.3f} GFLOP per prompt token"
            if self.attention_flops_per_position:
                ops += f" + {self.attention_flops_per_position / 1e3:.1f} kFLOP a position"
        return f"{read}; {ops}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelCost:
        return cls(**{f: data.get(f) for f in cls.__dataclass_fields__})  # type: ignore[arg-type]


def _whole(value: Any) -> int | None:
    """A positive whole number from the facts; lists (per-block values) and text are not."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        return None
    return value


def model_cost(model_info: Mapping[str, Any], size: int | None) -> ModelCost:
    """The cost of a token from Ollama's ``model_info`` (``/api/show``) and the model's
    size in bytes (``/api/tags``). Raises ``ModelFactsMissing`` without a size."""
    if size is None or size <= 0:
        raise ModelFactsMissing("Ollama did not report the model's size")
    arch = model_info.get("general.architecture")
    arch = arch if isinstance(arch, str) and arch else None
    parameters = _whole(model_info.get("general.parameter_count"))

    def fact(key: str) -> int | None:
        return None if arch is None else _whole(model_info.get(f"{arch}.{key}"))

    blocks, width = fact("block_count"), fact("embedding_length")
    heads, feed_forward = fact("attention.head_count"), fact("feed_forward_length")
    kv_heads = fact("attention.head_count_kv") or heads
    key_length = fact("attention.key_length")
    value_length = fact("attention.value_length")
    if heads and width:
        key_length = key_length or width // heads
        value_length = value_length or width // heads
    note = None
    kv = attention = block = None
    if blocks and heads and kv_heads and key_length and value_length:
        kv = KV_ELEMENT_BYTES * blocks * kv_heads * (key_length + value_length)
        attention = 2 * blocks * heads * (key_length + value_length)
    if fact("expert_count"):
        note = "a mixture-of-experts model: which experts a token uses is not in its facts"
    elif not (blocks and width and heads and kv_heads and key_length and value_length):
        note = f"the model's facts do not give its blocks' shapes (architecture {arch or '?'})"
    elif not feed_forward:
        note = "the model's facts give no single feed-forward length"
    else:
        attention_weights = width * key_length * (heads + kv_heads) + width * value_length * (
            kv_heads + heads
        )
        block = blocks * (attention_weights + 3 * width * feed_forward)
        if parameters is not None and block > parameters:
            note = (
                f"its blocks' shapes give {block:,} weights, more than its {parameters:,} "
                "parameters: not a gated feed-forward"
            )
            block = None
    return ModelCost(arch, int(size), parameters, block, kv, attention, note)


@dataclass(frozen=True)
class SampleCost:
    """One request's cost of a token and the machine's limits at its thread count."""

    bytes_per_token: float
    flops_per_token: float | None
    read_bytes_per_second: float | None
    flops_per_second: float | None


@dataclass(frozen=True)
class Roofline:
    """The model's cost of a token against the machine's limits per thread count."""

    cost: ModelCost
    machine: MachineLimits

    def limit(self, threads: int) -> Limit | None:
        return self.machine.limits.get(threads)

    def for_sample(self, threads: int, timings: Timings) -> SampleCost:
        """What a sample at ``threads`` keeps to read its rates against the limits:
        its own bytes per token and operations per prompt token (they grow with its
        positions), and the machine's limits at its thread count."""
        limit = self.limit(threads)
        position = timings.prompt_eval_count + timings.eval_count / 2
        return SampleCost(
            self.cost.bytes_per_token(position),
            self.cost.flops_per_prompt_token(timings.prompt_eval_count),
            None if limit is None else limit.read_bytes_per_second,
            None if limit is None else limit.flops_per_second,
        )

    def describe(self) -> str:
        return f"{self.cost.describe()}\nmachine limits: {self.machine.describe()}"

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.cost.to_dict(), "machine": self.machine.to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Roofline:
        from .limits import MachineLimits

        return cls(ModelCost.from_dict(data["model"]), MachineLimits.from_dict(data["machine"]))


def share(rate: float | None, per_token: float | None, per_second: float | None) -> float | None:
    """``rate`` (tokens/s) as a share of the roofline ``per_second / per_token``."""
    if rate is None or not per_token or not per_second or per_token <= 0 or per_second <= 0:
        return None
    return rate * per_token / per_second
