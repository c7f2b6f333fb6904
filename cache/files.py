"""Files on disk against what a source listed: the listing types, scanning a folder, and size/hash checks."""

from __future__ import annotations

import hashlib
import os
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

from .errors import VerificationError

# huggingface_hub's bookkeeping inside a local_dir download; the manifest replaces it once a model is published.
HF_LOCAL_DIR_CACHE = ".cache"
MANIFEST_NAME = ".complete.json"


@dataclass(frozen=True)
class RemoteFile:
    size: int
    sha256: str | None = None
    git_oid: str | None = None


@dataclass(frozen=True)
class Listing:
    """What a part delivers: the resolved revision and the files (relative to the part's subdir)."""

    revision: str
    files: dict[str, RemoteFile]
    origin: str
    meta: dict = field(
        default_factory=dict
    )  # recorded in the manifest (a reference's file kind, CivitAI's base)


def scan_files(root: Path) -> dict[str, RemoteFile]:
    """Every file under `root` (symlinks followed) except huggingface_hub's bookkeeping and our manifest."""
    files: dict[str, RemoteFile] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        if here == root:
            dirnames[:] = [d for d in dirnames if d != HF_LOCAL_DIR_CACHE]
        for filename in filenames:
            path = here / filename
            if here == root and filename == MANIFEST_NAME:
                continue
            files[path.relative_to(root).as_posix()] = RemoteFile(size=path.stat().st_size)
    return files


def verify_delivery(dest: Path, listing: Listing, *, hash_check: bool) -> None:
    """Raise VerificationError unless every listed file is in `dest` with its size (and hash, with `hash_check`).

    A file that fails is deleted, so that the next attempt fetches it again instead of trusting it.
    """
    bad: list[str] = []
    for rel, info in listing.files.items():
        if problem := _file_problem(dest / rel, info, hash_check=hash_check):
            bad.append(f"{rel} ({problem})")
            (dest / rel).unlink(missing_ok=True)
    if bad:
        raise VerificationError(
            f"{len(bad)} file(s) differ from {listing.origin}: {', '.join(bad[:5])}; they were removed and will "
            "be fetched again on the next attempt"
        )


def tree_size(root: Path) -> int:
    """Bytes of every file under `root`, counting symlinks as links."""
    total = 0
    for dirpath, _, filenames in os.walk(root):
        for filename in filenames:
            with suppress(FileNotFoundError):
                total += os.lstat(os.path.join(dirpath, filename)).st_size
    return total


def has_size(path: Path, size: int) -> bool:
    try:
        return path.stat().st_size == size
    except OSError:
        return False


def _file_problem(path: Path, info: RemoteFile, *, hash_check: bool) -> str | None:
    try:
        actual = path.stat().st_size
    except FileNotFoundError:
        return "missing"
    if actual != info.size:
        return f"{actual} bytes, expected {info.size}"
    if hash_check and info.sha256:
        return None if _digest(path, hashlib.sha256()) == info.sha256 else "sha256 mismatch"
    # Small (non-LFS) files carry only their git blob id: sha1 over a "blob <size>\0" header and the content.
    if (
        hash_check
        and info.git_oid
        and _digest(path, hashlib.sha1(f"blob {info.size}\0".encode())) != info.git_oid
    ):
        return "git blob id mismatch"
    return None


def _digest(path: Path, hasher: hashlib._Hash) -> str:
    with path.open("rb") as f:
        while chunk := f.read(8 * 1024 * 1024):
            hasher.update(chunk)
    return hasher.hexdigest()
