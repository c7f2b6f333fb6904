"""The file gateway over HTTP (`python -m worker.gateway` as a process): Morpheus's routes, and the refusals."""

from __future__ import annotations

import http.client
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

from tests.servers import gateway
from worker.gateway import clean_filename

TOKEN = "s3cret-token"
CAP = 100_000
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def volume(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gateway-volume")


@pytest.fixture(scope="module")
def url(volume: Path) -> Iterator[str]:
    env = {"VOLUME_ROOT": str(volume), "GATEWAY_TOKEN": TOKEN, "GATEWAY_MAX_UPLOAD_BYTES": str(CAP)}
    with gateway(env) as base:
        yield base


def upload(
    url: str, job_id: str, name: str, data: bytes, headers: dict[str, str] = AUTH
) -> requests.Response:
    return requests.post(
        f"{url}/upload",
        files={"file": (name, data)},
        data={"worker_job_id": job_id},
        headers=headers,
        timeout=10,
    )


def raw_get(url: str, path: str, method: str = "GET") -> int:
    """A request with the path sent byte for byte (requests would normalise '..')."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        connection.request(method, path, headers=AUTH)
        return connection.getresponse().status
    finally:
        connection.close()


def test_health_needs_no_token(url: str) -> None:
    assert requests.get(f"{url}/health", timeout=5).json()["status"] == "ok"


def test_upload_then_download_by_every_spelling_of_the_path(url: str, volume: Path) -> None:
    answer = upload(url, "job-1", "face.png", b"png bytes")
    assert answer.status_code == 201, answer.text
    body = answer.json()
    stored = volume / "job_data" / "job-1" / "inputs" / "face.png"
    assert body["pod_path"] == str(stored.resolve())
    assert body["relpath"] == "job-1/inputs/face.png"
    assert body["worker_job_id"] == "job-1" and body["bytes"] == 9
    assert stored.read_bytes() == b"png bytes"
    for spelling in (
        "job-1/inputs/face.png",
        "job_data/job-1/inputs/face.png",
        "/runpod-volume/job_data/job-1/inputs/face.png",
        "/workspace/job_data/job-1/inputs/face.png",
        body["pod_path"],
    ):
        got = requests.get(f"{url}/download/{spelling}", headers=AUTH, timeout=5)
        assert got.status_code == 200, (spelling, got.text)
        assert got.content == b"png bytes"


def test_upload_names_are_sanitized_into_the_job_folder(url: str, volume: Path) -> None:
    answer = upload(url, "job-2", "../../../etc/evil name!.png", b"x")
    assert answer.status_code == 201, answer.text
    assert answer.json()["relpath"] == "job-2/inputs/evil_name_.png"
    assert (volume / "job_data" / "job-2" / "inputs" / "evil_name_.png").read_bytes() == b"x"
    assert not (volume / "etc").exists()


@pytest.mark.parametrize("job_id", ["../escape", "a/b", ".hidden", ""])
def test_upload_refuses_bad_job_ids(url: str, volume: Path, job_id: str) -> None:
    answer = upload(url, job_id, "f.png", b"x")
    assert answer.status_code == 400
    assert "worker_job_id" in answer.text or "job id" in answer.text


def test_upload_refuses_files_over_the_cap(url: str, volume: Path) -> None:
    answer = upload(url, "job-big", "big.bin", b"x" * (CAP + 200_000))
    assert answer.status_code == 413
    assert "GATEWAY_MAX_UPLOAD_BYTES" in answer.text
    assert not (volume / "job_data" / "job-big" / "inputs" / "big.bin").exists()


def test_streamed_upload_over_the_cap_is_cut_off(url: str, volume: Path) -> None:
    boundary = "b0undary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="worker_job_id"\r\n\r\njob-stream\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="s.bin"\r\n\r\n'
    ).encode()

    def body() -> Iterator[bytes]:  # chunked: no Content-Length to refuse up front
        yield head
        for _ in range(40):
            yield b"x" * 10_000
        yield f"\r\n--{boundary}--\r\n".encode()

    headers = {**AUTH, "Content-Type": f"multipart/form-data; boundary={boundary}"}
    try:
        status = requests.post(f"{url}/upload", data=body(), headers=headers, timeout=10).status_code
    except requests.ConnectionError:
        status = 413  # the server may close the connection while the client is still sending
    assert status == 413
    assert not list((volume / "job_data").glob("job-stream/inputs/*"))


def test_token_is_required(url: str) -> None:
    assert upload(url, "job-3", "f.png", b"x", headers={}).status_code == 401
    assert upload(url, "job-3", "f.png", b"x", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert requests.get(f"{url}/download/job-1/inputs/face.png", timeout=5).status_code == 401
    assert requests.post(f"{url}/cleanup/job-1", timeout=5).status_code == 401


@pytest.mark.parametrize(
    "path",
    [
        "/download/job-1/../../secret.txt",
        "/download/job-1/inputs/%2E%2E/%2E%2E/%2E%2E/secret.txt",
        "/download/..%2Fsecret.txt",
        "/download//etc/passwd",
        "/download//runpod-volume/models/secret.txt",
        "/download//workspace/secret.txt",
        "/download/secret.txt",
        "/download/job-1",
        "/download/job-1/.face.png.tmp",
    ],
)
def test_download_refuses_paths_outside_the_job_folders(url: str, volume: Path, path: str) -> None:
    (volume / "secret.txt").write_text("secret")
    (volume / "job_data" / "secret.txt").write_text("secret")
    assert raw_get(url, path) == 400


def test_download_refuses_a_symlink_out_of_the_job_folder(url: str, volume: Path) -> None:
    (volume / "outside.txt").write_text("secret")
    folder = volume / "job_data" / "job-link"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "link.txt").symlink_to(volume / "outside.txt")
    assert requests.get(f"{url}/download/job-link/link.txt", headers=AUTH, timeout=5).status_code == 400


def test_download_of_a_missing_file_is_404(url: str) -> None:
    assert requests.get(f"{url}/download/job-none/x.png", headers=AUTH, timeout=5).status_code == 404


def test_cleanup_removes_only_that_job_folder(url: str, volume: Path) -> None:
    assert upload(url, "job-clean", "a.png", b"a").status_code == 201
    assert upload(url, "job-keep", "b.png", b"b").status_code == 201
    answer = requests.post(f"{url}/cleanup/job-clean", headers=AUTH, timeout=5)
    assert answer.status_code == 200, answer.text
    assert not (volume / "job_data" / "job-clean").exists()
    assert (volume / "job_data" / "job-keep" / "inputs" / "b.png").exists()
    assert requests.post(f"{url}/cleanup/job-clean", headers=AUTH, timeout=5).status_code == 404


@pytest.mark.parametrize("job_id", ["..", ".", "x%0A", "%2E%2E", ".hidden"])
def test_cleanup_refuses_ids_that_are_not_job_folders(url: str, volume: Path, job_id: str) -> None:
    # a POST, the route's own method: without the id check `..` would empty the volume root
    (volume / "keep.txt").write_text("keep")
    assert upload(url, "job-stays", "c.png", b"c").status_code == 201
    assert raw_get(url, f"/cleanup/{job_id}", method="POST") == 400
    assert (volume / "keep.txt").read_text() == "keep"
    assert (volume / "job_data" / "job-stays" / "inputs" / "c.png").exists()


def test_a_job_folder_that_is_a_link_is_refused_for_upload_download_and_cleanup(
    url: str, volume: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    outside = tmp_path_factory.mktemp("outside")
    (outside / "inputs").mkdir()
    (outside / "inputs" / "theirs.txt").write_text("not the volume's")
    (volume / "job_data").mkdir(exist_ok=True)
    (volume / "job_data" / "job-sym").symlink_to(outside)
    answer = upload(url, "job-sym", "face.png", b"png")
    assert answer.status_code == 400 and "symbolic link" in answer.text, answer.text
    assert sorted(p.name for p in (outside / "inputs").iterdir()) == ["theirs.txt"]
    got = requests.get(f"{url}/download/job-sym/inputs/theirs.txt", headers=AUTH, timeout=5)
    assert got.status_code == 400
    cleaned = requests.post(f"{url}/cleanup/job-sym", headers=AUTH, timeout=5)
    assert cleaned.status_code == 400, cleaned.text
    assert (outside / "inputs" / "theirs.txt").exists()


def test_job_ids_with_a_trailing_newline_are_refused(url: str, volume: Path) -> None:
    assert upload(url, "job-nl\n", "f.png", b"x").status_code == 400
    assert not (volume / "job_data" / "job-nl\n").exists()


def test_a_download_name_over_255_bytes_is_a_400(url: str) -> None:
    got = requests.get(f"{url}/download/job-1/{'a' * 300}.png", headers=AUTH, timeout=5)
    assert got.status_code == 400 and "255 bytes" in got.json()["error"]
    assert raw_get(url, f"/download/{'b' * 300}/x.png") == 400


def test_clean_filename() -> None:
    assert clean_filename("C:\\Users\\me\\photo 1.JPG") == "photo_1.JPG"
    assert clean_filename(".bashrc") == "bashrc"
    assert len(clean_filename("a" * 300 + ".png")) == 128
    assert clean_filename("a" * 300 + ".png").endswith(".png")
    with pytest.raises(ValueError):
        clean_filename("../..")
