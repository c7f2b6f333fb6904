"""Secrets a job carries never reach the logs: `python handler.py --test_input` at LOG_LEVEL=DEBUG and
RUNPOD_DEBUG_LEVEL=DEBUG, where the RunPod SDK prints the whole job, as a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from worker.logs import REDACTED, redact

ROOT = Path(__file__).resolve().parents[1]
SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY"


def test_the_sdk_debug_lines_carry_no_s3_secret(tmp_path: Path) -> None:
    job = {
        "input": {"type": "image", "prompt": "a fox", "width": 64, "height": 64, "steps": 1},
        "s3Config": {
            "accessId": "AKIDEXAMPLE",
            "accessSecret": SECRET,
            "bucketName": "outputs",
            "endpointUrl": "http://127.0.0.1:9/",  # refused (a private host): the job stops before any model loads
        },
    }
    env = {
        **{
            k: v
            for k, v in os.environ.items()
            if k not in ("VOLUME_ROOT", "JOB_DATA_DIR", "RUNPOD_ENDPOINT_ID")
        },
        "VOLUME_ROOT": str(tmp_path / "volume"),
        "MODEL_PROFILE": "tiny",
        "WORKER_JOBS": "image",
        "WARM_ON_START": "false",
        "LOG_LEVEL": "DEBUG",
        "RUNPOD_DEBUG_LEVEL": "DEBUG",
        "PYTHONUNBUFFERED": "1",
    }
    (tmp_path / "volume").mkdir()
    done = subprocess.run(
        [sys.executable, str(ROOT / "handler.py"), "--test_input", json.dumps(job)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    output = done.stdout + done.stderr
    assert "Retrieved local job" in output, output  # the SDK's line that printed the secret
    assert "s3Config.endpointUrl: host '127.0.0.1'" in output  # and the job ran to its refusal
    assert SECRET not in output
    assert f"'accessSecret': '{REDACTED}'" in output


def test_redact_covers_repr_and_json_and_leaves_the_rest() -> None:
    job = {
        "s3Config": {"accessSecret": "a'b\"c", "accessId": "AKID"},
        "input": {"prompt": "the token is here"},
    }
    for text in (str(job), json.dumps(job), json.dumps({"GATEWAY_TOKEN": "t0k", "api_key": "k"})):
        cleaned = redact(text)
        assert "a'b" not in cleaned and "t0k" not in cleaned and '"k"' not in cleaned, cleaned
    assert "AKID" in redact(str(job)) and "the token is here" in redact(str(job))
