"""The job store: atomic writes, traversal refused, result.json last, cancelled runs leave nothing."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import pytest

from worker.job_folders import RESULT_FILE, JobStore, UnsafePathError


def test_write_describes_the_file(tmp_path: Path) -> None:
    folder = JobStore(tmp_path).job("job-1")
    folder.begin()
    entry = folder.write_bytes("out/a.bin", b"hello", kind="blob", width=3)
    assert Path(entry.path) == tmp_path / "job-1" / "out" / "a.bin"
    assert entry.relpath == "job-1/out/a.bin"
    assert entry.bytes == 5
    assert entry.sha256 == hashlib.sha256(b"hello").hexdigest()
    assert entry.model_dump()["width"] == 3


def test_no_temp_files_remain_and_failed_writer_leaves_nothing(tmp_path: Path) -> None:
    folder = JobStore(tmp_path).job("job-1")
    folder.begin()
    folder.write_bytes("a.txt", b"1", kind="text")

    def broken(temp: Path) -> None:
        temp.write_bytes(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        folder.write_with("b.txt", broken, kind="text")
    assert sorted(p.name for p in (tmp_path / "job-1").iterdir()) == ["a.txt"]


def test_reader_never_sees_a_partial_file(tmp_path: Path) -> None:
    """A reader polling the target while it is rewritten sees either the old or the new content, whole."""
    folder = JobStore(tmp_path).job("job-1")
    folder.begin()
    old, new = b"a" * 4_000_000, b"b" * 4_000_000
    folder.write_bytes("big.bin", old, kind="blob")
    target = tmp_path / "job-1" / "big.bin"
    seen: set[bytes] = set()
    done = threading.Event()

    def reader() -> None:
        while not done.is_set():
            data = target.read_bytes()
            seen.add(data[:1] + data[-1:] + len(data).to_bytes(4, "big"))

    thread = threading.Thread(target=reader)
    thread.start()

    def slow_writer(temp: Path) -> None:
        with temp.open("wb") as handle:
            for offset in range(0, len(new), 100_000):
                handle.write(new[offset : offset + 100_000])

    for _ in range(5):
        folder.write_with("big.bin", slow_writer, kind="blob")
    done.set()
    thread.join()
    assert seen <= {b"aa" + len(old).to_bytes(4, "big"), b"bb" + len(new).to_bytes(4, "big")}


@pytest.mark.parametrize(
    "name", ["../x", "/etc/passwd", "a/../../x", "a/./b", "", "a\\..\\b", "a//b", "x\x00y"]
)
def test_unsafe_file_names_are_refused(tmp_path: Path, name: str) -> None:
    folder = JobStore(tmp_path).job("job-1")
    with pytest.raises(UnsafePathError):
        folder.write_bytes(name, b"x", kind="blob")
    assert not (tmp_path.parent / "x").exists()


def test_symlink_escape_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    folder = JobStore(tmp_path / "data").job("job-1")
    folder.begin()
    (folder.path / "link").symlink_to(outside)
    with pytest.raises(UnsafePathError):
        folder.write_bytes("link/x", b"x", kind="blob")
    assert not (outside / "x").exists()


@pytest.mark.parametrize(
    "job_id", ["..", ".", "../up", "a/b", "", "-x", "x" * 129, "a..b", "/abs", "x\n", "x\r", "x\n\n", None, 7]
)
def test_unsafe_job_ids_are_refused(tmp_path: Path, job_id: str) -> None:
    with pytest.raises(UnsafePathError, match="^id: "):
        JobStore(tmp_path).job(job_id)


def test_result_is_written_last_and_withdrawn_on_rerun(tmp_path: Path) -> None:
    store = JobStore(tmp_path)
    folder = store.job("job-1")
    folder.begin()
    folder.write_bytes("a.txt", b"1", kind="text")
    folder.write_result({"job_id": "job-1", "outputs": ["a.txt"]})
    result_path = tmp_path / "job-1" / RESULT_FILE
    assert result_path.stat().st_mtime_ns >= (tmp_path / "job-1" / "a.txt").stat().st_mtime_ns
    assert store.read_result("job-1") == {"job_id": "job-1", "outputs": ["a.txt"]}

    rerun = store.job("job-1")
    rerun.begin()
    assert store.read_result("job-1") is None
    assert (tmp_path / "job-1" / "a.txt").exists()


def test_discard_removes_only_this_runs_files(tmp_path: Path) -> None:
    store = JobStore(tmp_path)
    folder = store.job("job-1")
    folder.begin()
    (folder.path / "uploaded.png").write_bytes(b"input from the gateway")
    folder.write_bytes("out/0.png", b"partial", kind="image")
    folder.discard()
    assert sorted(p.name for p in folder.path.iterdir()) == ["uploaded.png"]

    empty = store.job("job-2")
    empty.begin()
    empty.write_bytes("0.png", b"partial", kind="image")
    empty.discard()
    assert not (tmp_path / "job-2").exists()


def test_result_json_is_valid_json(tmp_path: Path) -> None:
    folder = JobStore(tmp_path).job("job-1")
    folder.begin()
    folder.write_result({"b": 1, "a": [1, 2]})
    assert json.loads((folder.path / RESULT_FILE).read_text()) == {"a": [1, 2], "b": 1}


def test_a_refused_job_id_is_quoted_only_in_part(tmp_path: Path) -> None:
    with pytest.raises(UnsafePathError) as caught:
        JobStore(tmp_path).job("a" * 2_000_000)
    assert len(str(caught.value)) < 300
    assert "(2000000 characters)" in str(caught.value)


def test_a_job_folder_that_is_a_link_is_not_written_through(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / RESULT_FILE).write_text("{}")
    store = JobStore(tmp_path / "data")
    store.root.mkdir()
    (store.root / "job-link").symlink_to(outside)
    folder = store.job("job-link")
    with pytest.raises(UnsafePathError, match=r"^id: .*symbolic link"):
        folder.begin()
    with pytest.raises(UnsafePathError, match=r"^id: .*symbolic link"):
        folder.write_bytes("a.txt", b"x", kind="text")
    assert sorted(p.name for p in outside.iterdir()) == [RESULT_FILE]
