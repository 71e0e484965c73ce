"""Widgets driven like a user would: key-point drag / add / occlude / box in the image view, video
key-frame propagation, the attention panel, the models dialog's file checks."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from app_testkit import RecordingEstimator, make_person
from PySide6.QtCore import QEvent, QPoint, QPointF, Qt
from PySide6.QtGui import QMouseEvent
from PySide6.QtWidgets import QApplication

from app.document import Document
from app.editor import Editor
from app.jobs import InferenceService
from app.session import Session
from app.widgets.image_view import ImageView


def _mouse(view: ImageView, kind: QEvent.Type, scene_xy, button=Qt.MouseButton.LeftButton) -> None:
    vp = view.mapFromScene(QPointF(*scene_xy))
    buttons = Qt.MouseButton.NoButton if kind == QEvent.Type.MouseButtonRelease else button
    ev = QMouseEvent(kind, QPointF(vp), QPointF(view.viewport().mapToGlobal(QPoint(vp))), button, buttons,
                     Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(view.viewport(), ev)


def _image_view(qtbot, image, persons) -> ImageView:
    """An ImageView shown at 800x600 over ``image`` with ``persons`` on its only frame."""
    doc = Document()
    doc.set_media(None, image=image)
    doc.set_frame_persons(0, list(persons))
    v = ImageView(doc)
    qtbot.addWidget(v)
    v.resize(800, 600)
    v.show()
    qtbot.waitExposed(v)
    v.fit()
    return v


@pytest.fixture
def view(qtbot, image):
    return _image_view(qtbot, image, [make_person(0), make_person(1, x0=350)])


def test_drag_a_keypoint_is_one_undoable_edit(view, qtbot):
    doc = view.doc
    uid = doc.uids()[1]
    p = doc.person(uid)
    j = 6
    start = tuple(map(float, p.keypoints[j, :2]))
    edits = []
    doc.person_edited.connect(lambda f, u: edits.append(u))
    _mouse(view, QEvent.Type.MouseButtonPress, start)
    assert doc.selected_uid == uid and doc.selected_joint == j
    for k in range(1, 6):  # intermediate moves only preview (no edit, no re-inference yet)
        _mouse(view, QEvent.Type.MouseMove, (start[0] + 4 * k, start[1] + 2 * k))
    assert edits == [] and doc.undo_stack.count() == 0
    _mouse(view, QEvent.Type.MouseButtonRelease, (start[0] + 20, start[1] + 10))
    q = doc.person(uid)
    assert edits == [uid] and doc.undo_stack.count() == 1
    assert np.allclose(q.keypoints[j, :2], (start[0] + 20, start[1] + 10), atol=1.5)
    assert q.edited[j] and q.source == "user"
    doc.undo_stack.undo()
    assert np.allclose(doc.person(uid).keypoints[j, :2], start)


def test_partial_skeleton_repaints_match_a_full_repaint(view, qtbot):
    """Edits, selection and a drag repaint only the changed persons; the picture must equal a full repaint."""
    doc = view.doc
    painted = []
    orig = view.persons_item._paint_person
    view.persons_item._paint_person = lambda painter, uid, *a: (painted.append(uid), orig(painter, uid, *a))[1]

    def grab_now():
        QApplication.processEvents()
        return view.viewport().grab().toImage()

    grab_now()
    u0, u1 = doc.uids()
    painted.clear()
    p = doc.person(u1)
    Editor(doc).move_keypoint(u1, 6, (float(p.keypoints[6, 0]) + 15, float(p.keypoints[6, 1]) + 9), drag_id=1)
    doc.select(u1)
    doc.select_joint(6)
    start = tuple(map(float, doc.person(u1).keypoints[8, :2]))
    _mouse(view, QEvent.Type.MouseButtonPress, start)
    _mouse(view, QEvent.Type.MouseMove, (start[0] + 30, start[1] - 20))
    partial = grab_now()
    assert painted and set(painted) == {u1}  # the other person (far away) was not painted again
    view.persons_item.update()  # everything
    full = grab_now()
    assert partial == full
    _mouse(view, QEvent.Type.MouseButtonRelease, (start[0] + 30, start[1] - 20))
    doc.set_result(u0, "needs at least 2 visible key-points")  # the error mark appears on person 0
    partial = grab_now()
    view.persons_item.update()
    assert partial == grab_now()


def test_neighbours_of_an_edited_person_are_drawn_from_their_pixmaps(qtbot, image):
    """Two overlapping persons: an edit of one paints that one again; its neighbour, inside the repainted
    area, comes from its kept pixmap. The picture is what painting both directly gives."""
    view = _image_view(qtbot, image, [make_person(0), make_person(1, x0=60)])
    doc = view.doc
    item = view.persons_item
    painted = []
    orig = item._paint_person
    item._paint_person = lambda painter, uid, *a: (painted.append(uid), orig(painter, uid, *a))[1]

    def grab_now():
        QApplication.processEvents()
        return view.viewport().grab().toImage()

    grab_now()
    u0, u1 = doc.uids()
    assert item.person_rect(doc.person(u0), u0).intersects(item.person_rect(doc.person(u1), u1))
    painted.clear()
    p = doc.person(u1)
    Editor(doc).move_keypoint(u1, 6, (float(p.keypoints[6, 0]) + 8, float(p.keypoints[6, 1]) + 5), drag_id=1)
    cached = grab_now()
    assert painted == [u1]
    item.use_pixmaps = False
    item.update()
    direct = grab_now()
    a = np.frombuffer(cached.constBits(), np.uint8).reshape(cached.height(), -1)
    b = np.frombuffer(direct.constBits(), np.uint8).reshape(direct.height(), -1)
    assert (np.abs(a.astype(int) - b) > 40).mean() < 0.002  # (0 here: the pixmaps sit on whole pixels)


def test_add_keypoint_mode_and_occlusion_key(view, qtbot):
    doc = view.doc
    uid = doc.uids()[0]
    Editor(doc).delete_keypoint(uid, 2)
    doc.select(uid)
    view.joint_to_add = 2
    view.set_mode("add_joint")
    _mouse(view, QEvent.Type.MouseButtonPress, (60.0, 70.0))
    _mouse(view, QEvent.Type.MouseButtonRelease, (60.0, 70.0))
    p = doc.person(uid)
    assert np.allclose(p.keypoints[2], (60, 70, 1), atol=1.5) and p.visible[2] and p.edited[2]
    Editor(doc).toggle_visibility(uid, 2)
    assert not doc.person(uid).visible[2]


def test_box_mode_emits_box_and_place_mode_builds_a_person(view, qtbot):
    doc = view.doc
    boxes = []
    view.box_drawn.connect(lambda *b: boxes.append(b))
    view.set_mode("box")
    _mouse(view, QEvent.Type.MouseButtonPress, (400.0, 50.0))
    _mouse(view, QEvent.Type.MouseMove, (500.0, 300.0))
    _mouse(view, QEvent.Type.MouseButtonRelease, (520.0, 330.0))
    assert len(boxes) == 1 and np.allclose(boxes[0], (400, 50, 520, 330), atol=1.5)
    view.set_mode("place")
    n0 = len(doc.persons())
    pts = [(300.0 + 5 * i, 100.0 + 10 * i) for i in range(4)]
    for xy in pts:
        _mouse(view, QEvent.Type.MouseButtonPress, xy)
        _mouse(view, QEvent.Type.MouseButtonRelease, xy)
    assert len(doc.persons()) == n0 + 1
    p = doc.persons()[-1]
    assert p.visible[:4].all() and not p.visible[4:].any()
    assert np.allclose(p.keypoints[:4, :2], pts, atol=1.5)
    assert p.box[0] < 300 and p.box[3] > 130  # box follows the placed joints
    while doc.undo_stack.canUndo():  # all of it can be undone
        doc.undo_stack.undo()
    assert len(doc.persons()) == n0


class _Video:
    """A tiny in-memory video with the api Media interface (kind, path, num_frames, fps, size, frame)."""

    kind, path, num_frames, fps, size = "video", "", 6, 25.0, (320, 240)

    def frame(self, i):
        return np.full((240, 320, 3), 10 * i, np.uint8)

    def close(self):
        pass


def test_propagate_corrections_interpolates_between_key_frames(qapp, qtbot):
    est = RecordingEstimator()
    s = Session(inference=InferenceService(estimator_factory=lambda: est))
    s.auto_detect = False
    s.live_inference = False
    try:
        s.doc.set_media(_Video())
        base = dataclasses.replace(make_person(0), track_id=7)
        for f in range(6):
            s.doc.set_frame_persons(f, [base])
        u0 = s.doc.uids(0)[0]
        u4 = s.doc.uids(4)[0]
        Editor(s.doc).move_keypoint(u0, 3, (100.0, 100.0))
        Editor(s.doc).move_keypoint(u4, 3, (140.0, 60.0))  # the next corrected key frame
        n = s.propagate_corrections(u0)
        assert n == 3  # frames 1, 2, 3
        for f, t in ((1, 0.25), (2, 0.5), (3, 0.75)):
            p = s.doc.persons(f)[0]
            assert np.allclose(p.keypoints[3, :2], (100 + 40 * t, 100 - 40 * t))
            assert not p.edited[3] and s.doc.interpolated[s.doc.uids(f)[0]][3]  # interpolated, not a user edit
        assert np.allclose(s.doc.persons(5)[0].keypoints[3, :2], base.keypoints[3, :2])  # past the key frame
        s.doc.undo_stack.undo()  # one macro
        assert np.allclose(s.doc.persons(2)[0].keypoints, base.keypoints)
    finally:
        s.shutdown()


def test_attention_view_explains_or_shows_maps(qapp, qtbot, image):
    from app.widgets.attention_view import AttentionView, attention_grid, overlay_on_crop

    est = RecordingEstimator()
    s = Session(inference=InferenceService(estimator_factory=lambda: est))
    s.auto_detect = False
    try:
        s.open_image_array(image, [make_person(0)])
        qtbot.waitUntil(lambda: s.doc.results()[0] is not None, timeout=60000)
        av = AttentionView(s)
        qtbot.addWidget(av)
        assert av.stack.currentIndex() == 0 and "Models" in av.explain.text()  # fitting: an explanation
        uid = s.doc.uids()[0]
        rng = np.random.default_rng(0)
        att = {"8": rng.random((30, 8, 8)), "16": rng.random((30, 16, 16))}
        s.doc.set_result(uid, dataclasses.replace(s.doc.result(uid), attention=att, estimator="dpmesh"))
        s.doc.select(uid)
        qtbot.waitUntil(lambda: av.stack.currentIndex() == 1, timeout=10000)  # refresh is coalesced
        grid = attention_grid(att["16"], cols=6)
        assert grid.shape == (5 * 17, 6 * 17) and np.nanmax(grid) == pytest.approx(1.0)
        crop = np.zeros((256, 256, 3), np.uint8)
        over = overlay_on_crop(crop, att["8"][0])
        assert over.shape == crop.shape and over.max() > 0
    finally:
        s.shutdown()


def test_models_dialog_file_checks(qapp, qtbot, tmp_path, isolated_home):
    from app.dialogs.models_dialog import ModelsDialog, check_model_file

    assert check_model_file("smpl", "") == (False, "not set")
    assert check_model_file("smpl", str(tmp_path / "nope.pkl"))[1] == "does not exist"
    wrong = tmp_path / "model.jpg"
    wrong.write_bytes(b"x" * 4096)
    ok, msg = check_model_file("smpl", str(wrong))
    assert not ok and ".jpg" in msg  # a model file of the wrong kind is named as such
    good = tmp_path / "basicModel_neutral.pkl"
    good.write_bytes(b"x" * 4096)
    assert check_model_file("smpl", str(good))[0]
    assert not check_model_file("smpl", str(tmp_path))[0]  # a folder is not an SMPL file
    dlg = ModelsDialog()
    qtbot.addWidget(dlg)
    dlg.edits["smpl"].setText(str(good))
    assert "✓" in dlg.status["smpl"].text()
    dlg.save()
    from dpmesh_core.config import ModelFiles

    assert ModelFiles.load().smpl == str(good)


class _BoxDetector:
    """A tiny detector (the Detector interface): one person whose key-points follow the frame brightness."""

    def detect(self, image):
        s = float(image.mean()) / 10.0
        p = make_person(0, x0=20 + s)
        return [p]

    def detect_in_box(self, image, box):
        return None


def test_process_whole_video_in_background(qapp, qtbot, tmp_path):
    import cv2

    path = tmp_path / "clip.avi"
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (320, 240))
    for i in range(6):
        vw.write(np.full((240, 320, 3), 20 * i, np.uint8))
    vw.release()
    est = RecordingEstimator()
    s = Session(inference=InferenceService(estimator_factory=lambda: est, detector_factory=_BoxDetector))
    s.auto_detect = False
    progress = []
    s.video_progress.connect(lambda f, n: progress.append((f, n)))
    try:
        s.open_path(path)
        assert s.doc.is_video and s.doc.num_frames == 6
        mine = make_person(5, x0=200)
        s.doc.set_frame_persons(2, [mine])  # the user's persons on frame 2 are kept
        assert s.process_video()
        qtbot.waitUntil(lambda: len(progress) == 6, timeout=60000)
        for f in range(6):
            assert len(s.doc.persons(f)) == 1 and s.doc.results(f)[0] is not None
        assert np.array_equal(s.doc.persons(2)[0].keypoints, mine.keypoints)  # given to the pipeline, tracked
        assert s.doc.persons(2)[0].track_id is not None and s.doc.persons(1)[0].track_id is not None
        assert len(est.calls) == 6
    finally:
        s.shutdown()


def test_training_panel_plots_events(qapp, qtbot):
    from app.widgets.training_panel import TrainingPanel

    tp = TrainingPanel()
    qtbot.addWidget(tp)
    for s in range(1, 11):
        tp.on_event({"event": "step", "step": s, "loss": 2.0 / s, "losses": {"joint": 1.0 / s, "mesh": 0.5}, "lr": 1e-4})
    tp.on_event({"event": "eval", "metrics": {"mpjpe": 90.0, "pa_mpjpe": 60.0, "note": "text is skipped"}})
    assert set(tp.series) == {"loss", "joint", "mesh"} and len(tp.series["loss"][0]) == 10
    x, y = tp._curves["loss"].getData()
    assert list(x) == list(range(1, 11)) and y[-1] == 0.2
    assert set(tp.metrics) == {"mpjpe", "pa_mpjpe"} and tp.metrics["mpjpe"] == ([10], [90.0])
    assert tp.state.text().startswith("step 10")
    tp.on_event({"event": "error", "type": "InputError", "message": "annotations missing"})
    assert "annotations missing" in tp.state.text()
    tp.start()  # no config chosen: says so instead of starting
    assert not tp.proc.is_running() and "config" in tp.state.text()


def test_mesh_view_waits_for_edits_in_flight_but_not_forever(qapp, qtbot, image):
    """New results re-render the 3-D view once no estimation or overlay is under way (so it never takes the
    CPU from the next edit's fit and overlay), and at most MeshView.MAX_DEFER_MS later when work goes on."""
    import time

    from app.widgets.mesh_view import MeshView

    est = RecordingEstimator()
    s = Session(inference=InferenceService(estimator_factory=lambda: est))
    s.auto_detect = False
    try:
        s.open_image_array(image, [make_person(0), make_person(1, x0=300)])
        qtbot.waitUntil(lambda: all(r is not None for r in s.doc.results()), timeout=60000)
        view = MeshView(s)
        qtbot.addWidget(view)
        view.show()
        requests: list[float] = []
        render_view = s.render.render_view
        s.render.render_view = lambda *a, **k: (requests.append(time.perf_counter()), render_view(*a, **k))[1]
        qtbot.waitUntil(lambda: not s.is_busy(), timeout=20000)
        requests.clear()
        # an estimation is running (gated) when a result changes: the view waits …
        est.gate.clear()
        u0, u1 = s.doc.uids()
        Editor(s.doc).move_keypoint(u1, 2, (320.0, 200.0))
        qtbot.waitUntil(lambda: est.started.is_set() and s.inference.runner.is_busy(), timeout=10000)
        t0 = time.perf_counter()
        s.doc.set_result(u0, s.doc.result(u0))  # a result arrives meanwhile
        qtbot.wait(80)
        assert not requests
        # … but not longer than MAX_DEFER_MS while the work goes on
        qtbot.waitUntil(lambda: bool(requests), timeout=5000)
        assert requests[0] - t0 >= MeshView.MAX_DEFER_MS / 1000 * 0.8
        requests.clear()
        est.gate.set()  # the estimation finishes: its result is drawn once everything is idle
        qtbot.waitUntil(lambda: bool(requests) and not s.is_busy(), timeout=20000)
    finally:
        est.gate.set()
        s.shutdown()
