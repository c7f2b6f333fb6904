"""Who may download a model (a lease lock on the shared volume, and a gate for the threads of one process), and
the progress lines of the worker that downloads and of those that wait for it.

The volume is a network file system shared by workers on many hosts, where `flock` is not trusted. A
`filelock.SoftFileLease` is a lock file whose holder refreshes a heartbeat: a dead holder on another host is taken
over once its heartbeat is older than the lease, a dead one on this host at once. A holder that was only paused
(SIGSTOP, a frozen VM) can wake up after a takeover; `ModelLease.check` tells it so that it stops before it
publishes anything.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import CacheError, CacheTimeoutError, LeaseLostError

if TYPE_CHECKING:
    from filelock import SoftFileLease

log = logging.getLogger(__name__)

# A takeover is noticed by comparing the claim token in the lock file with ours; reading the file on every
# progress tick would flood a network volume, so the comparison runs at most this often.
_CHECK_INTERVAL_S = 0.5


def describe_holder(lock_path: Path, lease_s: float) -> str | None:
    """'pid N on host H (heartbeat Ts ago)' for the current holder of `lock_path`, or None when it is free."""
    from filelock import SoftFileLease

    return _describe(SoftFileLease(str(lock_path), lease_duration=lease_s), lock_path)


def _describe(lease: SoftFileLease, lock_path: Path) -> str | None:
    owner = lease.owner
    if owner is None:
        return None
    try:
        age = time.time() - lock_path.stat().st_mtime
    except FileNotFoundError:
        return None
    return f"pid {owner.pid} on host {owner.hostname} (heartbeat {age:.0f}s ago)"


class ModelLease:
    """The lease lock of one model. Use one instance per attempt: a lost lease must be released, not reused."""

    def __init__(self, path: Path, lease_s: float) -> None:
        from filelock import SoftFileLease

        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.lease_s = lease_s
        self._lost = threading.Event()
        self._token: str | None = None
        self._last_check = 0.0
        self._lease = SoftFileLease(str(path), lease_duration=lease_s, on_compromise=self._on_compromise)

    @property
    def token(self) -> str:
        """This hold's claim token (unique per acquisition); only valid while held."""
        if self._token is None:
            raise RuntimeError(f"{self.path} is not held")
        return self._token

    def try_acquire(self) -> bool:
        """One attempt to take the lease; False while another live holder keeps it.

        Repeated attempts on the same instance are what let it take over a silent holder: the lock file must be
        seen unchanged for a whole lease.
        """
        from filelock import LeaseSettingsMismatch, Timeout

        try:
            self._lease.acquire(blocking=False)
        except Timeout:
            return False
        except LeaseSettingsMismatch as err:
            raise CacheError(
                f"{err}. Set the same CACHE_LEASE_S on every worker and pod that shares this volume."
            ) from None
        self._token = self._lease.token
        self._lost.clear()
        return True

    def holder(self) -> str | None:
        return _describe(self._lease, self.path)

    def check(self, *, force: bool = False) -> None:
        """Raise LeaseLostError when another worker has taken this lease over. Safe from any thread."""
        if self._lost.is_set():
            raise LeaseLostError(self.lost_message())
        now = time.monotonic()
        if not force and now - self._last_check < _CHECK_INTERVAL_S:
            return
        self._last_check = now
        owner = self._lease.owner
        if owner is None or owner.token != self._token:
            self._lost.set()
            raise LeaseLostError(self.lost_message())

    def still_held(self) -> bool:
        """Whether this worker still holds the lease (reads the lock file now)."""
        try:
            self.check(force=True)
        except LeaseLostError:
            return False
        return True

    def release(self) -> None:
        # Releasing a lease that was taken over leaves the new holder's lock file alone.
        self._lease.release(force=True)
        self._token = None

    def _on_compromise(self, compromise: object) -> None:
        log.warning("lost the lease on %s (%s)", self.path, getattr(compromise, "reason", compromise))
        self._lost.set()

    def lost_message(self) -> str:
        return (
            f"another worker took over {self.path.name}: this one's heartbeat lapsed for longer than the "
            f"{self.lease_s:g}s lease (a paused process or a stalled volume), so the other one now owns the download"
        )


