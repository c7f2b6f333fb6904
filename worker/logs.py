"""Logging set-up for the worker process: one line per event, to stderr, with secrets taken out.

A job may carry credentials (RunPod's per-job `s3Config.accessSecret`). The RunPod SDK prints whole jobs at DEBUG
(`Retrieved local job: {...}` in `--test_input` mode) through its own logger, which does not use `logging`:
`redact_runpod_logs` wraps that logger so every line it prints has secret values replaced, and
`configure_logging` does the same for this process's own log records.
"""

import logging
import re
import sys

REDACTED = "***"
# a quoted key naming a secret, then its quoted value, as json.dumps or a dict's repr writes them
_SECRET_VALUE = re.compile(
    r"""(?P<key>(?P<kq>['"])[A-Za-z_]*(?:secret|password|passwd|token|api_?key|credential)[A-Za-z_]*(?P=kq)"""
    r"""\s*:\s*)(?P<q>['"])(?:\\.|(?!(?P=q)).)*(?P=q)""",
    re.IGNORECASE,
)


def redact(text: str) -> str:
    """`text` with the value of every secret-named key (`accessSecret`, `*token*`, `*password*`...) replaced."""
    return _SECRET_VALUE.sub(lambda match: f"{match['key']}{match['q']}{REDACTED}{match['q']}", text)


class _RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def configure_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        stream=sys.stderr,
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(_RedactingFilter())
    for noisy in ("httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def redact_runpod_logs() -> None:
    """Make the RunPod SDK's logger (a print-based singleton) redact secrets from every line it prints."""
    from runpod.serverless.modules.rp_logger import RunPodLogger

    original = RunPodLogger.log
    if getattr(original, "redacts", False):
        return

    def log(
        self: RunPodLogger, message: object, message_level: str = "INFO", job_id: str | None = None
    ) -> None:
        original(self, redact(str(message)), message_level, job_id)

    log.redacts = True  # type: ignore[attr-defined]
    RunPodLogger.log = log  # type: ignore[method-assign]
