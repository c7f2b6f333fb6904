"""LoRA training on the resident SDXL pipeline (no second copy of the base model).

The job's loop and files are `worker.training.loop` (the LoRA in kohya and diffusers formats, checkpoints with
their resume state, samples and the grid, the log and plot). Before training: images without captions are
captioned (`worker.training.captioner`) and the whole set is written to `dataset/` in the job folder (images and
same-name `.txt`), so the captions can be fixed and the set retrained with `dataset_path`; a `resume_from`
checkpoint is found and checked against this job.
"""

from __future__ import annotations

import logging
import time
from typing import Any, ClassVar

from worker.inputs import InputLimits
from worker.pipelines.base import JobContext, LoadEnv, PipelineOutput, resolve_seed
from worker.schemas import JobInputError, TrainingJob

log = logging.getLogger(__name__)

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
        from worker.training.captioner import caption_missing
        from worker.training.data import TrainingData, load_examples
        from worker.training.loop import TrainingRun
        from worker.training.resume import find_state, load_state
        from worker.training.trainer import LoraTrainer

        if job.optimizer == "adamw8bit" and self.env.device != "cuda":
            raise JobInputError(
                "optimizer",
                f"adamw8bit needs a CUDA GPU (bitsandbytes); this worker has {self.env.device}: use adamw",
            )
        examples = load_examples(job, self.env.store, self.volume, self.limits)
        state = None
        if job.resume_from is not None:
            state = load_state(find_state(job.resume_from, self.env.store, self.volume))
        # a resumed run keeps its seed unless the job gives one: the batch order goes on as it would have
        seed = resolve_seed(job.seed if job.seed is not None or state is None else state.seed)
        settings = train_settings(job, seed)
        identity = self.identity(job, settings)
        if state is not None:
            mismatch = identity.mismatch(state.identity)
            if mismatch:
                raise JobInputError(*mismatch)
            if state.steps_done >= job.steps:
                raise JobInputError(
                    "steps", f"the checkpoint is at step {state.steps_done}: give more steps to resume"
                )
        started = time.perf_counter()
        captions = caption_missing(examples, job.trigger_word, ctx, self.captioner_folder, self.env.device)
        caption_s = time.perf_counter() - started
        pipe = self.image.sdxl
        run = TrainingRun(job, ctx, settings, self.image, identity)

        def caching(done: int, total: int) -> None:
            ctx.check_cancelled()  # nothing trained yet: a cancel here leaves no output, as for any job
            ctx.progress(done, total, phase="cache")

        started = time.perf_counter()
        # trained on the checkpoint it will be used with; its modules (and the base's) are restored afterwards
        with self.image.checkpoints.applied(pipe, job.checkpoint), LoraTrainer(pipe, settings) as trainer:
            if state is not None:
                run.resume(state, trainer)
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
        fields = run.fields(seed)
        if captions.outputs:
            fields["auto_captions"] = captions.written
        return PipelineOutput(
            outputs=[*captions.outputs, *outputs],
            metrics={
                "caption_s": round(caption_s, 4),
                "cache_s": round(cache_s, 4),
                "train_s": round(train_s, 4),
                "steps_per_s": round(run.trained_steps / train_s, 4) if train_s else 0.0,
                "final_loss": round(run.losses[-1], 6) if run.losses else 0.0,
            },
            fields=fields,
        )

    def captioner_folder(self) -> Any:
        from worker.training.captioner import MODEL

        return self.env.models(MODEL)

    def identity(self, job: TrainingJob, settings: Any) -> Any:
        from worker.training.resume import Identity

        return Identity(
            base_model=job.checkpoint or ("sdxl-tiny" if self.env.profile == "tiny" else BASE_MODEL),
            rank=job.rank,
            alpha=settings.alpha,
            unet_targets=settings.unet_targets,
            text_targets=settings.text_targets,
            train_text_encoder=job.train_text_encoder,
            optimizer=job.optimizer,
        )


def train_settings(job: TrainingJob, seed: int) -> Any:
    from worker.training.trainer import TrainSettings, resolve_targets

    unet_targets, text_targets = resolve_targets(job.target_modules)
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
        unet_targets=unet_targets,
        text_targets=text_targets,
        min_snr_gamma=job.min_snr_gamma,
        noise_offset=job.noise_offset,
        optimizer=job.optimizer,
    )
