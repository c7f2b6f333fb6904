"""LoRAs on Z-Image and FLUX.2 [klein] through the worker: one set of weights written in each ecosystem's formats
(diffusers/PEFT, ai-toolkit, kohya/ComfyUI) draws the same image, differs from the base, and is gone after the job
(the resident pipeline bit-exact); a LoRA of another family is a field error naming both families."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file
from training_fixtures import one_thread_fixture  # noqa: F401  (fixtures are found by name)

from worker.worker import Worker

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = {
    "type": "image",
    "prompt": "ohwx, a small green robot",
    "width": 64,
    "height": 64,
    "steps": 2,
    "seed": 3,
}
RANK = 4

# Z-Image: diffusers module names are also ai-toolkit's (under `diffusion_model.`) and, underscored, kohya's
ZIMAGE_MODULES = ("layers.0.attention.to_q", "layers.1.attention.to_out.0", "layers.0.feed_forward.w2")
# FLUX.2: BFL's block names (ai-toolkit, kohya) and the diffusers modules each one becomes
FLUX2_MODULES = {
    "double_blocks.0.img_attn.qkv": ("transformer_blocks.0.attn.to_q", "to_k", "to_v"),
    "double_blocks.0.img_attn.proj": ("transformer_blocks.0.attn.to_out.0",),
    "single_blocks.0.linear1": ("single_transformer_blocks.0.attn.to_qkv_mlp_proj",),
    "single_blocks.1.linear2": ("single_transformer_blocks.1.attn.to_out",),
}


def resident_pipe(worker: Worker, model: str) -> Any:
    pipe, _ = worker.pipeline("image").activate(model)
    return pipe


def snapshot(pipe: Any) -> dict[str, Any]:
    """Every tensor, `requires_grad` and train/eval flag of the pipeline's models, copied."""
    state: dict[str, Any] = {}
    for name, module in pipe.components.items():
        if not isinstance(module, torch.nn.Module):
            continue
        state.update({f"{name}.{key}": value.detach().clone() for key, value in module.state_dict().items()})
        state.update({f"{name}.{key}:grad": p.requires_grad for key, p in module.named_parameters()})
        state.update({f"{name}.{key}:training": sub.training for key, sub in module.named_modules()})
    return state


def assert_same(before: dict[str, Any], after: dict[str, Any]) -> None:
    assert before.keys() == after.keys(), sorted(before.keys() ^ after.keys())[:5]
    for key, value in before.items():
        if isinstance(value, torch.Tensor):
            assert value.dtype == after[key].dtype and torch.equal(value, after[key]), key
        else:
            assert value == after[key], key


def linear_shape(pipe: Any, module: str) -> tuple[int, int]:
    out_features, in_features = pipe.transformer.get_submodule(module).weight.shape
    return out_features, in_features


