"""Image jobs with `loras`: a trained LoRA, found by training job id or volume path, changes the output; after
the job the resident pipeline is exactly the base again; bad references are field errors."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from training_fixtures import (  # noqa: F401  (fixtures are found by name)
    Chain,
    Lab,
    assert_same_state,
    chain_fixture,
    lab_fixture,
    one_thread_fixture,
    snapshot,
    tiny_ip_adapter_dir_fixture,
)

pytestmark = pytest.mark.usefixtures("one_thread")

IMAGE = {
    "type": "image",
    "prompt": "ohwx, a small green robot",
    "width": 64,
    "height": 64,
    "steps": 3,
    "seed": 21,
}


def image_sha(lab: Lab, job_id: str, **fields: object) -> str:
    result = lab.run(job_id, {**IMAGE, **fields})
    assert "error" not in result, result
    return result["outputs"][0]["sha256"]


def test_lora_changes_the_image_and_unloading_restores_the_base(chain: Chain, lab: Lab) -> None:
    base = image_sha(lab, "img-base")
    with_lora = image_sha(lab, "img-lora-job", loras=[{"job_id": "chain-training", "scale": 1.0}])
    assert with_lora != base
    assert_same_state(chain.base, snapshot(lab.pipe))
    assert image_sha(lab, "img-base-again") == base


def test_lora_by_volume_path_in_either_format(chain: Chain, lab: Lab) -> None:
    by_job = image_sha(lab, "img-by-job", loras=[{"job_id": "chain-training"}])
    diffusers = "/runpod-volume/job_data/chain-training/lora/diffusers/pytorch_lora_weights.safetensors"
    assert image_sha(lab, "img-by-diffusers-path", loras=[{"path": diffusers}]) == by_job
    kohya = "job_data/chain-training/lora/robot.safetensors"
    assert image_sha(lab, "img-by-kohya-path", loras=[{"path": kohya}]) == by_job


def test_several_loras_with_scales(chain: Chain, lab: Lab) -> None:
    base = image_sha(lab, "img-scale-base")
    one = image_sha(lab, "img-scale-one", loras=[{"job_id": "chain-training", "scale": 1.0}])
    two = image_sha(
        lab,
        "img-scale-two",
        loras=[
            {"job_id": "chain-training", "scale": 0.5},
            {"path": "job_data/chain-training/lora/robot.safetensors"},
        ],
    )
    assert len({base, one, two}) == 3
    assert image_sha(lab, "img-scale-zero", loras=[{"job_id": "chain-training", "scale": 0.0}]) == base
    assert_same_state(chain.base, snapshot(lab.pipe))


def test_bad_lora_references_are_field_errors_and_leave_the_pipeline_clean(chain: Chain, lab: Lab) -> None:
    junk = lab.root / "loras" / "junk.safetensors"
    junk.parent.mkdir(exist_ok=True)
    save_file({"some.weight": torch.zeros(3, 3)}, str(junk))
    (lab.root / "loras" / "pickle.bin").write_bytes(b"not loaded")
    good = {"job_id": "chain-training"}
    cases = [
        ([{"path": "loras/pickle.bin"}], "loras.0.path: only .safetensors files are loaded"),
        ([{"path": "loras/missing.safetensors"}], "loras.0.path: no file 'loras/missing.safetensors'"),
        ([{"path": "/runpod-volume/../../etc/passwd"}], "loras.0.path: "),
        ([good, {"job_id": "no-such-job"}], "loras.1.job_id: no finished job 'no-such-job'"),
        ([{"job_id": "chain-dataset"}], "loras.0.job_id: job 'chain-dataset' is a dataset job"),
        ([good, {"path": "loras/junk.safetensors"}], "loras.1: not a LoRA for this SDXL model"),
    ]
    for loras, message in cases:
        result = lab.run("img-bad-lora", {**IMAGE, "loras": loras})
        assert result.get("error", "").startswith(message), (loras, result)
        assert_same_state(chain.base, snapshot(lab.pipe))
