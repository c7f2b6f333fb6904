"""Models by reference across real processes (`python -m cache fetch`) sharing one volume: one download for many
workers, a killed or paused holder's partial file resumed with a Range request (bytes counted at the server),
eviction under CACHE_MAX_GB around a model a running process holds, and tokens that never reach a log or a file.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from cache_fixtures import (
    ROOT,
    cli_env,
    lora_bytes,
    run_cli,
    running_hub,
    sdxl_checkpoint_bytes,
    spawn_cli,
    staging_leftovers,
    wait_until,
)
from civitai_server import FakeCivitai, FakeVersion
from hub_server import FakeHub, FakeRepo

from cache import parse_ref

hub = pytest.fixture(running_hub)
pytestmark = pytest.mark.slow

HF_SECRET = "hf_secret_never_logged_123"


@pytest.fixture
def civitai():
    with FakeCivitai() as running:
        yield running


def ref_env(volume: Path, hub: FakeHub, civitai: FakeCivitai, **extra: str) -> dict[str, str]:
    return cli_env(
        volume,
        hub,
        ALLOW_PRIVATE_URLS="true",
        CIVITAI_API_URL=civitai.api_url,
        CIVITAI_TOKEN=civitai.token,
        HF_TOKEN=HF_SECRET,
        **extra,
    )


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_eight_workers_fetch_one_reference_with_each_byte_once(
    hub: FakeHub, civitai: FakeCivitai, tmp_path: Path
) -> None:
    content = sdxl_checkpoint_bytes(2_000_000, seed=1)
    hub.add(FakeRepo("org/ckpt", {"model.safetensors": content}))
    hub.throttle_bps = 1_500_000
    env = ref_env(tmp_path / "volume", hub, civitai)
    ref = "hf:org/ckpt/model.safetensors"
    procs = [spawn_cli("fetch", ref, env=env, log=tmp_path / f"w{i}.log") for i in range(8)]
    outputs = [p.communicate(timeout=60)[0] for p in procs]
    logs = [(tmp_path / f"w{i}.log").read_text() for i in range(8)]

    assert [p.returncode for p in procs] == [0] * 8, logs
    paths = {out.strip().splitlines()[-1] for out in outputs}
    assert len(paths) == 1
    assert Path(paths.pop()).read_bytes() == content
    assert hub.stats.bytes_by_path["org/ckpt/model.safetensors"] == len(content)
    assert hub.stats.requests["api"] == 2  # one revision lookup and one folder listing, by the one downloader
    assert sum("waiting for ref-hf-file" in log for log in logs) >= 1


def test_a_killed_holder_is_resumed_from_its_byte_offset(
    hub: FakeHub, civitai: FakeCivitai, tmp_path: Path
) -> None:
    content = sdxl_checkpoint_bytes(4_000_000, seed=2)
    civitai.add(FakeVersion(501, "ckpt.safetensors", content))
    civitai.throttle_bps = 2_000_000
    env = ref_env(tmp_path / "volume", hub, civitai)
    first = spawn_cli("fetch", "civitai:501", env=env, log=tmp_path / "first.log")
    wait_until(lambda: civitai.stats.file_bytes > 1_500_000, 30, "the holder to be mid-file")
    first.send_signal(signal.SIGKILL)
    first.wait()
    civitai.throttle_bps = 0
    # as a holder stopped between writing its resume state and renaming it into place leaves it
    (partial,) = (tmp_path / "volume" / "models" / ".staging").glob("*/*/*.part")
    stray = partial.with_name(f".{partial.name}.json.4242.tmp")
    stray.write_text("{")

    second = run_cli("fetch", "civitai:501", env=env)

    assert second.returncode == 0, second.stderr
    assert Path(second.stdout.strip()).read_bytes() == content
    assert sorted(p.name for p in Path(second.stdout.strip()).parent.iterdir()) == [
        ".complete.json",
        "ckpt.safetensors",
    ]
    assert "resuming with a Range request" in second.stderr
    ratio = civitai.stats.file_bytes / len(content)
    assert ratio <= 1.05, f"{civitai.stats.file_bytes} bytes fetched for a {len(content)}-byte model"
    # the takeover resolved nothing again: the first holder's record of the version was used
    assert civitai.stats.requests["api"] == 1
    assert staging_leftovers(tmp_path / "volume" / "models") == []


def test_a_paused_holder_is_taken_over_and_corrupts_nothing(
    hub: FakeHub, civitai: FakeCivitai, tmp_path: Path
) -> None:
    content = sdxl_checkpoint_bytes(4_000_000, seed=3)
    hub.add(FakeRepo("org/big", {"model.safetensors": content}))
    hub.throttle_bps = 2_000_000
    env = ref_env(tmp_path / "volume", hub, civitai)
    ref = "hf:org/big/model.safetensors"
    paused = spawn_cli("fetch", ref, env=env, log=tmp_path / "paused.log")
    wait_until(lambda: hub.stats.file_bytes > 1_500_000, 30, "the holder to be mid-file")
    os.kill(paused.pid, signal.SIGSTOP)
    try:
        taker = run_cli("fetch", ref, env=env)
    finally:
        os.kill(paused.pid, signal.SIGCONT)
    out, _ = paused.communicate(timeout=60)
    paused_log = (tmp_path / "paused.log").read_text()

    assert taker.returncode == 0, taker.stderr
    published = Path(taker.stdout.strip())
    assert "resuming with a Range request" in taker.stderr
    assert paused.returncode == 0, paused_log
    assert out.strip() == str(published)
    assert "took over" in paused_log
    assert published.read_bytes() == content
    kept, fetched = map(
        int, re.search(r"(\d+) bytes kept from an earlier holder, (\d+) fetched", taker.stderr).groups()
    )
    assert kept > 1_000_000 and kept + fetched == len(content)
    # at the server, the bytes it pushed into the frozen process's socket buffers count too
    assert hub.stats.file_bytes / len(content) < 2.0
    assert staging_leftovers(published.parent.parent) == []


def test_eviction_under_cache_max_gb_spares_the_model_a_running_job_holds(
    hub: FakeHub, civitai: FakeCivitai, tmp_path: Path
) -> None:
    for name, seed in (("a", 11), ("b", 12), ("c", 13), ("huge", 14)):
        size = 3_000_000 if name == "huge" else 1_000_000
        hub.add(FakeRepo(f"org/{name}", {"model.safetensors": sdxl_checkpoint_bytes(size, seed=seed)}))
    refs = {name: f"hf:org/{name}/model.safetensors" for name in ("a", "b", "c", "huge")}
    env = ref_env(tmp_path / "volume", hub, civitai, CACHE_MAX_GB="0.0025")
    models = tmp_path / "volume" / "models"
    for name in ("a", "b"):
        assert run_cli("fetch", refs[name], env=env).returncode == 0
    # a job holding "a" (the least recently used) in another process
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(models), refs["a"]],
        env=env,
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        fetched = run_cli("fetch", refs["c"], env=env)
        listing = run_cli("ls", env=env)
        refused = run_cli("rm", refs["a"], env=env)
        too_big = run_cli("fetch", refs["huge"], env=env)
    finally:
        holder.communicate("", timeout=30)

    assert fetched.returncode == 0, fetched.stderr
    names = {name: parse_ref(ref).folder_name for name, ref in refs.items()}
    assert (models / names["a"]).is_dir() and (models / names["c"]).is_dir()
    assert not (models / names["b"]).exists()
    assert f"evicted {refs['b']}" in fetched.stderr
    line = next(row for row in listing.stdout.splitlines() if row.startswith(names["a"]))
    assert "pid" in line and refs["a"] in line
    assert refused.returncode == 1 and "in use by" in refused.stderr
    assert too_big.returncode == 1 and "CACHE_MAX_GB=0.0025" in too_big.stderr
    # released now: rm works, and forgets the resolution too
    removed = run_cli("rm", refs["a"], env=env)
    assert removed.returncode == 0, removed.stderr
    assert not (models / names["a"]).exists() and not (models / ".refs" / f"{names['a']}.json").exists()


def test_downloads_at_once_cannot_overshoot_cache_max_gb_together(
    hub: FakeHub, civitai: FakeCivitai, tmp_path: Path
) -> None:
    """Two workers fetch two models at once, each fitting CACHE_MAX_GB but not both: the one that reserves second
    is refused naming the first's download; a killed downloader's reservation does not block anyone."""
    for name, seed in (("first", 21), ("second", 22), ("third", 23)):
        hub.add(FakeRepo(f"org/{name}", {"model.safetensors": sdxl_checkpoint_bytes(1_500_000, seed=seed)}))
    refs = {name: f"hf:org/{name}/model.safetensors" for name in ("first", "second", "third")}
    env = ref_env(tmp_path / "volume", hub, civitai, CACHE_MAX_GB="0.0025")
    models = tmp_path / "volume" / "models"
    hub.throttle_bps = 1_000_000
    first = spawn_cli("fetch", refs["first"], env=env, log=tmp_path / "first.log")
    wait_until(lambda: hub.stats.file_bytes > 200_000, 30, "the first download to be under way")

    second = run_cli("fetch", refs["second"], env=env)

    assert second.returncode == 1
    assert (
        f"CACHE_MAX_GB=0.0025 holds 1.5 MB of models that may not be evicted now: {refs['first']} (being "
        in (second.stderr)
    )
    assert "downloaded by" in second.stderr and not (models / parse_ref(refs["second"]).folder_name).exists()
    # killed mid-file: its reservation dies with it (the heartbeat of a dead process on this host counts for nothing)
    first.send_signal(signal.SIGKILL)
    first.wait()
    hub.throttle_bps = 0
    third = run_cli("fetch", refs["third"], env=env)
    assert third.returncode == 0, third.stderr
    assert first.returncode == -signal.SIGKILL


_HOLDER = """
import sys
from pathlib import Path
from cache import ModelCache
from cache.cache_settings import CacheSettings
cache = ModelCache.from_settings(Path(sys.argv[1]), CacheSettings.from_env())
with cache.use(sys.argv[2], timeout=30, want="checkpoint"):
    print("held", flush=True)
    sys.stdin.read()
