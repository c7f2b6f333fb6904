"""Single-file SDXL checkpoints (ComfyUI's `checkpoint_name`), swapped into the resident SDXL pipeline per job.

CHECKPOINTS_DIR (default `<volume>/checkpoints`) holds `.safetensors` checkpoints in the original Stability key
layout, as ComfyUI's `models/checkpoints` does. A checkpoint's UNet, VAE and two text encoders are loaded with
diffusers' single-file loaders, taking configs from the SDXL base folder the model cache already holds (no
network). The last checkpoint used stays resident while SDXL is; a job that names it borrows the base pipeline
with those four modules swapped in, so schedulers and LoRAs work unchanged, and the base modules are put back
afterwards. The SDXL base folder is resolved on the first checkpoint job, so a worker serving only other image
families never fetches it for this.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors import SafetensorError

from cache.refs import is_ref
from worker.inputs import MAX_NAME_BYTES
from worker.job_folders import UnsafePathError, safe_relpath
from worker.schemas import JobInputError
from worker.schemas.common import quoted

if TYPE_CHECKING:
    from worker.config import Settings
    from worker.model_refs import ModelRefs

log = logging.getLogger(__name__)

COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2")
CLIP_L_PREFIX = "conditioner.embedders.0.transformer."
CLIP_G_PREFIX = "conditioner.embedders.1.model."


def resolve_checkpoint(name: str, folder: Path) -> Path:
    """The `.safetensors` file `name` (ComfyUI style, subfolders allowed) inside `folder`."""
    try:
        relpath = safe_relpath(name)
    except UnsafePathError:
        raise JobInputError(
            "checkpoint", f"{quoted(name)} must be a file name inside CHECKPOINTS_DIR"
        ) from None
    if relpath.suffix != ".safetensors":
        # .ckpt files are pickles: loading one can run arbitrary code
        raise JobInputError("checkpoint", f"{quoted(name)}: only .safetensors checkpoints are loaded")
    if any(len(part.encode()) > MAX_NAME_BYTES for part in relpath.parts):
        raise JobInputError("checkpoint", f"a file or folder name in it is over {MAX_NAME_BYTES} bytes")
    root = folder.resolve()
    path = root.joinpath(*relpath.parts)
    try:
        inside = path.resolve().is_relative_to(root)
    except (OSError, RuntimeError):  # a symlink loop
        inside = False
    if not inside:
        raise JobInputError("checkpoint", f"{quoted(name)} resolves outside CHECKPOINTS_DIR")
    if not path.is_file():
        # the folder's listing is the operator's, not the caller's: say where to look instead of showing it
        raise JobInputError(
            "checkpoint",
            f"{quoted(name)} is not in CHECKPOINTS_DIR (default <volume>/checkpoints); list the checkpoints "
            "there from a pod (ls /workspace/checkpoints) and give one of those names",
        )
    return path


def load_components(path: Path, config_dir: Path, device: str) -> dict[str, Any]:
    """UNet, VAE and text encoders of a single-file SDXL checkpoint, on `device`."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm
    from safetensors.torch import load_file
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    state = load_file(path)  # read once; every component converts from this dict
    options = {"config": str(config_dir), "torch_dtype": dtype, "local_files_only": True}
    modules = {
        "unet": UNet2DConditionModel.from_single_file(state, subfolder="unet", **options),
        "vae": AutoencoderKL.from_single_file(state, subfolder="vae", **options),
    }
    # diffusers guesses which keys feed a text encoder from their names and widths; two encoders of one width (the
    # tiny test model) would both get CLIP-L's weights, so each is handed only its own keys
    for name, cls, prefix in (
        ("text_encoder", CLIPTextModel, CLIP_L_PREFIX),
        ("text_encoder_2", CLIPTextModelWithProjection, CLIP_G_PREFIX),
    ):
        own = {key: value for key, value in state.items() if key.startswith(prefix)}
        if not own:
            raise JobInputError(
                "checkpoint", f"{path.name} has no {name} weights ({prefix}*); is it an SDXL checkpoint?"
            )
        modules[name] = create_diffusers_clip_model_from_ldm(cls, own, subfolder=name, **options)
    del state
    if device != "cpu":  # the loaders build on the CPU
        modules = {name: module.to(device) for name, module in modules.items()}
    return {name: module.eval().requires_grad_(False) for name, module in modules.items()}


class Checkpoints:
    """The checkpoints folder and the one checkpoint kept resident."""

    def __init__(
        self, folder: Path, config_dir: Callable[[], Path], device: str, refs: ModelRefs | None = None
    ) -> None:
        self.folder = folder
        self.config_dir = config_dir
        self.device = device
        # a `checkpoint` that is a reference (hf:, civitai:, https://) is fetched through these
        self.refs = refs
        self._name: str | None = None
        self._modules: dict[str, Any] = {}

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        volume_root: Path,
        config_dir: Callable[[], Path],
        device: str,
        refs: ModelRefs | None = None,
    ) -> Checkpoints:
        """CHECKPOINTS_DIR, else `<volume>/checkpoints`; configs from the SDXL base folder `config_dir()` gives."""
        return cls(settings.checkpoints_dir or volume_root / "checkpoints", config_dir, device, refs)

    def modules(self, name: str) -> dict[str, Any]:
        # a reference is held (never evicted) while its file is read; the modules stay resident afterwards
        with self._file(name) as path:
            if name != self._name:
                self.release()
                started = time.perf_counter()
                try:
                    self._modules = load_components(path, self.config_dir(), self.device)
                except JobInputError:
                    raise
                except (KeyError, ValueError, RuntimeError, SafetensorError) as error:
                    # a foreign layout (diffusers), or a file that is junk or cut short (safetensors)
                    raise JobInputError(
                        "checkpoint",
                        f"{quoted(name)} is not a single-file SDXL checkpoint ({str(error)[:200]})",
                    ) from error
                self._name = name
                log.info("checkpoint %s loaded in %.1fs", name, time.perf_counter() - started)
        return self._modules

    def _file(self, name: str) -> contextlib.AbstractContextManager[Path]:
        if self.refs is not None and is_ref(name):
            return self.refs.use(name, "checkpoint", "checkpoint")
        return contextlib.nullcontext(resolve_checkpoint(name, self.folder))

    def release(self) -> None:
        """Drop the resident checkpoint's modules (when another one is asked for, or SDXL leaves the GPU)."""
        self._modules, self._name = {}, None
        gc.collect()
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    @contextlib.contextmanager
    def applied(self, pipe: Any, name: str | None) -> Iterator[None]:
        """`pipe` with checkpoint `name`'s modules in place (nothing changes when `name` is None)."""
        if name is None:
            yield
            return
        modules = self.modules(name)
        base = {component: getattr(pipe, component) for component in COMPONENTS}
        try:
            for component, module in modules.items():
                setattr(pipe, component, module)
            yield
        finally:
            for component, module in base.items():
                setattr(pipe, component, module)
