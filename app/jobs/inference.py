"""The app's inference worker: ``InferenceService`` (GUI-thread API and signals) over a runner thread that is
the client of the inference process (``InferenceClient``), or that runs requests itself with injected
factories (embedding, tests).

Torch's import and initialisation are long C calls that keep the GIL, and a fit competes with the GUI
thread for it, so in-process they stall the GUI however they are threaded: by default the estimator and the
detector live in the inference process (``inference_server``). Each job sends one ``protocol`` request and
blocks on the reply (which releases the GIL).
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import sys
import time
from collections.abc import Callable, Hashable
from typing import Any

from PySide6.QtCore import QObject, Signal

from .inference_server import InferenceContext, build_detector, build_estimator
from .ipc import ImageMirror, InferenceProcessError, end_server, spawn_server
from .protocol import (
    DEFAULT_ESTIMATOR,
    Call,
    CallDone,
    CallProgress,
    Detect,
    Detected,
    DetectedInBox,
    DetectInBox,
    Estimate,
    Estimated,
    Failed,
    SetEstimator,
    WarmUp,
    op_path,
)
from .runner import JobRunner


class InferenceClient:
    """The runner thread's handle on the inference process: started on first use, and again after it died
    (each failure is reported once, as an ``InferenceProcessError`` of the job it broke)."""

    def __init__(self, on_built: Callable[[str], None]):
        self.proc: Any = None
        self.conn: Any = None
        self.images = ImageMirror()
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
                self.proc, self.conn = spawn_server("--inference-server")
            except OSError as e:
                raise InferenceProcessError(f"cannot start the inference process: {e}") from e
            self.images.clear()
            self._sent_spec = DEFAULT_ESTIMATOR
        spec = self.spec
        if spec != self._sent_spec:
            self._exchange(SetEstimator(spec))
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

    def request(self, request: Any) -> Any:
        """Send one ``protocol`` request and wait for its reply (the wait releases the GIL): its value, or for
        a streamed call a generator of its progress messages (closing it stops the call). An ``image`` is
        sent once, then named by token. Errors are raised as they were raised."""
        import dataclasses

        import numpy as np

        self._ensure()
        if isinstance(getattr(request, "image", None), np.ndarray):
            request = dataclasses.replace(request, image=self.images.ref(request.image))
        self._send(request)
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
        end_server(self.proc, self.conn, 5.0)
        self._discard()


class InferenceService(QObject):
    """Estimation, detection and named operations on one background thread (coalescing queue: the latest
    job per key wins).

    Default: the runner thread is the client of an inference process that owns the estimator (built
    from the spec of ``set_estimator(kind, model_path)``, ``protocol.DEFAULT_ESTIMATOR`` first) and the
    detector; the app process never imports torch. With ``estimator_factory`` and/or ``detector_factory``
    (embedding, tests) they are built and run in the runner thread instead (the other one from its default).

    Every job returns a ``protocol`` reply; ``_deliver`` turns each into its signal:
    result_ready(uid, result_or_None, error_message_or_None, seconds), persons_detected(frame, persons),
    person_detected_in_box(frame, person_or_None), error(kind, message), busy_changed(bool),
    estimator_ready(name), generic_finished(key, result), generic_progress(key, value), frame_failed(frame,
    message), call_failed(key, message).
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
    call_failed = Signal(object, str)

    def __init__(self, estimator_factory: Callable[[], Any] | None = None,
                 detector_factory: Callable[[], Any] | None = None, parent: QObject | None = None):
        super().__init__(parent)
        self.runner = JobRunner("inference", self)
        self._spec: tuple[str, str | None] = DEFAULT_ESTIMATOR
        self.in_process = estimator_factory is None and detector_factory is None
        self._client: InferenceClient | None = None
        self._ctx: InferenceContext | None = None
        if self.in_process:
            self._client = InferenceClient(self.estimator_ready.emit)
        else:
            self.runner.on_start = preload_native_libraries
            self._ctx = InferenceContext(estimator_factory or (lambda: build_estimator(self._spec)),
                                         detector_factory or build_detector)
        self._requests: dict[int, Any] = {}  # job id -> its request (a failure is reported as the request's)
        self.runner.job_finished.connect(self._on_finished)
        self.runner.job_failed.connect(self._on_failed)
        self.runner.job_cancelled.connect(lambda _k, job_id: self._requests.pop(job_id, None))
        self.runner.busy_changed.connect(self.busy_changed)
        self.runner.job_progress.connect(lambda _k, _i, reply: self._deliver(reply))
        self.last_seconds = 0.0  # the last fit, in the worker (benchmarks)
        self.last_round_trip = 0.0  # the last estimation request, sent to answered (runner thread; benchmarks)
        self._faces: list = []  # recent distinct faces arrays (runner thread), see _share_faces

    # worker thread --------------------------------------------------------------------
    def _do(self, request: Any) -> Any:
        """Run one request (in the runner thread): in the inference process, or here."""
        if self._client is not None:
            return self._client.request(request)
        assert self._ctx is not None
        try:
            return request.run(self._ctx)
        finally:
            for name in self._ctx.take_built():
                self.estimator_ready.emit(name)

    def _share_faces(self, results: tuple) -> tuple:
        """Results whose faces equal those of an earlier result get that array (one body model's persons
        share one array): a render request of all persons then pickles their faces once, not per person."""
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
        return tuple(out)

    def _submit(self, key: Hashable, request: Any, job: Callable[[], Any] | None = None) -> int:
        job_id = self.runner.submit(key, job or (lambda: self._do(request)))
        self._requests[job_id] = request
        return job_id

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
        self._submit(("warm-up",), WarmUp())

    def _estimate(self, key: Hashable, request: Estimate) -> int:
        def job() -> Estimated:
            t0 = time.perf_counter()
            reply = self._do(request)
            self.last_round_trip = time.perf_counter() - t0  # the fit plus sending, pickling and waking up
            return dataclasses.replace(reply, results=self._share_faces(reply.results))

        return self._submit(key, request, job)

    def estimate(self, uid: int, image: Any, person: Any, camera: Any = None, previous: Any = None,
                 frame: int = -1) -> int:
        """Re-estimate person ``uid`` (coalesced: only the latest request per uid runs)."""
        prev = None if previous is None else (previous,)
        return self._estimate(("estimate", uid), Estimate(frame, (uid,), image, (person,), camera, prev, single=True))

    def estimate_many(self, frame: int, uids: list[int], image: Any, persons: list, camera: Any = None,
                      previous: list | None = None, slot: Hashable | None = None) -> int:
        """Estimate several persons of one frame in one call (the fitter batches them: much faster than
        one job per person). One ``result_ready`` per uid."""
        for u in uids:  # a pending single-person job is superseded by this one
            self.runner.cancel(("estimate", u))
        request = Estimate(frame, tuple(uids), image, tuple(persons), camera,
                           None if previous is None else tuple(previous))
        return self._estimate(("estimate-frame", frame if slot is None else slot), request)

    def detect(self, frame: int, image: Any, slot: Hashable | None = None) -> int:
        """Detect persons on ``frame``; jobs sharing a ``slot`` (e.g. "auto" while scrubbing a video)
        coalesce, else one job per frame. → ``persons_detected(frame, persons)``."""
        return self._submit(("detect", frame if slot is None else slot), Detect(frame, image))

    def detect_in_box(self, frame: int, image: Any, box: Any) -> int:
        return self._submit(("detect-box", frame), DetectInBox(frame, image, box))

    def call(self, key: Hashable, op: Callable[..., Any] | str, *args: Any) -> int:
        """Run the named operation ``op(ctx, *args)`` (a module-level function, or its "module:function"
        path; picklable arguments) in the worker; the result comes back in ``generic_finished(key,
        result)``, each ``yield`` of a generator operation in ``generic_progress(key, value)``."""
        request = Call(key, op_path(op), tuple(args))

        def job() -> Any:
            out = self._do(request)
            if not inspect.isgenerator(out):
                return CallDone(key, out)
            return _stream(key, out)

        return self._submit(("call", key), request, job)

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

    # replies -> signals (GUI thread) --------------------------------------------------
    def _on_finished(self, key: Any, job_id: int, reply: Any) -> None:
        self._requests.pop(job_id, None)
        self._deliver(reply)

    def _on_failed(self, key: Any, job_id: int, message: str, exc: Any) -> None:
        request = self._requests.pop(job_id, None)
        if request is not None:
            self._deliver(request.failed(message))
        else:  # starting the process
            self.error.emit(str(key[0] if isinstance(key, tuple) else key), message)

    def _deliver(self, reply: Any) -> None:
        match reply:
            case Estimated(uids=uids, results=results, seconds=secs):
                self.last_seconds = secs
                for uid, res in zip(uids, results):
                    if isinstance(res, Exception):
                        self.result_ready.emit(uid, None, str(res), secs)
                    else:
                        self.result_ready.emit(uid, res, None, secs)
            case Detected(frame=frame, persons=persons):
                self.persons_detected.emit(frame, list(persons))
            case DetectedInBox(frame=frame, person=person):
                self.person_detected_in_box.emit(frame, person)
            case CallProgress(key=key, value=value):
                self.generic_progress.emit(key, value)
            case CallDone(key=key, value=value):
                self.generic_finished.emit(key, value)
            case Failed(kind=kind, frame=frame, uids=uids, message=message, key=key):
                if kind == "call":
                    self.call_failed.emit(key, message)
                elif kind == "estimate":
                    for uid in uids:
                        self.result_ready.emit(uid, None, message, 0.0)
                elif kind == "estimate-frame":
                    self.frame_failed.emit(frame if isinstance(frame, int) else -1, message)
                self.error.emit(kind, message)
            case None:
                pass  # warm-up, start


def _stream(key: Hashable, out: Any) -> Any:
    """A streamed call as progress replies; its return value (``JobRunner``'s result) is a ``CallDone``
    with the last value. Closing it (a cancelled job) closes the call."""
    last = None
    try:
        for value in out:
            last = value
            yield CallProgress(key, value)
    finally:
        out.close()
    return CallDone(key, last)


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

