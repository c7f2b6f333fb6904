"""The `Worker`: start-up (volume, model cache, pipelines) and the handling of one job."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cache.errors import InsufficientSpaceError, no_space
from cache.volume import Volume, resolve_volume
from worker import uploads
from worker.config import Settings
from worker.inputs import VolumeFiles
from worker.intake import JobRequest, read_request
from worker.job_folders import DiskFullError, JobFolder, JobStore, UnsafePathError
from worker.pipelines import REGISTRY, pipeline_class
from worker.pipelines.base import (
    JobCancelled,
    JobContext,
    LoadEnv,
    Pipeline,
    PipelineOutput,
    Progress,
    is_out_of_memory,
)
from worker.schemas import JobInputError, JobResult
from worker.schemas.common import QUOTE_CHARS

log = logging.getLogger(__name__)


def _free_accelerator_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class Worker:
    """Serves the enabled job types in-process, one job at a time."""

    def __init__(
        self,
        settings: Settings | None = None,
        progress_sink: Callable[[dict[str, Any], dict[str, Any]], None] | None = None,
    ) -> None:
        """`progress_sink(job, payload)` receives throttled progress; default: RunPod's progress_update on the
        platform, a log line elsewhere."""
        self.settings = settings or Settings.from_env()
        self._progress_sink = progress_sink or self._default_progress_sink()
        self.volume: Volume = resolve_volume(self.settings.volume_root)
        self.volume.configure_environment()
        self.store = JobStore(self.volume.job_data_dir(self.settings.job_data_dir))
        self.jobs = tuple(job for job in self.settings.worker_jobs if job in REGISTRY)
        self.device = "cpu"
        self.profile = "tiny"
        self._started = False
        self._cache: Any = None
        self._pipelines: dict[str, Pipeline] = {}
        self._load_lock = threading.RLock()
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="job")

    def start(self) -> Worker:
        """Pick the device and model profile; with WARM_ON_START, fetch and load every enabled job's models now."""
        import torch

        from cache import ModelCache

        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        requested = self.settings.model_profile
        self.profile = (
            requested if requested != "auto" else ("production" if self.device == "cuda" else "tiny")
        )
        if self.profile == "tiny":
            log.warning("model profile tiny (%s): random-weight demo models, outputs are noise", requested)
        else:
            log.info("model profile %s on %s", self.profile, self.device)
        self._cache = ModelCache.from_settings(self.volume.models_dir, self.settings.cache_settings())
        self._started = True
        if self.settings.warm_on_start and self.settings.cache.prefetch_models:
            try:  # PREFETCH_MODELS: fetched with the warm-up, and never evicted
                self._cache.prefetch(self.settings.cache.prefetch_models, self.settings.cache_wait_timeout_s)
            except Exception:
                log.exception("prefetch of PREFETCH_MODELS failed; jobs that name them will fetch them")
        if self.settings.warm_on_start:
            for job_type in self.jobs:
                try:
                    self.pipeline(job_type)
                except Exception:
                    log.exception("warm-up of %s failed; its jobs will retry the load", job_type)
        return self

    @property
    def loaded_jobs(self) -> tuple[str, ...]:
        """The job types whose pipeline is loaded and resident."""
        return tuple(self._pipelines)

    def fitness_check(self) -> None:
        """RunPod fitness check: the volume must exist and be writable."""
        self.volume.check_writable()

    def model_path(self, name: str) -> Path:
        """The local folder of catalog model `name`, fetched through the shared cache if needed."""
        from cache import catalog

        spec = catalog.get(name, self.profile)
        return self._cache.ensure(spec, timeout=self.settings.cache_wait_timeout_s)

    def pipeline(self, job_type: str) -> Pipeline:
        """The loaded pipeline of `job_type`, loading it on first use."""
        with self._load_lock:
            if job_type not in self._pipelines:
                if not self._started:
                    self.start()
                started = time.perf_counter()
                pipeline = pipeline_class(job_type)()
                pipeline.load(
                    LoadEnv(
                        settings=self.settings,
                        volume=self.volume,
                        files=VolumeFiles(self.volume.root, [self.store.root]),
                        models=self.model_path,
                        device=self.device,
                        profile=self.profile,
                        store=self.store,
                        pipeline=self.pipeline,
                    )
                )
                self._pipelines[job_type] = pipeline
                log.info("loaded %s pipeline in %.2fs", job_type, time.perf_counter() - started)
            return self._pipelines[job_type]

    def handle_sync(self, job: dict[str, Any], cancel_event: threading.Event | None = None) -> dict[str, Any]:
        """Run one job to its answer, which is also what `result.json` holds; every failure becomes
        `{"error": "..."}`, never an exception."""
        job_id = str(job.get("id", ""))[:QUOTE_CHARS] if isinstance(job, dict) else ""  # for log lines only
        folder: JobFolder | None = None
        request: JobRequest | None = None
        try:
            request = read_request(job, self.settings, self.jobs)
            log.info("job %s: %s started", job_id, request.type)
            load_started = time.perf_counter()
            pipeline = self.pipeline(request.type)
            load_s = time.perf_counter() - load_started
            folder = self.store.job(request.job_id)
            folder.begin()
            ctx = JobContext(
                request=request,
                folder=folder,
                progress=Progress(
                    lambda payload: self._progress_sink(job, payload), self.settings.progress_interval_s
                ),
                cancel_event=cancel_event or threading.Event(),
            )
            run_started = time.perf_counter()
            output: PipelineOutput = pipeline.run(request.job, ctx)
            metrics = {"load_s": round(load_s, 4), "run_s": round(time.perf_counter() - run_started, 4)}
            metrics.update(output.metrics)
            result = JobResult(
                job_id=request.job_id,
                type=request.type,
                outputs=output.outputs,
                metrics=metrics,
                **output.fields,
            ).model_dump(mode="json")
            answer = self._deliver(request, folder, result)
            log.info("job %s: done, %d file(s) in %.2fs", job_id, len(output.outputs), metrics["run_s"])
            return answer
        except JobInputError as error:
            if folder is not None:  # refused inside the pipeline: nothing of this run stays
                folder.discard()
            if request is not None and request.envelope is not None:
                error = request.envelope.explain(error)  # Morpheus's names for its params, wherever refused
            log.info("job %s: refused: %s", job_id, error)
            return {"error": str(error)}
        except UnsafePathError as error:
            if folder is not None:
                folder.discard()
            log.info("job %s: refused: %s", job_id, error)
            return {"error": str(error)}
        except DiskFullError as error:
            if folder is not None:
                folder.discard()
            log.error("job %s: %s", job_id, error)
            return {"error": str(error)}
        except uploads.UploadError as error:
            log.error("job %s: %s", job_id, error)
            return {"error": str(error)}
        except JobCancelled:
            if folder is not None:
                folder.discard()
            log.info("job %s: cancelled; partial outputs removed", job_id)
            return {"error": "cancelled: the job was cancelled before it finished; no outputs were kept"}
        except Exception as error:  # noqa: BLE001 - any failure becomes the job's error; the worker keeps serving
            if folder is not None:
                folder.discard()
            if is_out_of_memory(error):
                _free_accelerator_memory()
                log.error("job %s: out of memory; asking RunPod to replace this worker", job_id)
                return {
                    "error": f"out of memory: {error}. Try a smaller size or batch.",
                    "refresh_worker": True,
                }
            if isinstance(error, InsufficientSpaceError) or no_space(error) is not None:
                # the log names the model and the path; the answer names neither server path
                log.error("job %s: the volume is full: %s", job_id, error)
                what = "the models of" if isinstance(error, InsufficientSpaceError) else "running"
                return {
                    "error": f"disk full: no space left on the volume for {what} job {job_id}; free space on the "
                    "volume (or grow it) and run the job again"
                }
            log.error("job %s: failed: %s", job_id, traceback.format_exc())
            return {"error": f"internal error: {type(error).__name__}: {error}"}

    @staticmethod
    def _deliver(request: JobRequest, folder: JobFolder, result: dict[str, Any]) -> dict[str, Any]:
        """The final answer (upload URLs and Morpheus's keys included), written as `result.json` last.

        A failed upload still records the finished job, without URLs and with `upload_error`: its outputs are
        complete on the volume and later jobs may use them."""
        try:
            if request.bucket is not None:
                result = uploads.upload_outputs(request.bucket, result)
        except uploads.UploadError as error:
            folder.write_result({**result, "upload_error": str(error)})
            raise
        answer = request.envelope.answer(result) if request.envelope else result
        folder.write_result(answer)
        return answer

    async def handle(self, job: dict[str, Any]) -> dict[str, Any]:
        """The RunPod handler. A cancelled task (RunPod cancel or timeout) stops the job between steps."""
        cancel_event = threading.Event()
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, self.handle_sync, job, cancel_event)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            cancel_event.set()
            log.info("job %s: cancel requested; stopping at the next step", job.get("id"))
            await asyncio.wait([future])
            raise

    def _default_progress_sink(self) -> Callable[[dict[str, Any], dict[str, Any]], None]:
        if self.settings.runpod_serverless:
            from runpod.serverless import progress_update

            return progress_update
        return lambda job, payload: log.info("job %s: progress %s", job.get("id"), payload)
