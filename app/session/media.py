"""Media and persons: opening an image, a video or the demo scene; detecting persons on new frames (tracked
on video); what to do when the shown frame changes; a person detected inside a box the user drew."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from PySide6.QtCore import QObject, Signal

from dpmesh_core.errors import DPMeshError
from dpmesh_core.types import Person

from .. import ops
from ..document import Document
from ..jobs.inference import InferenceService
from .estimation import EstimationController
from .overlay import OverlayController

DEMO_KEY = "demo"


def _api() -> Any:
    from dpmesh_core import api

    return api


class MediaController(QObject):
    """Signals: media_loaded(name), detection_done(frame, n), person_in_box(frame, person or None),
    opened() (media is shown: the background processes may start), message(str), error(title, text)."""

    media_loaded = Signal(str)
    detection_done = Signal(int, int)
    person_in_box = Signal(int, object)
    opened = Signal()
    message = Signal(str)
    error = Signal(str, str)

    def __init__(self, doc: Document, inference: InferenceService, estimation: EstimationController,
                 overlay: OverlayController, parent: QObject | None = None):
        super().__init__(parent)
        self.doc = doc
        self.inference = inference
        self.estimation = estimation
        self.overlay = overlay
        self.auto_detect = True
        self.detected_frames: set[int] = set()
        self._pending_detect: set[int] = set()
        self._auto_pending: set[int] = set()
        doc.frame_changed.connect(self._on_frame_changed)
        inference.persons_detected.connect(self._on_detected)
        inference.person_detected_in_box.connect(self.person_in_box)
        inference.generic_finished.connect(self._on_demo)
        inference.error.connect(self._on_error)

    def _reset(self) -> None:
        self.inference.cancel_all()
        self.estimation.cancel_restore()
        self.detected_frames.clear()
        self._pending_detect.clear()

    # ------------------------------------------------------------------ opening
    def open_media(self, path: str | os.PathLike) -> None:
        """Open an image or a video. Raises MediaError (nothing changes)."""
        media = _api().open_media(Path(path))  # raises MediaError naming the file
        self._reset()
        self.doc.project_path = None
        self.doc.set_media(media)
        self.media_loaded.emit(str(path))
        if self.auto_detect:
            self.detect_frame(0)
        self.overlay.prepare()
        self.opened.emit()

    def close_media(self) -> None:
        """File ▸ New: no media, nothing to work on (the caller asked about unsaved work)."""
        self._reset()
        self.doc.project_path = None
        self.doc.settings = {}
        self.doc.set_media(None)
        self.media_loaded.emit("")

    def set_project_media(self, media: Any, detected_frames: set[int]) -> None:
        """A project's media, its frames already detected (``ProjectController``)."""
        self.inference.cancel_all()
        self.doc.set_media(media)
        self.detected_frames = set(detected_frames)

    def open_image_array(self, image: np.ndarray, persons: list[Person] | None = None, name: str = "demo") -> None:
        """Show an in-memory image (e.g. the demo scene) with given persons (or detect them)."""
        self._reset()
        self.doc.project_path = None
        self.doc.set_media(None, image=image)
        self.doc.settings["title"] = name
        self.media_loaded.emit(name)
        if persons is not None:
            self.detected_frames.add(0)
            self.doc.set_frame_persons(0, list(persons))
            self.estimation.estimate_all(0)
        elif self.auto_detect:
            self.detect_frame(0)
        self.opened.emit()

    def open_demo(self) -> None:
        """Build (or load from cache) the project's demo scene in the worker, then show it.

        The image is also written as a PNG in the app's data folder, so the demo behaves like any opened
        photo (projects, autosave and exports need a media file)."""
        from PySide6.QtCore import QStandardPaths

        folder = Path(QStandardPaths.writableLocation(QStandardPaths.StandardLocation.AppDataLocation) or ".")
        if os.environ.get("DPMESH_HOME"):
            folder = Path(os.environ["DPMESH_HOME"]) / "data"
        target = folder / "demo" / "demo_scene.png"
        self.message.emit("Preparing the demo scene (first time: builds the body model cache)…")
        self.inference.call(DEMO_KEY, ops.demo_scene, str(target))

    def _on_demo(self, key: Any, result: Any) -> None:
        if key != DEMO_KEY:
            return
        image, persons, path = result
        if path is not None:
            auto, self.auto_detect = self.auto_detect, False  # the demo brings its own persons
            try:
                self.open_media(path)
            except DPMeshError:
                path = None
            finally:
                self.auto_detect = auto
        if path is None:
            self.open_image_array(image, persons, name="Demo scene")
        else:
            self.detected_frames.add(0)
            self.doc.set_frame_persons(0, list(persons))
            self.estimation.estimate_all(0)
        self.message.emit("Demo scene: two people, one partly hidden. Drag key-points to correct them.")

    # ------------------------------------------------------------------ detection
    def detect_frame(self, frame: int | None = None, force: bool = False, auto: bool = False) -> None:
        """Detect persons on ``frame``. ``auto`` (frame changes while scrubbing/playing a video): such
        requests coalesce, so only the frame the user stopped on is detected."""
        f = self.doc.current_frame if frame is None else frame
        if not force and (f in self.detected_frames or f in self._pending_detect):
            return
        img = self.doc.image(f)
        if img is None:
            return
        if auto:
            self._pending_detect = {x for x in self._pending_detect if x not in self._auto_pending}
            self._auto_pending = {f}
        self._pending_detect.add(f)
        self.inference.detect(f, img, slot="auto" if auto else None)
        self.message.emit(f"Detecting persons on frame {f}…" if self.doc.is_video else "Detecting persons…")

    def detect_in_box(self, box: Any) -> None:
        """Detect the person inside ``box`` (x0, y0, x1, y1 pixels) of the shown frame → ``person_in_box``."""
        img = self.doc.image()
        if img is not None:
            self.inference.detect_in_box(self.doc.current_frame, img, box)

    def _on_detected(self, frame: int, persons: list[Person]) -> None:
        self._pending_detect.discard(frame)
        self._auto_pending.discard(frame)
        self.detected_frames.add(frame)
        if self.doc.persons(frame) and frame in self._user_touched_frames():
            return  # never overwrite the user's work with a late detection
        if self.doc.is_video:
            persons = self._track(frame, persons)
        self.doc.set_frame_persons(frame, persons)
        if self.estimation.live:
            self.estimation.estimate_all(frame, auto=self.doc.is_video)
        self.detection_done.emit(frame, len(persons))
        self.message.emit(f"{len(persons)} person(s) found." + (" Estimating meshes…" if persons else
                                                                 " Draw a box (B) to add one."))

    def _user_touched_frames(self) -> set[int]:
        return {f for f in self.doc.frames_with_persons() if any(p.source == "user" for p in self.doc.persons(f))}

    def _track(self, frame: int, persons: list[Person]) -> list[Person]:
        """Track ids for a frame detected on its own (the user scrubbed or stepped to it): those of the
        nearest tracked frame where the core tracker matches them, else new ids of this document (scrubbing
        back and forth invents no new tracks; the whole-video job tracks every frame in order)."""
        from ..tracks import assign_from_neighbours

        return assign_from_neighbours(self.doc, frame, persons, _api().Tracker)

    def _on_error(self, kind: str, message: str) -> None:
        if kind == "detect":
            self._pending_detect.clear()
            self.error.emit("Detection failed", message)
        elif kind == "detect-box":
            self.error.emit("Detection in box failed", message)

    # ------------------------------------------------------------------ navigation
    def _on_frame_changed(self, frame: int) -> None:
        if self.doc.is_video and self.auto_detect and not self.doc.persons(frame):
            self.detect_frame(frame, auto=True)
        else:
            self.estimation.estimate_missing(frame)  # (a frame whose saved meshes are on their way waits)
        self.overlay.request(frame)
