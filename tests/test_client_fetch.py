"""Fetching a result's files from a mounted volume and through the file gateway; the env → client map."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.servers import gateway
from worker_client import ClientError, EndpointClient
from worker_client.endpoints import microservice_endpoints, output_source
from worker_client.outputs import BucketUrls, GatewayFiles, MountedVolume, VolumeS3
from worker.job_folders import JobStore


def finished(job_data: Path) -> dict[str, Any]:
    folder = JobStore(job_data).job("job-f")
    folder.begin()
    out = [folder.write_bytes("image_00.png", b"pixels", kind="image")]
    return {"job_id": "job-f", "type": "image", "outputs": [o.model_dump() for o in out]}


def test_fetch_from_the_same_volume_mounted_here(tmp_path: Path) -> None:
    result = finished(tmp_path / "volume" / "job_data")
    client = EndpointClient(
        base_url="http://127.0.0.1:1", outputs=MountedVolume(tmp_path / "volume" / "job_data")
    )
    [path] = client.fetch(result, tmp_path / "dest")
    assert path == tmp_path / "dest" / "job-f" / "image_00.png"
    assert path.read_bytes() == b"pixels"


def test_fetch_checks_the_sha256_and_leaves_no_partial_file(tmp_path: Path) -> None:
    result = finished(tmp_path / "job_data")
    (tmp_path / "job_data" / "job-f" / "image_00.png").write_bytes(b"pixelz")  # same size, other bytes
    client = EndpointClient(base_url="http://127.0.0.1:1", outputs=MountedVolume(tmp_path / "job_data"))
    with pytest.raises(ClientError, match="SHA-256"):
        client.fetch(result, tmp_path / "dest")
    assert not any(p.is_file() for p in (tmp_path / "dest").rglob("*"))


def test_fetch_refuses_a_result_that_points_outside_the_destination(tmp_path: Path) -> None:
    result = {"outputs": [{"relpath": "../../etc/passwd", "path": "/etc/passwd"}]}
    client = EndpointClient(base_url="http://127.0.0.1:1", outputs=MountedVolume(tmp_path))
    with pytest.raises(ClientError, match="relative"):
        client.fetch(result, tmp_path / "dest")


def test_fetch_without_urls_says_how_to_configure(tmp_path: Path) -> None:
    result = finished(tmp_path / "job_data")
    with pytest.raises(ClientError, match="BUCKET_ENDPOINT_URL"):
        EndpointClient(base_url="http://127.0.0.1:1").fetch(result, tmp_path / "dest")


def test_fetch_through_the_file_gateway(tmp_path: Path) -> None:
    result = finished(tmp_path / "volume" / "job_data")
    with gateway({"VOLUME_ROOT": str(tmp_path / "volume"), "GATEWAY_TOKEN": "t"}) as url:
        client = EndpointClient(base_url="http://127.0.0.1:1", outputs=GatewayFiles(url, token="t"))
        [path] = client.fetch(result, tmp_path / "dest")
        assert path.read_bytes() == b"pixels"
        with pytest.raises(ClientError, match="401"):
            EndpointClient(base_url="http://127.0.0.1:1", outputs=GatewayFiles(url)).fetch(
                result, tmp_path / "d2"
            )


def test_one_endpoint_serves_every_job_type() -> None:
    clients = microservice_endpoints({"RUNPOD_ENDPOINT_ID": "abc", "RUNPOD_API_KEY": "k"})
    assert set(clients) == {"music", "image", "dataset", "training"}
    assert len({id(c) for c in clients.values()}) == 1
    assert clients["image"].base_url == "https://api.runpod.ai/v2/abc"


def test_one_endpoint_per_type_and_a_local_server() -> None:
    env = {
        "RUNPOD_API_KEY": "k",
        "RUNPOD_ENDPOINT_ID": "shared",
        "RUNPOD_ENDPOINT_ID_MUSIC": "music-ep",
        "RUNPOD_ENDPOINT_URL_TRAINING": "http://127.0.0.1:8000",
    }
    clients = microservice_endpoints(env)
    assert clients["music"].base_url.endswith("/music-ep")
    assert clients["image"] is clients["dataset"]
    assert clients["training"].local_server and clients["training"].base_url == "http://127.0.0.1:8000"


def test_only_the_configured_types_are_listed_and_none_is_an_error() -> None:
    assert set(microservice_endpoints({"RUNPOD_ENDPOINT_URL_MUSIC": "http://127.0.0.1:1"})) == {"music"}
    with pytest.raises(ClientError, match="RUNPOD_ENDPOINT_ID"):
        microservice_endpoints({})


def test_output_source_from_env(tmp_path: Path) -> None:
    assert isinstance(output_source({}), BucketUrls)
    mounted = output_source({"JOB_DATA_MOUNT": str(tmp_path)})
    assert isinstance(mounted, MountedVolume) and mounted.job_data_dir == tmp_path
    assert isinstance(output_source({"GATEWAY_URL": "http://pod:8000", "GATEWAY_TOKEN": "t"}), GatewayFiles)
    s3_env = {
        "RUNPOD_NETWORK_VOLUME_ID": "vol",
        "RUNPOD_S3_ACCESS_KEY_ID": "user_x",
        "RUNPOD_S3_SECRET_ACCESS_KEY": "rps_x",
        "RUNPOD_S3_ENDPOINT_URL": "https://s3api-eu-ro-1.runpod.io",
    }
    assert isinstance(output_source(s3_env), VolumeS3)
    with pytest.raises(ClientError, match="RUNPOD_S3_ENDPOINT_URL"):
        output_source({**s3_env, "RUNPOD_S3_ENDPOINT_URL": "", "OUTPUTS_FROM": "volume-s3"})
    with pytest.raises(ClientError, match="OUTPUTS_FROM"):
        output_source({"OUTPUTS_FROM": "ftp"})
