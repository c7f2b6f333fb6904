"""Every Morpheus workflow this worker serves, run in-process on the tiny models, answered with `*_pod_path` keys;
and `checkpoint_name` loading a single-file SDXL checkpoint from the checkpoints folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.single_file import write_single_file
from worker.config import Settings
from worker.worker import Worker

# cfg_scale 1 turns classifier-free guidance off: one UNet pass per step keeps the tiny runs quick
SMALL = {
    "prompt": "a lighthouse at dusk",
    "width": 64,
    "height": 64,
    "steps": 2,
    "cfg_scale": 1.0,
    "seed": 11,
}
REFERENCE_WORKFLOWS = [
    "generate_dataset_from_reference",
    "generate_dataset_with_instantid",
    "generate_dataset_with_pulid",
]


@pytest.fixture(scope="module")
def checkpoints(tiny_sdxl_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny SDXL as a ComfyUI checkpoint, and a variant whose UNet output layer is negated."""
    from safetensors.torch import load_file, save_file

    folder = tmp_path_factory.mktemp("checkpoints")
    same = write_single_file(tiny_sdxl_dir, folder / "tiny_sdxl.safetensors")
    state = load_file(same)
    state["model.diffusion_model.out.2.weight"] = -state["model.diffusion_model.out.2.weight"]
    (folder / "SDXL").mkdir()
    save_file(state, folder / "SDXL" / "tiny_flipped.safetensors")
    return folder


@pytest.fixture(scope="module")
def worker(session_volume: Path, checkpoints: Path) -> Worker:
    settings = Settings(
        volume_root=session_volume,
        model_profile="tiny",
        worker_jobs=("image", "dataset"),
        checkpoints_dir=checkpoints,
    )
    return Worker(settings).start()


@pytest.fixture(scope="module")
def reference(session_volume: Path) -> str:
    """A face picture uploaded to the volume (as the file gateway does); its path as Morpheus's pod sees it."""
    path = session_volume / "job_data" / "upload-1" / "inputs" / "face.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (64, 64), (200, 150, 120)).save(path)
    return "/workspace/job_data/upload-1/inputs/face.png"


def morpheus(worker: Worker, job_id: str, workflow: str, **params: Any) -> dict[str, Any]:
    return worker.handle_sync({"id": job_id, "input": {"workflow_name": workflow, **params}})


def image_sha(result: dict[str, Any]) -> str:
    assert "error" not in result, result
    return next(o["sha256"] for o in result["outputs"] if o["kind"] == "image")


def test_creation_answers_image_pod_path(worker: Worker) -> None:
    result = morpheus(worker, "mx-creation", "creation", **SMALL, output_path="/runpod-volume/job_outputs/x")
    assert "error" not in result, result
    path = Path(result["image_pod_path"])
    assert path == worker.store.root / "mx-creation" / "image_00.png"
    with Image.open(path) as image:
        assert image.size == (64, 64)
    assert result["type"] == "image" and result["workflow_name"] == "creation"
    assert result["ignored_params"] == ["output_path"]


def test_checkpoint_name_loads_the_single_file_checkpoint(worker: Worker) -> None:
    base = image_sha(morpheus(worker, "mx-base", "creation", **SMALL))
    same = image_sha(
        morpheus(worker, "mx-ckpt", "creation", **SMALL, checkpoint_name="tiny_sdxl.safetensors")
    )
    flipped = morpheus(
        worker, "mx-flip", "creation", **SMALL, checkpoint_name="SDXL/tiny_flipped.safetensors"
    )
    again = image_sha(morpheus(worker, "mx-again", "creation", **SMALL))
    assert same == base  # the same weights through the single-file layout draw the same picture
    assert image_sha(flipped) != base  # the checkpoint's own UNet ran
    assert again == base  # and the base modules are back


def test_a_missing_checkpoint_says_how_to_list_them_and_lists_nothing(
    worker: Worker, checkpoints: Path
) -> None:
    result = morpheus(worker, "mx-nockpt", "creation", **SMALL, checkpoint_name="nope.safetensors")
    assert result["error"].startswith("checkpoint_name: 'nope.safetensors' is not in CHECKPOINTS_DIR")
    assert "ls /workspace/checkpoints" in result["error"]
    assert "tiny_sdxl" not in result["error"] and str(checkpoints) not in result["error"]
    traversal = morpheus(worker, "mx-escape", "creation", **SMALL, checkpoint_name="../secret.safetensors")
    assert traversal["error"] == (
        "checkpoint_name: '../secret.safetensors' must be a file name inside CHECKPOINTS_DIR"
    )
    (checkpoints / "loop.safetensors").symlink_to(checkpoints / "loop.safetensors")
    loop = morpheus(worker, "mx-loop", "creation", **SMALL, checkpoint_name="loop.safetensors")
    assert loop["error"] == "checkpoint_name: 'loop.safetensors' resolves outside CHECKPOINTS_DIR"


