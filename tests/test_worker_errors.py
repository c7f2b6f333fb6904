"""Failures inside a pipeline: out of memory asks RunPod for a fresh worker, other crashes are reported, and the
worker keeps serving after both."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

import pytest

from cache import ModelCache, ModelSpec, Part, register_builtin
from worker import pipelines, schemas
from worker.config import Settings
from worker.pipelines.base import JobContext, LoadEnv, PipelineOutput
from worker.worker import Worker


class ProbeJob(schemas.StrictInput):
    type: Literal["probe"] = "probe"
    failure: Literal["none", "oom", "crash", "refuse", "disk_full", "disk_full_elsewhere", "cache_full"] = (
        "none"
    )


class ProbePipeline:
    """A pipeline that writes a file, then fails the way the job asks."""

    job_type: ClassVar[str] = "probe"
    model_names: ClassVar[tuple[str, ...]] = ()

    def load(self, env: LoadEnv) -> None:
        pass

    def run(self, job: ProbeJob, ctx: JobContext) -> PipelineOutput:
        import torch

        written = ctx.folder.write_bytes("partial.bin", b"half a result", kind="blob")
        if job.failure == "oom":
            torch.empty(2**50, dtype=torch.uint8)  # a real allocation the CPU allocator refuses
        if job.failure == "crash":
            raise ZeroDivisionError("a bug in a pipeline")
        if (
            job.failure == "refuse"
        ):  # an input found wrong only once the pipeline runs (a LoRA that is no LoRA)
            raise schemas.JobInputError("failure", "refused while running")
        if job.failure == "disk_full":  # the kernel's own ENOSPC: /dev/full refuses every write
            ctx.folder.write_with("nested/out.bin", lambda temp: Path("/dev/full").write_bytes(b"x"), "blob")
        if job.failure == "disk_full_elsewhere":
            Path("/dev/full").write_bytes(b"x")
        if job.failure == "cache_full":  # a model fetch the full volume cuts off
            register_builtin("probe-full", lambda dest: Path("/dev/full").write_bytes(b"x"))
            spec = ModelSpec("probe-full", parts=(Part(kind="builtin", generator="probe-full"),))
            ModelCache(ctx.folder.root.parent / "probe-models", lease_s=3).ensure(spec, timeout=10)
        return PipelineOutput(outputs=[written])


@pytest.fixture
def probe_worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Worker:
    monkeypatch.setitem(schemas.JOB_MODELS, "probe", ProbeJob)
    monkeypatch.setitem(pipelines.REGISTRY, "probe", f"{__name__}:ProbePipeline")
    settings = Settings(
        volume_root=tmp_path, model_profile="tiny", worker_jobs=("probe",), warm_on_start=False
    )
    return Worker(settings).start()


def probe(worker: Worker, job_id: str, failure: str) -> dict[str, Any]:
    return worker.handle_sync({"id": job_id, "input": {"type": "probe", "failure": failure}})


def test_out_of_memory_asks_for_a_fresh_worker_and_keeps_nothing(probe_worker: Worker) -> None:
    result = probe(probe_worker, "oom", "oom")
    assert result["error"].startswith("out of memory: ")
    assert result["refresh_worker"] is True
    assert not (probe_worker.store.root / "oom").exists()
    assert probe(probe_worker, "after-oom", "none")["outputs"][0]["bytes"] == len(b"half a result")


def test_a_crash_is_an_error_string_and_the_worker_keeps_serving(probe_worker: Worker) -> None:
    result = probe(probe_worker, "crash", "crash")
    assert result == {"error": "internal error: ZeroDivisionError: a bug in a pipeline"}
    assert not (probe_worker.store.root / "crash").exists()
    assert "error" not in probe(probe_worker, "after-crash", "none")


@pytest.mark.parametrize("failure", ["refuse", "disk_full", "disk_full_elsewhere", "cache_full"])
def test_a_job_that_fails_inside_its_pipeline_leaves_no_folder(probe_worker: Worker, failure: str) -> None:
    result = probe(probe_worker, f"gone-{failure}", failure)
    assert "error" in result and not result["error"].startswith("internal error"), result
    assert not (probe_worker.store.root / f"gone-{failure}").exists()
    assert "error" not in probe(probe_worker, f"after-{failure}", "none")


def test_a_full_volume_is_named_with_the_file_being_written(probe_worker: Worker) -> None:
    result = probe(probe_worker, "full", "disk_full")
    assert result == {
        "error": "disk full: no space left on the volume while writing full/nested/out.bin in job_data; "
        "free space on the volume (or grow it) and run the job again"
    }
    elsewhere = probe(probe_worker, "full-2", "disk_full_elsewhere")["error"]
    assert elsewhere.startswith("disk full: no space left on the volume for running job full-2")
    assert "Errno" not in elsewhere and "/dev/full" not in elsewhere
    models = probe(probe_worker, "full-3", "cache_full")["error"]
    assert models.startswith("disk full: no space left on the volume for the models of job full-3")
    assert str(probe_worker.volume.root) not in models


def test_a_huge_job_id_is_answered_and_logged_in_part(
    probe_worker: Worker, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("INFO"):
        result = probe_worker.handle_sync({"id": "j" * 2_000_000, "input": {"type": "probe"}})
    assert result["error"].startswith("id: ") and len(result["error"]) < 300
    assert max(len(record.getMessage()) for record in caplog.records) < 1000
