"""Every environment variable the worker reads, read once into a typed settings object.

The README's configuration table documents each variable; a test keeps the two in step.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from cache.cache_settings import (  # the parsing helpers and the cache's variables, parsed in one place
    CacheSettings,
    ConfigError,
    Profile,
)
from cache.cache_settings import env_bool as _bool
from cache.cache_settings import env_float as _float
from cache.cache_settings import env_int as _int
from cache.cache_settings import env_path as _path
from worker_client.jobs import JOB_TYPES


def _mode(env: Mapping[str, str]) -> Literal["serverless", "pod"]:
    raw = env.get("MODE", "serverless").strip().lower() or "serverless"
    if raw not in ("serverless", "pod"):
        raise ConfigError(f"MODE={raw!r}: expected serverless or pod")
    return raw  # type: ignore[return-value]


@dataclass(frozen=True)
class Settings:
    """The worker's configuration. Build it with `Settings.from_env()`."""

    volume_root: Path | None = None
    job_data_dir: Path | None = None
    model_profile: Profile = "auto"
    worker_jobs: tuple[str, ...] = JOB_TYPES
    warm_on_start: bool = True
    cache_wait_timeout_s: float = 1500.0
    cache_lease_s: float = 60.0
    cache_verify_sha256: bool = False
    runpod_hf_cache_dir: Path = Path("/runpod-volume/huggingface-cache/hub")
    baked_models_dir: Path = Path("/models")
    checkpoints_dir: Path | None = None
    progress_interval_s: float = 1.0
    max_inline_images: int = 64
    max_image_bytes: int = 20 * 1024 * 1024
    url_fetch_timeout_s: float = 20.0
    allow_private_urls: bool = False
    bucket_endpoint_url: str | None = None
    bucket_access_key_id: str | None = None
    bucket_secret_access_key: str | None = None
    bucket_name: str | None = None
    bucket_url_expiry_s: int = 7 * 24 * 3600
    gateway_token: str | None = None
    gateway_max_upload_bytes: int = 512 * 1024 * 1024
    log_level: str = "INFO"
    runpod_serverless: bool = False
    pod_api_key: str | None = None
    pod_run_retention_s: float = 1800.0
    pod_runsync_retention_s: float = 60.0
    mode: Literal["serverless", "pod"] = "serverless"
    image_models: tuple[str, ...] = ("sdxl-base",)
    music_models: tuple[str, ...] = ("heartmula",)
    # the cache's own variables (tokens, CACHE_MAX_GB, MODEL_SOURCES, PREFETCH_MODELS...); see cache_settings()
    cache: CacheSettings = field(default_factory=CacheSettings)

    def cache_settings(self) -> CacheSettings:
        """The cache's settings, with the fields this object also has (a test may set them directly) applied."""
        return replace(
            self.cache,
            volume_root=self.volume_root,
            model_profile=self.model_profile,
            worker_jobs=self.worker_jobs,
            image_models=self.image_models,
            music_models=self.music_models,
            cache_wait_timeout_s=self.cache_wait_timeout_s,
            cache_lease_s=self.cache_lease_s,
            cache_verify_sha256=self.cache_verify_sha256,
            runpod_hf_cache_dir=self.runpod_hf_cache_dir,
            baked_models_dir=self.baked_models_dir,
            allow_private_urls=self.allow_private_urls,
            log_level=self.log_level,
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        cache = CacheSettings.from_env(env)
        return cls(
            volume_root=cache.volume_root,
            job_data_dir=_path(env, "JOB_DATA_DIR"),
            model_profile=cache.model_profile,
            worker_jobs=cache.worker_jobs,
            warm_on_start=_bool(env, "WARM_ON_START", True),
            cache_wait_timeout_s=cache.cache_wait_timeout_s,
            cache_lease_s=cache.cache_lease_s,
            cache_verify_sha256=cache.cache_verify_sha256,
            runpod_hf_cache_dir=cache.runpod_hf_cache_dir,
            baked_models_dir=cache.baked_models_dir,
            checkpoints_dir=_path(env, "CHECKPOINTS_DIR"),
            progress_interval_s=_float(env, "PROGRESS_INTERVAL_S", 1.0, minimum=0.0),
            max_inline_images=_int(env, "MAX_INLINE_IMAGES", 64, minimum=1),
            max_image_bytes=_int(env, "MAX_IMAGE_BYTES", 20 * 1024 * 1024, minimum=1024),
            url_fetch_timeout_s=_float(env, "URL_FETCH_TIMEOUT_S", 20.0, minimum=0.1),
            allow_private_urls=cache.allow_private_urls,
            bucket_endpoint_url=env.get("BUCKET_ENDPOINT_URL") or None,
            bucket_access_key_id=env.get("BUCKET_ACCESS_KEY_ID") or None,
            bucket_secret_access_key=env.get("BUCKET_SECRET_ACCESS_KEY") or None,
            bucket_name=env.get("BUCKET_NAME") or None,
            bucket_url_expiry_s=_int(env, "BUCKET_URL_EXPIRY_S", 7 * 24 * 3600, minimum=60),
            gateway_token=env.get("GATEWAY_TOKEN") or None,
            gateway_max_upload_bytes=_int(env, "GATEWAY_MAX_UPLOAD_BYTES", 512 * 1024 * 1024, minimum=1),
            log_level=cache.log_level,
            # RunPod sets this only on its platform; progress updates go nowhere without it
            runpod_serverless=bool(env.get("RUNPOD_WEBHOOK_POST_OUTPUT")),
            pod_api_key=env.get("POD_API_KEY") or None,
            pod_run_retention_s=_float(env, "POD_RUN_RETENTION_S", 1800.0),
            pod_runsync_retention_s=_float(env, "POD_RUNSYNC_RETENTION_S", 60.0),
            mode=_mode(env),
            image_models=cache.image_models,
            music_models=cache.music_models,
            cache=cache,
        )
