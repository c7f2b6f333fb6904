"""Training jobs on the tiny SDXL: a LoRA in kohya and diffusers formats that load back alike, the log and plot,
checkpoints and samples, cancel keeping the last checkpoint, field errors, and a resident pipeline that comes
back bit-for-bit unchanged."""

from __future__ import annotations

import base64
import csv
import json
import re
import struct
import threading
import zlib
from pathlib import Path

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
    lora_loaded,
    one_thread_fixture,
    png_base64,
    render,
    snapshot,
    tiny_ip_adapter_dir_fixture,
)

from worker.schemas import JobInputError, parse_job
from worker.training.kohya import kohya_module_name, sgm_unet_path

pytestmark = pytest.mark.usefixtures("one_thread")

# kohya's networks.lora set: every Linear of the transformer blocks, and each Transformer2DModel's projections
KOHYA_UNET_KEY = re.compile(
    r"^lora_unet_(input_blocks_[4578]_1|middle_block_1|output_blocks_[0-5]_1)_"
    r"(transformer_blocks_\d_(attn[12]_to_(q|k|v|out_0)|ff_net_0_proj|ff_net_2)|proj_in|proj_out)"
    r"\.(lora_down\.weight|lora_up\.weight|alpha)$"
)
KOHYA_UNET_MODULE = re.compile(
    r"attentions\.\d+\.(transformer_blocks\.\d+\.(attn[12]\.(to_q|to_k|to_v|to_out\.0)|ff\.net\.0\.proj|ff\.net\.2)"
    r"|proj_in|proj_out)$"
)


def outputs_by_kind(result: dict, kind: str) -> list[dict]:
    return [output for output in result["outputs"] if output["kind"] == kind]


