"""Morpheus's `workflow_name` envelope mapped onto this worker's job types, and its `*_pod_path` answer keys.

Morpheus's tasks send `{"input": {"workflow_name": NAME, <params>...}}` (older tasks nest the params under
`"params"`), where NAME is one of the ComfyUI workflows of its previous worker (ceutaseguridad/serverless-img).
The workflows our job types cover are translated here; any other name, or a param a workflow does not take, is
refused with the list of what is served. The README's "Morpheus" section is the table of this mapping.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from worker.pipelines.image_families import is_repo_model
from worker.schemas import JobInputError
from worker.schemas.common import QUOTE_CHARS, field_issue, quoted
from worker_client.field_errors import FieldIssue

log = logging.getLogger(__name__)

# ComfyUI sampler_name → our scheduler. The SDE variants have no deterministic equivalent here: the nearest
# multistep solver runs instead.
SAMPLERS = {
    "euler": "euler",
    "euler_ancestral": "euler_a",
    "dpmpp_2m": "dpmpp_2m",
    "dpmpp_2m_sde": "dpmpp_2m",
    "dpmpp_2m_sde_gpu": "dpmpp_2m",
    "ddim": "ddim",
    "uni_pc": "unipc",
    "uni_pc_bh2": "unipc",
}
# ComfyUI scheduler (sigma schedule); karras changes dpmpp_2m only, the others keep each sampler's own schedule
SCHEDULES = ("normal", "karras", "simple", "sgm_uniform")

_COMMON = {
    "prompt", "negative_prompt", "seed", "steps", "cfg_scale", "sampler_name", "scheduler", "checkpoint_name",
    "width", "height",
}  # fmt: skip
# accepted and not used: outputs always go to <job_data>/<job id>/, and this worker has no pose ControlNet
_IGNORED = {"output_path", "filename_prefix", "output_folder_name", "workflow_type"}
_REFERENCE = {"base_image_pod_path", "face_weight", "identity_weight", "pose_weight", "style_weight"}
_UNUSED_REFERENCE = {"pose_weight", "style_weight"}


def _scheduler(params: dict[str, Any]) -> str | None:
    sampler, schedule = params.get("sampler_name"), params.get("scheduler")
    if sampler is None and schedule is None:
        return None
    # a list or an object is refused like any unknown name (it cannot even be looked up: it is unhashable)
    if sampler is not None and (not isinstance(sampler, str) or sampler not in SAMPLERS):
        raise JobInputError(
            "sampler_name", f"{quoted(sampler)} is not served; supported: {', '.join(SAMPLERS)}"
        )
    if schedule is not None and (not isinstance(schedule, str) or schedule not in SCHEDULES):
        raise JobInputError(
            "scheduler", f"{quoted(schedule)} is not served; supported: {', '.join(SCHEDULES)}"
        )
    name = SAMPLERS[sampler or "euler"]
    return "dpmpp_2m_karras" if name == "dpmpp_2m" and schedule == "karras" else name


def _sampling(params: dict[str, Any]) -> dict[str, Any]:
    """The params every image workflow shares, in our field names."""
    renames = {"prompt": "prompt", "negative_prompt": "negative_prompt", "seed": "seed", "steps": "steps",
               "cfg_scale": "guidance_scale", "width": "width", "height": "height"}  # fmt: skip
    out = {ours: params[theirs] for theirs, ours in renames.items() if theirs in params}
    scheduler = _scheduler(params)
    if scheduler is not None:
        out["scheduler"] = scheduler
    return out


def _checkpoint(params: dict[str, Any]) -> dict[str, Any]:
    """Morpheus's checkpoint_name in our terms: a diffusers repo reference is the job's `model`, anything else
    (a file name, a single-file reference) its `checkpoint`."""
    if "checkpoint_name" not in params:
        return {}
    name = params["checkpoint_name"]
    return {"model" if is_repo_model(name) else "checkpoint": name}


def _image(params: dict[str, Any]) -> dict[str, Any]:
    return {"type": "image", **_sampling(params), **_checkpoint(params)}


def _dataset(params: dict[str, Any]) -> dict[str, Any]:
    sampling = _sampling(params)
    # Morpheus draws every dataset image from its one prompt (new seed each): keep that, the prompt is the subject
    out = {
        "type": "dataset",
        "prompts": ["{subject}"],
        "num_images": params.get("dataset_size", 5),
        **sampling,
    }
    if "prompt" in out:
        out["subject"] = out.pop("prompt")
    if "base_image_pod_path" in params:
        out["reference_image"] = params["base_image_pod_path"]
    out.update(_checkpoint(params))
    for weight in ("face_weight", "identity_weight"):
        if weight in params:
            out["reference_strength"] = params[weight]
    return out


def _image_answer(result: dict[str, Any]) -> dict[str, Any]:
    images = [o["path"] for o in result.get("outputs", []) if o.get("kind") == "image"]
    return {"image_pod_path": images[0]} if images else {}


def _dataset_answer(result: dict[str, Any]) -> dict[str, Any]:
    images = [o["path"] for o in result.get("outputs", []) if o.get("kind") == "image"]
    if len(images) == 1:  # Morpheus's preview convention: one image is answered as a file
        return {"image_pod_path": images[0]}
    return (
        {"base_images_pod_paths": result.get("dataset_dir") or str(Path(images[0]).parent)} if images else {}
    )


@dataclass(frozen=True)
class Workflow:
    job_type: str
    params: frozenset[str]
    required: tuple[str, ...]
    translate: Callable[[dict[str, Any]], dict[str, Any]]
    answer: Callable[[dict[str, Any]], dict[str, Any]]
    # our field → their param, so that errors name the param Morpheus sent
    fields: dict[str, str] = field(default_factory=dict)
    unused: frozenset[str] = frozenset()


_IMAGE_FIELDS = {
    "guidance_scale": "cfg_scale", "scheduler": "sampler_name", "checkpoint": "checkpoint_name",
    "model": "checkpoint_name",
}  # fmt: skip
_DATASET_FIELDS = {
    "guidance_scale": "cfg_scale", "scheduler": "sampler_name", "subject": "prompt", "prompts": "prompt",
    "num_images": "dataset_size", "reference_image": "base_image_pod_path", "reference_strength": "face_weight",
    "checkpoint": "checkpoint_name", "model": "checkpoint_name",
}  # fmt: skip
_SCRATCH = frozenset(_COMMON | _IGNORED | {"dataset_size"})
_FROM_REFERENCE = frozenset(_SCRATCH | _REFERENCE)
_DATASET_UNUSED = frozenset(_UNUSED_REFERENCE)

WORKFLOWS: dict[str, Workflow] = {
    "creation": Workflow(
        "image", frozenset(_COMMON | _IGNORED), ("prompt",), _image, _image_answer, _IMAGE_FIELDS
    ),
    "generate_dataset_from_scratch": Workflow(
        "dataset", _SCRATCH, ("prompt",), _dataset, _dataset_answer, _DATASET_FIELDS, _DATASET_UNUSED
    ),
    **{
        name: Workflow(
            "dataset",
            _FROM_REFERENCE,
            ("prompt", "base_image_pod_path"),
            _dataset,
            _dataset_answer,
            _DATASET_FIELDS,
            _DATASET_UNUSED,
        )
        for name in (
            "generate_dataset_from_reference",
            "generate_dataset_with_instantid",
            "generate_dataset_with_pulid",
        )
    },
}


@dataclass(frozen=True)
class Envelope:
    """A Morpheus request: its workflow, our job input for it, and the params that were accepted but not used."""

    workflow_name: str
    workflow: Workflow
    job_input: dict[str, Any]
    ignored: tuple[str, ...]
    fields: dict[str, str]

    def answer(self, result: dict[str, Any]) -> dict[str, Any]:
        """Our result with Morpheus's `*_pod_path` keys beside our fields."""
        extra: dict[str, Any] = {"workflow_name": self.workflow_name, **self.workflow.answer(result)}
        if self.ignored:
            extra["ignored_params"] = list(self.ignored)
        return {**result, **extra}

    def explain(self, error: JobInputError) -> JobInputError:
        """The refusal naming Morpheus's params (`cfg_scale`) where ours (`guidance_scale`) would confuse."""

        def rename(field: str) -> str:
            head, dot, rest = field.partition(".")
            return f"{self.fields.get(head, head)}{dot}{rest}"

        return JobInputError.of(FieldIssue(rename(issue.field), issue.reason) for issue in error.issues)


