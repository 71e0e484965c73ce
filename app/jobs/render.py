"""Mesh rendering off the GUI thread: ``RenderService`` (render threads) and ``RenderClient`` (a render
thread's handle on its render process, see ``render_server``)."""

from __future__ import annotations

import logging
import time
from collections.abc import Hashable
from typing import Any

from PySide6.QtCore import QObject, Signal

from .ipc import ImageMirror, SharedPicturesReader, end_server, spawn_server
from .protocol import PrepareRenderer, RenderOverlay, RenderScene, RenderView, map_arrays
from .render_server import ARRAY_SLOTS, BACKGROUND
from .runner import JobRunner

log = logging.getLogger(__name__)


#: niceness of the 3-D view's render process relative to the app (the overlay's process and the inference
#: process keep the app's priority)
VIEW_NICE = 10


class RenderClient:
    """The render thread's handle on the render process (started on first use, restarted never: if it
    dies, rendering falls back to the numpy rasteriser in the render thread)."""

    def __init__(self, nice: int = 0) -> None:
        self.nice = int(nice)  # see ipc.spawn_server
        self.proc: Any = None
        self.conn: Any = None
        self.failed = False
        self.arrays = ImageMirror(ARRAY_SLOTS)  # the image and mesh arrays the process has (sent once)
        self.pictures = SharedPicturesReader()  # large replies come through shared memory
        self.last_server_seconds = 0.0  # the render process's own time on the last request (benchmarks)
        self._fallback: dict[tuple[int, int], Any] = {}

    def _start(self) -> None:
        self.proc, self.conn = spawn_server("--render-server", nice=self.nice)

    def start(self) -> None:
        """Spawn the render process if it is not running (a failure falls back like a dead process)."""
        if self.proc is None and not self.failed:
            try:
                self._start()
            except OSError as e:
                log.warning("render process unavailable (%s); rendering in-process with numpy", e)
                self.failed = True

    def request(self, request: RenderView | RenderScene | RenderOverlay) -> Any:
        if not self.failed:
            try:
                if self.proc is None:
                    self._start()
                self.conn.send(self._by_token(request))
                status, out, self.last_server_seconds = self.conn.recv()
            except (EOFError, OSError, BrokenPipeError) as e:
                log.warning("render process unavailable (%s); rendering in-process with numpy", e)
                self.failed = True
            else:
                if status == "error":
                    self.arrays.clear()  # the process forgot its arrays too
                    raise RuntimeError(out)
                return self.pictures.get(out)
        return request.run_here(self._numpy_renderer)

    def _by_token(self, request: RenderView | RenderScene | RenderOverlay) -> Any:
        """``request`` with the arrays the process already has (unchanged persons, the same image) named by
        token: an edit sends one person's vertices, not the picture and every mesh again."""
        import numpy as np

        try:
            return map_arrays(request, lambda a: self.arrays.ref(a) if isinstance(a, np.ndarray) else a)
        except Exception:
            self.arrays.clear()
            raise

    def _numpy_renderer(self, w: int, h: int) -> Any:
        from dpmesh_core import api

        if (w, h) not in self._fallback:
            self._fallback[(w, h)] = api.MeshRenderer(w, h, backend="numpy", background=BACKGROUND)
        return self._fallback[(w, h)]

    def close(self) -> None:
        if self.proc is not None:
            end_server(self.proc, self.conn, 3.0)
            self.conn.close()
            self.proc = None
        self.pictures.clear()
        for r in self._fallback.values():
            r.close()
        self._fallback.clear()


class RenderService(QObject):
    """Mesh rendering off the GUI thread: render threads (coalescing queues, latest request per key wins)
    that hand each request to a render process owning Open3D (see ``render_server``). The image overlay
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
        self._client = RenderClient()
        # the 3-D view's process runs at a lower priority: a drag's fit and overlay (what the user waits for)
        # get the cores first; the view still renders at full speed when they are idle
        self._view_client = RenderClient(nice=VIEW_NICE)

    def is_busy(self) -> bool:
        return self.runner.is_busy() or self.view_runner.is_busy()

    def start(self) -> None:
        """Start both render processes now (in the background), not on the first render."""
        for runner, client in ((self.runner, self._client), (self.view_runner, self._view_client)):
            runner.submit(("start",), lambda c=client: c.start())  # no "rendered" signal: see _on_finished

    def render_view(self, key: Hashable, meshes: list, camera: Any, view: Any,
                    size: tuple[int, int], scene: Any = None, clip: tuple[float, float] | None = None,
                    lod: bool = False) -> int:
        """Render ``meshes`` [(V (N, 3) m, faces (F, 3), rgb 0..1)] seen by ``camera`` after the (4, 4)
        ``view`` transform, at ``size`` (w, h) pixels; with ``scene`` (the 3-D view's ``api.Scene``, persons
        without arrays) and ``clip`` (near, far): ``api.render_scene``'s picture (ground, frustum, labels),
        the persons at their reduced level of detail with ``lod`` (while the view moves or plays)."""
        if scene is not None:
            request: Any = RenderScene(tuple(meshes), camera, view, tuple(size), scene, tuple(clip or (0.01, 1e3)),
                                       bool(lod))
        else:
            request = RenderView(tuple(meshes), camera, view, tuple(size))

        def job() -> tuple[Any, float]:
            t0 = time.perf_counter()
            img = self._view_client.request(request)
            return img, time.perf_counter() - t0

        return self.view_runner.submit(key, job)

    def render_overlay(self, key: Hashable, image: Any, results: list, alpha: float = 0.6,
                       colors: list | None = None, playing: bool = False) -> int:
        """The meshes of ``results`` (MeshResults; None entries are skipped) blended over ``image`` (H, W, 3)
        uint8; ``colors``: RGB 0..1 per result (default: the persons' palette by position); ``playing``: a
        frame of a playing video (all persons in one pass, see ``protocol.RenderOverlay``)."""
        from dpmesh_core.types import MeshResult

        from ..palette import person_rgb01

        cols = list(colors) if colors else [person_rgb01(i + 1) for i in range(len(results))]
        meshes = tuple((r.vertices, r.faces, tuple(cols[i % len(cols)])) for i, r in enumerate(results)
                       if isinstance(r, MeshResult))
        camera = next((r.camera for r in results if isinstance(r, MeshResult)), None)
        request = RenderOverlay(image, meshes, camera, float(alpha), bool(playing))

        def job() -> tuple[Any, float]:
            t0 = time.perf_counter()
            img = self._client.request(request)
            return img, time.perf_counter() - t0

        return self.runner.submit(key, job)

    def prepare_overlay(self, size: tuple[int, int]) -> None:
        """Create the overlay's renderer for pictures of ``size`` (w, h) in the background (a new photo: its
        first overlay then does not wait for an Open3D window; no "rendered" signal)."""
        request = PrepareRenderer((int(size[0]), int(size[1])))
        self.runner.submit(("prepare", tuple(size)), lambda: self._client.request(request))

    def _on_finished(self, key: Any, job_id: int, result: Any) -> None:
        if key == ("start",) or (isinstance(key, tuple) and key and key[0] == "prepare"):
            return
        img, secs = result
        self.rendered.emit(key, img, secs)

    def shutdown(self) -> None:
        self.runner.stop()
        self.view_runner.stop()
        self._client.close()
        self._view_client.close()
