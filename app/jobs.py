"""Background work: the only module of the app that touches threads and processes.

* ``JobRunner``: one long-lived ``QThread`` draining a queue of jobs keyed by what they are about
  (e.g. ``("estimate", uid)``). Submitting a job whose key is already pending *replaces* it (latest wins),
  so 10 rapid edits of one person run one estimation. ``cancel(key)`` drops a pending job and discards the
  result of a running one; a job that is a generator is also stopped at its next ``yield``.
  Results and errors come back as Qt signals, delivered in the GUI thread.
* ``InferenceService``: the inference worker of the app: a runner thread feeding an inference process
  that owns the estimator and the detector (torch never loads in the app process; a fit does not compete
  with the GUI thread for the GIL). Injected factories run in the runner thread instead.
* ``RenderService``: a render thread feeding a render process that owns Open3D (Open3D is
  thread-confined and keeps the GIL while it renders, so in-process it would stall the GUI).
* ``TrainingProcess``: the headless ``dpmesh train CONFIG --json`` in a ``QProcess``; parses JSON lines.
"""

from __future__ import annotations

import collections
import functools
import inspect
import json
import logging
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable, Hashable
from typing import Any

from PySide6.QtCore import QObject, QProcess, QThread, Signal

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
                    last = None
                    for value in result:
                        if job.cancelled:
                            result.close()
                            raise Cancelled(f"job {job.key!r} cancelled")
                        last = value
                        self.job_progress.emit(job.key, job.job_id, value)
                    result = last
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


# ---------------------------------------------------------------------------------------------------
# Inference. By default the estimator and the detector live in an inference *process* (``python -m
# app.jobs --inference-server FD``): torch's import and initialisation are long C calls that keep the GIL,
# and a fit competes with the GUI thread for it, so in-process they stall the GUI however they are
# threaded. The runner thread is the client: each job sends one request over a socket and blocks on the
# reply (which releases the GIL). With injected factories (embedding, tests) everything runs in the
# runner thread instead, through the same request handler.

DEFAULT_ESTIMATOR: tuple[str, str | None] = ("fit", None)
DEFAULT_DETECTOR = "yolo"
IMAGE_SLOTS = 4  # images the inference process keeps (by token) so that an edit does not send its image again


def build_estimator(spec: tuple[str, str | None]) -> Any:
    """``api.make_estimator(kind, model_path=...)`` from a picklable spec ``(kind, model_path)``."""
    from dpmesh_core import api

    kind, model_path = spec
    return api.make_estimator(kind, model_path=model_path)


def build_detector(name: str = DEFAULT_DETECTOR) -> Any:
    """``api.get_detector(name)``."""
    from dpmesh_core import api

    return api.get_detector(name)


class InferenceContext:
    """The estimator and the detector a worker (the inference process or thread) owns, each built on first
    use from its factory. Named operations (``app.ops``) receive it as their first argument."""

    def __init__(self, estimator_factory: Callable[[], Any], detector_factory: Callable[[], Any]):
        self.estimator_factory = estimator_factory
        self.detector_factory = detector_factory
        self._estimator: Any = None
        self._built_with: Any = None  # the factory that built ``_estimator``
        self._detector: Any = None
        self.built: list[str] = []  # names of the estimators built since the worker last reported them

    def estimator(self) -> Any:
        factory = self.estimator_factory
        if self._estimator is None or self._built_with is not factory:
            self._estimator, self._built_with = None, None
            self._estimator, self._built_with = factory(), factory
            self.built.append(str(getattr(self._estimator, "name", type(self._estimator).__name__)))
        return self._estimator

    def detector(self) -> Any:
        if self._detector is None:
            self._detector = self.detector_factory()
        return self._detector

    def set_estimator_factory(self, factory: Callable[[], Any]) -> None:
        """Build the estimator with ``factory`` from the next use on (callable from any thread)."""
        self.estimator_factory = factory


def op_path(op: Callable[..., Any] | str) -> str:
    """``"module:qualname"`` of a named operation (a module-level function; closures cannot travel)."""
    if isinstance(op, str):
        if ":" not in op:
            raise ValueError(f"an operation path looks like 'package.module:function', not {op!r}")
        return op
    module, qualname = getattr(op, "__module__", None), getattr(op, "__qualname__", "")
    if not module or module == "__main__" or "<" in qualname:
        raise TypeError(f"{op!r} is not a module-level function: the inference process needs an import path")
    return f"{module}:{qualname}"


def resolve_op(path: str) -> Callable[..., Any]:
    import importlib

    module, _, qualname = path.partition(":")
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _run_request(ctx: InferenceContext, op: str, args: tuple) -> Any:
    """One inference request, in the worker (process or thread): its result, or a generator (a long
    ``call`` whose every ``yield`` is a progress message)."""
    if op == "estimate":
        image, persons, camera, previous = args
        t0 = time.perf_counter()
        out = ctx.estimator().estimate(image, list(persons), camera=camera, previous=previous)
        return list(out), time.perf_counter() - t0
    if op == "detect":
        return list(ctx.detector().detect(args[0]))
    if op == "detect-box":
        image, box = args
        return ctx.detector().detect_in_box(image, box)
    if op == "warm-up":
        ctx.estimator()
        return None
    if op == "set-estimator":
        ctx.set_estimator_factory(functools.partial(build_estimator, tuple(args)))
        return None
    if op == "call":
        path, call_args = args
        return resolve_op(path)(ctx, *call_args)
    raise ValueError(f"unknown inference request {op!r}")


class InferenceProcessError(DPMeshError):
    """The inference process stopped (crashed, was killed) or cannot be started; the next job starts it
    again."""


class RemoteError(DPMeshError):
    """An unexpected error (not a ``DPMeshError``) raised in the inference process, as ``"Type: message"``
    (what the in-thread worker shows); the traceback is in the process's log (stderr)."""


_PORTABLE_MODULES = ("builtins", "dpmesh_core.errors", __name__)


def _portable(e: BaseException) -> BaseException:
    """``e`` if the app process can unpickle it without importing anything heavy (torch), else the
    nearest equivalent with the same message: the closest ``dpmesh_core.errors`` class, or RemoteError."""
    import pickle

    cls = type(e)
    if cls.__module__ in _PORTABLE_MODULES:
        try:
            pickle.loads(pickle.dumps(e))
            return e
        except Exception:  # noqa: BLE001 - not faithfully picklable: fall through
            pass
    if isinstance(e, DPMeshError):
        for base in cls.__mro__:
            if base.__module__ == "dpmesh_core.errors":
                out = base.__new__(base)
                Exception.__init__(out, str(e))
                return out
    return RemoteError(f"{cls.__name__}: {e}")


