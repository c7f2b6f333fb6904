"""Auto-captions: images without a caption (or with `caption: "auto"`) are captioned by the tiny BLIP, trigger word
first; the set is written to the job's dataset/ folder, the captions are returned, and the folder retrains as
it is; the sample grid is in the outputs."""

from __future__ import annotations

import pytest
from PIL import Image
from safetensors import safe_open
from training_fixtures import (  # noqa: F401  (fixtures are found by name)
    TRAINING,
    Chain,
    Lab,
    assert_same_state,
    chain_fixture,
    lab_fixture,
    one_thread_fixture,
    png_base64,
    snapshot,
    tiny_ip_adapter_dir_fixture,
)

pytestmark = pytest.mark.usefixtures("one_thread")

QUIET = {"sample_every": 0, "sample_grid": False, "checkpoint_every": 0, "steps": 1}


def test_inline_images_without_captions_are_captioned_written_and_returned(chain: Chain, lab: Lab) -> None:
    images = [
        {"image": png_base64(color=(200, 30, 30)), "caption": "a red square"},
        {"image": png_base64(size=(60, 90), color=(30, 30, 200))},
        {"image": png_base64(size=(90, 60), color=(30, 200, 30)), "caption": "auto"},
    ]
    result = lab.run("captions-inline", {**TRAINING, **QUIET, "images": images, "trigger_word": "qwz"})
    assert "error" not in result, result
    folder = lab.store.root / "captions-inline" / "dataset"
    written = result["auto_captions"]
    assert [entry["image"] for entry in written] == [
        "captions-inline/dataset/0002.png",
        "captions-inline/dataset/0003.png",
    ]
    for entry in written:
        caption = entry["caption"]
        assert caption.startswith("qwz, ") and len(caption) > len("qwz, ")  # BLIP wrote words after it
        assert "[" not in caption  # no special tokens
        assert (folder / entry["image"].rsplit("/", 1)[1]).with_suffix(".txt").read_text() == caption
    assert (folder / "0001.txt").read_text() == "qwz, a red square"
    with Image.open(folder / "0002.png") as image:
        assert image.size == (60, 90)
    kinds = [o["kind"] for o in result["outputs"]]
    assert kinds.count("training_image") == 3 and kinds.count("caption") == 3
    assert [o["auto"] for o in result["outputs"] if o["kind"] == "caption"] == [False, True, True]
    with safe_open(
        str(lab.store.root / "captions-inline" / "lora" / "robot.safetensors"), framework="pt"
    ) as f:
        assert f.metadata()["ss_num_train_images"] == "3"
    assert "caption" in {p.get("phase") for p in lab.progress}

    # the written folder is a dataset as it stands: it retrains with no captioning
    again = lab.run(
        "captions-again", {**TRAINING, **QUIET, "dataset_path": "job_data/captions-inline/dataset"}
    )
    assert "error" not in again, again
    assert "auto_captions" not in again and again["num_images"] == 3
    assert_same_state(chain.base, snapshot(lab.pipe))


@pytest.mark.slow
def test_folder_images_without_caption_files_leave_the_source_folder_alone(chain: Chain, lab: Lab) -> None:
    source = lab.root / "datasets" / "plain-photos"
    source.mkdir(parents=True)
    Image.new("RGB", (64, 80), (120, 60, 10)).save(source / "holiday.jpg")
    Image.new("RGB", (80, 64), (10, 60, 120)).save(source / "beach.png")
    (source / "beach.txt").write_text("a beach at noon")
    result = lab.run("captions-folder", {**TRAINING, **QUIET, "dataset_path": "datasets/plain-photos"})
    assert "error" not in result, result
    assert [entry["image"] for entry in result["auto_captions"]] == ["captions-folder/dataset/holiday.jpg"]
    dataset = lab.store.root / "captions-folder" / "dataset"
    assert (dataset / "holiday.jpg").read_bytes() == (source / "holiday.jpg").read_bytes()
    assert (dataset / "holiday.txt").read_text() == result["auto_captions"][0]["caption"]
    assert (dataset / "beach.txt").read_text() == "a beach at noon"
    assert sorted(path.name for path in source.iterdir()) == ["beach.png", "beach.txt", "holiday.jpg"]


def test_sample_grid_shows_the_prompt_at_three_lora_scales(chain: Chain, lab: Lab) -> None:
    grid = next(o for o in chain.training["outputs"] if o["kind"] == "sample_grid")
    assert grid["relpath"] == "chain-training/samples/grid.png" and grid["scales"] == [0.0, 0.5, 1.0]
    with Image.open(grid["path"]) as image:
        assert image.size == (3 * 64, 64)
        tiles = [image.crop((i * 64, 16, i * 64 + 64, 64)).tobytes() for i in range(3)]
    assert len(set(tiles)) == 3  # the LoRA's strength changes the picture
