"""worker.inputs: image sources decoded safely, bounded, and kept inside the volume; URL fetches that refuse
private hosts, stop at the size cap and the timeout. Real sockets (a local HTTP server), real PIL decoding."""

from __future__ import annotations

import base64
import http.server
import io
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest
from PIL import Image

from cache.addresses import is_public_address as is_public
from worker.config import Settings
from worker.inputs import InputLimits, VolumeFiles, decode_image, fetch_url, load_image, source_bytes
from worker.schemas import JobInputError


def png_bytes(
    size: tuple[int, int] = (40, 30), color: tuple[int, ...] = (10, 120, 200), mode: str = "RGB"
) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def volume(tmp_path: Path) -> VolumeFiles:
    (tmp_path / "inputs").mkdir()
    (tmp_path / "inputs" / "face.png").write_bytes(png_bytes())
    return VolumeFiles(tmp_path)


PUBLIC_HOST = "images.example"  # resolved by `public_dns` to a public address that reaches the local server
PUBLIC_ADDRESS = "93.184.215.14"
LIMITS = InputLimits(max_images=3, max_bytes=64 * 1024, max_pixels=1_000_000, fetch_timeout_s=1.0)
OPEN = InputLimits(max_images=3, max_bytes=64 * 1024, fetch_timeout_s=1.0, allow_private_urls=True)


class _Handler(http.server.BaseHTTPRequestHandler):
    routes: ClassVar[dict[str, tuple[int, dict[str, str], bytes, float]]] = {}

    def do_GET(self) -> None:
        status, headers, body, delay = self.routes.get(self.path, (404, {}, b"", 0.0))
        time.sleep(delay)
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        if "Content-Length" not in headers and "X-No-Length" not in headers:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client stopped reading at its size cap or timeout, as it should

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    big = os.urandom(100 * 1024)
    _Handler.routes = {
        "/face.png": (200, {}, png_bytes(), 0.0),
        "/big": (200, {}, big, 0.0),
        "/big-unannounced": (200, {"X-No-Length": "1", "Connection": "close"}, big, 0.0),
        "/slow": (200, {}, png_bytes(), 3.0),
        "/moved": (302, {"Location": "/face.png"}, b"", 0.0),
        "/to-loopback": (302, {"Location": f"{base}/face.png"}, b"", 0.0),
        "/to-localhost": (302, {"Location": base.replace("127.0.0.1", "localhost") + "/face.png"}, b"", 0.0),
        "/to-metadata": (307, {"Location": "http://169.254.169.254/latest/meta-data/"}, b"", 0.0),
        "/to-public": (301, {"Location": base.replace("127.0.0.1", PUBLIC_HOST) + "/face.png"}, b"", 0.0),
        "/%C3%A9t%C3%A9.png": (200, {}, png_bytes(), 0.0),
        "/gone": (410, {}, b"", 0.0),
    }
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield base
    httpd.shutdown()
    httpd.server_close()


def test_settings_carry_the_operator_bounds() -> None:
    limits = InputLimits.from_settings(
        Settings(max_inline_images=5, max_image_bytes=4096, url_fetch_timeout_s=2.5, allow_private_urls=True)
    )
    assert (limits.max_images, limits.max_bytes, limits.fetch_timeout_s, limits.allow_private_urls) == (
        5,
        4096,
        2.5,
        True,
    )
    with pytest.raises(JobInputError, match=r"^images: at most 5 inline images"):
        limits.check_count(6, "images")


def test_base64_plain_and_data_uri_decode_to_rgb(volume: VolumeFiles) -> None:
    raw = base64.b64encode(png_bytes(mode="L", color=128)).decode()
    for source in (raw, f"data:image/png;base64,{raw}", raw[:20] + "\n" + raw[20:]):
        image = load_image(source, "images.0.image", LIMITS, volume)
        assert image.mode == "RGB" and image.size == (40, 30)


def test_transparency_is_flattened_onto_white(volume: VolumeFiles) -> None:
    raw = base64.b64encode(png_bytes(mode="RGBA", color=(0, 0, 0, 0))).decode()
    image = load_image(raw, "reference_image", LIMITS, volume)
    assert image.getpixel((0, 0)) == (255, 255, 255)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("not base64 at all!", "not a URL, a volume path or valid base64"),
        (base64.b64encode(b"hello, this is text").decode(), "not a readable PNG, JPEG, WebP or BMP image"),
        (base64.b64encode(png_bytes()[:60]).decode(), "damaged"),
        ("data:image/png,rawbytes", "only base64 data URIs"),
        ("file:///etc/passwd", "only http(s) URLs"),
        ("ftp://example.com/a.png", "only http(s) URLs"),
        ("   ", "empty image source"),
    ],
)
def test_bad_sources_name_the_field(volume: VolumeFiles, source: str, message: str) -> None:
    with pytest.raises(JobInputError, match=r"^images\.2\.image: ") as error:
        load_image(source, "images.2.image", LIMITS, volume)
    assert message in str(error.value)


