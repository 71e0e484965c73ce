"""Tracks in the app (issue 11): colour and label follow the track, the track list, SLEAP-like proofreading
(swap from frame N, merge, split, delete from frame N) and CVAT-like key frames (interpolation only between
two key frames of a track, past the last one only when asked, interpolated points marked as such, one
fast undo step). Every edit is an undoable command."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest
from app_testkit import RecordingEstimator, make_person

from app import keyframes, tracks
from app.document import Document
from app.editor import Editor
from app.jobs import InferenceService
from app.palette import person_rgb
from app.session import Session
from dpmesh_core import api


@pytest.fixture
def street(media_dir):
    m = api.open_media(media_dir / "street.avi")
    yield m
    m.close()


def _walker(track: int, frame: int, x0: float = 100.0, speed: float = 10.0, seed: int = 0):
    """A person of track ``track`` walking right by ``speed`` px per frame (box and key-points move)."""
    p = make_person(seed, x0=x0 + speed * frame, y0=80)
    kp = np.array(p.keypoints)
    kp[:, 2] = 0.9
    return dataclasses.replace(p, keypoints=kp, visible=np.ones(len(kp), bool),
                               box=Person_box(kp), track_id=track)


def Person_box(kp):  # noqa: N802 - a helper named after what it builds
    from dpmesh_core.types import Person

    return Person.box_from_keypoints(kp)


def _video_doc(street, n_frames: int, tracks_per_frame=((0, 1),)) -> Document:
    doc = Document()
    doc.set_media(street)
    for f in range(n_frames):
        ids = tracks_per_frame[f % len(tracks_per_frame)]
        doc.set_frame_persons(f, [_walker(t, f, x0=100 + 250 * t, seed=t) for t in ids])
    return doc


def test_colour_and_label_follow_the_track_not_the_order(qapp, street):
    doc = _video_doc(street, 3, tracks_per_frame=((0, 1, 8), (8, 1, 0), (1, 8)))
    keys = {}
    for f in range(3):
        for u, p in zip(doc.uids(f), doc.persons(f)):
            keys.setdefault(p.track_id, set()).add((doc.color_key(u), doc.label(u)))
    assert keys == {0: {(1, "#0")}, 1: {(2, "#1")}, 8: {(9, "#8")}}  # one colour and label per track
    assert person_rgb(1) != person_rgb(2) != person_rgb(9)
    # the persons panel shows the same: the icon colour and label of track 8 on frames 0 and 1
    from app.widgets.persons_panel import PersonsPanel

    panel = PersonsPanel(doc)
    seen = []
    for f in (0, 1):
        doc.set_current_frame(f)
        panel.refresh()
        for row in range(panel.list.count()):
            it = panel.list.item(row)
            if it.text().startswith("#8 "):
                seen.append(it.icon().pixmap(12, 12).toImage().pixelColor(6, 6).getRgb()[:3])
    assert len(seen) == 2 and seen[0] == seen[1] == person_rgb(9)


def test_track_list_first_last_frame_and_key_frames(qapp, street):
    doc = _video_doc(street, 6, tracks_per_frame=((0, 1), (0,), (0, 1)))
    u = doc.uids(2)[0]
    Editor(doc).move_keypoint(u, 3, (120.0, 130.0))
    info = {t.track_id: t for t in tracks.summary(doc)}
    assert (info[0].first, info[0].last, info[0].frames, info[0].key_frames) == (0, 5, 6, 1)
    assert (info[1].first, info[1].last, info[1].frames, info[1].key_frames) == (0, 5, 4, 0)
    assert doc.key_frames(0) == [2] and doc.key_frames(1) == [] and doc.key_frames() == [2]


def _tracks_by_frame(doc, n):
    return [sorted((p.track_id, round(float(p.box[0]))) for p in doc.persons(f)) for f in range(n)]


def test_swap_merge_split_delete_are_undoable_commands(qapp, street):
    doc = _video_doc(street, 8)
    for f in range(8):
        for u in doc.uids(f):
            doc.set_result(u, f"mesh of {u}")  # stands for a result: track edits never drop meshes
    before = _tracks_by_frame(doc, 8)
    boxes = {f: {p.track_id: float(p.box[0]) for p in doc.persons(f)} for f in range(8)}
    # swap tracks 0 and 1 from frame 4 on: one step
    n0 = doc.undo_stack.count()
    assert tracks.swap_tracks(doc, 0, 1, from_frame=4) == 8
    assert doc.undo_stack.count() == n0 + 1
    for f in range(8):
        now = {p.track_id: float(p.box[0]) for p in doc.persons(f)}
        assert now == (boxes[f] if f < 4 else {0: boxes[f][1], 1: boxes[f][0]})
        assert all(doc.raw_result(u) == f"mesh of {u}" for u in doc.uids(f))
    doc.undo_stack.undo()
    assert _tracks_by_frame(doc, 8) == before
    # split track 0 at frame 5: a new id that was never used
    new = tracks.split_track(doc, 0, at_frame=5)
    assert new == 2 and doc.tracks()[0] == [0, 1, 2, 3, 4] and doc.tracks()[2] == [5, 6, 7]
    # merge refuses overlapping tracks, accepts disjoint ones
    with pytest.raises(tracks.TrackEditError, match="both present"):
        tracks.merge_tracks(doc, 0, 1)
    assert tracks.merge_tracks(doc, 0, 2) == 3 and doc.tracks()[0] == list(range(8))
    # delete track 1 from frame 6 on, then undo: persons and their results come back in place
    assert tracks.delete_track(doc, 1, from_frame=6) == 2
    assert doc.tracks()[1] == [0, 1, 2, 3, 4, 5] and len(doc.persons(7)) == 1
    doc.undo_stack.undo()
    assert doc.tracks()[1] == list(range(8)) and all(doc.raw_result(u) == f"mesh of {u}" for u in doc.uids(7))
    doc.undo_stack.undo()  # the merge
    doc.undo_stack.undo()  # the split
    assert _tracks_by_frame(doc, 8) == before
    # ids are never reused, even after the split that made #2 was undone
    assert doc.new_track_id() == 3


def test_interpolation_only_between_key_frames_and_past_the_last_only_when_asked(qapp, street):
    doc = _video_doc(street, 12, tracks_per_frame=((0,),))
    originals = [doc.persons(f)[0] for f in range(12)]
    u2, u8 = doc.uids(2)[0], doc.uids(8)[0]
    p2, p8 = doc.person(u2), doc.person(u8)
    j = 9  # a wrist
    Editor(doc).move_keypoint(u2, j, tuple(p2.keypoints[j, :2] + (30.0, -20.0)))
    # one key frame: nothing to interpolate (the old Ctrl+I copied it into every later frame)
    assert keyframes.interpolate_track(doc, 0) == 0
    assert all(np.array_equal(doc.persons(f)[0].keypoints, originals[f].keypoints) for f in range(12) if f != 2)
    Editor(doc).move_keypoint(u8, j, tuple(p8.keypoints[j, :2] + (-10.0, 40.0)))
    n = doc.undo_stack.count()
    assert keyframes.interpolate_track(doc, 0) == 5  # frames 3..7
    assert doc.undo_stack.count() == n + 1
    k2, k8 = doc.persons(2)[0], doc.persons(8)[0]
    for f in range(12):
        p = doc.persons(f)[0]
        u = doc.uids(f)[0]
        if 2 < f < 8:
            t = (f - 2) / 6
            # box-relative interpolation: the person walks 10 px per frame, the correction walks with it
            rel = (1 - t) * (k2.keypoints[j, :2] - _centre(k2)) + t * (k8.keypoints[j, :2] - _centre(k8))
            assert np.allclose(p.keypoints[j, :2], _centre(originals[f]) + rel, atol=1e-3)
            assert not p.edited.any(), "interpolated points are not user edits"
            assert doc.interpolated[u][j] and doc.interpolated[u].sum() == 1
            others = np.arange(17) != j
            assert np.array_equal(p.keypoints[others], originals[f].keypoints[others])
        elif f not in (2, 8):
            assert np.array_equal(p.keypoints, originals[f].keypoints) and u not in doc.interpolated
    # past the last key frame only when asked, for the number of frames asked
    assert keyframes.interpolate_track(doc, 0, after_last=2) == 2 + 5
    assert doc.uids(9)[0] in doc.interpolated and doc.uids(10)[0] in doc.interpolated
    assert doc.uids(11)[0] not in doc.interpolated
    assert np.allclose(doc.persons(10)[0].keypoints[j, :2] - _centre(originals[10]),
                       k8.keypoints[j, :2] - _centre(k8), atol=1e-3)
    doc.undo_stack.undo()
    doc.undo_stack.undo()
    assert all(np.array_equal(doc.persons(f)[0].keypoints, originals[f].keypoints) for f in range(12) if f not in (2, 8))
    assert not doc.interpolated


def _centre(p):
    b = np.asarray(p.box, np.float64)
    return (b[:2] + b[2:]) / 2


def test_interpolated_points_are_drawn_and_listed_as_interpolated(qapp, qtbot, street):
    from app.widgets.image_view import ImageView
    from app.widgets.persons_panel import PersonsPanel

    doc = _video_doc(street, 5, tracks_per_frame=((0,),))
    for f in (0, 4):
        u = doc.uids(f)[0]
        Editor(doc).move_keypoint(u, 9, tuple(doc.person(u).keypoints[9, :2] + 15.0))
    keyframes.interpolate_track(doc, 0)
    doc.set_current_frame(2)
    doc.select(doc.uids(2)[0])
    doc.select_joint(9)
    panel = PersonsPanel(doc)
    qtbot.addWidget(panel)
    panel.refresh()
    assert "1 interpolated" in panel.list.item(0).text()
    assert panel.table.item(9, 3).text() == "◇ interpolated" and panel.table.item(8, 3).text() == "auto"
    # the image view draws a marker around it that an untouched frame does not have
    view = ImageView(doc)
    qtbot.addWidget(view)
    view.resize(700, 500)
    view.show()

    def grab():
        qapp.processEvents()
        return view.viewport().grab().toImage()

    with_mark = grab()
    doc.undo_stack.undo()  # the interpolation
    without = grab()
    assert with_mark != without


def test_undo_of_an_interpolation_over_200_frames_is_one_fast_step(qapp, qtbot, street):
    """The old propagation pushed one command per frame, each re-estimating its person: undo froze ~20 s."""
    from app.widgets.image_view import ImageView
    from app.widgets.persons_panel import PersonsPanel
    from app.widgets.timeline import Timeline

    est = RecordingEstimator()
    s = Session(inference=InferenceService(estimator_factory=lambda: est))
    s.auto_detect = False
    s.live_inference = False
    try:
        s.doc.set_media(street)
        doc = s.doc
        for f in range(200):
            doc.set_frame_persons(f, [_walker(t, f, x0=60 + 60 * t, speed=0.5, seed=t) for t in range(6)])
        for w in (ImageView(doc), PersonsPanel(doc), Timeline(doc)):
            qtbot.addWidget(w)
            w.show()
        for f in (0, 199):
            u = doc.uids(f)[2]
            Editor(doc).move_keypoint(u, 9, tuple(doc.person(u).keypoints[9, :2] + 12.0))
        s.live_inference = True
        qapp.processEvents()
        t0 = time.perf_counter()
        assert keyframes.interpolate_track(doc, 2) == 198
        qapp.processEvents()
        redo_s = time.perf_counter() - t0
        calls = len(est.calls)
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            doc.undo_stack.undo()
            qapp.processEvents()
            times.append(time.perf_counter() - t0)
            doc.undo_stack.redo()
            qapp.processEvents()
        doc.undo_stack.undo()
        print(f"interpolate 198 frames: {redo_s * 1000:.1f} ms; undo: {[round(t * 1000, 1) for t in times]} ms")
        # the GUI time is printed, not asserted (a figure, not a pass/fail on a shared machine); what made undo
        # freeze for ~20 s was re-estimating every frame, which the call count below rules out
        assert all(np.array_equal(doc.persons(f)[2].edited, np.zeros(17, bool)) for f in range(1, 199))
        qtbot.waitUntil(lambda: not s.is_busy(), timeout=20000)
        assert len(est.calls) - calls <= 2, "undo re-estimates only the shown frame, not 198 frames"
    finally:
        s.shutdown()


def test_timeline_marks_key_frames_of_the_selected_track(qapp, qtbot, street):
    from app.widgets.timeline import Timeline

    doc = _video_doc(street, 10)
    tl = Timeline(doc)
    qtbot.addWidget(tl)
    tl.resize(600, 40)
    tl.show()
    u = doc.uids(3)[1]
    Editor(doc).move_keypoint(u, 0, (400.0, 90.0))
    u7 = doc.uids(7)[0]
    Editor(doc).move_keypoint(u7, 0, (110.0, 90.0))
    doc.select(doc.uids(3)[1])
    qtbot.waitUntil(lambda: tl.keys.all_keys == [3, 7], timeout=2000)
    assert tl.keys.track_keys == [3]
    assert tl.keys.x_of(3) < tl.keys.x_of(7)
    doc.undo_stack.undo()
    qtbot.waitUntil(lambda: tl.keys.all_keys == [3], timeout=2000)


def test_tracks_panel_lists_tracks_and_proofreads_through_its_buttons(qapp, qtbot, street):
    from app.widgets.tracks_panel import TracksPanel

    doc = _video_doc(street, 6, tracks_per_frame=((0, 1), (0, 1), (1,)))
    panel = TracksPanel(doc)
    qtbot.addWidget(panel)
    panel.show()
    rows = [[panel.table.item(r, c).text() for c in range(5)] for r in range(panel.table.rowCount())]
    assert rows == [["#0", "1", "5", "4", "0"], ["#1", "1", "6", "6", "0"]]
    doc.set_current_frame(3)
    doc.select(doc.uids(3)[0])  # track 0
    qtbot.waitUntil(lambda: panel.other.count() == 1 and panel.other_track() == 1, timeout=2000)
    panel.swap_btn.click()
    assert "Swapped #0 and #1 from frame 4" in panel.state.text()
    assert [p.track_id for p in doc.persons(3)] == [1, 0] and [p.track_id for p in doc.persons(1)] == [0, 1]
    # the selected person is now track 1: the panel follows it (the other track is 0)
    qtbot.waitUntil(lambda: panel.selected_track() == 1 and panel.other_track() == 0, timeout=2000)
    panel.interp_btn.click()  # no key frame yet: says why nothing happened
    assert "key frame" in panel.state.text() and doc.undo_stack.undoText().startswith("Swap")
    panel.merge_btn.click()  # overlapping tracks: refused, in words
    assert "both present" in panel.state.text()
    doc.undo_stack.undo()
    assert [p.track_id for p in doc.persons(3)] == [0, 1]


def test_scrubbed_frames_take_the_ids_of_the_neighbouring_frame(qapp, street):
    """A frame detected on its own (the user scrubbed to it) is matched to the nearest tracked frame by the
    core tracker; only a person seen there for the first time gets a new id, one never used before."""
    doc = _video_doc(street, 3, tracks_per_frame=((4, 7),))
    doc.set_frame_persons(2, [])
    doc.new_track_id()  # 8 was used once (e.g. a deleted track): never given again
    detected = [dataclasses.replace(_walker(t, 2, x0=100 + 250 * t, seed=t), track_id=None) for t in (7, 4)]
    stranger = dataclasses.replace(_walker(0, 2, x0=900, seed=5), track_id=None)
    out = tracks.assign_from_neighbours(doc, 2, detected + [stranger], api.Tracker)
    assert [p.track_id for p in out] == [7, 4, 9]
    # scrubbing back and forth over the same frames gives the same ids again (nothing new is invented)
    doc.set_frame_persons(2, out)
    doc.set_frame_persons(1, [])
    again = tracks.assign_from_neighbours(doc, 1, [dataclasses.replace(p, track_id=None) for p in doc.persons(0)],
                                          api.Tracker)
    assert sorted(p.track_id for p in again) == [4, 7]


def test_video_mesh_export_is_named_by_track_like_the_cli(qapp, qtbot, street, tmp_path):
    from app_testkit import RecordingEstimator

    from app.jobs import InferenceService
    from app.session import Session

    est = RecordingEstimator()
    s = Session(inference=InferenceService(estimator_factory=lambda: est))
    s.auto_detect = False
    try:
        s.open_path(street.path)
        for f in (3, 4):
            s.doc.set_frame_persons(f, [_walker(t, f, x0=100 + 250 * t, seed=t) for t in (7, 2)])
            s.estimate_all(f)
        qtbot.waitUntil(lambda: all(r is not None for f in (3, 4) for r in s.doc.results(f)), timeout=30000)
        files = sorted(p.name for p in s.export_meshes(tmp_path, "video", ("npz",)))
        assert files == ["street_f000003_track002.npz", "street_f000003_track007.npz",
                         "street_f000004_track002.npz", "street_f000004_track007.npz"]
        z = np.load(tmp_path / "street_f000004_track007.npz")
        assert z["input_keypoints"].shape == (17, 3)  # the evidence the mesh was estimated from
    finally:
        s.shutdown()


def test_a_new_frame_never_shows_the_previous_frames_meshes(qapp, qtbot, street):
    """Stepping to another frame removes the overlay of the one before at once (its meshes stood beside the
    new frame's skeletons until the new overlay was rendered)."""
    from app.widgets.image_view import ImageView

    doc = _video_doc(street, 3)
    view = ImageView(doc)
    qtbot.addWidget(view)
    overlay = np.full((street.size[1], street.size[0], 3), 200, np.uint8)
    view.set_overlay(overlay)
    assert not view.overlay_item.pixmap().isNull()
    doc.set_current_frame(1)
    assert view.overlay_item.pixmap().isNull()


def test_interpolated_marks_survive_saving_and_reopening(qapp, qtbot, street, tmp_path, isolated_home):
    from app_testkit import RecordingEstimator

    from app.editor import Editor
    from app.jobs import InferenceService
    from app.session import Session

    def session():
        s = Session(inference=InferenceService(estimator_factory=lambda: RecordingEstimator()))
        s.auto_detect = False
        s.live_inference = False
        return s

    s = session()
    try:
        s.open_path(street.path)
        for f in range(5):
            s.doc.set_frame_persons(f, [_walker(0, f)])
        for f in (0, 4):
            u = s.doc.uids(f)[0]
            Editor(s.doc).move_keypoint(u, 9, tuple(s.doc.person(u).keypoints[9, :2] + 10.0))
        assert keyframes.interpolate_track(s.doc, 0) == 3
        out = s.save_project(tmp_path / "clip")
    finally:
        s.shutdown()
    s2 = session()
    try:
        assert s2.load_project(out)
        for f in (1, 2, 3):
            m = s2.doc.interpolated[s2.doc.uids(f)[0]]
            assert m[9] and m.sum() == 1 and not s2.doc.persons(f)[0].edited.any()
        assert s2.doc.uids(0)[0] not in s2.doc.interpolated and "interpolated" not in s2.doc.settings
    finally:
        s2.shutdown()
