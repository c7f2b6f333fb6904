"""Out of GPU memory inside a job: the answer asks RunPod for a fresh worker, and this one still serves.

Marked `cuda`: skipped without CUDA (tests/test_worker_errors.py covers the CPU allocator's refusal).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from worker.config import Settings
from worker.worker import Worker

pytestmark = pytest.mark.cuda

JOB = {"type": "image", "prompt": "a lighthouse", "width": 64, "height": 64, "steps": 1, "seed": 1}


def test_out_of_memory_in_a_job_asks_for_a_fresh_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    worker = Worker(Settings(volume_root=tmp_path, model_profile="tiny", worker_jobs=("image",))).start()
    assert worker.device == "cuda"
    pipeline = worker.pipeline("image")
    card = torch.cuda.get_device_properties(0).total_memory
    real_run = pipeline.run

    def run_past_the_card(job: Any, ctx: Any) -> Any:
        # what a job too large for the card meets: the CUDA allocator's own OutOfMemoryError
        ctx.folder.write_bytes("partial.bin", b"x", kind="log")
        torch.empty(card + 2**30, dtype=torch.uint8, device="cuda")
        return real_run(job, ctx)

    monkeypatch.setattr(pipeline, "run", run_past_the_card)
    answer = worker.handle_sync({"id": "cuda-oom", "input": JOB})
    assert answer["refresh_worker"] is True
    assert answer["error"].startswith("out of memory"), answer
    assert not (worker.store.root / "cuda-oom").exists(), "the failed job's folder was kept"

    monkeypatch.undo()
    again = worker.handle_sync({"id": "cuda-after-oom", "input": JOB})
    assert "error" not in again, again
    assert torch.cuda.memory_allocated() < card // 2
