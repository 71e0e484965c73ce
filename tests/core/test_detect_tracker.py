"""Tracker: stable ids across frames (synthetic motion, shuffles, occlusion gaps, a real street video)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from dpmesh_core.detect import Tracker, get_detector
from dpmesh_core.detect.tracker import oks
from dpmesh_core.types import Person


def _person(cx: float, cy: float, rng: np.random.Generator, size: float = 100.0) -> Person:
    # a crude stick figure: 17 points spread over a box of the given size
    offs = rng.uniform(-0.4, 0.4, (17, 2)) * size
    kp = np.c_[offs + [cx, cy], np.full(17, 0.9)]
    return Person(box=[cx - size / 2, cy - size, cx + size / 2, cy + size], keypoints=kp, score=0.9)


def _moved(p: Person, dx: float, dy: float) -> Person:
    kp = p.keypoints.copy()
    kp[:, :2] += [dx, dy]
    return Person(box=p.box + [dx, dy, dx, dy], keypoints=kp, score=p.score)


def test_ids_stable_under_motion_and_shuffle():
    rng = np.random.default_rng(0)
    people = [_person(100 + 150 * i, 200, rng) for i in range(4)]
    tr = Tracker(max_age=5)
    first = tr.update(people)
    assert [p.track_id for p in first] == [0, 1, 2, 3]
    for step in range(1, 20):
        people = [_moved(p, 4.0, 1.5 * (i - 1.5)) for i, p in enumerate(people)]
        order = rng.permutation(len(people))
        out = tr.update([people[i] for i in order])
        assert [p.track_id for p in out] == order.tolist(), f"step {step}"
        # the input order and content are kept, only track_id is set
        np.testing.assert_array_equal(out[0].keypoints, people[order[0]].keypoints)


def test_crossing_people_keep_ids_thanks_to_keypoints():
    """Two people with overlapping boxes: key-points tell them apart where IoU cannot."""
    rng = np.random.default_rng(1)
    a, b = _person(200, 200, rng), _person(230, 200, rng)
    tr = Tracker(iou_weight=0.3)
    tr.update([a, b])
    a2, b2 = _moved(a, 3, 0), _moved(b, -3, 0)
    out = tr.update([b2, a2])
    assert [p.track_id for p in out] == [1, 0]
    assert oks(a.keypoints, a2.keypoints, 100 * 200) > oks(a.keypoints, b2.keypoints, 100 * 200)


def test_gap_new_person_and_max_age():
    rng = np.random.default_rng(2)
    a, b = _person(100, 200, rng), _person(500, 200, rng)
    tr = Tracker(max_age=2)
    tr.update([a, b])
    assert [p.track_id for p in tr.update([a])] == [0]  # b unseen 1 frame
    assert [p.track_id for p in tr.update([a, b])] == [0, 1]  # b comes back with its id
    tr.update([a])
    tr.update([a])
    tr.update([a])  # b unseen 3 frames > max_age
    assert tr.active_ids == [0]
    assert [p.track_id for p in tr.update([a, b])] == [0, 2]  # b is a new track now
    # a far-away person never steals an id
    assert [p.track_id for p in tr.update([_moved(a, 2000, 0)])] == [3]
    tr.reset()
    assert tr.active_ids == [] and [p.track_id for p in tr.update([b])] == [0]
    assert tr.update([]) == []


def test_street_video_ids_persist(media_dir):
    path = media_dir / "street.avi"
    if not path.is_file():
        pytest.fail(f"street video not found at {path} (set DPMESH_SHARED)")
    import cv2

    cap = cv2.VideoCapture(str(path))
    frames = []
    while len(frames) < 6:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(np.ascontiguousarray(f[:, :, ::-1]))
    cap.release()
    assert len(frames) == 6
    det = get_detector("yolo")
    tr = Tracker(max_age=10)
    prev: dict[int, np.ndarray] = {}
    kept = total = 0
    for t, persons in enumerate(det.detect_many(frames)):
        assert len(persons) >= 3  # a crowded street
        out = tr.update(persons)
        ids = [p.track_id for p in out]
        assert len(set(ids)) == len(ids)  # one id per person per frame
        for p in out:
            if p.track_id in prev:
                # a kept id moves little between frames 20 ms apart
                c0, c1 = (prev[p.track_id][:2] + prev[p.track_id][2:]) / 2, (p.box[:2] + p.box[2:]) / 2
                assert np.linalg.norm(c1 - c0) < 40
                kept += 1
            total += t > 0
        prev = {p.track_id: p.box for p in out}
    # after the first frame almost every person continues the track it had in the frame before
    assert kept / total > 0.8, (kept, total)


def _walker(cx: float, cy: float, rng: np.random.Generator, size: float = 100.0) -> Person:
    return _person(cx, cy, rng, size)


def test_occluded_walker_is_found_again_after_six_frames():
    """A person walking 15 px a frame (boxes 100 px wide) is hidden for 6 frames: on coming out 105 px from
    where it was last seen, the motion model still expects it there and it keeps its id; another person
    standing nearby does not take it."""
    rng = np.random.default_rng(4)
    walker, stander = _walker(100, 200, rng), _person(420, 200, rng)
    tr = Tracker()
    for _ in range(8):
        out = tr.update([walker, stander])
        assert [p.track_id for p in out] == [0, 1]
        walker = _moved(walker, 15, 0)
    for _ in range(6):  # hidden
        assert [p.track_id for p in tr.update([stander])] == [1]
        assert tr.lost_ids == [0]
        walker = _moved(walker, 15, 0)
    for t in range(4):
        out = tr.update([stander, walker])
        assert [p.track_id for p in out] == [1, 0], t
        walker = _moved(walker, 15, 0)


def test_crossing_with_the_back_person_hidden_keeps_both_ids():
    """Two people walk toward each other and cross; while they overlap most the one behind is not detected
    at all (5 frames, 70 px of walking). Both keep their ids on the other side."""
    rng = np.random.default_rng(6)
    a, b = _walker(60, 200, rng), _walker(480, 200, rng, size=110)
    tr = Tracker()
    seen: dict[str, set] = {"a": set(), "b": set()}
    hidden_frames = 0
    for t in range(30):
        hidden = abs(float(a.box[0] + a.box[2] - b.box[0] - b.box[2])) / 2 < 70  # a is behind b
        hidden_frames += hidden
        persons = [b] if hidden else ([b, a] if t % 2 else [a, b])
        out = tr.update(persons)
        for p, q in zip(persons, out):
            seen["a" if p is a else "b"].add(q.track_id)
        a, b = _moved(a, 14, 0), _moved(b, -14, 0)
    assert hidden_frames == 5 and float(a.box[0]) > float(b.box[2])  # they did cross
    assert seen == {"a": {0}, "b": {1}}


def test_ids_are_never_reused_and_given_ids_are_kept():
    rng = np.random.default_rng(7)
    a, b = _person(100, 200, rng), _person(500, 200, rng)
    tr = Tracker(max_age=1)
    # a person that already carries an id (a user's edit, a key-point file) keeps it and reserves it
    out = tr.update([dataclasses.replace(a, track_id=7), b])
    assert [p.track_id for p in out] == [7, 8]
    out = tr.update([a, b])  # the same people, now without ids: matched to their tracks
    assert [p.track_id for p in out] == [7, 8]
    for _ in range(3):
        tr.update([a])  # b lost for longer than max_age: dropped
    assert tr.active_ids == [7]
    out = tr.update([a, b])
    assert [p.track_id for p in out] == [7, 9]  # b is a new person now: a new id, never 8 again
    # a user's person on a known id moves that track there; a second person with that id is not merged
    moved = _moved(a, 300, 100)
    out = tr.update([dataclasses.replace(moved, track_id=7), b])
    assert [p.track_id for p in out] == [7, 9]
    out = tr.update([_moved(moved, 2, 0), b])
    assert [p.track_id for p in out] == [7, 9]
