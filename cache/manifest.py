"""The published model folder's contract: `.complete.json` (written last) and the required layout.

A folder is trusted only when its manifest matches the spec's fingerprint and every file it lists is there with its
size; checking that needs no lock and no network, which is what makes a warm start instant.
"""

from __future__ import annotations

import json
import os
from contextlib import suppress
from pathlib import Path

from .catalog import ModelSpec
from .errors import LayoutError
from .files import MANIFEST_NAME, has_size

MANIFEST_FORMAT = 1
OTHER_SPEC = "published for another spec (revision or file selection changed)"


def check_layout(spec: ModelSpec, root: Path) -> None:
    """Raise LayoutError naming every required file, and every shard of a weight index, that is missing."""
    missing = [pattern for pattern in spec.required_files if not _present(root, pattern)]
    for index in sorted(root.rglob("*.index.json")):
        try:
            shards = set(json.loads(index.read_text()).get("weight_map", {}).values())
        except (OSError, ValueError, AttributeError) as err:
            missing.append(f"{index.relative_to(root)} (unreadable: {err})")
            continue
        missing += [
            (index.parent / s).relative_to(root).as_posix()
            for s in sorted(shards)
            if not (index.parent / s).is_file()
        ]
    if missing:
        raise LayoutError(
            f"{spec.name} is incomplete after fetching {', '.join(p.describe() for p in spec.parts)}: missing "
            f"{', '.join(missing)}. Check that every part of the model is listed in the catalog and present at "
            "its source"
        )


def manifest_problem(path: Path, spec: ModelSpec) -> str | None:
    """Why `path` is not a complete copy of `spec`, or None when it is. Reads the manifest and stats each file."""
    manifest = read_manifest(path)
    if manifest is None:
        return "no manifest"
    if manifest.get("fingerprint") != spec.fingerprint:
        return OTHER_SPEC
    return files_problem(path, manifest)


def files_problem(path: Path, manifest: dict) -> str | None:
    for rel, entry in manifest.get("files", {}).items():
        if not has_size(path / rel, entry.get("size", -1)):
            return f"{rel} is missing or has the wrong size"
    return None


def read_manifest(path: Path) -> dict | None:
    try:
        manifest = json.loads((path / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("format") == MANIFEST_FORMAT else None


def ref_meta(path: Path) -> dict:
    """What the source of a published reference recorded (its file name and kind), or {}."""
    parts = (read_manifest(path) or {}).get("parts") or [{}]
    return parts[0].get("meta") or {}


def file_entry(size: int, sha256: str | None) -> dict:
    return {"size": size, "sha256": sha256} if sha256 else {"size": size}


def _present(root: Path, pattern: str) -> bool:
    if not any(ch in pattern for ch in "*?["):
        return (root / pattern).is_file()
    return any(p.is_file() for p in root.glob(pattern))


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w") as f:
        json.dump(data, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def fsync_dir(path: Path) -> None:
    # Best effort: some network file systems refuse to open a directory for fsync.
    with suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
