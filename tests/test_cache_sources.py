"""The other sources (local directory, RunPod's model cache, builtin generators, baked models), the catalog,
staging hygiene and the status listing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cache_fixtures import (
    LEASE_S,
    ROOT,
    cli_env,
    file_digests,
    make_repo,
    run_cli,
    running_hub,
    sharded_files,
    staging_leftovers,
)
from hub_server import FakeHub, FakeRepo

from cache import LayoutError, ModelCache, ModelSpec, Part, SourceError, catalog, register_builtin

hub = pytest.fixture(running_hub)


def _write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def _heartmula_checkout(root: Path) -> Path:
    return _write_tree(
        root,
        {
            "tokenizer.json": b"{}",
            "gen_config.json": b"{}",
            **sharded_files("HeartMuLa-oss-3B/", shards=2, shard_size=10_000),
            **sharded_files("HeartCodec-oss/", shards=1, shard_size=10_000, seed=5),
        },
    )


def test_seeded_volume_serves_without_network(tmp_path: Path) -> None:
    checkout = _heartmula_checkout(tmp_path / "ckpt")
    # No Hub at all: an unreachable endpoint, as on an air-gapped site.
    env = cli_env(tmp_path / "volume", HF_ENDPOINT="http://127.0.0.1:9")
    seeded = run_cli("seed", "heartmula", "--from", str(checkout), "--profile", "production", env=env)
    warm = run_cli("warm", "--jobs", "music", "--profile", "production", env=env)

    assert seeded.returncode == 0, seeded.stderr
    assert warm.returncode == 0, warm.stderr
    assert warm.stdout.strip() == f"heartmula\t{seeded.stdout.strip()}"
    assert file_digests(Path(seeded.stdout.strip())) == file_digests(checkout)


def test_warm_fetches_the_families_and_engines_the_endpoint_picks(hub: FakeHub, tmp_path: Path) -> None:
    """`python -m cache warm` fetches what a worker with the same IMAGE_MODELS and MUSIC_MODELS fetches at start."""
    spec = catalog.get("z-image-turbo", "production")
    files = {path.replace("*", "model"): b"{}" for path in spec.required_files}
    hub.add(FakeRepo(spec.parts[0].repo_id, files, commit=spec.parts[0].revision))
    env = cli_env(tmp_path / "volume", hub, IMAGE_MODELS="z-image-turbo")
    warm = run_cli("warm", "--jobs", "image", "--profile", "production", env=env)

    assert warm.returncode == 0, warm.stderr
    assert [line.split("\t")[0] for line in warm.stdout.splitlines()] == ["z-image-turbo"]
    bad = run_cli("warm", "--jobs", "image", env={**env, "IMAGE_MODELS": "sd3"})
    assert bad.returncode != 0 and "IMAGE_MODELS: unknown image model(s) ['sd3']" in bad.stderr
    names = [
        s.name
        for s in catalog.for_jobs(["training", "music"], "production", ("flux2-klein-4b",), ("ace-step",))
    ]
    assert names == ["flux2-klein-4b", "sdxl-base", "ace-step"]


def test_seeding_an_incomplete_checkout_names_what_is_missing(tmp_path: Path) -> None:
    checkout = _heartmula_checkout(tmp_path / "ckpt")
    (checkout / "HeartCodec-oss" / "config.json").unlink()
    env = cli_env(tmp_path / "volume")
    result = run_cli("seed", "heartmula", "--from", str(checkout), "--profile", "production", env=env)

    assert result.returncode == 1
    assert "missing HeartCodec-oss/config.json" in result.stderr
    assert not (tmp_path / "volume" / "models" / "heartmula").exists()


def _runpod_cache(root: Path, repo: FakeRepo, *, skip: str | None = None) -> Path:
    """RunPod's cached-models folder (an HF hub cache) holding `repo`, its tree listing, and all files but `skip`."""
    repo_dir = root / "models--org--model"
    for rel, data in repo.files.items():
        if rel == skip:
            continue
        blob = repo_dir / "blobs" / repo.sha256(rel)
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = repo_dir / "snapshots" / repo.commit / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(repo.commit)
    (repo_dir / "trees").mkdir()
    tree = {e["path"]: {"size": e["size"], "blob_id": e["oid"]} for e in repo.tree() if e["type"] == "file"}
    (repo_dir / "trees" / f"{repo.commit}.json").write_text(json.dumps({"format_version": 1, "files": tree}))
    return root


def test_runpod_cached_model_is_linked_without_network(hub: FakeHub, tmp_path: Path) -> None:
    repo = make_repo()  # known to the test, not served: any request would show in the stats
    runpod = _runpod_cache(tmp_path / "runpod-cache", repo)
    result = run_cli(
        "ensure", repo.repo_id, env=cli_env(tmp_path / "volume", hub, RUNPOD_HF_CACHE_DIR=str(runpod))
    )

    assert result.returncode == 0, result.stderr
    published = Path(result.stdout.strip())
    assert hub.stats.total_requests == 0
    assert file_digests(published) == {rel: repo.sha256(rel) for rel in repo.files}
    shard = published / "model-00001-of-00003.safetensors"
    assert not shard.is_symlink()
    blob = runpod / "models--org--model" / "blobs" / repo.sha256(shard.name)
    assert shard.stat().st_ino == blob.stat().st_ino


def test_incomplete_runpod_snapshot_falls_back_to_the_hub(hub: FakeHub, tmp_path: Path) -> None:
    repo = hub.add(make_repo())
    runpod = _runpod_cache(tmp_path / "runpod-cache", repo, skip="model-00002-of-00003.safetensors")
    result = run_cli(
        "ensure", repo.repo_id, env=cli_env(tmp_path / "volume", hub, RUNPOD_HF_CACHE_DIR=str(runpod))
    )

    assert result.returncode == 0, result.stderr
    assert "misses 1 file(s)" in result.stderr
    assert file_digests(Path(result.stdout.strip())) == {rel: repo.sha256(rel) for rel in repo.files}


