"""Projects, autosave and exports: the Document saved and loaded (atomic saves, body parameters rather than
meshes), the recovery file written while the user works, meshes and key-points exported."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np
from PySide6.QtCore import QObject, QTimer, Signal

from dpmesh_core.errors import DPMeshError, ProjectFileError
from dpmesh_core.types import Person

from ..document import Document
from .estimation import EstimationController
from .media import MediaController
from .overlay import OverlayController

PROJECT_EXT = ".dpmesh"


def _labelled_only(p: Person) -> Person:
    """``p`` for a key-point file: a detector's guess at a joint it does not see (not visible, confidence at or
    below the visibility threshold, not placed or marked by the user) is written as missing (v=0), not as a
    labelled occluded point (v=1); joints the user marked occluded stay labelled."""
    guess = ~p.visible & ~p.edited & (p.keypoints[:, 2] <= _api().VISIBLE_THRESHOLD)
    if not guess.any():
        return p
    kp = np.array(p.keypoints, np.float32)
    kp[guess, 2] = 0.0
    return dataclasses.replace(p, keypoints=kp)


def _finite_person(p: Person) -> bool:
    """A person the app can use: a finite box and finite confidences (a joint whose x, y is NaN is a missing
    joint, which the estimators and the view already skip)."""
    return bool(np.isfinite(p.box).all() and np.isfinite(p.keypoints[:, 2]).all())


def _api() -> Any:
    from dpmesh_core import api

    return api


class ProjectController(QObject):
    """Signals: message(str), error(title, text)."""

    message = Signal(str)
    error = Signal(str, str)

    def __init__(self, doc: Document, media: MediaController, estimation: EstimationController,
                 overlay: OverlayController, parent: QObject | None = None):
        super().__init__(parent)
        self.doc = doc
        self.media = media
        self.estimation = estimation
        self.overlay = overlay
        self.autosave_interval_s = 60
        self._autosave = QTimer(self)
        self._autosave.timeout.connect(self.autosave)
        self._dirty_since_autosave = False
        self.missing_media_project: tuple[str, Any] | None = None
        # Recovery files are deleted only after a successful save or an explicit discard: the ones this
        # session wrote, and the one it recovered from (never another session's on a plain quit).
        self.written_autosaves: set[Path] = set()
        self.recovered_from: Path | None = None
        doc.undo_stack.indexChanged.connect(self._mark_dirty)

    # ------------------------------------------------------------------ projects
    def project_data(self) -> Any:
        api = _api()
        frames = {f: self.doc.persons(f) for f in self.doc.frames_with_persons()}
        summarise = getattr(api, "results_summary", None)  # body parameters only; meshes are re-estimated
        results = {f: summarise(self.doc.results(f)) for f in frames} if summarise else {}
        settings = dict(self.doc.settings)
        settings.update(estimator=self.estimation.kind, smooth_video=self.estimation.smooth_video,
                        current_frame=self.doc.current_frame)
        interpolated: dict[str, dict[str, list[int]]] = {}  # joints placed by key-frame interpolation
        for f in frames:
            for i, u in enumerate(self.doc.uids(f)):
                m = self.doc.interpolated.get(u)
                if m is not None and m.any():
                    interpolated.setdefault(str(f), {})[str(i)] = [int(j) for j in m.nonzero()[0]]
        if interpolated:
            settings["interpolated"] = interpolated
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
        self.remove_autosave()  # the recovery file of the work as it was keyed so far
        self.doc.project_path = str(out)
        self.doc.undo_stack.setClean()
        self.discard_recovery()  # the work is saved: its recovery files are not needed any more
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
            self.missing_media_project = (str(path), data)
            return False
        media = api.open_media(media_path)
        self.media.set_project_media(media, {int(f) for f in data.frames})
        self._apply_project(data)
        self.doc.project_path = str(path)
        self.message.emit(f"Opened project {path}")
        return True

    def _apply_project(self, data: Any) -> None:
        settings = dict(data.settings or {})
        self.estimation.smooth_video = bool(settings.get("smooth_video", self.estimation.smooth_video))
        self.doc.settings = {k: v for k, v in settings.items()
                             if k not in ("smooth_video", "current_frame", "project_path", "interpolated")}
        interpolated = settings.get("interpolated") or {}
        self.doc.set_current_frame(int(settings.get("current_frame", 0)))
        refused = []
        results = {int(f): list(rs) for f, rs in (data.results or {}).items()}
        for f, persons in data.frames.items():
            keep = [i for i, p in enumerate(persons) if _finite_person(p)]
            refused += [f"frame {int(f) + 1} person #{i + 1}" for i in range(len(persons)) if i not in keep]
            if len(keep) < len(persons) and int(f) in results:
                rs = results[int(f)]
                results[int(f)] = [rs[i] if i < len(rs) else None for i in keep]
            uids = self.doc.set_frame_persons(int(f), [persons[i] for i in keep])
            marks = interpolated.get(str(int(f))) or {} if isinstance(interpolated, dict) else {}
            for u, i in zip(uids, keep):
                joints = marks.get(str(i)) if isinstance(marks, dict) else None
                if joints:
                    mask = np.zeros(persons[i].num_joints, bool)
                    mask[[int(j) for j in joints if 0 <= int(j) < len(mask)]] = True
                    self.doc.interpolated[u] = mask
        if refused:
            self.error.emit("Damaged persons refused",
                            f"{len(refused)} person(s) of this project have a box or key-point confidences that are "
                            f"not finite numbers (NaN/inf) and were left out: {', '.join(refused[:10])}"
                            + (" …" if len(refused) > 10 else ""))
        data = dataclasses.replace(data, results=results)
        # The file keeps body parameters, not vertices: the inference worker skins them back (no fitting);
        # persons without usable saved parameters are estimated when that comes back.
        saved: dict[int, tuple[list[Person], list]] = {
            int(f): (self.doc.persons(int(f)), list(rs)) for f, rs in (data.results or {}).items()
            if int(f) in data.frames and any(rs)}
        self.estimation.restore(saved)
        self.overlay.request(self.doc.current_frame)

    # ------------------------------------------------------------------ autosave and recovery
    def start_autosave(self, interval_s: int | None = None) -> None:
        if interval_s is not None:
            self.autosave_interval_s = interval_s
        self._autosave.start(int(self.autosave_interval_s * 1000))

    def stop_autosave(self) -> None:
        self._autosave.stop()

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
        data = self.project_data()
        if self.doc.project_path:  # recovery restores the link to the project file
            data = dataclasses.replace(data, settings={**data.settings, "project_path": str(self.doc.project_path)})
        try:
            _api().save_project(target, data)
        except (DPMeshError, OSError) as e:
            self.message.emit(f"Autosave failed: {e}")
            return None
        self._dirty_since_autosave = False
        self.written_autosaves.add(Path(target))
        return target

    def remove_autosave(self) -> None:
        """Delete the recovery file of the current work (it was saved, or the user discarded it)."""
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
        """Open a recovery (autosave) file like a project: the work comes back unsaved (the document is
        dirty, so quitting asks) and tied to the project file it belonged to (Save writes there). The
        recovery file stays until the work is saved or the user discards it."""
        linked = None
        try:
            linked = (_api().load_project(path).settings or {}).get("project_path")
        except DPMeshError:
            pass  # load_project below says what is wrong with the file
        ok = self.load_project(path)
        if ok:
            self.doc.project_path = str(linked) if linked else None
            self.doc.undo_stack.resetClean()  # unsaved work: never "clean" until saved
            self._dirty_since_autosave = True
            self.recovered_from = Path(path)
        return ok

    def discard_recovery(self) -> None:
        """The user saved or discarded the work: delete its recovery files (the current one, those this
        session wrote, the one it was recovered from)."""
        self.remove_autosave()
        for t in [*self.written_autosaves, *([self.recovered_from] if self.recovered_from else [])]:
            try:
                t.unlink()
            except OSError:
                pass
        self.written_autosaves.clear()
        self.recovered_from = None

    def closing_clean(self) -> None:
        """Quitting with nothing unsaved: delete the recovery files this session itself wrote (they hold
        nothing the saved state lacks); another session's recovery file stays."""
        for t in list(self.written_autosaves):
            try:
                t.unlink()
            except OSError:
                pass
        self.written_autosaves.clear()

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
            persons = self.doc.persons(f)
            for i, (u, r) in enumerate(zip(uids, results)):
                if r is None or (which == "selected" and u != self.doc.selected_uid):
                    continue
                for fmt in formats:
                    # on video, named by track as dpmesh predict names them ({stem}_f{frame}_track{id})
                    dest = out / api.mesh_filename(self.stem(), i, fmt, frame=f if self.doc.is_video else None,
                                                   track_id=persons[i].track_id if self.doc.is_video else None)
                    if fmt == "npz":
                        api.export_params_npz(r, dest, person=persons[i])
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
            frames[key] = [_labelled_only(p) for p in self.doc.persons(f)]
            if size is not None:
                sizes[key] = size
        api.write_coco_keypoints(path, frames, image_sizes=sizes or None)
        return Path(path)
