"""Aspect-ratio buckets, as kohya-ss/sd-scripts and ai-toolkit train: no photo is cropped to a square.

`resolution` is the area (resolution² pixels). The buckets are every (width, height) in multiples of 64 with at
most that area and an aspect ratio within `MAX_RATIO` (sd-scripts' `make_bucket_resolutions`, bounded by ratio
instead of by side). An image goes to the bucket whose ratio is nearest its own, is resized to cover it, and
loses only the sliver of its longer side that the bucket's 64-pixel grid cannot hold. Batches are drawn within one
bucket, since a batch is one tensor.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

STEP = 64
MAX_RATIO = 2.0


def bucket_sizes(resolution: int, step: int = STEP, max_ratio: float = MAX_RATIO) -> list[tuple[int, int]]:
    """Every (width, height) bucket for the area `resolution`², widest first, the square among them."""
    area = resolution * resolution
    sizes = {(resolution, resolution)}
    for width in range(step, math.ceil(resolution * max_ratio) + 1, step):
        height = area // width // step * step
        if height >= step and max(width, height) / min(width, height) <= max_ratio:
            sizes.update({(width, height), (height, width)})
    return sorted(sizes, key=lambda size: (-size[0] / size[1], size[0]))


def nearest_bucket(width: int, height: int, buckets: list[tuple[int, int]]) -> tuple[int, int]:
    """The bucket whose aspect ratio is nearest the image's (in log ratio: a 2:1 and a 1:2 are equally far
    from square); ties go to the larger area."""
    ratio = math.log(width / height)
    return min(buckets, key=lambda size: (abs(math.log(size[0] / size[1]) - ratio), -size[0] * size[1]))


@dataclass(frozen=True)
class Fitted:
    """An image resized to cover its bucket and centre-cropped to it."""

    pixels: Any  # [3, height, width] uint8: a quarter of the float copy, for the no-latent-cache mode
    bucket: tuple[int, int]  # (width, height)
    original_size: tuple[int, int]  # (height, width) before resizing: SDXL conditions on it
    crop_top_left: tuple[int, int]


def fit(image: Any, bucket: tuple[int, int]) -> Fitted:
    import numpy as np
    import torch
    from PIL import Image as PILImage

    width, height = image.size
    target_w, target_h = bucket
    scale = max(target_w / width, target_h / height)
    resized = image.resize(
        (max(target_w, round(width * scale)), max(target_h, round(height * scale))),
        PILImage.Resampling.LANCZOS,
    )
    top = (resized.height - target_h) // 2
    left = (resized.width - target_w) // 2
    cropped = resized.crop((left, top, left + target_w, top + target_h))
    array = np.array(cropped.convert("RGB"), dtype=np.uint8)
    return Fitted(torch.from_numpy(array).permute(2, 0, 1).contiguous(), bucket, (height, width), (top, left))


def bucket_info(buckets: list[tuple[int, int]], ratio_errors: list[float]) -> str:
    """sd-scripts' `ss_bucket_info`: the buckets in use with their image counts, and the mean aspect-ratio
    error of the images' assignment."""
    counts = Counter(buckets)
    used = sorted(counts, key=lambda size: (-size[0] / size[1], size[0]))
    info = {
        "buckets": {
            str(index): {"resolution": list(size), "count": counts[size]} for index, size in enumerate(used)
        },
        "mean_img_ar_error": sum(ratio_errors) / len(ratio_errors) if ratio_errors else 0.0,
    }
    return json.dumps(info)


class BucketSampler:
    """Batches of example indices, each from one bucket: every epoch shuffles each bucket, cuts it into batches
    (a bucket's last batch may be smaller) and shuffles the batches. Deterministic for a seed, so a resumed run
    replays the draws of the steps it skips and continues with the very batches the run would have had."""

    def __init__(self, buckets: list[tuple[int, int]], batch_size: int, seed: int) -> None:
        import torch

        self.groups: dict[tuple[int, int], list[int]] = {}
        for index, size in enumerate(buckets):
            self.groups.setdefault(size, []).append(index)
        self.batch_size = batch_size
        self.generator = torch.Generator().manual_seed(seed)

    def epoch(self) -> list[list[int]]:
        import torch

        batches = []
        for members in self.groups.values():
            order = torch.randperm(len(members), generator=self.generator).tolist()
            shuffled = [members[i] for i in order]
            batches += [shuffled[i : i + self.batch_size] for i in range(0, len(shuffled), self.batch_size)]
        return [batches[i] for i in torch.randperm(len(batches), generator=self.generator).tolist()]

    def __iter__(self) -> Iterator[list[int]]:
        while True:
            yield from self.epoch()

    def dropped(self, count: int, rate: float) -> list[bool]:
        """Which of a batch's captions to drop (caption dropout), from the same deterministic stream."""
        import torch

        return (torch.rand(count, generator=self.generator) < rate).tolist()
