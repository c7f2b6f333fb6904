"""Captions for training images that have none, written in-process by BLIP (`BlipForConditionalGeneration`,
native in transformers), fetched through the model cache as the catalog's `blip-captioner`.

The model is loaded for the job that needs it and released after: it is small (0.25 B parameters, fp16 on a GPU)
but training wants the memory back. Beam search, no sampling: a dataset gets the same captions every time.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from worker.training.data import CAPTION_SUFFIX, DATASET_FOLDER, Example, with_trigger

if TYPE_CHECKING:
    from PIL.Image import Image

    from worker.pipelines.base import JobContext
    from worker.schemas import OutputFile

MODEL = "blip-captioner"
# BLIP's own captioning settings (its demo): beam search of 3, at least 5 tokens, deterministic
NUM_BEAMS = 3
MIN_NEW_TOKENS = 5
MAX_NEW_TOKENS = 40
BATCH = 8


class Captioner:
    """BLIP from a folder in the Hugging Face layout; use as a context manager to free it afterwards."""

    def __init__(self, folder: Path, device: str) -> None:
        import torch
        from transformers import BlipForConditionalGeneration, BlipProcessor

        self.device = device
        self.dtype = torch.float16 if device == "cuda" else torch.float32
        self.processor = BlipProcessor.from_pretrained(folder)
        self.model: Any = BlipForConditionalGeneration.from_pretrained(folder, dtype=self.dtype).to(device)
        self.model.eval()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        import torch

        self.model = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def caption(self, images: list[Image]) -> list[str]:
        """One caption per image, in order: plain text, special tokens and surrounding spaces removed."""
        import torch

        inputs = self.processor(images=[image.convert("RGB") for image in images], return_tensors="pt")
        pixels = inputs["pixel_values"].to(self.device, self.dtype)
        with torch.no_grad():
            tokens = self.model.generate(
                pixel_values=pixels,
                num_beams=NUM_BEAMS,
                min_new_tokens=MIN_NEW_TOKENS,
                max_new_tokens=MAX_NEW_TOKENS,
                do_sample=False,
            )
        return [text.strip() for text in self.processor.batch_decode(tokens, skip_special_tokens=True)]


@dataclass
class Captioned:
    """The dataset as trained, written to the job folder, and the captions the model wrote."""

    outputs: list[OutputFile] = field(default_factory=list)
    written: list[dict[str, str]] = field(default_factory=list)  # {"image": relpath, "caption": text}


def caption_missing(
    examples: list[Example],
    trigger_word: str | None,
    ctx: JobContext,
    model_folder: Callable[[], Path],
    device: str,
) -> Captioned:
    """Caption the examples that have no caption (trigger word first), then write the whole set to the job's
    `dataset/` folder; nothing happens when every example has a caption."""
    missing = [example for example in examples if example.caption is None]
    if not missing:
        return Captioned()
    ctx.progress(0, len(missing), phase="caption")
    with Captioner(model_folder(), device) as captioner:
        for start in range(0, len(missing), BATCH):
            ctx.check_cancelled()
            chunk = missing[start : start + BATCH]
            for example, text in zip(chunk, captioner.caption([example.load() for example in chunk])):
                example.caption = with_trigger(text, trigger_word)
            ctx.progress(start + len(chunk), len(missing), phase="caption")
    return write_dataset(examples, {id(example) for example in missing}, ctx)


def write_dataset(examples: list[Example], auto: set[int], ctx: JobContext) -> Captioned:
    """Each image (a folder's file as it is, an inline one as PNG) with its same-name caption file."""
    from worker.pipelines.image import encode_image

    done = Captioned()
    for number, example in enumerate(examples, start=1):
        if example.path is not None:
            name = example.path.name
            image = ctx.folder.write_bytes(
                f"{DATASET_FOLDER}/{name}", example.path.read_bytes(), "training_image"
            )
        else:
            name = f"{number:04d}.png"
            data = encode_image(example.load(), "png")
            image = ctx.folder.write_bytes(f"{DATASET_FOLDER}/{name}", data, kind="training_image")
        caption = example.caption or ""
        stem = Path(name).stem
        is_auto = id(example) in auto
        done.outputs += [
            image,
            ctx.folder.write_bytes(
                f"{DATASET_FOLDER}/{stem}{CAPTION_SUFFIX}", caption.encode(), kind="caption", auto=is_auto
            ),
        ]
        if is_auto:
            done.written.append({"image": image.relpath, "caption": caption})
    return done
