"""The models each job type needs, per profile, as `ModelSpec`s.

A spec names the folder the model lives in under `<volume>/models/`, the parts it is assembled from (several for a
composite checkpoint such as HeartMuLa) and the files the folder must hold before it is published.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Literal

from worker_client.jobs import JOB_TYPES

SourceKind = Literal["hub", "local", "builtin", "ref"]
Profile = Literal["production", "tiny"]
PROFILES: tuple[Profile, ...] = ("production", "tiny")

_COMMIT_LENGTH = 40


@dataclass(frozen=True)
class Part:
    """One source of files, landing in `subdir` of the model folder ("" = the folder itself).

    Exactly one of `repo_id` (kind "hub"), `path` (kind "local": a directory; kind "ref": a model reference, see
    refs.py) or `generator` (kind "builtin") is set.
    `revision` is a commit or branch for the hub, and a version string for the other kinds (bump it to rebuild).
    """

    kind: SourceKind
    repo_id: str | None = None
    path: str | None = None
    generator: str | None = None
    revision: str = "main"
    subdir: str = ""
    allow_patterns: tuple[str, ...] | None = None
    ignore_patterns: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        wanted = {"hub": "repo_id", "local": "path", "builtin": "generator", "ref": "path"}.get(self.kind)
        if wanted is None:
            raise ValueError(f"unknown source kind {self.kind!r}: expected hub, local, builtin or ref")
        given = [name for name in ("repo_id", "path", "generator") if getattr(self, name)]
        if given != [wanted]:
            raise ValueError(f"a {self.kind} part needs exactly `{wanted}`, got {given or 'none'}")
        if self.subdir.startswith("/") or ".." in self.subdir.split("/"):
            raise ValueError(f"subdir {self.subdir!r} must be a relative path inside the model folder")
        for name in ("allow_patterns", "ignore_patterns"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, (value,) if isinstance(value, str) else tuple(value))

    @property
    def ref(self) -> str:
        """The repo id, directory or generator name."""
        return self.repo_id or self.path or self.generator or ""

    @property
    def pinned(self) -> bool:
        """Whether the revision is an immutable hub commit (no lookup needed to know what to fetch)."""
        return self.kind == "hub" and len(self.revision) == _COMMIT_LENGTH and _is_hex(self.revision)

    def describe(self) -> str:
        where = f" into {self.subdir}/" if self.subdir else ""
        return f"{self.kind} {self.ref}@{self.revision}{where}"


@dataclass(frozen=True)
class ModelSpec:
    """A model folder: its name under models/, the parts it is built from and the layout it must have.

    `required_files` are paths relative to the model folder; globs are allowed where sharding varies. Any
    `*.index.json` weight index found in the folder must also have all its shards.
    `version` is the model's variant as its loader names it (HeartMuLa: "3B" or "tiny").
    """

    name: str
    parts: tuple[Part, ...]
    required_files: tuple[str, ...] = ()
    version: str = ""
    description: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise ValueError(f"model name {self.name!r} must be a plain folder name")
        object.__setattr__(self, "parts", tuple(self.parts))
        object.__setattr__(self, "required_files", tuple(self.required_files))
        if not self.parts:
            raise ValueError(f"model {self.name!r} needs at least one part")

    @property
    def fingerprint(self) -> str:
        """A digest of everything that decides the folder's content; the manifest must carry the same one."""
        payload = self.to_dict()
        payload.pop("description")
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    def to_dict(self) -> dict:
        return asdict(self)


def _is_hex(text: str) -> bool:
    return all(ch in "0123456789abcdef" for ch in text)


def _hub(repo_id: str, revision: str, subdir: str = "", allow: tuple[str, ...] | None = None) -> Part:
    return Part(kind="hub", repo_id=repo_id, revision=revision, subdir=subdir, allow_patterns=allow)


def _builtin(generator: str, revision: str = "1") -> Part:
    return Part(kind="builtin", generator=generator, revision=revision)


