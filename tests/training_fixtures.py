"""Fixtures for the dataset, training and LoRA tests: the tiny SDXL and IP-Adapter, the three pipelines loaded once
on a shared volume, and a dataset → training chain run once.

Import the fixtures you use into the test module (`from training_fixtures import lab_fixture`: pytest knows
each by its `name`, `lab`). The heavy objects are memoised in this module, so they are
built once per session however many modules import the fixtures.
"""

from __future__ import annotations

import base64
import io
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from cache.volume import resolve_volume
from worker.config import Settings
from worker.inputs import VolumeFiles
from worker.intake import JobRequest
from worker.job_folders import JobStore
from worker.pipelines.base import JobCancelled, JobContext, LoadEnv, Progress
from worker.schemas import JobInputError, JobResult, parse_job

_MEMO: dict[str, Any] = {}

DATASET = {
    "type": "dataset",
    "subject": "a small green robot",
    "num_images": 2,
    "width": 64,
    "height": 64,
    "steps": 2,
}
TRAINING = {
    "type": "training",
    "rank": 4,
    "alpha": 2.0,
    "steps": 4,
    "resolution": 64,
    "learning_rate": 1e-3,
    "checkpoint_every": 2,
    "sample_every": 2,
    "sample_steps": 2,
    "seed": 11,
    "name": "robot",
}


