"""One training job's loop and files: steps over bucketed batches, log rows, checkpoints with their resume
state, samples, the final LoRA in both formats and the sample grid.

Files under the job folder:
- `lora/<name>.safetensors`: kohya format (ComfyUI, A1111/Forge, sd-scripts), `ss_*`, `sshs_*` and `modelspec.*`
  metadata; `lora/diffusers/pytorch_lora_weights.safetensors`: diffusers/PEFT format (`load_lora_weights`);
- `checkpoints/<name>-step000050.safetensors` every `checkpoint_every` steps (kohya format), each with its
  `.state.safetensors` (`worker.training.resume`), and the final step's state;
- `samples/step000050.png` every `sample_every` steps; `samples/grid.png`, the sample prompt at `GRID_SCALES`;
- `train_log.csv` (step, loss, lr) and `loss.png`.

A cancelled run stops between two steps and saves the adapter as it stands as its last checkpoint.
"""

from __future__ import annotations

import csv
import io
import logging
import time
from typing import Any

from worker.pipelines.base import JobCancelled, JobContext
from worker.schemas import OutputFile, TrainingJob
from worker.training.resume import Identity, TrainingState, save_state, state_relpath

log = logging.getLogger(__name__)

SAVE_DTYPE = "float16"  # what sd-scripts' --save_precision fp16 writes: half the size, no visible loss
GRID_SCALES = (0.0, 0.5, 1.0)  # 0: the base model, for comparison


