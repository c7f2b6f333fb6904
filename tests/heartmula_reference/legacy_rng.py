"""torch 2.5.1's CPU `exponential_` reproduced under newer torch (docs/HEARTMULA.md §5).

The fixtures' sampled frames, and every random draw after them, come from that stream, which newer torch
no longer produces; production draws with plain `exponential_` on a seeded generator instead.
"""

from __future__ import annotations

import numpy as np
import torch

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
