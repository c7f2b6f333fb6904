"""The native HeartMuLa implementation, on its production (static) decode, reproduces the golden fixtures
of the official heartlib, and the conformance runner (tests/heartmula_reference) fails loudly when the data
or the case kinds do not match."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "heartmula"


def run_conformance(fixtures: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # One thread: the tiny models' ops are too small to gain from a second one, which only adds waiting.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "tests.heartmula_reference.conformance", str(fixtures), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_every_fixture_case_passes() -> None:
    cases = json.loads((FIXTURES / "cases.json").read_text())["cases"]
    result = run_conformance(FIXTURES)
    lines = result.stdout.splitlines()
    assert result.returncode == 0, result.stdout + result.stderr
    assert lines[:-1] == [f"PASS {case['id']}" for case in cases]
    assert lines[-1] == f"{len(cases)} passed, 0 failed"


def test_corrupted_case_and_unknown_kind_fail(tmp_path: Path) -> None:
    fixtures = tmp_path / "fixtures"
    shutil.copytree(FIXTURES, fixtures)
    meta = json.loads((fixtures / "cases.json").read_text())
    by_id = {case["id"]: case for case in meta["cases"]}
    # A quick subset: one intact case, one with a corrupted reference tensor, one of an unknown kind.
    intact, corrupted = dict(by_id["pre_b_cfg1.0"]), dict(by_id["tf_b_cfg1.0"])
    unknown = {**by_id["rvq_a"], "id": "from_the_future", "kind": "codec_encode"}
    skipped = by_id["detok_long_T400"]  # listed but not asked for: never run
    meta["cases"] = [intact, corrupted, unknown, skipped]
    (fixtures / "cases.json").write_text(json.dumps(meta))

    path = fixtures / corrupted["file"]
    tensors = load_file(str(path))
    tensors["c0_logits_raw"][1, 0, 7] += 0.01
    save_file(tensors, str(path))

    chosen = [case["id"] for case in (intact, corrupted, unknown)]
    # The eager decode, the fallback, is held to the same reference.
    result = run_conformance(fixtures, "--decode", "eager", *(f"--case={case_id}" for case_id in chosen))
    lines = result.stdout.splitlines()
    assert result.returncode != 0
    assert lines[0] == "PASS pre_b_cfg1.0"
    assert lines[1].startswith("FAIL tf_b_cfg1.0: c0_logits_raw max |diff| 0.01 at (1, 0, 7)")
    assert lines[2] == "FAIL from_the_future: unknown case kind 'codec_encode'"
    assert lines[3:] == ["1 passed, 2 failed"]


def test_fixture_copy_matches_its_checksums() -> None:
    meta = json.loads((FIXTURES / "cases.json").read_text())
    ckpt = FIXTURES / meta["checkpoint_dir"]
    for name, digest in meta["checkpoint_sha256"].items():
        assert hashlib.sha256((ckpt / name).read_bytes()).hexdigest() == digest, name
