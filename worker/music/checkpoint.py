"""The official checkpoint layout, and loading its safetensors into our modules by their own key names.

```
<root>/HeartMuLa-oss-<version>/   config.json + model.safetensors.index.json + shards (or model.safetensors)
<root>/HeartCodec-oss/            config.json + model.safetensors.index.json + shards (or model.safetensors)
<root>/tokenizer.json, <root>/gen_config.json
```
Only the tensors a module needs are read, so the codec's audio encoder and the VQ training buffers in the
files are never loaded. Weight-normed layers may be stored as `parametrizations.weight.original0/1` or
`weight_g/weight_v`; both are folded into a plain weight at load time.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import nn

from worker.music.codec import HeartCodec
from worker.music.lm import HeartMuLa
from worker.music.model_config import CodecConfig, GenConfig, LMConfig, read_json

LM_PREFIX = "HeartMuLa-oss-"
CODEC_DIR = "HeartCodec-oss"
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"

_DOWNLOAD_HINT = (
    "Download the official files into this layout: HeartMuLa/HeartMuLaGen -> <root>/ (tokenizer.json, "
    "gen_config.json), HeartMuLa/HeartMuLa-oss-3B-happy-new-year -> <root>/HeartMuLa-oss-3B/, "
    "HeartMuLa/HeartCodec-oss-20260123 -> <root>/HeartCodec-oss/."
)


class CheckpointError(FileNotFoundError):
    """The checkpoint folder is incomplete or does not match the models; the message says what to fix."""


@dataclass(frozen=True)
class Layout:
    root: Path
    version: str
    lm_dir: Path
    codec_dir: Path
    tokenizer: Path
    gen_config: Path


def detect_version(root: Path) -> str:
    """The version of the single `HeartMuLa-oss-<version>` folder under root."""
    found = sorted(p.name[len(LM_PREFIX) :] for p in root.glob(LM_PREFIX + "*") if p.is_dir())
    if len(found) == 1:
        return found[0]
    if not found:
        raise CheckpointError(f"{root} has no {LM_PREFIX}<version>/ folder. {_DOWNLOAD_HINT}")
    raise CheckpointError(f"{root} has several LM folders ({', '.join(found)}); pass version= to choose one")


def validate_layout(root: str | Path, version: str | None = None) -> Layout:
    """Checks every file the pipeline reads exists; one error names each missing file."""
    root = Path(root)
    if not root.is_dir():
        raise CheckpointError(f"checkpoint root {root} is not a directory. {_DOWNLOAD_HINT}")
    version = version or detect_version(root)
    layout = Layout(
        root=root,
        version=version,
        lm_dir=root / f"{LM_PREFIX}{version}",
        codec_dir=root / CODEC_DIR,
        tokenizer=root / "tokenizer.json",
        gen_config=root / "gen_config.json",
    )
    missing = [p for p in (layout.tokenizer, layout.gen_config) if not p.is_file()]
    for folder in (layout.lm_dir, layout.codec_dir):
        missing += _missing_model_files(folder)
    if missing:
        listed = "\n".join(f"  - {p}" for p in missing)
        raise CheckpointError(f"the checkpoint at {root} is incomplete; missing:\n{listed}\n{_DOWNLOAD_HINT}")
    return layout


def _missing_model_files(folder: Path) -> list[Path]:
    missing = [] if (folder / "config.json").is_file() else [folder / "config.json"]
    index = folder / INDEX_FILE
    if index.is_file():
        shards = sorted(set(_weight_map(index).values()))
        return missing + [folder / s for s in shards if not (folder / s).is_file()]
    if not (folder / SINGLE_FILE).is_file():
        missing.append(folder / f"{INDEX_FILE} (or {SINGLE_FILE})")
    return missing


def _weight_map(index: Path) -> dict[str, str]:
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CheckpointError(
            f"{index} is not a safetensors index with a weight_map; download it again"
        ) from exc
    return dict(weight_map)


class WeightReader:
    """Lazy access to the tensors of one sharded or single-file safetensors folder."""

    def __init__(self, folder: Path, stack: ExitStack) -> None:
        index = folder / INDEX_FILE
        files = _weight_map(index) if index.is_file() else None
        self.folder = folder
        self._handles: dict[str, Any] = {}
        self._where: dict[str, str] = {}
        for name in sorted(set(files.values())) if files is not None else [SINGLE_FILE]:
            handle = stack.enter_context(safe_open(str(folder / name), framework="pt", device="cpu"))
            self._handles[name] = handle
            # Trust the files over the index: a key is wherever it actually is.
            self._where.update({key: name for key in handle.keys()})  # noqa: SIM118 (safe_open is no dict)

    def __contains__(self, key: str) -> bool:
        return key in self._where

    def get(self, key: str) -> torch.Tensor:
        return self._handles[self._where[key]].get_tensor(key)

    def resolve(self, key: str) -> torch.Tensor | None:
        """The tensor for a module key, folding weight norm where the file stores `X.weight` as (g, v)."""
        if key in self:
            return self.get(key)
        if not key.endswith(".weight"):
            return None
        base = key[: -len(".weight")]
        for g_key, v_key in (
            (f"{base}.parametrizations.weight.original0", f"{base}.parametrizations.weight.original1"),
            (f"{base}.weight_g", f"{base}.weight_v"),
        ):
            if g_key in self and v_key in self:
                return fold_weight_norm(self.get(g_key), self.get(v_key))
        return None


@contextmanager
def open_weights(folder: Path) -> Iterator[WeightReader]:
    with ExitStack() as stack:
        yield WeightReader(folder, stack)


def fold_weight_norm(g: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """`g · v / ‖v‖`, the norm over every dim but 0 (for a transposed conv, dim 0 is its input channels)."""
    norm = v.flatten(1).norm(dim=1).view(-1, *([1] * (v.dim() - 1)))
    return v * (g / norm)  # torch's own _weight_norm order, so the folded weight is the one it computes


def load_into(module: nn.Module, reader: WeightReader, device: torch.device, dtype: torch.dtype) -> None:
    """Assigns every parameter/persistent buffer of `module` (built on the meta device) from the files."""
    expected = module.state_dict()
    state: dict[str, torch.Tensor] = {}
    missing: list[str] = []
    wrong: list[str] = []
    for key, ref in expected.items():
        tensor = reader.resolve(key)
        if tensor is None:
            missing.append(key)
        elif tuple(tensor.shape) != tuple(ref.shape):
            wrong.append(f"{key}: file {tuple(tensor.shape)}, config {tuple(ref.shape)}")
        else:
            target = dtype if tensor.is_floating_point() else tensor.dtype
            state[key] = tensor.to(device=device, dtype=target)
    if missing or wrong:
        problems = [f"  - missing {k}" for k in missing[:20]] + [f"  - shape {w}" for w in wrong[:20]]
        more = len(missing) + len(wrong) - len(problems)
        raise CheckpointError(
            f"the weights in {reader.folder} do not match its config.json:\n"
            + "\n".join(problems)
            + (f"\n  ... and {more} more" if more > 0 else "")
            + "\nCheck that config.json belongs to these weights, or download the folder again."
        )
    module.load_state_dict(state, strict=True, assign=True)


def load_lm(
    folder: Path,
    *,
    device: torch.device,
    dtype: torch.dtype,
    flavors: Mapping[str, Mapping[str, Any]] | None = None,
) -> HeartMuLa:
    cfg = LMConfig.from_dict(read_json(folder / "config.json"), flavors)
    with torch.device("meta"):
        model = HeartMuLa(cfg)
    with open_weights(folder) as reader:
        load_into(model, reader, device, dtype)
    model.rebuild_buffers()
    return model.eval()


def load_codec(folder: Path, *, device: torch.device, dtype: torch.dtype = torch.float32) -> HeartCodec:
    cfg = CodecConfig.from_dict(read_json(folder / "config.json"))
    with torch.device("meta"):
        codec = HeartCodec(cfg)
    with open_weights(folder) as reader:
        load_into(codec, reader, device, dtype)
    return codec.eval()


def load_gen_config(path: Path) -> GenConfig:
    return GenConfig.from_dict(read_json(path))
