"""Where model files come from: the Hugging Face Hub, a local directory (including RunPod's cached models) or a
built-in tiny model generator. Each source lists what it will deliver, then writes it into a staging folder.

huggingface_hub is imported inside the functions that need it: it reads HF_* variables once, at import, and the
worker sets them (volume paths) before the first download.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol
from urllib.parse import quote

from .catalog import Part
from .download import fetch_listed
from .errors import ModelNotFoundError, SourceError, hub_errors
from .files import HF_LOCAL_DIR_CACHE, Listing, RemoteFile, has_size, scan_files
from .ref_sources import RefContext, RefSource
from .remote import Remote

if TYPE_CHECKING:
    from .lock import Progress

log = logging.getLogger(__name__)

Generator = Callable[[Path], None]

# Generators live in modules that import torch and friends, so they are named here and imported only when used.
BUILTINS: dict[str, str | Generator] = {
    "sdxl-tiny": "cache.tiny.sdxl:build",
    "heartmula-tiny": "cache.tiny.heartmula:build",
    "ip-adapter-tiny": "cache.tiny.ip_adapter:build",
    "z-image-tiny": "cache.tiny.zimage:build",
    "flux2-klein-tiny": "cache.tiny.flux2:build",
    "ace-step-tiny": "cache.tiny.ace_step:build",
    "blip-tiny": "cache.tiny.blip:build",
}


def register_builtin(name: str, generator: str | Generator) -> None:
    """Add a builtin generator: a `build(dest: Path) -> None` callable or its "module:function" path."""
    BUILTINS[name] = generator


class Source(Protocol):
    part: Part

    def list(self) -> Listing | None:
        """The files this source will deliver, or None when they are known only after fetching (generators)."""

    def fetch(self, dest: Path, listing: Listing | None, progress: Progress) -> Listing:
        """Write the files into `dest` (which may hold files of an earlier, interrupted fetch); return the listing."""


def open_source(part: Part, runpod_hf_cache_dir: Path | None, refs: RefContext | None = None) -> Source:
    """The source for `part`; a hub part already in RunPod's model cache is taken from there, without network."""
    if part.kind == "ref":
        if refs is None:
            raise SourceError(f"{part.ref}: this cache was opened without network settings for references")
        return RefSource(part, refs)
    if part.kind == "hub":
        cached = runpod_snapshot(part, runpod_hf_cache_dir) if runpod_hf_cache_dir else None
        return cached or HubSource(part)
    if part.kind == "local":
        return LocalSource(
            part, Path(part.ref).expanduser(), revision=part.revision, origin=f"local {part.ref}"
        )
    return BuiltinSource(part)


class HubSource:
    """A repo on the Hub (or the mirror in HF_ENDPOINT): listed with its API, fetched with `download.py`."""

    def __init__(self, part: Part) -> None:
        self.part = part

    def list(self) -> Listing:
        from huggingface_hub import HfApi
        from huggingface_hub.hf_api import RepoFile

        api = HfApi()
        part = self.part
        with hub_errors(part.ref, part.revision):
            commit = part.revision if part.pinned else api.repo_info(part.ref, revision=part.revision).sha
            tree = [
                e
                for e in api.list_repo_tree(part.ref, recursive=True, revision=commit)
                if isinstance(e, RepoFile)
            ]
        files = {
            e.path: RemoteFile(size=e.size, sha256=e.lfs.sha256 if e.lfs else None, git_oid=e.blob_id)
            for e in tree
        }
        wanted = filter_paths(files, part)
        if not wanted:
            raise ModelNotFoundError(
                f"no file of {part.ref}@{commit} matches allow={part.allow_patterns} ignore={part.ignore_patterns}; "
                "fix the patterns"
            )
        return Listing(
            commit, {path: files[path] for path in wanted}, origin=f"hub {api.endpoint}/{part.ref}"
        )

    def fetch(self, dest: Path, listing: Listing | None, progress: Progress) -> Listing:
        from huggingface_hub import constants, get_token

        assert listing is not None, "a hub part is always listed first"
        # The same downloader as model references: resumable from an earlier holder's partial file, each file's
        # sha256 (or git blob id) checked as it arrives. The endpoint is the operator's (HF_ENDPOINT), so a
        # mirror on a private network is fine; the token goes to that host only.
        endpoint = constants.ENDPOINT.rstrip("/")
        remote = Remote.build(
            hf_endpoint=endpoint,
            hf_token=get_token(),
            civitai_api_url="",
            civitai_token=None,
            allow_private=True,
        )
        urls = {
            rel: f"{endpoint}/{self.part.ref}/resolve/{listing.revision}/{quote(rel)}"
            for rel in listing.files
        }
        files = fetch_listed(
            remote,
            dest,
            listing,
            urls,
            what=f"{self.part.ref}@{listing.revision[:12]}",
            check=progress.check,
            advance=progress.advance,
            token_for="HF_TOKEN",
        )
        return Listing(listing.revision, files, listing.origin, listing.meta)


