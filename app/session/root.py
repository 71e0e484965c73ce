"""The composition root of the app's back end: builds the Document, the background services and one
controller per concern, wires them, and offers the GUI one object to hold.

Widgets and the main window talk to the controllers (``session.media``, ``.estimation``, ``.overlay``,
``.video``, ``.projects``, ``.frames``) or to the Session's own methods, which only delegate; never to the job runners.
Kept free of widgets so tests drive the exact code the window uses.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
from PySide6.QtCore import QObject, QTimer, Signal

from dpmesh_core import api
from dpmesh_core.types import Person

from ..document import Document
from ..jobs.inference import InferenceService
from ..jobs.render import RenderService
from ..runtime import pin_singletons
from .estimation import EstimationController
from .frames import FramesController
from .media import MediaController
from .overlay import OverlayController
from .projects import PROJECT_EXT, ProjectController
from .video import VideoController


class Session(QObject):
    """Owns the Document, the inference and render services and the controllers.

    Signals (gathered from the controllers): overlay_ready(frame, rgb), busy_changed(bool), message(str),
    error(title, text), result_timing(uid, seconds), detection_done(frame, n), media_loaded(str),
    video_progress(frame, n).
    """

    overlay_ready = Signal(int, object)
    busy_changed = Signal(bool)
    message = Signal(str)
    error = Signal(str, str)
    result_timing = Signal(int, float)
    detection_done = Signal(int, int)
    media_loaded = Signal(str)
    video_progress = Signal(int, int)

    def __init__(self, doc: Document | None = None, inference: InferenceService | None = None,
                 render: RenderService | None = None, parent: QObject | None = None):
        pin_singletons()  # PySide6's emit drops references to True/None: see app.runtime
        super().__init__(parent)
        self.doc = doc or Document(self)
        self.inference = inference or InferenceService(parent=self)
        self.render = render or RenderService(self)
        self.estimation = EstimationController(self.doc, self.inference, self)
        self.overlay = OverlayController(self.doc, self.render, self.inference, self)
        self.media = MediaController(self.doc, self.inference, self.estimation, self.overlay, self)
        self.projects = ProjectController(self.doc, self.media, self.estimation, self.overlay, self)
        self.video = VideoController(self.doc, self.inference, self.media, self.estimation, self)
        self.frames = FramesController(self.doc, parent=self)  # the video's frames, decoded off the GUI thread
        self.frames.playing_changed.connect(self.overlay.set_playing)
        self._busy = {"inference": False, "render": False}
        self._background_started = False
        self.last_release_time: float | None = None
        for c in (self.estimation, self.media, self.projects, self.video, self.frames):
            c.message.connect(self.message)
        for c in (self.estimation, self.media, self.projects):
            c.error.connect(self.error)
        self.overlay.error.connect(self.message)
        self.overlay.overlay_ready.connect(self.overlay_ready)
        self.estimation.result_timing.connect(self.result_timing)
        self.estimation.restored.connect(self.overlay.request)
        self.media.detection_done.connect(self.detection_done)
        self.media.media_loaded.connect(self.media_loaded)
        self.media.opened.connect(self.start_background)
        self.video.video_progress.connect(self.video_progress)
        self.inference.error.connect(self._on_inference_error)
        self.inference.busy_changed.connect(lambda b: self._set_busy("inference", b))
        self.render.busy_changed.connect(lambda b: self._set_busy("render", b))

    # ------------------------------------------------------------------ lifecycle
    def start_background(self) -> None:
        """Start the inference and render processes and build the estimator there, after the window shows."""
        if self._background_started:
            return
        self._background_started = True
        self.inference.start()
        self.render.start()
        self.inference.warm_up()
        # the GUI's own lazily imported modules (OpenCV, the 3-D scene), while idle: not on a drag's first update
        QTimer.singleShot(0, api.warm_imports)

    def shutdown(self) -> None:
        self.projects.stop_autosave()
        self.inference.shutdown()
        self.render.shutdown()
        self.frames.close()
        if self.doc.media is not None and hasattr(self.doc.media, "close"):
            self.doc.media.close()

    def _set_busy(self, what: str, busy: bool) -> None:
        before = any(self._busy.values())
        self._busy[what] = busy
        after = any(self._busy.values())
        if before != after:
            self.busy_changed.emit(after)

    def is_busy(self) -> bool:
        return any(self._busy.values()) or self.inference.runner.is_busy() or self.render.is_busy()

    def _on_inference_error(self, kind: str, message: str) -> None:
        if kind == "call":
            self.error.emit("Operation failed", message)

    def note_release(self) -> None:
        """Benchmarks: remember when the user released a dragged joint."""
        self.last_release_time = time.perf_counter()

    # ------------------------------------------------------------------ settings (held by their controllers)
    @property
    def auto_detect(self) -> bool:
        return self.media.auto_detect

    @auto_detect.setter
    def auto_detect(self, on: bool) -> None:
        self.media.auto_detect = bool(on)

    @property
    def live_inference(self) -> bool:
        return self.estimation.live

    @live_inference.setter
    def live_inference(self, on: bool) -> None:
        self.estimation.live = bool(on)

    @property
    def smooth_video(self) -> bool:
        return self.estimation.smooth_video

    @smooth_video.setter
    def smooth_video(self, on: bool) -> None:
        self.estimation.smooth_video = bool(on)

    @property
    def estimator_kind(self) -> str:
        return self.estimation.kind

    @property
    def overlay_alpha(self) -> float:
        return self.overlay.alpha

    @overlay_alpha.setter
    def overlay_alpha(self, a: float) -> None:
        self.overlay.alpha = float(a)

    # ------------------------------------------------------------------ delegation (the GUI's verbs)
    def open_path(self, path: str | os.PathLike) -> None:
        """Open an image, a video or a project file. Raises MediaError / ProjectFileError (nothing changes)."""
        if Path(path).suffix.lower() == PROJECT_EXT:
            self.projects.load_project(path)
        else:
            self.media.open_media(path)

    def open_image_array(self, image: np.ndarray, persons: list[Person] | None = None, name: str = "demo") -> None:
        self.media.open_image_array(image, persons, name)

    def open_demo(self) -> None:
        self.media.open_demo()

    def detect_frame(self, frame: int | None = None, force: bool = False, auto: bool = False) -> None:
        self.media.detect_frame(frame, force, auto)

    def estimate_all(self, frame: int | None = None, auto: bool = False, only_missing: bool = False) -> None:
        self.estimation.estimate_all(frame, auto, only_missing)

    def set_estimator(self, kind: str, model_path: str | None = None) -> None:
        self.estimation.set_estimator(kind, model_path)

    def overlay_pending(self) -> bool:
        return self.overlay.pending()

    def save_project(self, path: str | os.PathLike) -> Path:
        return self.projects.save_project(path)

    def load_project(self, path: str | os.PathLike, media_override: str | os.PathLike | None = None) -> bool:
        return self.projects.load_project(path, media_override)

    def autosave(self) -> Path | None:
        return self.projects.autosave()

    def start_autosave(self, interval_s: int | None = None) -> None:
        self.projects.start_autosave(interval_s)

    def recovery_files(self) -> list[Path]:
        return self.projects.recovery_files()

    def recover(self, path: str | os.PathLike) -> bool:
        return self.projects.recover(path)

    def stem(self) -> str:
        return self.projects.stem()

    def export_meshes(self, out_dir: str | os.PathLike, which: str = "all",
                      formats: tuple[str, ...] = ("obj",)) -> list[Path]:
        return self.projects.export_meshes(out_dir, which, formats)

    def export_keypoints(self, path: str | os.PathLike) -> Path:
        return self.projects.export_keypoints(path)

    def process_video(self, stride: int = 1, start: int = 0, stop: int | None = None) -> bool:
        return self.video.process_video(stride, start, stop)

    def cancel_video(self) -> None:
        self.video.cancel_video()

    def propagate_corrections(self, uid: int, after_last: int = 0) -> int:
        return self.video.propagate_corrections(uid, after_last)


__all__ = ["Session", "PROJECT_EXT"]