def test_training_writes_lora_log_plot_checkpoints_and_samples(chain: Chain, lab: Lab) -> None:
    result = chain.training
    assert result["steps_done"] == 4 and result["cancelled"] is False and result["alpha"] == 2.0
    folder = lab.store.root / "chain-training"
    loras = outputs_by_kind(result, "lora")
    assert [(o["relpath"], o["format"]) for o in loras] == [
        ("chain-training/lora/robot.safetensors", "kohya"),
        ("chain-training/lora/diffusers/pytorch_lora_weights.safetensors", "diffusers"),
    ]
    assert [o["step"] for o in outputs_by_kind(result, "checkpoint")] == [2]
    assert [o["step"] for o in outputs_by_kind(result, "sample")] == [2, 4]
    for sample in outputs_by_kind(result, "sample"):
        with Image.open(sample["path"]) as image:
            assert image.size == (64, 64)
    with (folder / "train_log.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [int(row["step"]) for row in rows] == [1, 2, 3, 4]
    assert all(float(row["loss"]) > 0 and float(row["lr"]) == 1e-3 for row in rows)
    with Image.open(folder / "loss.png") as plot:
        assert plot.format == "PNG" and plot.size == (800, 450)
    assert result["metrics"]["final_loss"] == pytest.approx(float(rows[-1]["loss"]), abs=1e-6)
    reported = [p for p in lab.progress if "loss" in p and p["total"] == 4]
    assert {p["step"] for p in reported} >= {1, 2, 3, 4}


def test_resident_pipeline_is_bit_for_bit_unchanged_after_training(chain: Chain, lab: Lab) -> None:
    after = snapshot(lab.pipe)
    assert_same_state(chain.base, after)  # tensors, dtypes, requires_grad and train/eval flags, processors
    assert not hasattr(lab.pipe.unet, "peft_config")
    assert (render(lab) == chain.base_image).all()


def test_kohya_file_keys_alpha_and_metadata(chain: Chain, lab: Lab) -> None:
    path = lab.store.root / "chain-training" / "lora" / "robot.safetensors"
    with safe_open(str(path), framework="pt") as handle:
        keys = list(handle.keys())
        metadata = handle.metadata()
        tensors = {key: handle.get_tensor(key) for key in keys}
    assert keys and all(KOHYA_UNET_KEY.match(key) for key in keys), [
        k for k in keys if not KOHYA_UNET_KEY.match(k)
    ]
    modules = {key.rsplit(".", 2)[0] for key in keys if key.endswith(".lora_down.weight")}
    # 17 transformer blocks x (attn1, attn2 x (q, k, v, out) + ff in, ff out) + 11 Transformer2DModels x (in, out)
    assert len(modules) == 17 * 10 + 11 * 2
    assert len(keys) == 3 * len(modules)
    for module in modules:
        down, up = tensors[f"{module}.lora_down.weight"], tensors[f"{module}.lora_up.weight"]
        assert down.shape[0] == 4 and up.shape[1] == 4
        assert tensors[f"{module}.alpha"].item() == 2.0
    # every kohya name is the diffusers UNet module, renamed: nothing missing, nothing invented
    unet = lab.pipe.unet
    trained = {
        kohya_module_name("unet", name, 2)
        for name, _ in unet.named_modules()
        if KOHYA_UNET_MODULE.search(name)
    }
    assert modules == trained
    assert metadata["ss_network_module"] == "networks.lora"
    assert (metadata["ss_network_dim"], metadata["ss_network_alpha"]) == ("4", "2.0")
    assert metadata["ss_base_model_version"] == "sdxl_base_v1-0"
    assert metadata["ss_resolution"] == "(64, 64)" and metadata["ss_steps"] == "4"
    assert metadata["ss_network_train_unet_only"] == "True"
    assert "ohwx" in json.loads(metadata["ss_tag_frequency"])["dataset"]
    assert metadata["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    assert metadata["modelspec.implementation"] == "https://github.com/Stability-AI/generative-models"
    assert metadata["modelspec.resolution"] == "64x64" and metadata["modelspec.title"] == "robot"
    assert metadata["modelspec.prediction_type"] == "epsilon"


@pytest.mark.parametrize(
    ("diffusers", "sgm"),
    [
        # the SDXL base layout (layers_per_block 2): the names every kohya/ComfyUI SDXL LoRA uses
        (
            "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q",
            "input_blocks.4.1.transformer_blocks.0.attn1.to_q",
        ),
        (
            "down_blocks.1.attentions.1.transformer_blocks.1.attn2.to_k",
            "input_blocks.5.1.transformer_blocks.1.attn2.to_k",
        ),
        (
            "down_blocks.2.attentions.0.transformer_blocks.9.attn1.to_v",
            "input_blocks.7.1.transformer_blocks.9.attn1.to_v",
        ),
        (
            "down_blocks.2.attentions.1.transformer_blocks.3.attn2.to_out.0",
            "input_blocks.8.1.transformer_blocks.3.attn2.to_out.0",
        ),
        (
            "mid_block.attentions.0.transformer_blocks.5.attn1.to_q",
            "middle_block.1.transformer_blocks.5.attn1.to_q",
        ),
        (
            "up_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
            "output_blocks.0.1.transformer_blocks.0.attn1.to_q",
        ),
        (
            "up_blocks.0.attentions.2.transformer_blocks.9.attn2.to_v",
            "output_blocks.2.1.transformer_blocks.9.attn2.to_v",
        ),
        (
            "up_blocks.1.attentions.0.transformer_blocks.1.attn1.to_k",
            "output_blocks.3.1.transformer_blocks.1.attn1.to_k",
        ),
        (
            "up_blocks.1.attentions.2.transformer_blocks.0.attn2.to_q",
            "output_blocks.5.1.transformer_blocks.0.attn2.to_q",
        ),
    ],
)
def test_sgm_names_match_sdxl_kohya_layout(diffusers: str, sgm: str) -> None:
    assert sgm_unet_path(diffusers, 2) == sgm
    assert kohya_module_name("unet", diffusers, 2) == "lora_unet_" + sgm.replace(".", "_")


def test_modules_outside_attention_blocks_have_no_sgm_name() -> None:
    with pytest.raises(ValueError, match="no sgm name"):
        sgm_unet_path("down_blocks.0.resnets.0.conv1", 2)


def test_kohya_file_through_diffusers_kohya_loader_matches_the_peft_file(chain: Chain, lab: Lab) -> None:
    folder = lab.store.root / "chain-training" / "lora"
    outputs = {}
    for name, path in (
        ("peft", folder / "diffusers/pytorch_lora_weights.safetensors"),
        ("kohya", folder / "robot.safetensors"),
    ):
        with lora_loaded(lab.pipe, path):
            outputs[name] = render(lab)
    assert not (outputs["peft"] == chain.base_image).all()
    assert abs(outputs["kohya"] - outputs["peft"]).max() < 1e-6
    assert (render(lab) == chain.base_image).all()


def test_cancel_saves_the_last_checkpoint_and_says_so(chain: Chain, lab: Lab) -> None:
    cancel = threading.Event()

    def stop_after_three(payload: dict) -> None:
        if payload.get("step") == 3 and "loss" in payload:
            cancel.set()

    job = {**TRAINING, "dataset_job_id": "chain-dataset", "steps": 6, "sample_every": 0}
    result = lab.run("train-cancel", job, cancel_event=cancel, on_progress=stop_after_three)
    assert result["cancelled"] is True and result["steps_done"] == 3
    checkpoints = outputs_by_kind(result, "checkpoint")
    assert [c["step"] for c in checkpoints] == [2, 3]
    assert "cancelled after step 3 of 6" in result["message"]
    assert checkpoints[-1]["relpath"] in result["message"]
    assert not outputs_by_kind(result, "lora")
    assert all(Path(c["path"]).is_file() for c in checkpoints)
    with open(lab.store.root / "train-cancel" / "train_log.csv") as handle:
        assert len(list(csv.DictReader(handle))) == 3
    assert_same_state(chain.base, snapshot(lab.pipe))
    # the checkpoint is a working LoRA: an image job finds it by the training job's id
    image = lab.run(
        "img-from-cancelled",
        {
            "type": "image",
            "prompt": "ohwx",
            "width": 64,
            "height": 64,
            "steps": 2,
            "loras": [{"job_id": "train-cancel"}],
        },
    )
    assert "error" not in image, image


def test_cancel_before_the_first_step_keeps_nothing(chain: Chain, lab: Lab) -> None:
    cancel = threading.Event()
    cancel.set()
    result = lab.run(
        "train-cancel-early", {**TRAINING, "dataset_job_id": "chain-dataset"}, cancel_event=cancel
    )
    assert result == {"error": "cancelled"}
    assert not (lab.store.root / "train-cancel-early").exists()
    assert_same_state(chain.base, snapshot(lab.pipe))


def test_text_encoder_training_from_inline_images(chain: Chain, lab: Lab) -> None:
    images = [
        {"image": png_base64(color=(200, 30, 30)), "caption": "a red square"},
        {
            "image": f"data:image/png;base64,{png_base64(size=(50, 90), color=(30, 30, 200))}",
            "caption": "a blue bar",
        },
    ]
    job = {
        **TRAINING,
        "images": images,
        "trigger_word": "qwz",
        "train_text_encoder": True,
        "steps": 2,
        "sample_every": 0,
        "checkpoint_every": 0,
        "name": "te",
        "caption_dropout": 0.5,
        "sample_grid": False,
    }
    result = lab.run("train-te", job)
    assert "error" not in result, result
    folder = lab.store.root / "train-te" / "lora"
    with safe_open(str(folder / "te.safetensors"), framework="pt") as handle:
        prefixes = {key.split("_text_model")[0] for key in handle.keys() if key.startswith("lora_te")}  # noqa: SIM118
        metadata = handle.metadata()
    assert prefixes == {"lora_te1", "lora_te2"}
    assert metadata["ss_network_train_unet_only"] == "False"
    assert json.loads(metadata["ss_tag_frequency"])["dataset"]["qwz"] == 2
    outputs = {}
    for name in ("diffusers/pytorch_lora_weights.safetensors", "te.safetensors"):
        with lora_loaded(lab.pipe, folder / name):
            outputs[name] = render(lab, prompt="qwz, a red square")
    assert abs(outputs["te.safetensors"] - outputs["diffusers/pytorch_lora_weights.safetensors"]).max() < 1e-6
    assert_same_state(chain.base, snapshot(lab.pipe))


def test_folder_dataset_without_latent_cache_and_a_warmup_schedule(chain: Chain, lab: Lab) -> None:
    folder = lab.root / "datasets" / "mixed"
    folder.mkdir(parents=True)
    Image.new("RGB", (80, 64), (10, 200, 10)).save(folder / "a.jpg")
    (folder / "a.txt").write_text("zzk, a green field")
    Image.new("RGB", (64, 96), (200, 200, 10)).save(folder / "b.webp")  # no caption: the trigger word is used
    job = {
        **TRAINING,
        "dataset_path": "/runpod-volume/datasets/mixed",
        "trigger_word": "zzk",
        "auto_caption": False,
        "steps": 3,
        "cache_latents": False,
        "gradient_checkpointing": False,
        "lr_scheduler": "linear",
        "warmup_steps": 1,
        "sample_every": 0,
        "checkpoint_every": 0,
        "batch_size": 2,
        "sample_grid": False,
    }
    result = lab.run("train-folder", job)
    assert "error" not in result, result
    assert result["num_images"] == 2
    with open(lab.store.root / "train-folder" / "train_log.csv") as handle:
        rates = [float(row["lr"]) for row in csv.DictReader(handle)]
    assert rates[0] == pytest.approx(1e-3) and rates[1] == pytest.approx(5e-4) and rates[2] == 0.0
    assert_same_state(chain.base, snapshot(lab.pipe))


def png_header_only(width: int, height: int) -> str:
    """A PNG that claims `width` x `height` but holds a few bytes of pixels: the bound must hold before decoding."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(bytes(16))) + chunk(b"IEND", b"")
    return base64.b64encode(b"\x89PNG\r\n\x1a\n" + body).decode()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"rank": 0}, "rank: "),
        ({"rank": 512}, "rank: "),
        ({"alpha": 0}, "alpha: "),
        ({"learning_rate": 0}, "learning_rate: "),
        ({"learning_rate": 3}, "learning_rate: "),
        ({"steps": 0}, "steps: "),
        ({"batch_size": 64}, "batch_size: "),
        ({"resolution": 100}, "resolution: must be a multiple of 64"),
        ({"caption_dropout": 0.9}, "caption_dropout: "),
        ({"mixed_precision": "fp8"}, "mixed_precision: "),
        ({"warmup_steps": 4}, "warmup_steps: must be less than steps (4)"),
        ({"name": "../evil"}, "name: "),
        ({"seed": -1}, "seed: "),
        ({"images": [{"image": "x.png", "caption": "ok"}]}, "input: give exactly one of"),
        ({"dataset_job_id": None}, "input: give exactly one of"),
    ],
)
def test_bad_hyper_parameters_are_field_errors(fields: dict, message: str) -> None:
    with pytest.raises(JobInputError) as error:
        parse_job({**TRAINING, "dataset_job_id": "some-job", **fields})
    assert str(error.value).startswith(message), str(error.value)


def test_bad_inline_caption_names_its_index() -> None:
    images = [{"image": "a.png", "caption": "ok"}] * 3 + [{"image": "d.png", "caption": ""}]
    with pytest.raises(JobInputError, match=r"^images\.3\.caption: "):
        parse_job({**TRAINING, "images": images})


def test_bad_images_and_datasets_are_field_errors(chain: Chain, lab: Lab) -> None:
    (lab.root / "datasets" / "uncaptioned").mkdir(parents=True)
    Image.new("RGB", (64, 64)).save(lab.root / "datasets" / "uncaptioned" / "0002.png")
    (lab.root / "datasets" / "empty").mkdir()
    (lab.root / "datasets" / "damaged").mkdir()
    (lab.root / "datasets" / "damaged" / "0001.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (lab.root / "datasets" / "damaged" / "0001.txt").write_text("a caption")
    # a finished dataset job whose dataset/ folder was deleted since
    (lab.store.root / "gone-dataset").mkdir(parents=True)
    gone = {"job_id": "gone-dataset", "type": "dataset", "outputs": [], "metrics": {}}
    (lab.store.root / "gone-dataset" / "result.json").write_text(json.dumps(gone))
    good = {"image": png_base64(), "caption": "fine"}
    cases = [
        (
            {"images": [good, {"image": "%%%", "caption": "x"}]},
            "images.1.image: not a URL, a volume path or valid base64",
        ),
        (
            {"images": [good, {"image": png_header_only(8000, 8000), "caption": "x"}]},
            "images.1.image: 8000x8000 is over",
        ),
        ({"images": [good] * 5}, "images: at most 4 inline images (MAX_INLINE_IMAGES)"),
        ({"dataset_path": "../../etc"}, "dataset_path: '../../etc' is outside the volume"),
        ({"dataset_path": "datasets/empty"}, "dataset_path: no images"),
        (
            {"dataset_path": "datasets/uncaptioned", "auto_caption": False},
            "dataset_path: 0002.png has no caption (0002.txt), add one, give trigger_word or leave auto_caption on",
        ),
        ({"dataset_path": "datasets/damaged"}, "dataset_path[0001.png]: not a readable PNG"),
        ({"dataset_job_id": "never-ran"}, "dataset_job_id: no finished job 'never-ran'"),
        (
            {"dataset_job_id": "gone-dataset"},
            "dataset_job_id: the dataset folder of job 'gone-dataset' is gone from the volume",
        ),
        ({"dataset_job_id": "chain-training"}, "dataset_job_id: job 'chain-training' is a training job"),
    ]
    for fields, message in cases:
        result = lab.run("train-bad", {**TRAINING, **fields})
        assert result.get("error", "").startswith(message), (fields, result)
    assert_same_state(chain.base, snapshot(lab.pipe))
