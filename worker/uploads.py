"""Upload a finished job's outputs to an S3-compatible bucket and put a presigned URL on each output.

On when BUCKET_ENDPOINT_URL, BUCKET_ACCESS_KEY_ID and BUCKET_SECRET_ACCESS_KEY are set (bucket: BUCKET_NAME, or
the first path segment of the endpoint URL), or when the job carries RunPod's `s3Config`
(`{"accessId", "accessSecret", "bucketName", "endpointUrl"}`, beside `input`). Without either nothing is uploaded:
unlike runpod's `rp_upload`, there is no silent copy into a local "uploaded" folder. boto3 is imported only here,
and only when a bucket is configured.
"""

from __future__ import annotations

import logging
import mimetypes
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from worker.config import ConfigError, Settings
from worker.inputs import check_public_endpoint
from worker.schemas import JobInputError

log = logging.getLogger(__name__)

_S3_CONFIG_KEYS = ("accessId", "accessSecret", "bucketName", "endpointUrl")


class UploadError(RuntimeError):
    """The bucket refused the outputs. They are complete on the volume; the message says where."""


@dataclass(frozen=True)
class Bucket:
    endpoint_url: str
    access_key_id: str
    secret_access_key: str
    name: str
    url_expiry_s: int

    def client(self) -> Any:
        import boto3
        from botocore.config import Config

        config = Config(
            signature_version="s3v4",
            retries={"max_attempts": 3, "mode": "standard"},
            s3={"addressing_style": "path"},
        )
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
            config=config,
            region_name=_region(self.endpoint_url),
        )


def _region(endpoint_url: str) -> str:
    # AWS-style hosts carry the region (s3.eu-west-1.amazonaws.com); other S3 services accept any
    host = urlsplit(endpoint_url).hostname or ""
    parts = host.split(".")
    if "s3" in parts and parts.index("s3") + 2 < len(parts):
        return parts[parts.index("s3") + 1]
    return "us-east-1"


def bucket_for(s3_config: Any, settings: Settings) -> Bucket | None:
    """The bucket a job's outputs go to (its `s3Config`, else the BUCKET_* settings), or None. A bad `s3Config`
    is refused before the job runs."""
    if s3_config is not None:
        if not isinstance(s3_config, dict) or any(not s3_config.get(key) for key in _S3_CONFIG_KEYS):
            raise JobInputError("s3Config", f"give {', '.join(_S3_CONFIG_KEYS)}")
        # a job must not point the worker's uploads at hosts inside its network
        check_public_endpoint(
            str(s3_config["endpointUrl"]), "s3Config.endpointUrl", settings.allow_private_urls
        )
        return Bucket(
            str(s3_config["endpointUrl"]),
            str(s3_config["accessId"]),
            str(s3_config["accessSecret"]),
            str(s3_config["bucketName"]),
            settings.bucket_url_expiry_s,
        )
    values = {
        "BUCKET_ENDPOINT_URL": settings.bucket_endpoint_url,
        "BUCKET_ACCESS_KEY_ID": settings.bucket_access_key_id,
        "BUCKET_SECRET_ACCESS_KEY": settings.bucket_secret_access_key,
    }
    if not any(values.values()):
        return None
    missing = [name for name, value in values.items() if not value]
    if missing:
        raise ConfigError(f"{', '.join(missing)}: set all of {', '.join(values)} to upload outputs, or none")
    endpoint = str(settings.bucket_endpoint_url)
    parts = urlsplit(endpoint)
    name = settings.bucket_name or parts.path.strip("/").split("/")[0]
    if not name:
        raise ConfigError("BUCKET_NAME: required (or give the bucket as BUCKET_ENDPOINT_URL's path)")
    if not settings.bucket_name:
        endpoint = urlunsplit((parts.scheme, parts.netloc, "", "", ""))
    return Bucket(
        endpoint,
        str(settings.bucket_access_key_id),
        str(settings.bucket_secret_access_key),
        name,
        settings.bucket_url_expiry_s,
    )


def upload_outputs(bucket: Bucket, result: dict[str, Any]) -> dict[str, Any]:
    """A copy of `result` whose outputs carry `url` (presigned GET) after uploading each under its relpath."""
    client = bucket.client()
    outputs = []
    for output in result["outputs"]:
        key = output["relpath"]
        content_type = mimetypes.guess_type(key)[0] or "application/octet-stream"
        try:
            client.upload_file(output["path"], bucket.name, key, ExtraArgs={"ContentType": content_type})
        except Exception as error:  # botocore's errors share no useful base class with the transfer errors
            folder = Path(output["path"]).parent
            raise UploadError(
                f"upload: {key} to bucket {bucket.name!r} at {bucket.endpoint_url} failed ({error}); "
                f"the outputs are complete on the volume in {folder}"
            ) from error
        url = client.generate_presigned_url(
            "get_object", Params={"Bucket": bucket.name, "Key": key}, ExpiresIn=bucket.url_expiry_s
        )
        outputs.append({**output, "url": url})
    log.info("uploaded %d output(s) to bucket %s", len(outputs), bucket.name)
    return {**result, "outputs": outputs}
