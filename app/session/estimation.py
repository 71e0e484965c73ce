"""Estimation: every edit of a person → a coalesced re-estimation (warm-started from its previous result)
→ ``Document.set_result``; whole frames in one batched job; the estimator choice (its spec lives here and
nowhere else in the GUI process); a project's saved meshes rebuilt without fitting."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QObject, Signal

from dpmesh_core.types import Camera, MeshResult, Person

from .. import ops
from ..document import Document
from ..jobs.inference import InferenceService
from ..jobs.protocol import DEFAULT_ESTIMATOR, ESTIMATOR_KINDS, TOO_FEW_JOINTS, estimable

RESTORE_KEY = "restore"
ESTIMATOR_LABELS = {"fit": "Key-point fitting (Anny)", "dpmesh": "DPMesh network"}  # one per ESTIMATOR_KINDS


class EstimationController(QObject):
    """Meshes for the Document's persons.

    Signals: result_timing(uid, seconds), message(str), error(title, text), restored(frame) (the saved
    meshes of the shown frame came back: its overlay can be drawn).
    """

    result_timing = Signal(int, float)
    message = Signal(str)
    error = Signal(str, str)
    restored = Signal(int)

    def __init__(self, doc: Document, inference: InferenceService, parent: QObject | None = None):
        super().__init__(parent)
        self.doc = doc
        self.inference = inference
        self.kind, self.model_path = DEFAULT_ESTIMATOR
        self.live = True  # re-estimate a person after each edit
        self.smooth_video = True  # warm-start a video person from its track's previous frame
        self.restoring: dict[int, list[Person]] = {}  # frames whose saved meshes are being rebuilt (as sent)
        doc.person_edited.connect(self._on_person_edited)
        inference.result_ready.connect(self._on_result)
        inference.frame_failed.connect(self._on_frame_failed)
        inference.generic_progress.connect(self._on_restore_progress)
        inference.generic_finished.connect(self._on_restore_finished)
        inference.call_failed.connect(self._on_restore_failed)

    # ------------------------------------------------------------------ the estimator
    def set_estimator(self, kind: str, model_path: str | None = None) -> None:
        """Switch estimator ("fit" or "dpmesh"); re-estimates the current frame."""
        if kind not in ESTIMATOR_KINDS:
            raise ValueError(kind)
        self.kind, self.model_path = kind, model_path
        self.inference.set_estimator(kind, model_path)
        self.estimate_all()

    # ------------------------------------------------------------------ requests
    def camera(self, frame: int | None = None) -> Camera | None:
        img = self.doc.image(frame)
        if img is None:
            return None
        h, w = img.shape[:2]
        return Camera.default_for(w, h)

    def previous_for(self, uid: int, frame: int) -> MeshResult | None:
        """The warm start of person ``uid``: its own result, else on video (smoothing on) the result of its
        track on the previous frame."""
        r = self.doc.result(uid)
        if r is not None:
            return r
        if self.doc.is_video and self.smooth_video:
            p = self.doc.person(uid)
            if p is not None and p.track_id is not None:
                for pu, pp in zip(self.doc.uids(frame - 1), self.doc.persons(frame - 1)):
                    if pp.track_id == p.track_id:
                        return self.doc.result(pu)
        return None

    def _on_person_edited(self, frame: int, uid: int) -> None:
        if self.live:
            self.estimate_person(uid)

    def estimate_person(self, uid: int) -> None:
        loc = self.doc.locate(uid)
        if loc is None:
            return
        frame, _ = loc
        p = self.doc.person(uid)
        img = self.doc.image(frame)
        if img is None or p is None:
            return
        if not estimable(p):
            self.doc.set_result(uid, TOO_FEW_JOINTS)
            return
        self.inference.estimate(uid, img, p, self.camera(frame), self.previous_for(uid, frame), frame=frame)

    def estimate_all(self, frame: int | None = None, auto: bool = False, only_missing: bool = False) -> None:
        """Estimate every person of ``frame`` in one batched job (persons with too few usable joints get an
        error at once); ``only_missing``: only those without a result yet."""
        f = self.doc.current_frame if frame is None else frame
        img = self.doc.image(f)
        if img is None:
            return
        uids, persons, prev = [], [], []
        for u, p in zip(self.doc.uids(f), self.doc.persons(f)):
            if only_missing and (self.doc.result(u) is not None or self.doc.result_error(u) is not None):
                continue
            if not estimable(p):
                self.doc.set_result(u, TOO_FEW_JOINTS)
                continue
            uids.append(u)
            persons.append(p)
            prev.append(self.previous_for(u, f))
        if uids:
            self.inference.estimate_many(f, uids, img, persons, self.camera(f),
                                         prev if any(x is not None for x in prev) else None,
                                         slot="auto" if auto else None)

    def estimate_missing(self, frame: int) -> None:
        """On showing ``frame``: estimate its persons that have neither a mesh nor an error (unless its saved
        meshes are on their way)."""
        if self.live and frame not in self.restoring and any(
                self.doc.result(u) is None and self.doc.result_error(u) is None for u in self.doc.uids(frame)):
            self.estimate_all(frame, auto=True)

    # ------------------------------------------------------------------ replies
    def _on_result(self, uid: int, result: Any, err: Any, secs: float) -> None:
        if err is not None:
            self.doc.set_result(uid, str(err))
            loc = self.doc.locate(uid)
            if loc is not None:
                self.message.emit(f"Person #{loc[1] + 1}: {err}")
            return
        self.doc.set_result(uid, result)
        self.result_timing.emit(uid, secs)

    def _on_frame_failed(self, frame: int, message: str) -> None:
        for u in self.doc.uids(frame if frame >= 0 else None):
            if self.doc.result(u) is None:
                self.doc.set_result(u, message)
        self.error.emit("Estimation failed", message)

    # ------------------------------------------------------------------ a project's saved meshes
    def restore(self, saved: dict[int, tuple[list[Person], list]]) -> None:
        """Rebuild meshes from a project's saved body parameters ({frame: (persons, summaries)}) in the
        worker (no fitting); persons without usable saved parameters are estimated when that comes back."""
        self.restoring = {f: list(ps) for f, (ps, _rs) in saved.items()}
        if saved:
            self.inference.call(RESTORE_KEY, ops.restore_results, saved)
        else:
            self.estimate_all(self.doc.current_frame)

    def cancel_restore(self) -> None:
        self.restoring = {}

    def _restored_current(self) -> None:
        """After the saved meshes of the shown frame came back: estimate who had none, show the overlay."""
        f = self.doc.current_frame
        self.estimate_all(f, only_missing=True)
        self.restored.emit(f)

    def _on_restore_progress(self, key: Any, value: Any) -> None:
        if key != RESTORE_KEY:
            return
        f, results, *rest = value
        refused = rest[0] if rest else []
        if refused:
            labels = ", ".join(self.doc.label(u) for i, u in enumerate(self.doc.uids(f)) if i in refused)
            self.message.emit(f"Frame {f + 1}: the saved body parameters of {labels} give a mesh with NaN/inf: "
                              "refused, estimated again from the key-points.")
        sent = self.restoring.pop(f, [])
        for u, p, q, r in zip(self.doc.uids(f), self.doc.persons(f), sent, results):
            if r is not None and p is q and self.doc.result(u) is None:  # not edited meanwhile
                self.doc.set_result(u, r)
        if f == self.doc.current_frame:
            self._restored_current()

    def _on_restore_finished(self, key: Any, _result: Any) -> None:
        if key != RESTORE_KEY:
            return
        if self.restoring.pop(self.doc.current_frame, None) is not None:
            self._restored_current()  # the shown frame had nothing to restore after all
        self.restoring = {}

    def _on_restore_failed(self, key: Any, _message: str) -> None:
        if key == RESTORE_KEY and self.restoring:  # rebuilding failed: estimate the shown frame instead
            self.restoring = {}
            self._restored_current()
