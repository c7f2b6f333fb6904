"""Relative paths of job outputs (`<job id>/<name>`), checked so that they never leave their base folder.

The worker writes outputs under these names and the client copies them under the same names: both sides refuse
the same paths.
"""

from __future__ import annotations

from pathlib import PurePosixPath


class UnsafePathError(ValueError):
    """A job id or file name that would leave the job_data folder."""


def safe_relpath(relpath: str) -> PurePosixPath:
    """A relative path that stays inside its base folder: no absolute paths, no '..', no empty parts."""
    if not isinstance(relpath, str) or not relpath or "\\" in relpath or "\x00" in relpath:
        raise UnsafePathError(f"file name {relpath!r}: not a valid relative path")
    path = PurePosixPath(relpath)
    if path.is_absolute() or any(part in ("", ".", "..") for part in relpath.split("/")):
        raise UnsafePathError(
            f"file name {relpath!r}: must be relative and must not contain '.' or '..' parts"
        )
    return path
