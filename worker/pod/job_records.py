"""A pod job's record (its state as the hosted API reports it) and where records live on the volume.

Records are `<job_data>/.pod/<job id>.json`, each rewritten atomically (temp file + fsync + rename) on every
change of state, so a restarted server finds every queued, running and finished job it had. They sit outside the
job folders because a cancelled or failed job's folder is removed while its status must still be answered; the
folder name starts with a dot, which no job id may, so it can never collide with a job's folder. A COMPLETED
job's output is not copied here: it is the job's `result.json`.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

RECORDS_FOLDER = ".pod"
IN_QUEUE, IN_PROGRESS = "IN_QUEUE", "IN_PROGRESS"
COMPLETED, FAILED, CANCELLED, TIMED_OUT = "COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"
FINAL = frozenset({COMPLETED, FAILED, CANCELLED, TIMED_OUT})


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


@dataclass
class JobRecord:
    """One job. Times are epoch seconds (they must mean the same after a restart)."""

    id: str
    request: dict[str, Any]
    retention_s: float
    status: str = IN_QUEUE
    submitted_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None
    webhook: str | None = None
    execution_timeout_s: float | None = None
    ttl_s: float | None = None  # the job's whole life from submission (policy.ttl): gone once it ends
    retries: int = 0

    @property
    def final(self) -> bool:
        return self.status in FINAL

    @property
    def job_type(self) -> str:
        job_input = self.request.get("input")
        return str(job_input.get("type", "")) if isinstance(job_input, dict) else ""

    def expired(self, now: float) -> bool:
        if self.ttl_s is not None and now > self.submitted_at + self.ttl_s:
            return True
        return self.finished_at is not None and now > self.finished_at + self.retention_s

    def body(self, output: Any = None) -> dict[str, Any]:
        """The `/status` answer as the hosted API words it: `delayTime` (queued, ms) once started,
        `executionTime` (ms) once finished, `output` when COMPLETED (the latest progress while running), `error`
        otherwise. A failed job's `output` is `{"error": ...}`, the worker's answer, so the SDK's `run_sync` and
        `output()`, which read only `output`, hand the caller the error too."""
        answer: dict[str, Any] = {"id": self.id, "status": self.status}
        if self.started_at is not None:
            answer["delayTime"] = _ms(self.started_at - self.submitted_at)
            if self.finished_at is not None:
                answer["executionTime"] = _ms(self.finished_at - self.started_at)
        if self.status == COMPLETED or (self.status == IN_PROGRESS and output is not None):
            answer["output"] = output
        elif self.final:
            answer["error"] = self.error
            answer["output"] = {"error": self.error}
        return answer


def new_job_id() -> str:
    return str(uuid.uuid4())


class RecordFiles:
    """The records folder on the volume."""

    def __init__(self, job_data: Path) -> None:
        self.folder = Path(job_data) / RECORDS_FOLDER

    def save(self, record: JobRecord) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        target = self.folder / f"{record.id}.json"
        temp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
        try:
            with temp.open("w") as handle:
                json.dump(asdict(record), handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, target)
        finally:
            temp.unlink(missing_ok=True)

    def remove(self, job_id: str) -> None:
        (self.folder / f"{job_id}.json").unlink(missing_ok=True)

    def load_all(self) -> list[JobRecord]:
        """Every readable record, oldest submission first; an unreadable one is logged and skipped."""
        records = []
        for path in self.folder.glob("*.json") if self.folder.is_dir() else ():
            try:
                records.append(JobRecord(**json.loads(path.read_text())))
            except (OSError, ValueError, TypeError) as error:
                log.warning("skipping the unreadable pod record %s: %s", path.name, error)
        return sorted(records, key=lambda record: record.submitted_at)
