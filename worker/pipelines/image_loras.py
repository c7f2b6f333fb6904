"""LoRAs an image job asks for: found on the volume or by training job id, applied for one job, then removed.

Only `.safetensors` files are loaded (a pickle can run code). A LoRA's family is read from its keys before it is
loaded, so one made for another model family is a field error rather than a crash or a silently wrong image.
Each family's diffusers loader converts its ecosystem's formats (diffusers/PEFT, kohya and ComfyUI, ai-toolkit).
Unloading removes PEFT's layers and puts the original modules and their `requires_grad` and train/eval flags
back, so the resident pipeline is exactly what it was before the job.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cache.refs import is_ref
from worker.inputs import VolumeFiles
from worker.job_folders import JobStore
from worker.pipelines.image_families import FAMILIES, Family, lora_family
from worker.schemas import JobInputError, LoraRef

if TYPE_CHECKING:
    from worker.model_refs import ModelRefs

LORA_SUFFIX = ".safetensors"


def training_job_lora(job_id: str, store: JobStore, volume: VolumeFiles, field: str) -> Path:
    """The LoRA a training job left: its diffusers file, or the last checkpoint of a cancelled run. The relpath
    comes from the job's result.json, which anyone with the volume can write: it meets the rule a caller's path
    does (inside the volume once links are resolved)."""
    result = store.finished_result(job_id, "training", field)
    outputs = [o for o in result["outputs"] if isinstance(o.get("relpath"), str)]
    final = [o for o in outputs if o.get("kind") == "lora" and o.get("format") == "diffusers"]
    checkpoints = [o for o in outputs if o.get("kind") == "checkpoint"]
    chosen = final or checkpoints
    if not chosen:
        raise JobInputError(field, f"training job {job_id!r} saved no LoRA")
    return volume.checked(store.root / chosen[-1]["relpath"], field, f"the LoRA of job {job_id!r}")


def check_lora_family(path: Path, family: Family, field: str) -> None:
    """Refuse a LoRA whose keys are not `family`'s module names, naming the family they are."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            keys = list(handle.keys())
    except (SafetensorError, OSError) as error:
        raise JobInputError(field, f"not a readable .safetensors file ({error})") from None
    found = lora_family(keys)
    if found is None:
        raise JobInputError(
            field, f"not a LoRA for this {family.label} model (its keys name no known model's modules)"
        )
    if found != family.name:
        raise JobInputError(
            field,
            f"not a LoRA for this {family.label} model: it is a {FAMILIES[found].label} LoRA (model {found})",
        )


class AdapterGuard:
    """The resident pipeline's flags before LoRAs are injected; `restore` unloads them and puts the flags back."""

    def __init__(self, pipe: Any) -> None:
        import torch

        self.pipe = pipe
        modules = [module for module in pipe.components.values() if isinstance(module, torch.nn.Module)]
        # PEFT's injection freezes every base parameter and may flip train/eval flags
        self._requires_grad = [
            (param, param.requires_grad) for module in modules for param in module.parameters()
        ]
        self._modes = [(sub, sub.training) for module in modules for sub in module.modules()]

    def restore(self) -> None:
        self.pipe.unload_lora_weights()
        for param, flag in self._requires_grad:
            param.requires_grad_(flag)
        for module, training in self._modes:
            module.training = training


class LoraLoader:
    """Resolves `LoraRef`s and applies them to the resident pipeline for the length of one job."""

    def __init__(self, store: JobStore, volume: VolumeFiles, refs: ModelRefs | None = None) -> None:
        self.store = store
        self.volume = volume
        self.refs = refs  # a `path` that is a reference (hf:, civitai:, https://) is fetched through these

    def resolve(self, ref: LoraRef, field: str, held: ExitStack | None = None) -> Path:
        """The LoRA's file; a reference is fetched and held (never evicted) until `held` closes."""
        if ref.job_id is not None:
            return training_job_lora(ref.job_id, self.store, self.volume, f"{field}.job_id")
        if self.refs is not None and held is not None and is_ref(ref.path or ""):
            return held.enter_context(self.refs.use(ref.path or "", "lora", f"{field}.path"))
        path = self.volume.resolve(ref.path or "", f"{field}.path")
        if path.suffix.lower() != LORA_SUFFIX:
            raise JobInputError(
                f"{field}.path", f"only {LORA_SUFFIX} files are loaded (pickled weights can run code)"
            )
        return path

    @contextmanager
    def applied(self, pipe: Any, refs: list[LoraRef], family: Family) -> Iterator[list[str]]:
        """Load each LoRA under its own adapter name, weight them by `scale`, and unload them all afterwards."""
        with ExitStack() as held:
            paths = [self.resolve(ref, f"loras.{index}", held) for index, ref in enumerate(refs)]
            for index, path in enumerate(paths):
                check_lora_family(path, family, f"loras.{index}")
            if not paths:
                yield []
                return
            names = [f"lora_{index}" for index in range(len(paths))]
            guard = AdapterGuard(pipe)
            try:
                for index, (path, name) in enumerate(zip(paths, names)):
                    try:
                        pipe.load_lora_weights(str(path), adapter_name=name)
                    except (ValueError, KeyError, RuntimeError, OSError) as error:
                        raise JobInputError(
                            f"loras.{index}", f"not a LoRA for this {family.label} model ({error})"
                        ) from None
                pipe.set_adapters(names, adapter_weights=[ref.scale for ref in refs])
                yield names
            finally:
                guard.restore()
