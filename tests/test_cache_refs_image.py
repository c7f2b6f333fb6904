"""An image job whose `checkpoint` and `loras` are model references, on the tiny SDXL: the first run fetches them
through the cache (the checkpoint from the fake Hub, the LoRA from the fake CivitAI), the second makes no request
at all; a reference of the wrong kind, or from a source the endpoint does not allow, is a field error."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from civitai_server import FakeCivitai, FakeVersion
from hub_server import FakeHub, FakeRepo
from safetensors.torch import save

from cache import parse_ref
from cache.cache_settings import CacheSettings
from tests.single_file import write_single_file
from worker.config import Settings
from worker.schemas import JobInputError
from worker.worker import Worker

# a worker on the tiny SDXL takes seconds to load and a single-file checkpoint to convert: slow on two cores
pytestmark = pytest.mark.slow

SMALL = {"type": "image", "prompt": "a small green robot", "width": 64, "height": 64, "steps": 2, "seed": 5}
CHECKPOINT = "hf:org/tiny-sdxl/tiny_sdxl.safetensors"


def tiny_lora() -> bytes:
    """A diffusers-format LoRA on the tiny SDXL UNet's first self-attention query (64 features, rank 4)."""
    generator = torch.Generator().manual_seed(1)
    module = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"
    return save(
        {
            f"{module}.lora_A.weight": torch.randn(4, 64, generator=generator),
            f"{module}.lora_B.weight": torch.randn(64, 4, generator=generator),
        }
    )


@pytest.fixture(scope="module")
def servers(tiny_sdxl_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    checkpoint = write_single_file(tiny_sdxl_dir, tmp_path_factory.mktemp("ckpt") / "tiny_sdxl.safetensors")
    with (
        FakeHub([FakeRepo("org/tiny-sdxl", {"tiny_sdxl.safetensors": checkpoint.read_bytes()})]) as hub,
        FakeCivitai([FakeVersion(9, "robot.safetensors", tiny_lora(), model_type="LORA")]) as civitai,
    ):
        yield hub, civitai


@pytest.fixture(scope="module")
def worker(session_volume: Path, servers: tuple[FakeHub, FakeCivitai]) -> Worker:
    hub, civitai = servers
    cache = CacheSettings(
        hf_endpoint=hub.endpoint,
        civitai_api_url=civitai.api_url,
        civitai_token=civitai.token,
        prefetch_models=(CHECKPOINT,),
    )
    settings = Settings(
        volume_root=session_volume,
        model_profile="tiny",
        worker_jobs=("image",),
        allow_private_urls=True,
        cache=cache,
    )
    return Worker(settings).start()


def run(worker: Worker, job_id: str, **fields: Any) -> dict[str, Any]:
    return worker.handle_sync({"id": job_id, "input": {**SMALL, **fields}})


def test_reference_checkpoint_and_lora_are_fetched_once(
    worker: Worker, servers: tuple[FakeHub, FakeCivitai]
) -> None:
    hub, civitai = servers
    # PREFETCH_MODELS: the checkpoint was fetched at start, and is kept from eviction
    assert hub.stats.bytes_by_path["org/tiny-sdxl/tiny_sdxl.safetensors"] > 0
    assert (worker.volume.models_dir / ".keep" / parse_ref(CHECKPOINT).folder_name).is_file()
    fetched_at_start = hub.stats.file_bytes
    base = run(worker, "ref-base")
    first = run(worker, "ref-1", checkpoint=CHECKPOINT, loras=[{"path": "civitai:9", "scale": 1.0}])
    assert "error" not in first, first
    assert hub.stats.file_bytes == fetched_at_start and civitai.stats.file_bytes > 0
    hub.reset_stats()
    civitai.reset_stats()

    second = run(worker, "ref-2", checkpoint=CHECKPOINT, loras=[{"path": "civitai:9", "scale": 1.0}])

    assert "error" not in second, second
    assert hub.stats.total_requests == 0 and civitai.stats.total_requests == 0
    assert second["outputs"][0]["sha256"] == first["outputs"][0]["sha256"]
    # the checkpoint holds the base's own weights: the LoRA is what changes the image
    assert first["outputs"][0]["sha256"] != base["outputs"][0]["sha256"]


def test_a_reference_of_the_wrong_kind_is_a_field_error(worker: Worker) -> None:
    swapped = run(worker, "ref-swap", checkpoint="civitai:9")
    assert (
        swapped["error"]
        == "checkpoint: civitai:9 is a LoRA, not an SDXL checkpoint (name it in loras instead)"
    )
    as_lora = run(worker, "ref-swap-lora", loras=[{"path": CHECKPOINT}])
    assert as_lora["error"].startswith(f"loras.0.path: {CHECKPOINT} is a full checkpoint, not a LoRA")
    missing = run(worker, "ref-missing", checkpoint="civitai:404")
    assert missing["error"].startswith("checkpoint: civitai:404: not found at ")
    malformed = run(worker, "ref-bad", checkpoint="hf:org")
    assert malformed["error"].startswith("checkpoint: 'hf:org': expected hf:<owner>/<repo>")


def test_model_sources_limit_what_a_job_may_name(worker: Worker) -> None:
    from worker.model_refs import ModelRefs

    settings = replace(worker.settings, cache=replace(worker.settings.cache, model_sources=("hf",)))
    refs = ModelRefs.for_volume(settings, worker.volume)
    with pytest.raises(JobInputError) as caught, refs.use("civitai:9", "lora", "loras.0.path"):
        pass
    issue = caught.value.issues[0]
    assert (issue.field, issue.reason) == (
        "loras.0.path",
        "civitai: references are not enabled (MODEL_SOURCES)",
    )
