"""The Hub source through `python -m cache`: warm starts, composite layouts and the errors a user sees."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
import urllib.request
from pathlib import Path

import pytest
from cache_fixtures import (
    LEASE_S,
    ROOT,
    cli_env,
    file_digests,
    make_repo,
    random_bytes,
    repo_digests,
    run_cli,
    running_hub,
    sharded_files,
    staging_leftovers,
)
from hub_server import FakeHub, FakeRepo

from cache import catalog

hub = pytest.fixture(running_hub)


def test_warm_start_makes_no_request_and_takes_milliseconds(hub: FakeHub, tmp_path: Path) -> None:
    repo = hub.add(make_repo())
    env = cli_env(tmp_path / "volume", hub)
    assert run_cli("ensure", repo.repo_id, env=env).returncode == 0
    hub.reset_stats()

    again = run_cli("ensure", repo.repo_id, env=env)
    # In a fresh process: how long ensure() takes, and whether it even imported the network or lock libraries.
    probe = textwrap.dedent(
        f"""
        import json, sys, time
        from pathlib import Path
        from cache import ModelCache, ModelSpec, Part
        cache = ModelCache(Path({str(tmp_path / "volume" / "models")!r}), lease_s={LEASE_S})
        spec = ModelSpec("org--model", parts=(Part(kind="hub", repo_id={repo.repo_id!r}),))
        started = time.perf_counter()
        path = cache.ensure(spec, timeout=5)
        elapsed = time.perf_counter() - started
        print(json.dumps({{"path": str(path), "elapsed": elapsed,
                          "imported": [m for m in ("huggingface_hub", "filelock", "torch") if m in sys.modules]}}))
        """
    )
    measured = subprocess.run(
        [sys.executable, "-c", probe], env=env, cwd=ROOT, capture_output=True, text=True, check=False
    )

    assert again.returncode == 0 and again.stdout.strip().endswith("org--model")
    assert measured.returncode == 0, measured.stderr
    result = json.loads(measured.stdout)
    assert result["path"] == again.stdout.strip()
    assert result["elapsed"] < 0.05
    assert result["imported"] == []
    assert hub.stats.total_requests == 0


def _heartmula_repos(
    *, codec: bool = True, lm_shards: int = 2, lm_listed_shards: int | None = None
) -> list[FakeRepo]:
    gen = FakeRepo(
        "HeartMuLa/HeartMuLaGen",
        {
            "tokenizer.json": b'{"model": {}}',
            "gen_config.json": b'{"text_bos_id": 1}',
            "README.md": b"readme",
        },
        commit=catalog.HEARTMULA_GEN_COMMIT,
    )
    lm_files = sharded_files(shards=lm_listed_shards or lm_shards, shard_size=50_000, seed=1)
    lm_files = {k: v for k, v in lm_files.items() if f"-{lm_shards + 1:05d}-of-" not in k}
    lm = FakeRepo("HeartMuLa/HeartMuLa-oss-3B-happy-new-year", lm_files, commit=catalog.HEARTMULA_3B_COMMIT)
    codec_repo = FakeRepo(
        "HeartMuLa/HeartCodec-oss-20260123",
        sharded_files(shards=2, shard_size=40_000, seed=10),
        commit=catalog.HEARTCODEC_COMMIT,
    )
    return [gen, lm, codec_repo] if codec else [gen, lm]


def test_heartmula_composite_is_assembled_from_three_repos(hub: FakeHub, tmp_path: Path) -> None:
    gen, lm, codec = (hub.add(r) for r in _heartmula_repos())
    result = run_cli(
        "warm", "--jobs", "music", "--profile", "production", env=cli_env(tmp_path / "volume", hub)
    )

    assert result.returncode == 0, result.stderr
    name, path = result.stdout.strip().split("\t")
    assert name == "heartmula"
    expected = {
        **{p: d for p, d in repo_digests(gen).items() if p != "README.md"},
        **repo_digests(lm, "HeartMuLa-oss-3B"),
        **repo_digests(codec, "HeartCodec-oss"),
    }
    assert file_digests(Path(path)) == expected
    manifest = json.loads((Path(path) / ".complete.json").read_text())
    assert [p["revision"] for p in manifest["parts"]] == [gen.commit, lm.commit, codec.commit]


def test_heartmula_missing_sub_repo_is_named(hub: FakeHub, tmp_path: Path) -> None:
    for repo in _heartmula_repos(codec=False):
        hub.add(repo)
    result = run_cli(
        "warm", "--jobs", "music", "--profile", "production", env=cli_env(tmp_path / "volume", hub)
    )

    assert result.returncode == 1
    assert "HeartMuLa/HeartCodec-oss-20260123 not found" in result.stderr
    assert hub.stats.file_bytes == 0  # every part is listed before anything is downloaded
    assert not (tmp_path / "volume" / "models" / "heartmula").exists()


def test_heartmula_missing_shard_is_named_and_nothing_published(hub: FakeHub, tmp_path: Path) -> None:
    # The weight index lists three shards; the repo holds two.
    for repo in _heartmula_repos(lm_shards=2, lm_listed_shards=3):
        hub.add(repo)
    result = run_cli(
        "warm", "--jobs", "music", "--profile", "production", env=cli_env(tmp_path / "volume", hub)
    )

    assert result.returncode == 1
    assert "HeartMuLa-oss-3B/model-00003-of-00003.safetensors" in result.stderr
    assert not (tmp_path / "volume" / "models" / "heartmula").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("ensure", "nobody/nothing"), "repo nobody/nothing not found"),
        (("ensure", "org/model", "--revision", "v9"), "revision v9 not found in org/model"),
        (("ensure", "org/model", "--allow", "*.gguf"), "no file of org/model"),
    ],
)
def test_lookup_errors_are_clear(hub: FakeHub, tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    hub.add(make_repo())
    result = run_cli(*args, env=cli_env(tmp_path / "volume", hub))

    assert result.returncode == 1
    assert message in result.stderr
    assert result.stdout == ""


def test_gated_repo_needs_a_token(hub: FakeHub, tmp_path: Path) -> None:
    repo = hub.add(make_repo("org/gated", gated=True))
    refused = run_cli("ensure", repo.repo_id, env=cli_env(tmp_path / "volume", hub))
    allowed = run_cli("ensure", repo.repo_id, env=cli_env(tmp_path / "volume", hub, HF_TOKEN=hub.token))

    assert refused.returncode == 1
    assert "org/gated is gated (no HF_TOKEN is set)" in refused.stderr
    assert allowed.returncode == 0, allowed.stderr
    assert file_digests(Path(allowed.stdout.strip())) == repo_digests(repo)


def test_free_space_is_checked_before_downloading(hub: FakeHub, tmp_path: Path) -> None:
    repo = hub.add(make_repo(listed_sizes={"model-00001-of-00003.safetensors": 10**16}))
    result = run_cli("ensure", repo.repo_id, env=cli_env(tmp_path / "volume", hub))

    assert result.returncode == 1
    assert "needs 10000.0 TB more" in result.stderr and "grow the network volume" in result.stderr
    assert hub.stats.file_bytes == 0


def test_corrupted_transfer_is_caught_by_sha256_and_not_published(hub: FakeHub, tmp_path: Path) -> None:
    files = sharded_files()
    shard = "model-00002-of-00003.safetensors"
    repo = hub.add(make_repo(files=files, served={shard: random_bytes(99, len(files[shard]))}))
    # downloads are hash-checked as they arrive, with or without CACHE_VERIFY_SHA256
    env = cli_env(tmp_path / "volume", hub)
    result = run_cli("ensure", repo.repo_id, env=env)

    assert result.returncode == 1
    served = hashlib.sha256(random_bytes(99, len(files[shard]))).hexdigest()
    expected = hashlib.sha256(files[shard]).hexdigest()
    assert (
        f"{shard} has sha256 {served} but the source lists {expected}; it was not published" in result.stderr
    )
    assert not (tmp_path / "volume" / "models" / "org--model").exists()
    # The corrupt file was dropped from staging: a retry fetches it again whole, and of the files fetched beside
    # it (four at once) only what the failed run had not received yet.
    repo.served.clear()
    hub.reset_stats()
    retry = run_cli("ensure", repo.repo_id, env=env)
    assert retry.returncode == 0, retry.stderr
    assert file_digests(Path(retry.stdout.strip())) == repo_digests(repo)
    refetched = {path.rsplit("/", 1)[-1]: sent for path, sent in hub.stats.bytes_by_path.items()}
    assert refetched[shard] == len(files[shard])
    assert hub.stats.file_bytes < sum(len(data) for data in files.values())


def test_timeout_names_the_holder(hub: FakeHub, tmp_path: Path) -> None:
    repo = hub.add(make_repo())
    lock = tmp_path / "volume" / "models" / ".locks" / "org--model.lock"
    lock.parent.mkdir(parents=True)
    hold = (
        f"import time; from filelock import SoftFileLease; lease = SoftFileLease({str(lock)!r}, "
        f"lease_duration={LEASE_S}); lease.acquire(); print('held', flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen([sys.executable, "-c", hold], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        result = run_cli("ensure", repo.repo_id, "--timeout", "1", env=cli_env(tmp_path / "volume", hub))
    finally:
        holder.kill()
        holder.wait()

    assert result.returncode == 1
    assert "timed out after 1s waiting for org--model" in result.stderr
    assert f"pid {holder.pid} on host" in result.stderr
    assert hub.stats.file_bytes == 0


def test_a_new_pin_replaces_the_published_revision(hub: FakeHub, tmp_path: Path) -> None:
    old = hub.add(make_repo())
    env = cli_env(tmp_path / "volume", hub)
    first = run_cli("ensure", old.repo_id, "--revision", old.commit, "--name", "pinned", env=env)
    new = hub.add(make_repo(files={**old.files, "config.json": b'{"seed": 2}'}))
    second = run_cli("ensure", new.repo_id, "--revision", new.commit, "--name", "pinned", env=env)

    assert first.returncode == 0 and second.returncode == 0, second.stderr
    assert first.stdout == second.stdout
    published = Path(second.stdout.strip())
    assert file_digests(published) == repo_digests(new)
    assert json.loads((published / ".complete.json").read_text())["parts"][0]["revision"] == new.commit
    assert staging_leftovers(published.parent) == []


def test_fake_hub_serves_ranges_and_counts_bytes(hub: FakeHub) -> None:
    repo = hub.add(make_repo())
    shard = "model-00001-of-00003.safetensors"
    request = urllib.request.Request(f"http://localhost:{hub.port}/cdn/{repo.sha256(shard)}")
    request.add_header("Range", "bytes=100-")
    with urllib.request.urlopen(request) as response:
        assert response.status == 206
        assert (
            response.headers["Content-Range"]
            == f"bytes 100-{len(repo.files[shard]) - 1}/{len(repo.files[shard])}"
        )
        assert response.read() == repo.files[shard][100:]
    assert hub.stats.file_bytes == len(repo.files[shard]) - 100
    assert hub.stats.requests["cdn"] == 1
