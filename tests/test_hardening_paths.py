"""No path out of the volume, whether the caller names it or a stored result.json does: through the worker
(`Worker.handle_sync` on the tiny models), with real files outside the volume that a missing check would read.

The volume is `<tmp>/volume` and job_data is `<tmp>/data/job_data` (JOB_DATA_DIR), so `<tmp>/data/outside` is
outside both roots the worker may read, yet one `..` away from a job folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from worker.config import Settings
from worker.worker import Worker

SMALL_IMAGE = {"type": "image", "prompt": "a lighthouse", "width": 64, "height": 64, "steps": 1}
SMALL_DATASET = {
    "type": "dataset",
    "subject": "a robot",
    "num_images": 1,
    "width": 64,
    "height": 64,
    "steps": 1,
}
SMALL_TRAINING = {"type": "training", "steps": 1, "rank": 2, "resolution": 64, "trigger_word": "ohwx"}
OUTSIDE = "is outside the volume"


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory, session_volume: Path) -> dict[str, Path]:
    """Files a hostile volume holds outside the roots: a picture, a captioned dataset folder, a LoRA file."""
    base = tmp_path_factory.mktemp("paths")
    outside = base / "data" / "outside"
    (outside / "dataset").mkdir(parents=True)
    Image.new("RGB", (64, 64), (200, 10, 10)).save(outside / "face.png")
    Image.new("RGB", (64, 64), (10, 200, 10)).save(outside / "dataset" / "0001.png")
    (outside / "dataset" / "0001.txt").write_text("ohwx, a robot")
    (outside / "lora.safetensors").write_bytes(b"not read")
    job_data = base / "data" / "job_data"
    job_data.mkdir()
    return {"outside": outside, "job_data": job_data, "volume": session_volume}


@pytest.fixture(scope="module")
def worker(tree: dict[str, Path]) -> Worker:
    settings = Settings(
        volume_root=tree["volume"],
        job_data_dir=tree["job_data"],
        model_profile="tiny",
        worker_jobs=("image", "dataset", "training"),
        warm_on_start=False,
    )
    return Worker(settings).start()


def run(worker: Worker, job_id: str, **fields: Any) -> str:
    result = worker.handle_sync({"id": job_id, "input": fields})
    assert "error" in result, f"{job_id} was not refused: {result}"
    assert str(worker.store.root) not in result["error"] and str(worker.volume.root) not in result["error"]
    assert not (worker.store.root / job_id).exists()
    return result["error"]


def stored_result(worker: Worker, job_id: str, job_type: str, outputs: list[dict[str, Any]]) -> None:
    folder = worker.store.root / job_id
    folder.mkdir(exist_ok=True)
    (folder / "result.json").write_text(json.dumps({"job_id": job_id, "type": job_type, "outputs": outputs}))


def test_a_lora_relpath_in_a_stored_result_is_held_to_the_volume(
    worker: Worker, tree: dict[str, Path]
) -> None:
    lora = {"relpath": "../outside/lora.safetensors", "kind": "lora", "format": "diffusers"}
    stored_result(worker, "liar", "training", [lora])
    error = run(worker, "img-liar", **SMALL_IMAGE, loras=[{"job_id": "liar"}])
    assert error == f"loras.0.job_id: the LoRA of job 'liar' {OUTSIDE}"
    # the same file named by the caller is refused alike
    error = run(
        worker, "img-liar-path", **SMALL_IMAGE, loras=[{"path": str(tree["outside"] / "lora.safetensors")}]
    )
    assert error.startswith("loras.0.path: outside the volume")


def test_a_job_folder_that_links_out_of_job_data_is_refused(worker: Worker, tree: dict[str, Path]) -> None:
    (tree["outside"] / "result.json").write_text(
        json.dumps(
            {"type": "training", "outputs": [{"relpath": "linked/lora.safetensors", "kind": "checkpoint"}]}
        )
    )
    (worker.store.root / "linked").symlink_to(tree["outside"])
    error = run(worker, "img-linked", **SMALL_IMAGE, loras=[{"job_id": "linked"}])
    assert error == f"loras.0.job_id: the LoRA of job 'linked' {OUTSIDE}"
    data = dict(SMALL_TRAINING, dataset_job_id="linked")
    (tree["outside"] / "result.json").write_text(json.dumps({"type": "dataset", "outputs": []}))
    assert (
        run(worker, "train-linked", **data) == f"dataset_job_id: the dataset folder of job 'linked' {OUTSIDE}"
    )


def test_a_dataset_folder_that_links_out_or_is_gone(worker: Worker, tree: dict[str, Path]) -> None:
    stored_result(worker, "ds-link", "dataset", [])
    (worker.store.root / "ds-link" / "dataset").symlink_to(tree["outside"] / "dataset")
    error = run(worker, "train-ds-link", **SMALL_TRAINING, dataset_job_id="ds-link")
    assert error == f"dataset_job_id: the dataset folder of job 'ds-link' {OUTSIDE}"
    stored_result(worker, "ds-gone", "dataset", [])
    error = run(worker, "train-ds-gone", **SMALL_TRAINING, dataset_job_id="ds-gone")
    assert error == "dataset_job_id: the dataset folder of job 'ds-gone' is gone from the volume"


@pytest.mark.parametrize(
    "junk", ["[1, 2]", '{"type": "training", "outputs": 5}', "not json", '{"type": "training"}']
)
def test_a_damaged_stored_result_is_a_field_error(worker: Worker, junk: str) -> None:
    (worker.store.root / "junk-result").mkdir(exist_ok=True)
    (worker.store.root / "junk-result" / "result.json").write_text(junk)
    error = run(worker, "img-junk-result", **SMALL_IMAGE, loras=[{"job_id": "junk-result"}])
    assert error.startswith("loras.0.job_id: the result.json of job 'junk-result' is ")


def test_caller_paths_out_of_the_volume_are_refused(worker: Worker, tree: dict[str, Path]) -> None:
    """Each of these names a readable file or folder: only the volume check stands between it and the job."""
    link = tree["volume"] / "hardening-link.png"
    link.unlink(missing_ok=True)
    link.symlink_to(tree["outside"] / "face.png")
    escape = "/runpod-volume/" + "../" * len(tree["volume"].parts) + str(tree["outside"]).lstrip("/")
    for source in (str(tree["outside"] / "face.png"), f"{escape}/face.png", "hardening-link.png"):
        error = run(worker, "ds-outside", **SMALL_DATASET, reference_image=source)
        assert error.startswith("reference_image: ") and "outside the volume" in error, error
    for folder in (str(tree["outside"] / "dataset"), f"{escape}/dataset"):
        error = run(worker, "train-outside", **SMALL_TRAINING, dataset_path=folder)
        assert error.startswith("dataset_path: ") and "outside the volume" in error, error
    error = run(
        worker, "train-inline", **SMALL_TRAINING, images=[{"image": f"{escape}/face.png", "caption": "x"}]
    )
    assert error.startswith("images.0.image: ") and "outside the volume" in error, error
    error = run(worker, "img-lora-outside", **SMALL_IMAGE, loras=[{"path": f"{escape}/lora.safetensors"}])
    assert error.startswith("loras.0.path: ") and "outside the volume" in error, error


def test_path_names_over_255_bytes_are_field_errors(worker: Worker) -> None:
    long = "a" * 300
    assert run(worker, "train-long", **SMALL_TRAINING, dataset_path=long).startswith("dataset_path: ")
    assert run(worker, "ds-long", **SMALL_DATASET, reference_image=f"{long}.png").startswith(
        "reference_image: "
    )
    error = run(
        worker, "img-long", **SMALL_IMAGE, checkpoint=f"{'é' * 200}.safetensors"
    )  # 212 characters, 412 bytes
    assert error.startswith("checkpoint: ") and "255 bytes" in error
