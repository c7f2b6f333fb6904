"""Morpheus's `MICROSERVICE_ENDPOINTS`: one `EndpointClient` per job type, built from environment variables.

In Morpheus's `config.py`:

    from worker_client.endpoints import microservice_endpoints
    MICROSERVICE_ENDPOINTS = microservice_endpoints()

`RUNPOD_ENDPOINT_ID` serves every job type; `RUNPOD_ENDPOINT_ID_<TYPE>` (IMAGE, DATASET, TRAINING, MUSIC) sends one
type elsewhere. `RUNPOD_ENDPOINT_URL[_<TYPE>]` points at a local API server (`python handler.py --rp_serve_api`)
instead; `RUNPOD_API_URL` replaces `https://api.runpod.ai/v2` (a proxy). Where results' files are read from is
chosen by `OUTPUTS_FROM` (see `output_source`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from worker_client.client_settings import ClientSettings
from worker_client.endpoint_client import EndpointClient
from worker_client.exceptions import ClientError
from worker_client.jobs import JOB_TYPES
from worker_client.outputs import BucketUrls, GatewayFiles, MountedVolume, OutputSource, VolumeS3

OUTPUT_SOURCES = ("auto", "url", "mount", "volume-s3", "gateway")


def _settings(source: ClientSettings | Mapping[str, str] | None) -> ClientSettings:
    return source if isinstance(source, ClientSettings) else ClientSettings.from_env(source)


def output_source(source: ClientSettings | Mapping[str, str] | None = None) -> OutputSource:
    """`OUTPUTS_FROM`: `mount` (JOB_DATA_MOUNT, default /workspace/job_data), `volume-s3` (RunPod's S3 API over the
    network volume: RUNPOD_NETWORK_VOLUME_ID, RUNPOD_S3_*), `gateway` (GATEWAY_URL, GATEWAY_TOKEN), `url` (the
    presigned URLs of a bucket the worker uploads to), or `auto` (the first of those that is configured)."""
    settings = _settings(source)
    choice = settings.outputs_from
    if choice not in OUTPUT_SOURCES:
        raise ClientError(f"OUTPUTS_FROM={choice!r}: expected one of {', '.join(OUTPUT_SOURCES)}")
    if choice == "auto":
        if settings.job_data_mount:
            choice = "mount"
        elif settings.s3_access_key_id:
            choice = "volume-s3"
        elif settings.gateway_url:
            choice = "gateway"
        else:
            choice = "url"
    if choice == "mount":
        return MountedVolume(settings.job_data_mount or Path("/workspace/job_data"))
    if choice == "volume-s3":
        needed = {
            "RUNPOD_NETWORK_VOLUME_ID": settings.network_volume_id,
            "RUNPOD_S3_ACCESS_KEY_ID": settings.s3_access_key_id,
            "RUNPOD_S3_SECRET_ACCESS_KEY": settings.s3_secret_access_key,
            "RUNPOD_S3_ENDPOINT_URL": settings.s3_endpoint_url,
        }
        missing = [name for name, value in needed.items() if not value]
        if missing:
            raise ClientError(f"OUTPUTS_FROM=volume-s3 needs {', '.join(missing)}")
        return VolumeS3(
            volume_id=settings.network_volume_id,
            access_key_id=settings.s3_access_key_id,
            secret_access_key=settings.s3_secret_access_key,
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
        )
    if choice == "gateway":
        if not settings.gateway_url:
            raise ClientError(
                "OUTPUTS_FROM=gateway needs GATEWAY_URL (the pod's file gateway, e.g. port 8000)"
            )
        return GatewayFiles(settings.gateway_url, settings.gateway_token)
    return BucketUrls()


def microservice_endpoints(
    source: ClientSettings | Mapping[str, str] | None = None,
) -> dict[str, EndpointClient]:
    """`{job type: EndpointClient}` for every job type that has an endpoint; job types sharing an endpoint share
    one client."""
    settings = _settings(source)
    outputs = output_source(settings)
    ids, urls = dict(settings.endpoint_ids), dict(settings.endpoint_urls)
    shared: dict[tuple[str, str], EndpointClient] = {}
    clients: dict[str, EndpointClient] = {}
    for job_type in JOB_TYPES:
        candidates = (
            ("id", ids.get(job_type)),
            ("url", urls.get(job_type)),
            ("id", ids.get("")),
            ("url", urls.get("")),
        )
        target = next(((kind, value) for kind, value in candidates if value), None)
        if target is None:
            continue
        if target not in shared:
            kind, value = target
            if kind == "id":
                shared[target] = EndpointClient(
                    endpoint_id=value, api_key=settings.api_key, api_url=settings.api_url, outputs=outputs
                )
            else:
                shared[target] = EndpointClient(base_url=value, api_key=settings.api_key, outputs=outputs)
        clients[job_type] = shared[target]
    if not clients:
        raise ClientError(
            "no endpoint configured: set RUNPOD_ENDPOINT_ID (and RUNPOD_API_KEY) for every job type, "
            "RUNPOD_ENDPOINT_ID_<TYPE> per type, or RUNPOD_ENDPOINT_URL for a local API server"
        )
    return clients
