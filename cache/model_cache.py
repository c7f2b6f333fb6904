"""ModelCache: a verified local folder for a ModelSpec, downloaded once per volume however many workers ask.

Layout under `models_dir` (see DESIGN.md, "Paths on the volume"):
    <name>/                         the published model: real files plus .complete.json, written last
    .staging/                       holders' work in progress, and folders being deleted (staging.py)
    .locks/<name>.lock              the lease lock
    .refs/<name>.json               what a model reference resolved to (ref_sources.py)
    .usage/ .inuse/ .keep/ .reserved/  last use, readers' holds, keep marks and download reservations (usage.py)
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import time
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

from . import inventory
from .cache_settings import CacheSettings
from .catalog import ModelSpec, Part
from .errors import CacheError, InsufficientSpaceError, LeaseLostError, ModelKindError, no_space
from .files import HF_LOCAL_DIR_CACHE, MANIFEST_NAME, Listing, has_size, verify_delivery
from .inventory import ModelStatus
from .lock import ModelLease, Progress, acquire_lease, human_bytes, thread_gate
from .manifest import (
    MANIFEST_FORMAT,
    check_layout,
    file_entry,
    fsync_dir,
    manifest_problem,
    ref_meta,
    write_json,
)
from .ref_sources import RefContext, RefSource
from .refs import ModelRef, parse_ref
from .remote import Remote
from .safetensors_header import Want, kind_problem
from .sources import LocalSource, Source, open_source
from .staging import Staging
from .usage import Usage

log = logging.getLogger(__name__)

# Headroom kept free beyond the listed sizes: filesystem overhead and huggingface_hub's bookkeeping files.
_SPACE_RESERVE = 64 * 1024 * 1024


class ModelCache:
    """Models on the shared volume. `ensure` returns a published, verified folder; thread- and process-safe."""

    def __init__(
        self,
        models_dir: Path,
        *,
        lease_s: float = 60,
        verify_sha256: bool = False,
        runpod_hf_cache_dir: Path | None = None,
        baked_dir: Path | None = None,
        remote: Remote | None = None,
        max_bytes: int | None = None,
    ) -> None:
        self.models_dir = Path(models_dir)
        self.lease_s = lease_s
        self.verify_sha256 = verify_sha256
        self.runpod_hf_cache_dir = runpod_hf_cache_dir
        self.baked_dir = baked_dir
        self.remote = remote or Remote()
        self.max_bytes = max_bytes
        self.staging = Staging(self.models_dir / ".staging")
        self.locks_dir = self.models_dir / ".locks"
        self._ref_context = RefContext(self.remote, self.models_dir / ".refs")
        self.usage = Usage(self.models_dir, lease_s)
        # on-demand models this process prefetched: never evicted while it runs (others see their keep marks)
        self.protected: set[str] = set()

    @classmethod
    def from_settings(cls, models_dir: Path, settings: CacheSettings) -> ModelCache:
        remote = Remote.build(
            hf_endpoint=settings.hf_endpoint,
            hf_token=settings.hf_token,
            civitai_api_url=settings.civitai_api_url,
            civitai_token=settings.civitai_token,
            allow_private=settings.allow_private_urls,
        )
        return cls(
            models_dir,
            lease_s=settings.cache_lease_s,
            verify_sha256=settings.cache_verify_sha256,
            runpod_hf_cache_dir=settings.runpod_hf_cache_dir,
            baked_dir=settings.baked_models_dir,
            remote=remote,
            max_bytes=settings.max_bytes,
        )

    @staticmethod
    def ref_spec(ref: ModelRef) -> ModelSpec:
        """The spec of a reference's folder: derived from the reference's text alone, so a warm lookup is local."""
        required = () if ref.single_file else ("model_index.json",)
        return ModelSpec(
            ref.folder_name, parts=(Part(kind="ref", path=ref.text, revision="1"),), required_files=required
        )

    def fetch(self, ref: str | ModelRef, timeout: float) -> Path:
        """The local path of a reference (its file, or its folder for a repo), fetching it if nobody has."""
        ref = parse_ref(ref) if isinstance(ref, str) else ref
        folder = self.ensure(self.ref_spec(ref), timeout)
        self.usage.touch(ref.folder_name)
        return folder / self._file_of(folder) if ref.single_file else folder

    @contextmanager
    def use(self, ref: str | ModelRef, timeout: float, want: Want | None = None) -> Iterator[Path]:
        """`fetch`, holding the model for the block so that no worker evicts it meanwhile; with `want`, the file
        must be that kind of safetensors file (ModelKindError says what it is instead)."""
        ref = parse_ref(ref) if isinstance(ref, str) else ref
        # The hold comes first: an evicter that looks after this sees it; one that looked before, we see it took
        # the folder away and fetch it again.
        hold = self.usage.hold(ref.folder_name)
        try:
            path = self.fetch(ref, timeout)
            if want is not None and (problem := kind_problem(path, want, ref_meta(path.parent).get("kind"))):
                raise ModelKindError(f"{ref.text} {problem}")
            yield path
        finally:
            hold.release()

    def describe(self, ref: str | ModelRef) -> dict:
        """What a reference's source says about it (a repo's `pipeline` class, a CivitAI file's `baseModel`) before
        anything is downloaded: from the published model, else from its recorded resolution (resolved now when
        there is none; a warm reference makes no request)."""
        ref = parse_ref(ref) if isinstance(ref, str) else ref
        spec = self.ref_spec(ref)
        if (folder := self._ready(spec)) is not None:
            return ref_meta(folder)
        source = RefSource(spec.parts[0], self._ref_context)
        return dict(source.list().meta)

    def prefetch(self, refs: Iterable[str], timeout: float) -> dict[str, Path]:
        """Fetch each reference (within one `timeout`) and keep it: never evicted, by this or another worker."""
        deadline = time.monotonic() + timeout
        paths = {}
        for text in refs:
            ref = parse_ref(text)
            paths[ref.text] = self.fetch(ref, max(deadline - time.monotonic(), 0.0))
            self.usage.keep(ref.folder_name)
            self.protected.add(ref.folder_name)
        return paths

    @staticmethod
    def _file_of(folder: Path) -> str:
        if (name := ref_meta(folder).get("file")) is None:
            raise CacheError(
                f"{folder.name} was published without its file name; remove it (python -m cache rm)"
            )
        return name

    def ensure(self, spec: ModelSpec, timeout: float) -> Path:
        """The model's folder, downloading it if no one has; waits at most `timeout` seconds for another worker."""
        return self._ensure(spec, timeout, seed_from=None)

    def seed(self, spec: ModelSpec, source_dir: Path, timeout: float) -> Path:
        """Publish `source_dir` (which must hold the model's full layout) as `spec`, through the same checks."""
        return self._ensure(spec, timeout, seed_from=Path(source_dir))

    def warm(self, specs: Iterable[ModelSpec], timeout: float) -> dict[str, Path]:
        """`ensure` each spec within one overall `timeout`; the folder of each by spec name."""
        deadline = time.monotonic() + timeout
        return {spec.name: self.ensure(spec, max(deadline - time.monotonic(), 0.0)) for spec in specs}

    def status(self, specs: Iterable[ModelSpec] = ()) -> list[ModelStatus]:
        """Every model on the volume (and baked into the image), plus the given specs even when missing."""
        return inventory.status(self, specs)

    def _ensure(self, spec: ModelSpec, timeout: float, seed_from: Path | None) -> Path:
        started = time.monotonic()
        deadline = started + timeout
        if (path := self._ready(spec)) is not None:
            log.info("%s: ready at %s (%.0f ms)", spec.name, path, 1000 * (time.monotonic() - started))
            return path
        with thread_gate(f"{self.models_dir.resolve()}/{spec.name}", deadline, spec.name):
            lease = ModelLease(self.locks_dir / f"{spec.name}.lock", self.lease_s)
            while True:
                if not acquire_lease(lease, deadline, spec.name, lambda: self._ready(spec) is not None):
                    if (path := self._ready(spec)) is not None:
                        log.info("%s: ready at %s (after %.1fs)", spec.name, path, time.monotonic() - started)
                        return path
                    continue
                try:
                    return self._build(spec, lease, seed_from)
                except LeaseLostError as err:
                    log.warning("%s: %s; waiting for the new holder instead", spec.name, err)
                finally:
                    lease.release()
                lease = ModelLease(lease.path, self.lease_s)

    def _ready(self, spec: ModelSpec) -> Path | None:
        # The image is local disk and immutable: a baked model is used in place rather than copied to the volume.
        for root in (self.baked_dir, self.models_dir):
            if root is not None and manifest_problem(root / spec.name, spec) is None:
                return root / spec.name
        return None

    def _build(self, spec: ModelSpec, lease: ModelLease, seed_from: Path | None) -> Path:
        target = self.models_dir / spec.name
        if manifest_problem(target, spec) is None:
            self.staging.clean(spec.name)
            return target
        claim = self.staging.claim(spec, lease.token)
        # a reservation under CACHE_MAX_GB lasts until the model is published (then counted as one) or given up
        with ExitStack() as reserved:
            try:
                manifest = self._fill(spec, claim, lease, seed_from, reserved)
                lease.check(force=True)
                write_json(claim / MANIFEST_NAME, manifest)
                self._publish(spec, claim, target)
            except Exception as err:
                # After a takeover, any failure (a file that vanished when the new holder adopted our folder) is a
                # symptom of the lost lease, and is handled as such.
                if not isinstance(err, LeaseLostError) and lease.still_held():
                    raise
                # The new holder adopted this folder already, or whatever is left at our path is ours alone; so is
                # the group folder once empty (our download threads may have recreated it after the new holder
                # published).
                self.staging.discard(claim)
                with suppress(OSError):
                    claim.parent.rmdir()
                if isinstance(err, LeaseLostError):
                    raise
                raise LeaseLostError(
                    f"{lease.lost_message()} (it ended this worker's attempt with: {err})"
                ) from err
        self.staging.clean(spec.name)
        log.info("%s: published at %s (%s)", spec.name, target, human_bytes(manifest["total_bytes"]))
        return target

    def _fill(
        self, spec: ModelSpec, claim: Path, lease: ModelLease, seed_from: Path | None, reserved: ExitStack
    ) -> dict:
        parts = (Part(kind="local", path=str(seed_from)),) if seed_from else spec.parts
        sources = [open_source(part, self.runpod_hf_cache_dir, self._ref_context) for part in parts]
        listings: list[Listing | None] = []
        for part, source in zip(parts, sources):
            lease.check()
            listings.append(_labelled(spec, part, source.list))
        if self.max_bytes is not None and parts[0].kind == "ref":
            size = sum(f.size for listing in listings if listing for f in listing.files.values())
            deadline = time.monotonic() + 10 * self.lease_s
            hold = self.usage.reserve(
                spec.name,
                size,
                self.max_bytes,
                what=parts[0].ref,
                protected=self.protected,
                deadline=deadline,
            )
            reserved.callback(hold.release)
        self._check_space(spec, claim, parts, sources, listings)
        files: dict[str, dict] = {}
        records = []
        for part, source, listing in zip(parts, sources, listings):
            dest = claim / part.subdir
            total = sum(f.size for f in listing.files.values()) if listing else None
            progress = Progress(f"{spec.name}: {part.describe()}", total, lease.check)
            log.info(
                "%s: fetching %s from %s",
                spec.name,
                part.describe(),
                listing.origin if listing else "generator",
            )
            listing = _labelled(spec, part, partial(source.fetch, dest, listing, progress))
            progress.finish()
            _labelled(spec, part, partial(verify_delivery, dest, listing, hash_check=self.verify_sha256))
            for rel, info in listing.files.items():
                files[f"{part.subdir}/{rel}" if part.subdir else rel] = file_entry(info.size, info.sha256)
            record = {"part": part.describe(), "revision": listing.revision, "origin": listing.origin}
            records.append({**record, "meta": listing.meta} if listing.meta else record)
        # huggingface_hub's bookkeeping lets an adopted folder skip finished files; the manifest replaces it now.
        for part in parts:
            shutil.rmtree(claim / part.subdir / HF_LOCAL_DIR_CACHE, ignore_errors=True)
        check_layout(spec, claim)
        return {
            "format": MANIFEST_FORMAT,
            "name": spec.name,
            "fingerprint": spec.fingerprint,
            "spec": spec.to_dict(),
            "parts": records,
            "files": dict(sorted(files.items())),
            "total_bytes": sum(entry["size"] for entry in files.values()),
            "published_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "published_by": f"pid {os.getpid()} on {socket.gethostname()}",
        }

    def _check_space(
        self,
        spec: ModelSpec,
        claim: Path,
        parts: Iterable[Part],
        sources: list[Source],
        listings: list[Listing | None],
    ) -> None:
        needed = 0
        for part, source, listing in zip(parts, sources, listings):
            if listing is None or (isinstance(source, LocalSource) and source.link):
                continue
            dest = claim / part.subdir
            needed += sum(f.size for rel, f in listing.files.items() if not has_size(dest / rel, f.size))
        free = shutil.disk_usage(claim).free
        if needed + _SPACE_RESERVE > free:
            raise InsufficientSpaceError(
                f"{spec.name} needs {human_bytes(needed)} more on {self.models_dir} and {human_bytes(_SPACE_RESERVE)} "
                f"kept free as a reserve; {human_bytes(free)} is free: grow the network volume or delete unused models"
            )

    def _publish(self, spec: ModelSpec, claim: Path, target: Path) -> None:
        if target.exists() or target.is_symlink():
            log.info("%s: replacing the published copy (%s)", spec.name, manifest_problem(target, spec))
            self.staging.discard(target)
        try:
            os.rename(claim, target)
        except OSError as err:
            if manifest_problem(target, spec) is None:
                self.staging.discard(claim)
                return
            raise CacheError(f"cannot publish {spec.name} at {target}: {err}") from err
        fsync_dir(self.models_dir)


def _labelled(spec: ModelSpec, part: Part, call):
    """Run a source call; a cache error (a full volume too) gets the model and part it concerns prepended."""
    try:
        return call()
    except LeaseLostError:
        raise
    except (CacheError, OSError) as err:
        if no_space(err) is not None:
            raise InsufficientSpaceError(
                f"{spec.name}, part {part.describe()}: the volume filled up while fetching it (no space left): grow "
                "the network volume or delete unused models (python -m cache status lists them)"
            ) from err
        if not isinstance(err, CacheError):
            raise
        if part.kind == "ref":  # a reference's own errors name it already (and no folder of the server)
            raise
        raise type(err)(f"{spec.name}, part {part.describe()}: {err}") from err
