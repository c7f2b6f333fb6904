"""One image model resident at a time: loading a family's diffusers pipeline, and switching models.

A model is a catalog family or a diffusers repo of one (a job's `hf:` model). A switch fetches the new model
through the model cache first (a failed fetch leaves the old one resident), then drops every reference to the old
pipeline, collects it and returns its accelerator memory before loading the new one, so two are never held at once.
"""

from __future__ import annotations

import gc
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker.pipelines.image_families import FAMILIES, Family

log = logging.getLogger(__name__)


def load_family(family: Family, path: Path, device: str) -> Any:
    """A family's diffusers folder as its pipeline on `device`: the family's half precision on CUDA (the fp16
    variant files where the folder has them), fp32 on CPU."""
    import diffusers
    import torch

    cuda = device.startswith("cuda")
    dtype = getattr(torch, family.cuda_dtype) if cuda else torch.float32
    variant = (
        "fp16" if cuda and family.cuda_dtype == "float16" and any(path.glob("*/*.fp16.safetensors")) else None
    )
    pipeline_cls = getattr(diffusers, family.pipeline_class)
    pipe = pipeline_cls.from_pretrained(
        path, dtype=dtype, variant=variant, use_safetensors=True, local_files_only=True
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def free_memory() -> None:
    import torch

    gc.collect()  # diffusers' modules hold reference cycles: refcounting alone frees nothing
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def repo_pipeline_class(folder: Path) -> str:
    """The pipeline class a diffusers folder's model_index.json names ("" when it names none)."""
    try:
        index = json.loads((folder / "model_index.json").read_text())
    except (OSError, ValueError):
        return ""
    return str(index.get("_class_name") or "") if isinstance(index, dict) else ""


@dataclass
class Resident:
    key: str  # the catalog family's name, or the repo reference it was loaded from
    family: Family
    pipe: Any
    scheduler_config: dict[str, Any]


class FamilyLoader:
    """Holds the resident model; `activate(name)` makes catalog family `name` resident, `activate_folder` a repo's
    folder of a family, switching when another model is resident."""

    def __init__(
        self, models: Callable[[str], Path], device: str, on_release: Callable[[str], None] | None = None
    ) -> None:
        self.models = models
        self.device = device
        self.on_release = on_release
        self.resident: Resident | None = None

    def activate(self, name: str) -> tuple[Resident, float]:
        """The resident `name` and the seconds it took to make it so (0 when it already was)."""
        return self._make_resident(name, FAMILIES[name], lambda: self.models(name))

    def activate_folder(self, key: str, family: Family, folder: Path) -> tuple[Resident, float]:
        """The resident pipeline of `family` loaded from `folder` (a fetched repo), known by `key`."""
        return self._make_resident(key, family, lambda: folder)

    def _make_resident(self, key: str, family: Family, fetch: Callable[[], Path]) -> tuple[Resident, float]:
        if self.resident is not None and self.resident.key == key:
            return self.resident, 0.0
        started = time.perf_counter()
        path = fetch()
        self.release()
        pipe = load_family(family, path, self.device)
        self.resident = Resident(key, family, pipe, dict(pipe.scheduler.config))
        load_s = time.perf_counter() - started
        label = key if key == family.name else f"{key} ({family.name})"
        log.info("image model %s resident in %.2fs", label, load_s)
        return self.resident, load_s

    def release(self) -> None:
        if self.resident is None:
            return
        name = self.resident.key
        self.resident = None
        if self.on_release is not None:
            self.on_release(name)
        free_memory()
