"""Morpheus's workflow_name envelope: which workflows map to which job, params, refusals, and error names."""

from __future__ import annotations

from typing import Any

import pytest

from worker.morpheus import SAMPLERS, WORKFLOWS, envelope
from worker.schemas import JobInputError, parse_job

CREATION = {
    "workflow_name": "creation",
    "prompt": "a lighthouse",
    "negative_prompt": "blurry",
    "seed": 42,
    "steps": 20,
    "cfg_scale": 6.5,
    "sampler_name": "dpmpp_2m",
    "scheduler": "karras",
    "checkpoint_name": "juggernautXL.safetensors",
    "width": 832,
    "height": 1216,
    "output_path": "/runpod-volume/job_outputs/x",
}


def test_creation_maps_onto_an_image_job() -> None:
    found = envelope(CREATION)
    assert found is not None and found.workflow.job_type == "image"
    assert found.job_input == {
        "type": "image",
        "prompt": "a lighthouse",
        "negative_prompt": "blurry",
        "seed": 42,
        "steps": 20,
        "guidance_scale": 6.5,
        "width": 832,
        "height": 1216,
        "scheduler": "dpmpp_2m_karras",
        "checkpoint": "juggernautXL.safetensors",
    }
    assert found.ignored == ("output_path",)
    assert parse_job(found.job_input).checkpoint == "juggernautXL.safetensors"


def test_older_tasks_nest_the_params() -> None:
    nested = {
        "workflow_name": "creation",
        "params": {k: v for k, v in CREATION.items() if k != "workflow_name"},
    }
    assert envelope(nested).job_input == envelope(CREATION).job_input  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "name",
    ["generate_dataset_from_reference", "generate_dataset_with_instantid", "generate_dataset_with_pulid"],
)
def test_reference_workflows_map_onto_a_dataset_with_a_reference(name: str) -> None:
    raw = {
        "workflow_name": name,
        "prompt": "photo of a woman",
        "base_image_pod_path": "/workspace/job_data/up/inputs/face.png",
        "dataset_size": 8,
        "face_weight": 0.7,
        "pose_weight": 0.5,
        "checkpoint_name": "x.safetensors",
        "sampler_name": "euler_ancestral",
        "scheduler": "normal",
    }
    found = envelope(raw)
    assert found is not None
    assert found.job_input == {
        "type": "dataset",
        "subject": "photo of a woman",
        "prompts": ["{subject}"],
        "num_images": 8,
        "scheduler": "euler_a",
        "reference_image": "/workspace/job_data/up/inputs/face.png",
        "reference_strength": 0.7,
        "checkpoint": "x.safetensors",
    }
    assert found.ignored == ("pose_weight",)
    parse_job(found.job_input)


def test_dataset_from_scratch_defaults_to_five_images() -> None:
    found = envelope(
        {"workflow_name": "generate_dataset_from_scratch", "prompt": "a robot", "filename_prefix": "ds"}
    )
    assert (
        found is not None and found.job_input["num_images"] == 5 and "reference_image" not in found.job_input
    )
    parse_job(found.job_input)


def test_our_own_inputs_pass_through() -> None:
    assert envelope({"type": "image", "prompt": "x"}) is None
    assert envelope({"type": "image", "workflow_name": "creation"}) is None
    assert envelope("not a dict") is None


def test_an_unserved_workflow_lists_the_served_ones() -> None:
    with pytest.raises(JobInputError, match="workflow_name: 'video_deepfake' is not served") as caught:
        envelope({"workflow_name": "video_deepfake", "prompt": "x"})
    for name in WORKFLOWS:
        assert name in str(caught.value)


