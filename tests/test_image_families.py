"""Image jobs on Z-Image and FLUX.2 [klein] beside SDXL, through the real worker on the tiny random-weight models
of each family: defaults and seeds, every scheduler a family supports, refused fields and bounds naming the
family, the checkpoint name that selects a family, IMAGE_MODELS, and switching families with memory flat."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import subprocess
import sys
import weakref
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from training_fixtures import one_thread_fixture  # noqa: F401  (fixtures are found by name)

from worker.config import ConfigError, Settings
from worker.pipelines.image_families import FAMILIES
from worker.worker import Worker

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"type": "image", "prompt": "a lighthouse at dusk", "width": 80, "height": 64, "steps": 2}
NEW_FAMILIES = ("z-image-turbo", "flux2-klein-4b")


def run(worker: Worker, job_id: str, **fields: Any) -> dict[str, Any]:
    return worker.handle_sync({"id": job_id, "input": {**SMALL, **fields}})


def resident(worker: Worker) -> Any:
    return worker.pipeline("image").families.resident


@pytest.mark.parametrize("model", NEW_FAMILIES)
def test_a_family_draws_with_its_defaults_and_replays_its_seed(image_worker: Worker, model: str) -> None:
    job = {key: value for key, value in SMALL.items() if key != "steps"}
    default = image_worker.handle_sync(
        {"id": f"fam-{model}-default", "input": {**job, "model": model, "seed": 5}}
    )
    assert "error" not in default, default
    assert default["model"] == model and default["seed"] == 5
    with Image.open(default["outputs"][0]["path"]) as image:
        assert image.size == (80, 64)
    assert resident(image_worker).family.name == model
    # the family's own default steps ran: the same image as asking for them
    explicit = run(image_worker, f"fam-{model}-explicit", model=model, seed=5, steps=FAMILIES[model].steps)
    assert explicit["outputs"][0]["sha256"] == default["outputs"][0]["sha256"]
    assert explicit["metrics"]["load_s"] == 0.0  # resident already: no switch
    other = run(image_worker, f"fam-{model}-other", model=model, seed=6, steps=FAMILIES[model].steps)
    assert other["outputs"][0]["sha256"] != default["outputs"][0]["sha256"]


SCHEDULER_CASES = [(model, name) for model in NEW_FAMILIES for name in FAMILIES[model].schedulers]


@pytest.mark.parametrize(("model", "scheduler"), SCHEDULER_CASES)
def test_every_scheduler_of_a_family_runs_and_replays(
    image_worker: Worker, model: str, scheduler: str
) -> None:
    first = run(image_worker, f"sch-{model}-{scheduler}-a", model=model, scheduler=scheduler, seed=9)
    assert "error" not in first, first
    again = run(image_worker, f"sch-{model}-{scheduler}-b", model=model, scheduler=scheduler, seed=9)
    assert again["outputs"][0]["sha256"] == first["outputs"][0]["sha256"]
    assert type(resident(image_worker).pipe.scheduler).__name__ == FAMILIES[model].schedulers[scheduler][0]


def test_negative_prompt_with_guidance_changes_a_z_image(image_worker: Worker) -> None:
    plain = run(image_worker, "zneg-plain", model="z-image-turbo", guidance_scale=2.0, seed=4)
    negative = run(
        image_worker, "zneg-neg", model="z-image-turbo", guidance_scale=2.0, seed=4, negative_prompt="fog"
    )
    assert plain["outputs"][0]["sha256"] != negative["outputs"][0]["sha256"]


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        (
            {"model": "flux2-klein-4b", "guidance_scale": 3.5},
            "guidance_scale: flux2-klein-4b is guidance-distilled and ignores it, leave it out",
        ),
        (
            {"model": "flux2-klein-4b", "negative_prompt": "fog"},
            "negative_prompt: flux2-klein-4b takes no negative prompt",
        ),
        (
            {"model": "z-image-turbo", "negative_prompt": "fog"},
            "negative_prompt: z-image-turbo reads it only with guidance_scale > 0 (its default is 0: no guidance)",
        ),
        (
            {"model": "z-image-turbo", "checkpoint": "mine.safetensors"},
            "checkpoint: single-file checkpoints are SDXL's, z-image-turbo jobs take none",
        ),
        (
            {"model": "z-image-turbo", "width": 72},
            "width: must be a multiple of 16 for z-image-turbo (got 72, nearest: 64)",
        ),
        ({"model": "flux2-klein-4b", "steps": 51}, "steps: at most 50 for flux2-klein-4b (default 4)"),
        (
            {"model": "flux2-klein-4b", "scheduler": "ddim"},
            "scheduler: flux2-klein-4b supports euler, euler_a, lcm, dpmpp_2m, unipc",
        ),
        (
            {"model": "z-image-turbo", "scheduler": "dpmpp_2m"},
            "scheduler: z-image-turbo supports euler, euler_a, lcm",
        ),
        (
            {"scheduler": "lcm"},
            "scheduler: sdxl-base supports euler, euler_a, dpmpp_2m, dpmpp_2m_karras, ddim, unipc",
        ),
        (
            {"model": "sd3"},
            "model: unknown model 'sd3' (valid: sdxl-base, z-image-turbo, flux2-klein-4b, or "
            "hf:<owner>/<repo>[@<revision>])",
        ),
    ],
)
def test_fields_a_family_ignores_or_bounds_it_breaks_are_refused(
    image_worker: Worker, fields: dict[str, Any], error: str
) -> None:
    assert run(image_worker, "refused", **fields) == {"error": error}
    assert not (image_worker.store.root / "refused").exists()


def test_a_checkpoint_name_of_another_family_selects_it(image_worker: Worker) -> None:
    result = run(image_worker, "ckpt-zimage", checkpoint="z_image_turbo_bf16.safetensors", seed=2)
    assert result["model"] == "z-image-turbo", result
    by_model = run(image_worker, "model-zimage", model="z-image-turbo", seed=2)
    assert by_model["outputs"][0]["sha256"] == result["outputs"][0]["sha256"]


def test_morpheus_creation_with_another_familys_checkpoint_name(image_worker: Worker) -> None:
    params = {
        "prompt": "a lighthouse",
        "checkpoint_name": "flux-2-klein-4b.safetensors",
        "width": 80,
        "height": 64,
    }
    result = image_worker.handle_sync(
        {"id": "morpheus-flux", "input": {"workflow_name": "creation", **params}}
    )
    assert result["model"] == "flux2-klein-4b" and result["image_pod_path"], result
    sdxl = image_worker.handle_sync(
        {
            "id": "morpheus-sdxl",
            "input": {"workflow_name": "creation", "prompt": "x", "width": 64, "height": 64, "steps": 1},
        }
    )
    assert sdxl["model"] == "sdxl-base", sdxl


def test_image_models_setting() -> None:
    assert Settings.from_env({}).image_models == ("sdxl-base",)
    assert Settings.from_env({"IMAGE_MODELS": " flux2-klein-4b, sdxl-base "}).image_models == (
        "flux2-klein-4b",
        "sdxl-base",
    )
    assert Settings.from_env({"IMAGE_MODELS": "all"}).image_models == tuple(FAMILIES)
    with pytest.raises(ConfigError, match="IMAGE_MODELS: unknown image model"):
        Settings.from_env({"IMAGE_MODELS": "sd3"})


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def accelerator_bytes() -> int:
    import torch

    return torch.cuda.memory_allocated() if torch.cuda.is_available() else 0


@pytest.mark.slow
def test_switching_families_twenty_times_frees_the_other_and_memory_stays_flat(image_worker: Worker) -> None:
    rss: list[int] = []
    accelerator: list[int] = []
    current = resident(image_worker).family.name
    start = NEW_FAMILIES.index(current) + 1 if current in NEW_FAMILIES else 0  # the first job switches too
    for index in range(20):
        model = NEW_FAMILIES[(start + index) % 2]
        before = resident(image_worker)
        gone = weakref.ref(before.pipe) if before is not None else None
        del before
        result = run(image_worker, f"switch-{index}", model=model, steps=1, seed=index)
        assert "error" not in result, result
        assert result["metrics"]["load_s"] > 0  # a switch every job, timed
        if gone is not None:
            assert gone() is None, "the previous family's pipeline is still referenced"
        gc.collect()
        rss.append(rss_bytes())
        accelerator.append(accelerator_bytes())
    # both families have been loaded twice by job 4: from then on every load reuses the memory freed before it
    assert max(rss[4:]) - rss[4] < 48 * 2**20, [round(value / 2**20) for value in rss]
    assert max(accelerator[4:]) <= accelerator[4] + 2**20, accelerator


def test_the_async_handler_serves_a_family(image_worker: Worker) -> None:
    result = asyncio.run(
        image_worker.handle({"id": "async-flux", "input": {**SMALL, "model": "flux2-klein-4b"}})
    )
    assert result["model"] == "flux2-klein-4b" and result["outputs"], result


@pytest.mark.slow
def test_handler_py_warms_image_models_and_loads_another_family_on_its_job(
    session_volume: Path, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("VOLUME_ROOT", "JOB_DATA_DIR")}
    env.update(
        MODEL_PROFILE="tiny",
        VOLUME_ROOT=str(session_volume),
        WORKER_JOBS="image",
        IMAGE_MODELS="z-image-turbo",
    )
    job = {"input": {**SMALL, "model": "flux2-klein-4b", "seed": 1}}
    done = subprocess.run(
        [sys.executable, str(ROOT / "handler.py"), "--test_input", json.dumps(job)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    logs = done.stdout + done.stderr
    assert done.returncode == 0, logs
    assert logs.index("image model z-image-turbo resident") < logs.index(
        "image model flux2-klein-4b resident"
    )
    assert "image model sdxl-base" not in logs
    result = json.loads((session_volume / "job_data" / "local_test" / "result.json").read_text())
    assert result["model"] == "flux2-klein-4b" and result["metrics"]["load_s"] > 0
