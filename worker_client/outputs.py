"""Where a finished job's files come from, and the verified copy `EndpointClient.fetch` makes of them.

A result lists its files by volume path (`outputs[].relpath`, relative to `job_data`). They can be read from the
same volume mounted here (a pod), through RunPod's S3-compatible API over the network volume, through the file
gateway, or from the presigned URLs the worker adds when it uploads to a bucket. No torch; boto3 only in VolumeS3.
"""

from __future__ import annotations

import hashlib
import os
import re
import uuid
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

import requests

from worker_client.exceptions import ClientError, TransientError
from worker_client.relpaths import UnsafePathError, safe_relpath

_CHUNK = 1 << 20


class OutputSource(Protocol):
    """Where `EndpointClient.fetch` reads a result's files from."""

    def copy_to(self, output: dict[str, Any], target: Path) -> None:
        """Write the bytes of one result output (`{"path", "relpath", ...}`) to `target`."""


def fetch_outputs(result: dict[str, Any], dest: Path, source: OutputSource) -> list[Path]:
    """Copy a result's outputs to `dest/<job id>/<name>`, each written atomically and checked against the
    result's size and SHA-256; returns the local paths."""
    outputs = result.get("outputs") if isinstance(result, dict) else None
    if not isinstance(outputs, list):
        raise ClientError("fetch: the result has no 'outputs' list (is it this worker's result?)")
    paths = []
    for output in outputs:
        try:
            target = dest.joinpath(*safe_relpath(str(output.get("relpath", ""))).parts)
        except UnsafePathError as error:  # a result is remote data: it must not write outside `dest`
            raise ClientError(f"fetch: {error}") from None
        target.parent.mkdir(parents=True, exist_ok=True)
        temp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.part")
        try:
            source.copy_to(output, temp)
            _verify(temp, output)
            os.replace(temp, target)
        finally:
            temp.unlink(missing_ok=True)
        paths.append(target)
    return paths


def _verify(path: Path, output: dict[str, Any]) -> None:
    size = path.stat().st_size
    if "bytes" in output and size != output["bytes"]:
        raise ClientError(f"{output.get('relpath')}: got {size} bytes, the result says {output['bytes']}")
    if "sha256" in output:
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(_CHUNK), b""):
                digest.update(chunk)
        if digest.hexdigest() != output["sha256"]:
            raise ClientError(
                f"{output.get('relpath')}: SHA-256 differs from the result's; the copy is corrupt"
            )


class BucketUrls:
    """Downloads the presigned `url` the worker put on each output (its endpoint has BUCKET_* set)."""

    def __init__(self, timeout_s: float = 60.0) -> None:
        self.timeout_s = timeout_s

    def copy_to(self, output: dict[str, Any], target: Path) -> None:
        url = output.get("url")
        if not url:
            raise ClientError(
                f"{output.get('relpath')}: the result carries no download URL. Set BUCKET_ENDPOINT_URL, "
                "BUCKET_ACCESS_KEY_ID and BUCKET_SECRET_ACCESS_KEY on the endpoint, or fetch from the volume "
                "(MountedVolume, VolumeS3, GatewayFiles)"
            )
        _download(url, target, {}, self.timeout_s)


class MountedVolume:
    """The endpoint's network volume mounted here (a pod: `/workspace/job_data`)."""

    def __init__(self, job_data_dir: str | Path) -> None:
        self.job_data_dir = Path(job_data_dir)

    def copy_to(self, output: dict[str, Any], target: Path) -> None:
        source = self.job_data_dir.joinpath(*safe_relpath(str(output["relpath"])).parts)
        if not source.is_file():
            raise ClientError(
                f"{source}: not found; is the endpoint's volume mounted at {self.job_data_dir.parent}?"
            )
        with source.open("rb") as reader, target.open("wb") as writer:
            for chunk in iter(lambda: reader.read(_CHUNK), b""):
                writer.write(chunk)


class VolumeS3:
    """RunPod's S3-compatible API over the network volume: the bucket is the volume id, keys are volume paths."""

    def __init__(
        self,
        volume_id: str,
        access_key_id: str,
        secret_access_key: str,
        endpoint_url: str,
        region: str | None = None,
        job_data_prefix: str = "job_data",
    ) -> None:
        self.volume_id = volume_id
        self.job_data_prefix = job_data_prefix.strip("/")
        # the datacenter is the region: https://s3api-eu-ro-1.runpod.io → eu-ro-1
        match = re.match(r"https?://s3api-([a-z0-9-]+)\.runpod\.io", endpoint_url)
        self._options = {
            "endpoint_url": endpoint_url,
            "aws_access_key_id": access_key_id,
            "aws_secret_access_key": secret_access_key,
            "region_name": region or (match.group(1) if match else "us-east-1"),
        }
        self._client: Any = None

    def copy_to(self, output: dict[str, Any], target: Path) -> None:
        if self._client is None:
            import boto3

            self._client = boto3.client("s3", **self._options)
        key = f"{self.job_data_prefix}/{safe_relpath(str(output['relpath']))}".lstrip("/")
        self._client.download_file(self.volume_id, key, str(target))


class GatewayFiles:
    """The file gateway (`python -m worker.gateway`) on a pod that mounts the endpoint's volume."""

    def __init__(self, url: str, token: str | None = None, timeout_s: float = 60.0) -> None:
        self.url = url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.timeout_s = timeout_s

    def copy_to(self, output: dict[str, Any], target: Path) -> None:
        relpath = safe_relpath(str(output["relpath"]))
        _download(f"{self.url}/download/{quote(str(relpath))}", target, self.headers, self.timeout_s)


def _download(url: str, target: Path, headers: dict[str, str], timeout_s: float) -> None:
    try:
        with requests.get(url, headers=headers, stream=True, timeout=timeout_s) as response:
            if response.status_code >= 500 or response.status_code == 429:
                raise TransientError(f"GET {url.split('?')[0]}: HTTP {response.status_code}")
            if response.status_code >= 400:
                raise ClientError(
                    f"GET {url.split('?')[0]}: HTTP {response.status_code} {response.text[:200]}"
                )
            with target.open("wb") as writer:
                for chunk in response.iter_content(_CHUNK):
                    writer.write(chunk)
    except (requests.ConnectionError, requests.Timeout) as error:
        raise TransientError(f"GET {url.split('?')[0]}: {error}") from error
