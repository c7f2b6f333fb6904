"""The lease's two ways of noticing a takeover, each on its own, and a paused holder woken while the new holder
still downloads; and a published model that is damaged later (a file cut short or replaced) goes back through
the lock instead of being served. Real lock files (filelock's lease), real processes for the pause."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from cache_fixtures import (
    LEASE_S,
    cli_env,
    file_digests,
    make_repo,
    repo_digests,
    running_hub,
    spawn_cli,
    staging_leftovers,
    wait_until,
)
from hub_server import FakeHub

from cache import LeaseLostError, ModelCache, ModelSpec, Part, register_builtin
from cache.lock import ModelLease

hub = pytest.fixture(running_hub)


def test_a_lock_file_naming_another_holder_is_a_lost_lease(tmp_path: Path) -> None:
    """What a takeover leaves: the lock file holds the new holder's claim. The heartbeat takes up to two of its
    intervals (a lease of 60 s: 40 s) to notice; `check` must see it at once from the token."""
    mine = ModelLease(tmp_path / "locks" / "model.lock", 60)
    theirs = ModelLease(tmp_path / "elsewhere" / "model.lock", 60)
    assert mine.try_acquire() and theirs.try_acquire()
    try:
        mine.check(force=True)  # held: no complaint
        taken = tmp_path / "locks" / "taken.lock"
        taken.write_bytes((tmp_path / "elsewhere" / "model.lock").read_bytes())
        os.replace(taken, mine.path)  # the new holder's claim, where ours was
        with pytest.raises(LeaseLostError, match="another worker took over model.lock"):
            mine.check(force=True)
        assert not mine.still_held()
    finally:
        mine.release()
        theirs.release()


def test_a_loss_the_heartbeat_reported_stays_a_loss(tmp_path: Path) -> None:
    """The heartbeat's report (on_compromise) is remembered: even when the lock file reads as ours again later (a
    stale read of a network volume), the lease is lost."""
    lease_s = 0.6  # heartbeat every 0.2 s: the loss is reported within a second
    mine = ModelLease(tmp_path / "locks" / "model.lock", lease_s)
    assert mine.try_acquire()
    try:
        ours = mine.path.read_bytes()
        mine.path.unlink()
        wait_until(
            lambda: mine._lease.compromise is not None, 10, "the heartbeat to report the lost lock file"
        )
        restored = mine.path.with_name("restored.lock")
        restored.write_bytes(ours)
        os.replace(restored, mine.path)  # our own claim again, token and all
        with pytest.raises(LeaseLostError):
            mine.check(force=True)
        with pytest.raises(LeaseLostError):
            mine.check()  # and without reading the file again
    finally:
        mine.release()


@pytest.mark.slow
def test_a_paused_holder_woken_during_the_takeover_stops_and_corrupts_nothing(
    hub: FakeHub, tmp_path: Path
) -> None:
    repo = hub.add(make_repo())
    hub.throttle_bps = 150_000
    env = cli_env(tmp_path / "volume", hub)
    paused = spawn_cli("ensure", repo.repo_id, env=env, log=tmp_path / "paused.log")
    wait_until(lambda: hub.stats.file_bytes > 100_000, 30, "the first worker to be mid-download")
    os.kill(paused.pid, signal.SIGSTOP)
    try:
        taker = spawn_cli("ensure", repo.repo_id, env=env, log=tmp_path / "taker.log")
        staging = tmp_path / "volume" / "models" / ".staging"
        wait_until(
            lambda: "resuming with" in (tmp_path / "taker.log").read_text(),
            LEASE_S * 10,
            "the second worker to take the lease over and adopt the staged files",
        )
        assert taker.poll() is None  # still downloading at the throttled rate: it holds the lease now
    finally:
        os.kill(paused.pid, signal.SIGCONT)
    paused_out, _ = paused.communicate(timeout=120)
    hub.throttle_bps = 0
    taker_out, _ = taker.communicate(timeout=120)
    paused_log = (tmp_path / "paused.log").read_text()

    assert taker.returncode == 0, (tmp_path / "taker.log").read_text()
    assert paused.returncode == 0, paused_log
    assert "took over" in paused_log  # it noticed, and waited for the new holder instead of publishing
    published = Path(taker_out.strip())
    assert paused_out.strip() == str(published)
    assert file_digests(published) == repo_digests(repo)
    assert staging_leftovers(published.parent) == []
    assert not any(staging.glob("*/*/*.incomplete"))


def _builtin_spec(tmp_path: Path, builds: list[int]) -> ModelSpec:
    def build(dest: Path) -> None:
        builds.append(1)
        (dest / "config.json").write_text('{"layers": 2}')
        (dest / "weights.bin").write_bytes(b"\1" * 4096)

    register_builtin("test-damaged", build)
    return ModelSpec(
        "damaged", parts=(Part(kind="builtin", generator="test-damaged"),), required_files=("*.bin",)
    )


@pytest.mark.parametrize("damage", ["truncated", "replaced by a larger file", "removed"])
def test_a_damaged_published_model_goes_back_through_the_lock(tmp_path: Path, damage: str) -> None:
    builds: list[int] = []
    spec = _builtin_spec(tmp_path, builds)
    cache = ModelCache(tmp_path / "models", lease_s=LEASE_S)
    weights = cache.ensure(spec, timeout=30) / "weights.bin"
    if damage == "truncated":
        weights.write_bytes(b"\1" * 100)
    elif damage == "removed":
        weights.unlink()
    else:
        weights.write_bytes(b"\2" * 5000)
    [status] = cache.status([spec])
    assert status.state == "damaged" and "weights.bin" in (status.problem or ""), status

    again = cache.ensure(spec, timeout=30)

    assert len(builds) == 2
    assert (again / "weights.bin").read_bytes() == b"\1" * 4096
    assert cache.status([spec])[0].state == "complete"


def test_a_model_published_for_another_spec_is_outdated_and_replaced(tmp_path: Path) -> None:
    builds: list[int] = []
    spec = _builtin_spec(tmp_path, builds)
    cache = ModelCache(tmp_path / "models", lease_s=LEASE_S)
    cache.ensure(spec, timeout=30)
    changed = ModelSpec(spec.name, parts=spec.parts, required_files=("*.bin", "config.json"))
    assert changed.fingerprint != spec.fingerprint
    [status] = cache.status([changed])
    assert status.state == "outdated", status
    cache.ensure(changed, timeout=30)
    assert len(builds) == 2 and cache.status([changed])[0].state == "complete"
