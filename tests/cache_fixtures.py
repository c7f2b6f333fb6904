"""Helpers for the cache tests: fake repos, a running fake Hub, and `python -m cache` run as real processes."""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from hub_server import FakeHub, FakeRepo

ROOT = Path(__file__).resolve().parents[1]
# Short enough to keep the takeover tests fast, long enough that a busy 2-core machine never misses a heartbeat.
LEASE_S = 3.0


def random_bytes(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def sharded_files(
    prefix: str = "", *, shards: int = 3, shard_size: int = 400_000, seed: int = 0
) -> dict[str, bytes]:
    """A transformers-style checkpoint: config, a weight index and its shards (LFS-sized)."""
    names = [f"model-{i:05d}-of-{shards:05d}.safetensors" for i in range(1, shards + 1)]
    files = {f"{prefix}{name}": random_bytes(seed + i, shard_size) for i, name in enumerate(names)}
    index = {"metadata": {}, "weight_map": {f"layer{i}.weight": name for i, name in enumerate(names)}}
    files[f"{prefix}model.safetensors.index.json"] = json.dumps(index).encode()
    files[f"{prefix}config.json"] = json.dumps({"seed": seed}).encode()
    return files


def make_repo(repo_id: str = "org/model", **kwargs: object) -> FakeRepo:
    files = kwargs.pop("files", None) or {**sharded_files(), "README.md": b"# a fake model\n"}
    return FakeRepo(repo_id, files, **kwargs)  # type: ignore[arg-type]


def running_hub() -> Iterator[FakeHub]:
    """A started fake Hub; test modules turn it into their `hub` fixture with `hub = pytest.fixture(running_hub)`."""
    with FakeHub() as running:
        yield running


def cli_env(volume: Path, hub: FakeHub | None = None, **extra: str) -> dict[str, str]:
    """The environment of a worker on `volume` talking to `hub`, isolated from the caller's HF settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING")) and k != "TMPDIR"}
    env.update(
        VOLUME_ROOT=str(volume),
        RUNPOD_HF_CACHE_DIR=str(volume / "no-runpod-cache"),
        BAKED_MODELS_DIR=str(volume / "no-baked-models"),
        HF_HUB_DISABLE_TELEMETRY="1",
        LOG_LEVEL="INFO",
        PYTHONPATH=str(ROOT),
    )
    if hub is not None:
        env["HF_ENDPOINT"] = hub.endpoint
    env.update(extra)
    return env


def cache_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "cache", *args, "--lease-s", str(LEASE_S)]


def run_cli(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cache_cmd(*args), env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )


def spawn_cli(*args: str, env: dict[str, str], log: Path) -> subprocess.Popen[str]:
    """Start the CLI; stdout is piped (it carries only the path), stderr goes to `log` so it never blocks."""
    return subprocess.Popen(
        cache_cmd(*args), env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=log.open("w"), text=True
    )


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def file_digests(root: Path) -> dict[str, str]:
    """sha256 of every file under `root` except the manifest, by relative path."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != ".complete.json"
    }


def repo_digests(repo: FakeRepo, subdir: str = "") -> dict[str, str]:
    prefix = f"{subdir}/" if subdir else ""
    return {f"{prefix}{path}": hashlib.sha256(data).hexdigest() for path, data in repo.files.items()}


def staging_leftovers(models: Path) -> list[str]:
    """Everything under models/.staging except the (empty) trash folder."""
    staging = models / ".staging"
    if not staging.is_dir():
        return []
    return sorted(p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.name != ".trash")


def safetensors_bytes(tensors: dict[str, int], seed: int = 0) -> bytes:
    """A valid `.safetensors` file of float32 tensors with random values: name -> element count."""
    header, offset = {}, 0
    for name, count in tensors.items():
        header[name] = {"dtype": "F32", "shape": [count], "data_offsets": [offset, offset + 4 * count]}
        offset += 4 * count
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw + random_bytes(seed, offset)


def sdxl_checkpoint_bytes(size: int = 1_000_000, seed: int = 0) -> bytes:
    """Shaped like an SDXL single-file checkpoint to its header (UNet, VAE, both text encoders); about `size` bytes."""
    quarter = size // 16
    return safetensors_bytes(
        {
            "model.diffusion_model.input_blocks.0.0.weight": quarter,
            "first_stage_model.decoder.conv_in.weight": quarter,
            "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight": quarter,
            "conditioner.embedders.1.model.ln_final.weight": quarter,
        },
        seed,
    )


def lora_bytes(size: int = 200_000, seed: int = 0) -> bytes:
    """Shaped like a kohya SDXL LoRA to its header."""
    half = size // 8
    return safetensors_bytes(
        {
            "lora_unet_input_blocks_4_1_proj_in.lora_down.weight": half,
            "lora_unet_input_blocks_4_1_proj_in.lora_up.weight": half,
        },
        seed,
    )
