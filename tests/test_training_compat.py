"""The kohya file as other tools read it: ComfyUI's (and A1111's) key mapping matches every key, diffusers'
`load_lora_weights` uses every module; the layer sets (kohya, attention, a list); the kohya metadata of min-SNR,
noise offset and the optimizer; the two sd-scripts hashes against an independent computation; the 8-bit
optimizer refused on a CPU."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from safetensors import safe_open
from training_fixtures import (  # noqa: F401  (fixtures are found by name)
    TRAINING,
    Chain,
    Lab,
    assert_same_state,
    chain_fixture,
    lab_fixture,
    one_thread_fixture,
    snapshot,
    tiny_ip_adapter_dir_fixture,
)

from worker.schemas import JobInputError, parse_job
from worker.training.hashes import with_hashes

pytestmark = pytest.mark.usefixtures("one_thread")

# ComfyUI's names (comfy/lora.py LORA_CLIP_MAP, comfy/utils.py TRANSFORMER_BLOCKS and UNET_MAP_ATTENTIONS), the
# Linear layers among them
COMFY_CLIP = {
    "mlp.fc1": "mlp_fc1",
    "mlp.fc2": "mlp_fc2",
    "self_attn.q_proj": "self_attn_q_proj",
    "self_attn.k_proj": "self_attn_k_proj",
    "self_attn.v_proj": "self_attn_v_proj",
    "self_attn.out_proj": "self_attn_out_proj",
}
COMFY_BLOCK_LINEARS = [
    *(f"attn{n}.{p}" for n in (1, 2) for p in ("to_q", "to_k", "to_v", "to_out.0")),
    "ff.net.0.proj",
    "ff.net.2",
]
COMFY_ATTENTION_LINEARS = ["proj_in", "proj_out"]


def comfy_unet_map(unet: Any) -> dict[str, str]:
    """sgm module name → diffusers module name for the transformer parts of a diffusers SDXL UNet, laid out from
    its config the way ComfyUI's `unet_to_diffusers` lays out the sgm UNet: input block 0 is conv_in, each level
    has `layers_per_block` (res, attention) blocks then a downsampler; the output levels one block more."""
    config = unet.config
    per_level = config.layers_per_block
    depth = list(config.transformer_layers_per_block)
    out_depth = list(config.reverse_transformer_layers_per_block or reversed(depth))
    sgm: dict[str, str] = {}

    def attention(diffusers: str, name: str, blocks: int) -> None:
        for linear in COMFY_ATTENTION_LINEARS:
            sgm[f"{name}.{linear}"] = f"{diffusers}.{linear}"
        for block in range(blocks):
            for linear in COMFY_BLOCK_LINEARS:
                sgm[f"{name}.transformer_blocks.{block}.{linear}"] = (
                    f"{diffusers}.transformer_blocks.{block}.{linear}"
                )

    for level, kind in enumerate(config.down_block_types):
        for index in range(per_level):
            if kind.startswith("CrossAttn"):
                block = 1 + (per_level + 1) * level + index
                attention(f"down_blocks.{level}.attentions.{index}", f"input_blocks.{block}.1", depth[level])
    attention("mid_block.attentions.0", "middle_block.1", depth[-1])
    for level, kind in enumerate(config.up_block_types):
        for index in range(per_level + 1):
            if kind.startswith("CrossAttn"):
                block = (per_level + 1) * level + index
                attention(
                    f"up_blocks.{level}.attentions.{index}", f"output_blocks.{block}.1", out_depth[level]
                )
    return sgm


def comfy_key_map(pipe: Any) -> dict[str, tuple[Any, str]]:
    """LoRA module name → (the model, the module's name there), as ComfyUI's `model_lora_keys_unet` (every
    `diffusion_model.<sgm>.weight` as `lora_unet_<sgm with dots as underscores>`) and `model_lora_keys_clip`
    (`lora_te1_`/`lora_te2_text_model_encoder_layers_<n>_<layer>` for CLIP-L and CLIP-G) build it."""
    key_map: dict[str, tuple[Any, str]] = {}
    for sgm, diffusers in comfy_unet_map(pipe.unet).items():
        key_map["lora_unet_" + sgm.replace(".", "_")] = (pipe.unet, diffusers)
    for prefix, encoder in (("lora_te1", pipe.text_encoder), ("lora_te2", pipe.text_encoder_2)):
        for layer in range(encoder.config.num_hidden_layers):
            for module, lora in COMFY_CLIP.items():
                key_map[f"{prefix}_text_model_encoder_layers_{layer}_{lora}"] = (
                    encoder,
                    f"encoder.layers.{layer}.{module}",
                )
    return key_map


def comfy_load(pipe: Any, path: Path) -> tuple[int, set[str]]:
    """What ComfyUI's `load_lora` does with the file: (modules patched, keys it would warn it did not load);
    each patch's up @ down must have the patched weight's shape."""
    with safe_open(str(path), framework="pt") as handle:
        lora = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (not a dict)
    loaded: set[str] = set()
    patched = 0
    for name, (model, module) in comfy_key_map(pipe).items():
        up, down, alpha = f"{name}.lora_up.weight", f"{name}.lora_down.weight", f"{name}.alpha"
        if up not in lora:
            continue
        # CLIPTextModelWithProjection keeps the CLIP text model under `text_model`; CLIPTextModel is it
        inner = getattr(model, "text_model", model) if name.startswith("lora_te") else model
        weight = inner.get_submodule(module).weight
        assert (lora[up] @ lora[down]).shape == weight.shape, name
        loaded |= {up, down} | ({alpha} if alpha in lora else set())
        patched += 1
    return patched, set(lora) - loaded


def modules_in(path: Path) -> set[str]:
    with safe_open(str(path), framework="pt") as handle:
        return {key.rsplit(".", 2)[0] for key in handle.keys() if key.endswith(".lora_down.weight")}  # noqa: SIM118


def lora_file(lab: Lab, job_id: str, name: str) -> Path:
    return lab.store.root / job_id / "lora" / f"{name}.safetensors"


def test_kohya_file_loads_in_comfyui_with_every_key_matched(chain: Chain, lab: Lab) -> None:
    path = lora_file(lab, "chain-training", "robot")
    patched, unmatched = comfy_load(lab.pipe, path)
    assert unmatched == set()
    assert patched == len(modules_in(path)) == 192


@pytest.mark.slow
def test_text_encoder_layers_match_comfyui_too(chain: Chain, lab: Lab) -> None:
    job = {
        **TRAINING,
        "dataset_job_id": "chain-dataset",
        "train_text_encoder": True,
        "steps": 1,
        "sample_every": 0,
        "checkpoint_every": 0,
        "sample_grid": False,
        "name": "te",
    }
    result = lab.run("compat-te", job)
    assert "error" not in result, result
    path = lora_file(lab, "compat-te", "te")
    patched, unmatched = comfy_load(lab.pipe, path)
    text = {module for module in modules_in(path) if module.startswith("lora_te")}
    # 2 encoders x 2 layers x (q, k, v, out, fc1, fc2)
    assert unmatched == set() and len(text) == 2 * 2 * 6 and patched == 192 + len(text)
    assert_same_state(chain.base, snapshot(lab.pipe))


def test_diffusers_uses_every_module_of_the_kohya_file(chain: Chain, lab: Lab) -> None:
    from peft.tuners.lora import LoraLayer

    from worker.training.trainer import ResidentGuard

    path = lora_file(lab, "chain-training", "robot")
    guard = ResidentGuard(lab.pipe)
    lab.pipe.load_lora_weights(str(path), adapter_name="every-key")
    try:
        wrapped = [
            name
            for name, module in lab.pipe.unet.named_modules()
            if isinstance(module, LoraLayer) and "every-key" in module.lora_A
        ]
    finally:
        guard.restore()
    assert len(wrapped) == len(modules_in(path)) == 192


@pytest.mark.slow
def test_attention_and_explicit_layer_sets_with_min_snr_noise_offset_in_the_metadata(
    chain: Chain, lab: Lab
) -> None:
    base = {
        **TRAINING,
        "dataset_job_id": "chain-dataset",
        "steps": 2,
        "sample_every": 0,
        "sample_grid": False,
    }
    cases = [
        ("attention", 17 * 8, {"min_snr_gamma": 5.0, "noise_offset": 0.05}),
        (["to_q", "ff.net.2", "proj_in"], 17 * 3 + 11, {}),  # to_q: attn1's and attn2's
    ]
    for index, (targets, count, extra) in enumerate(cases):
        job_id = f"compat-targets-{index}"
        result = lab.run(job_id, {**base, "target_modules": targets, "checkpoint_every": 0, **extra})
        assert "error" not in result, result
        path = lora_file(lab, job_id, "robot")
        assert len(modules_in(path)) == count
        assert comfy_load(lab.pipe, path)[1] == set()
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata()
        assert metadata["ss_optimizer"] == "torch.optim.adamw.AdamW(weight_decay=0.01)"
        assert metadata["ss_min_snr_gamma"] == str(extra.get("min_snr_gamma"))
        assert metadata["ss_noise_offset"] == str(extra.get("noise_offset"))
    assert_same_state(chain.base, snapshot(lab.pipe))


def test_min_snr_weight_is_min_snr_over_snr(chain: Chain, lab: Lab) -> None:
    import torch

    from worker.pipelines.training import train_settings
    from worker.training.trainer import LoraTrainer

    job = parse_job({**TRAINING, "dataset_job_id": "x", "min_snr_gamma": 5.0})
    with LoraTrainer(lab.pipe, train_settings(job, 0)) as trainer:
        timesteps = torch.tensor([0, 100, 500, 999])
        weights = trainer.snr_weight(timesteps)
        alphas = trainer.noise_scheduler.alphas_cumprod[timesteps]
    snr = alphas / (1 - alphas)
    expected = [min(value, 5.0) / value for value in snr.tolist()]
    assert weights.tolist() == pytest.approx(expected, rel=1e-5)
    assert weights[0] < 0.01 and weights[-1] == pytest.approx(1.0)  # the near-clean step is damped
    assert_same_state(chain.base, snapshot(lab.pipe))


def independent_hashes(tensors: dict[str, Any], metadata: dict[str, str]) -> tuple[str, str]:
    """sd-scripts' recipe, rewritten: save with the ss_* metadata alone, hash the bytes after the header, and the
    64 KiB at 1 MiB."""
    from safetensors.torch import save

    data = save(tensors, metadata={k: v for k, v in metadata.items() if k.startswith("ss_")})
    header = int.from_bytes(data[:8], "little")
    return hashlib.sha256(data[8 + header :]).hexdigest(), hashlib.sha256(
        data[0x100000:0x110000]
    ).hexdigest()[:8]


def test_sshs_hashes_as_sd_scripts_computes_them(chain: Chain, lab: Lab) -> None:
    import torch

    path = lora_file(lab, "chain-training", "robot")
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    assert (metadata["sshs_model_hash"], metadata["sshs_legacy_hash"]) == independent_hashes(
        tensors, metadata
    )
    # the model hash covers the tensors only: A1111's hash of the saved file itself agrees
    data = path.read_bytes()
    assert (
        metadata["sshs_model_hash"]
        == hashlib.sha256(data[8 + int.from_bytes(data[:8], "little") :]).hexdigest()
    )
    # a file past 1 MiB, so the legacy hash reads real bytes
    big = {"lora_unet_x.lora_down.weight": torch.arange(400_000, dtype=torch.float32).reshape(1000, 400)}
    info = {"ss_network_dim": "4", "modelspec.title": "t"}
    hashed = with_hashes(big, info)
    assert (hashed["sshs_model_hash"], hashed["sshs_legacy_hash"]) == independent_hashes(big, info)
    assert hashed["sshs_legacy_hash"] != hashlib.sha256(b"").hexdigest()[:8]
    assert (
        with_hashes(big, {**info, "modelspec.title": "other"})["sshs_legacy_hash"]
        == hashed["sshs_legacy_hash"]
    )


def test_adamw8bit_is_refused_on_a_cpu(chain: Chain, lab: Lab) -> None:
    result = lab.run("compat-8bit", {**TRAINING, "dataset_job_id": "chain-dataset", "optimizer": "adamw8bit"})
    assert result["error"].startswith("optimizer: adamw8bit needs a CUDA GPU"), result
    assert not (lab.store.root / "compat-8bit" / "lora").exists()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"target_modules": "all"}, 'target_modules: "attention", "kohya" or a list of layer names'),
        ({"target_modules": ["to_q", "conv1"]}, "target_modules: unknown layer 'conv1'"),
        ({"target_modules": ["fc1"]}, "target_modules: name at least one UNet layer"),
        ({"optimizer": "lion"}, "optimizer: "),
        ({"min_snr_gamma": 0}, "min_snr_gamma: "),
        ({"noise_offset": 2}, "noise_offset: "),
    ],
)
def test_bad_training_options_are_field_errors(fields: dict, message: str) -> None:
    with pytest.raises(JobInputError) as error:
        parse_job({**TRAINING, "dataset_job_id": "some-job", **fields})
    assert str(error.value).startswith(message), str(error.value)


def test_bucket_info_metadata(chain: Chain, lab: Lab) -> None:
    with safe_open(str(lora_file(lab, "chain-training", "robot")), framework="pt") as handle:
        metadata = handle.metadata()
    info = json.loads(metadata["ss_bucket_info"])
    assert info["buckets"] == {"0": {"resolution": [64, 64], "count": 2}}
    assert metadata["ss_enable_bucket"] == "True"
