"""The whole-video job: detect (where the user has no persons yet), track and estimate every frame in the
inference worker (``ops.process_video``), its frames landing in the Document as they come."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from PySide6.QtCore import QObject, Signal

from dpmesh_core.types import MeshResult, Person

from .. import ops
from ..commands import BatchEditCommand
from ..document import Document
from ..jobs.inference import InferenceService
from .estimation import EstimationController
from .media import MediaController

VIDEO_KEY = "video"


class VideoController(QObject):
    """Signals: video_progress(frame, number of frames), message(str)."""

    video_progress = Signal(int, int)
    message = Signal(str)

    def __init__(self, doc: Document, inference: InferenceService, media: MediaController,
                 estimation: EstimationController, parent: QObject | None = None):
        super().__init__(parent)
        self.doc = doc
        self.inference = inference
        self.media = media
        self.estimation = estimation
        self._known: dict[int, list[Person]] = {}  # persons the job was given (see process_video)
        inference.generic_progress.connect(self._on_progress)
        inference.generic_finished.connect(self._on_finished)

    def process_video(self, stride: int = 1) -> bool:
        """Detect (where the user has no persons yet), track and estimate every ``stride``-th frame of the
        video in the background, warm-starting each track from its previous frame when smoothing is on.
        Frames the user already has persons on keep them. Cancel with ``cancel_video``."""
        if not self.doc.is_video or not self.doc.media_path:
            return False
        path, smooth = self.doc.media_path, self.estimation.smooth_video
        known = {f: self.doc.persons(f) for f in self.doc.frames_with_persons()}
        self._known = known  # the worker sends copies back: "not edited meanwhile" compares with these
        self.inference.call(VIDEO_KEY, ops.process_video, path, stride, smooth, known)
        self.message.emit("Processing every frame of the video…")
        return True

    def cancel_video(self) -> None:
        self.inference.runner.cancel(("call", VIDEO_KEY))

    def _on_finished(self, key: Any, _result: Any) -> None:
        if key == VIDEO_KEY:
            self.message.emit("Video processed: every frame has persons and meshes (File ▸ Export for all frames).")

    def _on_progress(self, key: Any, value: Any) -> None:
        if key != VIDEO_KEY:
            return
        f, n, persons, results, was_known = value
        if was_known:
            uids = self.doc.uids(f)
            current = self.doc.persons(f)
            sent = self._known.get(f, [])
            for i, (p, r) in enumerate(zip(sent, results)):
                if i < len(current) and current[i] is p:  # not edited meanwhile
                    self.doc.set_result(uids[i], r if isinstance(r, MeshResult) else str(r))
        else:
            self.media.detected_frames.add(f)
            uids = self.doc.set_frame_persons(f, list(persons))
            for u, r in zip(uids, results):
                self.doc.set_result(u, r if isinstance(r, MeshResult) else str(r))
        self.video_progress.emit(f, n)

    # ------------------------------------------------------------------ key-frame interpolation
    def propagate_corrections(self, uid: int, until: int | None = None) -> int:
        """Carry the edited joints of person ``uid`` to the next frames (same track id), interpolating
        linearly towards the next frame where the same person was corrected (CVAT-like key frames).

        Returns the number of frames changed. One undo step (a macro).
        """
        loc = self.doc.locate(uid)
        p0 = self.doc.person(uid)
        if loc is None or p0 is None or not self.doc.is_video or p0.track_id is None:
            return 0
        f0 = loc[0]
        last = (self.doc.num_frames - 1) if until is None else until
        # Find the next key frame of this track (a frame whose person has edited joints).
        track = p0.track_id
        frames_of_track = []
        next_key = None
        for f in range(f0 + 1, last + 1):
            for u, p in zip(self.doc.uids(f), self.doc.persons(f)):
                if p.track_id == track:
                    if p.edited.any():
                        next_key = (f, p)
                    else:
                        frames_of_track.append((f, u, p))
                    break
            if next_key is not None:
                break
        if not frames_of_track:
            return 0
        replace = {}
        for f, u, p in frames_of_track:
            kp = np.array(p.keypoints, np.float32)
            vis = np.array(p.visible, bool)
            ed = np.array(p.edited, bool)
            for j in np.flatnonzero(p0.edited):
                a = p0.keypoints[j, :2]
                if next_key is not None and next_key[1].edited[j]:
                    t = (f - f0) / (next_key[0] - f0)
                    xy = (1 - t) * a + t * next_key[1].keypoints[j, :2]
                else:
                    xy = a
                kp[j, :2] = xy
                kp[j, 2] = p0.keypoints[j, 2]
                vis[j] = p0.visible[j]
                ed[j] = True
            replace[u] = dataclasses.replace(p, keypoints=kp, visible=vis, edited=ed, source="user")
        # one command (one undo step) for the whole propagation
        self.doc.undo_stack.push(BatchEditCommand(self.doc, "Propagate key-point corrections", replace=replace))
        return len(frames_of_track)
