"""The caller's configuration (Morpheus's process), read once from environment variables.

The README's configuration table documents each variable beside the worker's; a test keeps the two in step.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from worker_client.exceptions import ClientError
from worker_client.jobs import JOB_TYPES


def _path(env: Mapping[str, str], name: str) -> Path | None:
    raw = env.get(name, "").strip()
    return Path(raw).expanduser() if raw else None


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ClientError(f"{name}={raw!r}: expected a number of seconds") from None
    if value < 0:
        raise ClientError(f"{name}={raw!r}: must be at least 0")
    return value


@dataclass(frozen=True)
class ClientSettings:
    """The caller's side (Morpheus's process): which endpoints to call, where result files are fetched from,
    and the Celery tasks' broker. Build it with `ClientSettings.from_env()`."""

    api_key: str | None = None
    api_url: str = "https://api.runpod.ai/v2"
    endpoint_ids: tuple[tuple[str, str], ...] = ()
    endpoint_urls: tuple[tuple[str, str], ...] = ()
    outputs_from: str = "auto"
    job_data_mount: Path | None = None
    network_volume_id: str | None = None
    s3_endpoint_url: str | None = None
    s3_access_key_id: str | None = None
    s3_secret_access_key: str | None = None
    s3_region: str | None = None
    gateway_url: str | None = None
    gateway_token: str | None = None
    celery_broker_url: str = "redis://localhost:6379/0"
    celery_result_backend: str | None = None
    fetch_dir: Path = Path("fetched")
    task_retry_delay_s: float = 5.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ClientSettings:
        """`RUNPOD_ENDPOINT_ID` / `RUNPOD_ENDPOINT_URL` serve every job type; a `_<TYPE>` suffix (IMAGE, DATASET,
        TRAINING, MUSIC) overrides one type. Keys are job types, "" for the default."""
        env = os.environ if env is None else env

        def per_type(prefix: str) -> tuple[tuple[str, str], ...]:
            names = {"": prefix, **{job: f"{prefix}_{job.upper()}" for job in JOB_TYPES}}
            return tuple(
                (job, value) for job, name in names.items() if (value := (env.get(name) or "").strip())
            )

        broker = env.get("CELERY_BROKER_URL") or "redis://localhost:6379/0"
        return cls(
            api_key=env.get("RUNPOD_API_KEY") or None,
            api_url=env.get("RUNPOD_API_URL") or "https://api.runpod.ai/v2",
            endpoint_ids=per_type("RUNPOD_ENDPOINT_ID"),
            endpoint_urls=per_type("RUNPOD_ENDPOINT_URL"),
            outputs_from=(env.get("OUTPUTS_FROM") or "auto").strip().lower(),
            job_data_mount=_path(env, "JOB_DATA_MOUNT"),
            network_volume_id=env.get("RUNPOD_NETWORK_VOLUME_ID") or None,
            s3_endpoint_url=env.get("RUNPOD_S3_ENDPOINT_URL") or None,
            s3_access_key_id=env.get("RUNPOD_S3_ACCESS_KEY_ID") or None,
            s3_secret_access_key=env.get("RUNPOD_S3_SECRET_ACCESS_KEY") or None,
            s3_region=env.get("RUNPOD_S3_REGION") or None,
            gateway_url=env.get("GATEWAY_URL") or None,
            gateway_token=env.get("GATEWAY_TOKEN") or None,
            celery_broker_url=broker,
            celery_result_backend=env.get("CELERY_RESULT_BACKEND") or broker,
            fetch_dir=_path(env, "FETCH_DIR") or Path("fetched"),
            task_retry_delay_s=_seconds(env, "TASK_RETRY_DELAY_S", 5.0),
        )
