"""The image model families the `image` and `dataset` jobs draw with, as data: defaults, bounds, the fields each
ignores, schedulers, and the keys that tell its LoRAs apart.

Pure Python (no torch): the job schemas validate against it, the pipelines load and run from it. A field a
family's pipeline would ignore is refused naming the family rather than silently dropped, and every default a
family changes (steps, guidance, scheduler, negative prompt) is filled in before validation, so a validated job
holds the values that will run.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

from cache.catalog import IMAGE_FAMILIES

NegativePrompt = Literal["always", "with_guidance", "never"]
SchedulerTable = dict[str, tuple[str, dict[str, Any]]]

# DDPM-family samplers over SDXL's discrete timesteps
_SDXL_SCHEDULERS: SchedulerTable = {
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
# Flow-matching samplers. Z-Image's pipeline always hands the scheduler its own sigma list and shift `mu`, which
# only these three accept; FLUX.2's drops the sigmas for schedulers with `use_flow_sigmas`, so multistep solvers
# in flow mode work there too. The stochastic two draw their noise from torch's global generator (seeded per job).
_FLOW_SCHEDULERS: SchedulerTable = {
    "euler": ("FlowMatchEulerDiscreteScheduler", {}),
    "euler_a": ("FlowMatchEulerDiscreteScheduler", {"stochastic_sampling": True}),
    "lcm": ("FlowMatchLCMScheduler", {}),
}
_FLOW_MULTISTEP: SchedulerTable = {
    "dpmpp_2m": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "prediction_type": "flow_prediction", "use_flow_sigmas": True},
    ),
    "unipc": ("UniPCMultistepScheduler", {"prediction_type": "flow_prediction", "use_flow_sigmas": True}),
}

SDXL_NEGATIVE = "blurry, lowres, deformed, disfigured, watermark, text, multiple people"


@dataclass(frozen=True)
class Family:
    """One image model family: its catalog name, its pipeline, and the job values it takes."""

    name: str
    label: str
    pipeline_class: str
    steps: int
    max_steps: int
    guidance_scale: float
    guided: bool  # False: a distilled model that ignores guidance_scale
    size_multiple: int  # the VAE's downscale x the transformer's patch (or SDXL's 8)
    negative_prompt: NegativePrompt
    schedulers: SchedulerTable
    cuda_dtype: Literal["float16", "bfloat16"]
    lora_markers: tuple[str, ...]
    takes_checkpoint: bool = False
    takes_reference_image: bool = False
    dataset_negative_prompt: str = ""
    size: int = 1024
    default_scheduler: str = "euler"
    lora_pattern: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "lora_pattern", re.compile("|".join(self.lora_markers)))


FAMILIES: dict[str, Family] = {
    family.name: family
    for family in (
        Family(
            name="sdxl-base",
            label="SDXL",
            pipeline_class="StableDiffusionXLPipeline",
            steps=30,
            max_steps=150,
            guidance_scale=5.0,
            guided=True,
            size_multiple=8,
            negative_prompt="always",
            schedulers=_SDXL_SCHEDULERS,
            cuda_dtype="float16",
            # UNet blocks in diffusers, kohya and original (ldm) naming, and the two CLIP encoders
            lora_markers=(
                r"(down_blocks|up_blocks|mid_block|input_blocks|output_blocks|middle_block)[._]",
                r"^lora_te[12]_",
                r"^text_encoder(_2)?\.",
            ),
            takes_checkpoint=True,
            takes_reference_image=True,
            dataset_negative_prompt=SDXL_NEGATIVE,
        ),
        Family(
            name="z-image-turbo",
            label="Z-Image",
            pipeline_class="ZImagePipeline",
            steps=8,
            max_steps=50,
            guidance_scale=0.0,  # Turbo is distilled for no classifier-free guidance; > 0 turns CFG on
            guided=True,
            size_multiple=16,
            negative_prompt="with_guidance",
            schedulers=_FLOW_SCHEDULERS,
            cuda_dtype="bfloat16",
            # the single-stream layers and refiners, dotted (diffusers, ai-toolkit) or underscored (kohya/ComfyUI)
            lora_markers=(
                r"(^|[._])(noise_refiner|context_refiner)[._]\d",
                r"(^|[._])layers[._]\d+[._](attention|feed_forward|adaLN_modulation)",
            ),
        ),
        Family(
            name="flux2-klein-4b",
            label="FLUX.2 [klein]",
            pipeline_class="Flux2KleinPipeline",
            steps=4,
            max_steps=50,
            guidance_scale=1.0,  # what the distilled pipeline runs with; it reads no other value
            guided=False,
            size_multiple=16,
            negative_prompt="never",  # the pipeline takes no negative prompt (it uses "" when it guides)
            schedulers={**_FLOW_SCHEDULERS, **_FLOW_MULTISTEP},
            cuda_dtype="bfloat16",
            # BFL's double/single blocks (ai-toolkit, kohya) and diffusers' names for them
            lora_markers=(
                r"(^|[._])(double_blocks|single_blocks|single_transformer_blocks)[._]\d",
                r"(^|[._])transformer_blocks[._]\d+[._](attn|ff|ff_context)[._]",
            ),
        ),
    )
}
IMAGE_MODELS: tuple[str, ...] = tuple(FAMILIES)
# the cache warms what IMAGE_MODELS names from its own list (it may not import the worker): the two must agree
if IMAGE_MODELS != IMAGE_FAMILIES:
    raise ImportError(f"image families {IMAGE_MODELS} differ from the catalog's {IMAGE_FAMILIES}")
DEFAULT_MODEL = "sdxl-base"
SCHEDULER_NAMES: tuple[str, ...] = tuple(
    dict.fromkeys(name for f in FAMILIES.values() for name in f.schedulers)
)

# ComfyUI's file names for these models (what Morpheus's `checkpoint_name` carries), normalised
_CHECKPOINT_NAMES = {
    "z-image-turbo": ("zimageturbo",),
    "flux2-klein-4b": ("flux2klein4b",),
}


def family_for_checkpoint(name: str) -> str | None:
    """The family a checkpoint name means when it names another family's model: its catalog name, or ComfyUI's
    file for it (`z_image_turbo_bf16.safetensors`, `flux-2-klein-4b.safetensors`); None for SDXL checkpoints."""
    squeezed = re.sub(r"[^a-z0-9]", "", name.lower().rsplit("/", 1)[-1])
    for family, stems in _CHECKPOINT_NAMES.items():
        if any(squeezed.startswith(stem) for stem in stems):
            return family
    return None


def family_for_pipeline(class_name: str, what: str) -> Family:
    """The family of a diffusers repo whose model_index.json names pipeline `class_name`; ValueError when no
    family's pipeline is that one."""
    for family in FAMILIES.values():
        if family.pipeline_class == class_name:
            return family
    supported = ", ".join(f"{f.pipeline_class} ({f.name})" for f in FAMILIES.values())
    raise ValueError(f"{what} is a {class_name or 'unnamed'} pipeline (supported: {supported})")


