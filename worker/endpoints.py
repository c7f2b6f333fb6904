"""Morpheus's `MICROSERVICE_ENDPOINTS`: one `EndpointClient` per job type, built from environment variables.

In Morpheus's `config.py`:

    from worker.endpoints import microservice_endpoints
    MICROSERVICE_ENDPOINTS = microservice_endpoints()

`RUNPOD_ENDPOINT_ID` serves every job type; `RUNPOD_ENDPOINT_ID_<TYPE>` (IMAGE, DATASET, TRAINING, MUSIC) sends one
type elsewhere. `RUNPOD_ENDPOINT_URL[_<TYPE>]` points at a local API server (`python handler.py --rp_serve_api`)
instead; `RUNPOD_API_URL` replaces `https://api.runpod.ai/v2` (a proxy). Where results' files are read from is
chosen by `OUTPUTS_FROM` (see `output_source`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from worker.client import HOSTED_API, ClientError, EndpointClient
from worker.config import JOB_TYPES
from worker.fetch import BucketUrls, GatewayFiles, MountedVolume, OutputSource, VolumeS3

OUTPUT_SOURCES = ("auto", "url", "mount", "volume-s3", "gateway")
_VOLUME_S3 = (
    "RUNPOD_NETWORK_VOLUME_ID",
    "RUNPOD_S3_ACCESS_KEY_ID",
    "RUNPOD_S3_SECRET_ACCESS_KEY",
    "RUNPOD_S3_ENDPOINT_URL",
)


def output_source(env: Mapping[str, str] | None = None) -> OutputSource:
    """`OUTPUTS_FROM`: `mount` (JOB_DATA_MOUNT, default /workspace/job_data), `volume-s3` (RunPod's S3 API over the
    network volume: RUNPOD_NETWORK_VOLUME_ID, RUNPOD_S3_*), `gateway` (GATEWAY_URL, GATEWAY_TOKEN), `url` (the
    presigned URLs of a bucket the worker uploads to), or `auto` (the first of those that is configured)."""
    env = os.environ if env is None else env
    choice = (env.get("OUTPUTS_FROM") or "auto").strip().lower()
    if choice not in OUTPUT_SOURCES:
        raise ClientError(f"OUTPUTS_FROM={choice!r}: expected one of {', '.join(OUTPUT_SOURCES)}")
    if choice == "auto":
        if env.get("JOB_DATA_MOUNT"):
            choice = "mount"
        elif env.get("RUNPOD_S3_ACCESS_KEY_ID"):
            choice = "volume-s3"
        elif env.get("GATEWAY_URL"):
            choice = "gateway"
        else:
            choice = "url"
    if choice == "mount":
        return MountedVolume(Path(env.get("JOB_DATA_MOUNT") or "/workspace/job_data"))
    if choice == "volume-s3":
        missing = [name for name in _VOLUME_S3 if not env.get(name)]
        if missing:
            raise ClientError(f"OUTPUTS_FROM=volume-s3 needs {', '.join(missing)}")
        return VolumeS3(
            volume_id=env["RUNPOD_NETWORK_VOLUME_ID"],
            access_key_id=env["RUNPOD_S3_ACCESS_KEY_ID"],
            secret_access_key=env["RUNPOD_S3_SECRET_ACCESS_KEY"],
            endpoint_url=env["RUNPOD_S3_ENDPOINT_URL"],
            region=env.get("RUNPOD_S3_REGION") or None,
        )
    if choice == "gateway":
        if not env.get("GATEWAY_URL"):
            raise ClientError(
                "OUTPUTS_FROM=gateway needs GATEWAY_URL (the pod's file gateway, e.g. port 8000)"
            )
        return GatewayFiles(env["GATEWAY_URL"], env.get("GATEWAY_TOKEN") or None)
    return BucketUrls()


def microservice_endpoints(env: Mapping[str, str] | None = None) -> dict[str, EndpointClient]:
    """`{job type: EndpointClient}` for every job type that has an endpoint; job types sharing an endpoint share
    one client."""
    env = os.environ if env is None else env
    api_key = env.get("RUNPOD_API_KEY") or None
    api_url = env.get("RUNPOD_API_URL") or HOSTED_API
    outputs = output_source(env)
    shared: dict[tuple[str, str], EndpointClient] = {}
    clients: dict[str, EndpointClient] = {}
    for job_type in JOB_TYPES:
        suffix = f"_{job_type.upper()}"
        target = next(
            (
                (kind, value)
                for kind, name in (
                    ("id", f"RUNPOD_ENDPOINT_ID{suffix}"),
                    ("url", f"RUNPOD_ENDPOINT_URL{suffix}"),
                    ("id", "RUNPOD_ENDPOINT_ID"),
                    ("url", "RUNPOD_ENDPOINT_URL"),
                )
                if (value := (env.get(name) or "").strip())
            ),
            None,
        )
        if target is None:
            continue
        if target not in shared:
            kind, value = target
            if kind == "id":
                shared[target] = EndpointClient(
                    endpoint_id=value, api_key=api_key, api_url=api_url, outputs=outputs
                )
            else:
                shared[target] = EndpointClient(base_url=value, api_key=api_key, outputs=outputs)
        clients[job_type] = shared[target]
    if not clients:
        raise ClientError(
            "no endpoint configured: set RUNPOD_ENDPOINT_ID (and RUNPOD_API_KEY) for every job type, "
            "RUNPOD_ENDPOINT_ID_<TYPE> per type, or RUNPOD_ENDPOINT_URL for a local API server"
        )
    return clients
