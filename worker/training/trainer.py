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
ATTENTION_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
TEXT_ATTENTION_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
# kohya-ss networks.lora: every Linear inside the UNet's Transformer2DModel blocks, and the CLIPAttention and
# CLIPMLP Linears of the text encoders
KOHYA_TARGETS = (*ATTENTION_TARGETS, "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2")
TEXT_KOHYA_TARGETS = (*TEXT_ATTENTION_TARGETS, "fc1", "fc2")
MAX_GRAD_NORM = 1.0
WEIGHT_DECAY = 1e-2


def resolve_targets(target_modules: str | list[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(UNet layer names, text encoder layer names) for the job's `target_modules`."""
    if target_modules == "attention":
        return ATTENTION_TARGETS, TEXT_ATTENTION_TARGETS
    if target_modules == "kohya":
        return KOHYA_TARGETS, TEXT_KOHYA_TARGETS
    names = list(target_modules)
    text = tuple(name for name in names if name in TEXT_KOHYA_TARGETS)
    # a list naming UNet layers only trains kohya's text encoder layers when train_text_encoder asks for them
    return tuple(name for name in names if name in KOHYA_TARGETS), text or TEXT_KOHYA_TARGETS


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
    unet_targets: tuple[str, ...] = KOHYA_TARGETS
    text_targets: tuple[str, ...] = TEXT_KOHYA_TARGETS
    min_snr_gamma: float | None = None
    noise_offset: float = 0.0
    optimizer: str = "adamw"


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
        from peft import inject_adapter_in_model

        self._guard = ResidentGuard(self.pipe)
        try:
            for module in _components(self.pipe).values():
                module.requires_grad_(False)
            unet = self.pipe.unet
            trained = [unet]
            # PEFT draws the initial lora_A from torch's global generator: seeded here, so the job's seed
            # decides the whole run, whatever ran before it in this process
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                torch.manual_seed(self.settings.seed)
                unet.add_adapter(self.lora_config(self.settings.unet_targets), adapter_name=ADAPTER)
                if self.settings.train_text_encoder:
                    for encoder in (self.pipe.text_encoder, self.pipe.text_encoder_2):
                        # PEFT directly, as diffusers loads text encoder LoRAs: transformers' own add_adapter
                        # demands a newer PEFT than the one pinned here
                        inject_adapter_in_model(
                            self.lora_config(self.settings.text_targets), encoder, adapter_name=ADAPTER
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
            self.optimizer = self.optimizer_class()(
                self.params, lr=self.settings.learning_rate, weight_decay=WEIGHT_DECAY
            )
            self.schedule(0)
            self.generator = torch.Generator(device=self.device).manual_seed(self.settings.seed)
        except BaseException:
            self._restore()
            raise
        return self

    def optimizer_class(self) -> type:
        import torch

        if self.settings.optimizer == "adamw8bit":
            if self.device.type != "cuda":
                raise RuntimeError("adamw8bit needs a CUDA device (bitsandbytes)")
            import bitsandbytes

            return bitsandbytes.optim.AdamW8bit
        return torch.optim.AdamW

    @property
    def optimizer_name(self) -> str:
        """As sd-scripts writes ss_optimizer: the class's full name, then its non-default arguments."""
        cls = type(self.optimizer)
        return f"{cls.__module__}.{cls.__name__}(weight_decay={WEIGHT_DECAY})"

    def schedule(self, steps_done: int) -> None:
        """The learning-rate schedule, standing after `steps_done` steps (0 for a fresh run, more on resume)."""
        from diffusers.optimization import get_scheduler

        for group in self.optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])  # what a scheduler started past step 0 requires
        schedule = self.settings.lr_scheduler
        if schedule == "constant" and self.settings.warmup_steps:
            schedule = "constant_with_warmup"
        self.lr_scheduler = get_scheduler(
            schedule,
            self.optimizer,
            num_warmup_steps=self.settings.warmup_steps,
            num_training_steps=self.settings.steps,
            last_epoch=steps_done - 1,
        )

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
        targets = self.settings.unet_targets if component == "unet" else self.settings.text_targets
        return self.lora_config(targets).to_dict()

    def step(self, batch: dict[str, Any]) -> float:
        """One optimisation step on a batch from `TrainingData.batch`; returns the loss."""
        import torch
        import torch.nn.functional as F

        latents = batch["latents"]
        size = latents.shape[0]
        noise = torch.randn(latents.shape, generator=self.generator, device=self.device, dtype=latents.dtype)
        if self.settings.noise_offset:
            # sd-scripts' noise offset: a per-channel constant shift, so the model learns to change the mean
            # brightness (very dark or light images)
            offset = torch.randn(
                (size, latents.shape[1], 1, 1),
                generator=self.generator,
                device=self.device,
                dtype=latents.dtype,
            )
            noise = noise + self.settings.noise_offset * offset
        steps = self.noise_scheduler.config.num_train_timesteps
        timesteps = torch.randint(0, steps, (size,), generator=self.generator, device=self.device).long()
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
        loss = F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
        if self.settings.min_snr_gamma is not None:
            loss = loss * self.snr_weight(timesteps)
        loss = loss.mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, MAX_GRAD_NORM)
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    def snr_weight(self, timesteps: Any) -> Any:
        """Min-SNR-γ (Hang et al. 2023, as sd-scripts applies it): min(SNR, γ) / SNR for ε-prediction,
        / (SNR + 1) for v-prediction, so the low-noise steps stop dominating the loss."""
        import torch

        alphas = self.noise_scheduler.alphas_cumprod.to(self.device)[timesteps].float()
        snr = alphas / (1 - alphas)
        clipped = torch.clamp(snr, max=self.settings.min_snr_gamma)
        return clipped / (snr + 1 if self.prediction_type == "v_prediction" else snr)

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

    def trained_parameters(self) -> dict[str, Any]:
        """The LoRA parameters by `<component>.<parameter name>`, in fp32 as trained (the resume state)."""
        components = {"unet": self.pipe.unet}
        if self.settings.train_text_encoder:
            components.update(text_encoder=self.pipe.text_encoder, text_encoder_2=self.pipe.text_encoder_2)
        return {
            f"{name}.{key}": param
            for name, module in components.items()
            for key, param in module.named_parameters()
            if param.requires_grad
        }

    @contextmanager
    def scaled(self, scale: float) -> Iterator[None]:
        """The adapter at `scale` times its trained strength for the block (1.0 as trained, 0.0 off)."""
        from peft.tuners.lora import LoraLayer

        layers = [
            module
            for component in _components(self.pipe).values()
            for module in component.modules()
            if isinstance(module, LoraLayer) and ADAPTER in module.scaling
        ]
        for layer in layers:
            layer.set_scale(ADAPTER, scale)
        try:
            yield
        finally:
            for layer in layers:
                layer.set_scale(ADAPTER, 1.0)

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