def _portable_value(v: Any, depth: int = 3) -> Any:
    """``v`` with the exceptions inside (plain lists, tuples and dicts, a few levels) made portable."""
    if isinstance(v, BaseException):
        return _portable(v)
    if depth <= 0:
        return v
    if type(v) in (list, tuple):
        return type(v)(_portable_value(x, depth - 1) for x in v)
    if type(v) is dict:
        return {k: _portable_value(x, depth - 1) for k, x in v.items()}
    return v


class _ImageRef:
    """An image in a request: its pixels the first time (``data``), then only its token."""

    __slots__ = ("token", "data")

    def __init__(self, token: int, data: Any = None):
        self.token, self.data = token, data

    def __getstate__(self) -> tuple:
        return self.token, self.data

    def __setstate__(self, state: tuple) -> None:
        self.token, self.data = state


class _ImageSlots:
    """The process's side: the last ``IMAGE_SLOTS`` images by token (least recently used goes first)."""

    def __init__(self) -> None:
        self.images: collections.OrderedDict[int, Any] = collections.OrderedDict()

    def resolve(self, ref: _ImageRef) -> Any:
        if ref.data is not None:
            if ref.token:
                self.images[ref.token] = ref.data
                while len(self.images) > IMAGE_SLOTS:
                    self.images.popitem(last=False)
            return ref.data
        self.images.move_to_end(ref.token)  # KeyError: the client lost track (a bug): reported as an error
        return self.images[ref.token]


class _ImageMirror:
    """The client's side of ``_ImageSlots``: which images (by identity, held weakly) the process has. The
    app's images are never changed in place (a new frame is a new array), so identity is enough."""

    def __init__(self) -> None:
        self.refs: collections.OrderedDict[int, Any] = collections.OrderedDict()
        self._next = 1

    def ref(self, image: Any) -> _ImageRef:
        import weakref

        for token, w in self.refs.items():
            if w() is image:
                self.refs.move_to_end(token)
                return _ImageRef(token)
        try:
            w = weakref.ref(image)
        except TypeError:
            return _ImageRef(0, image)  # token 0: used once, not kept
        token, self._next = self._next, self._next + 1
        self.refs[token] = w
        while len(self.refs) > IMAGE_SLOTS:
            self.refs.popitem(last=False)
        return _ImageRef(token, image)

    def clear(self) -> None:
        self.refs.clear()


def _inference_server(conn: Any) -> None:
    """Main loop of the inference process: owns the estimator and the detector (built from picklable
    specs on first use).

    Requests: (op, args) as in ``_run_request`` (top-level ``_ImageRef`` arguments are resolved first);
    ``None`` ends the loop. Replies: ("ok", value, built) / ("error", exception, built), where ``built``
    lists the estimators built meanwhile; a streamed call sends ("progress", value, built) for each
    ``yield`` and then waits for "next" (go on) or anything else (stop: it answers ("stopped", None, built)).
    Exceptions travel as ``_portable`` ones.
    """
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C in a terminal is for the app, which stops us
    ctx = InferenceContext(functools.partial(build_estimator, DEFAULT_ESTIMATOR), build_detector)
    slots = _ImageSlots()

    def built() -> list[str]:
        out, ctx.built = ctx.built, []
        return out

    while True:
        try:
            msg = conn.recv()
            if msg is None:
                break
            _serve_request(conn, ctx, slots, msg, built)
        except _ConnectionLost:
            break
        except (EOFError, OSError):
            break


class _ConnectionLost(Exception):
    pass


def _serve_request(conn: Any, ctx: InferenceContext, slots: _ImageSlots, msg: Any,
                   built: Callable[[], list[str]]) -> None:
    """Answer one request of the inference process (see ``_inference_server``)."""

    def send(reply: tuple) -> None:
        try:
            conn.send(reply)
        except (OSError, BrokenPipeError) as e:
            raise _ConnectionLost from e

    def recv() -> Any:
        try:
            return conn.recv()
        except (EOFError, OSError) as e:
            raise _ConnectionLost from e

    try:
        op, args = msg
        args = tuple(slots.resolve(a) if isinstance(a, _ImageRef) else a for a in args)
        out = _run_request(ctx, op, args)
        if inspect.isgenerator(out):
            for value in out:
                send(("progress", _portable_value(value), built()))
                if recv() != "next":
                    out.close()
                    send(("stopped", None, built()))
                    break
            else:
                send(("ok", None, built()))
        else:
            send(("ok", _portable_value(out), built()))
    except _ConnectionLost:
        raise
    except Exception as e:  # noqa: BLE001 - reported to the app, the server keeps serving
        if not isinstance(e, DPMeshError):
            log.error("inference request failed:\n%s", traceback.format_exc())
        send(("error", _portable(e), built()))


def _spawn_server(flag: str) -> tuple[Any, Any]:
    """Start ``python -m app.jobs FLAG FD`` connected through a socket pair (a fresh interpreter: nothing of
    the parent process, e.g. a script's main module, is re-run). Returns (Popen, Connection)."""
    import socket
    import subprocess
    from multiprocessing.connection import Connection

    if os.name != "posix":
        raise OSError("the worker processes need a POSIX socket pair here")
    ours, theirs = socket.socketpair()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app.jobs", flag, str(theirs.fileno())],
            pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            cwd=os.getcwd())
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()
    return proc, Connection(ours.detach())


