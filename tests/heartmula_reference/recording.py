"""The intermediates the fixtures store, read from the production modules through hooks: forward hooks on
the transformers and the estimator's parts, and wrappers around the sampler, its exponential draws and
`HeartMuLa.codebook_logits`. Production code carries no tracing parameter."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from worker.music.lm import HeartMuLa, Sampler
from worker.music.sampler import Exponential


class Recorder:
    """Collects named values in call order and stacks them per frame step as the fixtures store them."""

    def __init__(self) -> None:
        self.values: dict[str, list[torch.Tensor]] = {}

    def add(self, name: str, value: torch.Tensor) -> None:
        self.values.setdefault(name, []).append(value.detach().clone())

    def sampler(self, inner: Sampler) -> Sampler:
        def sample(logits: torch.Tensor, codebook: int) -> torch.Tensor:
            self.add("sampler_input_logits", logits)
            return inner(logits, codebook)

        return sample

    def exponential(self, inner: Exponential) -> Exponential:
        def draw(like: torch.Tensor) -> torch.Tensor:
            q = inner(like)
            self.add("exponential_q", q)
            return q

        return draw

    @contextmanager
    def watching(self, lm: HeartMuLa) -> Iterator[None]:
        """Records `last_h`, `decoder_last_h` and the raw logits of every frame step while inside."""

        def last_of(name: str) -> Callable[[nn.Module, Any, torch.Tensor], None]:
            return lambda _module, _args, out: self.add(name, out[:, -1])

        handles = [
            lm.backbone.register_forward_hook(last_of("last_h")),
            lm.decoder.register_forward_hook(last_of("decoder_last_h")),
        ]
        production = lm.codebook_logits

        def codebook_logits(h: torch.Tensor, codebook: int) -> torch.Tensor:
            logits = production(h, codebook)
            self.add("c0_logits_raw" if codebook == 0 else "ci_logits_raw", logits)
            return logits

        lm.codebook_logits = codebook_logits  # shadows the method on this instance only
        try:
            yield
        finally:
            del lm.codebook_logits
            for handle in handles:
                handle.remove()

    def stacked(self, calls: int) -> dict[str, torch.Tensor]:
        out = {}
        for name, values in self.values.items():
            per_call = len(values) // calls
            stacked = torch.stack(values)
            out[name] = stacked if per_call == 1 else stacked.view(calls, per_call, *values[0].shape)
        return out


@contextmanager
def module_outputs(modules: dict[str, nn.Module]) -> Iterator[dict[str, Any]]:
    """The last output of each named module, filled in while inside (a tuple output stays a tuple)."""
    seen: dict[str, Any] = {}

    def keep(name: str) -> Callable[[nn.Module, Any, Any], None]:
        def hook(_module: nn.Module, _args: Any, out: Any) -> None:
            seen[name] = out

        return hook

    handles = [module.register_forward_hook(keep(name)) for name, module in modules.items()]
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()
