"""Images a job hands us, fetched and decoded safely: URLs, base64, and paths on the network volume.

Every helper takes the job field it reads (`"images.3.image"`) and raises `JobInputError("<field>: <reason>")`, so
callers pass errors straight back to the user. `InputLimits.from_settings` carries the operator's bounds
(`MAX_INLINE_IMAGES`, `MAX_IMAGE_BYTES`, `URL_FETCH_TIMEOUT_S`, `ALLOW_PRIVATE_URLS`).

An image source string is read as:
- `http://` or `https://` → fetched (timeout, size cap; private, loopback and link-local hosts refused unless
  allowed; redirects re-checked hop by hop);
- `data:<mime>;base64,...` → decoded;
- a string containing a "." (never part of base64) or starting with a volume prefix → a path on the volume;
- anything else → raw base64.

Volume paths: `/runpod-volume/...` (serverless mount) and `/workspace/...` (pod mount) are mapped onto this worker's
volume root, so a path written by a pod reads the same here; relative paths are relative to the volume root; after
symlinks are resolved a path must stay inside the volume (or the job_data folder).
"""

from __future__ import annotations

import base64
import binascii
import http.client
import io
import ipaddress
import socket
import ssl
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urljoin, urlsplit

from cache.addresses import is_public_address
from worker.schemas import JobInputError
from worker.schemas.common import quoted

if TYPE_CHECKING:
    from PIL.Image import Image

    from worker.config import Settings

VOLUME_PREFIXES = ("/runpod-volume", "/workspace")
IMAGE_FORMATS = frozenset({"PNG", "JPEG", "WEBP", "BMP"})
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp"})
MAX_REDIRECTS = 3
MAX_NAME_BYTES = 255  # a longer file or folder name makes the file system raise ENAMETOOLONG
OUTSIDE = "outside the volume"
VOLUME_PATHS = "(give a path under /runpod-volume/ or /workspace/, or one relative to the volume)"
_CHUNK = 64 * 1024
_URL_SAFE = "/?&=%:@!$'()*+,;~"


@dataclass(frozen=True)
class InputLimits:
    """Bounds on what a job may hand us."""

    max_images: int = 64
    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 40_000_000  # ~6300x6300; PIL's own bomb guard only errors at twice its 89 MP default
    fetch_timeout_s: float = 20.0
    allow_private_urls: bool = False

    @classmethod
    def from_settings(cls, settings: Settings) -> InputLimits:
        return cls(
            max_images=settings.max_inline_images,
            max_bytes=settings.max_image_bytes,
            fetch_timeout_s=settings.url_fetch_timeout_s,
            allow_private_urls=settings.allow_private_urls,
        )

    def check_count(self, count: int, field: str) -> None:
        if count > self.max_images:
            raise JobInputError(
                field, f"at most {self.max_images} inline images (MAX_INLINE_IMAGES), got {count}"
            )


class VolumeFiles:
    """Resolves user-given paths onto the volume and refuses any that would leave it."""

    def __init__(self, root: Path, extra_roots: Sequence[Path] = ()) -> None:
        self.root = Path(root).resolve()
        self.roots = [self.root, *(Path(extra).resolve() for extra in extra_roots)]

    def resolve(self, raw: str, field: str, *, kind: str = "file") -> Path:
        """The existing file (kind "file") or folder (kind "dir") that `raw` names inside the volume."""
        if not raw or "\x00" in raw or "\\" in raw:
            raise JobInputError(field, "not a valid path")
        path = PurePosixPath(raw)
        if any(len(part.encode()) > MAX_NAME_BYTES for part in path.parts):
            raise JobInputError(field, f"a file or folder name in the path is over {MAX_NAME_BYTES} bytes")
        for prefix in VOLUME_PREFIXES:
            if path == PurePosixPath(prefix) or path.is_relative_to(prefix):
                path = path.relative_to(prefix)
                break
        candidate = Path(path) if path.is_absolute() else self.root / path
        try:
            target = candidate.resolve()
        except (OSError, RuntimeError):  # a symlink loop, a path too long for the file system
            raise JobInputError(field, "not a usable path on the volume") from None
        if not any(target.is_relative_to(root) for root in self.roots):
            # the caller's own spelling is shown, unless it is an absolute path of this server
            shown = "" if path.is_absolute() else f"{quoted(raw)} is "
            raise JobInputError(field, f"{shown}{OUTSIDE} {VOLUME_PATHS}")
        if not _exists(target, kind):
            raise JobInputError(field, f"no {_KINDS[kind]} {quoted(raw)} on the volume")
        return target

    def checked(self, path: Path, field: str, what: str, *, kind: str = "file") -> Path:
        """`path`, built by the worker from stored data (a relpath in a finished job's result.json), under the rule
        a caller's path meets: inside the volume once links are resolved. Errors name it by `what`, never by the
        server path."""
        try:
            target = path.resolve()
        except (OSError, RuntimeError):
            raise JobInputError(field, f"{what} is not a usable path") from None
        if not any(target.is_relative_to(root) for root in self.roots):
            raise JobInputError(field, f"{what} is {OUTSIDE}")
        if not _exists(target, kind):
            raise JobInputError(field, f"{what} is gone from the volume")
        return target


