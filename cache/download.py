"""One file over HTTP into a staging folder, resumable across holders, verified before it takes its final name.

While downloading, `<file>.part` grows and `<file>.part.crc` records a CRC-32 per block (at most 512 blocks per
file, 64 KiB to 8 MiB each) once the block is written. A holder that takes over a staging folder re-reads the part
file block by block, keeps the bytes whose CRC matches (a torn write on a crashed host does not), and continues
with an HTTP Range request from there; the sha256 of the whole file, fed with the kept bytes first, is checked
against the source's before the file is renamed to its name. Writes are positional and every holder writes the
same bytes at the same offsets, so a paused holder that wakes up and writes one more chunk before it notices the
takeover writes what is already there.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import re
import struct
import threading
import zlib
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from .errors import SourceError, VerificationError
from .files import Listing, RemoteFile, has_size
from .remote import Remote, safe_url

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
_BLOCK_MIN = 64 * 1024
_BLOCK_MAX = 8 * 1024 * 1024
_ENTRY = struct.Struct("<BI")  # written mark, CRC-32
_ATTEMPTS = 3  # reconnections after a dropped connection, each resuming where the last one stopped
_PARALLEL = 4  # files of one model fetched at once (one connection rarely fills a data center's link)


@dataclass(frozen=True)
class Fetched:
    size: int
    sha256: str
    fetched_bytes: int  # bytes this holder received from the source
    resumed_from: int  # bytes kept from an earlier holder


def fetch_listed(
    remote: Remote,
    dest: Path,
    listing: Listing,
    urls: dict[str, str],
    *,
    what: str,
    check: Callable[[], None],
    advance: Callable[[int], None],
    token_for: str = "",
    exact_size: bool = True,
) -> dict[str, RemoteFile]:
    """Download every listed file into `dest` (several at once), keeping those an earlier holder finished; each
    file's size and hash as delivered. Small files are checked against their git blob id."""
    files = dict(listing.files)
    todo = []
    for rel, info in listing.files.items():
        target = dest / rel
        if has_size(target, info.size) or (not exact_size and target.is_file()):
            # finished (and verified before it got its name) by an earlier holder
            files[rel] = RemoteFile(target.stat().st_size, info.sha256, info.git_oid)
        else:
            todo.append(rel)
    failed = threading.Event()

    def stop_on_failure() -> None:
        if failed.is_set():
            raise SourceError(f"{what}: stopped, another file failed")
        check()

    def one(rel: str) -> RemoteFile:
        info = listing.files[rel]
        fetched = download(
            remote,
            urls[rel],
            dest / rel,
            what=f"{what} ({rel})",
            size=info.size,
            sha256=info.sha256,
            exact_size=exact_size,
            token_for=token_for,
            check=stop_on_failure,
            advance=advance,
        )
        if fetched.resumed_from:
            log.info(
                "%s: %s: %d bytes kept from an earlier holder, %d fetched",
                what,
                rel,
                fetched.resumed_from,
                fetched.fetched_bytes,
            )
        if info.git_oid and not info.sha256 and _git_oid(dest / rel) != info.git_oid:
            (dest / rel).unlink()
            raise VerificationError(
                f"{what}: {rel} differs from its git blob {info.git_oid}; it was not published"
            )
        return RemoteFile(fetched.size, fetched.sha256, info.git_oid)

    if not todo:
        return files
    with ThreadPoolExecutor(min(_PARALLEL, len(todo)), thread_name_prefix="download") as pool:
        futures = {pool.submit(one, rel): rel for rel in todo}
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        if any(f.exception() for f in done):
            failed.set()
        wait(futures)
    errors = [f.exception() for f in futures if f.exception()]
    # the first real failure, not the "stopped" of the files that were cut short because of it
    real = [e for e in errors if "another file failed" not in str(e)]
    if errors:
        raise (real or errors)[0]
    for future, rel in futures.items():
        files[rel] = future.result()
    return files


