"""The LM's frame loop on fixed shapes (docs/HEARTMULA.md §2.6): one frame step that a CUDA graph can
capture once per song and replay for every frame.

Everything a frame step touches lives in buffers allocated before the loop: the backbone KV cache at its
full capacity (written in place with `index_copy_`), the position and frame index as tensors, the codes of
the last frame, and the frame and EOS records. The step reads and advances those tensors itself, so a
replay needs no argument and the host only counts frames and checks for EOS every `eos_check_every`
frames. Run uncaptured (on the CPU, or on a GPU without graphs) it is the same computation, which is how
the tests check it against the eager loop token for token.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from worker.music.lm import (
    EosWatch,
    FrameHook,
    FrameStep,
    HeartMuLa,
    LMOutput,
    Sampler,
    StaticPosition,
    cfg_rows,
)
from worker.music.tokenizer import Prompt

# Eager runs of the step before the capture, on a side stream, as CUDA graph capture requires (cuBLAS
# workspaces and allocator pools are set up by them).
_WARMUP_RUNS = 2


class GraphCaptureError(RuntimeError):
    """The frame step could not be captured as a CUDA graph (this torch, driver or an op refuses it)."""


class StaticFrameLoop:
    """The buffers of one song and the frame step over them; `step()` runs one frame in place."""

    def __init__(
        self,
        model: HeartMuLa,
        prompt: Prompt,
        *,
        n_steps: int,
        cfg_scale: float,
        sampler: Sampler,
        stop_id: int,
        empty_id: int,
    ) -> None:
        self.model = model
        self.prompt = prompt
        self.length = prompt.tokens.shape[0]
        self.total = n_steps + 1
        self.stop_id = stop_id
        batch, guidance = cfg_rows(cfg_scale)
        self.guided = guidance is not None
        device, k = model.device, model.cfg.audio_num_codebooks
        capacity = self.length + n_steps
        caches = (model.backbone.new_cache(batch, capacity), model.decoder.new_cache(batch, k))
        self.frame_step = FrameStep(model, caches, sampler, guidance)
        self.slots = torch.arange(capacity, device=device)
        self.pos = torch.zeros(1, dtype=torch.long, device=device)  # backbone slot of the next step
        self.index = torch.zeros(1, dtype=torch.long, device=device)  # frame the next step produces
        self.cur = torch.zeros(batch, k, dtype=torch.int32, device=device)
        self.frames = torch.zeros(self.total, k, dtype=torch.int32, device=device)
        self.is_eos = torch.zeros(self.total, dtype=torch.bool, device=device)
        self.tokens, self.mask = model.frame_inputs(batch, empty_id)

    def start(self) -> None:
        """The prompt step (its length is the prompt's, so it runs once, uncaptured) and frame 0."""
        m = self.model
        cur = self.frame_step(m.prompt_embedding(self.prompt, self.cur.shape[0], self.guided), 0)
        self.cur.copy_(cur)
        self.frames[0] = cur[0]
        self.pos.fill_(self.length)
        self.index.fill_(1)

    def step(self) -> None:
        """One frame at `pos`, recorded at `index`; both advance. No host sync, no shape that varies."""
        m, k = self.model, self.model.cfg.audio_num_codebooks
        self.tokens[:, 0, :k] = self.cur
        at = StaticPosition(self.pos, (self.slots <= self.pos).view(1, 1, 1, -1))
        cur = self.frame_step(m.embed(self.tokens, self.mask, uncond=self.guided), at)
        self.cur.copy_(cur)
        self.frames.index_copy_(0, self.index, cur[:1])
        self.is_eos.index_copy_(0, self.index, (cur[:1] >= self.stop_id).any(dim=1))
        self.pos += 1
        self.index += 1

    def run(self, replay: Callable[[], None], eos_check_every: int, on_frame: FrameHook | None) -> LMOutput:
        """Frames 1.. by calling `replay()` once per frame (the step itself, or its graph)."""
        eos = EosWatch(self.total, eos_check_every, on_frame)
        for done in range(2, self.total + 1):
            replay()
            end = eos.after_frame(done, self.is_eos)
            if end is not None:
                return LMOutput(self.frames[:end].T.contiguous(), calls=done, stopped_on_eos=True)
        return LMOutput(self.frames.T.contiguous(), calls=self.total, stopped_on_eos=False)

    def capture(self, generator: torch.Generator | None) -> torch.cuda.CUDAGraph:
        """Captures `step()` as a CUDA graph, before `start()`: the warm-up runs write only slots the song
        overwrites before reading them, and `generator` (the sampler's) is restored afterwards, so the
        song draws exactly what an uncaptured run would."""
        try:
            return self._capture(generator)
        except torch.OutOfMemoryError:
            raise
        except (RuntimeError, AttributeError) as exc:
            raise GraphCaptureError(str(exc)) from exc

    def _capture(self, generator: torch.Generator | None) -> torch.cuda.CUDAGraph:
        device = self.model.device
        saved = generator.get_state() if generator is not None else None
        side = torch.cuda.Stream(device=device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(_WARMUP_RUNS):
                self._rewind()
                self.step()
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        if generator is not None:
            # A generator other than the device's default must be registered, or capture refuses it.
            graph.register_generator_state(generator)
        self._rewind()
        # thread_local: CUDA work of the worker's other threads (none expected) cannot spoil the capture.
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            self.step()
        if generator is not None and saved is not None:
            generator.set_state(saved)
        return graph

    def _rewind(self) -> None:
        """Points the step at the first frame slot, where a warm-up run's writes are overwritten later."""
        self.pos.fill_(self.length)
        self.index.fill_(1)


@torch.inference_mode()
def generate_static(
    model: HeartMuLa,
    prompt: Prompt,
    *,
    n_steps: int,
    cfg_scale: float,
    sampler: Sampler,
    stop_id: int,
    empty_id: int,
    eos_check_every: int = 1,
    on_frame: FrameHook | None = None,
    cuda_graph: bool = False,
    generator: torch.Generator | None = None,
) -> LMOutput:
    """`HeartMuLa.generate` on fixed shapes, with the same arguments and result. With `cuda_graph` (a CUDA
    model only) the frame step is captured once and replayed; `generator` is the one the sampler draws
    from, registered with the graph. Raises GraphCaptureError when the capture fails, before any frame, so
    the caller can fall back to another decode."""
    loop = StaticFrameLoop(
        model,
        prompt,
        n_steps=n_steps,
        cfg_scale=cfg_scale,
        sampler=sampler,
        stop_id=stop_id,
        empty_id=empty_id,
    )
    replay = loop.step
    if cuda_graph and model.device.type != "cuda":
        raise GraphCaptureError(f"CUDA graphs need a CUDA device, not {model.device}")
    if cuda_graph and n_steps > 0:
        replay = loop.capture(generator).replay
    loop.start()
    return loop.run(replay, eos_check_every, on_frame)