# Commits pinned from public references to these repos (several independent citations each); a pinned commit lets
# snapshot_download skip the revision lookup and keeps every worker on identical bytes.
SDXL_BASE_COMMIT = "462165984030d82259a11f4367a4eed129e94a7b"
IP_ADAPTER_COMMIT = "018e402774aeeddd60609b4ecdb7e298259dc729"
HEARTMULA_GEN_COMMIT = "9906b2bcd4598772a32cad4aec0760170fe0d177"
HEARTMULA_3B_COMMIT = "41f6fc68490e11dc43fdabaa6b5767946408c903"
HEARTCODEC_COMMIT = "f889dab0532cfa4bf459f2a3367eb6d346b8eeda"
ACE_STEP_TURBO_COMMIT = "200ba991ae448051e14b0183157e35c2d27c9fb0"

# The diffusers layout in fp16 only: the repo also holds single-file checkpoints, fp32 copies, ONNX, Flax and
# OpenVINO exports, several times the size of what the pipeline loads.
_SDXL_FILES = (
    "model_index.json",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "text_encoder/model.fp16.safetensors",
    "text_encoder_2/config.json",
    "text_encoder_2/model.fp16.safetensors",
    "tokenizer/*",
    "tokenizer_2/*",
    "unet/config.json",
    "unet/diffusion_pytorch_model.fp16.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.fp16.safetensors",
)

# The image encoder folder carries the same weights twice (.bin and .safetensors); the safetensors copy suffices.
_IP_ADAPTER_FILES = (
    "sdxl_models/ip-adapter_sdxl.bin",
    "sdxl_models/image_encoder/config.json",
    "sdxl_models/image_encoder/model.safetensors",
)

_ACE_STEP_PIPELINE = tuple(
    f"{folder}/*" for folder in ("transformer", "condition_encoder", "text_encoder", "tokenizer", "vae", "scheduler")
) + ("model_index.json",)
# AceStepPipeline's folders; the tiny model also has the cover codec beside them (see "ace-step" below)
_ACE_STEP_FILES = (
    "model_index.json",
    "transformer/config.json",
    "condition_encoder/config.json",
    "text_encoder/config.json",
    "tokenizer/tokenizer.json",
    "vae/config.json",
    "scheduler/scheduler_config.json",
)
_ACE_STEP_COVER_CODEC = ("cover/audio_tokenizer/config.json", "cover/audio_token_detokenizer/config.json")

# A DiT family's pipeline folders, and the files that must be in them
_DIT_FOLDERS = ("model_index.json", "scheduler/*", "text_encoder/*", "tokenizer/*", "transformer/*", "vae/*")
_DIT_FILES = (
    "model_index.json",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "text_encoder/*.safetensors",
    "tokenizer/tokenizer_config.json",
    "transformer/config.json",
    "transformer/*.safetensors",
    "vae/config.json",
    "vae/*.safetensors",
)
_DIT_TINY_FILES = ("model_index.json", "transformer/config.json", "text_encoder/config.json", "tokenizer/*")


def _dit_family(
    name: str, repo_id: str, commit: str, what: str, *, tiny: tuple[str, str]
) -> dict[Profile, ModelSpec]:
    tiny_name, label = tiny
    return {
        "production": ModelSpec(
            name=name,
            parts=(_hub(repo_id, commit, allow=_DIT_FOLDERS),),
            required_files=_DIT_FILES,
            description=f"{what}, diffusers layout, bf16",
        ),
        "tiny": ModelSpec(
            name=tiny_name,
            parts=(_builtin(tiny_name),),
            required_files=_DIT_TINY_FILES,
            description=f"random-weight {label}-shaped pipeline (demo and tests)",
        ),
    }


