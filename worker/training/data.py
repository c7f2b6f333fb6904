"""Training examples: found (a dataset job, a volume folder or inline images), fitted to their aspect-ratio
bucket, and cached once.

A dataset folder is the layout kohya-ss/sd-scripts and ai-toolkit read: `<name>.<png|jpg|jpeg|webp|bmp>` beside
`<name>.txt` holding the caption. An image without a caption (or an inline `caption: "auto"`) gets `caption=None`
here and is captioned before training (`worker.training.captioner`); with `auto_caption` off it is the trigger
word alone. Folder images are decoded one at a time while caching, so a large dataset never sits decoded in
memory. The cache keeps what does not change between steps on the device: the VAE latents, each at its bucket's
size (unless `cache_latents` is off, when the fitted 8-bit pixels are kept and encoded each step) and, when the
text encoders are frozen, the caption embeddings.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from worker.inputs import IMAGE_SUFFIXES, InputLimits, VolumeFiles, decode_image, load_image, read_file
from worker.schemas import MAX_TRAINING_IMAGES, JobInputError, TrainingJob
from worker.schemas.training_job import AUTO_CAPTION
from worker.training.buckets import bucket_sizes, fit, nearest_bucket

if TYPE_CHECKING:
    from PIL.Image import Image

    from worker.job_folders import JobStore

CAPTION_SUFFIX = ".txt"
DATASET_FOLDER = "dataset"


@dataclass
class Example:
    """One training image and its caption; `load` decodes the image (raising a field error when it cannot).
    `caption` is None until the captioning model writes one; `path` is the image file, for a folder dataset."""

    source: str
    load: Callable[[], Image]
    caption: str | None
    path: Path | None = None

    @classmethod
    def of(cls, source: str, image: Image, caption: str | None) -> Example:
        """An example whose image is already decoded."""
        return cls(source, lambda: image, caption)


def missing_caption(trigger_word: str | None, auto_caption: bool, field: str, what: str) -> str | None:
    """The caption of an image that has none: None (the captioning model's turn), or the trigger word alone
    when auto-captioning is off."""
    if auto_caption:
        return None
    if not trigger_word:
        raise JobInputError(field, f"{what}; add one, give trigger_word or leave auto_caption on")
    return trigger_word


def with_trigger(caption: str, trigger_word: str | None) -> str:
    """Put the trigger word first unless the caption already has it (kohya's convention)."""
    if not trigger_word or trigger_word.lower() in caption.lower():
        return caption
    return f"{trigger_word}, {caption}" if caption else trigger_word


def examples_from_folder(
    folder: Path, field: str, limits: InputLimits, trigger_word: str | None, auto_caption: bool = True
) -> list[Example]:
    """Every image in `folder` (not recursive) with its same-name `.txt` caption, in name order."""
    images = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise JobInputError(field, f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {folder.name!r}")
    if len(images) > MAX_TRAINING_IMAGES:
        raise JobInputError(field, f"at most {MAX_TRAINING_IMAGES} images, the folder has {len(images)}")
    examples = []
    for path in images:
        where = f"{field}[{path.name}]"
        caption_file = path.with_suffix(CAPTION_SUFFIX)
        caption = caption_file.read_text(encoding="utf-8").strip() if caption_file.is_file() else ""
        if caption and caption != AUTO_CAPTION:
            given: str | None = with_trigger(caption, trigger_word)
        else:
            what = f"{path.name} has no caption ({caption_file.name})"
            given = missing_caption(trigger_word, auto_caption, field, what)
        examples.append(Example(path.name, partial(_decode_file, path, where, limits), given, path))
    return examples


def _decode_file(path: Path, field: str, limits: InputLimits) -> Image:
    return decode_image(read_file(path, field, limits), field, limits)


def load_examples(
    job: TrainingJob, store: JobStore, volume: VolumeFiles, limits: InputLimits
) -> list[Example]:
    """The job's examples from whichever of dataset_job_id, dataset_path or images it gives."""
    trigger, auto = job.trigger_word, job.auto_caption
    if job.dataset_job_id is not None:
        folder = dataset_job_folder(job.dataset_job_id, store, volume)
        return examples_from_folder(folder, "dataset_job_id", limits, trigger, auto)
    if job.dataset_path is not None:
        folder = volume.resolve(job.dataset_path, "dataset_path", kind="dir")
        return examples_from_folder(folder, "dataset_path", limits, trigger, auto)
    items = job.images or []
    limits.check_count(len(items), "images")
    examples = []
    for index, item in enumerate(items):
        image = load_image(item.image, f"images.{index}.image", limits, volume)
        if item.caption is not None and item.caption != AUTO_CAPTION:
            caption = with_trigger(item.caption, trigger)
        else:
            caption = missing_caption(trigger, auto, f"images.{index}.caption", "no caption")
        examples.append(Example.of(f"images.{index}", image, caption))
    return examples


def dataset_job_folder(job_id: str, store: JobStore, volume: VolumeFiles) -> Path:
    """The `dataset/` folder of a finished dataset job, held to the rule a caller's path meets: a job folder or a
    `dataset/` that links out of the volume is refused."""
    store.finished_result(job_id, "dataset", "dataset_job_id")
    folder = store.root / job_id / DATASET_FOLDER
    return volume.checked(folder, "dataset_job_id", f"the dataset folder of job {job_id!r}", kind="dir")


class TrainingData:
    """The UNet's per-example inputs, with what stays fixed computed once."""

    def __init__(
        self,
        pipe: Any,
        examples: list[Example],
        resolution: int,
        *,
        cache_latents: bool,
        cache_text: bool,
        seed: int,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> None:
        """`on_progress(done, total)` runs after each image is prepared; it may raise to stop (a cancel).
        Every example must have its caption by now."""
        import torch

        self.pipe = pipe
        self.device = pipe.unet.device
        self.captions = [example.caption or "" for example in examples]
        self.cache_text = cache_text
        self._generator = torch.Generator(device="cpu").manual_seed(seed)
        sizes = bucket_sizes(resolution)
        time_ids = []
        self.buckets: list[tuple[int, int]] = []  # (width, height) per example
        self.ratio_errors: list[float] = []
        self.pixels: list[Any] | None = None if cache_latents else []
        self.latents: list[Any] | None = [] if cache_latents else None
        for done, example in enumerate(examples, start=1):
            image = example.load()
            bucket = nearest_bucket(*image.size, sizes)
            fitted = fit(image, bucket)
            self.buckets.append(bucket)
            # sd-scripts' aspect-ratio error: bucket ratio minus image ratio, as width / height
            self.ratio_errors.append(abs(bucket[0] / bucket[1] - image.size[0] / image.size[1]))
            time_ids.append([*fitted.original_size, *fitted.crop_top_left, bucket[1], bucket[0]])
            if self.latents is not None:
                self.latents.append(self.encode_pixels([fitted.pixels])[0])
            else:
                self.pixels.append(fitted.pixels)
            if on_progress is not None:
                on_progress(done, len(examples))
        self.time_ids = torch.tensor(time_ids, dtype=torch.float32)
        self._text: dict[str, tuple[Any, Any]] = {}
        if cache_text:
            for caption in dict.fromkeys([*self.captions, ""]):
                self._text[caption] = self.encode_text([caption], grad=False)

    def __len__(self) -> int:
        return len(self.captions)

    def encode_pixels(self, pixels: list[Any]) -> Any:
        """VAE latents, scaled for the UNet. An fp16 SDXL VAE overflows, so it runs in fp32 (as the pipeline's own
        decode does) and returns to its dtype: an fp16 → fp32 → fp16 round trip is exact."""
        import torch

        vae = self.pipe.vae
        dtype = vae.dtype
        upcast = dtype == torch.float16 and vae.config.force_upcast
        try:
            if upcast:
                vae.to(torch.float32)
            batch = (torch.stack(pixels).to(self.device, torch.float32) / 127.5 - 1.0).to(vae.dtype)
            with torch.no_grad():
                posterior = vae.encode(batch).latent_dist
            noise = torch.randn(posterior.mean.shape, generator=self._generator).to(
                self.device, posterior.mean.dtype
            )
            latents = posterior.mean + posterior.std * noise
            return (latents * vae.config.scaling_factor).float()
        finally:
            if upcast:
                vae.to(dtype)

    def encode_text(self, captions: list[str], *, grad: bool) -> tuple[Any, Any]:
        """(prompt_embeds, pooled_prompt_embeds) for the captions; with `grad`, through trainable text encoders."""
        import torch

        with torch.set_grad_enabled(grad):
            embeds, _, pooled, _ = self.pipe.encode_prompt(
                prompt=captions,
                device=self.device,
                num_images_per_prompt=1,
                do_classifier_free_guidance=False,
            )
        return embeds, pooled

    def batch(self, indices: list[int], dropped: list[bool]) -> dict[str, Any]:
        """Latents, text embeddings and SDXL time ids of `indices`; a dropped caption becomes the empty one."""
        import torch

        captions = ["" if drop else self.captions[i] for i, drop in zip(indices, dropped)]
        if self.latents is not None:
            latents = torch.stack([self.latents[i] for i in indices])
        else:
            latents = self.encode_pixels([self.pixels[i] for i in indices])
        if self.cache_text:
            embeds = torch.cat([self._text[caption][0] for caption in captions])
            pooled = torch.cat([self._text[caption][1] for caption in captions])
        else:
            embeds, pooled = self.encode_text(captions, grad=True)
        return {
            "latents": latents,
            "prompt_embeds": embeds,
            "pooled": pooled,
            "time_ids": self.time_ids[indices].to(self.device),
        }

    def release(self) -> None:
        """Drop the cached tensors (device memory) as soon as training ends."""
        self.latents = None
        self.pixels = None
        self._text.clear()
