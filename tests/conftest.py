"""Shared fixtures: tiny random-weight models built once per session, and an in-process worker on them."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="session")
def tiny_sdxl_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SDXL-shaped diffusers folder (random weights), built once."""
    from cache.tiny.sdxl import build

    dest = tmp_path_factory.mktemp("sdxl-tiny")
    build(dest)
    return dest