class LocalSource:
    """A directory: a pre-seeded checkout, an air-gapped mirror, or a snapshot of RunPod's model cache."""

    def __init__(
        self,
        part: Part,
        root: Path,
        *,
        revision: str,
        origin: str,
        link: bool = False,
        expected: dict[str, RemoteFile] | None = None,
    ) -> None:
        self.part = part
        self.root = root
        self.revision = revision
        self.origin = origin
        self.link = link
        self.expected = expected

    def list(self) -> Listing:
        if not self.root.is_dir():
            raise ModelNotFoundError(f"{self.origin}: {self.root} is not a directory")
        available = self.expected if self.expected is not None else scan_files(self.root)
        files = {path: available[path] for path in filter_paths(available, self.part)}
        if not files:
            raise ModelNotFoundError(f"{self.origin}: no file in {self.root} matches the part's patterns")
        return Listing(self.revision, files, origin=self.origin)

    def fetch(self, dest: Path, listing: Listing | None, progress: Progress) -> Listing:
        listing = listing or self.list()
        # Copies are written aside first, where the bookkeeping cleanup before publishing removes any leftover.
        scratch = dest / HF_LOCAL_DIR_CACHE / "partial"
        scratch.mkdir(parents=True, exist_ok=True)
        for rel, info in listing.files.items():
            progress.check()
            target = dest / rel
            if has_size(target, info.size):
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = scratch / f"{uuid.uuid4().hex}.partial"
            try:
                if self.link:
                    try:
                        os.link((self.root / rel).resolve(), tmp)
                    except OSError:
                        shutil.copyfile(self.root / rel, tmp)
                else:
                    shutil.copyfile(self.root / rel, tmp)
                os.replace(tmp, target)
            finally:
                tmp.unlink(missing_ok=True)
            progress.advance(info.size)
        return listing


class BuiltinSource:
    """A generator that writes a tiny random-weight model; it goes through the same staging and publishing."""

    def __init__(self, part: Part) -> None:
        self.part = part

    def list(self) -> None:
        return None

    def fetch(self, dest: Path, listing: Listing | None, progress: Progress) -> Listing:
        name = self.part.ref
        target = BUILTINS.get(name)
        if target is None:
            raise ModelNotFoundError(f"no builtin generator {name!r}; known: {', '.join(sorted(BUILTINS))}")
        build = _import_generator(target) if isinstance(target, str) else target
        # A generator cannot resume: whatever an interrupted run left is rebuilt from scratch.
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        try:
            build(dest)
        except Exception as err:
            raise SourceError(f"builtin generator {name!r} ({target}) failed: {err}") from err
        progress.check()
        files = scan_files(dest)
        progress.advance(sum(info.size for info in files.values()))
        return Listing(self.part.revision, files, origin=f"builtin {name}")


def runpod_snapshot(part: Part, root: Path) -> LocalSource | None:
    """The part's snapshot in RunPod's cached-models folder (an HF hub cache), when it is there."""
    repo_dir = root / f"models--{part.ref.replace('/', '--')}"
    commit = part.revision
    if not part.pinned:
        ref = repo_dir / "refs" / part.revision
        if not ref.is_file():
            return None
        commit = ref.read_text().strip()
    snapshot = repo_dir / "snapshots" / commit
    if not snapshot.is_dir():
        return None
    # The snapshot's files are symlinks into blobs/ on the same volume: hard links make real files at no cost.
    source = LocalSource(
        part,
        snapshot,
        revision=commit,
        origin=f"RunPod model cache {snapshot}",
        link=True,
        expected=_read_tree_cache(repo_dir, commit),
    )
    try:
        listing = source.list()
    except ModelNotFoundError:
        return None
    missing = [p for p, info in listing.files.items() if not has_size(snapshot / p, info.size)]
    if missing:
        log.info(
            "RunPod model cache has %s but misses %d file(s), e.g. %s", part.ref, len(missing), missing[0]
        )
        return None
    log.info("using %s from the RunPod model cache at %s", part.ref, snapshot)
    return source


def filter_paths(paths: Iterable[str], part: Part) -> list[str]:
    """The paths the part's allow/ignore patterns select, with huggingface_hub's own matching rules."""
    from huggingface_hub.utils import filter_repo_objects

    return list(
        filter_repo_objects(
            items=list(paths),
            allow_patterns=_as_list(part.allow_patterns),
            ignore_patterns=_as_list(part.ignore_patterns),
        )
    )


def _as_list(patterns: tuple[str, ...] | None) -> list[str] | None:
    return list(patterns) if patterns is not None else None


def _import_generator(target: str) -> Generator:
    module_name, _, attr = target.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise SourceError(f"builtin generator {target} cannot be loaded: {err}") from err


def _read_tree_cache(repo_dir: Path, commit: str) -> dict[str, RemoteFile] | None:
    try:
        data = json.loads((repo_dir / "trees" / f"{commit}.json").read_text())
        return {
            path: RemoteFile(size=info["size"], sha256=info.get("lfs_sha256"), git_oid=info.get("blob_id"))
            for path, info in data["files"].items()
        }
    except (OSError, ValueError, KeyError, TypeError):
        return None
