"""Resume: a job continues another's last checkpoint with its optimizer state, step count and loss curve, as if
it had never stopped; a checkpoint file works too (with the checkpoint's seed when the job gives none); a
checkpoint of another rank, too few steps or an unknown job are field errors."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from safetensors import safe_open
from training_fixtures import (  # noqa: F401  (fixtures are found by name)
    TRAINING,
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

QUIET = {"sample_every": 0, "sample_grid": False, "checkpoint_every": 0}


def log_rows(lab: Lab, job_id: str) -> list[tuple[int, float]]:
    with open(lab.store.root / job_id / "train_log.csv") as handle:
        return [(int(row["step"]), float(row["loss"])) for row in csv.DictReader(handle)]


def test_resume_continues_the_step_count_and_the_loss_curve(chain: Chain, lab: Lab) -> None:
    # chain-training ran 4 steps (checkpoints at 2, the final state at 4); resume it to 6
    states = [o for o in chain.training["outputs"] if o["kind"] == "state"]
    assert [(Path(o["path"]).name, o["step"]) for o in states] == [
        ("robot-step000002.state.safetensors", 2),
        ("robot-step000004.state.safetensors", 4),
    ]
    job = {**TRAINING, "dataset_job_id": "chain-dataset", "steps": 6, **QUIET}
    resumed = lab.run("resume-6", {**job, "resume_from": "chain-training"})
    assert "error" not in resumed, resumed
    assert resumed["steps_done"] == 6 and resumed["resumed_from_step"] == 4
    rows = log_rows(lab, "resume-6")
    assert [step for step, _ in rows] == [1, 2, 3, 4, 5, 6]
    assert rows[:4] == log_rows(lab, "chain-training")
    # the same job run straight through: the same losses at steps 5 and 6, so optimizer state, schedule, noise
    # and batch order all continued where they stopped
    straight = lab.run("straight-6", job)
    assert "error" not in straight, straight
    assert [loss for _, loss in log_rows(lab, "straight-6")] == pytest.approx(
        [loss for _, loss in rows], abs=2e-6
    )
    lora = lab.store.root / "resume-6" / "lora" / "robot.safetensors"
    with safe_open(str(lora), framework="pt") as handle:
        assert handle.metadata()["ss_steps"] == "6"
        resumed_tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    with safe_open(
        str(lab.store.root / "straight-6" / "lora" / "robot.safetensors"), framework="pt"
    ) as handle:
        for key, tensor in resumed_tensors.items():
            assert (handle.get_tensor(key).float() - tensor.float()).abs().max() < 1e-3, key
    assert resumed["metrics"]["steps_per_s"] > 0
    assert_same_state(chain.base, snapshot(lab.pipe))


@pytest.mark.slow
def test_resume_from_a_checkpoint_file_on_the_volume(chain: Chain, lab: Lab) -> None:
    checkpoint = "job_data/chain-training/checkpoints/robot-step000002.safetensors"
    unseeded = {key: value for key, value in TRAINING.items() if key != "seed"}
    job = {**unseeded, "dataset_job_id": "chain-dataset", "steps": 3, **QUIET, "resume_from": checkpoint}
    result = lab.run("resume-file", job)
    assert "error" not in result, result
    assert result["resumed_from_step"] == 2 and result["steps_done"] == 3
    assert result["seed"] == TRAINING["seed"]  # the checkpoint's seed goes on
    assert log_rows(lab, "resume-file")[:2] == log_rows(lab, "chain-training")[:2]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"rank": 8}, "rank: 4 in the checkpoint, 8 here: they must match to resume"),
        ({"alpha": 4.0}, "alpha: 2.0 in the checkpoint, 4.0 here"),
        ({"target_modules": "attention"}, "target_modules: "),
        ({"steps": 4}, "steps: the checkpoint is at step 4: give more steps to resume"),
        (
            {"resume_from": "no-such-job"},
            "resume_from: no training job 'no-such-job' with a resumable checkpoint",
        ),
        ({"resume_from": "chain-dataset"}, "resume_from: no training job 'chain-dataset'"),
        (
            {"resume_from": "job_data/chain-training/lora/robot.safetensors"},
            "resume_from: robot.safetensors has no robot.state.safetensors beside it",
        ),
        ({"resume_from": "../x.safetensors"}, "resume_from: '../x.safetensors' is outside the volume"),
    ],
)
def test_resume_refusals_are_field_errors(chain: Chain, lab: Lab, fields: dict, message: str) -> None:
    job = {
        **TRAINING,
        "dataset_job_id": "chain-dataset",
        "steps": 6,
        **QUIET,
        "resume_from": "chain-training",
    }
    result = lab.run("resume-bad", {**job, **fields})
    assert result.get("error", "").startswith(message), result
