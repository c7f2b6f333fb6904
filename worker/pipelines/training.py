"""LoRA training on the resident SDXL pipeline (no second copy of the base model).

Outputs under the job folder:
- `lora/<name>.safetensors`: kohya format (ComfyUI, A1111/Forge, sd-scripts), `ss_*` and `modelspec.*` metadata;
- `lora/diffusers/pytorch_lora_weights.safetensors`: diffusers/PEFT format (`load_lora_weights`);
- `checkpoints/<name>-step000050.safetensors` every `checkpoint_every` steps (kohya format);
- `samples/step000050.png` every `sample_every` steps, drawn with `sample_prompt`;
- `train_log.csv` (step, loss, lr) and `loss.png`.

A cancelled run stops between two steps, saves the adapter as it stands as its last checkpoint, and returns a
result that says so (`cancelled: true`), keeping the log, the plot, the samples and every checkpoint.
"""

from __future__ import annotations

import csv
import io
import logging
import time
from typing import Any, ClassVar

from worker.inputs import InputLimits
from worker.pipelines.base import JobCancelled, JobContext, LoadEnv, PipelineOutput, resolve_seed
from worker.schemas import OutputFile, TrainingJob

log = logging.getLogger(__name__)

SAVE_DTYPE = "float16"  # what sd-scripts' --save_precision fp16 writes: half the size, no visible loss
BASE_MODEL = "stabilityai/stable-diffusion-xl-base-1.0"


class TrainingPipeline:
    job_type: ClassVar[str] = "training"

    def __init__(self) -> None:
        self.image: Any = None
        self.env: Any = None

    def load(self, env: LoadEnv) -> None:
        self.env = env
        self.image = env.pipeline("image")
        self.limits = InputLimits.from_settings(env.settings)
        self.volume = env.files

    def run(self, job: TrainingJob, ctx: JobContext) -> PipelineOutput:
        from worker.training.data import TrainingData, load_examples
        from worker.training.trainer import LoraTrainer

        examples = load_examples(job, self.env.store, self.volume, self.limits)
        seed = resolve_seed(job.seed)
        settings = train_settings(job, seed)
        pipe = self.image.sdxl
        base_model = "sdxl-tiny" if self.env.profile == "tiny" else BASE_MODEL
        run = _Run(job, ctx, settings, [example.caption for example in examples], self.image, base_model)

        def caching(done: int, total: int) -> None:
            ctx.check_cancelled()  # nothing trained yet: a cancel here leaves no output, as for any job
            ctx.progress(done, total, phase="cache")

        started = time.perf_counter()
        with LoraTrainer(pipe, settings) as trainer:
            data = TrainingData(
                pipe,
                examples,
                job.resolution,
                cache_latents=job.cache_latents,
                cache_text=not job.train_text_encoder,
                seed=seed,
                on_progress=caching,
            )
            cache_s = time.perf_counter() - started
            try:
                run.train(trainer, data)
            finally:
                data.release()
            outputs = run.finish(trainer)
        train_s = time.perf_counter() - started - cache_s
        return PipelineOutput(
            outputs=outputs,
            metrics={
                "cache_s": round(cache_s, 4),
                "train_s": round(train_s, 4),
                "steps_per_s": round(run.steps_done / train_s, 4) if train_s else 0.0,
                "final_loss": round(run.losses[-1], 6) if run.losses else 0.0,
            },
            fields=run.fields(seed, len(data)),
        )


def train_settings(job: TrainingJob, seed: int) -> Any:
    from worker.training.trainer import TrainSettings

    return TrainSettings(
        rank=job.rank,
        alpha=job.alpha if job.alpha is not None else float(job.rank),
        steps=job.steps,
        learning_rate=job.learning_rate,
        lr_scheduler=job.lr_scheduler,
        warmup_steps=job.warmup_steps,
        batch_size=job.batch_size,
        train_text_encoder=job.train_text_encoder,
        mixed_precision=job.mixed_precision,
        gradient_checkpointing=job.gradient_checkpointing,
        caption_dropout=job.caption_dropout,
        seed=seed,
    )


