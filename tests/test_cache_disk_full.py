"""A volume that fills up: the cache's pre-check says it keeps a reserve, a fetch cut off by ENOSPC names the model
and part (not a bare `[Errno 28]`), nothing is published, and a job that needed the model answers `disk full`."""

from __future__ import annotations

from pathlib import Path

import pytest
from cache_fixtures import LEASE_S, cli_env, make_repo, run_cli, running_hub
from hub_server import FakeHub

from cache import InsufficientSpaceError, ModelCache, ModelSpec, Part, register_builtin

hub = pytest.fixture(running_hub)


def test_the_space_check_says_a_reserve_is_kept(hub: FakeHub, tmp_path: Path) -> None:
    repo = hub.add(make_repo(listed_sizes={"model-00001-of-00003.safetensors": 10**16}))
    result = run_cli("ensure", repo.repo_id, env=cli_env(tmp_path / "volume", hub))
    assert result.returncode == 1
    assert "needs 10000.0 TB more" in result.stderr and "67.1 MB kept free as a reserve" in result.stderr


def test_a_fetch_cut_off_by_a_full_disk_names_the_model_and_publishes_nothing(tmp_path: Path) -> None:
    def build(dest: Path) -> None:
        (dest / "config.json").write_text("{}")
        Path("/dev/full").write_bytes(b"\0" * 4096)  # the kernel's own "No space left on device"

    register_builtin("test-disk-full", build)
    spec = ModelSpec(
        "filled", parts=(Part(kind="builtin", generator="test-disk-full"),), required_files=("*.json",)
    )
    cache = ModelCache(tmp_path / "models", lease_s=LEASE_S)
    with pytest.raises(InsufficientSpaceError) as caught:
        cache.ensure(spec, timeout=30)
    message = str(caught.value)
    assert message.startswith(
        "filled, part builtin test-disk-full@main: the volume filled up while fetching it"
    )
    assert "grow the network volume" in message and "Errno" not in message
    assert not (tmp_path / "models" / "filled").exists()
    assert cache.status([spec])[0].state == "missing"
