"""Dataset jobs on the tiny SDXL: the kohya/ai-toolkit layout, captions with the trigger word, the index and zip,
and a reference image through a real (tiny) IP-Adapter that leaves the resident pipeline as it was."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
from PIL import Image
from training_fixtures import (  # noqa: F401  (fixtures are found by name)
    DATASET,
    Lab,
    assert_same_state,
    lab_fixture,
    one_thread_fixture,
    png_base64,
    render,
    snapshot,
    tiny_ip_adapter_dir_fixture,
)

from worker.pipelines.dataset import DEFAULT_SHOTS, shot_prompt
from worker.schemas import JobInputError, parse_job

pytestmark = pytest.mark.usefixtures("one_thread")


def test_dataset_layout_captions_index_and_zip(lab: Lab) -> None:
    result = lab.run("ds-layout", {**DATASET, "num_images": 3, "trigger_word": "zxq", "seed": 9, "zip": True})
    assert "error" not in result, result
    folder = Path(result["dataset_dir"])
    assert folder == lab.store.root / "ds-layout" / "dataset"
    images = sorted(folder.glob("*.png"))
    assert [p.name for p in images] == ["0001.png", "0002.png", "0003.png"]
    for number, path in enumerate(images):
        caption = path.with_suffix(".txt").read_text()
        assert caption == f"zxq, {shot_prompt(DEFAULT_SHOTS[number], 'a small green robot')}"
        with Image.open(path) as image:
            assert image.size == (64, 64)
    index = json.loads((folder / "dataset.json").read_text())
    assert index["trigger_word"] == "zxq" and index["seed"] == 9 and not index["reference_image"]
    assert [entry["seed"] for entry in index["images"]] == [9, 10, 11]
    assert [entry["caption"] for entry in index["images"]] == [
        p.with_suffix(".txt").read_text() for p in images
    ]
    with zipfile.ZipFile(lab.store.root / "ds-layout" / "dataset.zip") as archive:
        assert sorted(archive.namelist()) == sorted(
            [f"dataset/{n:04d}.{ext}" for n in (1, 2, 3) for ext in ("png", "txt")] + ["dataset/dataset.json"]
        )
    kinds = sorted({output["kind"] for output in result["outputs"]})
    assert kinds == ["archive", "caption", "dataset", "image"]


def test_each_image_has_its_own_seed_so_one_can_be_redrawn(lab: Lab) -> None:
    templates = ["{subject} on a beach", "studio photo"]
    pair = lab.run("ds-pair", {**DATASET, "prompts": templates, "seed": 40})
    second_alone = lab.run("ds-second", {**DATASET, "prompts": templates[1:], "seed": 41, "num_images": 1})
    pair_images = [o["sha256"] for o in pair["outputs"] if o["kind"] == "image"]
    alone = [o["sha256"] for o in second_alone["outputs"] if o["kind"] == "image"]
    assert alone == pair_images[1:]
    captions = sorted((lab.store.root / "ds-pair" / "dataset").glob("*.txt"))
    assert [p.read_text() for p in captions] == [
        "ohwx, a small green robot on a beach",
        "ohwx, a small green robot, studio photo",
    ]


def test_reference_image_conditions_the_set_and_is_unloaded(lab: Lab) -> None:
    before, before_image = snapshot(lab.pipe), render(lab)
    reference = png_base64(color=(240, 200, 10))
    plain = lab.run("ds-noref", {**DATASET, "num_images": 1, "seed": 3})
    guided = lab.run("ds-ref", {**DATASET, "num_images": 1, "seed": 3, "reference_image": reference})
    assert "error" not in guided, guided
    assert json.loads((lab.store.root / "ds-ref" / "dataset" / "dataset.json").read_text())["reference_image"]
    image_sha = [next(o["sha256"] for o in r["outputs"] if o["kind"] == "image") for r in (plain, guided)]
    assert image_sha[0] != image_sha[1]
    # the adapter, its image encoder and its attention processors are gone: same tensors, same output
    assert_same_state(before, snapshot(lab.pipe))
    assert (render(lab) == before_image).all()


def test_reference_image_from_the_volume(lab: Lab) -> None:
    (lab.root / "refs").mkdir(exist_ok=True)
    Image.new("RGB", (90, 70), (20, 20, 220)).save(lab.root / "refs" / "me.jpg")
    result = lab.run(
        "ds-volume-ref", {**DATASET, "num_images": 1, "reference_image": "/workspace/refs/me.jpg"}
    )
    assert "error" not in result, result


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"reference_image": "not-an-image"}, "reference_image: not a URL, a volume path or valid base64"),
        ({"reference_image": "/runpod-volume/../../etc/x.png"}, "reference_image: "),
        ({"reference_image": "refs/none.png"}, "reference_image: no file 'refs/none.png'"),
    ],
)
def test_bad_reference_images_are_field_errors(lab: Lab, fields: dict, message: str) -> None:
    result = lab.run("ds-bad-ref", {**DATASET, **fields})
    assert result["error"].startswith(message), result
    assert not (lab.store.root / "ds-bad-ref" / "dataset").exists()


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"num_images": 0}, "num_images"),
        ({"num_images": 500}, "num_images"),
        ({"width": 100}, "width"),
        ({"subject": ""}, "subject"),
        ({"trigger_word": "a, b"}, "trigger_word"),
        ({"prompts": []}, "prompts"),
        ({"prompts": ["ok", ""]}, "prompts.1"),
        ({"reference_strength": 2}, "reference_strength"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_schema_errors_name_the_field(fields: dict, field: str) -> None:
    with pytest.raises(JobInputError, match=rf"^{field}: "):
        parse_job({**DATASET, **fields})


@pytest.mark.parametrize("model", ["z-image-turbo", "flux2-klein-4b"])
def test_a_dataset_drawn_with_another_family_keeps_the_layout(session_volume: Path, model: str) -> None:
    from worker.config import Settings
    from worker.worker import Worker

    settings = Settings(
        volume_root=session_volume, model_profile="tiny", worker_jobs=("dataset",), image_models=(model,)
    )
    worker = Worker(settings).start()
    job = {**DATASET, "model": model, "width": 80, "seed": 4, "trigger_word": "zxq"}
    result = worker.handle_sync({"id": f"ds-{model}", "input": job})
    assert "error" not in result, result
    assert result["model"] == model
    folder = Path(result["dataset_dir"])
    assert sorted(p.name for p in folder.iterdir()) == [
        "0001.png",
        "0001.txt",
        "0002.png",
        "0002.txt",
        "dataset.json",
    ]
    for number in (1, 2):
        caption = (folder / f"{number:04d}.txt").read_text()
        assert caption == f"zxq, {shot_prompt(DEFAULT_SHOTS[number - 1], 'a small green robot')}"
        with Image.open(folder / f"{number:04d}.png") as image:
            assert image.size == (80, 64)
    index = json.loads((folder / "dataset.json").read_text())
    assert index["model"] == model and [entry["seed"] for entry in index["images"]] == [4, 5]
    refused = worker.handle_sync({"id": "ds-ref", "input": {**job, "reference_image": "x.png"}})
    assert refused == {
        "error": f"reference_image: the IP-Adapter is SDXL's, {model} jobs take no reference image"
    }
