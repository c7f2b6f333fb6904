"""The worker in-process on the tiny SDXL model: results, files, determinism, cancel. Generated inputs of every job
type (a counted share of them valid) are tests/test_fuzz_jobs.py's."""

from __future__ import annotations

import asyncio
import io
import json
import threading
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from worker.config import Settings
from worker.worker import Worker

SMALL = {"type": "image", "prompt": "a lighthouse at dusk", "width": 64, "height": 72, "steps": 2}


def run(worker: Worker, job_id: str, **fields: Any) -> dict[str, Any]:
    return worker.handle_sync({"id": job_id, "input": {**SMALL, **fields}})


def test_result_lists_decodable_images_and_result_json_last(image_worker: Worker) -> None:
    result = run(image_worker, "img-basic", num_images=2, format="webp", seed=7)
    assert "error" not in result, result
    assert result["job_id"] == "img-basic" and result["type"] == "image" and result["seed"] == 7
    assert set(result["metrics"]) >= {"load_s", "run_s", "steps_per_s"}
    assert len(result["outputs"]) == 2
    for entry in result["outputs"]:
        path = Path(entry["path"])
        assert path.parent == image_worker.store.root / "img-basic"
        assert entry["relpath"] == f"img-basic/{path.name}"
        assert entry["bytes"] == path.stat().st_size
        with Image.open(path) as image:
            assert image.format == "WEBP"
            assert image.size == (64, 72) == (entry["width"], entry["height"])
    stored = json.loads((image_worker.store.root / "img-basic" / "result.json").read_text())
    assert stored == result


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_same_seed_same_bytes_other_seed_other_image(image_worker: Worker, fmt: str) -> None:
    first = run(image_worker, f"seed-a-{fmt}", seed=123, format=fmt)
    again = run(image_worker, f"seed-b-{fmt}", seed=123, format=fmt)
    other = run(image_worker, f"seed-c-{fmt}", seed=124, format=fmt)
    assert first["outputs"][0]["sha256"] == again["outputs"][0]["sha256"]
    assert first["outputs"][0]["sha256"] != other["outputs"][0]["sha256"]


def test_random_seed_is_returned_and_reproduces(image_worker: Worker) -> None:
    chosen = run(image_worker, "seed-random")
    assert isinstance(chosen["seed"], int)
    replay = run(image_worker, "seed-replay", seed=chosen["seed"])
    assert replay["outputs"][0]["sha256"] == chosen["outputs"][0]["sha256"]


@pytest.mark.parametrize("scheduler", ["euler_a", "dpmpp_2m", "dpmpp_2m_karras", "ddim", "unipc"])
def test_every_scheduler_runs(image_worker: Worker, scheduler: str) -> None:
    result = run(image_worker, f"sched-{scheduler}", scheduler=scheduler, seed=1)
    assert "error" not in result, result
    with Image.open(result["outputs"][0]["path"]) as image:
        assert image.size == (64, 72)


def test_bad_inputs_are_errors_and_the_worker_keeps_serving(image_worker: Worker) -> None:
    assert image_worker.handle_sync({"id": "bad-1", "input": {"type": "image", "prompt": "x", "width": 65}}) == {
        "error": "width: must be a multiple of 8 (got 65, nearest: 64)"
    }
    assert image_worker.handle_sync({"id": "../escape", "input": SMALL})["error"].startswith("id: ")
    assert image_worker.handle_sync({"id": "bad-2", "input": {"type": "music", "lyrics": "la", "tags": "x"}}) == {
        "error": "type: 'music' is not served by this worker (WORKER_JOBS), valid: image"
    }
    assert not (image_worker.store.root / "bad-1").exists()
    assert "error" not in run(image_worker, "after-bad", seed=3)


def test_progress_is_throttled(session_volume: Path) -> None:
    reports: list[dict[str, Any]] = []
    settings = Settings(volume_root=session_volume, model_profile="tiny", worker_jobs=("image",),
                        progress_interval_s=3600)
    worker = Worker(settings, progress_sink=lambda job, payload: reports.append(payload)).start()
    assert "error" not in run(worker, "progress", steps=6, seed=1)
    # the first step and the last one get through a one-hour throttle, nothing in between
    assert reports == [{"step": 1, "total": 6}, {"step": 6, "total": 6}]


def test_cancel_stops_within_one_step_and_keeps_nothing(session_volume: Path) -> None:
    steps: list[int] = []
    reached = threading.Event()

    def sink(job: dict[str, Any], payload: dict[str, Any]) -> None:
        steps.append(payload["step"])
        if payload["step"] == 3:
            reached.set()

    settings = Settings(volume_root=session_volume, model_profile="tiny", worker_jobs=("image",),
                        progress_interval_s=0)
    worker = Worker(settings, progress_sink=sink).start()

    async def scenario() -> None:
        task = asyncio.ensure_future(worker.handle({"id": "cancelled", "input": {**SMALL, "steps": 150}}))
        await asyncio.get_running_loop().run_in_executor(None, reached.wait, 60)
        steps_at_cancel = len(steps)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert len(steps) - steps_at_cancel <= 1, f"ran {len(steps) - steps_at_cancel} steps after the cancel"

    asyncio.run(scenario())
    assert max(steps) < 150
    assert not (worker.store.root / "cancelled").exists()
    assert "error" not in run(worker, "after-cancel", seed=2)


def test_cancel_event_reported_as_cancelled_not_crash(image_worker: Worker) -> None:
    event = threading.Event()
    event.set()
    result = image_worker.handle_sync({"id": "pre-cancelled", "input": SMALL}, cancel_event=event)
    assert result["error"].startswith("cancelled:")


def test_png_bytes_decode(image_worker: Worker) -> None:
    result = run(image_worker, "decode", seed=5)
    data = Path(result["outputs"][0]["path"]).read_bytes()
    assert Image.open(io.BytesIO(data)).size == (64, 72)