def test_size_cap_applies_before_decoding(volume: VolumeFiles) -> None:
    huge = base64.b64encode(os.urandom(LIMITS.max_bytes + 3000)).decode()
    with pytest.raises(JobInputError, match="byte limit"):
        source_bytes(huge, "reference_image", LIMITS, volume)
    (volume.root / "inputs" / "huge.png").write_bytes(os.urandom(LIMITS.max_bytes + 1))
    with pytest.raises(JobInputError, match="byte limit"):
        source_bytes("inputs/huge.png", "reference_image", LIMITS, volume)


def test_decompression_bomb_is_refused_from_the_header() -> None:
    # 4000x4000 of one colour compresses to a few kB but would decode to 48 MB
    bomb = png_bytes(size=(4000, 4000), color=(0, 0, 0))
    assert len(bomb) < LIMITS.max_bytes
    with pytest.raises(JobInputError, match=r"^images\.0\.image: 4000x4000 is over the 1000000-pixel limit"):
        decode_image(bomb, "images.0.image", LIMITS)


@pytest.mark.parametrize("prefix", ["/runpod-volume/", "/workspace/", "", "./"])
def test_volume_prefixes_map_onto_the_volume_root(volume: VolumeFiles, prefix: str) -> None:
    image = load_image(f"{prefix}inputs/face.png", "reference_image", LIMITS, volume)
    assert image.size == (40, 30)


def test_paths_that_leave_the_volume_are_refused(
    volume: VolumeFiles, tmp_path_factory: pytest.TempPathFactory
) -> None:
    outside = tmp_path_factory.mktemp("outside") / "secret.png"
    outside.write_bytes(png_bytes())
    (volume.root / "inputs" / "link.png").symlink_to(outside)
    for raw in ("../secret.png", "/runpod-volume/../etc/passwd.png", str(outside), "inputs/link.png"):
        with pytest.raises(JobInputError, match="outside the volume"):
            volume.resolve(raw, "dataset_path")
    with pytest.raises(JobInputError, match="no file 'inputs/missing.png'"):
        volume.resolve("inputs/missing.png", "reference_image")
    with pytest.raises(JobInputError, match="no folder"):
        volume.resolve("inputs/face.png", "dataset_path", kind="dir")


def test_extra_roots_such_as_job_data_are_inside(tmp_path: Path) -> None:
    job_data = tmp_path / "elsewhere" / "job_data"
    (job_data / "job-1").mkdir(parents=True)
    files = VolumeFiles(tmp_path / "volume", [job_data])
    assert (
        files.resolve(str(job_data / "job-1"), "dataset_path", kind="dir") == (job_data / "job-1").resolve()
    )


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("192.168.0.10", False),
        ("172.16.5.5", False),
        ("169.254.169.254", False),  # cloud metadata endpoint
        ("100.64.0.1", False),  # carrier-grade NAT
        ("0.0.0.0", False),
        ("::1", False),
        ("fd00::1", False),
        ("::ffff:127.0.0.1", False),
        ("224.0.0.1", False),
        ("8.8.8.8", True),
        ("2606:4700:4700::1111", True),
    ],
)
def test_address_classification(address: str, public: bool) -> None:
    assert is_public(address) is public


def test_private_hosts_are_refused_by_default(server: str) -> None:
    for url in (f"{server}/face.png", server.replace("127.0.0.1", "localhost") + "/face.png"):
        with pytest.raises(JobInputError, match=r"^reference_image: host .* private, loopback or link-local"):
            fetch_url(url, "reference_image", LIMITS)


def test_fetch_when_private_urls_are_allowed(server: str, volume: VolumeFiles) -> None:
    assert fetch_url(f"{server}/face.png", "images.0.image", OPEN) == png_bytes()
    assert load_image(f"{server}/moved", "images.0.image", OPEN, volume).size == (40, 30)
    with pytest.raises(JobInputError, match="HTTP 410"):
        fetch_url(f"{server}/gone", "images.0.image", OPEN)


def test_fetch_stops_at_the_size_cap_with_or_without_content_length(server: str) -> None:
    for path in ("/big", "/big-unannounced"):
        with pytest.raises(JobInputError, match="byte limit"):
            fetch_url(f"{server}{path}", "images.1.image", OPEN)


def test_fetch_times_out(server: str) -> None:
    started = time.monotonic()
    with pytest.raises(JobInputError, match=r"^images\.0\.image: no answer within 1 s"):
        fetch_url(f"{server}/slow", "images.0.image", OPEN)
    assert time.monotonic() - started < 2.5


def test_unresolvable_host(volume: VolumeFiles) -> None:
    with pytest.raises(JobInputError, match="cannot resolve host"):
        fetch_url("http://no-such-host.invalid/a.png", "images.0.image", LIMITS)


