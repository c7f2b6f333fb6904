"""An image or dataset job whose `model` is a diffusers repo on the Hub (`hf:<owner>/<repo>`), through the real
worker and the fake Hub: the repo's model_index.json says its family, whose defaults, bounds and LoRA rules then
apply; the repo is fetched once per volume and a warm job makes no request; a repo of no supported family, or a
job its family cannot run, is refused before any weight is downloaded."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hub_server import FakeHub, FakeRepo
from safetensors.torch import load, save
from test_image_family_loras import kohya, pair, write, zimage_formats
from training_fixtures import one_thread_fixture  # noqa: F401  (fixtures are found by name)

from cache import parse_ref
from cache.cache_settings import CacheSettings
from worker.config import Settings
from worker.pipelines.image_families import FAMILIES
from worker.worker import Worker

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]

SMALL = {"type": "image", "prompt": "a lighthouse at dusk", "width": 64, "height": 64, "seed": 3}
COPY = "hf:org/zimage-copy"
TUNED = "hf:org/zimage-tuned"


def folder_files(folder: Path) -> dict[str, bytes]:
    """A published model folder as a repo's files (the cache's own bookkeeping left out)."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.name.startswith(".")
    }


def tuned(files: dict[str, bytes]) -> dict[str, bytes]:
    """The same repo with every transformer weight scaled: a fine-tune of the same architecture."""
    weights = [name for name in files if name.startswith("transformer/") and name.endswith(".safetensors")]
    changed = dict(files)
    for name in weights:
        changed[name] = save({key: value * 1.5 for key, value in load(files[name]).items()})
    return changed


def is_weight(path: str) -> bool:
    return path.endswith(".safetensors")


def weight_bytes(hub: FakeHub) -> int:
    return sum(n for path, n in hub.stats.bytes_by_path.items() if is_weight(path))


@pytest.fixture(scope="module")
def hub():
    with FakeHub([]) as server:
        yield server


@pytest.fixture(scope="module")
def worker(session_volume: Path, hub: FakeHub) -> Worker:
    settings = Settings(
        volume_root=session_volume,
        model_profile="tiny",
        worker_jobs=("image", "dataset"),
        image_models=("z-image-turbo",),
        allow_private_urls=True,
        cache=CacheSettings(hf_endpoint=hub.endpoint),
    )
    worker = Worker(settings).start()
    # the repos hold the catalog's tiny Z-Image (a fine-tune of it, and copies that claim other pipelines)
    files = folder_files(worker.model_path("z-image-turbo"))
    index = json.loads(files["model_index.json"])
    other_family = {
        **files,
        "model_index.json": json.dumps({**index, "_class_name": "StableDiffusionPipeline"}).encode(),
    }
    for repo in (
        FakeRepo("org/zimage-copy", files),
        FakeRepo("org/zimage-tuned", tuned(files)),
        FakeRepo("org/zimage-bounds", files),
        FakeRepo("org/sd15", other_family),
        FakeRepo("org/old-record", other_family),
        FakeRepo(
            "org/weights-only",
            {"model.safetensors": files["transformer/diffusion_pytorch_model.safetensors"]},
        ),
    ):
        hub.add(repo)
    return worker


def run(worker: Worker, job_id: str, **fields: Any) -> dict[str, Any]:
    return worker.handle_sync({"id": job_id, "input": {**SMALL, **fields}})


def resident_key(worker: Worker) -> str:
    return worker.pipeline("image").families.resident.key


def test_a_repo_of_a_family_draws_as_that_family_with_its_defaults(worker: Worker, hub: FakeHub) -> None:
    catalog = run(worker, "repo-catalog", model="z-image-turbo")  # its default 8 steps, no guidance
    copy = run(worker, "repo-copy", model=COPY)
    assert "error" not in copy, copy
    assert copy["model"] == COPY and copy["family"] == "z-image-turbo"
    assert copy["metrics"]["load_s"] > 0 and resident_key(worker) == COPY
    # the same weights under the family's defaults (8 steps, no guidance) draw the catalog model's image
    assert copy["outputs"][0]["sha256"] == catalog["outputs"][0]["sha256"]
    explicit = run(
        worker, "repo-explicit", model=COPY, steps=FAMILIES["z-image-turbo"].steps, guidance_scale=0.0
    )
    assert explicit["outputs"][0]["sha256"] == copy["outputs"][0]["sha256"]
    assert explicit["metrics"]["load_s"] == 0.0  # resident already
    fine_tune = run(worker, "repo-tuned", model=TUNED)
    assert "error" not in fine_tune, fine_tune
    assert fine_tune["outputs"][0]["sha256"] != copy["outputs"][0]["sha256"]


def test_a_warm_repo_makes_no_request_also_after_a_switch(worker: Worker, hub: FakeHub) -> None:
    assert "error" not in run(worker, "warm-first", model=COPY)
    assert "error" not in run(worker, "warm-switch")  # the catalog model resident again
    hub.reset_stats()

    again = run(worker, "warm-again", model=COPY)

    assert "error" not in again, again
    assert again["metrics"]["load_s"] > 0  # loaded from the volume again
    assert hub.stats.total_requests == 0


