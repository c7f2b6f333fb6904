"""Finds the network volume and points the Hugging Face and temporary paths at it.

The container's root disk is small; every large file (downloads, temp files, outputs) must land on the volume.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

SERVERLESS_MOUNT = Path("/runpod-volume")
POD_MOUNT = Path("/workspace")
LOCAL_FALLBACK = Path(".volume")


@dataclass(frozen=True)
class Volume:
    """The volume root and the folders the worker keeps on it."""

    root: Path
    reason: str
    default_job_data: Path | None = None

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def hf_home(self) -> Path:
        return self.root / ".cache" / "huggingface"

    @property
    def tmp_dir(self) -> Path:
        return self.root / "tmp"

    def job_data_dir(self, override: Path | None = None) -> Path:
        """JOB_DATA_DIR when set, else `<volume>/job_data` (`./job_data` for a local run without a volume)."""
        if override is not None:
            return override
        return self.default_job_data or self.root / "job_data"

    def configure_environment(self) -> None:
        """Create the volume's folders and point HF_HOME, HF_HUB_CACHE and TMPDIR at them.

        Values the operator set explicitly are kept. Must run before huggingface_hub is imported: it reads
        these variables once, at import time.
        """
        if not self.root.is_dir():
            # never create a missing mount point on the container disk: the fitness check reports it instead
            log.warning("volume root %s does not exist; not pointing caches at it", self.root)
            return
        try:
            self.hf_home.mkdir(parents=True, exist_ok=True)
            self.tmp_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            log.warning("volume root %s is not writable (%s); not pointing caches at it", self.root, error)
            return
        os.environ.setdefault("HF_HOME", str(self.hf_home))
        os.environ.setdefault("HF_HUB_CACHE", str(Path(os.environ["HF_HOME"]) / "hub"))
        os.environ.setdefault("TMPDIR", str(self.tmp_dir))

    def check_writable(self) -> None:
        """Raise OSError with a clear message when the volume is missing or read-only."""
        if not self.root.is_dir():
            raise OSError(f"volume root {self.root} does not exist")
        probe = self.root / f".write-probe-{os.getpid()}"
        try:
            probe.write_bytes(b"ok")
        except OSError as err:
            raise OSError(f"volume root {self.root} is not writable: {err}") from err
        finally:
            probe.unlink(missing_ok=True)


def resolve_volume(configured: Path | None = None) -> Volume:
    """The volume root: the configured one, else the serverless mount, else the pod mount, else ./.volume."""
    if configured is not None:
        volume = Volume(configured.resolve(), "VOLUME_ROOT is set")
    elif SERVERLESS_MOUNT.is_dir():
        volume = Volume(SERVERLESS_MOUNT, f"{SERVERLESS_MOUNT} is mounted (serverless network volume)")
    elif POD_MOUNT.is_dir():
        volume = Volume(POD_MOUNT, f"{POD_MOUNT} exists (pod volume)")
    else:
        volume = Volume(
            LOCAL_FALLBACK.resolve(),
            "no network volume found; models in ./.volume, outputs in ./job_data",
            default_job_data=Path("job_data").resolve(),
        )
    if volume.default_job_data is not None:
        volume.root.mkdir(parents=True, exist_ok=True)
    log.info("volume root %s (%s)", volume.root, volume.reason)
    return volume
