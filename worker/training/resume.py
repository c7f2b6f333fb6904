"""Resumable training state: what a checkpoint needs beyond the LoRA itself to continue as if never stopped.

Beside each kohya checkpoint `checkpoints/<name>-step000050.safetensors` the run writes
`checkpoints/<name>-step000050.state.safetensors` (and one for the final step): the LoRA parameters in fp32 (the
kohya file holds fp16), the optimizer's per-parameter state, the noise generator, and in the metadata the step
count, the loss log so far and what the adapter is (base model, rank, alpha, layers, optimizer), which a resumed
job must match. Safetensors, not a pickle: a state file named by a caller is data, never code.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from worker.schemas import JobInputError

if TYPE_CHECKING:
    from worker.inputs import VolumeFiles
    from worker.job_folders import JobStore
    from worker.training.trainer import LoraTrainer

FORMAT = "gpu-worker/lora-training-state/1"
STATE_SUFFIX = ".state.safetensors"
CHECKPOINTS = "checkpoints"
FIELD = "resume_from"
_STEP = re.compile(r"-step(\d+)\.state\.safetensors$")


@dataclass(frozen=True)
class Identity:
    """What the adapter is: a resumed job must train the same one."""

    base_model: str
    rank: int
    alpha: float
    unet_targets: tuple[str, ...]
    text_targets: tuple[str, ...]
    train_text_encoder: bool
    optimizer: str

    def mismatch(self, other: Identity) -> tuple[str, str] | None:
        """(field, reason) of the first difference from the checkpoint `other`, or None."""
        checks = [
            ("rank", self.rank, other.rank),
            ("alpha", self.alpha, other.alpha),
            ("target_modules", self.unet_targets, other.unet_targets),
            ("train_text_encoder", self.train_text_encoder, other.train_text_encoder),
            ("optimizer", self.optimizer, other.optimizer),
        ]
        if self.train_text_encoder:
            checks.append(("target_modules", self.text_targets, other.text_targets))
        if self.base_model != other.base_model:
            return (
                FIELD,
                f"the checkpoint was trained on {other.base_model}, this job trains {self.base_model}",
            )
        for field, mine, theirs in checks:
            if mine != theirs:
                return (
                    field,
                    f"{_show(theirs)} in the checkpoint, {_show(mine)} here: they must match to resume",
                )
        return None


def _show(value: object) -> str:
    return ",".join(value) if isinstance(value, tuple) else str(value)


@dataclass
class TrainingState:
    """A loaded state file."""

    identity: Identity
    steps_done: int
    seed: int
    log: list[tuple[float, float]]  # (loss, lr) of every step so far
    tensors: dict[str, Any]
    scalars: dict[str, Any]  # the optimizer state's non-tensor values, "<index>.<key>"
    params: list[str]  # the trained parameters in the optimizer's order


def save_state(
    dest: Path, trainer: LoraTrainer, identity: Identity, steps_done: int, log: list[tuple[float, float]]
) -> None:
    """Write the state after `steps_done` steps, `log` holding each step's (loss, lr)."""
    import torch
    from safetensors.torch import save_file

    params = trainer.trained_parameters()
    index = {id(param): position for position, param in enumerate(trainer.params)}
    order = sorted(params, key=lambda name: index[id(params[name])])
    tensors: dict[str, Any] = {
        f"param.{name}": params[name].detach().float().cpu().contiguous() for name in order
    }
    scalars: dict[str, Any] = {}
    for position, values in trainer.optimizer.state_dict()["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{position}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{position}.{key}"] = value
    tensors["rng.noise"] = trainer.generator.get_state()
    metadata = {
        "format": FORMAT,
        "steps_done": str(steps_done),
        "seed": str(trainer.settings.seed),
        "identity": json.dumps(asdict(identity)),
        "params": json.dumps(order),
        "scalars": json.dumps(scalars),
        "log": json.dumps(log),
    }
    save_file(tensors, str(dest), metadata=metadata)


