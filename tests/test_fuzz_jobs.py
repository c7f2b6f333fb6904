"""Generated junk, and tiny valid jobs, for every job type and the Morpheus envelope through `Worker.handle_sync`.

Every answer must be a result or a field error: never an exception, never `internal error` for a caller's mistake,
every error naming a field the input has (or `type`, `input`, `id`), at most 1,000 characters, and naming no
path of this server outside the job's own folder. A good share of the draws are valid jobs (counted and checked),
so the pipelines run too: image and dataset jobs (ours and Morpheus's) run to their files on the tiny models at
64x64, one step. Training and music jobs take seconds each even so: they run with their cancel already set, so
each goes through intake, the pipeline's load and the start of its run (a training job reads and checks its
images there), and a valid one answers `cancelled`; their full runs are the business of their own tests.
"""

from __future__ import annotations

import base64
import io
import itertools
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from PIL import Image
from training_fixtures import single_thread

from worker.config import Settings
from worker.morpheus import WORKFLOWS
from worker.schemas import JOB_MODELS
from worker.worker import Worker
from worker_client.field_errors import parse_issues

ROOT = Path(__file__).resolve().parents[1]
MAX_ERROR_CHARS = 1000
EXAMPLES = 200
CANCELLED = ("training", "music")  # run with their cancel set (see above)


def _tiny_png() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (30, 140, 90)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


PNG = _tiny_png()
# The smallest job of each kind that runs its pipeline: 64x64, one step, no classifier-free guidance.
VALID: dict[str, dict[str, Any]] = {
    "image": {
        "type": "image",
        "prompt": "a fox",
        "width": 64,
        "height": 64,
        "steps": 1,
        "guidance_scale": 1.0,
    },
    "dataset": {
        "type": "dataset",
        "subject": "a robot",
        "num_images": 1,
        "prompts": ["{subject}"],
        "width": 64,
        "height": 64,
        "steps": 1,
        "guidance_scale": 1.0,
    },
    "training": {
        "type": "training",
        "images": [{"image": PNG, "caption": "ohwx, a square"}],
        "steps": 1,
        "rank": 2,
        "resolution": 64,
        "sample_steps": 1,
    },
    "music": {
        "type": "music",
        "lyrics": "[Verse]\nla la",
        "tags": "piano",
        "duration_s": 0.2,
        "codec_steps": 1,
    },
}
MORPHEUS = {
    "creation": {"prompt": "a fox", "width": 64, "height": 64, "steps": 1, "cfg_scale": 1.0},
    "generate_dataset_from_scratch": {
        "prompt": "a robot",
        "width": 64,
        "height": 64,
        "steps": 1,
        "cfg_scale": 1.0,
        "dataset_size": 1,
    },
}
# Valid values a drawn job may take instead of its base ones (each keeps the job fast)
VARIANTS: dict[str, dict[str, st.SearchStrategy[Any]]] = {
    "image": {
        "seed": st.integers(0, 2**53 - 1),
        "format": st.sampled_from(["png", "jpeg", "webp"]),
        "scheduler": st.sampled_from(["euler", "euler_a", "ddim", "dpmpp_2m"]),
        "height": st.sampled_from([64, 72]),
        "negative_prompt": st.text(max_size=20),
    },
    "dataset": {"seed": st.integers(0, 2**32), "trigger_word": st.sampled_from(["ohwx", "sks"])},
    "training": {"seed": st.integers(0, 2**32), "trigger_word": st.sampled_from(["ohwx", "tok"])},
    "music": {
        "seed": st.integers(0, 2**32),
        "format": st.sampled_from(["wav", "flac"]),
        "topk": st.integers(1, 50),
    },
}
NASTY = st.sampled_from(
    [
        "",
        " ",
        "a" * 5000,
        "../../etc/passwd",
        "/etc/passwd",
        "/tmp/x.png",
        "/runpod-volume/../../etc/hostname",
        "b" * 300 + ".png",
        "http://127.0.0.1:99999/x.png",
        "http://[::1/x.png",
        f"http://{'l' * 70}.com/x.png",
        "https://169.254.169.254/latest/meta-data/",
        "data:image/png;base64,AAAA",
        "data:text/plain,hi",
        "iVBORw0KGgo=",
        "/9j/4AAQSkZJRg",
        "x\n",
        "\x00",
        "{subject}",
        "[Verse]",
        "euler",
        "png",
        "sdxl-base",
        "NaN",
    ]
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    NASTY,
)
JUNK = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8) | NASTY, inner, max_size=3)
    ),
    max_leaves=6,
)


