"""Aspect-ratio buckets: the bucket set of an area, the nearest bucket of a photo, batches within one bucket, and
a training job on portrait, landscape and square images whose latents keep each image's shape."""

from __future__ import annotations

import json
import math

import pytest
from PIL import Image
from safetensors import safe_open
from training_fixtures import (  # noqa: F401  (fixtures are found by name)
    TRAINING,
    Chain,
    Lab,
    assert_same_state,
    chain_fixture,
    lab_fixture,
    one_thread_fixture,
    snapshot,
    tiny_ip_adapter_dir_fixture,
)

from worker.training.buckets import BucketSampler, bucket_sizes, fit, nearest_bucket
from worker.training.data import Example, TrainingData

pytestmark = pytest.mark.usefixtures("one_thread")


def test_sdxl_buckets_of_1024() -> None:
    sizes = bucket_sizes(1024)
    # the sizes SDXL was trained on and kohya's SDXL buckets hold
    assert {
        (1024, 1024),
        (1152, 896),
        (896, 1152),
        (1216, 832),
        (832, 1216),
        (1344, 768),
        (768, 1344),
    } <= set(sizes)
    for width, height in sizes:
        assert width % 64 == 0 and height % 64 == 0
        assert width * height <= 1024 * 1024
        assert max(width, height) / min(width, height) <= 2.0
    assert {(h, w) for w, h in sizes} == set(sizes)  # as many portrait as landscape buckets
    assert nearest_bucket(3000, 4000, sizes) == (896, 1152)  # a 3:4 phone photo
    assert nearest_bucket(1920, 1080, sizes) == (1344, 768)  # 16:9
    assert nearest_bucket(4000, 1000, sizes) == (1408, 704)  # beyond 2:1: the widest bucket
    assert nearest_bucket(512, 512, sizes) == (1024, 1024)


def test_fit_crops_a_sliver_not_a_square() -> None:
    fitted = fit(Image.new("RGB", (120, 200)), (128, 256))  # ratio 0.6 into a 0.5 bucket
    assert tuple(fitted.pixels.shape) == (3, 256, 128)
    assert fitted.original_size == (200, 120)
    top, left = fitted.crop_top_left
    assert top == 0 and 0 < left < 16  # the full height kept, a few columns of the width cut


def test_batches_are_drawn_within_one_bucket_and_cover_every_image() -> None:
    buckets = [(128, 256)] * 5 + [(192, 192)] * 2 + [(256, 128)] * 3
    sampler = BucketSampler(buckets, batch_size=2, seed=3)
    epoch = sampler.epoch()
    assert sorted(i for batch in epoch for i in batch) == list(range(10))
    assert all(len({buckets[i] for i in batch}) == 1 for batch in epoch)
    assert sorted(len(batch) for batch in epoch) == [
        1,
        1,
        2,
        2,
        2,
        2,
    ]  # each bucket's last batch may be short
    again = BucketSampler(buckets, batch_size=2, seed=3)
    assert again.epoch() == epoch and sampler.epoch() != epoch  # deterministic, reshuffled each epoch


def test_portrait_and_landscape_images_train_in_their_buckets(chain: Chain, lab: Lab) -> None:
    folder = lab.root / "datasets" / "shapes"
    folder.mkdir(parents=True)
    shapes = {"portrait": (96, 192), "landscape": (200, 100), "square": (150, 150), "tall": (120, 200)}
    for index, (name, size) in enumerate(shapes.items()):
        Image.new("RGB", size, (40 * index, 90, 200)).save(folder / f"{name}.png")
        (folder / f"{name}.txt").write_text(f"zzb, a {name} picture")
    job = {
        **TRAINING,
        "dataset_path": "datasets/shapes",
        "resolution": 192,
        "batch_size": 2,
        "steps": 3,
        "checkpoint_every": 0,
        "sample_every": 0,
        "sample_grid": False,
        "name": "shapes",
    }
    result = lab.run("train-buckets", job)
    assert "error" not in result, result
    assert result["buckets"] == ["128x256", "192x192", "256x128"]
    with safe_open(
        str(lab.store.root / "train-buckets" / "lora" / "shapes.safetensors"), framework="pt"
    ) as f:
        metadata = f.metadata()
    info = json.loads(metadata["ss_bucket_info"])
    counts = {tuple(b["resolution"]): b["count"] for b in info["buckets"].values()}
    assert counts == {(256, 128): 1, (192, 192): 1, (128, 256): 2}
    assert info["mean_img_ar_error"] == pytest.approx(abs(0.5 - 0.6) / 4)  # only "tall" is off its bucket
    assert metadata["ss_resolution"] == "(192, 192)"

    # what the UNet saw: latents of each bucket's shape (height, width), SDXL's size conditioning to match
    examples = [Example.of(name, Image.open(folder / f"{name}.png"), name) for name in shapes]
    data = TrainingData(lab.pipe, examples, 192, cache_latents=True, cache_text=True, seed=0)
    try:
        shapes_seen = [tuple(latent.shape[1:]) for latent in data.latents]
        assert shapes_seen == [(32, 16), (16, 32), (24, 24), (32, 16)]
        portrait = data.time_ids[0].tolist()
        assert portrait == [192, 96, 0, 0, 256, 128]  # original (h, w), crop (top, left), target (h, w)
        assert data.time_ids[3].tolist()[2:] == [0, 13, 256, 128]  # 154 columns wide, 13 cut each side
        assert all(
            not math.isclose(w / h, 1.0) for w, h in (data.buckets[0], data.buckets[1], data.buckets[3])
        )
        batch = data.batch([0, 3], [False, False])
        assert tuple(batch["latents"].shape) == (2, 4, 32, 16)
    finally:
        data.release()
    assert_same_state(chain.base, snapshot(lab.pipe))