def load_state(path: Path) -> TrainingState:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            if metadata.get("format") != FORMAT:
                raise JobInputError(FIELD, f"{path.name} is not a training state file of this worker")
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (not a dict)
    except (SafetensorError, OSError) as error:
        raise JobInputError(FIELD, f"{path.name} cannot be read: {error}") from None
    raw = json.loads(metadata["identity"])
    identity = Identity(
        **{**raw, "unet_targets": tuple(raw["unet_targets"]), "text_targets": tuple(raw["text_targets"])}
    )
    return TrainingState(
        identity=identity,
        steps_done=int(metadata["steps_done"]),
        seed=int(metadata["seed"]),
        log=[(float(loss), float(lr)) for loss, lr in json.loads(metadata["log"])],
        tensors=tensors,
        scalars=json.loads(metadata["scalars"]),
        params=json.loads(metadata["params"]),
    )


def apply_state(state: TrainingState, trainer: LoraTrainer) -> None:
    """Put the checkpoint's parameters, optimizer state, schedule position and noise generator into a trainer
    that has just been set up with the same identity."""
    import torch

    params = trainer.trained_parameters()
    if sorted(params) != sorted(state.params):
        raise JobInputError("target_modules", "the checkpoint trained other layers than this job would")
    with torch.no_grad():
        for name in state.params:
            params[name].copy_(state.tensors[f"param.{name}"])
    index = {id(param): position for position, param in enumerate(trainer.params)}
    per_param: dict[int, dict[str, Any]] = {}
    for old, name in enumerate(state.params):
        new = index[id(params[name])]
        values = {
            key.removeprefix(f"optim.{old}."): tensor
            for key, tensor in state.tensors.items()
            if key.startswith(f"optim.{old}.")
        }
        values.update(
            {
                key.removeprefix(f"{old}."): value
                for key, value in state.scalars.items()
                if key.startswith(f"{old}.")
            }
        )
        if values:
            per_param[new] = values
    groups = trainer.optimizer.state_dict()["param_groups"]  # this job's hyper-parameters, the old moments
    trainer.optimizer.load_state_dict({"state": per_param, "param_groups": groups})
    trainer.schedule(state.steps_done)
    trainer.generator.set_state(state.tensors["rng.noise"])


def find_state(resume_from: str, store: JobStore, volume: VolumeFiles) -> Path:
    """The state file `resume_from` names: a training job's latest one (finished, cancelled or timed out: a
    checkpoint is written atomically, with or without a result), or a checkpoint file on the volume (the kohya
    file or its `.state.safetensors` sibling)."""
    from worker.job_folders import validate_job_id
    from worker_client.relpaths import UnsafePathError

    if "/" not in resume_from and not resume_from.endswith(".safetensors"):
        try:
            folder = store.root / validate_job_id(resume_from) / CHECKPOINTS
        except UnsafePathError:
            raise JobInputError(FIELD, f"{resume_from!r} is not a valid job id") from None
        states = sorted(
            (int(match.group(1)), path)
            for path in (folder.glob(f"*{STATE_SUFFIX}") if folder.is_dir() else ())
            if (match := _STEP.search(path.name))
        )
        if not states:
            raise JobInputError(FIELD, f"no training job {resume_from!r} with a resumable checkpoint here")
        return states[-1][1]
    path = volume.resolve(resume_from, FIELD, kind="file")
    if path.name.endswith(STATE_SUFFIX):
        return path
    sibling = path.with_name(path.name.removesuffix(".safetensors") + STATE_SUFFIX)
    if not sibling.is_file():
        raise JobInputError(FIELD, f"{path.name} has no {sibling.name} beside it: not a resumable checkpoint")
    return sibling


def state_relpath(name: str, steps_done: int) -> str:
    return f"{CHECKPOINTS}/{name}-step{steps_done:06d}{STATE_SUFFIX}"
