"""What the client raises: one base, `ClientError`, and a class per way a call or a job can fail."""

from __future__ import annotations

from worker_client.field_errors import parse_issues


class ClientError(Exception):
    """Anything the client could not do; the message says what to change."""


class PayloadTooLargeError(ClientError):
    """The request body is over RunPod's limit for the route."""


class RequestError(ClientError):
    """The API refused the request (4xx other than 429): retrying the same request will not help."""

    def __init__(self, message: str, status_code: int) -> None:
        super().__init__(message, status_code)  # all fields in args: Celery rebuilds errors as cls(*args)
        self.message = message
        self.status_code = status_code

    def __str__(self) -> str:
        return self.message


class TransientError(ClientError):
    """A network error, a 5xx, or a 429 that outlasted the retries: the same call may succeed later."""


class WaitTimeoutError(ClientError):
    """The client stopped waiting; the job may still be running (`job_id` is None when the server never said)."""

    def __init__(self, message: str, job_id: str | None) -> None:
        super().__init__(message, job_id)
        self.message = message
        self.job_id = job_id

    def __str__(self) -> str:
        return self.message


class JobError(ClientError):
    """The job ended without a result. `error` is the worker's text, `fields` the input fields it names."""

    def __init__(self, job_id: str, status: str, error: str) -> None:
        super().__init__(job_id, status, error)
        self.job_id = job_id
        self.status = status
        self.error = error

    def __str__(self) -> str:
        return f"job {self.job_id} {self.status}: {self.error}"

    @property
    def fields(self) -> list[str]:
        """The fields named by a refused input (`"width: must be a multiple of 8; steps: ..."`)."""
        return [issue.field for issue in parse_issues(self.error)]


class JobFailedError(JobError):
    """FAILED: a refused input or an error in the worker."""


class JobCancelledError(JobError):
    """CANCELLED: someone cancelled the job."""


class JobTimedOutError(JobError):
    """TIMED_OUT: RunPod stopped the job at the endpoint's execution timeout."""


JOB_ERRORS: dict[str, type[JobError]] = {
    "FAILED": JobFailedError,
    "CANCELLED": JobCancelledError,
    "TIMED_OUT": JobTimedOutError,
}
