"""Bucket upload and S3 fetching against a real S3 server (moto in server mode, on loopback)."""

from __future__ import annotations

import json

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.servers import moto_s3
from worker_client import EndpointClient
from worker.config import ConfigError, Settings
from worker_client.outputs import VolumeS3
from worker.job_folders import JobStore
from worker.schemas import JobInputError
from worker.uploads import UploadError, bucket_for, upload_outputs

KEYS = {"bucket_access_key_id": "testing", "bucket_secret_access_key": "testing"}


@pytest.fixture(scope="module")
def s3_url() -> Iterator[str]:
    with moto_s3() as url:
        yield url


def s3(url: str) -> Any:
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )


@pytest.fixture
def finished_job(tmp_path: Path) -> dict[str, Any]:
    """A result as the worker writes it: two files in a job folder."""
    folder = JobStore(tmp_path / "job_data").job("job-up")
    folder.begin()
    outputs = [
        folder.write_bytes("image_00.png", b"\x89PNG fake image", kind="image"),
        folder.write_bytes("captions/image_00.txt", b"a caption", kind="caption"),
    ]
    return {"job_id": "job-up", "type": "image", "outputs": [o.model_dump() for o in outputs], "metrics": {}}


def test_outputs_arrive_and_their_urls_download(
    s3_url: str, finished_job: dict[str, Any], tmp_path: Path
) -> None:
    s3(s3_url).create_bucket(Bucket="outputs")
    settings = Settings(bucket_endpoint_url=s3_url, bucket_name="outputs", bucket_url_expiry_s=600, **KEYS)
    bucket = bucket_for(None, settings)
    assert bucket is not None

    result = upload_outputs(bucket, finished_job)

    stored = s3(s3_url).get_object(Bucket="outputs", Key="job-up/image_00.png")
    assert stored["Body"].read() == b"\x89PNG fake image"
    assert stored["ContentType"] == "image/png"
    for output, original in zip(result["outputs"], finished_job["outputs"], strict=True):
        assert "X-Amz-Expires=600" in output["url"]
        assert requests.get(output["url"], timeout=10).content == Path(original["path"]).read_bytes()
    assert "url" not in finished_job["outputs"][0]  # the caller's result is left alone

    fetched = EndpointClient(base_url="http://127.0.0.1:1").fetch(result, tmp_path / "fetched")
    assert [p.relative_to(tmp_path / "fetched").as_posix() for p in fetched] == [
        "job-up/image_00.png",
        "job-up/captions/image_00.txt",
    ]
    assert fetched[1].read_bytes() == b"a caption"


def test_a_jobs_s3config_wins_and_the_bucket_can_ride_in_the_endpoint_path(s3_url: str) -> None:
    job = {"s3Config": {"accessId": "a", "accessSecret": "b", "bucketName": "mine", "endpointUrl": s3_url}}
    bucket = bucket_for(
        job["s3Config"], Settings(bucket_endpoint_url="http://elsewhere", bucket_name="x", allow_private_urls=True, **KEYS)
    )
    assert bucket is not None and (bucket.name, bucket.endpoint_url) == ("mine", s3_url)

    from_path = bucket_for(None, Settings(bucket_endpoint_url=f"{s3_url}/in-path", **KEYS))
    assert from_path is not None and (from_path.name, from_path.endpoint_url) == ("in-path", s3_url)


def test_no_bucket_configured_means_no_upload() -> None:
    assert bucket_for(None, Settings()) is None


def test_partial_or_bad_configuration_is_refused(s3_url: str) -> None:
    with pytest.raises(ConfigError, match="BUCKET_SECRET_ACCESS_KEY"):
        bucket_for(None, Settings(bucket_endpoint_url=s3_url, bucket_access_key_id="k"))
    with pytest.raises(ConfigError, match="BUCKET_NAME"):
        bucket_for(None, Settings(bucket_endpoint_url=s3_url, **KEYS))
    with pytest.raises(JobInputError, match="s3Config"):
        bucket_for({"accessId": "a"}, Settings())


