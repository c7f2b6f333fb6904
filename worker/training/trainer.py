"""LoRA training with PEFT on the resident SDXL pipeline, which must come back bit-for-bit unchanged.

`ResidentGuard` records what training touches on the shared pipeline (every parameter's `requires_grad`, each
module's train/eval mode, gradient checkpointing, the VAE dtype) and restores it after removing the adapters.
`LoraTrainer` runs the steps: fp32 LoRA parameters, bf16 autocast on CUDA when asked, fp32 on CPU.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Self

ADAPTER = "training_lora"  # not "train": PEFT adds the name as a module attribute, and nn.Module.train exists
UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
TEXT_ENCODER_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
MAX_GRAD_NORM = 1.0
WEIGHT_DECAY = 1e-2


@dataclass(frozen=True)
class TrainSettings:
    rank: int
    alpha: float
    steps: int
    learning_rate: float
    lr_scheduler: str
    warmup_steps: int
    batch_size: int
    train_text_encoder: bool
    mixed_precision: str
    gradient_checkpointing: bool
    caption_dropout: float
    seed: int


def _components(pipe: Any) -> dict[str, Any]:
    names = ("unet", "vae", "text_encoder", "text_encoder_2")
    return {name: getattr(pipe, name) for name in names if getattr(pipe, name, None) is not None}


class ResidentGuard:
    """Restores the resident pipeline after training, whatever happened during it."""

    def __init__(self, pipe: Any) -> None:
        self.pipe = pipe
        components = _components(pipe)
        self._requires_grad = [
            (param, param.requires_grad) for module in components.values() for param in module.parameters()
        ]
        self._modes = [(sub, sub.training) for module in components.values() for sub in module.modules()]
        self._checkpointing = pipe.unet.is_gradient_checkpointing
        self._vae_dtype = pipe.vae.dtype

    def restore(self) -> None:
        """Remove every adapter (unwrapping PEFT's layers back to the original modules) and reset the flags."""
        self.pipe.unload_lora_weights()
        for param, flag in self._requires_grad:
            param.requires_grad_(flag)
            param.grad = None
        for module, training in self._modes:
            module.training = training
        if self.pipe.unet.is_gradient_checkpointing != self._checkpointing:
            if self._checkpointing:
                self.pipe.unet.enable_gradient_checkpointing()
            else:
                self.pipe.unet.disable_gradient_checkpointing()
        if self.pipe.vae.dtype != self._vae_dtype:
            self.pipe.vae.to(self._vae_dtype)


class LoraTrainer:
    """One LoRA training run on `pipe`. Use as a context manager: leaving it restores the pipeline."""

    def __init__(self, pipe: Any, settings: TrainSettings) -> None:
        self.pipe = pipe
        self.settings = settings
        self.device = pipe.unet.device
        self.optimizer: Any = None
        self.lr_scheduler: Any = None
        self.noise_scheduler: Any = None
        self.params: list[Any] = []
        self._guard: ResidentGuard | None = None

    @property
    def autocast_dtype(self) -> Any:
        """bf16 on CUDA when asked; None (no autocast, fp32 here) otherwise."""
        import torch

        if self.device.type == "cuda" and self.settings.mixed_precision == "bf16":
            return torch.bfloat16
        return None

    @property
    def prediction_type(self) -> str:
        return self.noise_scheduler.config.prediction_type

    @property
    def layers_per_block(self) -> int:
        return int(self.pipe.unet.config.layers_per_block)

    def __enter__(self) -> Self:
        import torch
        from diffusers import DDPMScheduler
        from diffusers.optimization import get_scheduler
        from peft import inject_adapter_in_model

        self._guard = ResidentGuard(self.pipe)
        try:
            for module in _components(self.pipe).values():
                module.requires_grad_(False)
            unet = self.pipe.unet
            unet.add_adapter(self.lora_config(UNET_TARGETS), adapter_name=ADAPTER)
            trained = [unet]
            if self.settings.train_text_encoder:
                for encoder in (self.pipe.text_encoder, self.pipe.text_encoder_2):
                    # PEFT directly, as diffusers loads text encoder LoRAs: transformers' own add_adapter
                    # demands a newer PEFT than the one pinned here
                    inject_adapter_in_model(
                        self.lora_config(TEXT_ENCODER_TARGETS), encoder, adapter_name=ADAPTER
                    )
                    trained.append(encoder)
            for module in trained:
                module.train()
                for param in module.parameters():
                    if param.requires_grad:
                        # fp32 master weights: the base may be fp16, and fp16 Adam updates underflow
                        param.data = param.data.float()
                        self.params.append(param)
            if self.settings.gradient_checkpointing:
                unet.enable_gradient_checkpointing()
            self.noise_scheduler = DDPMScheduler.from_config(self.pipe.scheduler.config)
            self.optimizer = torch.optim.AdamW(
                self.params, lr=self.settings.learning_rate, weight_decay=WEIGHT_DECAY
            )
            schedule = self.settings.lr_scheduler
            if schedule == "constant" and self.settings.warmup_steps:
                schedule = "constant_with_warmup"
            self.lr_scheduler = get_scheduler(
                schedule,
                self.optimizer,
                num_warmup_steps=self.settings.warmup_steps,
                num_training_steps=self.settings.steps,
            )
            self._generator = torch.Generator(device=self.device).manual_seed(self.settings.seed)
        except BaseException:
            self._restore()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._restore()

    def _restore(self) -> None:
        import torch

        self.optimizer = None
        self.lr_scheduler = None
        self.params = []
        if self._guard is not None:
            self._guard.restore()
            self._guard = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def lora_config(self, targets: tuple[str, ...]) -> Any:
        from peft import LoraConfig

        return LoraConfig(
            r=self.settings.rank,
            lora_alpha=self.settings.alpha,
            init_lora_weights="gaussian",
            target_modules=list(targets),
        )

    def adapter_metadata(self, component: str) -> dict[str, Any]:
        """The LoRA config diffusers stores beside the weights (rank, alpha, targets) to rebuild the adapter."""
        return self.lora_config(UNET_TARGETS if component == "unet" else TEXT_ENCODER_TARGETS).to_dict()

    def step(self, batch: dict[str, Any]) -> float:
        """One optimisation step on a batch from `TrainingData.batch`; returns the loss."""
        import torch
        import torch.nn.functional as F

        latents = batch["latents"]
        size = latents.shape[0]
        noise = torch.randn(latents.shape, generator=self._generator, device=self.device, dtype=latents.dtype)
        steps = self.noise_scheduler.config.num_train_timesteps
        timesteps = torch.randint(0, steps, (size,), generator=self._generator, device=self.device).long()
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        if self.prediction_type == "v_prediction":
            target = self.noise_scheduler.get_velocity(latents, noise, timesteps)
        else:
            target = noise
        dtype = self.pipe.unet.dtype
        autocast = self.autocast_dtype
        precision = (
            torch.autocast(self.device.type, dtype=autocast) if autocast is not None else nullcontext()
        )
        with precision:
            prediction = self.pipe.unet(
                noisy.to(dtype),
                timesteps,
                encoder_hidden_states=batch["prompt_embeds"].to(dtype),
                added_cond_kwargs={
                    "text_embeds": batch["pooled"].to(dtype),
                    "time_ids": batch["time_ids"].to(dtype),
                },
            ).sample
        loss = F.mse_loss(prediction.float(), target.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, MAX_GRAD_NORM)
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    @property
    def learning_rate(self) -> float:
        return float(self.lr_scheduler.get_last_lr()[0])

    def peft_state(self) -> dict[str, dict[str, Any]]:
        """The adapter's weights per component, copied to the CPU, named as PEFT names them but with the text
        encoders' modules under `text_model.` as in CLIP checkpoints (recent transformers flatten the module
        tree; ComfyUI, kohya and older diffusers expect the checkpoint names)."""
        from peft.utils import get_peft_model_state_dict

        components = {"unet": self.pipe.unet}
        if self.settings.train_text_encoder:
            components.update(text_encoder=self.pipe.text_encoder, text_encoder_2=self.pipe.text_encoder_2)
        state: dict[str, dict[str, Any]] = {}
        for name, module in components.items():
            flat = name != "unet" and not hasattr(module, "text_model")
            state[name] = {
                ("text_model." if flat else "") + key: value.detach().to("cpu", copy=True)
                for key, value in get_peft_model_state_dict(module, adapter_name=ADAPTER).items()
            }
        return state

    @contextmanager
    def sampling(self) -> Iterator[None]:
        """The pipeline in eval mode, generating with the adapter as trained so far."""
        modes = [
            (sub, sub.training) for module in _components(self.pipe).values() for sub in module.modules()
        ]
        for module in _components(self.pipe).values():
            module.eval()
        try:
            yield
        finally:
            for module, training in modes:
                module.training = training
