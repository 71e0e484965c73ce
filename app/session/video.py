"""The whole-video job and Play: the core frame pipeline (``api.FramePipeline``, through ``ops.process_video``,
the same loop as ``dpmesh predict``) in the inference worker, its frames landing in the Document as they
come; key-frame interpolation (``app.keyframes``)."""

from __future__ import annotations

import dataclasses
from typing import Any

from PySide6.QtCore import QObject, Signal

from dpmesh_core.types import MeshResult, Person

from .. import keyframes, ops
from ..document import Document
from ..jobs.inference import InferenceService
from .estimation import EstimationController
from .media import MediaController

VIDEO_KEY = "video"


class VideoController(QObject):
    """Signals: video_progress(frame, number of frames), message(str), running_changed(bool)."""

    video_progress = Signal(int, int)
    message = Signal(str)
    running_changed = Signal(bool)

    def __init__(self, doc: Document, inference: InferenceService, media: MediaController,
                 estimation: EstimationController, parent: QObject | None = None):
        super().__init__(parent)
        self.doc = doc
        self.inference = inference
        self.media = media
        self.estimation = estimation
        self.running = False
        self.for_play = False  # the running job was started by Play (pausing stops it)
        self.done: set[int] = set()  # frames the pipeline delivered since the media was opened
        self.truncated: tuple | None = None  # ("truncated", frame, processed, expected, message) of the last run
        self._sent: dict[int, list[Person]] = {}  # the Document's persons the job was given (identity: edited?)
        self._skip: set[int] = set()  # lead-in frames (given only to continue tracks): not applied
        self._kept: set[int] = set()  # frames with the user's work: persons and ids kept, meshes re-estimated
        inference.generic_progress.connect(self._on_progress)
        inference.generic_finished.connect(self._on_finished)
        inference.call_failed.connect(self._on_failed)
        doc.media_changed.connect(self._on_media)

    def _on_media(self) -> None:
        self.done.clear()
        self._set_running(False)

    def _set_running(self, on: bool) -> None:
        if on != self.running:
            self.running = on
            self.running_changed.emit(on)
        if not on:
            self.for_play = False

    def process_video(self, stride: int = 1, start: int = 0, stop: int | None = None, for_play: bool = False) -> bool:
        """Run the core frame pipeline over every ``stride``-th frame from ``start`` (to ``stop``, exclusive)
        in the background: detect, track, estimate (warm-started per track) and smooth per track when
        smoothing is on — what ``dpmesh predict`` does. Frames the user already has persons on keep them
        (given to the pipeline instead of detecting; a frame edited meanwhile is not overwritten). Frames
        holding the user's work (a person added or corrected by hand, a key frame, a track swapped, merged or
        split: ``source == "user"`` or edited joints) are kept as they are: their persons go to the pipeline
        with their track ids (pinned, so the tracks around them follow the user's ids) and only their meshes
        are estimated again; the other frames are re-tracked and re-estimated. A run that starts after frame 0
        continues the tracks of the frame before it. Cancel with ``cancel_video``."""
        if not self.doc.is_video or not self.doc.media_path:
            return False
        if self.running:
            self.cancel_video()
        n = self.doc.num_frames
        stride = max(int(stride), 1)
        start = min(max(int(start), 0), max(n - 1, 0))
        frames = set(range(start, n if stop is None else min(int(stop), n), stride))
        self._sent = {f: self.doc.persons(f) for f in self.doc.frames_with_persons() if f in frames}
        # The pipeline tracks given persons like detections (ids stripped): the job's tracks are the CLI's;
        # but a frame with the user's work keeps its ids (pinned) and its persons.
        self._kept = {f for f, ps in self._sent.items() if any(p.source == "user" or p.edited.any() for p in ps)}
        given: dict[int, list[Person]] = {f: list(ps) if f in self._kept else
                                          [dataclasses.replace(p, track_id=None) for p in ps]
                                          for f, ps in self._sent.items()}
        self._skip = set()
        first_id = 0
        lead = start - stride
        if start > 0 or stride > 1:
            first_id = self.doc.next_track_id()  # the job's new tracks take ids never used before
        if start > 0 and lead >= 0 and self.doc.persons(lead) and all(
                p.track_id is not None for p in self.doc.persons(lead)):
            given[lead] = self.doc.persons(lead)  # tracks go on with their ids (pinned)
            self._skip = {lead}
            start = lead
        self.truncated = None
        self.inference.call(VIDEO_KEY, ops.process_video, self.doc.media_path, stride,
                            self.estimation.smooth_video, given, start, first_id, stop)
        self._set_running(True)
        self.for_play = for_play
        self.message.emit("Processing the video: detect, track, estimate each frame (the pipeline of dpmesh "
                          "predict)…")
        return True

    def cancel_video(self) -> None:
        self.inference.runner.cancel(("call", VIDEO_KEY))
        self._set_running(False)

    # ------------------------------------------------------------------ Play
    def play_from(self, frame: int) -> None:
        """Play pressed on ``frame``: unless every later frame was processed, process from there as it
        plays (``frame_ready`` tells the timeline when the next frame can be shown)."""
        if self.running or not self.doc.is_video:
            return
        n = self.doc.num_frames
        todo = [f for f in range(frame, n) if f not in self.done]
        if todo:
            self.process_video(start=todo[0], for_play=True)

    def stop_play(self) -> None:
        """Play paused: a job Play started stops (a whole-video job the user started goes on)."""
        if self.running and self.for_play:
            self.cancel_video()

    def frame_ready(self, frame: int) -> bool:
        """Whether Play can show ``frame``: processed, or nothing is processing."""
        return frame in self.done or not self.running

    # ------------------------------------------------------------------ replies
    def _on_finished(self, key: Any, _result: Any) -> None:
        if key != VIDEO_KEY:
            return
        self._set_running(False)
        if self.truncated is not None:
            _, frame, processed, expected, msg = self.truncated
            self.message.emit(f"The video could not be decoded past frame {frame + 1}: {processed} of {expected} "
                              f"frames processed and kept ({msg}).")
        else:
            self.message.emit("Video processed: every frame has tracked persons and meshes (File ▸ Export).")

    def _on_failed(self, key: Any, message: str) -> None:
        if key == VIDEO_KEY:
            self._set_running(False)

    def _on_progress(self, key: Any, value: Any) -> None:
        if key != VIDEO_KEY:
            return
        if value[0] == "truncated":
            self.truncated = tuple(value)
            return
        _, f, n, persons, results, given, *more = value
        results = [r if isinstance(r, MeshResult) else str(r) for r in results]
        if f in self._skip:
            return
        self.doc.occluded[f] = {int(t): int(b) for t, b in (more[0] if more else ())}
        sent = self._sent.pop(f, None)
        current = self.doc.persons(f)
        if sent is not None:
            if len(sent) == len(current) and all(a is b for a, b in zip(sent, current)):  # not edited meanwhile
                uids = self.doc.uids(f)
                if f in self._kept:  # the user's persons stay; one without a track takes the pipeline's id
                    persons = [q if p.track_id is None else p for p, q in zip(sent, persons)]
                self.doc.update_persons(dict(zip(uids, persons)), dict(zip(uids, results)))
        elif not current or not any(p.source == "user" or p.edited.any() for p in current):
            self.media.detected_frames.add(f)
            uids = self.doc.set_frame_persons(f, list(persons))
            self.doc.update_persons({}, dict(zip(uids, results)))
        self.done.add(f)
        self.video_progress.emit(f, n)

    # ------------------------------------------------------------------ key-frame interpolation
    def propagate_corrections(self, uid: int, after_last: int = 0) -> int:
        """Interpolate the corrections of person ``uid``'s track between its key frames (frames corrected by
        hand), and past the last one for ``after_last`` frames when asked (CVAT-like). One undo step.
        Returns the number of frames changed."""
        p = self.doc.person(uid)
        if p is None or not self.doc.is_video or p.track_id is None:
            return 0
        return keyframes.interpolate_track(self.doc, int(p.track_id), after_last)