def _builtin_spec(name: str, build, **kwargs: object) -> ModelSpec:
    register_builtin(f"test-{name}", build)
    return ModelSpec(name, parts=(Part(kind="builtin", generator=f"test-{name}"),), **kwargs)  # type: ignore[arg-type]


def _tiny_build(dest: Path) -> None:
    (dest / "config.json").write_text('{"tiny": true}')
    (dest / "weights.bin").write_bytes(b"\1" * 1000)


def test_baked_model_is_used_in_place(hub: FakeHub, tmp_path: Path) -> None:
    repo = hub.add(make_repo())
    baked = tmp_path / "image-models"
    # As the Dockerfile's bake stage runs it: options before the command, a throw-away volume.
    bake = run_cli("--models-dir", str(baked), "ensure", repo.repo_id, env=cli_env(tmp_path / "build", hub))
    hub.reset_stats()
    worker_env = cli_env(tmp_path / "volume", hub, BAKED_MODELS_DIR=str(baked))
    used = run_cli("ensure", repo.repo_id, env=worker_env)

    assert bake.returncode == 0, bake.stderr
    assert used.returncode == 0, used.stderr
    assert used.stdout.strip() == bake.stdout.strip() == str(baked / "org--model")
    assert hub.stats.total_requests == 0
    assert not (tmp_path / "volume" / "models" / "org--model").exists()


def test_failed_build_publishes_nothing_and_a_retry_succeeds(tmp_path: Path) -> None:
    def broken(dest: Path) -> None:
        (dest / "config.json").write_text("{}")
        raise RuntimeError("out of memory")

    cache = ModelCache(tmp_path / "models", lease_s=LEASE_S)
    with pytest.raises(SourceError, match="out of memory"):
        cache.ensure(_builtin_spec("flaky", broken), timeout=10)
    assert not (tmp_path / "models" / "flaky").exists()

    path = cache.ensure(_builtin_spec("flaky", _tiny_build), timeout=10)
    assert json.loads((path / ".complete.json").read_text())["files"]["weights.bin"] == {"size": 1000}
    assert staging_leftovers(tmp_path / "models") == []


def test_builtin_output_is_checked_against_the_layout(tmp_path: Path) -> None:
    spec = _builtin_spec("layout", _tiny_build, required_files=("config.json", "unet/*.safetensors"))
    with pytest.raises(LayoutError, match=r"missing unet/\*\.safetensors"):
        ModelCache(tmp_path / "models", lease_s=LEASE_S).ensure(spec, timeout=10)
    assert not (tmp_path / "models" / "layout").exists()


def test_orphan_staging_folders_are_removed(tmp_path: Path) -> None:
    spec = _builtin_spec("orphans", _tiny_build)
    models = tmp_path / "models"
    _write_tree(
        models / ".staging",
        {
            f"orphans--{spec.fingerprint[:12]}/0123456789abcdef/weights.bin": b"partial",
            "orphans--000000000000/fedcba9876543210/old.bin": b"an older revision",
            "orphans-other--000000000000/0123456789abcdef/keep.bin": b"another model's download",
        },
    )
    ModelCache(models, lease_s=LEASE_S).ensure(spec, timeout=10)

    assert staging_leftovers(models) == [
        "orphans-other--000000000000",
        "orphans-other--000000000000/0123456789abcdef",
        "orphans-other--000000000000/0123456789abcdef/keep.bin",
    ]


def test_status_lists_complete_and_missing_models(hub: FakeHub, tmp_path: Path) -> None:
    repo = hub.add(make_repo())
    env = cli_env(tmp_path / "volume", hub)
    assert run_cli("ensure", repo.repo_id, env=env).returncode == 0
    result = run_cli("status", "--json", env=env)

    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["org--model"]["state"] == "complete"
    assert rows["org--model"]["size_bytes"] == sum(len(d) for d in repo.files.values())
    assert rows["org--model"]["revisions"] == {"hub org/model@main": repo.commit}
    assert rows["sdxl-base"]["state"] == "missing"
    assert set(rows) >= {"sdxl-base", "sdxl-tiny", "heartmula", "heartmula-tiny", "ip-adapter-sdxl"}


def test_importing_the_package_stays_light() -> None:
    probe = (
        "import sys, cache, cache.model_cache, cache.sources, cache.lock, cache.catalog; "
        "print([m for m in ('torch', 'huggingface_hub', 'filelock') if m in sys.modules])"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.stdout.strip() == "[]", result.stderr


def test_catalog_maps_jobs_to_pinned_models() -> None:
    assert [s.name for s in catalog.for_jobs(["dataset", "image"], "production")] == [
        "sdxl-base",
        "ip-adapter-sdxl",
    ]
    assert [s.name for s in catalog.for_jobs(["music"], "tiny")] == ["heartmula-tiny"]
    for name in catalog.names():
        production = catalog.get(name, "production")
        assert all(part.pinned for part in production.parts), name
        assert catalog.get(name, "tiny").parts[0].kind == "builtin"
    heartmula = catalog.get("heartmula", "production")
    assert [p.subdir for p in heartmula.parts] == ["", "HeartMuLa-oss-3B", "HeartCodec-oss"]
    assert heartmula.version == "3B" and catalog.get("heartmula", "tiny").version == "tiny"
    with pytest.raises(KeyError, match="unknown model 'nope'"):
        catalog.get("nope", "production")