_CATALOG: dict[str, dict[Profile, ModelSpec]] = {
    "sdxl-base": {
        "production": ModelSpec(
            name="sdxl-base",
            parts=(_hub("stabilityai/stable-diffusion-xl-base-1.0", SDXL_BASE_COMMIT, allow=_SDXL_FILES),),
            required_files=_SDXL_FILES,
            description="Stable Diffusion XL base 1.0, diffusers layout, fp16 variant",
        ),
        "tiny": ModelSpec(
            name="sdxl-tiny",
            parts=(_builtin("sdxl-tiny"),),
            required_files=("model_index.json", "unet/config.json", "vae/config.json", "scheduler/*"),
            description="random-weight SDXL-shaped pipeline (demo and tests)",
        ),
    },
    # The image families beside SDXL (worker/pipelines/image_families.py): diffusers layout, bf16 weights. Only the
    # pipeline's folders are fetched; the repos also hold single-file copies for ComfyUI. Both are pinned at commits
    # that several unrelated public projects cite.
    "z-image-turbo": _dit_family(
        "z-image-turbo",
        "Tongyi-MAI/Z-Image-Turbo",
        "f332072aa78be7aecdf3ee76d5c247082da564a6",
        "Z-Image-Turbo (6B DiT, Qwen3-4B text encoder)",
        tiny=("z-image-tiny", "Z-Image"),
    ),
    "flux2-klein-4b": _dit_family(
        "flux2-klein-4b",
        "black-forest-labs/FLUX.2-klein-4B",
        "e7b7dc27f91deacad38e78976d1f2b499d76a294",
        "FLUX.2 [klein] 4B, step-distilled (4B DiT, Qwen3-4B text encoder)",
        tiny=("flux2-klein-tiny", "FLUX.2 [klein]"),
    ),
    "heartmula": {
        "production": ModelSpec(
            name="heartmula",
            parts=(
                Part(
                    kind="hub",
                    repo_id="HeartMuLa/HeartMuLaGen",
                    revision=HEARTMULA_GEN_COMMIT,
                    allow_patterns=("tokenizer.json", "gen_config.json"),
                ),
                _hub("HeartMuLa/HeartMuLa-oss-3B-happy-new-year", HEARTMULA_3B_COMMIT, "HeartMuLa-oss-3B"),
                _hub("HeartMuLa/HeartCodec-oss-20260123", HEARTCODEC_COMMIT, "HeartCodec-oss"),
            ),
            required_files=(
                "tokenizer.json",
                "gen_config.json",
                "HeartMuLa-oss-3B/config.json",
                "HeartMuLa-oss-3B/model.safetensors.index.json",
                "HeartCodec-oss/config.json",
                "HeartCodec-oss/*.safetensors",
            ),
            version="3B",
            description="HeartMuLa oss 3B (happy-new-year) with HeartCodec 20260123, official checkpoint layout",
        ),
        "tiny": ModelSpec(
            name="heartmula-tiny",
            parts=(_builtin("heartmula-tiny"),),
            required_files=(
                "tokenizer.json",
                "gen_config.json",
                "HeartMuLa-oss-tiny/config.json",
                "HeartCodec-oss/config.json",
            ),
            version="tiny",
            description="random-weight HeartMuLa in the official layout (demo and tests)",
        ),
    },
    # XL turbo: the 4B DiT sounds better than the 2B one, and turbo's 8 guidance-free steps run one DiT pass per
    # step (base/sft: CFG, 27-60 steps); about 12 GB resident in bf16, so it sits beside HeartMuLa on a 48 GB card.
    # Its repo has no audio tokenizer/detokenizer (the XL sft repo has them, unpinned here): its covers take the
    # reference's timbre only, while a folder with cover/ (the tiny one) takes its structure too.
    "ace-step": {
        "production": ModelSpec(
            name="ace-step",
            parts=(_hub("ACE-Step/acestep-v15-xl-turbo-diffusers", ACE_STEP_TURBO_COMMIT, allow=_ACE_STEP_PIPELINE),),
            required_files=_ACE_STEP_FILES,
            description="ACE-Step 1.5 XL turbo, diffusers layout",
        ),
        "tiny": ModelSpec(
            name="ace-step-tiny",
            parts=(_builtin("ace-step-tiny"),),
            required_files=_ACE_STEP_FILES + _ACE_STEP_COVER_CODEC,
            description="random-weight ACE-Step 1.5 in the same layout, with the cover codec (demo and tests)",
        ),
    },
    "ip-adapter-sdxl": {
        "production": ModelSpec(
            name="ip-adapter-sdxl",
            parts=(_hub("h94/IP-Adapter", IP_ADAPTER_COMMIT, allow=_IP_ADAPTER_FILES),),
            required_files=_IP_ADAPTER_FILES,
            description="IP-Adapter for SDXL with its ViT-bigG image encoder",
        ),
        "tiny": ModelSpec(
            name="ip-adapter-tiny",
            parts=(_builtin("ip-adapter-tiny"),),
            required_files=("sdxl_models/ip-adapter_sdxl.bin", "sdxl_models/image_encoder/config.json"),
            description="random-weight IP-Adapter (demo and tests)",
        ),
    },
    # the training job's captioner for images without a caption; fetched on the first job that needs it
    "blip-captioner": {
        "production": ModelSpec(
            name="blip-captioner",
            parts=(
                _hub(
                    "Salesforce/blip-image-captioning-base",
                    "82a37760796d32b1411fe092ab5d4e227313294b",
                    allow=(
                        "config.json",
                        "preprocessor_config.json",
                        "pytorch_model.bin",  # the only PyTorch weights at this commit (loaded weights-only)
                        "special_tokens_map.json",
                        "tokenizer.json",
                        "tokenizer_config.json",
                        "vocab.txt",
                    ),
                ),
            ),
            required_files=("config.json", "preprocessor_config.json", "pytorch_model.bin", "vocab.txt"),
            description="BLIP image captioning (base), for training images without captions",
        ),
        "tiny": ModelSpec(
            name="blip-tiny",
            parts=(_builtin("blip-tiny"),),
            required_files=("config.json", "model.safetensors", "vocab.txt"),
            description="random-weight BLIP captioner (demo and tests): its captions are random words",
        ),
    },
}