@pytest.fixture
def public_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    """`images.example` resolves to a public address, and connections to that address reach 127.0.0.1: a public
    host as the URL checks see it, served by the local test server."""
    real_getaddrinfo, real_connect = socket.getaddrinfo, socket.create_connection

    def getaddrinfo(host: str, port: object, *args: object, **kwargs: object) -> list:
        if host == PUBLIC_HOST:
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (PUBLIC_ADDRESS, port))]
        return real_getaddrinfo(host, port, *args, **kwargs)

    def create_connection(address: tuple[str, int], *args: object, **kwargs: object) -> socket.socket:
        host, port = address
        return real_connect(("127.0.0.1" if host == PUBLIC_ADDRESS else host, port), *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket, "create_connection", create_connection)


def test_every_redirect_hop_is_checked_for_private_hosts(server: str, public_dns: None) -> None:
    public = server.replace("127.0.0.1", PUBLIC_HOST)
    assert fetch_url(f"{public}/face.png", "reference_image", LIMITS) == png_bytes()
    assert fetch_url(f"{public}/to-public", "reference_image", LIMITS) == png_bytes()
    for hop in ("/to-loopback", "/to-localhost", "/to-metadata"):
        with pytest.raises(JobInputError, match=r"^reference_image: host .* private, loopback or link-local"):
            fetch_url(f"{public}{hop}", "reference_image", LIMITS)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://127.0.0.1:99999/x.png", "not a valid URL (Port out of range"),
        ("http://[::1/x.png", "not a valid URL (Invalid IPv6 URL)"),
        ("http://[fe80::zz]/x.png", "not a valid URL"),
        (f"http://{'a' * 70}.com/x.png", "is not a valid host name"),
        ("http://a..b.com/x.png", "is not a valid host name"),
        ("https:///x.png", "expected an http:// or https:// URL"),
    ],
)
def test_urls_that_urllib_cannot_read_are_field_errors(volume: VolumeFiles, url: str, message: str) -> None:
    with pytest.raises(JobInputError, match=r"^images\.0\.image: ") as caught:
        source_bytes(url, "images.0.image", LIMITS, volume)
    assert message in str(caught.value)
    assert len(str(caught.value)) < 300


def test_a_non_ascii_url_path_is_sent_percent_encoded(server: str) -> None:
    assert fetch_url(f"{server}/été.png", "images.0.image", OPEN) == png_bytes()


@pytest.mark.parametrize("source", ["/etc/passwd", "/etc/hostname", "/proc/self/environ", "/root"])
def test_an_absolute_path_outside_the_volume_is_called_so(volume: VolumeFiles, source: str) -> None:
    with pytest.raises(JobInputError) as caught:
        source_bytes(source, "reference_image", LIMITS, volume)
    assert str(caught.value).startswith("reference_image: outside the volume")


def test_base64_that_starts_with_a_slash_is_still_base64(volume: VolumeFiles) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(buffer, format="JPEG")
    encoded = base64.b64encode(buffer.getvalue()).decode()
    assert encoded.startswith("/9j/")
    assert load_image(encoded, "reference_image", LIMITS, volume).size == (8, 8)


def test_path_errors_never_show_the_server_path(volume: VolumeFiles) -> None:
    root = str(volume.root)
    for source in (
        "a" * 300 + ".png",
        "inputs/" + "b" * 256 + "/x.png",
        "../../etc/passwd.png",
        "/etc/x.png",
    ):
        with pytest.raises(JobInputError) as caught:
            source_bytes(source, "reference_image", LIMITS, volume)
        message = str(caught.value)
        assert message.startswith("reference_image: ") and root not in message and len(message) < 300
    (volume.root / "inputs" / "loop.png").symlink_to(volume.root / "inputs" / "loop.png")
    with pytest.raises(JobInputError, match="^reference_image: ") as caught:
        source_bytes("inputs/loop.png", "reference_image", LIMITS, volume)
    assert root not in str(caught.value)


def test_undecodable_bytes_do_not_name_the_buffer(volume: VolumeFiles) -> None:
    with pytest.raises(JobInputError) as caught:
        decode_image(b"\x89PNG not really", "images.0.image", LIMITS)
    assert "BytesIO" not in str(caught.value) and " at 0x" not in str(caught.value)


def test_stored_paths_are_checked_like_a_callers(
    volume: VolumeFiles, tmp_path_factory: pytest.TempPathFactory
) -> None:
    outside = tmp_path_factory.mktemp("elsewhere") / "lora.safetensors"
    outside.write_bytes(b"x")
    with pytest.raises(JobInputError, match=r"^loras\.0\.job_id: the LoRA of job 'j' is outside the volume$"):
        volume.checked(
            volume.root / "job_data" / ".." / ".." / outside.parent.name / outside.name,
            "loras.0.job_id",
            "the LoRA of job 'j'",
        )
    with pytest.raises(JobInputError, match="is gone from the volume"):
        volume.checked(volume.root / "inputs" / "nothing.png", "loras.0.job_id", "the LoRA of job 'j'")
    assert (
        volume.checked(volume.root / "inputs" / "face.png", "f", "x") == volume.root / "inputs" / "face.png"
    )
