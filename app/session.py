"""The session: glue between the Document, the inference worker and the render thread (no widgets).

* opening media / projects / the demo scene, detection on new frames;
* every ``Document.person_edited`` → a coalesced re-estimation of that person (warm-started from its
  previous result) → ``Document.set_result`` → a new mesh overlay rendered on the render thread;
* project save / load, autosave and recovery, exports.

Kept free of widgets so tests drive the exact code the window uses.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from PySide6.QtCore import QObject, QTimer, Signal

from dpmesh_core.errors import DPMeshError, MediaError, ProjectFileError
from dpmesh_core.types import Camera, MeshResult, Person

from . import ops
from .document import Document
from .jobs import InferenceService, RenderService
from .palette import person_rgb01

log = logging.getLogger(__name__)

PROJECT_EXT = ".dpmesh"


def _api() -> Any:
    from dpmesh_core import api

    return api


class Session(QObject):
    """Owns the Document and the background services.

    Signals: overlay_ready(frame, rgb), busy_changed(bool), message(str), error(title, text),
    result_timing(uid, seconds), detection_done(frame, n), media_loaded(str).
    """

    overlay_ready = Signal(int, object)
    busy_changed = Signal(bool)
    message = Signal(str)
    error = Signal(str, str)
    result_timing = Signal(int, float)
    detection_done = Signal(int, int)
    media_loaded = Signal(str)

    def __init__(self, doc: Document | None = None, inference: InferenceService | None = None,
                 render: RenderService | None = None, parent: QObject | None = None):
        super().__init__(parent)
        self.doc = doc or Document(self)
        self.inference = inference or InferenceService(parent=self)
        self.render = render or RenderService(self)
        self.estimator_kind = "fit"
        self.auto_detect = True
        self.live_inference = True
        self.smooth_video = True
        self.overlay_alpha = 0.6
        self._detected_frames: set[int] = set()
        self._restoring: dict[int, list[Person]] = {}  # frames whose saved meshes are being rebuilt
        self._video_known: dict[int, list[Person]] = {}  # persons the whole-video job was given (see process_video)
        self._pending_detect: set[int] = set()
        self._busy = {"inference": False, "render": False}
        self.autosave_interval_s = 60
        self._overlay_timer = QTimer(self)
        self._overlay_timer.setSingleShot(True)
        self._overlay_timer.setInterval(0)
        self._overlay_timer.timeout.connect(lambda: self._request_overlay(self.doc.current_frame))
        self._autosave = QTimer(self)
        self._autosave.timeout.connect(self.autosave)
        self._dirty_since_autosave = False
        self._background_started = False
        self._auto_pending: set[int] = set()
        self.last_release_time: float | None = None
        self.doc.person_edited.connect(self._on_person_edited)
        self.doc.results_changed.connect(self._on_results_changed)
        self.doc.frame_changed.connect(self._on_frame_changed)
        self.doc.undo_stack.indexChanged.connect(self._mark_dirty)
        self.inference.result_ready.connect(self._on_result)
        self.inference.persons_detected.connect(self._on_detected)
        self.inference.error.connect(self._on_inference_error)
        self.inference.busy_changed.connect(lambda b: self._set_busy("inference", b))
        self.inference.generic_finished.connect(self._on_generic)
        self.inference.generic_progress.connect(self._on_generic_progress)
        self.inference.frame_failed.connect(self._on_frame_failed)
        self.render.rendered.connect(self._on_rendered)
        self.render.error.connect(lambda m: self.message.emit(f"Mesh rendering failed: {m}"))
        self.render.busy_changed.connect(lambda b: self._set_busy("render", b))

    def start_background(self) -> None:
        """Start the inference and render processes and build the estimator there, after the window shows."""
        if self._background_started:
            return
        self._background_started = True
        self.inference.start()
        self.render.start()
        self.inference.warm_up()

    # ------------------------------------------------------------------ lifecycle
    def shutdown(self) -> None:
        self._autosave.stop()
        self.inference.shutdown()
        self.render.shutdown()
        if self.doc.media is not None and hasattr(self.doc.media, "close"):
            self.doc.media.close()

    def start_autosave(self, interval_s: int | None = None) -> None:
        if interval_s is not None:
            self.autosave_interval_s = interval_s
        self._autosave.start(int(self.autosave_interval_s * 1000))

    def _set_busy(self, what: str, busy: bool) -> None:
        before = any(self._busy.values())
        self._busy[what] = busy
        after = any(self._busy.values())
        if before != after:
            self.busy_changed.emit(after)

    def is_busy(self) -> bool:
        return any(self._busy.values()) or self.inference.runner.is_busy() or self.render.is_busy()

    # ------------------------------------------------------------------ opening
    def open_path(self, path: str | os.PathLike) -> None:
        """Open an image, a video or a project file. Raises MediaError / ProjectFileError (nothing changes)."""
        p = Path(path)
        if p.suffix.lower() == PROJECT_EXT:
            self.load_project(p)
            return
        media = _api().open_media(p)  # raises MediaError naming the file
        self.inference.cancel_all()
        self._restoring = {}
        self._detected_frames.clear()
        self._pending_detect.clear()
        self.doc.project_path = None
        self.doc.set_media(media)
        self.media_loaded.emit(str(p))
        if self.auto_detect:
            self.detect_frame(0)
        self.start_background()

    def open_image_array(self, image: np.ndarray, persons: list[Person] | None = None, name: str = "demo") -> None:
        """Show an in-memory image (e.g. the demo scene) with given persons (or detect them)."""
        self.inference.cancel_all()
        self._restoring = {}
        self._detected_frames.clear()
        self._pending_detect.clear()
        self.doc.project_path = None
        self.doc.set_media(None, image=image)
        self.doc.settings["title"] = name
        self.media_loaded.emit(name)
        if persons is not None:
            self._detected_frames.add(0)
            self.doc.set_frame_persons(0, list(persons))
            self.estimate_all(0)
        elif self.auto_detect:
            self.detect_frame(0)
        self.start_background()

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
        self.inference.call("demo", ops.demo_scene, str(target))

    def _restored_current(self) -> None:
        """After the saved meshes of the shown frame came back: estimate who had none, show the overlay."""
        f = self.doc.current_frame
        self.estimate_all(f, only_missing=True)
        self._request_overlay(f)

    def _on_generic(self, key: Any, result: Any) -> None:
        if key == "restore":
            if self._restoring.pop(self.doc.current_frame, None) is not None:
                self._restored_current()  # the shown frame had nothing to restore after all
            self._restoring = {}
            return
        if key == "video":
            self.message.emit("Video processed: every frame has persons and meshes (File ▸ Export for all frames).")
        elif key == "demo":
            image, persons, path = result
            if path is not None:
                auto, self.auto_detect = self.auto_detect, False  # the demo brings its own persons
                try:
                    self.open_path(path)
                except DPMeshError:
                    path = None
                finally:
                    self.auto_detect = auto
            if path is None:
                self.open_image_array(image, persons, name="Demo scene")
            else:
                self._detected_frames.add(0)
                self.doc.set_frame_persons(0, list(persons))
                self.estimate_all(0)
            self.message.emit("Demo scene: two people, one partly hidden. Drag key-points to correct them.")

    # ------------------------------------------------------------------ detection
    def detect_frame(self, frame: int | None = None, force: bool = False, auto: bool = False) -> None:
        """Detect persons on ``frame``. ``auto`` (frame changes while scrubbing/playing a video): such
        requests coalesce, so only the frame the user stopped on is detected."""
        f = self.doc.current_frame if frame is None else frame
        if not force and (f in self._detected_frames or f in self._pending_detect):
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

    def _on_detected(self, frame: int, persons: list[Person]) -> None:
        self._pending_detect.discard(frame)
        self._auto_pending.discard(frame)
        self._detected_frames.add(frame)
        if self.doc.persons(frame) and frame in self._user_touched_frames():
            return  # never overwrite the user's work with a late detection
        if self.doc.is_video:
            persons = self._track(frame, persons)
        self.doc.set_frame_persons(frame, persons)
        if self.live_inference:
            self.estimate_all(frame, auto=self.doc.is_video)
        self.detection_done.emit(frame, len(persons))
        self.message.emit(f"{len(persons)} person(s) found." + (" Estimating meshes…" if persons else
                                                                 " Draw a box (B) to add one."))

    def _user_touched_frames(self) -> set[int]:
        out = set()
        for f in self.doc.frames_with_persons():
            if any(p.source == "user" for p in self.doc.persons(f)):
                out.add(f)
        return out

    def _track(self, frame: int, persons: list[Person]) -> list[Person]:
        """Give video persons stable track ids (api.Tracker), matched against the previous frame."""
        tracker = getattr(self, "_tracker", None)
        if tracker is None:
            try:
                tracker = self._tracker = _api().Tracker()
            except Exception:  # noqa: BLE001 - no tracker available: keep detector order
                return persons
        try:
            return list(tracker.update(persons))
        except Exception:  # noqa: BLE001
            return persons

    def _on_frame_changed(self, frame: int) -> None:
        if self.doc.is_video and self.auto_detect and not self.doc.persons(frame):
            self.detect_frame(frame, auto=True)
        elif self.live_inference and frame not in self._restoring and any(
                self.doc.result(u) is None and self.doc.result_error(u) is None for u in self.doc.uids(frame)):
            self.estimate_all(frame, auto=True)  # (a frame whose saved meshes are on their way waits for them)
        self._request_overlay(frame)

    # ------------------------------------------------------------------ estimation
    def camera(self, frame: int | None = None) -> Camera | None:
        img = self.doc.image(frame)
        if img is None:
            return None
        h, w = img.shape[:2]
        return Camera.default_for(w, h)

    def _previous_for(self, uid: int, frame: int) -> MeshResult | None:
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
        if not self.live_inference:
            return
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
        if int(p.weights.astype(bool).sum()) < 2:
            self.doc.set_result(uid, "needs at least 2 visible key-points")
            return
        self.inference.estimate(uid, img, p, self.camera(frame), self._previous_for(uid, frame))

    def estimate_all(self, frame: int | None = None, auto: bool = False, only_missing: bool = False) -> None:
        """Estimate every person of ``frame`` in one batched job (persons with < 2 usable joints get an
        error at once); ``only_missing``: only those without a result yet."""
        f = self.doc.current_frame if frame is None else frame
        img = self.doc.image(f)
        if img is None:
            return
        uids, persons, prev = [], [], []
        for u, p in zip(self.doc.uids(f), self.doc.persons(f)):
            if only_missing and (self.doc.result(u) is not None or self.doc.result_error(u) is not None):
                continue
            if int(p.weights.astype(bool).sum()) < 2:
                self.doc.set_result(u, "needs at least 2 visible key-points")
                continue
            uids.append(u)
            persons.append(p)
            prev.append(self._previous_for(u, f))
        if uids:
            self.inference.estimate_many(f, uids, img, persons, self.camera(f),
                                         prev if any(x is not None for x in prev) else None,
                                         slot="auto" if auto else None)

    def set_estimator(self, kind: str, model_path: str | None = None) -> None:
        """Switch estimator ("fit" or "dpmesh"); re-estimates the current frame."""
        if kind not in ("fit", "dpmesh"):
            raise ValueError(kind)
        self.estimator_kind = kind
        self.inference.set_estimator(kind, model_path)
        self.estimate_all()

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

    def _on_inference_error(self, kind: str, message: str) -> None:
        if kind == "detect":
            self._pending_detect.clear()
            self.error.emit("Detection failed", message)
        elif kind == "call":
            if self._restoring:  # rebuilding a project's meshes failed: estimate the shown frame instead
                self._restoring = {}
                self._restored_current()
            self.error.emit("Operation failed", message)
        elif kind == "detect-box":
            self.error.emit("Detection in box failed", message)

    # ------------------------------------------------------------------ overlay
    def _on_results_changed(self, frame: int) -> None:
        if frame == self.doc.current_frame:
            self._overlay_timer.start()  # a batch of results → one overlay request

    def overlay_pending(self) -> bool:
        """An image-overlay render is queued, running or about to be requested, or an estimation (whose
        result will need one) is on its way: the 3-D view waits for these (see ``MeshView``)."""
        return self._overlay_timer.isActive() or self.render.runner.is_busy() or self.inference.runner.is_busy()

    def _request_overlay(self, frame: int) -> None:
        img = self.doc.image(frame)
        if img is None:
            return
        results = [r for r in self.doc.results(frame) if r is not None]
        if not results:
            self.overlay_ready.emit(frame, None)
            return
        colors = [person_rgb01(u) for u, r in zip(self.doc.uids(frame), self.doc.results(frame)) if r is not None]
        self.render.render_overlay(("overlay", frame), img, results, alpha=self.overlay_alpha, colors=colors)

    def _on_rendered(self, key: Any, rgb: Any, secs: float) -> None:
        if isinstance(key, tuple) and key[0] == "overlay":
            if key[1] == self.doc.current_frame:
                self.overlay_ready.emit(key[1], rgb)

    # ------------------------------------------------------------------ projects
    def project_data(self) -> Any:
        api = _api()
        frames = {f: self.doc.persons(f) for f in self.doc.frames_with_persons()}
        summarise = getattr(api, "results_summary", None)  # body parameters only; meshes are re-estimated
        results = {f: summarise(self.doc.results(f)) for f in frames} if summarise else {}
        settings = dict(self.doc.settings)
        settings.update(estimator=self.estimator_kind, smooth_video=self.smooth_video,
                        current_frame=self.doc.current_frame)
        return api.ProjectData(media_path=self.doc.media_path, frames=frames, results=results,
                               settings=settings)

    def save_project(self, path: str | os.PathLike) -> Path:
        """Save everything atomically; the media file is referenced, not copied."""
        if self.doc.media_path is None:
            raise ProjectFileError("this scene has no media file (the demo scene); open an image or a video "
                                   "to save a project", path)
        api = _api()
        out = Path(path)
        if out.suffix.lower() != PROJECT_EXT:
            out = out.with_suffix(PROJECT_EXT)
        api.save_project(out, self.project_data())
        self._remove_autosave()  # the recovery file of the work as it was keyed so far
        self.doc.project_path = str(out)
        self.doc.undo_stack.setClean()
        self._remove_autosave()
        self.message.emit(f"Saved {out}")
        return out

    def load_project(self, path: str | os.PathLike, media_override: str | os.PathLike | None = None) -> bool:
        """Load a project. Returns False (and says why) if its media file is missing and none was given;
        raises ProjectFileError for a corrupt or newer file (the current document is untouched)."""
        api = _api()
        data = api.load_project(path)
        media_path = str(media_override) if media_override else data.media_path
        if not media_path or not Path(media_path).exists() or (data.media_missing and not media_override):
            self.error.emit("Media file moved", f"The project {path} refers to\n{data.media_path}\nwhich does not "
                            "exist any more. Use File ▸ Open Project and pick the media file's new place when asked.")
            self._missing_media_project = (str(path), data)
            return False
        media = api.open_media(media_path)
        self.inference.cancel_all()
        self.doc.set_media(media)
        self._apply_project(data)
        self.doc.project_path = str(path)
        self.message.emit(f"Opened project {path}")
        return True

    def _apply_project(self, data: Any) -> None:
        self._detected_frames = set(int(f) for f in data.frames)
        settings = dict(data.settings or {})
        self.smooth_video = bool(settings.get("smooth_video", self.smooth_video))
        self.doc.settings = {k: v for k, v in settings.items() if k not in ("smooth_video", "current_frame")}
        self.doc.set_current_frame(int(settings.get("current_frame", 0)))
        for f, persons in data.frames.items():
            self.doc.set_frame_persons(int(f), list(persons))
        # The file keeps body parameters, not vertices: the inference worker skins them back (no fitting);
        # persons without usable saved parameters are estimated when that comes back.
        saved = {int(f): (self.doc.persons(int(f)), list(rs)) for f, rs in (data.results or {}).items()
                 if int(f) in data.frames and any(rs)}
        self._restoring = {f: list(ps) for f, (ps, _rs) in saved.items()}
        if saved:
            self.inference.call("restore", ops.restore_results, saved)
        else:
            self.estimate_all(self.doc.current_frame)
        self._request_overlay(self.doc.current_frame)

    def _autosave_target(self) -> Path | None:
        api = _api()
        key = self.doc.project_path or self.doc.media_path
        if key is None:
            return None
        return Path(api.autosave_path_for(key))

    def _mark_dirty(self, *_a: Any) -> None:
        self._dirty_since_autosave = True

    def autosave(self) -> Path | None:
        """Write the recovery file (only if something changed since the last one)."""
        if not self._dirty_since_autosave or self.doc.media_path is None:
            return None
        target = self._autosave_target()
        if target is None:
            return None
        try:
            _api().save_project(target, self.project_data())
        except (DPMeshError, OSError) as e:
            self.message.emit(f"Autosave failed: {e}")
            return None
        self._dirty_since_autosave = False
        return target

    def _remove_autosave(self) -> None:
        t = self._autosave_target()
        if t is not None and t.exists():
            try:
                t.unlink()
            except OSError:
                pass
        self._dirty_since_autosave = False

    @staticmethod
    def recovery_files() -> list[Path]:
        try:
            return list(_api().find_recovery_files())
        except DPMeshError:
            return []

    def recover(self, path: str | os.PathLike) -> bool:
        """Open a recovery (autosave) file like a project; it stays until the work is saved."""
        ok = self.load_project(path)
        if ok:
            self.doc.project_path = None
            self._dirty_since_autosave = True
        return ok

    # ------------------------------------------------------------------ exports
    def stem(self) -> str:
        if self.doc.media_path:
            return Path(self.doc.media_path).stem
        return str(self.doc.settings.get("title", "scene")).replace(" ", "_").lower()

    def export_meshes(self, out_dir: str | os.PathLike, which: str = "all", formats: tuple[str, ...] = ("obj",)) -> list[Path]:
        """Export meshes: which = "selected" | "all" (current frame) | "video" (every frame with results).

        File names come from ``api.mesh_filename`` (``<stem>_person<i>[_frame<f>].<ext>``).
        """
        api = _api()
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        written: list[Path] = []
        frames = self.doc.frames_with_persons() if which == "video" else [self.doc.current_frame]
        for f in frames:
            results = self.doc.results(f)
            uids = self.doc.uids(f)
            for i, (u, r) in enumerate(zip(uids, results)):
                if r is None or (which == "selected" and u != self.doc.selected_uid):
                    continue
                for fmt in formats:
                    dest = out / api.mesh_filename(self.stem(), i, fmt, frame=f if self.doc.is_video else None)
                    if fmt == "npz":
                        api.export_params_npz(r, dest)
                    else:
                        api.export_mesh(r, dest)
                    written.append(dest)
        if not written:
            raise DPMeshError("nothing to export: no mesh has been estimated yet" if which != "selected"
                              else "nothing to export: select a person that has a mesh")
        return written

    def export_keypoints(self, path: str | os.PathLike) -> Path:
        api = _api()
        frames: dict[Any, list[Person]] = {}
        sizes = {}
        img = self.doc.image()
        size = (img.shape[1], img.shape[0]) if img is not None else None
        for f in self.doc.frames_with_persons():
            key = f if self.doc.is_video else (Path(self.doc.media_path).name if self.doc.media_path else "demo.png")
            frames[key] = self.doc.persons(f)
            if size is not None:
                sizes[key] = size
        api.write_coco_keypoints(path, frames, image_sizes=sizes or None)
        return Path(path)

    # ------------------------------------------------------------------ video: whole-video processing
    video_progress = Signal(int, int)  # frame, number of frames

    def process_video(self, stride: int = 1) -> bool:
        """Detect (where the user has no persons yet), track and estimate every ``stride``-th frame of the
        video in the background, warm-starting each track from its previous frame when smoothing is on.
        Frames the user already has persons on keep them. Cancel with ``cancel_video``."""
        if not self.doc.is_video or not self.doc.media_path:
            return False
        path, smooth = self.doc.media_path, self.smooth_video
        known = {f: self.doc.persons(f) for f in self.doc.frames_with_persons()}
        self._video_known = known  # the worker sends copies back: "not edited meanwhile" compares with these
        self.inference.call("video", ops.process_video, path, stride, smooth, known)
        self.message.emit("Processing every frame of the video…")
        return True

    def cancel_video(self) -> None:
        self.inference.runner.cancel(("call", "video"))

    def _on_generic_progress(self, key: Any, value: Any) -> None:
        if key == "restore":
            f, results = value
            sent = self._restoring.pop(f, [])
            current = self.doc.persons(f)
            for u, p, q, r in zip(self.doc.uids(f), current, sent, results):
                if r is not None and p is q and self.doc.result(u) is None:  # not edited meanwhile
                    self.doc.set_result(u, r)
            if f == self.doc.current_frame:
                self._restored_current()
            return
        if key != "video":
            return
        f, n, persons, results, was_known = value
        if was_known:
            uids = self.doc.uids(f)
            current = self.doc.persons(f)
            sent = self._video_known.get(f, [])
            for i, (p, r) in enumerate(zip(sent, results)):
                if i < len(current) and current[i] is p:  # not edited meanwhile
                    self.doc.set_result(uids[i], r if isinstance(r, MeshResult) else str(r))
        else:
            self._detected_frames.add(f)
            uids = self.doc.set_frame_persons(f, list(persons))
            for u, r in zip(uids, results):
                self.doc.set_result(u, r if isinstance(r, MeshResult) else str(r))
        self.video_progress.emit(f, n)

    # ------------------------------------------------------------------ video: key-frame interpolation
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
        stack = self.doc.undo_stack
        stack.beginMacro("Propagate key-point corrections")
        try:
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
                import dataclasses

                self.doc.edit_replace_person(u, dataclasses.replace(p, keypoints=kp, visible=vis, edited=ed,
                                                                    source="user"), "Propagate")
        finally:
            stack.endMacro()
        return len(frames_of_track)

    def note_release(self) -> None:
        """Benchmarks: remember when the user released a dragged joint."""
        self.last_release_time = time.perf_counter()


__all__ = ["Session", "PROJECT_EXT", "MediaError"]
