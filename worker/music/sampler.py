"""Top-k sampling as the reference does it (SPEC §3), and the test-only legacy exponential draw (SPEC §5).

The sampler is an "exponential race": `argmax(p / q)` with `q ~ Exp(1)` is a draw from `p`. Where the
exponential draws come from is a parameter: production passes a seeded `torch.Generator`; the conformance
runner passes `legacy_exponential`, which reproduces torch 2.5.1's CPU stream from the global generator.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
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


# --- legacy stream (test only) -------------------------------------------------------------------------

_MCG_A = 1132489760
_MCG_M = 2**31 - 1
_MT_N = 624


def legacy_exponential(like: torch.Tensor) -> torch.Tensor:
    """torch 2.5.1's CPU `exponential_` (MKL build) on the global generator, reproduced under newer torch.

    The old kernel took one 32-bit Mersenne-Twister output `r` per call and filled the tensor from an
    MKL MCG31m1 stream seeded with `r`. Newer torch draws differently, so the fixtures' sampled frames
    (and every later draw) can only be reproduced this way. Not for production use.
    """
    r = _peek_next_mt_output()
    torch.rand(1)  # consumes exactly the one 32-bit output the old kernel took
    x = _mcg31_stream(r, like.numel())
    u = x.astype(np.float32) * np.float32(2.0**-31)
    q = (-np.log(u.astype(np.float64))).astype(np.float32)
    return torch.from_numpy(q).reshape(like.shape).to(device=like.device, dtype=like.dtype)


def _peek_next_mt_output() -> int:
    """The next tempered MT19937 output of torch's CPU generator, without advancing it."""
    raw = torch.get_rng_state().numpy().tobytes()
    left = int(np.frombuffer(raw, dtype=np.int32, count=1, offset=8)[0])
    next_index = int(np.frombuffer(raw, dtype=np.uint64, count=1, offset=16)[0])
    words = np.frombuffer(raw, dtype=np.uint64, count=_MT_N, offset=24)
    bit_generator = np.random.MT19937()
    bit_generator.state = {
        "bit_generator": "MT19937",
        "state": {"key": (words & 0xFFFFFFFF).astype(np.uint32), "pos": _MT_N if left == 1 else next_index},
    }
    return int(bit_generator.random_raw())


def _mcg31_stream(seed: int, n: int) -> np.ndarray:
    """x_0 = seed mod (2^31 - 1) (0 becomes 1), x_{i+1} = A·x_i mod (2^31 - 1), as uint64 (values < 2^31)."""
    x0 = seed % _MCG_M or 1
    powers = np.empty(n, dtype=np.uint64)
    powers[0] = 1
    filled, step = 1, _MCG_A  # invariant: step == A**filled mod M
    while filled < n:
        take = min(filled, n - filled)
        powers[filled : filled + take] = powers[:take] * np.uint64(step) % np.uint64(_MCG_M)
        filled += take
        step = step * step % _MCG_M
    return powers * np.uint64(x0) % np.uint64(_MCG_M)