def _fields(job_type: str) -> list[str]:
    return sorted(JOB_MODELS[job_type].model_fields)


@st.composite
def our_job(draw: st.DrawFn) -> tuple[dict[str, Any], bool]:
    """A job input of one of our types, and whether it is built to be valid."""
    job_type = draw(st.sampled_from(sorted(VALID)))
    job = dict(VALID[job_type])
    for name, values in VARIANTS[job_type].items():
        if draw(st.integers(0, 3)) == 0:
            job[name] = draw(values)
    if draw(st.integers(0, 9)) < 4:  # 40% stay valid
        return job, True
    for _ in range(draw(st.integers(1, 3))):
        action = draw(st.sampled_from(["set", "set", "set", "drop", "unknown", "nested"]))
        if action == "set":
            job[draw(st.sampled_from(_fields(job_type)))] = draw(JUNK)
        elif action == "drop" and len(job) > 1:
            job.pop(draw(st.sampled_from(sorted(job))))
        elif action == "unknown":
            job[draw(st.text(min_size=1, max_size=10) | NASTY)] = draw(JUNK)
        else:  # junk where an image source or a LoRA is read
            source = draw(NASTY | st.text(max_size=10))
            job.update(
                {
                    "image": {"loras": [{draw(st.sampled_from(["path", "job_id"])): source}]},
                    "dataset": {"reference_image": source},
                    "training": {"images": [{"image": source, "caption": "x"}]},
                    "music": {"lyrics": source},
                }[job_type]
            )
    return job, False


@st.composite
def morpheus_job(draw: st.DrawFn) -> tuple[dict[str, Any], bool]:
    workflow = draw(st.sampled_from(sorted(MORPHEUS)))
    params = dict(MORPHEUS[workflow])
    if draw(st.booleans()):
        params["seed"] = draw(st.integers(0, 2**32))
    if draw(st.booleans()):
        params["sampler_name"] = draw(
            st.sampled_from(["euler", "euler_ancestral", "dpmpp_2m", "ddim", "uni_pc"])
        )
    if draw(st.integers(0, 9)) < 4:
        return {"workflow_name": workflow, **params}, True
    names = sorted(WORKFLOWS[workflow].params | {"workflow_name", "params", "denoise"})
    for _ in range(draw(st.integers(1, 3))):
        params[draw(st.sampled_from(names))] = draw(JUNK)
    nested = draw(st.booleans())
    raw = {"workflow_name": params.pop("workflow_name", workflow)}
    return ({**raw, "params": params} if nested else {**raw, **params}), False


def envelope() -> st.SearchStrategy[tuple[Any, bool]]:
    return st.one_of(our_job(), our_job(), morpheus_job(), JUNK.map(lambda junk: (junk, False)))


def _each_valid_job(test: Any) -> Any:
    """Every valid base job once, whatever the random draws pick."""
    bases = [*VALID.values(), *({"workflow_name": name, **params} for name, params in MORPHEUS.items())]
    for base in bases:
        test = example(drawn=(base, True), job_id="", own_id=1)(test)
    return test


@pytest.fixture(scope="module")
def worker(session_volume: Path, tmp_path_factory: pytest.TempPathFactory) -> Worker:
    job_data = tmp_path_factory.mktemp("fuzz") / "job_data"
    settings = Settings(
        volume_root=session_volume,
        job_data_dir=job_data,
        model_profile="tiny",
        worker_jobs=("image", "dataset", "training", "music"),
        max_inline_images=2,
    )
    return Worker(settings).start()