def is_repo_model(value: object) -> bool:
    """Whether a job's `model` names a diffusers repo (`hf:<owner>/<repo>`) rather than a catalog family."""
    return isinstance(value, str) and value.strip().lower().startswith("hf:")


def lora_family(keys: Iterable[str]) -> str | None:
    """The family whose module names most of a LoRA's keys carry; None when no family's do."""
    counts = dict.fromkeys(FAMILIES, 0)
    for key in keys:
        for family in FAMILIES.values():
            if family.lora_pattern.search(key):
                counts[family.name] += 1
                break  # SDXL first: its attention blocks also hold `transformer_blocks`
    best = max(counts, key=lambda name: counts[name])
    return best if counts[best] else None


def _refuse(issues: list[tuple[str, str]], data: dict[str, Any]) -> ValidationError:
    return ValidationError.from_exception_data(
        "family",
        [
            InitErrorDetails(
                type=PydanticCustomError("family", reason.replace("{", "{{").replace("}", "}}")),
                loc=(name,),
                input=data.get(name),
            )
            for name, reason in issues
        ],
    )


def job_family(model: object, repo_family: str | None) -> Family | None:
    """The family a job draws with: its catalog `model`, or the family its repo `model` turned out to be (None
    while that is not known yet, or for a value the field's own check refuses)."""
    if is_repo_model(model):
        return FAMILIES[repo_family] if repo_family else None
    return FAMILIES.get(model) if isinstance(model, str) else None