# The families an image job may name, and the engines of a music job (the worker's tables check they agree).
IMAGE_FAMILIES: tuple[str, ...] = ("sdxl-base", "z-image-turbo", "flux2-klein-4b")
MUSIC_ENGINES: tuple[str, ...] = ("heartmula", "ace-step")

# What each job type's pipeline fetches at start besides the endpoint's IMAGE_MODELS (image, dataset and training
# share the image pipeline) or MUSIC_MODELS: the dataset job's IP-Adapter, and the SDXL every training job uses.
JOB_MODELS: dict[str, tuple[str, ...]] = {
    "image": (),
    "dataset": ("ip-adapter-sdxl",),
    "training": ("sdxl-base",),
    "music": (),
}
_PICKS_IMAGE_MODELS = frozenset({"image", "dataset", "training"})
# The job-type registry decides which job types exist; a type added there must say here which models it needs.
if set(JOB_MODELS) != set(JOB_TYPES):
    raise RuntimeError(f"catalog.JOB_MODELS covers {sorted(JOB_MODELS)}, the job types are {list(JOB_TYPES)}")


def names() -> list[str]:
    """The logical model names the catalog knows."""
    return sorted(_CATALOG)


def get(name: str, profile: Profile) -> ModelSpec:
    """The spec of logical model `name` in `profile` ("production" or "tiny")."""
    if profile not in ("production", "tiny"):
        raise ValueError(f"profile {profile!r}: expected production or tiny (resolve 'auto' first)")
    try:
        return _CATALOG[name][profile]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; the catalog has: {', '.join(names())}") from None


def for_jobs(
    jobs: Iterable[str],
    profile: Profile,
    image_models: Iterable[str] = ("sdxl-base",),
    music_models: Iterable[str] = ("heartmula",),
) -> list[ModelSpec]:
    """The specs a worker serving `jobs` fetches at start (with these IMAGE_MODELS and MUSIC_MODELS), each once, in
    a stable order."""
    wanted: dict[str, None] = {}
    for job in jobs:
        if job not in JOB_MODELS:
            raise KeyError(f"unknown job type {job!r}; known: {', '.join(JOB_TYPES)}")
        if job in _PICKS_IMAGE_MODELS:
            wanted.update(dict.fromkeys(image_models))
        if job == "music":
            wanted.update(dict.fromkeys(music_models))
        wanted.update(dict.fromkeys(JOB_MODELS[job]))
    return [get(name, profile) for name in wanted]