_KINDS = {"file": "file", "dir": "folder"}


def _exists(target: Path, kind: str) -> bool:
    return target.is_dir() if kind == "dir" else target.is_file()


def _endpoint(url: str, field: str) -> tuple[str, str, int]:
    """(scheme, host, port) of an http(s) URL, or a field error for what urllib or the IDNA codec would raise on."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:  # a port out of range, a broken [IPv6] host
        raise JobInputError(field, f"not a valid URL ({error})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise JobInputError(field, f"expected an http:// or https:// URL, got {quoted(url)}")
    host = parts.hostname
    try:
        ipaddress.ip_address(host)
    except ValueError:
        try:
            host.encode("idna")  # one label over 63 characters, or an empty one, fails here
        except UnicodeError:
            raise JobInputError(field, f"host {quoted(host)} is not a valid host name") from None
    return parts.scheme, host, port or (443 if parts.scheme == "https" else 80)


def _vetted_address(host: str, port: int, field: str, limits: InputLimits) -> str:
    """Resolve `host` once and pick an address we may connect to; the connection then uses that address, so a DNS
    answer that changes between check and use (rebinding) cannot reach a private host."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise JobInputError(field, f"cannot resolve host {quoted(host)}: {error.strerror}") from None
    addresses = [str(info[4][0]) for info in infos]
    if limits.allow_private_urls:
        return addresses[0]
    if not all(is_public_address(address) for address in addresses):
        raise JobInputError(
            field,
            f"host {quoted(host)} resolves to a private, loopback or link-local address; refused "
            "(ALLOW_PRIVATE_URLS=true allows it)",
        )
    return addresses[0]


def check_public_endpoint(url: str, field: str, allow_private: bool) -> None:
    """Refuse an http(s) endpoint a job names (e.g. an upload target) on a private host, unless allowed."""
    _, host, port = _endpoint(url, field)
    _vetted_address(host, port, field, InputLimits(allow_private_urls=allow_private))


class _PinnedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self._address = address

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        # certificate and SNI still checked against the host name, not the pinned address
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


def fetch_url(url: str, field: str, limits: InputLimits) -> bytes:
    """GET `url` with a deadline of `fetch_timeout_s` for the whole transfer and at most `max_bytes` of body."""
    deadline = time.monotonic() + limits.fetch_timeout_s
    for _ in range(MAX_REDIRECTS + 1):
        # every hop is checked as the first: a public URL may redirect to a private host
        scheme, host, port = _endpoint(url, field)
        address = _vetted_address(host, port, field, limits)
        connection_cls = _PinnedHTTPSConnection if scheme == "https" else _PinnedHTTPConnection
        connection = connection_cls(host, port, address, timeout=limits.fetch_timeout_s)
        parts = urlsplit(url)
        # http.client sends the request line as ASCII: percent-encode anything else, keep existing escapes
        target = quote((parts.path or "/") + (f"?{parts.query}" if parts.query else ""), safe=_URL_SAFE)
        try:
            connection.request("GET", target, headers={"User-Agent": "gpu-worker", "Accept": "image/*"})
            response = connection.getresponse()
            if response.status in (301, 302, 303, 307, 308) and response.getheader("Location"):
                url = urljoin(url, response.getheader("Location", ""))
                continue
            if response.status != 200:
                raise JobInputError(field, f"the server answered HTTP {response.status}")
            return _read_body(response, field, limits, deadline)
        except (OSError, http.client.HTTPException) as error:
            if isinstance(error, TimeoutError) or "timed out" in str(error):
                raise JobInputError(field, f"no answer within {limits.fetch_timeout_s:g} s") from None
            raise JobInputError(field, f"fetch failed: {str(error)[:200]}") from None
        finally:
            connection.close()
    raise JobInputError(field, f"more than {MAX_REDIRECTS} redirects")