class _Run:
    """One job's loop and files: steps, log rows, checkpoints, samples, the final LoRA."""

    def __init__(
        self,
        job: TrainingJob,
        ctx: JobContext,
        settings: Any,
        captions: list[str],
        image: Any,
        base_model: str,
    ) -> None:
        self.job = job
        self.base_model = base_model
        self.ctx = ctx
        self.settings = settings
        self.captions = captions
        self.image = image
        self.started_at = time.time()
        self.steps_done = 0
        self.losses: list[float] = []
        self.rates: list[float] = []
        self.outputs: list[OutputFile] = []
        self.checkpoint: OutputFile | None = None
        self.cancelled = False

    def train(self, trainer: Any, data: Any) -> None:
        import torch

        job = self.job
        order = torch.Generator().manual_seed(self.settings.seed)
        queue: list[int] = []
        try:
            for step in range(1, job.steps + 1):
                self.ctx.check_cancelled()
                while len(queue) < job.batch_size:  # epochs of shuffled examples, one after another
                    queue += torch.randperm(len(data), generator=order).tolist()
                indices, queue = queue[: job.batch_size], queue[job.batch_size :]
                dropped = (torch.rand(len(indices), generator=order) < job.caption_dropout).tolist()
                loss = trainer.step(data.batch(indices, dropped))
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
            if self.steps_done and (self.checkpoint is None or self.checkpoint.step != self.steps_done):
                self.save_checkpoint(trainer)

    def kohya_file(self, trainer: Any) -> tuple[dict[str, Any], dict[str, str]]:
        import torch

        from worker.training.kohya import TrainingRecord, kohya_metadata, to_kohya

        job = self.job
        record = TrainingRecord(
            name=job.name,
            base_model=self.base_model,
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
            captions=tuple(self.captions),
            trigger_word=job.trigger_word,
            prediction_type=trainer.prediction_type,
        )
        dtype = getattr(torch, SAVE_DTYPE)
        return to_kohya(
            trainer.peft_state(), self.settings.alpha, trainer.layers_per_block, dtype
        ), kohya_metadata(record)

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

    def save_checkpoint(self, trainer: Any) -> None:
        relpath = f"checkpoints/{self.job.name}-step{self.steps_done:06d}.safetensors"
        self.checkpoint = self.write_kohya(trainer, relpath, "checkpoint")
        self.outputs.append(self.checkpoint)

    def sample(self, trainer: Any) -> None:
        from worker.pipelines.image import encode_image

        prompt = self.job.sample_prompt or self.captions[0]
        self.image.use_scheduler("euler")
        with trainer.sampling():
            image = self.image.sdxl(
                prompt=prompt,
                width=self.job.resolution,
                height=self.job.resolution,
                num_inference_steps=self.job.sample_steps,
                generator=self.image.generator(self.settings.seed),
            ).images[0]
        self.outputs.append(
            self.ctx.folder.write_bytes(
                f"samples/step{self.steps_done:06d}.png",
                encode_image(image, "png"),
                kind="sample",
                step=self.steps_done,
                prompt=prompt,
            )
        )

    def finish(self, trainer: Any) -> list[OutputFile]:
        """The final LoRA in both formats (not for a cancelled run: its checkpoint is the result), the log and
        the plot."""
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
        which `load_lora_weights` reads back for the real alpha."""
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

    def fields(self, seed: int, num_images: int) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "seed": seed,
            "steps_done": self.steps_done,
            "num_images": num_images,
            "rank": self.job.rank,
            "alpha": self.settings.alpha,
            "cancelled": self.cancelled,
        }
        if self.cancelled:
            saved = self.checkpoint.relpath if self.checkpoint else None
            fields["message"] = (
                f"cancelled after step {self.steps_done} of {self.job.steps}; last checkpoint: {saved}"
                if saved
                else "cancelled before the first step; nothing to save"
            )
        return fields
