"""What the volume holds: `status` (catalog models: complete, outdated, damaged), `entries` (every model with its
size, source, last use, keep mark and readers, for `python -m cache ls`), and removing models by hand."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .catalog import ModelSpec
from .errors import CacheError
from .files import tree_size
from .lock import describe_holder, human_bytes
from .manifest import OTHER_SPEC, files_problem, read_manifest
from .refs import is_ref, parse_ref
from .usage import BudgetError

if TYPE_CHECKING:
    from .model_cache import ModelCache


@dataclass(frozen=True)
class ModelStatus:
    """One model as `python -m cache status` shows it."""

    name: str
    state: str  # complete | outdated | damaged | missing
    path: Path | None
    size_bytes: int = 0
    revisions: dict[str, str] = field(default_factory=dict)
    holder: str | None = None
    staged_bytes: int = 0
    problem: str | None = None


@dataclass(frozen=True)
class ModelEntry:
    """One model as `python -m cache ls` shows it."""

    name: str
    path: Path
    size_bytes: int
    source: str  # the reference, the catalog parts, or "baked"
    last_used: float | None
    pinned: bool  # never evicted: a catalog or baked model, or a reference prefetched or warmed at start
    in_use: list[str]


def status(cache: ModelCache, specs: Iterable[ModelSpec] = ()) -> list[ModelStatus]:
    wanted = {spec.name: spec for spec in specs}
    found = set(wanted)
    for root in (cache.models_dir, cache.baked_dir):
        if root is not None and root.is_dir():
            found.update(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    return [_status_of(cache, name, wanted.get(name)) for name in sorted(found)]


def entries(cache: ModelCache) -> list[ModelEntry]:
    found = []
    for root, baked in ((cache.baked_dir, True), (cache.models_dir, False)):
        if root is None or not root.is_dir():
            continue
        for folder in sorted(root.iterdir()):
            if folder.name.startswith(".") or not folder.is_dir():
                continue
            manifest = read_manifest(folder) or {}
            parts = manifest.get("spec", {}).get("parts", [])
            ref = parts[0].get("path") if len(parts) == 1 and parts[0].get("kind") == "ref" else None
            source = ref or ", ".join(
                f"{p.get('kind')} {p.get('repo_id') or p.get('generator') or p.get('path')}" for p in parts
            )
            found.append(
                ModelEntry(
                    folder.name,
                    folder,
                    manifest.get("total_bytes", 0),
                    f"baked: {source}" if baked else source or "unpublished",
                    cache.usage.last_used(folder.name),
                    baked or ref is None or cache.usage.kept(folder.name) or folder.name in cache.protected,
                    [] if baked else cache.usage.holders(folder.name),
                )
            )
    return found


def remove(cache: ModelCache, name_or_ref: str) -> str:
    """Delete a model from the volume (a reference also forgets what it resolved to); refuses one in use."""
    name = parse_ref(name_or_ref).folder_name if is_ref(name_or_ref) else name_or_ref
    if cache.baked_dir is not None and (cache.baked_dir / name).is_dir():
        raise CacheError(f"{name_or_ref} is baked into the image; rebuild the image without it")
    if not (cache.models_dir / name).is_dir():
        raise CacheError(f"{name_or_ref} is not on the volume (python -m cache ls lists what is)")
    if holders := cache.usage.holders(name):
        raise CacheError(f"{name_or_ref} is in use by {', '.join(holders)}; retry when its job is done")
    if not cache.usage.remove(name):
        raise CacheError(f"{name_or_ref} was taken into use while removing it; nothing was removed")
    (cache.models_dir / ".refs" / f"{name}.json").unlink(missing_ok=True)
    return name


def prune(cache: ModelCache, max_bytes: int) -> list[str]:
    """Evict least recently used on-demand models (never one in use or kept) until they fit in `max_bytes`."""
    try:
        return cache.usage.make_room(
            0,
            max_bytes,
            what="prune",
            exclude="",
            protected=cache.protected,
            deadline=time.monotonic() + 60,
            all_or_nothing=False,
        )
    except BudgetError as err:
        raise CacheError(f"could not prune to {human_bytes(max_bytes)}: {err}") from None


def _status_of(cache: ModelCache, name: str, spec: ModelSpec | None) -> ModelStatus:
    lock = cache.locks_dir / f"{name}.lock"
    holder = describe_holder(lock, cache.lease_s) if lock.exists() else None
    staged = sum(tree_size(group) for group in cache.staging.groups(name))
    for root in (cache.baked_dir, cache.models_dir):
        if root is None or not (root / name).is_dir():
            continue
        path = root / name
        manifest = read_manifest(path)
        if manifest is None:
            return ModelStatus(name, "damaged", path, tree_size(path), {}, holder, staged, "no manifest")
        problem = files_problem(path, manifest)
        state = "damaged" if problem else "complete"
        if not problem and spec is not None and manifest.get("fingerprint") != spec.fingerprint:
            state, problem = "outdated", OTHER_SPEC
        revisions = {p["part"]: p["revision"] for p in manifest.get("parts", [])}
        return ModelStatus(
            name, state, path, manifest.get("total_bytes", 0), revisions, holder, staged, problem
        )
    return ModelStatus(name, "missing", None, 0, {}, holder, staged, None)