def _read_body(response: http.client.HTTPResponse, field: str, limits: InputLimits, deadline: float) -> bytes:
    declared = response.getheader("Content-Length")
    if declared and declared.isdigit() and int(declared) > limits.max_bytes:
        raise JobInputError(field, f"{int(declared)} bytes is over the {limits.max_bytes}-byte limit")
    body = bytearray()
    while chunk := response.read(_CHUNK):
        body += chunk
        if len(body) > limits.max_bytes:
            raise JobInputError(field, f"over the {limits.max_bytes}-byte limit (MAX_IMAGE_BYTES)")
        if time.monotonic() > deadline:
            raise JobInputError(field, f"no complete answer within {limits.fetch_timeout_s:g} s")
    return bytes(body)


def decode_base64(text: str, field: str, limits: InputLimits) -> bytes:
    """Strict base64 (plain or a `data:` URI), bounded before decoding so a huge string costs nothing."""
    payload = text.partition(",")[2] if text.startswith("data:") else text
    if text.startswith("data:") and ";base64" not in text.partition(",")[0]:
        raise JobInputError(field, "only base64 data URIs are accepted")
    payload = "".join(payload.split())
    if len(payload) * 3 // 4 > limits.max_bytes:
        raise JobInputError(field, f"over the {limits.max_bytes}-byte limit (MAX_IMAGE_BYTES)")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise JobInputError(field, "not a URL, a volume path or valid base64") from None


def read_file(path: Path, field: str, limits: InputLimits) -> bytes:
    try:
        size = path.stat().st_size
        if size > limits.max_bytes:
            raise JobInputError(
                field, f"{size} bytes is over the {limits.max_bytes}-byte limit (MAX_IMAGE_BYTES)"
            )
        return path.read_bytes()
    except OSError as error:
        raise JobInputError(field, f"cannot read the file ({error.strerror})") from None


def source_bytes(source: str, field: str, limits: InputLimits, volume: VolumeFiles) -> bytes:
    """The raw bytes an image source string names (see the module docstring for how it is read)."""
    if not isinstance(source, str) or not source.strip():
        raise JobInputError(field, "empty image source")
    source = source.strip()
    scheme = source.partition(":")[0].lower()
    if scheme in ("http", "https"):
        return fetch_url(source, field, limits)
    if scheme == "data":
        return decode_base64(source, field, limits)
    if "://" in source[:16]:
        raise JobInputError(field, "only http(s) URLs, data URIs, base64 and volume paths are accepted")
    if "." in source or source.startswith(VOLUME_PREFIXES) or _absolute_path(source):
        # base64 may start with "/" (every JPEG's does), so an absolute path is told apart by not decoding
        return read_file(volume.resolve(source, field), field, limits)
    return decode_base64(source, field, limits)


def _absolute_path(text: str) -> bool:
    """Whether `text` starting with "/" is a path: base64 may start so too (every JPEG's does), a path is short and
    does not decode."""
    if not text.startswith("/") or len(text) > 4096:
        return False
    try:
        base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        return True
    return False


def decode_image(data: bytes, field: str, limits: InputLimits) -> Image:
    """Decode to an RGB image: known formats only, pixel count checked from the header before any pixel is
    decoded, EXIF rotation applied, transparency flattened onto white."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=sorted(IMAGE_FORMATS))
            width, height = image.size
            if width * height > limits.max_pixels:
                raise JobInputError(
                    field,
                    f"{width}x{height} is over the {limits.max_pixels}-pixel limit (decompression bomb guard)",
                )
            image.load()
            return _to_rgb(ImageOps.exif_transpose(image))
    except JobInputError:
        raise
    except UnidentifiedImageError:  # its message only names the in-memory buffer
        raise JobInputError(field, "not a readable PNG, JPEG, WebP or BMP image") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise JobInputError(field, f"not a readable PNG, JPEG, WebP or BMP image ({error})") from None
    except (OSError, SyntaxError, ValueError, TypeError, KeyError) as error:  # what broken image data raises
        raise JobInputError(field, f"the image is damaged ({str(error)[:200]})") from None


def _to_rgb(image: Any) -> Image:
    from PIL import Image

    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def load_image(source: str, field: str, limits: InputLimits, volume: VolumeFiles) -> Image:
    """An RGB image from a URL, base64 or volume path, with every bound applied."""
    return decode_image(source_bytes(source, field, limits, volume), field, limits)