@contextmanager
def single_thread() -> Iterator[None]:
    """One torch thread: on this 2-core machine, shared with other test runs, two OpenMP threads spin against
    each other and a tiny step takes seconds instead of a tenth."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module", name="one_thread")
def one_thread_fixture() -> Iterator[None]:
    with single_thread():
        yield


@dataclass
class Lab:
    """The pipelines on one volume, and a `run` that does what `Worker.handle_sync` does around `pipeline.run`."""

    root: Path
    store: JobStore
    pipelines: dict[str, Any]
    progress: list[dict[str, Any]] = field(default_factory=list)

    @property
    def pipe(self) -> Any:
        return self.pipelines["image"].sdxl

    def run(
        self,
        job_id: str,
        raw: dict[str, Any],
        cancel_event: threading.Event | None = None,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        try:
            job = parse_job(raw)
        except JobInputError as error:
            return {"error": str(error)}
        folder = self.store.job(job_id)
        folder.begin()

        def sink(payload: dict[str, Any]) -> None:
            self.progress.append(payload)
            if on_progress is not None:
                on_progress(payload)

        ctx = JobContext(
            JobRequest(job_id, job), folder, Progress(sink, 0.0), cancel_event or threading.Event()
        )
        try:
            output = self.pipelines[job.type].run(job, ctx)
        except JobInputError as error:
            return {"error": str(error)}
        except JobCancelled:
            folder.discard()
            return {"error": "cancelled"}
        result = JobResult(
            job_id=job_id, type=job.type, outputs=output.outputs, metrics=output.metrics, **output.fields
        ).model_dump(mode="json")
        folder.write_result(result)
        return result


def build_lab(root: Path, sdxl_dir: Path, ip_adapter_dir: Path) -> Lab:
    from worker.pipelines.dataset import DatasetPipeline
    from worker.pipelines.image import ImagePipeline
    from worker.pipelines.training import TrainingPipeline

    store = JobStore(root / "job_data")
    pipelines: dict[str, Any] = {}
    models = {
        "sdxl-base": lambda: sdxl_dir,
        "ip-adapter-sdxl": lambda: ip_adapter_dir,
        "blip-captioner": lambda: tiny_blip_dir(root / "blip-tiny"),
    }
    env = LoadEnv(
        settings=Settings(volume_root=root, model_profile="tiny", max_inline_images=4),
        volume=resolve_volume(root),
        files=VolumeFiles(root, [store.root]),
        models=lambda name: models[name](),
        device="cpu",
        profile="tiny",
        store=store,
        pipeline=lambda name: pipelines[name],
    )
    for pipeline in (ImagePipeline(), DatasetPipeline(), TrainingPipeline()):
        pipeline.load(env)
        pipelines[pipeline.job_type] = pipeline
    return Lab(root, store, pipelines)


def tiny_blip_dir(dest: Path) -> Path:
    """The tiny BLIP captioner in `dest`, built on first use (only auto-caption jobs ask for it)."""
    if not (dest / "config.json").is_file():
        from cache.tiny.blip import build

        with single_thread():
            build(dest)
    return dest


@pytest.fixture(scope="session", name="tiny_ip_adapter_dir")
def tiny_ip_adapter_dir_fixture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if "ip_adapter" not in _MEMO:
        from cache.tiny.ip_adapter import build

        dest = tmp_path_factory.mktemp("ip-adapter-tiny")
        with single_thread():
            build(dest)
        _MEMO["ip_adapter"] = dest
    return _MEMO["ip_adapter"]


@pytest.fixture(scope="session", name="lab")
def lab_fixture(
    tmp_path_factory: pytest.TempPathFactory, tiny_sdxl_dir: Path, tiny_ip_adapter_dir: Path
) -> Lab:
    if "lab" not in _MEMO:
        with single_thread():
            _MEMO["lab"] = build_lab(
                tmp_path_factory.mktemp("lora-volume"), tiny_sdxl_dir, tiny_ip_adapter_dir
            )
    return _MEMO["lab"]


@dataclass
class Chain:
    """A dataset job, a training job on it, and the base pipeline as it was before training."""

    dataset: dict[str, Any]
    training: dict[str, Any]
    base: dict[str, Any]
    base_image: Any


@pytest.fixture(scope="session", name="chain")
def chain_fixture(lab: Lab) -> Chain:
    if "chain" not in _MEMO:
        with single_thread():  # session fixtures are set up before the module's `one_thread`
            dataset = lab.run("chain-dataset", {**DATASET, "seed": 5})
            assert "error" not in dataset, dataset
            base, base_image = snapshot(lab.pipe), render(lab)
            training = lab.run("chain-training", {**TRAINING, "dataset_job_id": "chain-dataset"})
            assert "error" not in training, training
        _MEMO["chain"] = Chain(dataset, training, base, base_image)
    return _MEMO["chain"]


def snapshot(pipe: Any) -> dict[str, Any]:
    """Every tensor, `requires_grad` flag and train/eval flag of the pipeline's models, and the UNet's attention
    processor classes, copied."""
    state: dict[str, Any] = {}
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        module = getattr(pipe, name)
        for key, tensor in module.state_dict().items():
            state[f"{name}.{key}"] = tensor.detach().clone()
        for key, param in module.named_parameters():
            state[f"{name}.{key}:requires_grad"] = param.requires_grad
        for key, sub in module.named_modules():
            state[f"{name}.{key}:training"] = sub.training
    state["unet:processors"] = {key: type(proc).__name__ for key, proc in pipe.unet.attn_processors.items()}
    state["unet:checkpointing"] = pipe.unet.is_gradient_checkpointing
    state["image_encoder"] = getattr(pipe, "image_encoder", None)
    return state


def assert_same_state(before: dict[str, Any], after: dict[str, Any]) -> None:
    import torch

    assert before.keys() == after.keys(), sorted(before.keys() ^ after.keys())[:10]
    for key, value in before.items():
        if isinstance(value, torch.Tensor):
            assert value.dtype == after[key].dtype and torch.equal(value, after[key]), key
        else:
            assert value == after[key], key


def render(lab: Lab, seed: int = 3, prompt: str = "ohwx, a small green robot") -> Any:
    """The resident pipeline's output as a float array (no PNG rounding to hide a difference)."""
    image = lab.pipelines["image"]
    image.use_scheduler("euler")
    return image.sdxl(
        prompt=prompt,
        width=64,
        height=64,
        num_inference_steps=3,
        generator=image.generator(seed),
        output_type="np",
    ).images[0]


@contextmanager
def lora_loaded(pipe: Any, path: Path) -> Iterator[None]:
    """`load_lora_weights` on one file for the block; afterwards the pipeline is as before (diffusers' unload
    leaves the base parameters frozen: the guard puts their flags back)."""
    from worker.training.trainer import ResidentGuard

    guard = ResidentGuard(pipe)
    pipe.load_lora_weights(str(path), adapter_name="check")
    try:
        yield
    finally:
        guard.restore()


def png_base64(
    size: tuple[int, int] = (72, 56), color: tuple[int, ...] = (200, 40, 40), mode: str = "RGB"
) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()
