"""Models by reference (hf:, civitai:, https://) in one process: resolving once, verifying, the header check, the
source policy and the private-host rule, tokens per host, resuming a partial file, and the catalog kept as it was.

The fake Hub and the fake CivitAI are real HTTP servers on 127.0.0.1; the cache talks to them with its real client.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from cache_fixtures import LEASE_S, lora_bytes, random_bytes, running_hub, sdxl_checkpoint_bytes
from civitai_server import FakeCivitai, FakeVersion
from hub_server import FakeHub, FakeRepo

from cache import (
    AccessDeniedError,
    BudgetError,
    LayoutError,
    ModelCache,
    ModelKindError,
    ModelNotFoundError,
    RefError,
    SourceError,
    VerificationError,
    catalog,
    inventory,
    parse_ref,
    source_problem,
)
from cache.download import download
from cache.remote import Remote

hub = pytest.fixture(running_hub)


@pytest.fixture
def civitai():
    with FakeCivitai() as running:
        yield running


def make_cache(
    models: Path,
    hub: FakeHub,
    civitai: FakeCivitai | None = None,
    *,
    hf_token: str | None = None,
    civitai_token: str | None = None,
) -> ModelCache:
    remote = Remote.build(
        hf_endpoint=hub.endpoint,
        hf_token=hf_token,
        civitai_api_url=civitai.api_url if civitai else "https://civitai.invalid/api",
        civitai_token=civitai_token,
        allow_private=True,
    )
    return ModelCache(models, lease_s=LEASE_S, remote=remote)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize(
    ("text", "kind", "canonical"),
    [
        ("hf:org/repo", "hf-repo", "hf:org/repo"),
        ("hf:org/repo@v1.0", "hf-repo", "hf:org/repo@v1.0"),
        ("hf:org/repo/sub/x.safetensors@main", "hf-file", "hf:org/repo/sub/x.safetensors@main"),
        ("civitai:0042", "civitai", "civitai:42"),
        (
            "https://example.com/a/m.safetensors#sha256=" + "A" * 64,
            "url",
            "https://example.com/a/m.safetensors#sha256=" + "a" * 64,
        ),
    ],
)
def test_references_parse_to_one_canonical_form(text: str, kind: str, canonical: str) -> None:
    ref = parse_ref(text)
    assert (ref.kind, ref.text) == (kind, canonical)
    assert ref.folder_name.startswith(f"ref-{kind}-") and "/" not in ref.folder_name
    assert parse_ref(canonical).folder_name == ref.folder_name


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("hf:org", "expected hf:<owner>/<repo>"),
        ("hf:org/repo/model.ckpt", ".safetensors path"),
        ("hf:org/repo/../x.safetensors", ".safetensors path"),
        ("civitai:abc", "digits"),
        ("https://example.com/model.bin", "only .safetensors"),
        ("https://user:pw@example.com/m.safetensors", "credentials"),
        ("https://civitai.com/api/download/models/1?token=abc", "query string"),
        ("https://example.com/m.safetensors#md5=1", "#sha256="),
        ("s3://bucket/m.safetensors", "expected hf:"),
    ],
)
def test_malformed_references_say_what_is_wrong(text: str, reason: str) -> None:
    with pytest.raises(RefError, match=reason):
        parse_ref(text)


def test_model_sources_decide_what_a_job_may_name() -> None:
    default = ("hf", "civitai")
    assert source_problem(parse_ref("hf:o/r"), default) is None
    assert (
        source_problem(parse_ref("civitai:1"), ("hf",))
        == "civitai: references are not enabled (MODEL_SOURCES)"
    )
    url = parse_ref("https://cdn.example.com/m.safetensors")
    assert "cdn.example.com are not enabled" in source_problem(url, default)
    assert source_problem(url, ("cdn.example.com",)) is None
    assert source_problem(url, ("*.example.com",)) is None
    assert source_problem(parse_ref("https://evil.com/m.safetensors"), ("*.example.com",)) is not None


def test_private_and_plain_http_hosts_are_refused_by_default() -> None:
    remote = Remote()
    for url, reason in [
        ("http://example.com/m.safetensors", "not https"),
        ("https://127.0.0.1/m.safetensors", "private or loopback"),
        ("https://10.1.2.3/m.safetensors", "private or loopback"),
        ("https://[::1]/m.safetensors", "private or loopback"),
        ("ftp://example.com/m.safetensors", "not an http"),
    ]:
        with pytest.raises(SourceError, match=reason):
            remote.check_host(url, "test")


def test_a_hub_file_is_resolved_once_and_means_the_same_bytes_after_the_branch_moves(
    hub: FakeHub, tmp_path: Path
) -> None:
    first = sdxl_checkpoint_bytes(seed=1)
    repo = hub.add(FakeRepo("org/ckpt", {"model.safetensors": first, "README.md": b"x"}))
    cache = make_cache(tmp_path / "models", hub, hf_token="hf_secret")

    path = cache.fetch("hf:org/ckpt/model.safetensors", timeout=30)

    assert path.name == "model.safetensors" and path.read_bytes() == first
    manifest = json.loads((path.parent / ".complete.json").read_text())
    assert manifest["parts"][0]["revision"] == repo.commit
    assert manifest["files"]["model.safetensors"]["sha256"] == sha(first)
    # the token went to the Hub's API and resolve URL, never to the CDN host it redirects to
    assert set(hub.stats.authorization["api"] + hub.stats.authorization["get"]) == {"Bearer hf_secret"}
    assert hub.stats.authorization["cdn"] == [None]

    # a warm lookup, in a fresh cache object, is local
    hub.reset_stats()
    assert make_cache(tmp_path / "models", hub).fetch("hf:org/ckpt/model.safetensors", timeout=5) == path
    assert hub.stats.total_requests == 0

    # main moves on (to a commit this fake cannot serve), the model is evicted, and a fetch gets the first bytes
    # again from the commit it first resolved to, without resolving main again
    repo.branches["main"] = "b" * 40
    assert cache.usage.remove(path.parent.name)
    again = cache.fetch("hf:org/ckpt/model.safetensors", timeout=30)
    assert again.read_bytes() == first
    assert hub.stats.requests["api"] == 0  # no new resolution


def test_a_diffusers_repo_brings_only_what_the_pipeline_loads(hub: FakeHub, tmp_path: Path) -> None:
    index = {
        "_class_name": "StableDiffusionXLPipeline",
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "EulerDiscreteScheduler"],
        "image_encoder": [None, None],
    }
    weights = random_bytes(1, 5000)
    files = {
        "model_index.json": json.dumps(index).encode(),
        "sd_xl_base_1.0.safetensors": weights,  # the single-file copy at the top
        "unet/config.json": b"{}",
        "unet/diffusion_pytorch_model.safetensors": weights,
        "unet/diffusion_pytorch_model.fp16.safetensors": weights[:2500],
        "unet/diffusion_pytorch_model.bin": weights,
        "unet/diffusion_flax_model.msgpack": weights,
        "vae/config.json": b"{}",
        "vae/diffusion_pytorch_model.safetensors": weights,
        "vae/onnx/model.onnx": weights,
        "tokenizer/vocab.json": b"{}",
        "tokenizer/merges.txt": b"#",
        "scheduler/scheduler_config.json": b"{}",
        "README.md": b"readme",
    }
    hub.add(FakeRepo("org/pipe", files))

    folder = make_cache(tmp_path / "models", hub).fetch("hf:org/pipe", timeout=30)

    got = sorted(
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and p.name != ".complete.json"
    )
    assert got == [
        "model_index.json",
        "scheduler/scheduler_config.json",
        "tokenizer/merges.txt",
        "tokenizer/vocab.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.fp16.safetensors",
        "vae/config.json",
        "vae/diffusion_pytorch_model.safetensors",
    ]


def test_a_repo_is_described_before_its_weights_come(hub: FakeHub, tmp_path: Path) -> None:
    """`describe` says which pipeline a repo is from its resolution alone; once warm, it makes no request."""
    index = {"_class_name": "ZImagePipeline", "transformer": ["diffusers", "ZImageTransformer2DModel"]}
    weights = random_bytes(2, 4000)
    files = {
        "model_index.json": json.dumps(index).encode(),
        "transformer/config.json": b"{}",
        "transformer/diffusion_pytorch_model.safetensors": weights,
    }
    hub.add(FakeRepo("org/described", files))
    cache = make_cache(tmp_path / "models", hub)

    assert cache.describe("hf:org/described") == {"pipeline": "ZImagePipeline"}
    assert hub.stats.file_bytes == len(files["model_index.json"])  # the index alone
    hub.reset_stats()
    assert cache.describe("hf:org/described")["pipeline"] == "ZImagePipeline"  # the recorded resolution
    folder = cache.fetch("hf:org/described", timeout=30)
    assert hub.stats.requests["api"] == 0
    hub.reset_stats()
    assert make_cache(tmp_path / "models", hub).describe("hf:org/described")["pipeline"] == "ZImagePipeline"
    assert hub.stats.total_requests == 0 and (folder / "transformer").is_dir()
    hub.add(FakeRepo("org/no-index", {"unet/diffusion_pytorch_model.safetensors": weights}))
    with pytest.raises(
        ModelNotFoundError, match="org/no-index has no model_index.json at commit [0-9a-f]{12}"
    ):
        cache.describe("hf:org/no-index")


def test_civitai_needs_its_token_which_never_reaches_the_cdn(
    hub: FakeHub, civitai: FakeCivitai, tmp_path: Path
) -> None:
    content = lora_bytes(seed=4)
    civitai.add(FakeVersion(128, "My LoRA v2.safetensors", content, model_type="LORA"))

    with pytest.raises(AccessDeniedError, match="no CIVITAI_TOKEN is set.*set CIVITAI_TOKEN"):
        make_cache(tmp_path / "models", hub, civitai).fetch("civitai:128", timeout=30)
    civitai.reset_stats()
    cache = make_cache(tmp_path / "models", hub, civitai, civitai_token=civitai.token)
    with cache.use("civitai:128", timeout=30, want="lora") as path:
        assert path.read_bytes() == content and path.name == "My_LoRA_v2.safetensors"
        meta = json.loads((path.parent / ".complete.json").read_text())["parts"][0]["meta"]
    assert meta == {"baseModel": "SDXL 1.0", "type": "LORA", "file": path.name, "kind": "lora"}
    assert civitai.stats.authorization["download"] == [f"Bearer {civitai.token}"]
    assert civitai.stats.authorization["cdn"] == [None]
    assert civitai.stats.file_bytes == len(content)
    with (
        pytest.raises(ModelKindError, match="civitai:128 is a LoRA, not an SDXL checkpoint"),
        cache.use("civitai:128", timeout=5, want="checkpoint"),
    ):
        pass


def test_a_corrupt_download_is_never_published(hub: FakeHub, tmp_path: Path) -> None:
    good = sdxl_checkpoint_bytes(seed=5)
    bad = bytearray(good)
    bad[-10] ^= 0xFF
    hub.add(FakeRepo("org/bad", {"model.safetensors": good}, served={"model.safetensors": bytes(bad)}))
    cache = make_cache(tmp_path / "models", hub)

    with pytest.raises(VerificationError) as caught:
        cache.fetch("hf:org/bad/model.safetensors", timeout=30)

    message = str(caught.value)
    assert "model.safetensors" in message and sha(good) in message and sha(bytes(bad)) in message
    assert not (tmp_path / "models" / parse_ref("hf:org/bad/model.safetensors").folder_name).exists()
    staged = [p for p in (tmp_path / "models" / ".staging").rglob("*") if p.is_file()]
    assert all(p.read_bytes() != bytes(bad) for p in staged)


def test_a_file_that_is_not_safetensors_is_a_clear_error(hub: FakeHub, tmp_path: Path) -> None:
    hub.add(FakeRepo("org/fake", {"model.safetensors": random_bytes(9, 4000)}))
    with pytest.raises(LayoutError, match="hf:org/fake/model.safetensors: model.safetensors .*not published"):
        make_cache(tmp_path / "models", hub).fetch("hf:org/fake/model.safetensors", timeout=30)


def test_a_plain_url_is_pinned_to_its_sha256(civitai: FakeCivitai, hub: FakeHub, tmp_path: Path) -> None:
    content = sdxl_checkpoint_bytes(seed=6)
    civitai.files["ckpt.safetensors"] = content
    wrong = civitai.url("ckpt.safetensors") + "#sha256=" + "0" * 64
    cache = make_cache(tmp_path / "models", hub, civitai)
    with pytest.raises(VerificationError, match="0" * 64):
        cache.fetch(wrong, timeout=30)
    right = civitai.url("ckpt.safetensors") + "#sha256=" + sha(content)
    with cache.use(right, timeout=30, want="checkpoint") as path:
        assert path.read_bytes() == content


def test_a_partial_file_is_resumed_from_its_verified_blocks(civitai: FakeCivitai, tmp_path: Path) -> None:
    content = random_bytes(7, 3_000_000)
    civitai.files["big.safetensors"] = content
    remote = Remote(allow_private=True)
    dest = tmp_path / "big.safetensors"
    url = civitai.url("big.safetensors")

    class Stop(Exception):
        pass

    seen = [0]

    def stop_midway(n: int) -> None:
        seen[0] += n
        if seen[0] > 2_000_000:
            raise Stop

    with pytest.raises(Stop):
        download(remote, url, dest, what="t", size=len(content), sha256=sha(content), advance=stop_midway)
    first = civitai.stats.file_bytes
    # a torn write: a block in the middle of the kept part is damaged on disk
    part = dest.with_name(dest.name + ".part")
    with part.open("r+b") as f:
        f.seek(1_500_000)
        f.write(b"\0" * 100)

    fetched = download(remote, url, dest, what="t", size=len(content), sha256=sha(content))

    assert dest.read_bytes() == content and not part.exists()
    assert 1_400_000 < fetched.resumed_from <= 1_500_000
    assert civitai.stats.file_bytes - first == len(content) - fetched.resumed_from
    assert civitai.stats.requests["files"] == 2


def test_catalog_fingerprints_are_unchanged_so_published_models_stay_valid() -> None:
    # Models published by the earlier cache version carry these in their manifests; a change would re-download
    # every catalog model on every volume.
    assert {
        (n, p): catalog.get(n, p).fingerprint[:16]
        for n in ("sdxl-base", "heartmula", "ip-adapter-sdxl")
        for p in catalog.PROFILES
    } == {
        ("heartmula", "production"): "b0a3ea114537883a",
        ("heartmula", "tiny"): "7c4943b6be773bab",
        ("ip-adapter-sdxl", "production"): "df80209896472c36",
        ("ip-adapter-sdxl", "tiny"): "0a194e42c4676398",
        ("sdxl-base", "production"): "696e18d959621d26",
        ("sdxl-base", "tiny"): "e82275d3e3bfd899",
    }


def test_prefetched_models_are_never_evicted_and_the_budget_is_named(hub: FakeHub, tmp_path: Path) -> None:
    for name in ("a", "b", "c"):
        hub.add(
            FakeRepo(f"org/{name}", {"model.safetensors": sdxl_checkpoint_bytes(1_000_000, seed=ord(name))})
        )
    refs = {name: parse_ref(f"hf:org/{name}/model.safetensors") for name in ("a", "b", "c")}
    models = tmp_path / "models"
    starting = make_cache(models, hub)
    starting.prefetch([refs["a"].text], timeout=30)
    # another worker, with a 2.5 MB budget: "a" is the least recently used but kept
    other = make_cache(models, hub)
    other.max_bytes = 2_500_000
    other.fetch(refs["b"], timeout=30)
    other.fetch(refs["c"], timeout=30)

    assert (models / refs["a"].folder_name).is_dir() and (models / refs["c"].folder_name).is_dir()
    assert not (models / refs["b"].folder_name).exists()
    other.max_bytes = 1_500_000
    with pytest.raises(
        BudgetError, match=r"CACHE_MAX_GB=0.0015 holds .*hf:org/a/model.safetensors \(prefetched"
    ):
        other.fetch(refs["b"], timeout=30)
    # prune to 1.1 MB: the kept model stays and the other goes
    assert inventory.prune(other, 1_100_000) == [refs["c"].folder_name]
    entries = {e.name: e for e in inventory.entries(other)}
    assert entries[refs["a"].folder_name].pinned and entries[refs["a"].folder_name].source == refs["a"].text


def test_one_public_address_rule_for_references_and_job_urls() -> None:
    """The cache's reference downloads and the worker's image/upload URLs judge addresses by the same rule."""
    from cache.addresses import is_public_address
    from worker import inputs

    assert inputs.is_public_address is is_public_address
    assert is_public_address("8.8.8.8") and is_public_address("2001:4860:4860::8888")
    for private in ("127.0.0.1", "10.1.2.3", "169.254.169.254", "::1", "::ffff:127.0.0.1", "224.0.0.251"):
        assert not is_public_address(private), private


def test_a_connection_is_checked_where_it_lands(hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    """A host that resolves to a public address for the check and to loopback for the connect (DNS rebinding)
    gets no request through: the connected socket's peer address is checked before a byte is sent."""
    import socket

    import requests

    from cache.public_sessions import public_session, refused_private

    with pytest.raises(requests.ConnectionError) as caught:
        public_session().get(f"http://127.0.0.1:{hub.port}/api/models/org/x", timeout=5)
    assert refused_private(caught.value) == "127.0.0.1 connected to 127.0.0.1, a private or loopback address"

    real = socket.getaddrinfo
    answers = iter(["93.184.216.34"])  # the first lookup (the check) answers public, every later one loopback

    def rebinding(host: str, port: object, *args: object, **kwargs: object) -> list:
        if host != "models.rebind.test":
            return real(host, port, *args, **kwargs)
        address = next(answers, "127.0.0.1")
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, hub.port))]

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    remote = Remote(allow_private=False)
    with pytest.raises(SourceError) as refused:
        remote.open(f"https://models.rebind.test:{hub.port}/model.safetensors", "https://models.rebind.test/…")
    assert str(refused.value) == (
        "https://models.rebind.test/…: models.rebind.test connected to 127.0.0.1, a private or loopback address "
        "(allowed with ALLOW_PRIVATE_URLS)"
    )
    assert hub.stats.total_requests == 0
