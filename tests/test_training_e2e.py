"""The chain through the real worker: `Worker.handle_sync` with the model cache building the tiny SDXL and tiny
IP-Adapter on the volume — dataset (from a reference image) → training → image with the LoRA; field errors that
leave it serving; a cancelled training whose result keeps the last checkpoint."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
from training_fixtures import one_thread_fixture, png_base64  # noqa: F401  (fixtures are found by name)

from worker.config import Settings
from worker.worker import Worker

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]

CANCEL = threading.Event()


def cancel_at_step_two(job: dict[str, Any], payload: dict[str, Any]) -> None:
    if job["id"] == "e2e-cancel" and payload.get("step") == 2 and "loss" in payload:
        CANCEL.set()


@pytest.fixture(scope="module")
def worker(session_volume: Path) -> Worker:
    jobs = ("image", "dataset", "training")
    # every progress report reaches the sink (no throttling), so the cancel lands at a known step
    settings = Settings(
        volume_root=session_volume, model_profile="tiny", worker_jobs=jobs, progress_interval_s=0.0
    )
    return Worker(settings, progress_sink=cancel_at_step_two).start()


IMAGE = {"type": "image", "prompt": "ohwx, a robot", "width": 64, "height": 64, "steps": 2, "seed": 8}


def image_sha(worker: Worker, job_id: str, **fields: Any) -> str:
    result = worker.handle_sync({"id": job_id, "input": {**IMAGE, **fields}})
    assert "error" not in result, result
    return result["outputs"][0]["sha256"]


@pytest.fixture(scope="module")
def dataset(worker: Worker) -> dict[str, Any]:
    """A dataset job from a reference image: the cache builds the tiny IP-Adapter on the volume."""
    result = worker.handle_sync(
        {
            "id": "e2e-dataset",
            "input": {
                "type": "dataset",
                "subject": "a robot",
                "num_images": 2,
                "width": 64,
                "height": 64,
                "steps": 2,
                "seed": 1,
                "reference_image": png_base64(),
            },
        }
    )
    assert "error" not in result, result
    return result


def test_dataset_training_image_chain(worker: Worker, dataset: dict[str, Any]) -> None:
    assert (worker.volume.models_dir / "ip-adapter-tiny" / "sdxl_models" / "ip-adapter_sdxl.bin").is_file()
    assert len([o for o in dataset["outputs"] if o["kind"] == "image"]) == 2
    base = image_sha(worker, "e2e-base")
    training = worker.handle_sync(
        {
            "id": "e2e-training",
            "input": {
                "type": "training",
                "dataset_job_id": "e2e-dataset",
                "rank": 4,
                "steps": 3,
                "resolution": 64,
                "learning_rate": 1e-3,
                "seed": 2,
            },
        }
    )
    assert "error" not in training, training
    stored = json.loads((worker.store.root / "e2e-training" / "result.json").read_text())
    assert stored == training and stored["type"] == "training" and stored["steps_done"] == 3
    assert {"load_s", "run_s", "cache_s", "train_s", "steps_per_s", "final_loss"} <= set(training["metrics"])
    assert image_sha(worker, "e2e-lora", loras=[{"job_id": "e2e-training"}]) != base
    assert image_sha(worker, "e2e-base-again") == base


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"learning_rate": -1}, "learning_rate: "),
        ({"images": [{"image": "@@@", "caption": "x"}], "dataset_job_id": None}, "images.0.image: "),
    ],
)
def test_bad_training_input_is_a_field_error_and_the_worker_keeps_serving(
    worker: Worker, fields: dict, error: str
) -> None:
    job = {"type": "training", "dataset_job_id": "any", "steps": 2, "resolution": 64, **fields}
    job = {key: value for key, value in job.items() if value is not None}
    result = worker.handle_sync({"id": "e2e-bad", "input": job})
    assert result["error"].startswith(error), result
    assert not (worker.store.root / "e2e-bad" / "result.json").exists()
    image_sha(worker, "e2e-still-serving")


@pytest.fixture(scope="module")
def cancelled(worker: Worker, dataset: dict[str, Any]) -> dict[str, Any]:
    """A training cancelled after its second step (the progress sink sets the event)."""
    job = {
        "type": "training",
        "dataset_job_id": "e2e-dataset",
        "rank": 2,
        "steps": 5,
        "resolution": 64,
        "seed": 4,
    }
    return worker.handle_sync({"id": "e2e-cancel", "input": job}, cancel_event=CANCEL)


def test_cancelled_training_result_keeps_the_last_checkpoint(
    worker: Worker, cancelled: dict[str, Any]
) -> None:
    result = cancelled
    assert result["cancelled"] is True and result["steps_done"] == 2, result
    checkpoint = next(o for o in result["outputs"] if o["kind"] == "checkpoint")
    assert Path(checkpoint["path"]).is_file() and checkpoint["step"] == 2
    assert checkpoint["relpath"] in result["message"]
    assert json.loads((worker.store.root / "e2e-cancel" / "result.json").read_text())["cancelled"] is True


def test_cancelled_training_resumes_to_the_end(worker: Worker, cancelled: dict[str, Any]) -> None:
    job = {
        "type": "training",
        "dataset_job_id": "e2e-dataset",
        "rank": 2,
        "steps": 5,
        "resolution": 64,
        "seed": 4,
        "resume_from": "e2e-cancel",
        "sample_grid": False,
    }
    result = worker.handle_sync({"id": "e2e-resumed", "input": job})
    assert "error" not in result, result
    assert result["resumed_from_step"] == 2 and result["steps_done"] == 5 and result["cancelled"] is False
    assert any(o["kind"] == "lora" for o in result["outputs"])


def test_uncaptioned_images_are_captioned_by_the_model_the_cache_builds(worker: Worker) -> None:
    images = [{"image": png_base64(size=(64, 96))}, {"image": png_base64(size=(96, 64)), "caption": "auto"}]
    job = {
        "type": "training",
        "images": images,
        "trigger_word": "zqx",
        "steps": 1,
        "resolution": 64,
        "seed": 1,
    }
    result = worker.handle_sync({"id": "e2e-captions", "input": {**job, "sample_grid": False}})
    assert "error" not in result, result
    assert (worker.volume.models_dir / "blip-tiny" / "config.json").is_file()
    assert [entry["caption"].split(", ")[0] for entry in result["auto_captions"]] == ["zqx", "zqx"]
    dataset = worker.store.root / "e2e-captions" / "dataset"
    assert sorted(path.name for path in dataset.iterdir()) == ["0001.png", "0001.txt", "0002.png", "0002.txt"]