def acquire_lease(lease: ModelLease, deadline: float, what: str, done: Callable[[], bool]) -> bool:
    """Take `lease` before `deadline` (True), or notice that `done()` became true meanwhile (False).

    While another worker holds it, logs who at a bounded rate; at the deadline raises CacheTimeoutError naming it.
    """
    reporter = WaitReporter(what, max(deadline - time.monotonic(), 0.0))
    # One attempt per poll, with `done` checked in between: a waiter returns as soon as the holder publishes.
    poll_s = max(0.05, min(0.5, lease.lease_s / 10))
    while not done():
        if lease.try_acquire():
            return True
        if time.monotonic() >= deadline:
            raise CacheTimeoutError(
                f"timed out after {reporter.waited:.0f}s waiting for {what}: {lease.holder() or 'another worker'} "
                f"holds its download lock {lease.path}. If that worker is still downloading, raise "
                f"CACHE_WAIT_TIMEOUT_S (and RUNPOD_INIT_TIMEOUT); if it is gone, its lease expires "
                f"{lease.lease_s:g}s after its last heartbeat"
            )
        reporter.tick(lease.holder)
        time.sleep(min(poll_s, max(deadline - time.monotonic(), 0.0)))
    return False


class WaitReporter:
    """Logs one line per `interval_s` while waiting, naming what is awaited and for how long."""

    def __init__(self, what: str, timeout: float, interval_s: float = 10.0) -> None:
        self.what = what
        self.timeout = timeout
        self.interval_s = interval_s
        self.started = time.monotonic()
        self._next = self.started

    @property
    def waited(self) -> float:
        return time.monotonic() - self.started

    def tick(self, holder: Callable[[], str | None]) -> None:
        """Log a line if one is due; `holder` (who holds what is awaited) is only asked then."""
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + self.interval_s
        who = holder() or "another worker"
        log.info(
            "waiting for %s: held by %s (waited %.0fs of %.0fs)", self.what, who, self.waited, self.timeout
        )


_GATES: dict[str, threading.Lock] = {}
_GATES_GUARD = threading.Lock()


@contextmanager
def thread_gate(key: str, deadline: float, what: str) -> Iterator[None]:
    """Let one thread of this process at a time work on `key`; the others wait here until `deadline`.

    The lease lock alone would make a second thread wait out the first one's heartbeat as if it were another
    worker; the gate makes it wait for the first thread instead and then find the model ready.
    """
    with _GATES_GUARD:
        gate = _GATES.setdefault(key, threading.Lock())
    reporter = WaitReporter(what, max(deadline - time.monotonic(), 0.0))
    while not gate.acquire(timeout=min(1.0, max(deadline - time.monotonic(), 0.0))):
        if time.monotonic() >= deadline:
            raise CacheTimeoutError(
                f"timed out after {reporter.waited:.0f}s waiting for another thread of this process to prepare "
                f"{what}; raise the timeout (CACHE_WAIT_TIMEOUT_S) for large models"
            )
        reporter.tick(lambda: "another thread of this process")
    try:
        yield
    finally:
        gate.release()


class Progress:
    """Counts the bytes a fetch writes, logs them at a bounded rate, and stops the fetch when `check` raises."""

    def __init__(
        self, label: str, total: int | None, check: Callable[[], None], interval_s: float = 5.0
    ) -> None:
        self.label = label
        self.total = total
        self.check = check
        self.interval_s = interval_s
        self.done = 0
        self.started = time.monotonic()
        self._next = self.started + interval_s
        self._lock = threading.Lock()

    def advance(self, n: int) -> None:
        with self._lock:
            self.done += n
            now = time.monotonic()
            if now < self._next:
                return
            self._next = now + self.interval_s
        log.info("%s: %s", self.label, self._summary(now))

    def finish(self) -> None:
        log.info("%s: done, %s", self.label, self._summary(time.monotonic()))

    def _summary(self, now: float) -> str:
        elapsed = max(now - self.started, 1e-6)
        of_total = (
            f" of {human_bytes(self.total)} ({100 * self.done / self.total:.0f}%)" if self.total else ""
        )
        return f"{human_bytes(self.done)}{of_total} in {elapsed:.0f}s, {human_bytes(self.done / elapsed)}/s"


def human_bytes(n: float | None) -> str:
    value = float(n or 0)
    for unit in ("B", "KB", "MB", "GB"):
        if abs(value) < 1000:
            return f"{value:.0f} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"
