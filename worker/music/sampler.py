"""Top-k sampling as the reference does it (docs/HEARTMULA.md §3).

The sampler is an "exponential race": `argmax(p / q)` with `q ~ Exp(1)` is a draw from `p`. Where the
exponential draws come from is a parameter: production passes a seeded `torch.Generator`
(`generator_exponential`); the conformance tests pass a stream that reproduces the fixtures' torch (§5).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

# Returns Exp(1) draws with the shape, dtype and device of its argument.
Exponential = Callable[[torch.Tensor], torch.Tensor]


def topk_probs(logits: torch.Tensor, topk: int, temperature: float) -> torch.Tensor:
    """Probabilities after temperature and top-k filtering; ties at the threshold survive."""
    x = logits / temperature
    threshold = torch.topk(x, topk, dim=-1).values[..., -1:]
    x = x.masked_fill(x < threshold, float("-inf"))
    # Both steps, in this order, as the reference: the pair is not bit-identical to softmax alone.
    return torch.softmax(torch.log_softmax(x, dim=-1), dim=-1)


def race(probs: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """`argmax(p / q)` as int32 `[B, 1]`; the first index wins ties."""
    return torch.argmax(probs / q, dim=-1, keepdim=True).to(torch.int32)


class TopKSampler:
    """`sample_topk` of the reference; one exponential draw of shape `[B', V]` per call."""

    def __init__(self, topk: int, temperature: float, exponential: Exponential) -> None:
        self.topk = topk
        self.temperature = temperature
        self.exponential = exponential

    def __call__(self, logits: torch.Tensor, codebook: int) -> torch.Tensor:
        probs = topk_probs(logits, self.topk, self.temperature)
        return race(probs, self.exponential(probs))


def generator_exponential(generator: torch.Generator) -> Exponential:
    """Production draws: plain `exponential_` on the generator's device, so no host round trip."""

    def draw(like: torch.Tensor) -> torch.Tensor:
        return torch.empty_like(like).exponential_(1.0, generator=generator)

    return draw
