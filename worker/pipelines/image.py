"""Text to image with the resident diffusers pipeline of one image model family (SDXL, Z-Image, FLUX.2 [klein]).

One model is resident at a time (`family_loader.FamilyLoader`); a job of another switches, and the time that took
is the job's `metrics.load_s`. IMAGE_MODELS are fetched at start and the first of them loaded; the others are
fetched through the model cache on their first job, and so is a job's `hf:` repo, whose model_index.json says its
family. The dataset and training pipelines borrow SDXL through `.sdxl`, which makes SDXL resident when it is not.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from worker.pipelines.base import JobContext, LoadEnv, PipelineOutput, is_out_of_memory, resolve_seed
from worker.pipelines.family_loader import FamilyLoader, Resident, load_family, repo_pipeline_class
from worker.pipelines.image_families import FAMILIES, Family, family_for_pipeline, is_repo_model
from worker.schemas import DatasetJob, ImageJob, JobInputError, with_repo_family

log = logging.getLogger(__name__)

_PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}

DrawJob = TypeVar("DrawJob", ImageJob, DatasetJob)


def load_sdxl(path: Path, device: str) -> Any:
    """An SDXL diffusers folder as the worker loads it: fp16 on CUDA (its fp16 variant files when present)."""
    return load_family(FAMILIES["sdxl-base"], path, device)


def encode_image(image: Any, fmt: str) -> bytes:
    buffer = io.BytesIO()
    options = {"quality": 95} if fmt in ("jpeg", "webp") else {}
    image.save(buffer, format=_PIL_FORMATS[fmt], **options)
    return buffer.getvalue()


def draw_args(
    family: Family,
    *,
    prompt: str,
    negative_prompt: str,
    width: int,
    height: int,
    steps: int,
    guidance_scale: float,
) -> dict[str, Any]:
    """The keyword arguments of one family's pipeline call for these job values (schemas refused the rest)."""
    args: dict[str, Any] = {
        "prompt": prompt,
        "width": width,
        "height": height,
        "num_inference_steps": steps,
        "guidance_scale": guidance_scale,
    }
    if family.negative_prompt != "never" and negative_prompt:
        args["negative_prompt"] = negative_prompt
    return args


