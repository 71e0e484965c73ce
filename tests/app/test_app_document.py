"""The Document and every undoable command: do, undo, redo, merging of drags."""

from __future__ import annotations

import numpy as np
import pytest
from app_testkit import make_person

from app.commands import MoveKeypointCommand
from app.document import Document
from app.editor import Editor


@pytest.fixture
def doc(qapp, image):
    d = Document()
    d.set_media(None, image=image)
    d.set_frame_persons(0, [make_person(0), make_person(1, x0=300)])
    return d


def _state(doc: Document):
    return [(u, p.keypoints.copy(), p.visible.copy(), p.edited.copy(), p.box.copy())
            for u, p in zip(doc.uids(), doc.persons())]


def _same(a, b) -> bool:
    return len(a) == len(b) and all(x[0] == y[0] and all(np.array_equal(i, j) for i, j in zip(x[1:], y[1:]))
                                    for x, y in zip(a, b))


def test_document_basics(doc, image):
    assert doc.num_frames == 1 and not doc.is_video
    assert doc.image().shape == image.shape
    uids = doc.uids()
    assert len(uids) == 2 and len(set(uids)) == 2
    assert doc.locate(uids[1]) == (0, 1)
    assert doc.person(uids[0]) is doc.persons()[0]
    doc.select(uids[1])
    assert doc.selected_uid == uids[1]
    # replacing all persons drops a selection that no longer exists
    doc.set_frame_persons(0, [make_person(3)])
    assert doc.selected_uid == -1 and len(doc.persons()) == 1


def test_results_follow_persons_not_indices(doc):
    u0, u1 = doc.uids()
    doc.set_result(u1, "failed: too few joints")
    assert doc.result_error(u1) == "failed: too few joints"
    Editor(doc).remove_person(u0)
    assert doc.uids() == [u1]
    assert doc.result_error(u1) == "failed: too few joints"  # the result moved with its person
    doc.set_result(u0, "late result of a removed person")  # ignored, no crash
    assert doc.result_error(u0) is None


@pytest.mark.parametrize("edit", ["move", "add", "delete", "toggle", "box", "add_person", "remove_person",
                                  "replace"])
def test_every_command_do_undo_redo(doc, qtbot, edit):
    u0 = doc.uids()[0]
    before = _state(doc)
    edited = []
    doc.person_edited.connect(lambda f, u: edited.append(u))
    if edit == "move":
        Editor(doc).move_keypoint(u0, 5, (12.5, 34.0))
        p = doc.person(u0)
        assert tuple(p.keypoints[5, :2]) == (12.5, 34.0) and p.edited[5] and p.visible[5] and p.source == "user"
    elif edit == "add":
        Editor(doc).delete_keypoint(u0, 3)
        doc.undo_stack.clear()
        before = _state(doc)
        Editor(doc).add_keypoint(u0, 3, (50, 60))
        p = doc.person(u0)
        assert p.keypoints[3, 2] == 1.0 and p.visible[3] and p.edited[3]
    elif edit == "delete":
        Editor(doc).delete_keypoint(u0, 2)
        p = doc.person(u0)
        assert p.keypoints[2, 2] == 0 and not p.visible[2] and p.weights[2] == 0
    elif edit == "toggle":
        Editor(doc).toggle_visibility(u0, 7)
        assert not doc.person(u0).visible[7]
        Editor(doc).toggle_visibility(u0, 7)
        assert doc.person(u0).visible[7]
        doc.undo_stack.undo()
        assert not doc.person(u0).visible[7]
        doc.undo_stack.redo()
        assert doc.person(u0).visible[7]
        Editor(doc).toggle_visibility(u0, 7)
    elif edit == "box":
        Editor(doc).set_box(u0, (200, 220, 10, 20))
        assert np.array_equal(doc.person(u0).box, np.array([10, 20, 200, 220], np.float32))
    elif edit == "add_person":
        uid = Editor(doc).add_person(make_person(9, x0=500))
        assert doc.uids()[-1] == uid and doc.selected_uid == uid and len(doc.persons()) == 3
    elif edit == "remove_person":
        doc.set_result(u0, "error kept for undo")
        Editor(doc).remove_person(u0)
        assert u0 not in doc.uids() and len(doc.persons()) == 1
    elif edit == "replace":
        Editor(doc).replace_person(u0, make_person(42))
    after = _state(doc)
    assert not _same(before, after)
    assert edited or edit == "remove_person", "an edit must ask for re-inference"
    while doc.undo_stack.canUndo():
        doc.undo_stack.undo()
    assert _same(_state(doc), before)
    if edit == "remove_person":
        assert doc.result_error(u0) == "error kept for undo" and doc.uids()[0] == u0
    while doc.undo_stack.canRedo():
        doc.undo_stack.redo()
    assert _same(_state(doc), after)


def test_drag_moves_merge_into_one_undo_step(doc):
    u0 = doc.uids()[0]
    orig = doc.person(u0).keypoints.copy()
    for i in range(10):
        Editor(doc).move_keypoint(u0, 4, (100 + i, 200 + i), drag_id=7)
    assert doc.undo_stack.count() == 1
    assert isinstance(doc.undo_stack.command(0), MoveKeypointCommand)
    assert tuple(doc.person(u0).keypoints[4, :2]) == (109, 209)
    Editor(doc).move_keypoint(u0, 4, (1, 1), drag_id=8)  # a new drag is a new step
    Editor(doc).move_keypoint(u0, 5, (1, 1), drag_id=8)  # another joint too
    assert doc.undo_stack.count() == 3
    doc.undo_stack.undo()
    doc.undo_stack.undo()
    doc.undo_stack.undo()
    assert np.array_equal(doc.person(u0).keypoints, orig)


def test_with_joint_leaves_original_untouched(doc):
    p = doc.persons()[0]
    q = Document.with_joint(p, 0, xy=(1, 2), visible=False)
    assert q is not p and q.keypoints[0, 0] == 1 and not q.visible[0]
    assert p.keypoints[0, 0] != 1 and p.visible[0] and not p.edited[0]
