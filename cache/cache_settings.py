"""Every environment variable the model cache reads, parsed once, and the parsing helpers the worker's settings
reuse (so each variable is parsed in one place).

The cache must not import the worker: `python -m cache` runs in the image's bake stage with only `cache/` and
`worker_client/` present.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from worker_client.jobs import JOB_TYPES

from .catalog import IMAGE_FAMILIES, MUSIC_ENGINES

Profile = Literal["auto", "production", "tiny"]

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}

DEFAULT_RUNPOD_HF_CACHE = Path("/runpod-volume/huggingface-cache/hub")
DEFAULT_BAKED_DIR = Path("/models")
DEFAULT_HF_ENDPOINT = "https://huggingface.co"
DEFAULT_CIVITAI_API_URL = "https://civitai.com/api"
DEFAULT_MODEL_SOURCES = ("hf", "civitai")


class ConfigError(ValueError):
    """An environment variable holds a value the worker cannot use."""


def env_bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"{name}={raw!r}: expected true or false")


def env_float(env: Mapping[str, str], name: str, default: float, *, minimum: float = 0.0) -> float:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r}: expected a number") from None
    if value < minimum:
        raise ConfigError(f"{name}={raw!r}: must be at least {minimum}")
    return value


def env_int(env: Mapping[str, str], name: str, default: int, *, minimum: int = 0) -> int:
    value = env_float(env, name, default, minimum=minimum)
    if value != int(value):
        raise ConfigError(f"{name}={env.get(name)!r}: expected a whole number")
    return int(value)


def env_path(env: Mapping[str, str], name: str) -> Path | None:
    raw = env.get(name, "").strip()
    return Path(raw).expanduser() if raw else None


def env_list(env: Mapping[str, str], name: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
    """A comma-separated list, each entry stripped, duplicates dropped, order kept."""
    raw = env.get(name)
    if raw is None:
        return default
    return tuple(dict.fromkeys(part.strip() for part in raw.split(",") if part.strip()))


def env_jobs(env: Mapping[str, str]) -> tuple[str, ...]:
    raw = env.get("WORKER_JOBS", "").strip()
    if not raw or raw.lower() == "all":
        return JOB_TYPES
    jobs = tuple(dict.fromkeys(part.strip().lower() for part in raw.split(",") if part.strip()))
    unknown = [job for job in jobs if job not in JOB_TYPES]
    if unknown:
        raise ConfigError(f"WORKER_JOBS: unknown job type(s) {unknown}; valid: {', '.join(JOB_TYPES)}")
    return jobs


def env_profile(env: Mapping[str, str]) -> Profile:
    raw = env.get("MODEL_PROFILE", "auto").strip().lower() or "auto"
    if raw not in ("auto", "production", "tiny"):
        raise ConfigError(f"MODEL_PROFILE={raw!r}: expected auto, production or tiny")
    return raw  # type: ignore[return-value]


def _sources(env: Mapping[str, str]) -> tuple[str, ...]:
    sources = tuple(s.lower() for s in env_list(env, "MODEL_SOURCES", DEFAULT_MODEL_SOURCES))
    bad = [s for s in sources if "/" in s or ":" in s or " " in s]
    if bad:
        raise ConfigError(f"MODEL_SOURCES: {bad} are not kinds (hf, civitai) or host names (example.com)")
    return sources


def env_models(
    env: Mapping[str, str], name: str, kind: str, valid: tuple[str, ...], default: str
) -> tuple[str, ...]:
    """A comma-separated list of catalog names (IMAGE_MODELS, MUSIC_MODELS), or `all`; the first one is loaded
    first."""
    raw = env.get(name, "").strip().lower()
    if raw == "all":
        return valid
    models = tuple(dict.fromkeys(part.strip() for part in raw.split(",") if part.strip()))
    unknown = [model for model in models if model not in valid]
    if unknown:
        raise ConfigError(f"{name}: unknown {kind} model(s) {unknown}; valid: {', '.join(valid)}, all")
    return models or (default,)


@dataclass(frozen=True)
class CacheSettings:
    """The cache's configuration. Build it with `CacheSettings.from_env()`; tokens are kept out of `repr`."""

    volume_root: Path | None = None
    model_profile: Profile = "auto"
    worker_jobs: tuple[str, ...] = JOB_TYPES
    image_models: tuple[str, ...] = ("sdxl-base",)
    music_models: tuple[str, ...] = ("heartmula",)
    cache_wait_timeout_s: float = 1500.0
    cache_lease_s: float = 60.0
    cache_verify_sha256: bool = False
    runpod_hf_cache_dir: Path = DEFAULT_RUNPOD_HF_CACHE
    baked_models_dir: Path = DEFAULT_BAKED_DIR
    cache_max_gb: float | None = None
    model_sources: tuple[str, ...] = DEFAULT_MODEL_SOURCES
    prefetch_models: tuple[str, ...] = ()
    allow_private_urls: bool = False
    hf_endpoint: str = DEFAULT_HF_ENDPOINT
    hf_token: str | None = field(default=None, repr=False)
    civitai_api_url: str = DEFAULT_CIVITAI_API_URL
    civitai_token: str | None = field(default=None, repr=False)
    log_level: str = "INFO"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> CacheSettings:
        env = os.environ if env is None else env
        max_gb = env_float(env, "CACHE_MAX_GB", 0.0, minimum=0.0)
        return cls(
            volume_root=env_path(env, "VOLUME_ROOT"),
            model_profile=env_profile(env),
            worker_jobs=env_jobs(env),
            image_models=env_models(env, "IMAGE_MODELS", "image", IMAGE_FAMILIES, "sdxl-base"),
            music_models=env_models(env, "MUSIC_MODELS", "music", MUSIC_ENGINES, "heartmula"),
            cache_wait_timeout_s=env_float(env, "CACHE_WAIT_TIMEOUT_S", 1500.0, minimum=1.0),
            cache_lease_s=env_float(env, "CACHE_LEASE_S", 60.0, minimum=5.0),
            cache_verify_sha256=env_bool(env, "CACHE_VERIFY_SHA256", False),
            runpod_hf_cache_dir=env_path(env, "RUNPOD_HF_CACHE_DIR") or DEFAULT_RUNPOD_HF_CACHE,
            baked_models_dir=env_path(env, "BAKED_MODELS_DIR") or DEFAULT_BAKED_DIR,
            # 0 (the default) means no budget: on-demand models may use the whole volume
            cache_max_gb=max_gb or None,
            model_sources=_sources(env),
            prefetch_models=env_list(env, "PREFETCH_MODELS"),
            allow_private_urls=env_bool(env, "ALLOW_PRIVATE_URLS", False),
            hf_endpoint=(env.get("HF_ENDPOINT") or DEFAULT_HF_ENDPOINT).rstrip("/"),
            hf_token=env.get("HF_TOKEN") or None,
            civitai_api_url=(env.get("CIVITAI_API_URL") or DEFAULT_CIVITAI_API_URL).rstrip("/"),
            civitai_token=env.get("CIVITAI_TOKEN") or None,
            log_level=(env.get("LOG_LEVEL") or "INFO").upper(),
        )

    @property
    def max_bytes(self) -> int | None:
        return int(self.cache_max_gb * 1e9) if self.cache_max_gb else None
