"""The Document: everything the user is working on, as one QObject with signals.

Holds the media (image or video), the per-frame persons (frozen ``Person`` dataclasses), their mesh
results and the selection; owns the ``QUndoStack``. It offers named mutation primitives only: the user's
edits go through an ``app.editor.Editor``, which pushes one command per edit (``app.commands``) that calls
these primitives, so every edit can be undone.

Each person carries a document-wide integer *uid* (parallel to the per-frame person lists) so that
background results land on the right person even after persons were added or removed meanwhile.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from PySide6.QtCore import QObject, Signal
from PySide6.QtGui import QUndoStack

from dpmesh_core.types import MeshResult, Person


class Document(QObject):
    """Media + per-frame persons + results + selection + undo stack.

    Signals
    -------
    media_changed(): a new media (or none) was set; frames/persons were reset.
    frame_changed(int): the current frame index changed.
    persons_changed(int frame): the person list of ``frame`` changed (any edit).
    person_edited(int frame, int uid): one person was edited by a command: re-infer it.
    results_changed(int frame): a result of ``frame`` was set or cleared.
    selection_changed(int uid): the selected person (-1 = none).
    joint_selection_changed(int joint): the selected joint index (-1 = none).
    """

    media_changed = Signal()
    frame_changed = Signal(int)
    persons_changed = Signal(int)
    person_edited = Signal(int, int)
    results_changed = Signal(int)
    selection_changed = Signal(int)
    joint_selection_changed = Signal(int)

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self.undo_stack = QUndoStack(self)
        self.media: Any = None  # api.Media-like: .kind .path .num_frames .fps .size .frame(i)
        self.media_path: str | None = None
        self.image_override: np.ndarray | None = None  # a still image not backed by a file (demo scene)
        self.project_path: str | None = None
        self.settings: dict[str, Any] = {}
        self._frames: dict[int, list[Person]] = {}
        self._uids: dict[int, list[int]] = {}
        self._results: dict[int, MeshResult | str] = {}  # uid -> result or error message
        self.interpolated: dict[int, np.ndarray] = {}  # uid -> (J,) joints placed by key-frame interpolation
        #: frame -> {track id: occluder's track id}: tracks the video pipeline knows are on that frame but hidden
        #: behind another track (no key-points, no mesh); every frame the pipeline delivered has an entry
        self.occluded: dict[int, dict[int, int]] = {}
        self._where: dict[int, int] = {}  # uid -> frame (kept in step with _uids)
        self._next_uid = 1
        self._next_track_id = 0  # track ids are never reused (see new_track_id)
        self.current_frame = 0
        self.selected_uid = -1
        self.selected_joint = -1
        self._frame_cache: tuple[int, np.ndarray] | None = None
        #: decoded frames from elsewhere (``.get(i)`` -> array or None, never decoding): the video's prefetcher
        #: (``session.frames``); cleared with the media
        self.frame_source: Any = None
        self.frames_decoded_here = 0  # frames this Document decoded itself (on the GUI thread)

    # ------------------------------------------------------------------ media
    def set_media(self, media: Any, image: np.ndarray | None = None) -> None:
        """Replace the media (an api Media, or None with a still ``image``) and clear everything else."""
        if self.media is not None and hasattr(self.media, "close") and self.media is not media:
            try:
                self.media.close()
            except Exception:  # noqa: BLE001 - closing a stale reader must not block opening a new one
                pass
        self.frame_source = None  # the old media's prefetcher (its owner closes it on media_changed)
        self.media = media
        self.media_path = str(getattr(media, "path", "")) or None if media is not None else None
        self.image_override = None if image is None else np.ascontiguousarray(image)
        self._frames.clear()
        self._uids.clear()
        self._results.clear()
        self.interpolated.clear()
        self.occluded.clear()
        self._where.clear()
        self._next_track_id = 0
        self.undo_stack.clear()
        self.current_frame = 0
        self.selected_uid = -1
        self.selected_joint = -1
        self._frame_cache = None
        self.media_changed.emit()
        self.frame_changed.emit(0)

    @property
    def num_frames(self) -> int:
        if self.media is None:
            return 1 if self.image_override is not None else 0
        return int(getattr(self.media, "num_frames", 1) or 1)

    @property
    def is_video(self) -> bool:
        return self.media is not None and getattr(self.media, "kind", "image") == "video"

    @property
    def fps(self) -> float:
        return float(getattr(self.media, "fps", 0.0) or 25.0)

    def image(self, frame: int | None = None) -> np.ndarray | None:
        """RGB uint8 (H, W, 3) of ``frame`` (default: current), cached for the current frame."""
        f = self.current_frame if frame is None else frame
        if self.image_override is not None and self.media is None:
            return self.image_override
        if self.media is None:
            return None
        if self._frame_cache is not None and self._frame_cache[0] == f:
            return self._frame_cache[1]
        img = self.frame_source.get(f) if self.frame_source is not None else None
        if img is None:  # not prefetched (an image, a jump while scrubbing): decode it here
            img = np.ascontiguousarray(self.media.frame(f))
            self.frames_decoded_here += 1
        self._frame_cache = (f, img)
        return img

    def has_image(self, frame: int) -> bool:
        """Whether ``image(frame)`` returns without decoding (cached here, or in the frame source)."""
        if self.media is None:
            return self.image_override is not None
        if self._frame_cache is not None and self._frame_cache[0] == frame:
            return True
        return self.frame_source is not None and bool(self.frame_source.has(frame))

    def set_current_frame(self, frame: int) -> None:
        frame = int(min(max(frame, 0), max(self.num_frames - 1, 0)))
        if frame == self.current_frame:
            return
        self.current_frame = frame
        if self.selected_uid != -1 and self.selected_uid not in self.uids(frame):  # (no signal when none was)
            self.selected_uid = -1
            self.selection_changed.emit(-1)
        self.frame_changed.emit(frame)

    # ------------------------------------------------------------------ persons
    def frames_with_persons(self) -> list[int]:
        return sorted(f for f, ps in self._frames.items() if ps)

    def persons(self, frame: int | None = None) -> list[Person]:
        f = self.current_frame if frame is None else frame
        return list(self._frames.get(f, []))

    def uids(self, frame: int | None = None) -> list[int]:
        f = self.current_frame if frame is None else frame
        return list(self._uids.get(f, []))

    def new_uid(self) -> int:
        self._next_uid += 1
        return self._next_uid - 1

    def locate(self, uid: int) -> tuple[int, int] | None:
        """(frame, index) of person ``uid``, or None."""
        f = self._where.get(uid)
        if f is None:
            return None
        return f, self._uids[f].index(uid)

    def frame_of(self, uid: int) -> int | None:
        return self._where.get(uid)

    # ------------------------------------------------------------------ tracks
    def new_track_id(self) -> int:
        """A track id no person of this document has had (ids are never reused, even after a delete)."""
        self._next_track_id = max(self._next_track_id, self._max_track_id() + 1)
        self._next_track_id += 1
        return self._next_track_id - 1

    def next_track_id(self) -> int:
        """The id ``new_track_id`` would give now (without taking it)."""
        return max(self._next_track_id, self._max_track_id() + 1)

    def note_track_ids(self, persons: list[Person]) -> None:
        """Keep the track-id counter ahead of ids that came from elsewhere (a tracker, a project file)."""
        ids = [p.track_id for p in persons if p.track_id is not None]
        if ids:
            self._next_track_id = max(self._next_track_id, max(ids) + 1)

    def _max_track_id(self) -> int:
        return max((p.track_id for ps in self._frames.values() for p in ps if p.track_id is not None), default=-1)

    def track_members(self, track_id: int) -> dict[int, int]:
        """{frame: uid} of the persons of track ``track_id``."""
        out = {}
        for f in sorted(self._frames):
            for u, p in zip(self._uids[f], self._frames[f]):
                if p.track_id == track_id:
                    out[f] = u
                    break
        return out

    def tracks(self) -> dict[int, list[int]]:
        """{track id: sorted frames where it is present}."""
        out: dict[int, list[int]] = {}
        for f in sorted(self._frames):
            for p in self._frames[f]:
                if p.track_id is not None:
                    out.setdefault(int(p.track_id), []).append(f)
        return out

    def key_frames(self, track_id: int | None = None) -> list[int]:
        """Frames the user corrected by hand (a person with an edited joint): of one track, or of any
        person when ``track_id`` is None. Key frames bound key-frame interpolation (see app.keyframes)."""
        out = []
        for f in sorted(self._frames):
            if any(p.edited.any() and (track_id is None or p.track_id == track_id) for p in self._frames[f]):
                out.append(f)
        return out

    def color_key(self, uid: int) -> int:
        """What a person's colour is drawn from: its track (so the colour follows the person across
        frames), else its uid. Track t maps to the key t + 1 (palette keys start at 1)."""
        p = self.person(uid)
        if p is not None and p.track_id is not None:
            return int(p.track_id) + 1
        return uid

    def label(self, uid: int) -> str:
        """A person's label: ``#<track id>`` on a tracked video (stable across frames, as in the CLI's
        ``_track<id>`` file names), else ``#<position in the frame>``."""
        p = self.person(uid)
        if p is not None and p.track_id is not None:
            return f"#{int(p.track_id)}"
        f = self._where.get(uid)
        return f"#{self.index_of(uid, f) + 1}" if f is not None else "#?"

    def person(self, uid: int) -> Person | None:
        loc = self.locate(uid)
        return None if loc is None else self._frames[loc[0]][loc[1]]

    def index_of(self, uid: int, frame: int | None = None) -> int:
        us = self.uids(frame)
        return us.index(uid) if uid in us else -1

    def set_frame_persons(self, frame: int, persons: list[Person], uids: list[int] | None = None,
                          emit_edits: bool = False) -> list[int]:
        """Replace all persons of ``frame`` (detection results, loading). Not an undoable edit.

        Returns the uids given to them. Results of replaced persons are dropped.
        """
        for u in self._uids.get(frame, []):
            self._results.pop(u, None)
            self.interpolated.pop(u, None)
            self._where.pop(u, None)
        uids = [self.new_uid() for _ in persons] if uids is None else list(uids)
        if uids:  # keep the counter ahead of restored uids
            self._next_uid = max(self._next_uid, max(uids) + 1)
        self._frames[frame] = list(persons)
        self._uids[frame] = uids
        for u in uids:
            self._where[u] = frame
        self.note_track_ids(list(persons))
        if self.selected_uid != -1 and self.locate(self.selected_uid) is None:
            self.select(-1)
        self.persons_changed.emit(frame)
        self.results_changed.emit(frame)
        if emit_edits:
            for u in uids:
                self.person_edited.emit(frame, u)
        return uids

    # --- primitive mutations used by commands (not undoable on their own)
    def replace_person(self, uid: int, person: Person) -> None:
        loc = self.locate(uid)
        if loc is None:
            return
        f, i = loc
        self._frames[f][i] = person
        self.persons_changed.emit(f)
        self.person_edited.emit(f, uid)

    def insert_person(self, frame: int, index: int, uid: int, person: Person,
                       result: MeshResult | str | None = None) -> None:
        self._frames.setdefault(frame, []).insert(index, person)
        self._uids.setdefault(frame, []).insert(index, uid)
        self._where[uid] = frame
        if result is not None:
            self._results[uid] = result
        self.persons_changed.emit(frame)
        self.results_changed.emit(frame)
        if result is None:
            self.person_edited.emit(frame, uid)

    def remove_person(self, uid: int) -> tuple[int, int, Person, MeshResult | str | None] | None:
        loc = self.locate(uid)
        if loc is None:
            return None
        f, i = loc
        p = self._frames[f].pop(i)
        self._uids[f].pop(i)
        self._where.pop(uid, None)
        res = self._results.pop(uid, None)
        if self.selected_uid == uid:
            self.select(-1)
        self.persons_changed.emit(f)
        self.results_changed.emit(f)
        return f, i, p, res

    def update_persons(self, persons: dict[int, Person], results: dict[int, Any] | None = None) -> None:
        """Background work's answer for many persons at once (not an undoable edit): new versions of them
        (e.g. with the track id the whole-video job gave) and their results; one signal per frame."""
        self.batch_replace(persons, results)

    # --- batch mutations (one signal per frame, not per person: a command over 200 frames stays fast)
    def batch_replace(self, persons: dict[int, Person], results: dict[int, Any] | None = None,
                       interpolated: dict[int, np.ndarray | None] | None = None, reestimate: bool = False) -> None:
        """Replace many persons at once. ``results``: {uid: MeshResult, error text, or None (dropped)};
        ``interpolated``: {uid: (J,) mask or None}. ``reestimate``: persons of the shown frame left without a
        result are re-estimated (``person_edited``); the other frames are estimated when they are shown."""
        frames: set[int] = set()
        for u, p in persons.items():
            f = self._where.get(u)
            if f is None:
                continue
            self._frames[f][self._uids[f].index(u)] = p
            frames.add(f)
        for u, r in (results or {}).items():
            if r is None:
                self._results.pop(u, None)
            else:
                self._results[u] = r
            if u in self._where:
                frames.add(self._where[u])
        for u, m in (interpolated or {}).items():
            if m is None or not np.any(m):
                self.interpolated.pop(u, None)
            else:
                self.interpolated[u] = np.asarray(m, bool)
        for f in sorted(frames):
            self.persons_changed.emit(f)
            self.results_changed.emit(f)
        if reestimate:
            f = self.current_frame
            for u in list(persons):
                if self._where.get(u) == f and u not in self._results:
                    self.person_edited.emit(f, u)

    def batch_remove(self, uids: list[int]) -> list[tuple]:
        """Remove many persons; returns what ``batch_insert`` needs to put them back."""
        out, frames = [], set()
        for u in uids:
            f = self._where.pop(u, None)
            if f is None:
                continue
            i = self._uids[f].index(u)
            p = self._frames[f].pop(i)
            self._uids[f].pop(i)
            out.append((f, i, u, p, self._results.pop(u, None), self.interpolated.pop(u, None)))
            frames.add(f)
        if self.selected_uid in uids:
            self.select(-1)
        for f in sorted(frames):
            self.persons_changed.emit(f)
            self.results_changed.emit(f)
        return out

    def batch_insert(self, entries: list[tuple]) -> None:
        """Put back persons removed by ``batch_remove`` (in reverse order, so indices hold)."""
        frames = set()
        for f, i, u, p, r, m in reversed(entries):
            self._frames.setdefault(f, []).insert(i, p)
            self._uids.setdefault(f, []).insert(i, u)
            self._where[u] = f
            if r is not None:
                self._results[u] = r
            if m is not None:
                self.interpolated[u] = m
            frames.add(f)
        for f in sorted(frames):
            self.persons_changed.emit(f)
            self.results_changed.emit(f)

    # ------------------------------------------------------------------ results
    def result(self, uid: int) -> MeshResult | None:
        r = self._results.get(uid)
        return r if isinstance(r, MeshResult) else None

    def low_confidence(self, uid: int) -> tuple[str, ...] | None:
        """Why the mesh of ``uid`` is a guess (``MeshResult.quality.low_confidence``: few visible joints, a
        large residual, depth not from the key-points), or None when it is not flagged (or has no mesh)."""
        r = self.result(uid)
        q = getattr(r, "quality", None)
        if q is None or not q.low_confidence:
            return None
        return tuple(q.reasons) or ("low confidence",)

    def raw_result(self, uid: int) -> MeshResult | str | None:
        """The stored result of ``uid``: a MeshResult, an error text, or None."""
        return self._results.get(uid)

    def result_error(self, uid: int) -> str | None:
        r = self._results.get(uid)
        return r if isinstance(r, str) else None

    def results(self, frame: int | None = None) -> list[MeshResult | None]:
        """Results aligned with ``persons(frame)`` (None where missing or failed)."""
        return [self.result(u) for u in self.uids(frame)]

    def set_result(self, uid: int, result: MeshResult | str | None) -> None:
        loc = self.locate(uid)
        if loc is None:
            return  # the person was removed while it was being estimated
        if result is None:
            self._results.pop(uid, None)
        else:
            self._results[uid] = result
        self.results_changed.emit(loc[0])

    # ------------------------------------------------------------------ selection
    def select(self, uid: int) -> None:
        if uid == self.selected_uid:
            return
        self.selected_uid = uid
        self.selection_changed.emit(uid)

    def select_joint(self, joint: int) -> None:
        if joint == self.selected_joint:
            return
        self.selected_joint = joint
        self.joint_selection_changed.emit(joint)

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def with_joint(person: Person, joint: int, *, xy: tuple[float, float] | None = None,
                   conf: float | None = None, visible: bool | None = None, edited: bool = True) -> Person:
        """A copy of ``person`` with joint ``joint`` changed (marks it edited, source becomes "user")."""
        kp = np.array(person.keypoints, np.float32)
        vis = np.array(person.visible, bool)
        ed = np.array(person.edited, bool)
        if xy is not None:
            kp[joint, :2] = xy
        if conf is not None:
            kp[joint, 2] = conf
        if visible is not None:
            vis[joint] = visible
        if edited:
            ed[joint] = True
        return dataclasses.replace(person, keypoints=kp, visible=vis, edited=ed, source="user")
