"""The inference worker's side: the context that owns the estimator and the detector, and the main loop of
the inference process (``python -m app.jobs --inference-server FD``).

Imports no Qt (tested: the process never loads PySide6) and no torch at import time (the estimator and the
detector load torch when they are first built). The same ``serve`` code answers the in-thread worker of
``InferenceService`` with injected factories, through ``InferenceContext``.
"""

from __future__ import annotations

import functools
import inspect
import logging
import traceback
from collections.abc import Callable
from typing import Any

from dpmesh_core.errors import DPMeshError

from .ipc import ConnectionLost, ImageRef, ImageSlots, portable, portable_value
from .protocol import DEFAULT_ESTIMATOR

log = logging.getLogger(__name__)


def build_estimator(spec: tuple[str, str | None]) -> Any:
    """``api.make_estimator(kind, model_path=...)`` from a picklable spec ``(kind, model_path)``."""
    from dpmesh_core import api

    kind, model_path = spec
    return api.make_estimator(kind, model_path=model_path)


def build_detector(name: str | None = None) -> Any:
    """The detector the user's settings choose (``api.configured_detector``: YOLO11n-pose, or their mmpose
    model from the Models dialog); ``name`` forces one by name (``api.get_detector``)."""
    from dpmesh_core import api

    return api.get_detector(name) if name else api.configured_detector()


class InferenceContext:
    """The estimator and the detector a worker (the inference process or thread) owns, each built on first
    use from its factory. Requests (``protocol``) and named operations (``app.ops``) receive it."""

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

    def set_estimator_spec(self, spec: tuple[str, str | None]) -> None:
        self.set_estimator_factory(functools.partial(build_estimator, tuple(spec)))

    def take_built(self) -> list[str]:
        out, self.built = self.built, []
        return out


def resolve_images(request: Any, slots: ImageSlots) -> Any:
    """``request`` with an ``ImageRef`` in its ``image`` field replaced by the image."""
    import dataclasses

    image = getattr(request, "image", None)
    if isinstance(image, ImageRef):
        return dataclasses.replace(request, image=slots.resolve(image))
    return request


def serve(conn: Any) -> None:
    """Main loop of the inference process: owns the estimator and the detector (built from picklable
    specs on first use).

    Messages in: a ``protocol`` request (its ``image`` possibly an ``ImageRef``); ``None`` ends the loop.
    Replies: ("ok", value, built) / ("error", exception, built), where ``built`` lists the estimators built
    meanwhile; a streamed call sends ("progress", value, built) for each ``yield`` and then waits for
    "next" (go on) or anything else (stop: it answers ("stopped", None, built)). Exceptions travel as
    ``ipc.portable`` ones.
    """
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C in a terminal is for the app, which stops us
    ctx = InferenceContext(functools.partial(build_estimator, DEFAULT_ESTIMATOR), build_detector)
    slots = ImageSlots()
    while True:
        try:
            msg = conn.recv()
            if msg is None:
                break
            serve_request(conn, ctx, slots, msg)
        except (ConnectionLost, EOFError, OSError):
            break


def serve_request(conn: Any, ctx: InferenceContext, slots: ImageSlots, request: Any) -> None:
    """Answer one request of the inference process (see ``serve``)."""

    def send(reply: tuple) -> None:
        try:
            conn.send(reply)
        except (OSError, BrokenPipeError) as e:
            raise ConnectionLost from e

    def recv() -> Any:
        try:
            return conn.recv()
        except (EOFError, OSError) as e:
            raise ConnectionLost from e

    try:
        out = resolve_images(request, slots).run(ctx)
        if inspect.isgenerator(out):
            for value in out:
                send(("progress", portable_value(value), ctx.take_built()))
                if recv() != "next":
                    out.close()
                    send(("stopped", None, ctx.take_built()))
                    break
            else:
                send(("ok", None, ctx.take_built()))
        else:
            send(("ok", portable_value(out), ctx.take_built()))
    except ConnectionLost:
        raise
    except Exception as e:  # noqa: BLE001 - reported to the app, the server keeps serving
        if not isinstance(e, DPMeshError):
            log.error("inference request failed:\n%s", traceback.format_exc())
        send(("error", portable(e), ctx.take_built()))
