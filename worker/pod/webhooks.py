"""A finished job's webhook: its status body POSTed to the URL the request named, retried a bounded number of
times as RunPod does (two retries), in a background thread so the queue never waits on a slow receiver."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import requests

log = logging.getLogger(__name__)


def post_with_retries(
    url: str, body: dict[str, Any], *, retries: int, delay_s: float, timeout_s: float = 10.0
) -> bool:
    """POST `body` to `url` until a 2xx answer, at most `1 + retries` times; whether it was delivered."""
    for attempt in range(retries + 1):
        try:
            response = requests.post(url, json=body, timeout=timeout_s)
            if 200 <= response.status_code < 300:
                return True
            reason = f"HTTP {response.status_code}"
        except requests.RequestException as error:
            reason = f"{type(error).__name__}: {error}"
        log.warning("job %s: webhook attempt %d failed (%s)", body.get("id"), attempt + 1, reason)
        if attempt < retries:
            time.sleep(delay_s)
    log.error("job %s: webhook not delivered after %d attempts", body.get("id"), retries + 1)
    return False


def send_in_background(url: str, body: dict[str, Any], *, retries: int, delay_s: float) -> threading.Thread:
    thread = threading.Thread(
        target=post_with_retries,
        args=(url, body),
        kwargs={"retries": retries, "delay_s": delay_s},
        name=f"webhook-{body.get('id')}",
        daemon=True,
    )
    thread.start()
    return thread
