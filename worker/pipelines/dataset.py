"""A LoRA dataset of one subject, drawn with the image pipeline of the job's model family (SDXL by default).

Writes `dataset/0001.png` + `dataset/0001.txt` (the caption, trigger word first), ..., `dataset/dataset.json` (an
index) and optionally `dataset.zip`: the layout this worker's `training` job, kohya-ss/sd-scripts and ai-toolkit
read. With a `reference_image` (SDXL only), diffusers' IP-Adapter conditions every image on it so the set keeps
that subject's identity; the adapter is unloaded after the job, leaving the resident pipeline as it was.
"""

from __future__ import annotations

import json
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

from worker.inputs import InputLimits, load_image
from worker.pipelines.base import JobContext, LoadEnv, PipelineOutput, resolve_seed
from worker.pipelines.family_loader import Resident
from worker.pipelines.image import draw_args, encode_image
from worker.pipelines.image_families import is_repo_model
from worker.schemas import DatasetJob, OutputFile

IP_ADAPTER_MODEL = "ip-adapter-sdxl"
IP_ADAPTER_SUBFOLDER = "sdxl_models"
IP_ADAPTER_WEIGHTS = ("ip-adapter_sdxl.safetensors", "ip-adapter_sdxl.bin")
FOLDER = "dataset"

# Varied framing, angle and light, so a LoRA learns the subject rather than one photo.
DEFAULT_SHOTS: tuple[str, ...] = (
    "close-up portrait photo of {subject}, looking at the camera, soft natural light",
    "head and shoulders photo of {subject}, three-quarter view, studio lighting, plain grey background",
    "full body photo of {subject}, standing outdoors, golden hour",
    "profile view of {subject}, side lighting, dark background",
    "medium shot of {subject}, sitting by a window, diffuse daylight",
    "photo of {subject} from a low angle, dramatic rim light",
    "photo of {subject} from a high angle, overcast daylight",
    "candid photo of {subject} walking down a city street, evening",
    "close-up photo of {subject}, backlit, shallow depth of field",
    "photo of {subject} looking over the shoulder, warm lamp light, indoors",
    "upper body photo of {subject}, neutral background, softbox lighting",
    "wide shot of {subject} in a park, dappled sunlight",
    "portrait of {subject}, low-key lighting, black background",
    "photo of {subject}, bright high-key lighting, white background",
    "photo of {subject} at night, neon lights",
    "cowboy shot of {subject}, indoors, natural light",
)


def shot_prompt(template: str, subject: str) -> str:
    """The template with the subject put in (prepended when the template does not say where)."""
    if "{subject}" in template:
        return template.replace("{subject}", subject)
    return f"{subject}, {template}"


def zip_folder(files: list[Path], base: Path, dest: Path) -> None:
    with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in files:
            archive.write(path, path.relative_to(base).as_posix())


def ip_adapter_weight(folder: Path) -> str:
    for name in IP_ADAPTER_WEIGHTS:
        if (folder / IP_ADAPTER_SUBFOLDER / name).is_file():
            return name
    raise FileNotFoundError(f"{folder}: no {' or '.join(IP_ADAPTER_WEIGHTS)} in {IP_ADAPTER_SUBFOLDER}/")


@contextmanager
def ip_adapter(pipe: Any, folder: Path, scale: float) -> Iterator[None]:
    """IP-Adapter loaded into `pipe` for the duration; unloading puts back the image encoder (none), the UNet's
    attention processors and its `encoder_hid_proj`."""
    pipe.load_ip_adapter(
        str(folder),
        subfolder=IP_ADAPTER_SUBFOLDER,
        weight_name=ip_adapter_weight(folder),
        image_encoder_folder="image_encoder",
        local_files_only=True,
    )
    try:
        pipe.set_ip_adapter_scale(scale)
        yield
    finally:
        pipe.unload_ip_adapter()