def _field_names(raw: Any) -> set[str]:
    """Every name an error about `raw` may start with."""
    names = {"type", "input", "id", "s3Config", "workflow_name", "params"}
    for model in JOB_MODELS.values():
        names |= set(model.model_fields)
    for workflow in WORKFLOWS.values():
        names |= set(workflow.params)
    if isinstance(raw, dict):  # an unknown field is named as sent
        names |= {str(key)[:60] for key in raw}
        if isinstance(raw.get("params"), dict):
            names |= {str(key)[:60] for key in raw["params"]}
    return names


def _server_paths(worker: Worker, tmp_root: Path) -> list[str]:
    return [
        str(path)
        for path in (worker.volume.root, worker.store.root, ROOT, Path(sys.prefix), tmp_root)
        if str(path) != "/"
    ]


def check_answer(
    worker: Worker, job_id: str, raw: Any, answer: Any, server_paths: list[str], cancelled: bool
) -> bool:
    """Assert the answer's contract; True when it is a result (or, for a job run cancelled, the cancel)."""
    assert isinstance(answer, dict), answer
    if cancelled and answer.get("error", "").startswith("cancelled: "):
        assert not (worker.store.root / job_id).exists(), answer
        return True
    if "error" not in answer:
        folder = worker.store.root / job_id
        assert answer["outputs"] and (folder / "result.json").is_file(), answer
        assert all(Path(output["path"]).is_relative_to(folder) for output in answer["outputs"]), answer
        return True
    error = answer["error"]
    assert isinstance(error, str) and error, answer
    assert not error.startswith("internal error"), (raw, error)
    assert len(error) <= MAX_ERROR_CHARS, (raw, len(error))
    issues = parse_issues(error)
    assert issues and error.startswith(f"{issues[0].field}: "), (raw, error)
    allowed = _field_names(raw)
    for issue in issues:
        assert issue.field.split(".")[0].split("[")[0] in allowed, (raw, error)
    shown = error.replace(str(worker.store.root / job_id), "<own folder>")
    for path in server_paths:
        assert path not in shown, (raw, error)
    assert " at 0x" not in error, (raw, error)
    return False


def test_generated_jobs_answer_a_result_or_a_field_error(
    worker: Worker, tmp_path_factory: pytest.TempPathFactory
) -> None:
    counts: Counter[str] = Counter()
    numbers = itertools.count()
    server_paths = _server_paths(worker, tmp_path_factory.getbasetemp())

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        phases=[Phase.explicit, Phase.generate],
    )
    @given(
        drawn=envelope(), job_id=st.one_of(st.just(""), JUNK, st.text(max_size=8)), own_id=st.integers(0, 9)
    )
    @_each_valid_job
    def check(drawn: tuple[Any, bool], job_id: Any, own_id: int) -> None:
        raw, built_valid = drawn
        if own_id:  # most draws get a fresh, valid id: each job has its own folder
            job_id = f"fz-{next(numbers)}"
        cancel = threading.Event()
        if isinstance(raw, dict) and raw.get("type") in CANCELLED:
            cancel.set()
        answer = worker.handle_sync({"id": job_id, "input": raw}, cancel_event=cancel)
        succeeded = check_answer(worker, str(job_id), raw, answer, server_paths, cancel.is_set())
        counts["valid" if succeeded else "refused"] += 1
        if built_valid and own_id:
            assert succeeded, (raw, answer)
            counts[f"valid {raw.get('type') or raw.get('workflow_name')}"] += 1

    with single_thread():  # two OpenMP threads on a busy 2-core machine spin against each other
        check()
    assert counts["valid"] >= EXAMPLES // 5, counts  # the pipelines ran, not only the validation
    assert counts["refused"] >= EXAMPLES // 3, counts
    for kind in (*VALID, "creation"):
        assert counts[f"valid {kind}"] >= 1, counts
