"""Every list of job types in the project is the registry's (`worker_client.jobs.JOB_TYPES`)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from worker_client.jobs import JOB_TYPES, REGISTRY

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_the_registry_names_each_type_once() -> None:
    assert len(set(JOB_TYPES)) == len(JOB_TYPES) == len(REGISTRY) >= 4
    assert len({job.celery_task for job in REGISTRY}) == len(REGISTRY)


def test_schemas_pipelines_and_settings_follow_the_registry() -> None:
    from worker.config import Settings
    from worker.pipelines import REGISTRY as PIPELINES
    from worker.schemas import JOB_MODELS

    assert set(JOB_MODELS) == set(PIPELINES) == set(JOB_TYPES)
    assert Settings.from_env({}).worker_jobs == JOB_TYPES
    for job_type, model in JOB_MODELS.items():
        assert model.model_fields["type"].default == job_type


def test_the_catalog_lists_models_for_every_job_type() -> None:
    from cache import catalog

    assert set(catalog.JOB_MODELS) == set(JOB_TYPES)


def test_an_unknown_type_in_worker_jobs_names_the_registry() -> None:
    from worker.config import ConfigError, Settings

    with pytest.raises(ConfigError, match=", ".join(JOB_TYPES)):
        Settings.from_env({"WORKER_JOBS": "music,video"})


def test_the_celery_tasks_are_the_registry_s() -> None:
    pytest.importorskip("celery")
    from worker_client import celery_tasks

    assert {job_type: task.name for job_type, task in celery_tasks.TASKS.items()} == {
        job.name: f"worker_client.celery_tasks.{job.celery_task}" for job in REGISTRY
    }


def test_the_readme_tables_are_the_registry_s() -> None:
    """The overview table lists the registry's job types in its order, and each has its own field table."""
    overview = re.search(r"^\| job type \|.*?\n\n", README, re.MULTILINE | re.DOTALL)
    assert overview, "README has no job-type overview table"
    listed = re.findall(r"^\| `([a-z_]+)` \|", overview.group(0), re.MULTILINE)
    assert tuple(listed) == JOB_TYPES
    sections = re.findall(r"^### `([a-z_]+)`$", README, re.MULTILINE)
    assert set(JOB_TYPES) <= set(sections)
