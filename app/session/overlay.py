"""Pictures of the meshes: the image overlay of the shown frame (one render request per batch of new
results) and the 3-D mesh view's renders, both on the render threads (``RenderService``)."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

from PySide6.QtCore import QObject, QTimer, Signal

from ..document import Document
from ..jobs.inference import InferenceService
from ..jobs.render import RenderService
from ..palette import mesh_rgb01

OVERLAY_KEY = "overlay"


class OverlayController(QObject):
    """Signals: overlay_ready(frame, rgb or None), view_rendered(key, rgb, seconds), idle() (no overlay
    render and no estimation under way: the 3-D view may take the CPU), error(message)."""

    overlay_ready = Signal(int, object)
    view_rendered = Signal(object, object, float)
    idle = Signal()
    error = Signal(str)

    def __init__(self, doc: Document, render: RenderService, inference: InferenceService,
                 parent: QObject | None = None):
        super().__init__(parent)
        self.doc = doc
        self.render = render
        self.inference = inference
        self.alpha = 0.6
        self.playing = False  # a video plays: its frames' overlays are drawn in one pass (set_playing)
        self._played_s = 0.0  # how long the last played frame's overlay took (this Play)
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(0)
        self._timer.timeout.connect(lambda: self.request(self.doc.current_frame))
        doc.results_changed.connect(self._on_results_changed)
        render.rendered.connect(self._on_rendered)
        render.error.connect(lambda m: self.error.emit(f"Mesh rendering failed: {m}"))
        for runner in (render.runner, inference.runner):
            runner.busy_changed.connect(lambda busy: None if busy else self._maybe_idle())
        self._waits_for_view = False  # a played frame's overlay waits for the 3-D view's picture (request)
        self._its_turn = False  # ... and goes next once that picture is done, even if another is asked for
        render.view_runner.busy_changed.connect(lambda busy: None if busy else self._view_done())

    def _on_results_changed(self, frame: int) -> None:
        if frame == self.doc.current_frame:
            self._timer.start()  # a batch of results → one overlay request

    def pending(self) -> bool:
        """An image-overlay render is queued, running or about to be requested, or an estimation (whose
        result will need one) is on its way: the 3-D view waits for these (see ``MeshView``)."""
        return self._timer.isActive() or self.render.runner.is_busy() or self.inference.runner.is_busy()

    def _maybe_idle(self) -> None:
        if not self.pending():
            self.idle.emit()

    def prepare(self) -> None:
        """The current media's overlay renderer, made ready in the background (see ``RenderService.prepare_overlay``)."""
        img = self.doc.image()
        if img is not None:
            self.render.prepare_overlay((img.shape[1], img.shape[0]))

    def set_playing(self, on: bool) -> None:
        """Play started or stopped (``FramesController.playing_changed``); stopped, the frame shown gets its
        overlay from the per-person layers again (as every still frame)."""
        was, self.playing = self.playing, bool(on)
        if self.playing and not was:
            self._played_s = 0.0  # the first played frame's overlay tells how long one takes
        if was and not self.playing:
            self._waits_for_view = self._its_turn = False
            self._timer.start()

    def _view_done(self) -> None:
        if self._waits_for_view:
            self._waits_for_view, self._its_turn = False, True
            self._timer.start()

    def request(self, frame: int) -> None:
        """Render the overlay of ``frame`` (→ ``overlay_ready``; None at once when it has no mesh). While a
        video plays and the 3-D view is drawing, the overlay waits for its picture and then draws the frame
        shown at that moment: the two take turns. (The 3-D view's process runs at a lower priority, so that
        it yields to an edit's fit and overlay; during Play, with an overlay always due, it would get no
        time at all: 3-5 pictures a second for 10 persons.)"""
        if self.playing and self._played_s > 1.0 / self.doc.fps:
            # a played frame's overlay takes longer than a frame stays on screen: it would come after the next
            # frame replaced its own and be dropped (10 persons at 1280x720, 50 fps: every one of them), so
            # none is drawn while this Play lasts; the frame Play stops on gets its overlay
            return
        if self.playing and not self._its_turn and self.render.view_runner.is_busy():
            self._waits_for_view = True
            return
        self._its_turn = False
        img = self.doc.image(frame)
        if img is None:
            return
        uids, results = self.doc.uids(frame), self.doc.results(frame)
        meshes = [r for r in results if r is not None]
        if not meshes:
            self.overlay_ready.emit(frame, None)
            return
        colors = [mesh_rgb01(self.doc, u) for u, r in zip(uids, results) if r is not None]  # track colour
        self.render.render_overlay((OVERLAY_KEY, frame), img, meshes, alpha=self.alpha, colors=colors,
                                   playing=self.playing)

    def render_view(self, key: Hashable, meshes: list, camera: Any, view: Any, size: tuple[int, int],
                    scene: Any = None, clip: tuple[float, float] | None = None, lod: bool = False) -> None:
        """A 3-D view picture (see ``RenderService.render_view``) → ``view_rendered(key, rgb, seconds)``."""
        if scene is None:
            self.render.render_view(key, meshes, camera, view, size)
        else:
            self.render.render_view(key, meshes, camera, view, size, scene=scene, clip=clip, lod=lod)

    def _on_rendered(self, key: Any, rgb: Any, secs: float) -> None:
        if isinstance(key, tuple) and key[0] == OVERLAY_KEY:
            if self.playing:
                self._played_s = float(secs)
            if key[1] == self.doc.current_frame:
                self.overlay_ready.emit(key[1], rgb)
        else:
            self.view_rendered.emit(key, rgb, secs)