def envelope(raw: Any) -> Envelope | None:
    """The Morpheus request in a job input, or None when the input is one of ours (it has a `type`)."""
    if not isinstance(raw, dict) or "workflow_name" not in raw or "type" in raw:
        return None
    name = raw["workflow_name"]
    if not isinstance(name, str) or name not in WORKFLOWS:
        raise JobInputError(
            "workflow_name",
            f"{quoted(name)} is not served by this worker; supported: {', '.join(WORKFLOWS)} "
            '(video, face-swap and audio workflows run elsewhere; for music send {"type": "music", ...})',
        )
    workflow = WORKFLOWS[name]
    params = {key: value for key, value in raw.items() if key not in ("workflow_name", "params")}
    nested = raw.get("params", {})
    if not isinstance(nested, dict):
        raise JobInputError("params", "expected a JSON object of workflow params")
    params.update(nested)
    unknown = sorted(str(key) for key in set(params) - workflow.params)
    if unknown:
        supported = ", ".join(sorted(workflow.params))
        raise JobInputError.of(
            [
                field_issue(
                    unknown[0][:QUOTE_CHARS], f"not a param of workflow {name!r}; supported: {supported}"
                )
            ]
        )
    missing = [param for param in workflow.required if param not in params]
    if missing:
        raise JobInputError(f"{missing[0]}", f"required by workflow {name!r}")
    ignored = tuple(sorted(set(params) & (_IGNORED | workflow.unused)))
    if ignored:
        log.info("workflow %s: params accepted but not used: %s", name, ", ".join(ignored))
    fields = dict(workflow.fields)
    if "identity_weight" in params:
        fields["reference_strength"] = "identity_weight"
    return Envelope(name, workflow, workflow.translate(params), ignored, fields)