def test_an_unknown_param_lists_the_workflows_params() -> None:
    with pytest.raises(
        JobInputError, match=r"^denoise: not a param of workflow 'creation', supported: .*cfg_scale"
    ):
        envelope({**CREATION, "denoise": 0.5})


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"workflow_name": "generate_dataset_with_pulid", "prompt": "x"}, "base_image_pod_path: required"),
        ({"workflow_name": "creation"}, "prompt: required"),
        ({**CREATION, "sampler_name": "lcm"}, "sampler_name: 'lcm' is not served, supported: euler"),
        ({**CREATION, "scheduler": "beta"}, "scheduler: 'beta' is not served"),
        ({"workflow_name": "creation", "params": ["x"]}, "params: expected a JSON object"),
    ],
)
def test_refusals_name_the_morpheus_param(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(JobInputError, match=message):
        envelope(raw)


def test_schema_errors_are_reported_with_morpheus_names() -> None:
    found = envelope({**CREATION, "cfg_scale": 99, "width": 833})
    assert found is not None
    with pytest.raises(JobInputError) as caught:
        parse_job(found.job_input)
    explained = str(found.explain(caught.value))
    assert explained.startswith("width: must be a multiple of 8")
    assert "; cfg_scale: Input should be less than or equal to 30" in explained
    assert "guidance_scale" not in explained


def test_the_answer_carries_morpheus_keys_beside_ours() -> None:
    creation = envelope(CREATION)
    result = {"job_id": "j", "outputs": [{"path": "/v/job_data/j/image_00.png", "kind": "image"}]}
    assert creation.answer(result)["image_pod_path"] == "/v/job_data/j/image_00.png"  # type: ignore[union-attr]
    dataset = envelope({"workflow_name": "generate_dataset_from_scratch", "prompt": "a robot"})
    images = [{"path": f"/v/job_data/d/dataset/{n}.png", "kind": "image"} for n in (1, 2)]
    answer = dataset.answer({"outputs": images, "dataset_dir": "/v/job_data/d/dataset"})  # type: ignore[union-attr]
    assert answer["base_images_pod_paths"] == "/v/job_data/d/dataset" and "image_pod_path" not in answer
    single = dataset.answer({"outputs": images[:1]})  # type: ignore[union-attr]
    assert single["image_pod_path"] == images[0]["path"] and "base_images_pod_paths" not in single


def test_every_served_sampler_maps_onto_a_scheduler_the_image_job_takes() -> None:
    for sampler in SAMPLERS:
        found = envelope({"workflow_name": "creation", "prompt": "x", "sampler_name": sampler})
        parse_job(found.job_input)  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("sampler", "schedule", "scheduler"),
    [
        ("euler", None, "euler"),
        ("euler_ancestral", "normal", "euler_a"),
        ("dpmpp_2m", "normal", "dpmpp_2m"),
        ("dpmpp_2m", "karras", "dpmpp_2m_karras"),
        ("dpmpp_2m_sde", None, "dpmpp_2m"),
        ("dpmpp_2m_sde_gpu", "karras", "dpmpp_2m_karras"),
        ("ddim", "karras", "ddim"),  # karras changes dpmpp_2m only
        ("uni_pc", "simple", "unipc"),
        ("uni_pc_bh2", "sgm_uniform", "unipc"),
        (None, "karras", "euler"),
    ],
)
def test_each_sampler_and_schedule_maps_onto_its_scheduler(
    sampler: str | None, schedule: str | None, scheduler: str
) -> None:
    params = {"sampler_name": sampler, "scheduler": schedule}
    found = envelope(
        {"workflow_name": "creation", "prompt": "x", **{k: v for k, v in params.items() if v is not None}}
    )
    assert found is not None and found.job_input["scheduler"] == scheduler
    assert parse_job(found.job_input).scheduler == scheduler  # type: ignore[attr-defined]


def test_identity_weight_is_the_reference_strength_and_errors_name_it() -> None:
    raw = {
        "workflow_name": "generate_dataset_with_instantid",
        "prompt": "a woman",
        "base_image_pod_path": "/workspace/face.png",
        "identity_weight": 0.35,
    }
    found = envelope(raw)
    assert found is not None and found.job_input["reference_strength"] == 0.35
    assert parse_job(found.job_input).reference_strength == 0.35  # type: ignore[attr-defined]
    bad = envelope({**raw, "identity_weight": 3})
    assert bad is not None
    with pytest.raises(JobInputError) as caught:
        parse_job(bad.job_input)
    assert str(bad.explain(caught.value)).startswith("identity_weight: ")


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"workflow_name": ["creation"], "prompt": "x"}, "workflow_name"),
        ({"workflow_name": {"name": "creation"}, "prompt": "x"}, "workflow_name"),
        ({**CREATION, "sampler_name": ["euler"]}, "sampler_name"),
        ({**CREATION, "sampler_name": {"a": 1}}, "sampler_name"),
        ({**CREATION, "scheduler": ["karras"]}, "scheduler"),
    ],
)
def test_lists_and_objects_as_names_are_field_errors(raw: dict[str, Any], field: str) -> None:
    with pytest.raises(JobInputError) as caught:
        envelope(raw)
    assert caught.value.fields == (field,)
    assert "is not served" in str(caught.value)


def test_a_huge_workflow_name_or_param_is_quoted_only_in_part() -> None:
    with pytest.raises(JobInputError) as caught:
        envelope({"workflow_name": "w" * 2_000_000, "prompt": "x"})
    assert len(str(caught.value)) < 1000 and "(2000000 characters)" in str(caught.value)
    with pytest.raises(JobInputError) as caught:
        envelope({**CREATION, "p" * 2_000_000: 1})
    assert len(str(caught.value)) < 1000
