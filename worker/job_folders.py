"""The job_data layout: one folder per job id, files written atomically, `result.json` written last.

A reader that sees a file sees all of it (temp name + fsync + `os.replace`); a reader that sees `result.json`
knows every output it lists is complete.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from worker.schemas import JobInputError, OutputFile
from worker.schemas.common import QUOTE_CHARS, quoted
from worker_client.relpaths import UnsafePathError, safe_relpath

RESULT_FILE = "result.json"
_JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # matched whole: `$` would let a final "\n" through
_CHUNK = 1 << 20


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some network file systems refuse fsync on directories; the rename is still atomic
    finally:
        os.close(fd)


def validate_job_id(job_id: str) -> str:
    if not isinstance(job_id, str) or not _JOB_ID.fullmatch(job_id) or ".." in job_id:
        raise UnsafePathError(
            f"id: {quoted(job_id)} is not a valid job id; use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return job_id


class DiskFullError(Exception):
    """The volume had no room for a job's file: the caller's input was fine, the volume needs space."""


_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class JobFolder:
    """The folder of one job. Tracks what this run wrote so a cancelled run can take it back."""

    def __init__(self, root: Path, job_id: str) -> None:
        self.root = root
        self.job_id = validate_job_id(job_id)
        self.path = root / job_id
        self.written: list[Path] = []

    def resolve(self, relpath: str) -> Path:
        target = self.path.joinpath(*safe_relpath(relpath).parts)
        self.check_inside()
        if not target.resolve().is_relative_to(self.path.resolve()):
            raise UnsafePathError(f"file name {quoted(relpath)}: resolves outside the job folder")
        return target

    def check_inside(self) -> None:
        """Refuse a job folder that is a symbolic link: everything written or removed through it would land
        wherever the link points, possibly outside the volume."""
        if self.path.is_symlink():
            raise UnsafePathError(f"id: the folder of job {self.job_id!r} is a symbolic link; refused")

    def begin(self) -> None:
        """Create the folder and withdraw a previous run's `result.json`, so no reader trusts stale outputs."""
        self.check_inside()
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / RESULT_FILE).unlink(missing_ok=True)

    def write_with(self, relpath: str, writer: Callable[[Path], None], kind: str, **meta: Any) -> OutputFile:
        """Have `writer` fill a temp file beside the target, then publish it under `relpath` atomically."""
        target = self.resolve(relpath)
        temp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            writer(temp)
            with temp.open("rb+") as handle:
                os.fsync(handle.fileno())
            os.replace(temp, target)
        except OSError as error:
            if error.errno not in _NO_SPACE:
                raise
            raise DiskFullError(
                f"disk full: no space left on the volume while writing {self.job_id}/{relpath} in job_data; "
                "free space on the volume (or grow it) and run the job again"
            ) from error
        finally:
            temp.unlink(missing_ok=True)
        _fsync_dir(target.parent)
        self.written.append(target)
        return self.describe(target, kind, **meta)

    def write_bytes(self, relpath: str, data: bytes, kind: str, **meta: Any) -> OutputFile:
        return self.write_with(relpath, lambda temp: temp.write_bytes(data), kind, **meta)

    def describe(self, target: Path, kind: str, **meta: Any) -> OutputFile:
        """The output entry of a file already in the job folder."""
        return OutputFile(
            path=str(target),
            relpath=target.relative_to(self.root).as_posix(),
            kind=kind,
            bytes=target.stat().st_size,
            sha256=_sha256(target),
            **meta,
        )

    def write_result(self, result: dict[str, Any]) -> Path:
        """Write `result.json` last: its presence means the job finished and its outputs are complete."""
        payload = json.dumps(result, indent=2, sort_keys=True).encode()
        self.write_bytes(RESULT_FILE, payload, kind="result")
        self.written.pop()
        return self.path / RESULT_FILE

    def discard(self) -> None:
        """Remove what this run wrote (a cancelled or failed job leaves no partial output)."""
        for target in reversed(self.written):
            if target.is_dir():
                shutil.rmtree(target, ignore_errors=True)
            else:
                target.unlink(missing_ok=True)
        self.written.clear()
        for folder in sorted((p for p in self.path.rglob("*") if p.is_dir()), reverse=True):
            if not any(folder.iterdir()):
                folder.rmdir()
        if self.path.is_dir() and not any(self.path.iterdir()):
            self.path.rmdir()


class JobStore:
    """`<job_data>/<job id>/...` on the volume."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def job(self, job_id: str) -> JobFolder:
        self.root.mkdir(parents=True, exist_ok=True)
        return JobFolder(self.root, job_id)

    def read_result(self, job_id: str) -> dict[str, Any] | None:
        """The result of a finished job, or None when it has not finished (or never ran) here."""
        path = self.root / validate_job_id(job_id) / RESULT_FILE
        try:
            return json.loads(path.read_text())
        except (FileNotFoundError, NotADirectoryError):
            return None

    def finished_result(self, job_id: str, job_type: str, field: str) -> dict[str, Any]:
        """The result of a finished `job_type` job that an input names in `field`; a field error otherwise."""
        try:
            result = self.read_result(job_id)
        except UnsafePathError:
            raise JobInputError(field, f"{quoted(job_id)} is not a valid job id") from None
        except (OSError, ValueError):  # unreadable, or not JSON (ValueError covers both decode errors)
            raise JobInputError(field, f"the result.json of job {job_id!r} is unreadable") from None
        if result is None:
            raise JobInputError(field, f"no finished job {job_id!r} on this volume")
        outputs = result.get("outputs") if isinstance(result, dict) else None
        if not isinstance(outputs, list) or not all(isinstance(output, dict) for output in outputs):
            raise JobInputError(field, f"the result.json of job {job_id!r} is not a job's result")
        if result.get("type") != job_type:
            raise JobInputError(
                field,
                f"job {job_id!r} is a {str(result.get('type'))[:QUOTE_CHARS]} job, not a {job_type} job",
            )
        return result
