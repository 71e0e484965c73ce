"""Tracker: stable ids across frames (synthetic motion, shuffles, occlusion gaps, a real street video)."""

from __future__ import annotations

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