class TrainingRun:
    """The steps, log, checkpoints, samples and final files of one training job on a `LoraTrainer`."""

    def __init__(
        self, job: TrainingJob, ctx: JobContext, settings: Any, image: Any, identity: Identity
    ) -> None:
        self.job = job
        self.ctx = ctx
        self.settings = settings
        self.image = image
        self.identity = identity
        self.started_at = time.time()
        self.first_step = 0  # the steps a resumed run took over from its checkpoint
        self.steps_done = 0
        self.losses: list[float] = []
        self.rates: list[float] = []
        self.outputs: list[OutputFile] = []
        self.checkpoint: OutputFile | None = None
        self.cancelled = False
        self.data: Any = None

    def resume(self, state: TrainingState, trainer: Any) -> None:
        from worker.training.resume import apply_state

        apply_state(state, trainer)
        self.first_step = self.steps_done = state.steps_done
        self.losses = [loss for loss, _ in state.log]
        self.rates = [lr for _, lr in state.log]

    def train(self, trainer: Any, data: Any) -> None:
        from worker.training.buckets import BucketSampler

        job = self.job
        self.data = data
        sampler = BucketSampler(data.buckets, job.batch_size, self.settings.seed)
        batches = iter(sampler)
        for _ in range(self.first_step):  # replay the draws of the steps the checkpoint already took
            sampler.dropped(len(next(batches)), job.caption_dropout)
        try:
            for step in range(self.first_step + 1, job.steps + 1):
                self.ctx.check_cancelled()
                indices = next(batches)
                loss = trainer.step(data.batch(indices, sampler.dropped(len(indices), job.caption_dropout)))
                self.steps_done = step
                self.losses.append(loss)
                self.rates.append(trainer.learning_rate)
                self.ctx.progress(step, job.steps, phase="train", loss=round(loss, 6), lr=self.rates[-1])
                if job.checkpoint_every and step % job.checkpoint_every == 0 and step < job.steps:
                    self.save_checkpoint(trainer)
                if job.sample_every and (step % job.sample_every == 0 or step == job.steps):
                    self.sample(trainer)
        except JobCancelled:
            self.cancelled = True
            log.info(
                "job %s: cancelled after step %d; saving the adapter as a checkpoint",
                self.ctx.job_id,
                self.steps_done,
            )
            if self.steps_done > self.first_step and (
                self.checkpoint is None or self.checkpoint.step != self.steps_done
            ):
                self.save_checkpoint(trainer)

    @property
    def trained_steps(self) -> int:
        """Steps this run took (a resumed run counts from its checkpoint)."""
        return self.steps_done - self.first_step

    def kohya_file(self, trainer: Any) -> tuple[dict[str, Any], dict[str, str]]:
        import torch

        from worker.training.buckets import bucket_info
        from worker.training.hashes import with_hashes
        from worker.training.kohya import TrainingRecord, kohya_metadata, to_kohya

        job = self.job
        data = self.data
        record = TrainingRecord(
            name=job.name,
            base_model=self.identity.base_model,
            rank=job.rank,
            alpha=self.settings.alpha,
            resolution=job.resolution,
            learning_rate=job.learning_rate,
            lr_scheduler=job.lr_scheduler,
            warmup_steps=job.warmup_steps,
            max_steps=job.steps,
            steps_done=self.steps_done,
            batch_size=job.batch_size,
            mixed_precision=job.mixed_precision if trainer.autocast_dtype is not None else "no",
            gradient_checkpointing=job.gradient_checkpointing,
            cache_latents=job.cache_latents,
            caption_dropout=job.caption_dropout,
            train_text_encoder=job.train_text_encoder,
            seed=self.settings.seed,
            max_grad_norm=1.0,
            started_at=self.started_at,
            captions=tuple(data.captions),
            trigger_word=job.trigger_word,
            prediction_type=trainer.prediction_type,
            optimizer=trainer.optimizer_name,
            min_snr_gamma=job.min_snr_gamma,
            noise_offset=job.noise_offset,
            buckets=tuple(data.buckets),
            bucket_info=bucket_info(data.buckets, data.ratio_errors),
        )
        dtype = getattr(torch, SAVE_DTYPE)
        tensors = to_kohya(trainer.peft_state(), self.settings.alpha, trainer.layers_per_block, dtype)
        return tensors, with_hashes(tensors, kohya_metadata(record))

    def write_kohya(self, trainer: Any, relpath: str, kind: str) -> OutputFile:
        from safetensors.torch import save_file

        tensors, metadata = self.kohya_file(trainer)
        return self.ctx.folder.write_with(
            relpath,
            lambda temp: save_file(tensors, str(temp), metadata=metadata),
            kind=kind,
            format="kohya",
            step=self.steps_done,
        )

    def write_state(self, trainer: Any) -> None:
        log_rows = list(zip(self.losses, self.rates))
        self.outputs.append(
            self.ctx.folder.write_with(
                state_relpath(self.job.name, self.steps_done),
                lambda temp: save_state(temp, trainer, self.identity, self.steps_done, log_rows),
                kind="state",
                step=self.steps_done,
            )
        )

    def save_checkpoint(self, trainer: Any) -> None:
        relpath = f"checkpoints/{self.job.name}-step{self.steps_done:06d}.safetensors"
        self.checkpoint = self.write_kohya(trainer, relpath, "checkpoint")
        self.outputs.append(self.checkpoint)
        self.write_state(trainer)

    def render(self, trainer: Any, prompt: str) -> Any:
        self.image.use_scheduler("euler")
        with trainer.sampling():
            return self.image.sdxl(
                prompt=prompt,
                width=self.job.resolution,
                height=self.job.resolution,
                num_inference_steps=self.job.sample_steps,
                generator=self.image.generator(self.settings.seed),
            ).images[0]

    @property
    def sample_prompt(self) -> str:
        return self.job.sample_prompt or self.data.captions[0]

    def sample(self, trainer: Any) -> None:
        from worker.pipelines.image import encode_image

        self.outputs.append(
            self.ctx.folder.write_bytes(
                f"samples/step{self.steps_done:06d}.png",
                encode_image(self.render(trainer, self.sample_prompt), "png"),
                kind="sample",
                step=self.steps_done,
                prompt=self.sample_prompt,
            )
        )

    def sample_grid(self, trainer: Any) -> None:
        """The sample prompt with the same seed at each of `GRID_SCALES`, side by side, each labelled."""
        from PIL import Image, ImageDraw

        from worker.pipelines.image import encode_image

        images = []
        for scale in GRID_SCALES:
            with trainer.scaled(scale):
                images.append(self.render(trainer, self.sample_prompt))
        width, height = images[0].size
        grid = Image.new("RGB", (width * len(images), height))
        draw = ImageDraw.Draw(grid)
        for index, (scale, image) in enumerate(zip(GRID_SCALES, images)):
            grid.paste(image, (index * width, 0))
            draw.text((index * width + 4, 4), f"LoRA {scale:g}", fill=(255, 255, 255))
        self.outputs.append(
            self.ctx.folder.write_bytes(
                "samples/grid.png",
                encode_image(grid, "png"),
                kind="sample_grid",
                step=self.steps_done,
                prompt=self.sample_prompt,
                scales=list(GRID_SCALES),
            )
        )

    def finish(self, trainer: Any) -> list[OutputFile]:
        """The final LoRA in both formats, its resume state and the grid (not for a cancelled run: its
        checkpoint is the result), the log and the plot."""
        from worker.training.plot import plot_loss

        folder = self.ctx.folder
        if not self.cancelled:
            self.outputs.append(self.write_kohya(trainer, f"lora/{self.job.name}.safetensors", "lora"))
            self.outputs.append(
                folder.write_with(
                    "lora/diffusers/pytorch_lora_weights.safetensors",
                    lambda temp: self.write_diffusers(trainer, temp),
                    kind="lora",
                    format="diffusers",
                    step=self.steps_done,
                )
            )
            self.write_state(trainer)
            if self.job.sample_grid:
                self.sample_grid(trainer)
        rows = io.StringIO()
        writer = csv.writer(rows, lineterminator="\n")
        writer.writerow(["step", "loss", "lr"])
        writer.writerows((step, f"{loss:.6f}", f"{lr:.6g}") for step, loss, lr in self.rows())
        self.outputs.append(folder.write_bytes("train_log.csv", rows.getvalue().encode(), kind="log"))
        if self.losses:
            steps = [row[0] for row in self.rows()]
            title = f"{self.job.name}: rank {self.job.rank}, lr {self.job.learning_rate:g}"
            self.outputs.append(
                folder.write_with(
                    "loss.png", lambda temp: plot_loss(steps, self.losses, temp, title), kind="plot"
                )
            )
        return self.outputs

    def rows(self) -> list[tuple[int, float, float]]:
        return [(index + 1, loss, lr) for index, (loss, lr) in enumerate(zip(self.losses, self.rates))]

    def write_diffusers(self, trainer: Any, temp: Any) -> None:
        """diffusers' own writer: `unet.`/`text_encoder.` prefixed PEFT keys plus the LoRA config as metadata,
        which `load_lora_weights` reads back for the real alpha and layers."""
        import torch
        from diffusers import StableDiffusionXLPipeline

        dtype = getattr(torch, SAVE_DTYPE)
        state = {
            name: {key: value.to(dtype) for key, value in layers.items()}
            for name, layers in trainer.peft_state().items()
        }
        text = self.job.train_text_encoder
        StableDiffusionXLPipeline.save_lora_weights(
            str(temp.parent),
            unet_lora_layers=state["unet"],
            text_encoder_lora_layers=state.get("text_encoder"),
            text_encoder_2_lora_layers=state.get("text_encoder_2"),
            weight_name=temp.name,
            unet_lora_adapter_metadata=trainer.adapter_metadata("unet"),
            text_encoder_lora_adapter_metadata=trainer.adapter_metadata("text_encoder") if text else None,
            text_encoder_2_lora_adapter_metadata=trainer.adapter_metadata("text_encoder") if text else None,
        )

    def fields(self, seed: int) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "seed": seed,
            "steps_done": self.steps_done,
            "num_images": len(self.data.captions) if self.data is not None else 0,
            "rank": self.job.rank,
            "alpha": self.settings.alpha,
            "cancelled": self.cancelled,
        }
        if self.data is not None:
            fields["buckets"] = sorted({f"{width}x{height}" for width, height in self.data.buckets})
        if self.first_step:
            fields["resumed_from_step"] = self.first_step
        if self.cancelled:
            saved = self.checkpoint.relpath if self.checkpoint else None
            fields["message"] = (
                f"cancelled after step {self.steps_done} of {self.job.steps}; last checkpoint: {saved}"
                if saved
                else "cancelled before the first step; nothing to save"
            )
        return fields
