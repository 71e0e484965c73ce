"""The user's edit intents: each becomes one ``QUndoCommand`` (``app.commands``) pushed on the Document's undo
stack, so every edit can be undone. Widgets, the main window and tests edit through an ``Editor``; the
Document itself offers only named mutation primitives (which the commands call).

An ``Editor`` holds nothing but its Document: ``Editor(doc).move_keypoint(...)`` is as good as a kept one.
"""

from __future__ import annotations

from dpmesh_core.types import Person

from .commands import (
    AddKeypointCommand,
    AddPersonCommand,
    DeleteKeypointCommand,
    MoveKeypointCommand,
    RemovePersonCommand,
    ReplacePersonCommand,
    SetBoxCommand,
    ToggleVisibilityCommand,
)
from .document import Document


class Editor:
    """Edit intents on ``doc`` (each a no-op for a person that no longer exists)."""

    def __init__(self, doc: Document):
        self.doc = doc

    def _push(self, command: object) -> None:
        self.doc.undo_stack.push(command)

    def move_keypoint(self, uid: int, joint: int, xy: tuple[float, float], drag_id: int = 0) -> None:
        """Move a joint to ``xy`` (image pixels); moves with the same non-zero ``drag_id`` merge into one step."""
        if self.doc.person(uid) is not None:
            self._push(MoveKeypointCommand(self.doc, uid, joint, xy, drag_id))

    def add_keypoint(self, uid: int, joint: int, xy: tuple[float, float]) -> None:
        if self.doc.person(uid) is not None:
            self._push(AddKeypointCommand(self.doc, uid, joint, xy))

    def delete_keypoint(self, uid: int, joint: int) -> None:
        if self.doc.person(uid) is not None:
            self._push(DeleteKeypointCommand(self.doc, uid, joint))

    def toggle_visibility(self, uid: int, joint: int) -> None:
        if self.doc.person(uid) is not None:
            self._push(ToggleVisibilityCommand(self.doc, uid, joint))

    def set_box(self, uid: int, box: tuple[float, float, float, float]) -> None:
        if self.doc.person(uid) is not None:
            self._push(SetBoxCommand(self.doc, uid, box))

    def add_person(self, person: Person, frame: int | None = None) -> int:
        """Add ``person`` to ``frame`` (default: the current one); returns its uid."""
        cmd = AddPersonCommand(self.doc, self.doc.current_frame if frame is None else frame, person)
        self._push(cmd)
        return cmd.uid

    def remove_person(self, uid: int) -> None:
        if self.doc.person(uid) is not None:
            self._push(RemovePersonCommand(self.doc, uid))

    def replace_person(self, uid: int, person: Person, text: str = "Edit person") -> None:
        if self.doc.person(uid) is not None:
            self._push(ReplacePersonCommand(self.doc, uid, person, text))
