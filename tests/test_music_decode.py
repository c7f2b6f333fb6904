"""The LM's static-shape decode (the production path) gives exactly the eager loop's tokens, on the golden
fixtures and on the tiny model; a CUDA graph replay of it gives the static path's tokens (CUDA only); the
codec's batched waveform decode gives exactly the per-window decode's samples."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from cache.tiny.heartmula import build
from tests.heartmula_reference.cases import Fixtures, run_end_to_end, run_generate, run_teacher_forced
from worker.music import codec as codec_module
from worker.music.checkpoint import load_codec, load_lm
from worker.music.codec import OVERLAP_CODES, WINDOW_LATENTS, HeartCodec, onednn_disabled
from worker.music.generator import MusicGenerator
from worker.music.lm import HeartMuLa, LMOutput
from worker.music.sampler import TopKSampler, generator_exponential
from worker.music.static_decode import generate_static
from worker.music.tokenizer import TEXT_SLOT, Prompt

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "heartmula"
# Static and eager attend over different lengths (masked capacity vs prefix), so their float sums may
# round differently in the last bits (measured: <= 6 ulp, 1.05e-5 on logits of 20 with cfg 2); tokens must
# still be identical. Each is ~1.4e-5 from the reference's logits, well inside the fixtures' 1e-4.
ATOL, RTOL = 1e-5, 1e-6


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    with onednn_disabled():
        yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def fixtures() -> Fixtures:
    return Fixtures(FIXTURES)


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("heartmula-tiny")
    build(root)
    return root


@pytest.fixture(scope="module")
def tiny_lm(tiny_root: Path) -> HeartMuLa:
    return load_lm(tiny_root / "HeartMuLa-oss-tiny", device=torch.device("cpu"), dtype=torch.float32)


def _case(fx: Fixtures, case_id: str) -> tuple[dict, dict[str, torch.Tensor]]:
    case = next(c for c in fx.meta["cases"] if c["id"] == case_id)
    return case["inputs"], load_file(str(FIXTURES / case["file"]))


@pytest.mark.parametrize(
    ("case_id", "runner"),
    [
        ("tf_a_cfg1.5", run_teacher_forced),
        ("gen_a_seed1234_cfg1.5", run_generate),
        ("gen_b_seed99_cfg1.0", run_generate),
        ("gen_eos_cfg2.0", run_generate),
        ("e2e_b_seed2024_cfg1.5", run_end_to_end),
    ],
)
def test_static_and_eager_reproduce_the_golden_frames(fixtures: Fixtures, case_id: str, runner) -> None:
    inputs, reference = _case(fixtures, case_id)
    produced = {}
    for decode in ("static", "eager"):
        fixtures.decode = decode
        produced[decode] = runner(fixtures, inputs, reference)
    fixtures.decode = "static"
    static, eager = produced["static"], produced["eager"]
    assert static.facts == eager.facts
    assert static.tensors.keys() == eager.tensors.keys()
    for name, value in static.tensors.items():
        if value.is_floating_point():
            assert torch.allclose(value, eager.tensors[name], rtol=RTOL, atol=ATOL), name
        else:
            assert torch.equal(value, eager.tensors[name]), name
    if "frames" in reference:
        assert torch.equal(static.tensors["frames"], reference["frames"])
    if "wav" in reference:
        assert torch.equal(static.tensors["wav"], eager.tensors["wav"])


def _prompt(lm: HeartMuLa, length: int, seed: int) -> Prompt:
    tokens = torch.zeros(length, TEXT_SLOT + 1, dtype=torch.long)
    tokens[:, TEXT_SLOT] = torch.randint(
        lm.cfg.text_vocab_size, (length,), generator=torch.Generator().manual_seed(seed)
    )
    mask = torch.zeros_like(tokens, dtype=torch.bool)
    mask[:, TEXT_SLOT] = True
    return Prompt(tokens, mask, muq_idx=length // 3, tags_ids=[], lyrics_ids=[])


def _decode(
    lm: HeartMuLa, prompt: Prompt, static: bool, seed: int, cfg: float, stop_id: int, every: int, **extra
) -> tuple[LMOutput, list[tuple[int, int]]]:
    generator = torch.Generator().manual_seed(seed)
    seen: list[tuple[int, int]] = []
    args = {
        "n_steps": 24,
        "cfg_scale": cfg,
        "sampler": TopKSampler(40, 1.2, generator_exponential(generator)),
        "stop_id": stop_id,
        "empty_id": 0,
        "eos_check_every": every,
        "on_frame": lambda done, total: seen.append((done, total)),
        **extra,
    }
    out = generate_static(lm, prompt, **args) if static else lm.generate(prompt, **args)
    return out, seen


@pytest.mark.parametrize(
    ("cfg", "stop_id", "every"),
    [(1.0, 261, 1), (1.5, 261, 1), (3.0, 261, 4), (0.5, 261, 1), (1.5, 180, 1), (1.5, 180, 16)],
)
def test_static_decode_gives_the_eager_tokens(
    tiny_lm: HeartMuLa, cfg: float, stop_id: int, every: int
) -> None:
    """No EOS possible (stop_id past the vocabulary) and an early EOS (ids >= 180 are common); CFG off, on,
    strong and the two-conditional-rows case; EOS checked every frame or in batches."""
    for seed in (3, 4):
        prompt = _prompt(tiny_lm, 20 + seed, seed)
        static, static_seen = _decode(tiny_lm, prompt, True, seed, cfg, stop_id, every)
        eager, eager_seen = _decode(tiny_lm, prompt, False, seed, cfg, stop_id, every)
        assert torch.equal(static.frames, eager.frames)
        assert (static.calls, static.stopped_on_eos) == (eager.calls, eager.stopped_on_eos)
        assert static_seen == eager_seen
        assert static.frames.dtype == torch.int32
        if stop_id == 180:
            assert static.stopped_on_eos and static.frames.shape[1] < 25


def test_generator_decodes_statically_by_default_with_the_eager_song(
    tiny_root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    default = MusicGenerator.from_pretrained(tiny_root)
    eager = MusicGenerator(default.lm, default.codec, default.prompts, default.gen, decode="eager")
    assert default.decode == "static"
    args = {"lyrics": "[Verse]\nla", "tags": "piano", "duration_s": 0.8, "seed": 11, "codec_steps": 1}
    a, b = default.generate(**args), eager.generate(**args)
    assert a.frames == b.frames == 11
    assert np.array_equal(a.waveform, b.waveform)
    # A capture that fails (here: a model on the CPU has no CUDA graph) falls back to eager, same song.
    fallback = MusicGenerator(default.lm, default.codec, default.prompts, default.gen)
    fallback.decode = "graph"
    with caplog.at_level("WARNING", logger="worker.music.generator"):
        c = fallback.generate(**args)
    assert fallback.decode == "eager"
    assert "CUDA graph decode failed" in caplog.text
    assert np.array_equal(c.waveform, b.waveform)
    with pytest.raises(ValueError, match="CUDA"):
        MusicGenerator(default.lm, default.codec, default.prompts, default.gen, decode="graph")
    with pytest.raises(ValueError, match="decode must be one of"):
        MusicGenerator(default.lm, default.codec, default.prompts, default.gen, decode="fast")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_cuda_graph_replay_gives_the_static_tokens(tiny_root: Path) -> None:
    lm = load_lm(tiny_root / "HeartMuLa-oss-tiny", device=torch.device("cuda"), dtype=torch.float32)
    prompt = _prompt(lm, 30, 1)
    for cfg in (1.0, 1.5):
        outs = []
        for graph in (False, True):
            generator = torch.Generator(device="cuda").manual_seed(5)
            outs.append(
                generate_static(
                    lm,
                    prompt,
                    n_steps=40,
                    cfg_scale=cfg,
                    sampler=TopKSampler(40, 1.0, generator_exponential(generator)),
                    stop_id=261,
                    empty_id=0,
                    eos_check_every=16,
                    cuda_graph=graph,
                    generator=generator,
                )
            )
        assert torch.equal(outs[0].frames, outs[1].frames), cfg


def _per_window_render(codec: HeartCodec, latents: list[torch.Tensor]) -> torch.Tensor:
    """The waveform stage as it was before batching: one window at a time, crossfaded in turn."""
    overlap = OVERLAP_CODES * codec.samples_per_code
    out = None
    for latent in latents:
        n = latent.shape[1]
        z = latent[0].reshape(n, 2, codec.cfg.latent_hidden_dim).permute(1, 2, 0)
        y = codec.scalar_model.decode(z)[:, 0, : n * codec.cfg.samples_per_latent].float()
        if out is None:
            out = y
            continue
        ramp = torch.linspace(0, 1, overlap, dtype=torch.float64)
        out[:, -overlap:] = out[:, -overlap:] * (1 - ramp) + y[:, :overlap] * ramp
        out = torch.cat([out, y[:, overlap:]], dim=1)
    return out


@torch.inference_mode()
def test_batched_waveform_decode_gives_the_per_window_samples(
    tiny_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    codec = load_codec(tiny_root / "HeartCodec-oss", device=torch.device("cpu"))
    generator = torch.Generator().manual_seed(0)
    # Windows of 112 latent frames instead of 744 keep it quick: enough for the 52-code crossfade.
    latents = [torch.randn(1, 112, 256, generator=generator) * 1.2 for _ in range(3)]
    expected = _per_window_render(codec, latents)
    assert codec.windows_per_batch() >= 3  # all three in one batch
    assert torch.equal(codec.render(latents), expected)
    # A budget for two windows: batches of 2 then 1, crossfaded across the batch boundary alike.
    widest = 2 * WINDOW_LATENTS * codec.cfg.samples_per_latent * codec.cfg.channels(0) * 4
    monkeypatch.setattr(codec_module, "CPU_DECODE_BUDGET", 2 * codec_module._LIVE_WIDEST * widest)
    assert codec.windows_per_batch() == 2
    ticks: list[None] = []
    assert torch.equal(codec.render(latents, lambda: ticks.append(None)), expected)
    assert len(ticks) == 3
