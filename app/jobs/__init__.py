"""Background work: the only package of the app that touches threads and processes.

* ``runner``: ``JobRunner``, a ``QThread`` with a coalescing queue (the latest job per key wins).
* ``protocol``: the frozen request / reply dataclasses between the app and its inference worker (no Qt).
* ``ipc``: worker processes, sockets, images sent by token, portable exceptions (no Qt).
* ``inference_server``: the inference process's loop and the context owning the estimator (no Qt).
* ``inference``: ``InferenceService``, the GUI-thread API of estimation, detection and named operations.
* ``render_server`` / ``render``: the render process (Open3D, overlay layer cache) and ``RenderService``.
* ``training``: ``TrainingProcess``, ``dpmesh train --json`` in a ``QProcess``.

Names are loaded on first use (PEP 562), so that ``python -m app.jobs`` (the worker processes) never loads
the Qt modules.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "JobRunner": "runner",
    "InferenceService": "inference",
    "InferenceClient": "inference",
    "preload_native_libraries": "inference",
    "InferenceContext": "inference_server",
    "build_estimator": "inference_server",
    "build_detector": "inference_server",
    "InferenceProcessError": "ipc",
    "RemoteError": "ipc",
    "RenderService": "render",
    "make_renderer": "render_server",
    "TrainingProcess": "training",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{mod}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
