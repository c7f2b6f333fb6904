"""The client of the GPU worker: submit jobs to its RunPod endpoint (or a pod), wait, fetch the outputs.

Installs with `requests` alone (`pip install .`); it never imports the server (`worker`, `cache`) nor torch.

    from worker_client import EndpointClient
    client = EndpointClient(endpoint_id="...", api_key="...")
    result = client.run_sync({"type": "image", "prompt": "a lighthouse at dusk"})

`worker_client.endpoints.microservice_endpoints()` builds one client per job type from the environment;
`worker_client.celery_tasks` (extra `[celery]`) runs jobs from Celery.
"""

from worker_client.endpoint_client import EndpointClient, JobStatus
from worker_client.endpoints import microservice_endpoints, output_source
from worker_client.exceptions import (
    ClientError,
    JobCancelledError,
    JobError,
    JobFailedError,
    JobTimedOutError,
    PayloadTooLargeError,
    RequestError,
    TransientError,
    WaitTimeoutError,
)
from worker_client.jobs import JOB_TYPES
from worker_client.outputs import (
    BucketUrls,
    GatewayFiles,
    MountedVolume,
    OutputSource,
    VolumeS3,
    fetch_outputs,
)

__all__ = [
    "JOB_TYPES", "BucketUrls", "ClientError", "EndpointClient", "GatewayFiles", "JobCancelledError", "JobError",
    "JobFailedError", "JobStatus", "JobTimedOutError", "MountedVolume", "OutputSource", "PayloadTooLargeError",
    "RequestError", "TransientError", "VolumeS3", "WaitTimeoutError", "fetch_outputs", "microservice_endpoints",
    "output_source",
]  # fmt: skip
