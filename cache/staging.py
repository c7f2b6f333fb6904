"""Staging folders: where a holder of a model's lease assembles the model before publishing it by rename.

<models>/.staging/<name>--<spec12>/<claim>/  a holder's work in progress; the next holder adopts it by rename
<models>/.staging/.trash/                    folders being deleted (renamed here first, so no one writes into them)
"""

from __future__ import annotations

import logging
import re
import shutil
import uuid
from pathlib import Path

from .catalog import ModelSpec
from .download import discard_interrupted_writes
from .files import HF_LOCAL_DIR_CACHE, tree_size
from .lock import human_bytes

log = logging.getLogger(__name__)


class Staging:
    def __init__(self, root: Path) -> None:
        self.root = root

    def claim(self, spec: ModelSpec, token: str) -> Path:
        """This holder's staging folder, adopting the newest one an earlier (dead or paused) holder left."""
        group = self.root / f"{spec.name}--{spec.fingerprint[:12]}"
        group.mkdir(parents=True, exist_ok=True)
        claim = group / token[:16]
        self._empty_trash()
        previous = sorted((d for d in group.iterdir() if d.is_dir()), key=_mtime, reverse=True)
        adopted = None
        for old in previous:
            if adopted is None:
                try:
                    # A rename, not a copy: a paused holder that wakes up writes to its old path, no longer ours.
                    old.rename(claim)
                    adopted = old
                    continue
                except FileNotFoundError:
                    continue
            self.discard(old)
        if adopted is None:
            claim.mkdir()
            return claim
        # Partial files are never resumed by huggingface_hub, and the per-file lock files may still be locked by
        # the paused holder (its open descriptors followed the rename): both go, the finished files stay.
        for bookkeeping in claim.glob(f"**/{HF_LOCAL_DIR_CACHE}/huggingface"):
            for pattern in ("*.incomplete", "*.lock"):
                for leftover in bookkeeping.rglob(pattern):
                    leftover.unlink(missing_ok=True)
        discard_interrupted_writes(claim)
        log.info("%s: resuming with %s left by an earlier holder", spec.name, human_bytes(tree_size(claim)))
        return claim

    def clean(self, name: str) -> None:
        """Remove the staging folders of model `name`: partial downloads that its published copy supersedes."""
        for group in self.groups(name):
            self.discard(group)

    def groups(self, name: str) -> list[Path]:
        """The staging folders of model `name`, one per spec fingerprint."""
        pattern = re.compile(rf"{re.escape(name)}--[0-9a-f]{{12}}")
        if not self.root.is_dir():
            return []
        return [g for g in self.root.iterdir() if g.is_dir() and pattern.fullmatch(g.name)]

    def discard(self, path: Path) -> None:
        # Renamed into the trash first: a paused writer that wakes up can no longer reach it by its path.
        trash = self.root / ".trash"
        trash.mkdir(parents=True, exist_ok=True)
        grave = trash / uuid.uuid4().hex
        try:
            path.rename(grave)
        except FileNotFoundError:
            return
        shutil.rmtree(grave, ignore_errors=True)

    def _empty_trash(self) -> None:
        trash = self.root / ".trash"
        if trash.is_dir():
            for grave in trash.iterdir():
                shutil.rmtree(grave, ignore_errors=True)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0
