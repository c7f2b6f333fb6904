"""MusicGenerator on the generated tiny checkpoint: loading, layout errors, CFG switching, seeding, cancel."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from cache.tiny.heartmula import build
from tests.heartmula_reference.reference_codec import reference_plan
from worker.music.checkpoint import CheckpointError, validate_layout
from worker.music.generator import GenerationCancelled, MusicGenerator, MusicResult

SAMPLES_PER_FRAME = 3840  # 80 ms at 48 kHz
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    # The tiny model's ops are microseconds long; a second thread only adds synchronisation (and on a
    # loaded 2-core machine, milliseconds of it).
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("heartmula-tiny")
    build(root)
    return root


@pytest.fixture(scope="module")
def generator(tiny_root: Path) -> MusicGenerator:
    return MusicGenerator.from_pretrained(tiny_root)


class Songs:
    """Generates each (cfg, seed) song once per module; tests compare them."""

    def __init__(self, generator: MusicGenerator) -> None:
        self.generator = generator
        self._done: dict[tuple[float, int], MusicResult] = {}

    def get(self, cfg_scale: float, seed: int) -> MusicResult:
        key = (cfg_scale, seed)
        if key not in self._done:
            self._done[key] = self.generator.generate(
                lyrics="[Verse]\nla la la",
                tags="piano",
                duration_s=0.4,
                cfg_scale=cfg_scale,
                seed=seed,
                codec_steps=2,
            )
        return self._done[key]


@pytest.fixture(scope="module")
def songs(generator: MusicGenerator) -> Songs:
    return Songs(generator)


def test_tiny_checkpoint_loads(generator: MusicGenerator) -> None:
    assert generator.sample_rate == 48000
    assert generator.channels == 2
    # The tiny backbone keeps the real 8192-position context.
    assert generator.max_frames == 8192 - 2048 - 1
    assert generator.max_duration_s == pytest.approx(generator.max_frames / 12.5)


def test_tiny_checkpoint_is_deterministic(tiny_root: Path, tmp_path: Path) -> None:
    build(tmp_path)
    for path in sorted(p for p in tiny_root.rglob("*") if p.is_file()):
        assert (tmp_path / path.relative_to(tiny_root)).read_bytes() == path.read_bytes(), path


def test_layout_validation_names_each_missing_file(tiny_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "ckpt"
    shutil.copytree(tiny_root, root)
    (root / "tokenizer.json").unlink()
    shard = next((root / "HeartMuLa-oss-tiny").glob("model-00002-*.safetensors"))
    shard.unlink()
    (root / "HeartCodec-oss" / "config.json").unlink()
    with pytest.raises(CheckpointError) as err:
        MusicGenerator.from_pretrained(root)
    message = str(err.value)
    for missing in (root / "tokenizer.json", shard, root / "HeartCodec-oss" / "config.json"):
        assert str(missing) in message
    assert f"- {root / 'gen_config.json'}" not in message  # present files are not listed


def test_layout_validation_without_lm_folder(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="HeartMuLa-oss-<version>"):
        validate_layout(tmp_path)
    with pytest.raises(CheckpointError, match="HeartMuLa-oss-3B"):
        validate_layout(tmp_path, version="3B")


def test_cfg_switching_in_one_generator(songs: Songs) -> None:
    first = songs.get(1.0, 7)
    guided = songs.get(1.5, 7)
    again = songs.get(1.0, 7)  # the reference crashes here: its KV cache keeps the first batch size
    assert np.array_equal(first.waveform, again.waveform)
    assert not np.array_equal(first.waveform, guided.waveform)


def test_seed_determines_the_song(songs: Songs, generator: MusicGenerator) -> None:
    a = songs.get(1.5, 7)
    b = generator.generate(
        lyrics="[Verse]\nla la la", tags="piano", duration_s=0.4, cfg_scale=1.5, seed=7, codec_steps=2
    )
    c = songs.get(1.5, 8)
    assert np.array_equal(a.waveform, b.waveform)
    assert not np.array_equal(a.waveform, c.waveform)


def test_waveform_shape_and_timing(songs: Songs) -> None:
    result = songs.get(1.5, 7)
    assert result.frames == 0.4 * 12.5 + 1  # the reference's length: duration // 80 ms steps + 1
    assert result.waveform.dtype == np.float32
    assert result.waveform.shape == (2, result.frames * SAMPLES_PER_FRAME)
    assert np.isfinite(result.waveform).all()
    assert result.waveform.std() > 0
    assert result.lm_s > 0 and result.codec_s > 0


def test_progress_reports_both_phases(generator: MusicGenerator) -> None:
    seen: list[tuple[str, int, int]] = []
    generator.generate(
        lyrics="x",
        tags="y",
        duration_s=0.24,
        seed=1,
        codec_steps=2,
        on_progress=lambda *event: seen.append(event),
    )
    lm = [e for e in seen if e[0] == "lm"]
    codec = [e for e in seen if e[0] == "codec"]
    assert [d for _, d, _ in lm] == [0, 1, 2, 3, 4] and {t for *_, t in lm} == {4}
    assert [d for _, d, _ in codec] == [0, 1, 2, 3] and {t for *_, t in codec} == {3}  # 2 steps + decode
    assert seen == lm + codec


@pytest.mark.parametrize("phase", ["lm", "codec"])
def test_should_stop_cancels_promptly(generator: MusicGenerator, phase: str) -> None:
    seen: list[tuple[str, int, int]] = []

    def stop() -> bool:
        return any(p == phase and done >= 2 for p, done, _ in seen)

    with pytest.raises(GenerationCancelled):
        generator.generate(
            lyrics="x",
            tags="y",
            duration_s=2.0,
            seed=1,
            codec_steps=10,
            on_progress=lambda *event: seen.append(event),
            should_stop=stop,
        )
    assert seen[-1][0] == phase and seen[-1][1] == 2  # stopped at the very next check
    if phase == "lm":
        assert all(p == "lm" for p, *_ in seen)


def test_path_like_inputs_are_text(generator: MusicGenerator, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("never read me")
    prompt = generator.prompts.encode(tags=str(secret), lyrics=str(secret))
    tokenizer = generator.prompts.tokenizer
    assert prompt.lyrics_ids == tokenizer.encode(str(secret).lower()).ids
    assert prompt.tags_ids == tokenizer.encode(f"<tag>{str(secret).lower()}</tag>").ids
    assert prompt.lyrics_ids != tokenizer.encode("never read me").ids


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ({"duration_s": 0.0}, "duration_s"),
        ({"duration_s": 10_000.0}, "duration_s"),
        ({"cfg_scale": 0.5}, "cfg_scale"),
        ({"topk": 0}, "topk"),
        ({"temperature": 0.0}, "temperature"),
        ({"codec_steps": 0}, "codec_steps"),
    ],
)
def test_invalid_arguments_name_the_field(generator: MusicGenerator, override: dict, field: str) -> None:
    args = {"lyrics": "x", "tags": "y", "duration_s": 1.0, "seed": 1, **override}
    with pytest.raises(ValueError, match=f"^{field}:"):
        generator.generate(**args)


def test_codes_past_the_codebook_end_the_song(generator: MusicGenerator) -> None:
    size = generator.codec.cfg.codebook_size
    frames = torch.zeros(8, 5, dtype=torch.int32)
    frames[3, 2] = size  # an id the codec has no row for
    assert generator._decodable(frames).shape == (8, 2)
    frames[0, 0] = size + 1  # even in the first frame, which the reference never checks
    assert generator._decodable(frames).shape == (8, 0)


def test_codec_windows_cover_every_code(generator: MusicGenerator) -> None:
    plan = generator.codec.plan
    # (T - 104) % 320 == 0: the reference pads nothing and never decodes the last 52 codes
    # (docs/HEARTMULA.md §7.7); production covers them with a second window.
    assert reference_plan(424) == 1
    assert plan(424) == 2
    for n_codes, windows in [(1, 1), (29, 1), (372, 1), (373, 2), (400, 2), (692, 2), (693, 3)]:
        assert plan(n_codes) == windows, n_codes
        assert reference_plan(n_codes) == windows, n_codes


def test_both_weight_norm_forms_load_alike(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from worker.music.checkpoint import open_weights

    g, v = torch.rand(4, 1, 1) + 0.5, torch.randn(4, 3, 5)
    save_file(
        {
            "a.parametrizations.weight.original0": g,
            "a.parametrizations.weight.original1": v,
            "b.weight_g": g.clone(),
            "b.weight_v": v.clone(),
        },
        str(tmp_path / "model.safetensors"),
    )
    with open_weights(tmp_path) as reader:
        a, b = reader.resolve("a.weight"), reader.resolve("b.weight")
        assert reader.resolve("c.weight") is None
    expected = torch._weight_norm(v, g, 0)
    assert torch.equal(a, b)
    assert torch.allclose(a, expected, rtol=0, atol=1e-7)


def test_every_heartmula_citation_names_a_section() -> None:
    doc = (ROOT / "docs" / "HEARTMULA.md").read_text(encoding="utf-8")
    sections = set(re.findall(r"^#{2,3} (\d+(?:\.\d+)?)\.? ", doc, re.MULTILINE))
    citing = [
        *ROOT.glob("worker/music/*.py"),
        *ROOT.glob("tests/heartmula_reference/*.py"),
        ROOT / "cache" / "tiny" / "heartmula.py",
        ROOT / "tests" / "fixtures" / "heartmula" / "README.md",
    ]
    cited: dict[str, str] = {}
    for path in citing:
        text = path.read_text(encoding="utf-8")
        assert "SPEC §" not in text, path  # the notes outside the repository are gone
        for section in re.findall(r"docs/HEARTMULA\.md §(\d+(?:\.\d+)?)", text):
            cited.setdefault(section, path.name)
    assert len(cited) > 10
    assert {s: where for s, where in cited.items() if s not in sections} == {}
