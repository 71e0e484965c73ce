"""One ``QUndoCommand`` per edit of the Document.

Every command stores the person before and after the edit (persons are frozen dataclasses, so this is
cheap and exact); ``redo`` applies, ``undo`` restores. Consecutive moves of the same joint of the same
person within one drag (same ``drag_id``) merge into a single undo step.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np
from PySide6.QtGui import QUndoCommand

from dpmesh_core.types import Person

if TYPE_CHECKING:
    from .document import Document

MOVE_KEYPOINT_ID = 1001


class ReplacePersonCommand(QUndoCommand):
    """Replace person ``uid`` by ``new`` (the base of every single-person edit)."""

    def __init__(self, doc: Document, uid: int, new: Person, text: str = "Edit person"):
        super().__init__(text)
        self.doc = doc
        self.uid = uid
        old = doc.person(uid)
        if old is None:
            raise KeyError(f"no person with uid {uid}")
        self.old = old
        self.new = new

    def redo(self) -> None:
        self.doc.replace_person(self.uid, self.new)

    def undo(self) -> None:
        self.doc.replace_person(self.uid, self.old)


class MoveKeypointCommand(ReplacePersonCommand):
    """Move joint ``joint`` to ``xy`` (image pixels); marks it edited and visible."""

    def __init__(self, doc: Document, uid: int, joint: int, xy: tuple[float, float], drag_id: int = 0):
        p = doc.person(uid)
        if p is None:
            raise KeyError(f"no person with uid {uid}")
        new = doc.with_joint(p, joint, xy=xy, conf=1.0, visible=True)
        super().__init__(doc, uid, new, f"Move key-point {joint}")
        self.joint = joint
        self.drag_id = drag_id

    def id(self) -> int:  # noqa: A003 - Qt API
        return MOVE_KEYPOINT_ID

    def mergeWith(self, other: QUndoCommand) -> bool:  # noqa: N802 - Qt API
        if not isinstance(other, MoveKeypointCommand):
            return False
        if (other.uid, other.joint, other.drag_id) != (self.uid, self.joint, self.drag_id) or self.drag_id == 0:
            return False
        self.new = other.new
        return True


class AddKeypointCommand(ReplacePersonCommand):
    """Place a missing joint at ``xy`` with full confidence, visible, edited."""

    def __init__(self, doc: Document, uid: int, joint: int, xy: tuple[float, float]):
        p = doc.person(uid)
        if p is None:
            raise KeyError(f"no person with uid {uid}")
        super().__init__(doc, uid, doc.with_joint(p, joint, xy=xy, conf=1.0, visible=True), f"Add key-point {joint}")
        self.joint = joint


class DeleteKeypointCommand(ReplacePersonCommand):
    """Delete a joint: confidence 0 and invisible (it then weighs nothing in estimation)."""

    def __init__(self, doc: Document, uid: int, joint: int):
        p = doc.person(uid)
        if p is None:
            raise KeyError(f"no person with uid {uid}")
        super().__init__(doc, uid, doc.with_joint(p, joint, conf=0.0, visible=False), f"Delete key-point {joint}")
        self.joint = joint


class ToggleVisibilityCommand(ReplacePersonCommand):
    """Mark a joint occluded (invisible) or visible again."""

    def __init__(self, doc: Document, uid: int, joint: int):
        p = doc.person(uid)
        if p is None:
            raise KeyError(f"no person with uid {uid}")
        vis = not bool(p.visible[joint])
        conf = float(p.keypoints[joint, 2])
        new = doc.with_joint(p, joint, visible=vis, conf=(conf if conf > 0 or not vis else 1.0))
        super().__init__(doc, uid, new, f"Mark key-point {joint} {'visible' if vis else 'occluded'}")
        self.joint = joint


class SetBoxCommand(ReplacePersonCommand):
    """Set a person's box (x0, y0, x1, y1) pixels (normalised so x0 < x1, y0 < y1)."""

    def __init__(self, doc: Document, uid: int, box: tuple[float, float, float, float]):
        p = doc.person(uid)
        if p is None:
            raise KeyError(f"no person with uid {uid}")
        b = np.asarray(box, np.float32)
        b = np.array([min(b[0], b[2]), min(b[1], b[3]), max(b[0], b[2]), max(b[1], b[3])], np.float32)
        super().__init__(doc, uid, dataclasses.replace(p, box=b, source="user"), "Set box")


class AddPersonCommand(QUndoCommand):
    """Add a person to ``frame`` (appended); undo removes it."""

    def __init__(self, doc: Document, frame: int, person: Person):
        super().__init__("Add person")
        self.doc = doc
        self.frame = frame
        self.person = person
        self.uid = doc.new_uid()
        self.index = len(doc.persons(frame))

    def redo(self) -> None:
        self.doc.insert_person(self.frame, self.index, self.uid, self.person)
        self.doc.select(self.uid)

    def undo(self) -> None:
        self.doc.remove_person(self.uid)


class RemovePersonCommand(QUndoCommand):
    """Remove a person (and its result); undo puts both back at the same place."""

    def __init__(self, doc: Document, uid: int):
        super().__init__("Remove person")
        self.doc = doc
        self.uid = uid
        loc = doc.locate(uid)
        if loc is None:
            raise KeyError(f"no person with uid {uid}")
        self.frame, self.index = loc
        self.person = doc.person(uid)
        self.result = None

    def redo(self) -> None:
        removed = self.doc.remove_person(self.uid)
        if removed is not None:
            self.result = removed[3]

    def undo(self) -> None:
        self.doc.insert_person(self.frame, self.index, self.uid, self.person, self.result)


class BatchEditCommand(QUndoCommand):
    """Many persons changed, removed or both, as ONE undo step (key-frame interpolation, track
    proofreading). Signals go out once per frame, so doing or undoing it over a whole video stays fast.

    ``replace``: {uid: new Person}; ``interpolated``: {uid: (J,) mask of joints placed by interpolation, or
    None}; ``stale``: uids whose mesh no longer fits the new key-points (dropped on redo, given back on undo:
    undo needs no re-estimation); ``remove``: uids removed (with their results, given back on undo).
    """

    def __init__(self, doc: Document, text: str, replace: dict[int, Person] | None = None,
                 interpolated: dict[int, np.ndarray | None] | None = None, stale: set[int] | None = None,
                 remove: list[int] | None = None):
        super().__init__(text)
        self.doc = doc
        self.new = dict(replace or {})
        self.old = {u: doc.person(u) for u in self.new}
        if any(p is None for p in self.old.values()):
            raise KeyError("a person of the edit no longer exists")
        self.new_interp = dict(interpolated or {})
        self.old_interp = {u: doc.interpolated.get(u) for u in self.new_interp}
        self.stale = set(stale or ())
        self.old_results = {u: doc.raw_result(u) for u in self.stale}
        self.remove = list(remove or [])
        self._removed: list[tuple] = []

    def redo(self) -> None:
        self.doc.batch_replace(self.new, {u: None for u in self.stale}, self.new_interp, reestimate=True)
        if self.remove:
            self._removed = self.doc.batch_remove(self.remove)

    def undo(self) -> None:
        if self._removed:
            self.doc.batch_insert(self._removed)
            self._removed = []
        self.doc.batch_replace(self.old, self.old_results, self.old_interp, reestimate=True)