"""


def test_tokens_never_reach_a_log_or_a_file_at_debug(
    hub: FakeHub, civitai: FakeCivitai, tmp_path: Path
) -> None:
    hub.add(FakeRepo("org/private", {"model.safetensors": sdxl_checkpoint_bytes(seed=21)}, gated=True))
    hub.token = HF_SECRET
    civitai.add(FakeVersion(77, "style.safetensors", lora_bytes(seed=22), model_type="LORA"))
    env = ref_env(tmp_path / "volume", hub, civitai, LOG_LEVEL="DEBUG")
    runs = [run_cli("fetch", ref, env=env) for ref in ("hf:org/private/model.safetensors", "civitai:77")]
    wrong = run_cli(
        "fetch",
        "civitai:77",
        env={**env, "CIVITAI_TOKEN": "wrong_token_xyz", "VOLUME_ROOT": str(tmp_path / "v2")},
    )

    assert [r.returncode for r in runs] == [0, 0], [r.stderr for r in runs]
    assert wrong.returncode == 1 and "CIVITAI_TOKEN is set" in wrong.stderr
    assert all("DEBUG" in r.stderr for r in runs)
    for secret in (HF_SECRET, civitai.token, "wrong_token_xyz"):
        for run in (*runs, wrong):
            assert secret not in run.stdout + run.stderr
        for path in (tmp_path / "volume").rglob("*"):
            assert not path.is_file() or secret.encode() not in path.read_bytes(), path
    # and each token went to its own host only
    assert hub.stats.authorization["cdn"] == [None]
    assert civitai.stats.authorization["cdn"] == [None]
    assert set(civitai.stats.authorization["download"]) == {
        f"Bearer {civitai.token}",
        "Bearer wrong_token_xyz",
    }
