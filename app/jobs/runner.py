"""``JobRunner``: one long-lived ``QThread`` draining a queue of jobs keyed by what they are about (e.g.
``("estimate", uid)``). Submitting a job whose key is already pending *replaces* it (latest wins), so 10
rapid edits of one person run one estimation. ``cancel(key)`` drops a pending job and discards the result
of a running one; a job that is a generator is also stopped at its next ``yield``. Results and errors come
back as Qt signals, delivered in the GUI thread.
"""

from __future__ import annotations

import collections
import inspect
import logging
import threading
import traceback
from collections.abc import Callable, Hashable
from typing import Any

from PySide6.QtCore import QObject, QThread, Signal

from dpmesh_core.errors import Cancelled, DPMeshError

log = logging.getLogger(__name__)


class _Job:
    __slots__ = ("key", "job_id", "fn", "cancelled")

    def __init__(self, key: Hashable, job_id: int, fn: Callable[[], Any]):
        self.key, self.job_id, self.fn, self.cancelled = key, job_id, fn, False


class JobRunner(QThread):
    """A long-lived worker thread with a coalescing queue (latest job per key wins).

    Signals (emitted from the worker thread; connected slots of GUI objects run in the GUI thread):
    job_started(key, job_id), job_finished(key, job_id, result), job_failed(key, job_id, message, exc),
    job_cancelled(key, job_id), job_progress(key, job_id, value), busy_changed(bool).
    """

    job_started = Signal(object, int)
    job_finished = Signal(object, int, object)
    job_failed = Signal(object, int, str, object)
    job_cancelled = Signal(object, int)
    job_progress = Signal(object, int, object)
    busy_changed = Signal(bool)

    def __init__(self, name: str = "worker", parent: QObject | None = None):
        super().__init__(parent)
        self.setObjectName(name)
        self._cond = threading.Condition()
        self._pending: collections.OrderedDict[Hashable, _Job] = collections.OrderedDict()
        self._running: _Job | None = None
        self._stop = False
        self._next_id = 1
        self._busy = False
        self.thread_local: dict[str, Any] = {}  # objects owned by the worker thread (estimator, renderer)
        self.on_start: Callable[[], None] | None = None  # run once in the worker thread, before any job

    # ------------------------------------------------------------------ GUI-thread API
    def submit(self, key: Hashable, fn: Callable[[], Any]) -> int:
        """Queue ``fn()`` under ``key``; a pending job with the same key is replaced. Returns a job id."""
        with self._cond:
            job = _Job(key, self._next_id, fn)
            self._next_id += 1
            self._pending.pop(key, None)
            self._pending[key] = job
            self._cond.notify()
        if not self.isRunning():
            self.start()
        return job.job_id

    def cancel(self, key: Hashable) -> bool:
        """Drop the pending job of ``key`` and discard the result of a running one. True if any."""
        hit = False
        with self._cond:
            job = self._pending.pop(key, None)
            if job is not None:
                hit = True
                self.job_cancelled.emit(key, job.job_id)
            if self._running is not None and self._running.key == key:
                self._running.cancelled = True
                hit = True
        return hit

    def cancel_all(self) -> None:
        with self._cond:
            dropped = list(self._pending.values())
            self._pending.clear()
            if self._running is not None:
                self._running.cancelled = True
        for j in dropped:
            self.job_cancelled.emit(j.key, j.job_id)

    def pending_keys(self) -> list[Hashable]:
        with self._cond:
            return list(self._pending)

    def is_busy(self) -> bool:
        with self._cond:
            return self._running is not None or bool(self._pending)

    def stop(self, timeout_ms: int = 10000) -> None:
        """Cancel everything and end the thread (waits for a running job up to ``timeout_ms``)."""
        self.cancel_all()
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self.isRunning():
            self.wait(timeout_ms)

    # ------------------------------------------------------------------ worker thread
    def _set_busy(self, busy: bool) -> None:
        if busy != self._busy:
            self._busy = busy
            self.busy_changed.emit(busy)

    def run(self) -> None:  # noqa: D401 - QThread API
        if self.on_start is not None:
            try:
                self.on_start()
            except Exception:  # noqa: BLE001 - an optimisation only
                log.debug("worker start hook failed", exc_info=True)
        while True:
            with self._cond:
                while not self._pending and not self._stop:
                    self._running = None
                    self._set_busy(False)
                    self._cond.wait()
                if self._stop:
                    self._running = None
                    self._set_busy(False)
                    return
                _, job = self._pending.popitem(last=False)
                self._running = job
                self._set_busy(True)
            self.job_started.emit(job.key, job.job_id)
            try:
                result = job.fn()
                if inspect.isgenerator(result):
                    result = self._drain(job, result)
                if job.cancelled:
                    self.job_cancelled.emit(job.key, job.job_id)
                else:
                    self.job_finished.emit(job.key, job.job_id, result)
            except Cancelled:
                self.job_cancelled.emit(job.key, job.job_id)
            except Exception as e:  # noqa: BLE001 - every failure becomes a signal, never a dead thread
                if not isinstance(e, DPMeshError):
                    log.error("job %r failed:\n%s", job.key, traceback.format_exc())
                if job.cancelled:
                    self.job_cancelled.emit(job.key, job.job_id)
                else:
                    self.job_failed.emit(job.key, job.job_id, f"{type(e).__name__}: {e}" if not isinstance(
                        e, DPMeshError) else str(e), e)
            finally:
                with self._cond:
                    self._running = None

    def _drain(self, job: _Job, gen: Any) -> Any:
        """Run a generator job: each ``yield`` becomes a progress signal; stops at the next ``yield`` once
        cancelled. Its result: the generator's return value, or if that is None its last value."""
        last = None
        while True:
            try:
                value = next(gen)
            except StopIteration as stop:
                return last if stop.value is None else stop.value
            if job.cancelled:
                gen.close()
                raise Cancelled(f"job {job.key!r} cancelled")
            last = value
            self.job_progress.emit(job.key, job.job_id, value)