class _InferenceClient:
    """The runner thread's handle on the inference process: started on first use, and again after it died
    (each failure is reported once, as an ``InferenceProcessError`` of the job it broke)."""

    def __init__(self, on_built: Callable[[str], None]):
        self.proc: Any = None
        self.conn: Any = None
        self.images = _ImageMirror()
        self.spec: tuple[str, str | None] = DEFAULT_ESTIMATOR  # the estimator wanted (set from any thread)
        self._sent_spec = DEFAULT_ESTIMATOR  # the one the process builds
        self._on_built = on_built

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def _ensure(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            self._discard()  # died while idle
        if self.proc is None:
            try:
                self.proc, self.conn = _spawn_server("--inference-server")
            except OSError as e:
                raise InferenceProcessError(f"cannot start the inference process: {e}") from e
            self.images.clear()
            self._sent_spec = DEFAULT_ESTIMATOR
        spec = self.spec
        if spec != self._sent_spec:
            self._exchange(("set-estimator", spec))
            self._sent_spec = spec

    def _discard(self) -> int | None:
        """Forget the process (killing it if it still runs); its exit code."""
        import subprocess

        proc, self.proc = self.proc, None
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        self.images.clear()
        if proc is None:
            return None
        try:
            return proc.wait(2)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait(2)

    def _lost(self) -> InferenceProcessError:
        code = self._discard()
        return InferenceProcessError(f"the inference process stopped unexpectedly (exit code {code}); "
                                     "it is started again for the next job")

    def _send(self, msg: Any) -> None:
        try:
            self.conn.send(msg)
        except (OSError, BrokenPipeError):
            raise self._lost() from None
        except Exception:  # e.g. an argument that does not pickle: nothing was sent, image slots unknown
            self.images.clear()
            raise

    def _recv(self) -> tuple[str, Any]:
        try:
            kind, value, built = self.conn.recv()
        except (EOFError, OSError):
            raise self._lost() from None
        for name in built:
            self._on_built(name)
        return kind, value

    def _exchange(self, msg: Any) -> Any:
        self._send(msg)
        kind, value = self._recv()
        if kind == "error":
            raise value
        return value

    def request(self, op: str, args: tuple) -> Any:
        """Send one request and wait for its reply (the wait releases the GIL): its value, or for a
        streamed call a generator of its progress messages (closing it stops the call). Top-level numpy
        arguments are images: sent once, then named by token. Errors are raised as they were raised."""
        import numpy as np

        self._ensure()
        args = tuple(self.images.ref(a) if isinstance(a, np.ndarray) else a for a in args)
        self._send((op, args))
        kind, value = self._recv()
        if kind == "error":
            raise value
        if kind == "progress":
            return self._stream(value)
        return value

    def _stream(self, first: Any) -> Any:
        value = first
        while True:
            done = False
            try:
                yield value
                done = True
            finally:
                if not done:  # closed (cancelled) or abandoned: stop the call, read its last word
                    self._send("stop")
                    self._recv()
            self._send("next")
            kind, value = self._recv()
            if kind == "error":
                raise value
            if kind != "progress":
                return

    def kill(self) -> None:
        """Stop the process now (from any thread): a job waiting on it fails at once."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.kill()

    def close(self) -> None:
        """End the process cleanly (call when the runner thread has stopped)."""
        if self.proc is None:
            return
        _end_server(self.proc, self.conn, 5.0)
        self._discard()


# ---------------------------------------------------------------------------------------------------
class InferenceService(QObject):
    """The app's inference worker: estimation, detection and named operations on one background thread
    (coalescing queue: the latest job per key wins).

    Default: the runner thread is the client of an inference process that owns the estimator (built
    from the spec of ``set_estimator(kind, model_path)``, "fit" first) and the detector ("yolo"); the app
    process never imports torch. With ``estimator_factory`` and/or ``detector_factory`` (embedding, tests)
    they are built and run in the runner thread instead (the other one from its default spec).

    Signals: result_ready(uid, result_or_None, error_message_or_None, seconds), persons_detected(frame,
    persons), person_detected_in_box(frame, person_or_None), error(context, message), busy_changed(bool),
    estimator_ready(name), generic_finished(key, result), generic_progress(key, value), frame_failed(frame,
    message).
    """

    result_ready = Signal(int, object, object, float)
    persons_detected = Signal(int, object)
    person_detected_in_box = Signal(int, object)
    error = Signal(str, str)
    busy_changed = Signal(bool)
    estimator_ready = Signal(str)
    generic_finished = Signal(object, object)
    generic_progress = Signal(object, object)
    frame_failed = Signal(int, str)

    def __init__(self, estimator_factory: Callable[[], Any] | None = None,
                 detector_factory: Callable[[], Any] | None = None, parent: QObject | None = None):
        super().__init__(parent)
        self.runner = JobRunner("inference", self)
        self._spec: tuple[str, str | None] = DEFAULT_ESTIMATOR
        self.in_process = estimator_factory is None and detector_factory is None
        self._client: _InferenceClient | None = None
        self._ctx: InferenceContext | None = None
        if self.in_process:
            self._client = _InferenceClient(self._built)
        else:
            self.runner.on_start = preload_native_libraries
            self._ctx = InferenceContext(estimator_factory or (lambda: build_estimator(self._spec)),
                                         detector_factory or build_detector)
        self.runner.job_finished.connect(self._on_finished)
        self.runner.job_failed.connect(self._on_failed)
        self.runner.busy_changed.connect(self.busy_changed)
        self.runner.job_progress.connect(self._on_progress)
        self.last_seconds = 0.0
        self._faces: list = []  # recent distinct faces arrays (runner thread), see _share_faces

    # worker thread --------------------------------------------------------------------
    def _built(self, name: str) -> None:
        self.estimator_ready.emit(name)

    def _do(self, op: str, *args: Any) -> Any:
        """Run one request (in the runner thread): in the inference process, or here."""
        if self._client is not None:
            return self._client.request(op, args)
        assert self._ctx is not None
        try:
            return _run_request(self._ctx, op, args)
        finally:
            for name in self._ctx.built:
                self.estimator_ready.emit(name)
            self._ctx.built.clear()

    def _share_faces(self, results: list) -> list:
        """Results whose faces equal those of an earlier result get that array (one body model's persons
        share one array): a render request of all persons then pickles their faces once, not per person."""
        import dataclasses

        import numpy as np

        from dpmesh_core.types import MeshResult

        out = []
        for r in results:
            if isinstance(r, MeshResult):
                f = r.faces
                same = next((c for c in self._faces if c is f or (c.shape == f.shape and np.array_equal(c, f))), None)
                if same is None:
                    self._faces = [f, *self._faces[:3]]
                elif same is not f:
                    r = dataclasses.replace(r, faces=same)
            out.append(r)
        return out

    @property
    def server_pid(self) -> int | None:
        """Process id of the inference process (None: not started, or in-thread mode)."""
        return None if self._client is None else self._client.pid

    # GUI-thread API -------------------------------------------------------------------
    def start(self) -> None:
        """Start the inference process now (in the background), so that torch loads before the first job."""
        if self._client is not None:
            self.runner.submit(("start",), lambda: self._client._ensure())  # type: ignore[union-attr]

    def set_estimator(self, kind: str, model_path: str | None = None) -> None:
        """Use ``api.make_estimator(kind, model_path=model_path)`` from the next job on (built lazily by the
        worker; a bad model file is reported by the next estimation)."""
        spec = (str(kind), None if model_path is None else str(model_path))
        self._spec = spec
        if self._client is None:
            self.set_estimator_factory(lambda: build_estimator(spec))
        else:
            self._client.spec = spec  # the next request tells the process (cancelling jobs cannot lose it)

    def set_estimator_factory(self, factory: Callable[[], Any]) -> None:
        """In-thread mode only: use another estimator factory from the next job on."""
        if self._ctx is None:
            raise TypeError("the inference process builds estimators from specs: use set_estimator(kind, path)")
        self._ctx.set_estimator_factory(factory)

    def warm_up(self) -> None:
        """Build the estimator now (in the background) so the first edit is answered quickly."""
        self.runner.submit(("warm-up",), lambda: self._do("warm-up"))

    def estimate(self, uid: int, image: Any, person: Any, camera: Any = None, previous: Any = None) -> int:
        """Re-estimate person ``uid`` (coalesced: only the latest request per uid runs)."""
        prev = None if previous is None else [previous]

        def job() -> tuple[Any, float]:
            out, secs = self._do("estimate", image, [person], camera, prev)
            return self._share_faces(out)[0], secs

        return self.runner.submit(("estimate", uid), job)

    def estimate_many(self, frame: int, uids: list[int], image: Any, persons: list, camera: Any = None,
                      previous: list | None = None, slot: Hashable | None = None) -> int:
        """Estimate several persons of one frame in one call (the fitter batches them: much faster than
        one job per person). One ``result_ready`` per uid."""
        persons, uids = list(persons), list(uids)

        def job() -> tuple[Any, list, float]:
            out, secs = self._do("estimate", image, persons, camera, previous)
            return frame, list(zip(uids, self._share_faces(out))), secs

        for u in uids:  # a pending single-person job is superseded by this one
            self.runner.cancel(("estimate", u))
        return self.runner.submit(("estimate-frame", frame if slot is None else slot), job)

    def detect(self, frame: int, image: Any, slot: Hashable | None = None) -> int:
        """Detect persons on ``frame``; jobs sharing a ``slot`` (e.g. "auto" while scrubbing a video)
        coalesce, else one job per frame. → ``persons_detected(frame, persons)``."""
        return self.runner.submit(("detect", frame if slot is None else slot),
                                  lambda: (frame, self._do("detect", image)))

    def detect_in_box(self, frame: int, image: Any, box: Any) -> int:
        return self.runner.submit(("detect-box", frame), lambda: self._do("detect-box", image, box))

    def call(self, key: Hashable, op: Callable[..., Any] | str, *args: Any) -> int:
        """Run the named operation ``op(ctx, *args)`` (a module-level function, or its "module:function"
        path; picklable arguments) in the worker; the result comes back in ``generic_finished(key,
        result)``, each ``yield`` of a generator operation in ``generic_progress(key, value)``."""
        path = op_path(op)
        return self.runner.submit(("call", key), lambda: self._do("call", path, args))

    def cancel(self, uid: int) -> None:
        self.runner.cancel(("estimate", uid))

    def cancel_all(self) -> None:
        self.runner.cancel_all()

    def shutdown(self) -> None:
        """Cancel everything, stop the runner thread and end the inference process (no orphan)."""
        if self._client is None:
            self.runner.stop()
            return
        self.runner.cancel_all()
        if self.runner.is_busy():  # a job is running (its result would be discarded): stop the process under it
            self._client.kill()
        self.runner.stop()
        self._client.close()

    # signal routing -------------------------------------------------------------------
    def _on_progress(self, key: Any, job_id: int, value: Any) -> None:
        if key[0] == "call":
            self.generic_progress.emit(key[1], value)

    def _on_finished(self, key: Any, job_id: int, result: Any) -> None:
        kind = key[0]
        if kind == "estimate":
            res, secs = result
            self.last_seconds = secs
            if isinstance(res, Exception):
                self.result_ready.emit(key[1], None, str(res), secs)
            else:
                self.result_ready.emit(key[1], res, None, secs)
        elif kind == "estimate-frame":
            _frame, pairs, secs = result
            self.last_seconds = secs
            for uid, res in pairs:
                if isinstance(res, Exception):
                    self.result_ready.emit(uid, None, str(res), secs)
                else:
                    self.result_ready.emit(uid, res, None, secs)
        elif kind == "detect":
            frame, persons = result
            self.persons_detected.emit(frame, list(persons))
        elif kind == "detect-box":
            self.person_detected_in_box.emit(key[1], result)
        elif kind == "call":
            self.generic_finished.emit(key[1], result)

    def _on_failed(self, key: Any, job_id: int, message: str, exc: Any) -> None:
        kind = key[0]
        if kind == "estimate":
            self.result_ready.emit(key[1], None, message, 0.0)
        elif kind == "estimate-frame":
            self.frame_failed.emit(key[1] if isinstance(key[1], int) else -1, message)
        self.error.emit(str(kind), message)


def preload_native_libraries() -> None:
    """Load torch's big shared libraries (libtorch_cpu.so: ~200 ms of relocations and static initialisers)
    with the GIL released, so that the later ``import torch`` does not hold the GIL that long and the GUI
    thread keeps running. Linux only; harmless if it does nothing (the import loads them anyway).

    A ``ctypes.CDLL`` would hold the GIL during ``dlopen``; a call through a ctypes *function* releases it.
    The libraries are opened RTLD_LOCAL, exactly as the import would open them.
    """
    import ctypes
    import importlib.util

    if not sys.platform.startswith("linux") or "torch" in sys.modules:
        return
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.origin:
        return
    lib = os.path.join(os.path.dirname(spec.origin), "lib")
    dlopen = ctypes.CDLL(None).dlopen
    dlopen.restype = ctypes.c_void_p
    dlopen.argtypes = [ctypes.c_char_p, ctypes.c_int]
    for name in ("libtorch_cpu.so", "libtorch_python.so"):
        path = os.path.join(lib, name)
        if os.path.exists(path):
            dlopen(path.encode(), os.RTLD_NOW | os.RTLD_LOCAL)


# ---------------------------------------------------------------------------------------------------
BACKGROUND = (0.11, 0.118, 0.133)  # the mesh view's background (the overlay only uses the covered pixels)


def make_renderer(width: int, height: int, state: dict) -> Any:
    """An ``api.MeshRenderer`` that is known to draw (call on the render thread).

    Open3D's legacy Visualizer renders through GLX when an X display is set; on a virtual X server
    without usable GL (Xvfb) its shaders fail to compile and it renders black. Its EGL path (used when no
    display is set) works there, so the first renderer is created with DISPLAY hidden from Open3D (Qt has
    already connected to the display). Each new renderer draws one test triangle; if the result is not
    the expected image, the numpy rasteriser is used instead (slower, always correct).
    """
    import numpy as np

    from dpmesh_core import api
    from dpmesh_core.types import Camera

    if state.get("backend") == "numpy":
        return api.MeshRenderer(width, height, backend="numpy", background=BACKGROUND)
    hidden = os.environ.pop("DISPLAY", None) if not state.get("glfw_started") else None
    try:
        r = api.MeshRenderer(width, height, background=BACKGROUND)
    finally:
        state["glfw_started"] = True
        if hidden is not None:
            os.environ["DISPLAY"] = hidden
    if getattr(r, "backend", "") == "open3d" and not state.get("verified"):
        tri = (np.array([[-0.5, -0.5, 3.0], [0.5, -0.5, 3.0], [0.0, 0.5, 3.0]], np.float32),
               np.array([[0, 1, 2]], np.int32), (1.0, 0.0, 0.0))
        try:
            img = r.render([tri], Camera.default_for(width, height))
            bg = np.asarray(BACKGROUND) * 255
            ok = img[height // 2, width // 2, 0] > 100 and np.abs(img[2, 2] - bg).max() < 8  # red centre, bg corner
        except Exception as e:  # noqa: BLE001
            log.warning("Open3D test render failed: %s", e)
            ok = False
        if not ok:
            log.warning("Open3D renders incorrectly here (no usable OpenGL); using the numpy rasteriser")
            r.close()
            state["backend"] = "numpy"
            return api.MeshRenderer(width, height, backend="numpy", background=BACKGROUND)
        state["verified"] = True
    return r


class _OverlayLayers:
    """Per-person mesh layers for the overlay, cached in the render process.

    An edit changes one person's mesh, so only that person is rendered again (~35 ms with software
    OpenGL instead of ~130 ms for 8 persons); the cached layers (colour + depth, cropped to the mesh) are
    depth-composited in numpy. A layer's key is a digest of its vertices, faces, colour, camera and output
    size. When most persons are new (a new frame) the whole scene is rendered in one pass for the reply and
    the per-person layers are filled afterwards while the process is idle (``fill_one``).
    """

    MAX_LAYERS = 48

    def __init__(self) -> None:
        self.layers: collections.OrderedDict[bytes, tuple] = collections.OrderedDict()
        self.todo: list[tuple[bytes, Any, tuple]] = []  # (key, renderer getter args, mesh spec + camera)
        self.background: dict[tuple[int, int], Any] = {}  # per output size: the renderer's background pixel
        self._last: dict[str, Any] | None = None  # the last overlay (image, layer keys, picture): edits patch it

    @staticmethod
    def _key(mesh: tuple, camera: Any, size: tuple[int, int], memo: dict | None = None) -> bytes:
        """Digest of a layer; ``memo`` (one request's) keeps the digest of a faces array shared by several
        meshes (the app sends one faces array for all persons of a body model: pickled and hashed once)."""
        import hashlib

        import numpy as np

        def digest(a: Any) -> bytes:
            d = hashlib.blake2b(digest_size=16)
            d.update(str(a.shape).encode())
            d.update(a.data)  # no copy
            return d.digest()

        v, f, c = mesh
        h = hashlib.blake2b(digest_size=16)
        h.update(digest(np.ascontiguousarray(v, np.float32)))
        if memo is None or id(f) not in memo:
            fd = digest(np.ascontiguousarray(f, np.int32))
            if memo is not None:
                memo[id(f)] = (f, fd)  # the array is kept so that its id stays its own
        else:
            fd = memo[id(f)][1]
        h.update(fd)
        h.update(repr((tuple(float(x) for x in c), camera, size)).encode())
        return h.digest()

    def _render_layer(self, renderer: Any, mesh: tuple, camera: Any) -> tuple:
        import numpy as np

        rgb, mask, depth = renderer.render_with_mask([mesh], camera, None)
        first_bg = int(np.argmin(mask.reshape(-1)))  # the first uncovered pixel (0 if all are covered)
        if not mask.reshape(-1)[first_bg]:
            self.background[(rgb.shape[1], rgb.shape[0])] = rgb.reshape(-1, 3)[first_bg].copy()
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        if len(rows) == 0:
            return (0, 0, 0, 0, None, None)
        y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        return (y0, y1, x0, x1, rgb[y0:y1, x0:x1].copy(), depth[y0:y1, x0:x1].copy())

    def _store(self, key: bytes, layer: tuple) -> None:
        self.layers[key] = layer
        self.layers.move_to_end(key)
        while len(self.layers) > self.MAX_LAYERS:
            self.layers.popitem(last=False)

    def overlay(self, get: Callable[[int, int], Any], image: Any, results: list, alpha: float,
                colors: list | None) -> Any:
        """Same picture as ``MeshRenderer.render_overlay(image, results, alpha, colors=colors)``."""
        import numpy as np

        from dpmesh_core.types import MeshResult

        img = np.asarray(image)
        h, w = img.shape[:2]
        meshes, camera = [], None
        for i, r in enumerate(results):
            if not isinstance(r, MeshResult):
                continue
            camera = camera or r.camera
            col = colors[i % len(colors)] if colors else None
            if col is None:  # the renderer's own colouring rule: let it do the whole picture
                return get(w, h).render_overlay(image, results, alpha)
            meshes.append((r.vertices, r.faces, tuple(float(x) for x in col)))
        if not meshes:
            self._last = None
            return img.copy()
        a = float(np.clip(alpha, 0.0, 1.0))
        memo: dict = {}
        last = self._last
        keys = []
        same_faces: dict[int, bool] = {}  # per faces array of this request: equal to the last request's?
        for i, m in enumerate(meshes):
            if last is not None and i < len(last["meshes"]) and last["camera"] == camera and last["size"] == (w, h):
                lv, lf, lc = last["meshes"][i]
                v, f, c = m
                if c == lc and np.array_equal(v, lv):
                    if id(f) not in same_faces:
                        same_faces[id(f)] = np.array_equal(f, lf)
                    if same_faces[id(f)]:
                        keys.append(last["keys"][i])  # unchanged person: no need to hash it again
                        continue
            keys.append(self._key(m, camera, (w, h), memo))
        if last is not None and last["size"] == (w, h) and last["alpha"] == a and len(last["keys"]) == len(keys) \
                and np.array_equal(last["image"], img):
            changed = [i for i, (k, o) in enumerate(zip(keys, last["keys"])) if k != o]
            if len(changed) <= 2 and all(last["keys"][i] in self.layers for i in changed) and all(
                    k in self.layers for i, k in enumerate(keys) if i not in changed):
                # an edit: recompose and re-blend only where the changed persons were or are now
                old_boxes = [self.layers[last["keys"][i]][:4] for i in changed]
                renderer = get(w, h)
                for i in changed:
                    if keys[i] not in self.layers:
                        self._store(keys[i], self._render_layer(renderer, meshes[i], camera))
                boxes = [b for b in old_boxes + [self.layers[keys[i]][:4] for i in changed] if b[1] > b[0]]
                out = last["out"]
                if boxes:
                    y0, y1 = min(b[0] for b in boxes), max(b[1] for b in boxes)
                    x0, x1 = min(b[2] for b in boxes), max(b[3] for b in boxes)
                    rgb, mask = self._compose_region(keys, (y0, y1, x0, x1))
                    out[y0:y1, x0:x1] = self._blend(img[y0:y1, x0:x1], rgb, mask, a)
                last["keys"] = keys
                last["meshes"] = [(np.array(v, copy=True), f, c) for v, f, c in meshes]
                return out.copy()
        rgb, mask = self.compose(get, meshes, camera, (w, h), keys=keys)
        out = self._blend(img, rgb, mask, a)
        self._last = {"size": (w, h), "alpha": a, "keys": keys, "image": np.array(img, np.uint8, copy=True),
                      "out": out.copy(), "camera": camera,
                      "meshes": [(np.array(v, copy=True), f, c) for v, f, c in meshes]}
        return out

    @staticmethod
    def _blend(img: Any, rgb: Any, mask: Any, a: float) -> Any:
        """The blend of render_overlay, computed on the covered pixels only (same float32 arithmetic)."""
        import numpy as np

        out = np.array(img, np.uint8, copy=True).reshape(-1, 3)
        idx = np.flatnonzero(mask)
        under = out[idx].astype(np.float32)
        out[idx] = ((1 - a) * under + a * rgb.reshape(-1, 3)[idx].astype(np.float32) + 0.5).astype(np.uint8)
        return out.reshape(img.shape)

    def _compose_region(self, keys: list, region: tuple[int, int, int, int]) -> tuple[Any, Any]:
        """(rgb, mask) of the cached layers ``keys`` depth-composited inside ``region`` (y0, y1, x0, x1) only."""
        import numpy as np

        Y0, Y1, X0, X1 = region
        zbuf = np.full((Y1 - Y0, X1 - X0), np.inf, np.float32)
        rgb = np.zeros((Y1 - Y0, X1 - X0, 3), np.uint8)
        for k in keys:
            y0, y1, x0, x1, lrgb, ldepth = self.layers[k]
            self.layers.move_to_end(k)
            if lrgb is None:
                continue
            a0, a1, b0, b1 = max(y0, Y0), min(y1, Y1), max(x0, X0), min(x1, X1)
            if a0 >= a1 or b0 >= b1:
                continue
            ld = ldepth[a0 - y0:a1 - y0, b0 - x0:b1 - x0]
            zr = zbuf[a0 - Y0:a1 - Y0, b0 - X0:b1 - X0]
            closer = (ld > 0) & (ld < zr)
            zr[closer] = ld[closer]
            rgb[a0 - Y0:a1 - Y0, b0 - X0:b1 - X0][closer] = lrgb[a0 - y0:a1 - y0, b0 - x0:b1 - x0][closer]
        return rgb, np.isfinite(zbuf)

    def compose(self, get: Callable[[int, int], Any], meshes: list, camera: Any,
                size: tuple[int, int], keys: list | None = None) -> tuple[Any, Any]:
        """(rgb (H, W, 3) uint8, mask (H, W) bool) of ``meshes`` seen by ``camera`` (no view transform), as
        ``render_with_mask`` would give them (rgb is only meaningful under the mask), from cached layers."""
        w, h = size
        renderer = get(w, h)
        if keys is None:
            memo: dict = {}
            keys = [self._key(m, camera, (w, h), memo) for m in meshes]
        missing = [i for i, k in enumerate(keys) if k not in self.layers]
        if len(missing) > 2 and len(missing) > len(meshes) // 2:
            # mostly new: one pass now (cheaper than one per person), layers later while idle
            self.todo = [t for t in self.todo if t[1] != (w, h)]
            self.todo += [(keys[i], (w, h), (meshes[i], camera)) for i in missing]
            rgb, mask, depth = renderer.render_with_mask(meshes, camera, None)
            if not mask.all():
                self.background[(w, h)] = rgb[~mask][0].copy()
            self._layers_from_scene(keys, meshes, camera, (w, h), rgb, mask, depth)
            return rgb, mask
        for i in missing:
            self._store(keys[i], self._render_layer(renderer, meshes[i], camera))
        return self._compose_region(keys, (0, h, 0, w))

    def _layers_from_scene(self, keys: list, meshes: list, camera: Any, size: tuple[int, int], rgb: Any,
                           mask: Any, depth: Any) -> None:
        """Cut the layers of persons whose projected box (+2 px) overlaps no other person's out of a
        whole-scene render: their pixels there are theirs alone (the others stay in ``todo``)."""
        import numpy as np

        w, h = size
        cw, ch = camera.image_size
        sx, sy = w / float(cw), h / float(ch)
        fx, fy = camera.focal[0] * sx, camera.focal[1] * sy
        cx, cy = (camera.principal[0] + 0.5) * sx - 0.5, (camera.principal[1] + 0.5) * sy - 0.5
        boxes = []
        for v, _f, _c in meshes:
            v = np.asarray(v, np.float64)
            if len(v) == 0 or v[:, 2].min() <= 1e-3:
                boxes.append(None)  # behind the camera: no reliable box
                continue
            u, q = fx * v[:, 0] / v[:, 2] + cx, fy * v[:, 1] / v[:, 2] + cy
            boxes.append((int(np.floor(q.min())) - 2, int(np.ceil(q.max())) + 3,
                          int(np.floor(u.min())) - 2, int(np.ceil(u.max())) + 3))
        done = set()
        for i, b in enumerate(boxes):
            if b is None or keys[i] in self.layers:
                continue
            if any(j != i and (o is None or (b[0] < o[1] and o[0] < b[1] and b[2] < o[3] and o[2] < b[3]))
                   for j, o in enumerate(boxes)):
                continue
            y0, y1, x0, x1 = max(b[0], 0), min(b[1], h), max(b[2], 0), min(b[3], w)
            if y0 >= y1 or x0 >= x1:
                self._store(keys[i], (0, 0, 0, 0, None, None))
            else:
                m = mask[y0:y1, x0:x1]
                self._store(keys[i], (y0, y1, x0, x1, rgb[y0:y1, x0:x1].copy(), np.where(m, depth[y0:y1, x0:x1], 0)))
            done.add(keys[i])
        self.todo = [t for t in self.todo if t[0] not in done]

    def view(self, get: Callable[[int, int], Any], meshes: list, camera: Any, view: Any,
             size: tuple[int, int]) -> Any:
        """Same picture as ``MeshRenderer.render(meshes, camera, view)`` at ``size``; from cached layers when
        the view is the camera's own (the mesh view at reset, where an edit changes one person)."""
        import numpy as np

        renderer = get(*size)
        if camera is None or (view is not None and not np.allclose(view, np.eye(4), atol=1e-9)):
            return renderer.render(meshes, camera, view)
        meshes = [(v, f, tuple(float(x) for x in c)) for v, f, c in meshes]
        rgb, mask = self.compose(get, meshes, camera, size)
        bg = self.background.get(size)
        if bg is None:  # the renderer's background colour, exactly as it writes it
            return renderer.render(meshes, camera, view)
        out = np.empty_like(rgb)
        out[...] = bg
        out[mask] = rgb[mask]
        return out

    def fill_one(self, get: Callable[[int, int], Any]) -> bool:
        """Render one pending per-person layer; False when none is left."""
        while self.todo:
            key, size, (mesh, camera) = self.todo.pop(0)
            if key not in self.layers:
                self._store(key, self._render_layer(get(*size), mesh, camera))
                return True
        return False


def _render_server(conn: Any) -> None:
    """Main loop of the render process: owns every Open3D renderer (one per output size, at most 3).

    Open3D's Python bindings keep the GIL while they render (hundreds of ms with software OpenGL), which
    would freeze the GUI thread however the work is threaded; in a separate process it cannot.
    Requests: ("render", (meshes, camera, view, size)) / ("overlay", (image, results, alpha, colors));
    replies: ("ok", rgb) or ("error", message). ``None`` ends the loop.
    """
    os.environ.pop("DISPLAY", None)  # Open3D's EGL path: works headless and on virtual X servers
    state: dict[str, Any] = {"glfw_started": True}
    renderers: collections.OrderedDict[tuple[int, int], Any] = collections.OrderedDict()

    def get(w: int, h: int) -> Any:
        r = renderers.pop((w, h), None)
        if r is None:
            r = make_renderer(w, h, state)
            while len(renderers) >= 3:
                renderers.popitem(last=False)[1].close()
        renderers[(w, h)] = r
        return r

    layers = _OverlayLayers()
    while True:
        try:
            while not conn.poll(0) and layers.fill_one(get):  # idle: fill the overlay's per-person layers
                pass
            msg = conn.recv()
        except (EOFError, OSError):
            break
        if msg is None:
            break
        op, args = msg
        try:
            if op == "render":
                meshes, camera, view, size = args
                out = layers.view(get, meshes, camera, view, tuple(size))
            elif op == "overlay":
                image, results, alpha, colors = args
                out = layers.overlay(get, image, results, alpha, colors)
            else:
                raise ValueError(f"unknown render request {op!r}")
            conn.send(("ok", out))
        except Exception as e:  # noqa: BLE001 - reported to the app, the server keeps serving
            conn.send(("error", f"{type(e).__name__}: {e}"))
    for r in renderers.values():
        r.close()


def _end_server(proc: Any, conn: Any, wait_s: float) -> None:
    """Ask a server process to end (a ``None`` message), wait ``wait_s``, then kill it if it has not."""
    import subprocess

    try:
        conn.send(None)
    except (OSError, BrokenPipeError):
        pass
    try:
        proc.wait(wait_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(2)


class _RenderClient:
    """The render thread's handle on the render process (started on first use, restarted never: if it
    dies, rendering falls back to the numpy rasteriser in the render thread)."""

    def __init__(self) -> None:
        self.proc: Any = None
        self.conn: Any = None
        self.failed = False
        self._fallback: dict[tuple[int, int], Any] = {}

    def _start(self) -> None:
        self.proc, self.conn = _spawn_server("--render-server")

    def start(self) -> None:
        """Spawn the render process if it is not running (a failure falls back like a dead process)."""
        if self.proc is None and not self.failed:
            try:
                self._start()
            except OSError as e:
                log.warning("render process unavailable (%s); rendering in-process with numpy", e)
                self.failed = True

    def request(self, op: str, args: tuple) -> Any:
        if not self.failed:
            try:
                if self.proc is None:
                    self._start()
                self.conn.send((op, args))
                status, out = self.conn.recv()
            except (EOFError, OSError, BrokenPipeError) as e:
                log.warning("render process unavailable (%s); rendering in-process with numpy", e)
                self.failed = True
            else:
                if status == "error":
                    raise RuntimeError(out)
                return out
        return self._render_here(op, args)

    def _render_here(self, op: str, args: tuple) -> Any:
        from dpmesh_core import api

        def get(w: int, h: int) -> Any:
            if (w, h) not in self._fallback:
                self._fallback[(w, h)] = api.MeshRenderer(w, h, backend="numpy", background=BACKGROUND)
            return self._fallback[(w, h)]

        if op == "render":
            meshes, camera, view, size = args
            return get(*size).render(meshes, camera, view)
        image, results, alpha, colors = args
        return get(image.shape[1], image.shape[0]).render_overlay(image, results, alpha, colors=colors)

    def close(self) -> None:
        if self.proc is not None:
            _end_server(self.proc, self.conn, 3.0)
            self.conn.close()
            self.proc = None
        for r in self._fallback.values():
            r.close()
        self._fallback.clear()


class RenderService(QObject):
    """Mesh rendering off the GUI thread: render threads (coalescing queues, latest request per key wins)
    that hand each request to a render process owning Open3D (see ``_render_server``). The image overlay
    and the 3-D mesh view have a thread and a process each, so the overlay of an edit — what the user
    watches while dragging — never waits behind a mesh-view render (50–90 ms) of the previous edit.

    ``render_view(key, meshes, camera, view, size)`` / ``render_overlay(key, image, results, alpha, colors)``
    → ``rendered(key, rgb, seconds)``; failures → ``error(message)``; ``busy_changed(bool)``: either busy.
    """

    rendered = Signal(object, object, float)
    error = Signal(str)
    busy_changed = Signal(bool)

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self.runner = JobRunner("render", self)  # the overlay
        self.view_runner = JobRunner("render-view", self)  # the mesh view
        for r in (self.runner, self.view_runner):
            r.job_finished.connect(self._on_finished)
            r.job_failed.connect(lambda k, i, m, e: self.error.emit(m))
            r.busy_changed.connect(lambda _b: self.busy_changed.emit(self.is_busy()))
        self._client = _RenderClient()
        self._view_client = _RenderClient()

    def is_busy(self) -> bool:
        return self.runner.is_busy() or self.view_runner.is_busy()

    def start(self) -> None:
        """Start both render processes now (in the background), not on the first render."""
        for runner, client in ((self.runner, self._client), (self.view_runner, self._view_client)):
            runner.submit(("start",), lambda c=client: c.start())  # no "rendered" signal: see _on_finished

    def render_view(self, key: Hashable, meshes: list, camera: Any, view: Any,
                    size: tuple[int, int]) -> int:
        """Render ``meshes`` [(V (N, 3) m, faces (F, 3), rgb 0..1)] seen by ``camera`` after the (4, 4)
        ``view`` transform, at ``size`` (w, h) pixels."""

        def job() -> tuple[Any, float]:
            t0 = time.perf_counter()
            img = self._view_client.request("render", (meshes, camera, view, tuple(size)))
            return img, time.perf_counter() - t0

        return self.view_runner.submit(key, job)

    def render_overlay(self, key: Hashable, image: Any, results: list, alpha: float = 0.6,
                       colors: list | None = None) -> int:
        """The meshes of ``results`` blended over ``image`` (H, W, 3) uint8 (``colors``: RGB 0..1 each)."""

        def job() -> tuple[Any, float]:
            t0 = time.perf_counter()
            img = self._client.request("overlay", (image, list(results), alpha, colors))
            return img, time.perf_counter() - t0

        return self.runner.submit(key, job)

    def _on_finished(self, key: Any, job_id: int, result: Any) -> None:
        if key == ("start",):
            return
        img, secs = result
        self.rendered.emit(key, img, secs)

    def shutdown(self) -> None:
        self.runner.stop()
        self.view_runner.stop()
        self._client.close()
        self._view_client.close()


# ---------------------------------------------------------------------------------------------------
class TrainingProcess(QObject):
    """``python -m dpmesh_core.cli train CONFIG --json`` in a QProcess; one signal per JSON-lines event.

    Signals: event(dict) for each JSON line, log(str) for other output, finished(exit_code, status_text).
    """

    event = Signal(dict)
    log = Signal(str)
    finished = Signal(int, str)

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self.proc: QProcess | None = None
        self._buf = b""

    def command(self, config_path: str, extra: list[str] | None = None) -> tuple[str, list[str]]:
        return sys.executable, ["-m", "dpmesh_core.cli", "train", str(config_path), "--json", *(extra or [])]

    def start(self, config_path: str, extra: list[str] | None = None, program: tuple[str, list[str]] | None = None) -> None:
        if self.is_running():
            raise RuntimeError("training is already running")
        prog, args = program or self.command(config_path, extra)
        self.proc = QProcess(self)
        self.proc.setProcessChannelMode(QProcess.ProcessChannelMode.SeparateChannels)
        self.proc.readyReadStandardOutput.connect(self._read_stdout)
        self.proc.readyReadStandardError.connect(self._read_stderr)
        self.proc.finished.connect(self._on_finished)
        self.proc.errorOccurred.connect(self._on_error)
        self._buf = b""
        self.proc.start(prog, args)

    def _on_error(self, err: QProcess.ProcessError) -> None:
        self.log.emit(f"process error: {err.name if hasattr(err, 'name') else err}")

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.state() != QProcess.ProcessState.NotRunning

    def stop(self, timeout_ms: int = 5000) -> None:
        if not self.is_running():
            return
        assert self.proc is not None
        self.proc.terminate()
        if not self.proc.waitForFinished(timeout_ms):
            self.proc.kill()
            self.proc.waitForFinished(2000)

    def _read_stdout(self) -> None:
        assert self.proc is not None
        self._buf += bytes(self.proc.readAllStandardOutput())
        *lines, self._buf = self._buf.split(b"\n")
        for raw in lines:
            self._handle_line(raw.decode("utf-8", "replace").strip())

    def _handle_line(self, line: str) -> None:
        if not line:
            return
        if line.startswith("{"):
            try:
                ev = json.loads(line)
            except json.JSONDecodeError:
                self.log.emit(line)
                return
            if isinstance(ev, dict) and "event" in ev:
                self.event.emit(ev)
                return
        self.log.emit(line)

    def _read_stderr(self) -> None:
        assert self.proc is not None
        text = bytes(self.proc.readAllStandardError()).decode("utf-8", "replace")
        for line in text.splitlines():
            if line.strip():
                self.log.emit(line)

    def _on_finished(self, code: int, status: QProcess.ExitStatus) -> None:
        if self._buf:
            self._handle_line(self._buf.decode("utf-8", "replace").strip())
            self._buf = b""
        self.finished.emit(int(code), "crashed or stopped" if status == QProcess.ExitStatus.CrashExit else "exited")


def _server_main(argv: list[str]) -> int:
    """Entry of the worker processes: ``python -m app.jobs --render-server FD`` / ``--inference-server FD``."""
    from multiprocessing.connection import Connection

    servers = {"--render-server": _render_server, "--inference-server": _inference_server}
    if len(argv) != 2 or argv[0] not in servers:
        print("usage: python -m app.jobs --render-server|--inference-server FD", file=sys.stderr)
        return 2
    if argv[0] == "--inference-server":
        logging.basicConfig(level=logging.WARNING, format="inference process: %(levelname)s %(name)s: %(message)s")
    servers[argv[0]](Connection(int(argv[1])))
    return 0


if __name__ == "__main__":
    # Run the module's functions as ``app.jobs``, not ``__main__``: objects pickled by the app name their
    # classes ``app.jobs.X`` and must be the classes the server code checks against.
    from app.jobs import _server_main as _main

    sys.exit(_main(sys.argv[1:]))
