"""Text to image with a resident diffusers SDXL pipeline."""

from __future__ import annotations

import io
import logging
import time
from pathlib import Path
from typing import Any, ClassVar

from worker.pipelines.base import JobContext, LoadEnv, PipelineOutput, resolve_seed
from worker.schemas import ImageJob

log = logging.getLogger(__name__)

# name -> (diffusers scheduler class, extra config)
SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    "dpmpp_2m_karras": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "use_karras_sigmas": True},
    ),
    "ddim": ("DDIMScheduler", {}),
    "unipc": ("UniPCMultistepScheduler", {}),
}

_PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}


def load_sdxl(path: Path, device: str) -> Any:
    """Load an SDXL diffusers folder: fp16 on CUDA (the fp16 variant files when present), fp32 on CPU."""
    import torch
    from diffusers import StableDiffusionXLPipeline

    cuda = device.startswith("cuda")
    dtype = torch.float16 if cuda else torch.float32
    variant = "fp16" if cuda and any(path.glob("unet/*.fp16.safetensors")) else None
    pipe = StableDiffusionXLPipeline.from_pretrained(
        path, dtype=dtype, variant=variant, use_safetensors=True, local_files_only=True
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def encode_image(image: Any, fmt: str) -> bytes:
    buffer = io.BytesIO()
    options = {"quality": 95} if fmt in ("jpeg", "webp") else {}
    image.save(buffer, format=_PIL_FORMATS[fmt], **options)
    return buffer.getvalue()


class ImagePipeline:
    """SDXL text-to-image. The diffusers pipeline stays resident; other job types borrow it via `.sdxl`."""

    job_type: ClassVar[str] = "image"

    def __init__(self) -> None:
        self.sdxl: Any = None
        self.device = "cpu"
        self._base_scheduler_config: dict[str, Any] = {}
        self.loras: Any = None
        self.checkpoints: Any = None

    def load(self, env: LoadEnv) -> None:
        from worker.pipelines.checkpoints import Checkpoints
        from worker.pipelines.image_loras import LoraLoader

        self.device = env.device
        self.sdxl = load_sdxl(env.models("sdxl-base"), env.device)
        self._base_scheduler_config = dict(self.sdxl.scheduler.config)
        self.loras = LoraLoader(env.store, env.files)
        self.checkpoints = Checkpoints.from_settings(
            env.settings, env.volume.root, env.models("sdxl-base"), env.device
        )

    def use_scheduler(self, name: str) -> None:
        import diffusers

        class_name, extra = SCHEDULERS[name]
        scheduler_cls = getattr(diffusers, class_name)
        self.sdxl.scheduler = scheduler_cls.from_config(self._base_scheduler_config, **extra)

    def generator(self, seed: int) -> Any:
        import torch

        return torch.Generator(device=self.device).manual_seed(seed)

    def step_callback(self, ctx: JobContext, total: int, offset: int = 0) -> Any:
        """A diffusers `callback_on_step_end` that reports progress and stops between denoising steps."""

        def on_step_end(pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            ctx.check_cancelled()
            ctx.progress(offset + step + 1, total)
            return tensors

        return on_step_end

    def run(self, job: ImageJob, ctx: JobContext) -> PipelineOutput:
        seed = resolve_seed(job.seed)
        self.use_scheduler(job.scheduler)
        ctx.check_cancelled()
        # a checkpoint's modules and LoRAs are taken out when the block ends: the next job sees the base pipeline
        with self.checkpoints.applied(self.sdxl, job.checkpoint), self.loras.applied(self.sdxl, job.loras):
            started = time.perf_counter()
            images = self.sdxl(
                prompt=job.prompt,
                negative_prompt=job.negative_prompt or None,
                width=job.width,
                height=job.height,
                num_inference_steps=job.steps,
                guidance_scale=job.guidance_scale,
                num_images_per_prompt=job.num_images,
                generator=self.generator(seed),
                callback_on_step_end=self.step_callback(ctx, job.steps),
            ).images
            run_s = time.perf_counter() - started
        outputs = []
        for index, image in enumerate(images):
            ctx.check_cancelled()
            outputs.append(
                ctx.folder.write_bytes(
                    f"image_{index:02d}.{job.format}",
                    encode_image(image, job.format),
                    kind="image",
                    width=image.width,
                    height=image.height,
                )
            )
        return PipelineOutput(
            outputs=outputs,
            metrics={"run_s": round(run_s, 4), "steps_per_s": round(job.steps / run_s, 3) if run_s else 0.0},
            fields={"seed": seed},
        )