def test_the_family_rules_apply_before_anything_is_downloaded(worker: Worker, hub: FakeHub) -> None:
    hub.reset_stats()
    bounds = run(worker, "repo-bounds", model="hf:org/zimage-bounds", steps=60, width=72)
    assert bounds["error"] == (
        "steps: at most 50 for z-image-turbo (default 8); "
        "width: must be a multiple of 16 for z-image-turbo (got 72, nearest: 64)"
    )
    dataset = {
        "type": "dataset",
        "subject": "a cat",
        "model": "hf:org/zimage-bounds",
        "reference_image": "x.png",
    }
    ignored = worker.handle_sync({"id": "repo-ignored", "input": dataset})
    assert ignored["error"].startswith(
        "reference_image: the IP-Adapter is SDXL's, z-image-turbo jobs take no"
    )
    other = run(worker, "repo-other", model="hf:org/sd15")
    assert other["error"] == (
        "model: hf:org/sd15 is a StableDiffusionPipeline pipeline (supported: StableDiffusionXLPipeline "
        "(sdxl-base), ZImagePipeline (z-image-turbo), Flux2KleinPipeline (flux2-klein-4b))"
    )
    assert weight_bytes(hub) == 0
    assert not (worker.volume.models_dir / parse_ref("hf:org/sd15").folder_name).exists()
    no_index = run(worker, "repo-no-index", model="hf:org/weights-only")
    assert no_index["error"].startswith(
        "model: hf:org/weights-only: org/weights-only has no model_index.json"
    )
    assert "error" not in run(worker, "repo-still-serving", model=COPY)


def test_a_repo_resolved_by_an_earlier_cache_is_checked_once_fetched(worker: Worker, hub: FakeHub) -> None:
    """A resolution recorded before the cache noted a repo's pipeline: the family is read from the fetched folder."""
    ref = parse_ref("hf:org/old-record")
    cache = worker.pipeline("image").refs.cache
    assert cache.describe(ref)["pipeline"] == "StableDiffusionPipeline"
    record_path = worker.volume.models_dir / ".refs" / f"{ref.folder_name}.json"
    record = json.loads(record_path.read_text())
    del record["meta"]
    record_path.write_text(json.dumps(record))

    result = run(worker, "repo-old-record", model=ref.text)

    assert result["error"].startswith(
        "model: hf:org/old-record is a StableDiffusionPipeline pipeline (supported: "
    )
    assert "error" not in run(worker, "repo-after-old", model=COPY)


def test_a_repo_model_takes_no_checkpoint_and_only_its_family_loras(worker: Worker) -> None:
    both = run(worker, "repo-ckpt", model=COPY, checkpoint="tiny_sdxl.safetensors")
    assert both["error"].startswith("checkpoint: leave it out when model is a repo")
    single = run(worker, "repo-single", model="hf:org/weights-only/model.safetensors")
    assert single["error"].startswith("model: 'hf:org/weights-only/model.safetensors' names one file")
    root = worker.volume.root
    assert "error" not in run(worker, "repo-lora-load", model=COPY)
    pipe = worker.pipeline("image").families.resident.pipe
    zimage = write(root, "repo-zimage", zimage_formats(pipe)["diffusers"])
    sdxl = write(root, "repo-sdxl", kohya("down_blocks.1.attentions.0.proj_in", *pair(32, 32, 0)))
    refused = run(worker, "repo-lora-sdxl", model=COPY, loras=[{"path": sdxl}])
    assert refused == {
        "error": "loras.0: not a LoRA for this Z-Image model: it is a SDXL LoRA (model sdxl-base)"
    }
    plain = run(worker, "repo-lora-plain", model=COPY)
    with_lora = run(worker, "repo-lora", model=COPY, loras=[{"path": zimage}])
    on_catalog = run(worker, "repo-lora-catalog", model="z-image-turbo", loras=[{"path": zimage}])
    assert with_lora["outputs"][0]["sha256"] != plain["outputs"][0]["sha256"]
    assert (
        with_lora["outputs"][0]["sha256"] == on_catalog["outputs"][0]["sha256"]
    )  # the same weights, the same LoRA


def test_morpheus_checkpoint_name_may_name_a_repo(worker: Worker) -> None:
    base = run(worker, "repo-mx-base", model=COPY, steps=2)
    creation = worker.handle_sync(
        {
            "id": "repo-mx",
            "input": {
                "workflow_name": "creation",
                "prompt": SMALL["prompt"],
                "width": 64,
                "height": 64,
                "steps": 2,
                "seed": 3,
                "checkpoint_name": COPY,
            },
        }
    )
    assert "error" not in creation, creation
    assert Path(creation["image_pod_path"]).read_bytes() == Path(base["outputs"][0]["path"]).read_bytes()
    bad = worker.handle_sync(
        {
            "id": "repo-mx-bad",
            "input": {"workflow_name": "creation", "prompt": "x", "checkpoint_name": "hf:org/sd15"},
        }
    )
    assert bad["error"].startswith("checkpoint_name: hf:org/sd15 is a StableDiffusionPipeline pipeline (")


def test_a_dataset_job_draws_with_a_repo(worker: Worker) -> None:
    job = {
        "type": "dataset",
        "subject": "a lighthouse",
        "num_images": 1,
        "width": 64,
        "height": 64,
        "seed": 2,
    }
    result = worker.handle_sync({"id": "repo-dataset", "input": {**job, "model": TUNED}})
    assert "error" not in result, result
    assert result["model"] == TUNED and result["family"] == "z-image-turbo"
    captions = [o for o in result["outputs"] if o["kind"] == "caption"]
    assert len(captions) == 1
    catalog = worker.handle_sync({"id": "repo-dataset-catalog", "input": {**job, "model": "z-image-turbo"}})
    drawn = [o["sha256"] for r in (result, catalog) for o in r["outputs"] if o["kind"] == "image"]
    assert drawn[0] != drawn[1]  # the fine-tune's weights drew it
