"""One pipeline per job type, imported only when the worker serves that type."""

from __future__ import annotations

import importlib

from worker_client.jobs import JOB_TYPES

# job type -> "module:class"; importing a module must stay cheap (torch is imported inside `load`)
REGISTRY: dict[str, str] = {
    "music": "worker.pipelines.music:MusicPipeline",
    "image": "worker.pipelines.image:ImagePipeline",
    "dataset": "worker.pipelines.dataset:DatasetPipeline",
    "training": "worker.pipelines.training:TrainingPipeline",
}
if sorted(REGISTRY) != sorted(JOB_TYPES):
    raise ImportError(f"worker.pipelines serves {sorted(REGISTRY)}, the job types are {sorted(JOB_TYPES)}")


def pipeline_class(job_type: str) -> type:
    module_name, _, class_name = REGISTRY[job_type].partition(":")
    return getattr(importlib.import_module(module_name), class_name)