def test_a_junk_or_truncated_checkpoint_is_a_field_error(worker: Worker, checkpoints: Path) -> None:
    (checkpoints / "junk.safetensors").write_bytes(b"junk" * 100)
    whole = (checkpoints / "tiny_sdxl.safetensors").read_bytes()
    (checkpoints / "cut.safetensors").write_bytes(whole[: len(whole) // 2])
    (checkpoints / "empty.safetensors").write_bytes(b"")
    for name in ("junk.safetensors", "cut.safetensors", "empty.safetensors"):
        result = morpheus(worker, "mx-junk", "creation", **SMALL, checkpoint_name=name)
        assert result["error"].startswith(f"checkpoint_name: '{name}' is not a single-file SDXL checkpoint")
        assert str(checkpoints) not in result["error"]
        assert not (worker.store.root / "mx-junk").exists()
    assert "error" not in morpheus(worker, "mx-after-junk", "creation", **SMALL)


def test_dataset_from_scratch_answers_the_dataset_folder(worker: Worker) -> None:
    result = morpheus(worker, "mx-scratch", "generate_dataset_from_scratch", **SMALL, dataset_size=2)
    assert "error" not in result, result
    folder = Path(result["base_images_pod_paths"])
    assert folder.parent == worker.store.root / "mx-scratch"
    assert sorted(p.name for p in folder.glob("*.png")) == ["0001.png", "0002.png"]
    assert (folder / "0001.txt").read_text().endswith("a lighthouse at dusk")


@pytest.mark.parametrize("workflow", REFERENCE_WORKFLOWS)
def test_reference_workflows_answer_with_pod_paths(worker: Worker, reference: str, workflow: str) -> None:
    spelling = reference if workflow.endswith("pulid") else reference.replace("/workspace", "/runpod-volume")
    result = morpheus(
        worker, f"mx-{workflow}", workflow, **SMALL, base_image_pod_path=spelling, dataset_size=1
    )
    assert "error" not in result, result
    assert Path(result["image_pod_path"]).is_file()
    assert result["type"] == "dataset"


def test_a_reference_outside_the_volume_is_refused(worker: Worker) -> None:
    result = morpheus(
        worker, "mx-outside", REFERENCE_WORKFLOWS[0], **SMALL, base_image_pod_path="/etc/hostname"
    )
    assert result["error"].startswith("base_image_pod_path: outside the volume"), result
    escape = morpheus(
        worker,
        "mx-escape-ref",
        REFERENCE_WORKFLOWS[1],
        **SMALL,
        base_image_pod_path="/workspace/../../etc/hostname",
    )
    assert escape["error"].startswith(
        "base_image_pod_path: '/workspace/../../etc/hostname' is outside the volume"
    )


def test_unserved_workflows_and_params_are_refused(worker: Worker) -> None:
    assert "supported: creation" in morpheus(worker, "mx-video", "video_deepfake", **SMALL)["error"]
    assert morpheus(worker, "mx-param", "creation", **SMALL, denoise=0.4)["error"].startswith(
        "denoise: not a param"
    )
    bad = morpheus(worker, "mx-bad", "creation", **{**SMALL, "cfg_scale": 99})
    assert bad["error"].startswith("cfg_scale: ")


def test_a_dataset_and_a_training_job_use_the_named_checkpoint(
    session_volume: Path, checkpoints: Path
) -> None:
    """checkpoint_name reaches the dataset job, and a LoRA can be trained on the checkpoint it will be used with;
    the base modules are back afterwards."""
    from safetensors import safe_open

    worker = Worker(
        Settings(
            volume_root=session_volume,
            model_profile="tiny",
            worker_jobs=("image", "dataset", "training"),
            checkpoints_dir=checkpoints,
        )
    ).start()
    small = {k: v for k, v in SMALL.items() if k != "prompt"}
    base = morpheus(
        worker, "ck-ds-base", "generate_dataset_from_scratch", prompt="a robot", dataset_size=1, **small
    )
    flipped = morpheus(
        worker,
        "ck-ds-flip",
        "generate_dataset_from_scratch",
        prompt="a robot",
        dataset_size=1,
        checkpoint_name="SDXL/tiny_flipped.safetensors",
        **small,
    )
    assert "error" not in flipped, flipped
    assert "checkpoint_name" not in flipped.get("ignored_params", [])
    assert image_sha(flipped) != image_sha(base)

    job = {"type": "training", "dataset_job_id": "ck-ds-base", "steps": 2, "rank": 2, "resolution": 64}
    quiet = {"sample_grid": False, "auto_caption": False, "seed": 3}
    trained = worker.handle_sync(
        {"id": "ck-train", "input": {**job, **quiet, "checkpoint": "SDXL/tiny_flipped.safetensors"}}
    )
    assert "error" not in trained, trained
    [lora] = [o for o in trained["outputs"] if o["kind"] == "lora" and "diffusers" not in o["relpath"]]
    with safe_open(lora["path"], "pt") as handle:
        assert handle.metadata()["ss_sd_model_name"] == "SDXL/tiny_flipped.safetensors"
    other = worker.handle_sync({"id": "ck-train-base", "input": {**job, **quiet}})
    assert "error" not in other, other
    assert other["metrics"]["final_loss"] != trained["metrics"]["final_loss"]  # another UNet was trained
    again = morpheus(
        worker, "ck-ds-again", "generate_dataset_from_scratch", prompt="a robot", dataset_size=1, **small
    )
    assert image_sha(again) == image_sha(base)  # the base modules are back