def test_a_refused_upload_says_where_the_outputs_are(s3_url: str, finished_job: dict[str, Any]) -> None:
    bucket = bucket_for(None, Settings(bucket_endpoint_url=s3_url, bucket_name="no-such-bucket", **KEYS))
    assert bucket is not None
    with pytest.raises(UploadError, match="complete on the volume in .*job-up"):
        upload_outputs(bucket, finished_job)


def test_fetch_through_runpods_s3_api_over_the_network_volume(
    s3_url: str, finished_job: dict[str, Any], tmp_path: Path
) -> None:
    client = s3(s3_url)
    client.create_bucket(Bucket="volume-id-123")  # RunPod's S3 API: the bucket is the network volume's id
    for output in finished_job["outputs"]:
        client.upload_file(output["path"], "volume-id-123", f"job_data/{output['relpath']}")
    source = VolumeS3("volume-id-123", "testing", "testing", endpoint_url=s3_url)
    endpoint = EndpointClient(base_url="http://127.0.0.1:1", outputs=source)

    fetched = endpoint.fetch(finished_job, tmp_path / "from-volume")

    assert fetched[0].read_bytes() == b"\x89PNG fake image"
    assert VolumeS3("v", "k", "s", "https://s3api-eu-ro-1.runpod.io/")._options["region_name"] == "eu-ro-1"


SMALL_IMAGE = {"type": "image", "prompt": "a fox", "width": 64, "height": 64, "steps": 1, "seed": 2}


def s3_config(endpoint: str, bucket: str = "job-bucket") -> dict[str, str]:
    return {"accessId": "testing", "accessSecret": "testing", "bucketName": bucket, "endpointUrl": endpoint}


@pytest.fixture(scope="module")
def private_urls_worker(session_volume: Path) -> Any:
    """The fake S3 server is on loopback: only a worker that allows private URLs may upload there."""
    from worker.worker import Worker

    settings = Settings(volume_root=session_volume, model_profile="tiny", worker_jobs=("image",),
                        allow_private_urls=True)
    return Worker(settings).start()


def test_an_s3config_on_a_private_host_is_refused_by_default(s3_url: str, image_worker: Any) -> None:
    result = image_worker.handle_sync({"id": "up-private", "input": SMALL_IMAGE, "s3Config": s3_config(s3_url)})
    assert result["error"].startswith("s3Config.endpointUrl: host '127.0.0.1' resolves to a private")
    assert not (image_worker.store.root / "up-private").exists()
    with pytest.raises(JobInputError, match="s3Config.endpointUrl: expected an http"):
        bucket_for(s3_config("file:///etc"), Settings(allow_private_urls=True))


def test_the_worker_uploads_when_the_job_carries_s3config(s3_url: str, private_urls_worker: Any) -> None:
    s3(s3_url).create_bucket(Bucket="job-bucket")
    result = private_urls_worker.handle_sync({"id": "up-ok", "input": SMALL_IMAGE, "s3Config": s3_config(s3_url)})
    assert "error" not in result, result
    [output] = result["outputs"]
    assert requests.get(output["url"], timeout=10).content == Path(output["path"]).read_bytes()
    # one answer: result.json, written last, is what the caller got, URLs included
    assert json.loads((Path(output["path"]).parent / "result.json").read_text()) == result


def test_a_failed_upload_is_an_error_that_keeps_the_outputs(private_urls_worker: Any) -> None:
    result = private_urls_worker.handle_sync(
        {"id": "up-fail", "input": SMALL_IMAGE, "s3Config": s3_config("http://127.0.0.1:9", "nowhere")}
    )
    assert result["error"].startswith("upload: up-fail/image_00.png to bucket 'nowhere'")
    folder = private_urls_worker.store.root / "up-fail"
    assert (folder / "image_00.png").is_file() and (folder / "result.json").is_file()


def test_a_bad_s3config_is_refused_before_the_job_runs(image_worker: Any) -> None:
    result = image_worker.handle_sync({"id": "up-bad", "input": SMALL_IMAGE, "s3Config": {"accessId": "a"}})
    assert result == {"error": "s3Config: give accessId, accessSecret, bucketName, endpointUrl"}
    assert not (image_worker.store.root / "up-bad" / "image_00.png").exists()