def _git_oid(path: Path) -> str:
    data = path.read_bytes()
    return hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()


def block_size(size: int) -> int:
    """The CRC block of a file of `size` bytes; every holder derives the same one."""
    return max(_BLOCK_MIN, min(_BLOCK_MAX, size // 512)) // _BLOCK_MIN * _BLOCK_MIN


def download(
    remote: Remote,
    url: str,
    dest: Path,
    *,
    what: str,
    size: int | None,
    sha256: str | None,
    exact_size: bool = True,
    token_for: str = "",
    check: Callable[[], None] = lambda: None,
    advance: Callable[[int], None] = lambda n: None,
) -> Fetched:
    """Fetch `url` to `dest`, resuming `<dest>.part`; `check` raises to stop (a lost lease), `advance` counts."""
    part = dest.with_name(dest.name + ".part")
    state_path = dest.with_name(dest.name + ".part.json")
    crc_path = dest.with_name(dest.name + ".part.crc")
    identity = sha256 or safe_url(url)
    dest.parent.mkdir(parents=True, exist_ok=True)
    state = _read_state(state_path, identity)
    hasher = _Hasher()
    try:
        kept = _keep_verified(part, crc_path, state, hasher) if state else 0
        if kept:
            log.info(
                "%s: keeping %d bytes an earlier holder fetched; resuming with a Range request", what, kept
            )
        pos = _Position(kept)
        total = state["size"] if state else None
        fd = os.open(part, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            attempts = 0
            while total is None or pos.offset < total:
                if attempts == _ATTEMPTS:
                    raise SourceError(f"{what}: the connection kept dropping ({pos.offset} of {total} bytes)")
                attempts += 1
                check()
                etag = (state or {}).get("etag")
                response = remote.open(url, what, start=pos.offset, if_range=etag, token_for=token_for)
                with response:
                    total = _start(response, pos, total, hasher, fd, what)
                    if pos.offset == 0:
                        total = total if total is not None else size
                        if total is None:
                            raise SourceError(f"{what}: {safe_url(url)} sent no length")
                        if exact_size and size is not None and total != size:
                            raise VerificationError(
                                f"{what}: {dest.name} is {total} bytes at the source, the listing says {size}"
                            )
                        state = {"id": identity, "size": total, "etag": response.headers.get("ETag")}
                        crc_path.unlink(missing_ok=True)
                        _write_state(state_path, state)
                    try:
                        _stream(response, fd, pos, total, hasher, crc_path, check, advance)
                    except _Interrupted:
                        log.warning(
                            "%s: connection dropped at %d of %d bytes; resuming", what, pos.offset, total
                        )
            os.fsync(fd)
        finally:
            os.close(fd)
        actual = hasher.hexdigest()
        if sha256 and actual != sha256:
            for leftover in (part, state_path, crc_path):
                leftover.unlink(missing_ok=True)
            raise VerificationError(
                f"{what}: {dest.name} has sha256 {actual} but the source lists {sha256}; it was not published"
            )
        os.replace(part, dest)
        state_path.unlink(missing_ok=True)
        crc_path.unlink(missing_ok=True)
        return Fetched(total, actual, pos.received, kept)
    finally:
        hasher.close()


@dataclass
class _Position:
    """How far the part file is written and hashed; updated only after a whole chunk is processed."""

    offset: int
    crc: int = 0  # CRC-32 of the current block's bytes so far
    received: int = 0


class _Interrupted(Exception):
    """The connection dropped mid-file; `_Position` says where to resume."""


def _start(response, pos: _Position, total: int | None, hasher: _Hasher, fd: int, what: str) -> int | None:
    """The file's length; a response that does not continue at `pos.offset` restarts the part from zero."""
    if pos.offset and response.status_code == 206:
        match = re.fullmatch(r"bytes (\d+)-\d+/(\d+)", response.headers.get("Content-Range", ""))
        if match and int(match[1]) == pos.offset and (total is None or int(match[2]) == total):
            return int(match[2])
    if pos.offset:
        log.info(
            "%s: the source did not resume at byte %d; fetching the file from its start", what, pos.offset
        )
        hasher.reset()
        os.ftruncate(fd, 0)
        pos.offset, pos.crc = 0, 0
        total = None
    length = response.headers.get("Content-Length")
    return int(length) if length and response.status_code == 200 else total


def _stream(response, fd, pos: _Position, total, hasher, crc_path, check, advance) -> None:
    block = block_size(total)
    crc_fd = os.open(crc_path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        while pos.offset < total:
            try:
                # read1: what has arrived, up to a chunk; a full-chunk read would hold a slow link's bytes in memory
                chunk = response.raw.read1(min(_CHUNK, total - pos.offset))
            except Exception as err:  # urllib3's read errors: a dropped or timed-out connection
                raise _Interrupted() from err
            if not chunk:
                raise _Interrupted()
            check()
            view = memoryview(chunk)
            written = 0
            while written < len(view):
                written += os.pwrite(fd, view[written:], pos.offset + written)
            hasher.update(chunk)
            offset, crc = pos.offset, pos.crc
            while view:
                take = min(len(view), block - offset % block)
                crc = zlib.crc32(view[:take], crc)
                offset += take
                view = view[take:]
                if offset % block == 0 or offset == total:
                    os.pwrite(crc_fd, _ENTRY.pack(1, crc), (offset - 1) // block * _ENTRY.size)
                    crc = 0
            pos.offset, pos.crc = offset, crc
            pos.received += len(chunk)
            advance(len(chunk))
    finally:
        os.close(crc_fd)


def _keep_verified(part: Path, crc_path: Path, state: dict, hasher: _Hasher) -> int:
    """Bytes of `part` whose blocks match their recorded CRC, fed to `hasher`; the part is cut to them."""
    block = block_size(state["size"])
    try:
        entries = crc_path.read_bytes()
        size = part.stat().st_size
    except FileNotFoundError:
        return 0
    kept = 0
    with part.open("r+b") as f:
        for index in range(len(entries) // _ENTRY.size):
            mark, expected = _ENTRY.unpack_from(entries, index * _ENTRY.size)
            length = min(block, state["size"] - kept)
            if mark != 1 or kept + length > size or length <= 0:
                break
            data = f.read(length)
            if zlib.crc32(data) != expected:
                break
            hasher.update(data)
            kept += length
        f.truncate(kept)
    return kept


def _read_state(path: Path, identity: str) -> dict | None:
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(state, dict) or state.get("id") != identity or not isinstance(state.get("size"), int):
        return None
    return state


def _write_state(path: Path, state: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, path)


def discard_interrupted_writes(folder: Path) -> None:
    """Remove the half-written state files under `folder` that a holder stopped between writing and renaming
    left (a paused holder's, in a folder taken over): only the renamed state file is ever read."""
    for leftover in folder.rglob(".*.part.json.*.tmp"):
        leftover.unlink(missing_ok=True)


class _Hasher:
    """sha256 in a thread of its own (hashlib releases the GIL), so hashing overlaps the network."""

    _STOP = object()

    def __init__(self) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=32)
        self._digest = hashlib.sha256()
        self._thread = threading.Thread(target=self._run, name="sha256", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._queue.get()) is not self._STOP:
            if item is None:
                self._digest = hashlib.sha256()
            else:
                self._digest.update(item)

    def update(self, data: bytes) -> None:
        self._queue.put(data)

    def reset(self) -> None:
        self._queue.put(None)

    def hexdigest(self) -> str:
        self.close()
        return self._digest.hexdigest()

    def close(self) -> None:
        if self._thread.is_alive():
            self._queue.put(self._STOP)
            self._thread.join()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(8 * 1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def discard_partial(dest: Path) -> None:
    for suffix in (".part", ".part.json", ".part.crc"):
        with suppress(OSError):
            dest.with_name(dest.name + suffix).unlink()
