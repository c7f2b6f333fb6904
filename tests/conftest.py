"""Shared fixtures: tiny random-weight models built once per session, and an in-process worker on them."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `cuda` skip on a machine without CUDA (bench/gpu/run.sh runs them on a GPU)."""
    marked = [item for item in items if item.get_closest_marker("cuda")]
    if not marked:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in marked:
        item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_sdxl_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SDXL-shaped diffusers folder (random weights), built once."""
    from cache.tiny.sdxl import build

    dest = tmp_path_factory.mktemp("sdxl-tiny")
    build(dest)
    return dest


@pytest.fixture(scope="session")
def session_volume(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One volume for the whole session, so every tiny model is built and published once."""
    return tmp_path_factory.mktemp("volume")


@pytest.fixture(scope="session")
def image_worker(session_volume: Path):
    """A started worker serving image jobs on the tiny model, shared by the tests that only read from it."""
    from worker.config import Settings
    from worker.worker import Worker

    return Worker(Settings(volume_root=session_volume, model_profile="tiny", worker_jobs=("image",))).start()