def pair(out_features: int, in_features: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    down = torch.randn(RANK, in_features, generator=generator) * 0.5
    up = torch.randn(out_features, RANK, generator=generator) * 0.5
    return down, up


def kohya(name: str, down: torch.Tensor, up: torch.Tensor) -> dict[str, torch.Tensor]:
    stem = "lora_unet_" + name.replace(".", "_")
    return {
        f"{stem}.lora_down.weight": down,
        f"{stem}.lora_up.weight": up,
        f"{stem}.alpha": torch.tensor(float(RANK)),
    }


def zimage_formats(pipe: Any) -> dict[str, dict[str, torch.Tensor]]:
    formats: dict[str, dict[str, torch.Tensor]] = {"diffusers": {}, "ai-toolkit": {}, "kohya": {}}
    for seed, module in enumerate(ZIMAGE_MODULES):
        down, up = pair(*linear_shape(pipe, module), seed)
        formats["diffusers"] |= {
            f"transformer.{module}.lora_A.weight": down,
            f"transformer.{module}.lora_B.weight": up,
        }
        formats["ai-toolkit"] |= {
            f"diffusion_model.{module}.lora_A.weight": down,
            f"diffusion_model.{module}.lora_B.weight": up,
        }
        formats["kohya"] |= kohya(module, down, up)
    return formats


def flux2_formats(pipe: Any) -> dict[str, dict[str, torch.Tensor]]:
    formats: dict[str, dict[str, torch.Tensor]] = {"diffusers": {}, "ai-toolkit": {}, "kohya": {}}
    for seed, (bfl, targets) in enumerate(FLUX2_MODULES.items()):
        first = targets[0]
        modules = [first] + [first.rsplit(".", 1)[0] + "." + t for t in targets[1:]]
        out_features = sum(linear_shape(pipe, module)[0] for module in modules)
        down, up = pair(out_features, linear_shape(pipe, first)[1], seed)
        # a fused qkv LoRA is one down projection shared by q, k and v, and its up projection split three ways
        for module, part in zip(modules, up.chunk(len(modules))):
            formats["diffusers"] |= {
                f"transformer.{module}.lora_A.weight": down,
                f"transformer.{module}.lora_B.weight": part,
            }
        formats["ai-toolkit"] |= {
            f"diffusion_model.{bfl}.lora_A.weight": down,
            f"diffusion_model.{bfl}.lora_B.weight": up,
        }
        formats["kohya"] |= kohya(bfl, down, up)
    return formats


def write(root: Path, name: str, tensors: dict[str, torch.Tensor]) -> str:
    path = root / "loras" / f"{name}.safetensors"
    path.parent.mkdir(exist_ok=True)
    save_file({key: value.clone().contiguous() for key, value in tensors.items()}, str(path))
    return f"loras/{name}.safetensors"


def sha(worker: Worker, job_id: str, **fields: Any) -> str:
    result = worker.handle_sync({"id": job_id, "input": {**SMALL, **fields}})
    assert "error" not in result, result
    return result["outputs"][0]["sha256"]


@pytest.mark.parametrize(
    ("model", "formats"), [("z-image-turbo", zimage_formats), ("flux2-klein-4b", flux2_formats)]
)
def test_every_format_applies_the_same_lora_for_one_job_only(
    image_worker: Worker, model: str, formats: Any
) -> None:
    root = image_worker.volume.root
    pipe = resident_pipe(image_worker, model)
    before = snapshot(pipe)
    base = sha(image_worker, f"lora-{model}-base", model=model)
    drawn = {}
    for name, tensors in formats(pipe).items():
        path = write(root, f"{model}-{name}", tensors)
        drawn[name] = sha(image_worker, f"lora-{model}-{name}", model=model, loras=[{"path": path}])
        assert_same(before, snapshot(resident_pipe(image_worker, model)))
    assert len(set(drawn.values())) == 1, drawn
    assert drawn["diffusers"] != base
    half = sha(
        image_worker,
        f"lora-{model}-half",
        model=model,
        loras=[{"path": f"loras/{model}-kohya.safetensors", "scale": 0.5}],
    )
    assert half not in (base, drawn["kohya"])
    zero = sha(
        image_worker,
        f"lora-{model}-zero",
        model=model,
        loras=[{"path": f"loras/{model}-ai-toolkit.safetensors", "scale": 0}],
    )
    assert zero == base
    assert sha(image_worker, f"lora-{model}-after", model=model) == base


def test_a_lora_of_another_family_is_a_field_error(image_worker: Worker) -> None:
    root = image_worker.volume.root
    zimage = write(
        root, "cross-zimage", zimage_formats(resident_pipe(image_worker, "z-image-turbo"))["kohya"]
    )
    flux2 = write(
        root, "cross-flux2", flux2_formats(resident_pipe(image_worker, "flux2-klein-4b"))["ai-toolkit"]
    )
    sdxl = write(root, "cross-sdxl", kohya("down_blocks.1.attentions.0.proj_in", *pair(32, 32, 0)))
    cases = [
        ("z-image-turbo", flux2, "Z-Image model: it is a FLUX.2 [klein] LoRA (model flux2-klein-4b)"),
        ("z-image-turbo", sdxl, "Z-Image model: it is a SDXL LoRA (model sdxl-base)"),
        ("flux2-klein-4b", zimage, "FLUX.2 [klein] model: it is a Z-Image LoRA (model z-image-turbo)"),
        ("sdxl-base", flux2, "SDXL model: it is a FLUX.2 [klein] LoRA (model flux2-klein-4b)"),
    ]
    for model, path, reason in cases:
        before = snapshot(resident_pipe(image_worker, model))
        own = {"z-image-turbo": zimage, "flux2-klein-4b": flux2, "sdxl-base": None}[model]
        loras = [{"path": own}, {"path": path}] if own else [{"path": path}]
        result = image_worker.handle_sync({"id": "cross", "input": {**SMALL, "model": model, "loras": loras}})
        assert result == {"error": f"loras.{len(loras) - 1}: not a LoRA for this {reason}"}
        assert_same(before, snapshot(resident_pipe(image_worker, model)))
