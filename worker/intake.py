"""The one place a raw RunPod job is read: its id, its input (ours or Morpheus's envelope) and its delivery.

`read_request` turns `{"id", "input", "s3Config"?}` into a `JobRequest`; nothing else looks at the raw job.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from worker import morpheus, uploads
from worker.config import Settings
from worker.job_folders import validate_job_id
from worker.schemas import JobInputError, StrictInput, parse_job


@dataclass(frozen=True)
class JobRequest:
    """A job as the worker runs it: the typed input, the Morpheus envelope it came in (if any) and where its
    outputs are delivered besides the volume (a bucket, from `s3Config` or the BUCKET_* settings)."""

    job_id: str
    job: StrictInput
    envelope: morpheus.Envelope | None = None
    bucket: uploads.Bucket | None = None

    @property
    def type(self) -> str:
        return str(getattr(self.job, "type"))


def job_id_of(raw: Any) -> str:
    """The job's id, checked: it names the job's folder on the volume."""
    return validate_job_id(raw.get("id") if isinstance(raw, dict) else None)


def read_request(raw: Any, settings: Settings, enabled: tuple[str, ...]) -> JobRequest:
    """The typed request of a raw job, or `JobInputError` naming the field (Morpheus's name for its params)."""
    job_id = job_id_of(raw)
    envelope = morpheus.envelope(raw.get("input"))
    try:
        job = parse_job(envelope.job_input if envelope else raw.get("input"), enabled=enabled)
    except JobInputError as error:
        raise envelope.explain(error) if envelope else error from None
    bucket = uploads.bucket_for(raw.get("s3Config"), settings)
    return JobRequest(job_id, job, envelope, bucket)
