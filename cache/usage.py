"""Who uses which model, when it was last used, and evicting on-demand models to fit CACHE_MAX_GB.

On the volume, beside the models (every worker sees the same):
    .usage/<name>          its mtime is the model's last use
    .inuse/<name>/<holder> one file per reader (host, pid, token) that holds the model; its mtime is a heartbeat
    .keep/<name>           a model prefetched or warmed at start by some endpoint; refreshed at each start
    .reserved/<name>/<holder>  the size of a model being downloaded (JSON), counted as used until it is published

Evicting and using race safely without a lock shared by readers: a reader creates its hold first and then looks
for the model; the evicter (one at a time, under `.locks/.evict.lock`) renames a model into the trash only when it
sees no hold, then looks again and renames it back if a hold appeared meanwhile.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from .errors import CacheError
from .lock import ModelLease, acquire_lease, human_bytes
from .manifest import read_manifest

log = logging.getLogger(__name__)

KEEP_S = 7 * 24 * 3600  # a keep mark no endpoint refreshed for a week no longer protects its model
_TOUCH_EVERY_S = 60.0


class BudgetError(CacheError):
    """An on-demand model does not fit in CACHE_MAX_GB, even after evicting what may be evicted."""


@dataclass(frozen=True)
class OnDemandModel:
    name: str
    ref: str
    size: int
    last_used: float


@dataclass(frozen=True)
class Reservation:
    name: str
    ref: str
    size: int
    holder: str


class Hold:
    """A claim on a model (a reader's, or a downloader's reservation), visible to every worker; refreshed by a
    thread until released."""

    def __init__(self, folder: Path, lease_s: float, content: str = "") -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"{socket.gethostname()}--{os.getpid()}--{uuid.uuid4().hex[:8]}"
        self.path.write_text(content)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._beat, args=(lease_s / 3,), name="model-hold", daemon=True
        )
        self._thread.start()

    def _beat(self, interval: float) -> None:
        while not self._stop.wait(interval):
            with suppress(OSError):
                os.utime(self.path)

    def release(self) -> None:
        self._stop.set()
        self.path.unlink(missing_ok=True)


class Usage:
    def __init__(self, models_dir: Path, lease_s: float) -> None:
        self.models_dir = models_dir
        self.lease_s = lease_s

    def touch(self, name: str) -> None:
        """Record a use now (at most once a minute per model: it is a write to the network volume)."""
        path = self.models_dir / ".usage" / name
        try:
            if time.time() - path.stat().st_mtime < _TOUCH_EVERY_S:
                return
            os.utime(path)
        except FileNotFoundError:
            with suppress(OSError):
                path.parent.mkdir(parents=True, exist_ok=True)
                path.touch()

    def last_used(self, name: str) -> float | None:
        try:
            return (self.models_dir / ".usage" / name).stat().st_mtime
        except OSError:
            return None

    def hold(self, name: str) -> Hold:
        return Hold(self.models_dir / ".inuse" / name, self.lease_s)

    def holders(self, name: str) -> list[str]:
        """The live holds on `name` ("host pid"); stale ones (a dead process, a lapsed heartbeat) are removed."""
        return [holder for _, holder in self._live(self.models_dir / ".inuse" / name)]

    def reservations(self) -> list[Reservation]:
        """The models being downloaded under CACHE_MAX_GB now, with their sizes (stale reservations removed)."""
        root = self.models_dir / ".reserved"
        found = []
        for folder in root.iterdir() if root.is_dir() else ():
            for marker, holder in self._live(folder):
                try:
                    record = json.loads(marker.read_text())
                    size, ref = int(record["size"]), str(record["ref"])
                except (OSError, ValueError, KeyError, TypeError):
                    continue  # released meanwhile, or not written yet
                found.append(Reservation(folder.name, ref, size, holder))
        return found

    def _live(self, folder: Path) -> list[tuple[Path, str]]:
        live = []
        for marker in folder.iterdir() if folder.is_dir() else ():
            host, pid, _ = (["", "", ""] + marker.name.rsplit("--", 2))[-3:]  # host names may hold "--"
            try:
                age = time.time() - marker.stat().st_mtime
            except FileNotFoundError:
                continue
            dead_here = host == socket.gethostname() and pid.isdigit() and not _alive(int(pid))
            if dead_here or age > 2 * self.lease_s:
                marker.unlink(missing_ok=True)
                continue
            live.append((marker, f"{host} pid {pid}"))
        return live

    def keep(self, name: str) -> None:
        path = self.models_dir / ".keep" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()

    def kept(self, name: str) -> bool:
        try:
            return time.time() - (self.models_dir / ".keep" / name).stat().st_mtime < KEEP_S
        except OSError:
            return False

    def forget(self, name: str) -> None:
        for folder in (".usage", ".keep"):
            (self.models_dir / folder / name).unlink(missing_ok=True)

    def on_demand(self) -> list[OnDemandModel]:
        """The published on-demand (reference) models on the volume, least recently used first."""
        found = []
        for folder in self.models_dir.iterdir() if self.models_dir.is_dir() else ():
            if folder.name.startswith(".") or not folder.is_dir():
                continue
            manifest = read_manifest(folder)
            ref = _ref_of(manifest)
            if manifest is None or ref is None:
                continue
            try:
                published = (folder / ".complete.json").stat().st_mtime
            except FileNotFoundError:  # removed by another worker meanwhile
                continue
            found.append(
                OnDemandModel(
                    folder.name, ref, manifest.get("total_bytes", 0), self.last_used(folder.name) or published
                )
            )
        return sorted(found, key=lambda m: m.last_used)

    def remove(self, name: str) -> bool:
        """Delete published model `name` unless someone holds it (False then)."""
        target = self.models_dir / name
        if self.holders(name) or not target.is_dir():
            return False
        trash = self.models_dir / ".staging" / ".trash"
        trash.mkdir(parents=True, exist_ok=True)
        grave = trash / uuid.uuid4().hex
        try:
            target.rename(grave)
        except FileNotFoundError:
            return False
        if self.holders(name):
            # a reader took a hold between our look and the rename; it may have found the folder: put it back
            grave.rename(target)
            return False
        shutil.rmtree(grave, ignore_errors=True)
        self.forget(name)
        return True

    def make_room(
        self,
        needed: int,
        budget: int,
        *,
        what: str,
        exclude: str,
        protected: Iterable[str],
        deadline: float,
        all_or_nothing: bool = True,
    ) -> list[str]:
        """Evict least recently used on-demand models until `needed` more bytes fit in `budget`; their names.

        With `all_or_nothing` (a fetch), nothing is evicted unless that makes the room; without (a prune), what
        may be evicted is, and BudgetError still says what stays over the budget."""
        with self._eviction_lock(deadline):
            return self._evict(needed, budget, what, exclude, set(protected), all_or_nothing)

    def reserve(
        self, name: str, size: int, budget: int, *, what: str, protected: Iterable[str], deadline: float
    ) -> Hold:
        """Make room for model `name`, about to be downloaded, and reserve its `size` until the returned hold is
        released (once it is published): every worker's `make_room` counts it as used meanwhile, so downloads
        that run at once cannot overshoot the budget together."""
        with self._eviction_lock(deadline):
            self._evict(size, budget, what, name, set(protected), all_or_nothing=True)
            # made under the eviction lock: the next evicter sees it
            return Hold(
                self.models_dir / ".reserved" / name, self.lease_s, json.dumps({"size": size, "ref": what})
            )

    @contextmanager
    def _eviction_lock(self, deadline: float) -> Iterator[None]:
        lease = ModelLease(self.models_dir / ".locks" / ".evict.lock", self.lease_s)
        acquire_lease(lease, deadline, "the eviction lock", lambda: False)
        try:
            yield
        finally:
            lease.release()

    def _evict(
        self, needed: int, budget: int, what: str, exclude: str, protected: set[str], all_or_nothing: bool
    ) -> list[str]:
        if needed > budget:
            raise BudgetError(
                f"{what} needs {human_bytes(needed)}, more than CACHE_MAX_GB={budget / 1e9:g} allows: raise CACHE_MAX_GB"
            )
        models = [m for m in self.on_demand() if m.name != exclude]
        published = {m.name for m in models} | {exclude}
        downloads = [r for r in self.reservations() if r.name not in published]
        used = sum(m.size for m in models) + sum(r.size for r in downloads)
        reasons = {m.name: self._protection(m.name, protected) for m in models}
        evictable = sum(m.size for m in models if reasons[m.name] is None)
        evicted = []
        blocked = [f"{r.ref} (being downloaded by {r.holder})" for r in downloads]
        blocked += [f"{m.ref} ({reasons[m.name]})" for m in models if reasons[m.name]]
        enough = used - evictable + needed <= budget
        for model in models if enough or not all_or_nothing else ():
            if used + needed <= budget:
                break
            if reasons[model.name] is None and self.remove(model.name):
                used -= model.size
                evicted.append(model.name)
                log.info(
                    "evicted %s (%s, %s) to fit %s", model.ref, model.name, human_bytes(model.size), what
                )
            elif reasons[model.name] is None:
                blocked.append(f"{model.ref} (taken into use)")
        if used + needed > budget:
            raise BudgetError(
                f"{what} needs {human_bytes(needed)} but CACHE_MAX_GB={budget / 1e9:g} holds "
                f"{human_bytes(used)} of models that may not be evicted now: {', '.join(blocked[:5])}; raise "
                "CACHE_MAX_GB or retry when they are no longer in use"
            )
        return evicted

    def _protection(self, name: str, protected: set[str]) -> str | None:
        if name in protected or self.kept(name):
            return "prefetched or warmed at start"
        if holders := self.holders(name):
            return f"in use by {holders[0]}"
        return None


def _ref_of(manifest: dict | None) -> str | None:
    parts = (manifest or {}).get("spec", {}).get("parts", [])
    return parts[0].get("path") if len(parts) == 1 and parts[0].get("kind") == "ref" else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
