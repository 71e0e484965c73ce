"""The Document: everything the user is working on, as one QObject with signals.

Holds the media (image or video), the per-frame persons (frozen ``Person`` dataclasses), their mesh
results and the selection; owns the ``QUndoStack``. Widgets never mutate it directly: they call the
``edit_*`` methods, which push a command (see ``app.commands``), so every edit can be undone.

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
        self.keyframes: dict[int, set[int]] = {}  # uid -> frames the user corrected by hand
        self._next_uid = 1
        self.current_frame = 0
        self.selected_uid = -1
        self.selected_joint = -1
        self._frame_cache: tuple[int, np.ndarray] | None = None

    # ------------------------------------------------------------------ media
    def set_media(self, media: Any, image: np.ndarray | None = None) -> None:
        """Replace the media (an api Media, or None with a still ``image``) and clear everything else."""
        if self.media is not None and hasattr(self.media, "close") and self.media is not media:
            try:
                self.media.close()
            except Exception:  # noqa: BLE001 - closing a stale reader must not block opening a new one
                pass
        self.media = media
        self.media_path = str(getattr(media, "path", "")) or None if media is not None else None
        self.image_override = None if image is None else np.ascontiguousarray(image)
        self._frames.clear()
        self._uids.clear()
        self._results.clear()
        self.keyframes.clear()
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
        img = np.ascontiguousarray(self.media.frame(f))
        self._frame_cache = (f, img)
        return img

    def set_current_frame(self, frame: int) -> None:
        frame = int(min(max(frame, 0), max(self.num_frames - 1, 0)))
        if frame == self.current_frame:
            return
        self.current_frame = frame
        if self.selected_uid not in self.uids(frame):
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
        for f, us in self._uids.items():
            if uid in us:
                return f, us.index(uid)
        return None

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
        uids = [self.new_uid() for _ in persons] if uids is None else list(uids)
        if uids:  # keep the counter ahead of restored uids
            self._next_uid = max(self._next_uid, max(uids) + 1)
        self._frames[frame] = list(persons)
        self._uids[frame] = uids
        if self.selected_uid != -1 and self.locate(self.selected_uid) is None:
            self.select(-1)
        self.persons_changed.emit(frame)
        self.results_changed.emit(frame)
        if emit_edits:
            for u in uids:
                self.person_edited.emit(frame, u)
        return uids

    # --- primitive mutations used by commands (not undoable on their own)
    def _replace_person(self, uid: int, person: Person) -> None:
        loc = self.locate(uid)
        if loc is None:
            return
        f, i = loc
        self._frames[f][i] = person
        self.persons_changed.emit(f)
        self.person_edited.emit(f, uid)

    def _insert_person(self, frame: int, index: int, uid: int, person: Person,
                       result: MeshResult | str | None = None) -> None:
        self._frames.setdefault(frame, []).insert(index, person)
        self._uids.setdefault(frame, []).insert(index, uid)
        if result is not None:
            self._results[uid] = result
        self.persons_changed.emit(frame)
        self.results_changed.emit(frame)
        if result is None:
            self.person_edited.emit(frame, uid)

    def _remove_person(self, uid: int) -> tuple[int, int, Person, MeshResult | str | None] | None:
        loc = self.locate(uid)
        if loc is None:
            return None
        f, i = loc
        p = self._frames[f].pop(i)
        self._uids[f].pop(i)
        res = self._results.pop(uid, None)
        if self.selected_uid == uid:
            self.select(-1)
        self.persons_changed.emit(f)
        self.results_changed.emit(f)
        return f, i, p, res

    # ------------------------------------------------------------------ results
    def result(self, uid: int) -> MeshResult | None:
        r = self._results.get(uid)
        return r if isinstance(r, MeshResult) else None

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

    # ------------------------------------------------------------------ edits (undoable)
    def _push(self, cmd: Any) -> None:
        self.undo_stack.push(cmd)

    def edit_move_keypoint(self, uid: int, joint: int, xy: tuple[float, float], drag_id: int = 0) -> None:
        from .commands import MoveKeypointCommand

        p = self.person(uid)
        if p is not None:
            self._push(MoveKeypointCommand(self, uid, joint, xy, drag_id))

    def edit_add_keypoint(self, uid: int, joint: int, xy: tuple[float, float]) -> None:
        from .commands import AddKeypointCommand

        if self.person(uid) is not None:
            self._push(AddKeypointCommand(self, uid, joint, xy))

    def edit_delete_keypoint(self, uid: int, joint: int) -> None:
        from .commands import DeleteKeypointCommand

        if self.person(uid) is not None:
            self._push(DeleteKeypointCommand(self, uid, joint))

    def edit_toggle_visibility(self, uid: int, joint: int) -> None:
        from .commands import ToggleVisibilityCommand

        if self.person(uid) is not None:
            self._push(ToggleVisibilityCommand(self, uid, joint))

    def edit_set_box(self, uid: int, box: tuple[float, float, float, float]) -> None:
        from .commands import SetBoxCommand

        if self.person(uid) is not None:
            self._push(SetBoxCommand(self, uid, box))

    def edit_add_person(self, person: Person, frame: int | None = None) -> int:
        from .commands import AddPersonCommand

        cmd = AddPersonCommand(self, self.current_frame if frame is None else frame, person)
        self._push(cmd)
        return cmd.uid

    def edit_remove_person(self, uid: int) -> None:
        from .commands import RemovePersonCommand

        if self.person(uid) is not None:
            self._push(RemovePersonCommand(self, uid))

    def edit_replace_person(self, uid: int, person: Person, text: str = "Edit person") -> None:
        from .commands import ReplacePersonCommand

        if self.person(uid) is not None:
            self._push(ReplacePersonCommand(self, uid, person, text))

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