class ImagePipeline:
    """Text to image. The resident family's pipeline stays loaded; other job types borrow SDXL via `.sdxl`."""

    job_type: ClassVar[str] = "image"

    def __init__(self) -> None:
        self.device = "cpu"
        self.families: FamilyLoader | None = None
        self.loras: Any = None
        self.checkpoints: Any = None
        self.refs: Any = None

    def load(self, env: LoadEnv) -> None:
        from worker.pipelines.checkpoints import Checkpoints
        from worker.pipelines.image_loras import LoraLoader

        self.device = env.device
        self.refs = env.refs
        self.loras = LoraLoader(env.store, env.files, env.refs)
        self.checkpoints = Checkpoints.from_settings(
            env.settings, env.volume.root, lambda: env.models("sdxl-base"), env.device, env.refs
        )
        self.families = FamilyLoader(env.models, env.device, on_release=self._released)
        warm = env.settings.image_models
        for name in warm[1:]:
            env.models(name)  # on the volume now; loaded when a job asks for it
        self.families.activate(warm[0])

    def _released(self, name: str) -> None:
        if name == "sdxl-base":
            self.checkpoints.release()

    def activate(self, model: str) -> tuple[Any, float]:
        """The pipeline of family `model`, made resident; and the seconds the switch took (0: it was)."""
        assert self.families is not None, "load() first"
        resident, load_s = self.families.activate(model)
        return resident.pipe, load_s

    @contextmanager
    def resident_for(self, job: DrawJob) -> Iterator[tuple[DrawJob, Resident, float]]:
        """The job's model made resident, for the block: the job as it will run (a repo `model`'s job validated
        again with the defaults and bounds of the repo's family), the resident model, and the switch's seconds.

        A repo is fetched through the model cache and held for the block; a job its family cannot run is refused
        before the download when the repo's resolution names its pipeline already."""
        assert self.families is not None, "load() first"
        if not is_repo_model(job.model):
            resident, load_s = self.families.activate(job.model)
            yield job, resident, load_s
            return
        resident = self.families.resident
        if resident is not None and resident.key == job.model:
            yield with_repo_family(job, resident.family.name), resident, 0.0
            return
        started = time.perf_counter()
        named = self.refs.describe(job.model, "model").get("pipeline")
        family = _repo_family(named, job.model) if named else None
        if family is not None:
            job = with_repo_family(job, family.name)  # a job the family cannot run goes no further
        with self.refs.use(job.model, None, "model") as folder:
            if family is None:  # resolved by an earlier cache, which did not record the pipeline
                family = _repo_family(repo_pipeline_class(folder), job.model)
                job = with_repo_family(job, family.name)
            try:
                resident, _ = self.families.activate_folder(job.model, family, folder)
            except Exception as err:
                if is_out_of_memory(err):
                    raise
                # the caller's repo, not the worker, is what failed: its own message, without the volume's paths
                first_line = str(err).replace(str(folder), job.model).splitlines()[0] if str(err) else ""
                raise JobInputError(
                    "model",
                    f"{job.model} does not load as {family.pipeline_class}: {type(err).__name__} {first_line}",
                ) from err
            yield job, resident, time.perf_counter() - started

    @property
    def sdxl(self) -> Any:
        """The SDXL pipeline, for the dataset and training pipelines (switching to SDXL if another is resident)."""
        return self.activate("sdxl-base")[0]

    def use_scheduler(self, name: str) -> None:
        """Put scheduler `name` of the resident family in place, built from that family's own config."""
        import diffusers

        assert self.families is not None and self.families.resident is not None, "load() first"
        resident = self.families.resident
        class_name, extra = resident.family.schedulers[name]
        scheduler_cls = getattr(diffusers, class_name)
        resident.pipe.scheduler = scheduler_cls.from_config(resident.scheduler_config, **extra)

    def generator(self, seed: int) -> Any:
        """The job's generator; torch's global one is seeded too, for the flow schedulers that draw from it."""
        import torch

        torch.manual_seed(seed)
        return torch.Generator(device=self.device).manual_seed(seed)

    def step_callback(self, ctx: JobContext, total: int, offset: int = 0) -> Any:
        """A diffusers `callback_on_step_end` that reports progress and stops between denoising steps."""

        def on_step_end(pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            ctx.check_cancelled()
            ctx.progress(offset + step + 1, total)
            return tensors

        return on_step_end

    def run(self, job: ImageJob, ctx: JobContext) -> PipelineOutput:
        with self.resident_for(job) as (ready, resident, load_s):
            return self._draw(ready, ctx, resident, load_s)

    def _draw(self, job: ImageJob, ctx: JobContext, resident: Resident, load_s: float) -> PipelineOutput:
        family, pipe = resident.family, resident.pipe
        seed = resolve_seed(job.seed)
        self.use_scheduler(job.scheduler)
        ctx.check_cancelled()
        args = draw_args(
            family,
            prompt=job.prompt,
            negative_prompt=job.negative_prompt,
            width=job.width,
            height=job.height,
            steps=job.steps,
            guidance_scale=job.guidance_scale,
        )
        # a checkpoint's modules and LoRAs are taken out when the block ends: the next job sees the base pipeline
        with self.checkpoints.applied(pipe, job.checkpoint), self.loras.applied(pipe, job.loras, family):
            started = time.perf_counter()
            images = pipe(
                **args,
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
        metrics: dict[str, float | int] = {
            "run_s": round(run_s, 4),
            "steps_per_s": round(job.steps / run_s, 3) if run_s else 0.0,
        }
        if load_s:
            metrics["load_s"] = round(load_s, 4)  # this job's family switch, in place of the worker's 0
        fields = {"seed": seed, "model": job.model}
        if is_repo_model(job.model):
            fields["family"] = family.name
        return PipelineOutput(outputs=outputs, metrics=metrics, fields=fields)


def _repo_family(pipeline_class: str, model: str) -> Family:
    try:
        return family_for_pipeline(pipeline_class, model)
    except ValueError as err:
        raise JobInputError("model", str(err)) from None
