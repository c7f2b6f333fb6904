"""The client of the GPU worker: submit jobs to its RunPod endpoint (or a pod), wait, fetch the outputs.

Installs with `requests` alone (`pip install .`); it never imports the server (`worker`, `cache`) nor torch.

    from worker_client import EndpointClient
    client = EndpointClient(endpoint_id="...", api_key="...")
    result = client.run_sync({"type": "image", "prompt": "a lighthouse at dusk"})

`worker_client.endpoints.microservice_endpoints()` builds one client per job type from the environment;
`worker_client.celery_tasks` (extra `[celery]`) runs jobs from Celery.
"""

from __future__ import annotations

import importlib
from typing import Any

# what each public name is imported from, on first use: the server and the cache import `worker_client.jobs` and
# friends, and must not pay for `requests` and the whole client to do so
_EXPORTS = {
    "EndpointClient": "endpoint_client",
    "JobStatus": "endpoint_client",
    "microservice_endpoints": "endpoints",
    "output_source": "endpoints",
    **dict.fromkeys(
        (
            "ClientError", "JobCancelledError", "JobError", "JobFailedError", "JobTimedOutError",
            "PayloadTooLargeError", "RequestError", "TransientError", "WaitTimeoutError",
        ),
        "exceptions",
    ),
    "JOB_TYPES": "jobs",
    **dict.fromkeys(
        ("BucketUrls", "GatewayFiles", "MountedVolume", "OutputSource", "VolumeS3", "fetch_outputs"), "outputs"
    ),
}  # fmt: skip

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'worker_client' has no attribute {name!r}")
    return getattr(importlib.import_module(f"worker_client.{_EXPORTS[name]}"), name)