class DatasetPipeline:
    job_type: ClassVar[str] = "dataset"

    def __init__(self) -> None:
        self.image: Any = None
        self.ip_adapter_dir = Path()

    def load(self, env: LoadEnv) -> None:
        # the IP-Adapter's files are fetched now (warm-up), but loaded only for jobs with a reference image
        self.image = env.pipeline("image")
        self.ip_adapter_dir = env.models(IP_ADAPTER_MODEL)
        self.limits = InputLimits.from_settings(env.settings)
        self.volume = env.files

    def run(self, job: DatasetJob, ctx: JobContext) -> PipelineOutput:
        with self.image.resident_for(job) as (ready, resident, load_s):
            return self._make(ready, ctx, resident, load_s)

    def _make(self, job: DatasetJob, ctx: JobContext, resident: Resident, load_s: float) -> PipelineOutput:
        seed = resolve_seed(job.seed)
        reference = None
        if job.reference_image is not None:
            reference = load_image(job.reference_image, "reference_image", self.limits, self.volume)
        templates = job.prompts or list(DEFAULT_SHOTS)
        pipe = resident.pipe
        started = time.perf_counter()
        # a checkpoint's modules are taken out when the block ends, as for an image job
        with self.image.checkpoints.applied(pipe, job.checkpoint):
            if reference is None:
                entries, outputs = self._draw(job, ctx, resident, seed, templates, None)
            else:
                with ip_adapter(pipe, self.ip_adapter_dir, job.reference_strength):
                    entries, outputs = self._draw(job, ctx, resident, seed, templates, reference)
        draw_s = time.perf_counter() - started
        index = {
            "subject": job.subject,
            "trigger_word": job.trigger_word,
            "width": job.width,
            "height": job.height,
            "seed": seed,
            "model": job.model,
            "reference_image": reference is not None,
            "images": entries,
        }
        outputs.append(
            ctx.folder.write_bytes(
                f"{FOLDER}/dataset.json", json.dumps(index, indent=2).encode(), kind="dataset"
            )
        )
        if job.zip:
            files = [Path(output.path) for output in outputs]
            outputs.append(
                ctx.folder.write_with(
                    "dataset.zip", lambda temp: zip_folder(files, ctx.folder.path, temp), kind="archive"
                )
            )
        metrics: dict[str, float | int] = {
            "draw_s": round(draw_s, 4),
            "images_per_s": round(job.num_images / draw_s, 4) if draw_s else 0.0,
        }
        if load_s:
            metrics["load_s"] = round(load_s, 4)  # the switch to this job's model family
        return PipelineOutput(
            outputs=outputs,
            metrics=metrics,
            fields={
                "seed": seed,
                "model": job.model,
                **({"family": resident.family.name} if is_repo_model(job.model) else {}),
                "num_images": job.num_images,
                "dataset_dir": str(ctx.folder.path / FOLDER),
                "trigger_word": job.trigger_word,
            },
        )

    def _draw(
        self,
        job: DatasetJob,
        ctx: JobContext,
        resident: Resident,
        seed: int,
        templates: list[str],
        reference: Any,
    ) -> tuple[list[dict[str, Any]], list[OutputFile]]:
        family, pipe = resident.family, resident.pipe
        self.image.use_scheduler(job.scheduler)
        total = job.num_images * job.steps
        extra = {"ip_adapter_image": reference} if reference is not None else {}
        entries: list[dict[str, Any]] = []
        outputs: list[OutputFile] = []
        for number in range(1, job.num_images + 1):
            ctx.check_cancelled()
            prompt = shot_prompt(templates[(number - 1) % len(templates)], job.subject)
            image_seed = seed + number - 1  # one seed per image: any image can be redrawn alone
            args = draw_args(
                family,
                prompt=prompt,
                negative_prompt=job.negative_prompt,
                width=job.width,
                height=job.height,
                steps=job.steps,
                guidance_scale=job.guidance_scale,
            )
            image = pipe(
                **args,
                generator=self.image.generator(image_seed),
                callback_on_step_end=self.image.step_callback(ctx, total, offset=(number - 1) * job.steps),
                **extra,
            ).images[0]
            stem = f"{number:04d}"
            caption = f"{job.trigger_word}, {prompt}"
            outputs.append(
                ctx.folder.write_bytes(
                    f"{FOLDER}/{stem}.png",
                    encode_image(image, "png"),
                    kind="image",
                    width=image.width,
                    height=image.height,
                )
            )
            outputs.append(
                ctx.folder.write_bytes(f"{FOLDER}/{stem}.txt", caption.encode("utf-8"), kind="caption")
            )
            entries.append(
                {
                    "image": f"{stem}.png",
                    "caption_file": f"{stem}.txt",
                    "caption": caption,
                    "prompt": prompt,
                    "seed": image_seed,
                }
            )
        return entries, outputs