def fill_family_defaults(
    data: Any, job_type: Literal["image", "dataset"], repo_family: str | None = None
) -> Any:
    """A raw image or dataset input with its family's defaults filled in; fields the family ignores are refused.

    Runs before field validation: a value of the wrong type is left for the field's own check. A job whose
    `model` is a repo gets its family's defaults once the repo's pipeline is known (`repo_family`); until then
    the fields keep their own (SDXL's) defaults and no family rule applies."""
    if not isinstance(data, dict):
        return data
    data = dict(data)
    checkpoint = data.get("checkpoint")
    named = family_for_checkpoint(checkpoint) if job_type == "image" and isinstance(checkpoint, str) else None
    if "model" not in data and named:
        data["model"] = named
        del data["checkpoint"]
    model = data.get("model", DEFAULT_MODEL)
    if is_repo_model(model) and data.get("checkpoint") is not None:
        reason = (
            "leave it out when model is a repo (a single-file checkpoint replaces the base model's weights)"
        )
        raise _refuse([("checkpoint", reason)], data)
    family = job_family(model, repo_family)
    if family is None:
        return data
    issues: list[tuple[str, str]] = []
    if not family.guided and "guidance_scale" in data:
        issues.append(("guidance_scale", f"{family.name} is guidance-distilled and ignores it; leave it out"))
    if family.negative_prompt == "never" and data.get("negative_prompt"):
        issues.append(("negative_prompt", f"{family.name} takes no negative prompt"))
    guidance = data.get("guidance_scale", family.guidance_scale)
    if (
        family.negative_prompt == "with_guidance"
        and data.get("negative_prompt")
        and isinstance(guidance, int | float)
        and guidance <= 0
    ):
        issues.append(
            (
                "negative_prompt",
                f"{family.name} reads it only with guidance_scale > 0 (its default is 0: no guidance)",
            )
        )
    if not family.takes_checkpoint and data.get("checkpoint") is not None:
        issues.append(("checkpoint", f"single-file checkpoints are SDXL's; {family.name} jobs take none"))
    if not family.takes_reference_image:
        for name in ("reference_image", "reference_strength"):
            if name in data:
                issues.append((name, f"the IP-Adapter is SDXL's; {family.name} jobs take no reference image"))
    if issues:
        raise _refuse(issues, data)
    negative = family.dataset_negative_prompt if job_type == "dataset" else ""
    defaults = {
        "steps": family.steps,
        "guidance_scale": family.guidance_scale,
        "width": family.size,
        "height": family.size,
        "scheduler": family.default_scheduler,
        "negative_prompt": negative if family.negative_prompt == "always" else "",
    }
    return {**defaults, **data}


def check_family_bounds(values: dict[str, Any], repo_family: str | None = None) -> None:
    """Refuse validated values outside the family's bounds (steps, size multiple, scheduler)."""
    family = job_family(values["model"], repo_family)
    if family is None:
        return
    issues: list[tuple[str, str]] = []
    if values["steps"] > family.max_steps:
        issues.append(("steps", f"at most {family.max_steps} for {family.name} (default {family.steps})"))
    for name in ("width", "height"):
        value = values[name]
        if value % family.size_multiple:
            nearest = max(family.size_multiple, round(value / family.size_multiple) * family.size_multiple)
            issues.append(
                (
                    name,
                    f"must be a multiple of {family.size_multiple} for {family.name} (got {value}; nearest: {nearest})",
                )
            )
    if values["scheduler"] not in family.schedulers:
        issues.append(("scheduler", f"{family.name} supports {', '.join(family.schedulers)}"))
    if issues:
        raise _refuse(issues, values)
