"""Key frames and interpolation of key-point corrections along a track (as CVAT's key frames).

A *key frame* of a track is a frame where the user corrected its person by hand (a joint with
``Person.edited``). A correction is interpolated only between two key frames of the same track, for the
joints corrected in both; past the track's last key frame it is carried only when asked, for a chosen
number of frames. Interpolated joints are not user edits: they keep ``edited`` False and are listed in
``Document.interpolated`` (drawn differently, re-done by the next interpolation).

Positions are interpolated relative to the person's box (centre and height) in each frame, not in
absolute image coordinates, so a corrected wrist follows a walking person instead of staying at the same
pixel while the body moves on (for a person standing still both are the same straight line).

The whole interpolation is one ``BatchEditCommand`` (one undo step, one signal per frame).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from dpmesh_core.types import Person

from .commands import BatchEditCommand
from .document import Document

INTERPOLATED_CONFIDENCE = 0.9  # confidence given to interpolated joints (user edits have 1.0)


def _frame_of_box(p: Person) -> tuple[np.ndarray, float]:
    b = np.asarray(p.box, np.float64)
    return (b[:2] + b[2:]) / 2, max(float(b[3] - b[1]), 1.0)


def _relative(p: Person, j: int) -> np.ndarray:
    c, h = _frame_of_box(p)
    return (np.asarray(p.keypoints[j, :2], np.float64) - c) / h


def _place(p: Person, rel: np.ndarray) -> np.ndarray:
    c, h = _frame_of_box(p)
    return c + rel * h


def plan(doc: Document, track_id: int, after_last: int = 0) -> tuple[dict[int, Person], dict[int, np.ndarray]]:
    """The interpolated persons of track ``track_id``: ({uid: new person}, {uid: interpolated joints}).

    Between each two consecutive key frames, the joints corrected in both; after the last key frame,
    ``after_last`` frames (0: none) of the joints corrected there. Frames where the track is absent are
    skipped; key frames themselves are never changed."""
    members = doc.track_members(track_id)
    persons = {f: doc.person(u) for f, u in members.items()}
    keys = [f for f, p in persons.items() if p is not None and p.edited.any()]
    todo: dict[int, list[tuple[int, np.ndarray]]] = {}  # frame -> [(joint, relative position)]
    for a, b in zip(keys, keys[1:]):
        pa, pb = persons[a], persons[b]
        joints = np.flatnonzero(pa.edited & pb.edited)
        if len(joints) == 0:
            continue
        for f in range(a + 1, b):
            if f in persons:
                t = (f - a) / (b - a)
                todo[f] = [(int(j), (1 - t) * _relative(pa, j) + t * _relative(pb, j)) for j in joints]
    if keys and after_last > 0:
        last = persons[keys[-1]]
        joints = np.flatnonzero(last.edited)
        for f in range(keys[-1] + 1, keys[-1] + 1 + int(after_last)):
            if f in persons and f not in keys:
                todo[f] = [(int(j), _relative(last, j)) for j in joints]
    new: dict[int, Person] = {}
    masks: dict[int, np.ndarray] = {}
    for f, items in todo.items():
        uid, p = members[f], persons[f]
        kp = np.array(p.keypoints, np.float32)
        vis = np.array(p.visible, bool)
        mask = np.zeros(p.num_joints, bool)
        old = doc.interpolated.get(uid)
        if old is not None and len(old) == p.num_joints:
            mask |= old
        for j, rel in items:
            kp[j, :2] = _place(p, rel)
            kp[j, 2] = max(float(kp[j, 2]), INTERPOLATED_CONFIDENCE)
            vis[j] = True
            mask[j] = True
        new[uid] = dataclasses.replace(p, keypoints=kp, visible=vis)
        masks[uid] = mask
    return new, masks


def interpolate_track(doc: Document, track_id: int, after_last: int = 0) -> int:
    """Interpolate the corrections of track ``track_id`` (see ``plan``) as one undoable step; the meshes of
    the changed persons are estimated again (the shown frame at once, the others when shown). Returns the
    number of frames changed (0: nothing to do, nothing pushed)."""
    new, masks = plan(doc, track_id, after_last)
    if not new:
        return 0
    text = "Interpolate corrections" + (f" (+{after_last} frames)" if after_last else "")
    doc.undo_stack.push(BatchEditCommand(doc, text, replace=new, interpolated=masks, stale=set(new)))
    return len(new)
