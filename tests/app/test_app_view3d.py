"""The 3-D view (issue 17) in the real widget: the picture fills the widget, mouse orbit, preset keys,
depth-ordered persons list with show/hide, Save view, and playback over a video's computed meshes."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
from app_testkit import RecordingEstimator, make_person
from PySide6.QtCore import QEvent, QPoint, QPointF, Qt
from PySide6.QtGui import QMouseEvent
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QApplication

from app.jobs import InferenceService
from app.session import Session
from app.widgets.mesh_view import MeshView
from dpmesh_core import api
from dpmesh_core.body.synthetic import synthetic_smpl_arrays
from dpmesh_core.types import BodyParams, Camera, MeshResult

_A = synthetic_smpl_arrays()
BODY = np.asarray(_A["v_template"], np.float64) * np.array([1.0, -1.0, -1.0])
BODY[:, 1] -= BODY[:, 1].max()
FACES = np.asarray(_A["f"], np.int32)


def body(x: float, z: float, cam: Camera, track: int | None = None) -> MeshResult:
    """A standing synthetic body whose soles are 1 m under the camera at (x, z) metres."""
    v = (BODY + np.array([x, 1.0, z])).astype(np.float32)
    z3 = np.zeros(3, np.float32)
    return MeshResult(v, FACES, v[:24], np.zeros((24, 2), np.float32), "smpl24",
                      BodyParams("smpl", z3, np.zeros(69, np.float32), np.zeros(10, np.float32), z3), cam,
                      track_id=track)


def _drag(widget, a, b, button=Qt.MouseButton.LeftButton) -> None:
    def ev(kind, xy, buttons):
        p = QPointF(*xy)
        QApplication.sendEvent(widget, QMouseEvent(kind, p, QPointF(widget.mapToGlobal(QPoint(*map(int, xy)))),
                                                   button, buttons, Qt.KeyboardModifier.NoModifier))

    ev(QEvent.Type.MouseButtonPress, a, button)
    for t in np.linspace(0, 1, 6)[1:]:
        ev(QEvent.Type.MouseMove, (a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t), button)
    ev(QEvent.Type.MouseButtonRelease, b, Qt.MouseButton.NoButton)


def _rendered_after(qtbot, view: MeshView, n0: int) -> None:
    qtbot.waitUntil(lambda: view.renders > n0, timeout=60000)


def _couch_with_two_bodies(qtbot, media_dir) -> Session:
    """A session on the couch photo with two fitted persons whose meshes are replaced by synthetic bodies wholly
    inside the photo: far (x 0.9 m, 7 m away) then near (x -0.3 m, 4.5 m); the caller shuts it down."""
    image = api.read_image(media_dir / "COCO_val2014_000000000395.jpg")
    s = Session(inference=InferenceService(estimator_factory=lambda: RecordingEstimator()))
    s.auto_detect = False
    try:
        s.open_image_array(image, [make_person(0), make_person(1, x0=350)])
        qtbot.waitUntil(lambda: all(r is not None for r in s.doc.results()), timeout=60000)
        qtbot.waitUntil(lambda: not s.is_busy(), timeout=20000)
        cam = s.doc.result(s.doc.uids()[0]).camera
        for uid, (x, z) in zip(s.doc.uids(), ((0.9, 7.0), (-0.3, 4.5))):
            s.doc.set_result(uid, body(x, z, cam))
    except BaseException:
        s.shutdown()
        raise
    return s


def test_view3d_orbits_switches_views_lists_depth_and_saves(qapp, qtbot, media_dir, tmp_path):
    s = _couch_with_two_bodies(qtbot, media_dir)
    try:
        far_uid, near_uid = s.doc.uids()
        view = MeshView(s)
        view.renders = 0
        view.session.overlay.view_rendered.connect(
            lambda k, *_: setattr(view, "renders", view.renders + 1) if k == ("meshview", id(view)) else None)
        qtbot.addWidget(view)
        view.resize(900, 420)  # wider than the photo's aspect: the picture still fills the canvas
        view.show()
        qtbot.waitExposed(view)
        _rendered_after(qtbot, view, 0)
        qtbot.waitUntil(lambda: view.last_rgb is not None and view.last_rgb.shape[:2]
                        == (view.canvas.height(), view.canvas.width()), timeout=60000)
        at_reset = view.last_rgb.copy()
        np.testing.assert_array_equal(view.camera.view_matrix(), np.eye(4))
        # depth order: nearest first, with metres
        assert view.persons_list.count() == 2
        assert view.persons_list.item(0).data(Qt.ItemDataRole.UserRole) == near_uid
        assert view.persons_list.item(0).text().endswith(" m")
        # orbit with the mouse: the camera turns about the scene centre, persons stay in the picture
        n = view.renders
        c = view.canvas
        _drag(c, (c.width() / 2, c.height() / 2), (c.width() / 2 + 100, c.height() / 2 + 20))
        _rendered_after(qtbot, view, n)
        qtbot.waitUntil(lambda: view.last_rgb.shape[:2] == (c.height(), c.width()), timeout=60000)  # full res
        assert np.linalg.norm(view.camera.eye) > 0.5
        assert (view.last_rgb != at_reset).any(axis=2).mean() > 0.05
        vc = view.camera.view_camera(view.canvas_size(), view.build_scene())
        for uid in (near_uid, far_uid):
            uv, z = vc.project(np.asarray(s.doc.result(uid).vertices, np.float64))
            assert (z > vc.near).all() and (z < vc.far).all()
            assert ((uv[:, 0] > 0) & (uv[:, 0] < c.width()) & (uv[:, 1] > 0) & (uv[:, 1] < c.height())).mean() > 0.9
        # preset keys
        for key, name in ((Qt.Key.Key_3, "top"), (Qt.Key.Key_2, "side"), (Qt.Key.Key_1, "camera")):
            n = view.renders
            QTest.keyClick(c, key)
            assert view.camera.preset == name
            _rendered_after(qtbot, view, n)
        _drag(c, (100, 100), (160, 100))
        QTest.keyClick(c, Qt.Key.Key_R)
        np.testing.assert_array_equal(view.camera.view_matrix(), np.eye(4))
        # hide the near person: one person left in the scene, unchecked in the list
        view.persons_list.item(0).setCheckState(Qt.CheckState.Unchecked)
        assert [p.key for p in view.build_scene().persons] == [far_uid]
        # solo the selected person
        view.persons_list.item(0).setCheckState(Qt.CheckState.Checked)
        s.doc.select(near_uid)
        view.sel_box.setChecked(True)
        scene = view.build_scene()
        assert [p.key for p in scene.persons] == [near_uid] and scene.persons[0].selected
        # Save view
        n = view.renders
        QTest.keyClick(c, Qt.Key.Key_3)
        _rendered_after(qtbot, view, n)
        out = view.save_view(tmp_path / "view.png")
        saved = api.read_image(out)
        assert saved.shape == view.last_rgb.shape
    finally:
        s.shutdown()


def test_view3d_plays_a_track_at_the_video_frame_rate(qapp, qtbot, media_dir):
    """On street.avi with computed meshes for a track over 8 frames: Play runs that range at the video's
    frame rate (looping) and the view follows; the trajectory is drawn on the ground."""
    s = Session(inference=InferenceService(estimator_factory=lambda: RecordingEstimator()))
    s.auto_detect = False
    try:
        media = api.open_media(media_dir / "street.avi")
        s.doc.set_media(media)
        w, h = media.size
        cam = Camera.default_for(w, h)
        for f in range(2, 10):
            persons = [dataclasses.replace(make_person(0, x0=200 + 10 * f), track_id=0),
                       dataclasses.replace(make_person(1, x0=400), track_id=1)]
            uids = s.doc.set_frame_persons(f, persons)
            s.doc.set_result(uids[0], body(-1.0 + 0.1 * f, 4.0, cam, 0))
            s.doc.set_result(uids[1], body(1.0, 6.0, cam, 1))
        s.doc.set_current_frame(2)
        view = MeshView(s)
        qtbot.addWidget(view)
        view.resize(640, 400)
        view.show()
        qtbot.waitExposed(view)
        view.toggles["trajectory"].setChecked(True)
        s.doc.select(s.doc.uids()[0])
        scene = view.build_scene()
        assert len(scene.trajectories) == 1 and len(scene.trajectories[0][0]) == 8
        seen: list[int] = []
        s.doc.frame_changed.connect(seen.append)
        view.play_btn.setChecked(True)
        t0 = time.perf_counter()
        qtbot.waitUntil(lambda: len(seen) >= 10, timeout=20000)
        dt = time.perf_counter() - t0
        view.play_btn.setChecked(False)
        assert set(seen) <= set(range(2, 10)) and 2 in seen[1:]  # the track's range, looping
        fps = len(seen) / dt
        assert fps <= media.fps * 1.3 + 1, (fps, media.fps)
        n = len(seen)
        qtbot.wait(200)
        assert len(seen) == n  # stopped
        qtbot.waitUntil(lambda: view.last_rgb is not None, timeout=60000)
    finally:
        s.shutdown()


def test_view3d_moving_camera_draws_reduced_detail_then_full(qapp, qtbot, media_dir):
    """While the camera moves (mouse drag, wheel) the view asks for reduced-detail pictures at the widget's full
    size; released or still for STILL_MS, one full-detail picture follows."""
    s = _couch_with_two_bodies(qtbot, media_dir)
    try:
        view = MeshView(s)
        asked: list[tuple[bool, bool]] = []  # (reduced detail, at the canvas's own size)
        rendered: list[tuple[int, int]] = []
        real = s.overlay.render_view

        def spy(key, meshes, camera, v, size, scene=None, clip=None, lod=False):
            if key == ("meshview", id(view)):
                asked.append((lod, tuple(size) == (view.canvas.width(), view.canvas.height())))
            return real(key, meshes, camera, v, size, scene=scene, clip=clip, lod=lod)

        s.overlay.render_view = spy
        s.overlay.view_rendered.connect(lambda k, rgb, _s: rendered.append(np.asarray(rgb).shape[:2])
                                        if k == ("meshview", id(view)) and rgb is not None else None)
        qtbot.addWidget(view)
        view.resize(700, 420)
        view.show()
        qtbot.waitExposed(view)
        qtbot.waitUntil(lambda: bool(rendered), timeout=60000)
        c = view.canvas
        assert asked[-1] == (False, True)
        # a mouse drag: reduced detail while the button is down, full detail once released
        del asked[:]

        def mouse(kind, x, button, buttons):
            p = QPointF(x, c.height() / 2)
            QApplication.sendEvent(c, QMouseEvent(kind, p, QPointF(c.mapToGlobal(QPoint(int(x), c.height() // 2))),
                                                  button, buttons, Qt.KeyboardModifier.NoModifier))

        left = Qt.MouseButton.LeftButton
        mouse(QEvent.Type.MouseButtonPress, 300, left, left)
        for x in (320, 340, 360):
            mouse(QEvent.Type.MouseMove, x, left, left)
            qtbot.waitUntil(lambda: bool(asked), timeout=5000)
        qtbot.wait(2 * view.STILL_MS)  # held still with the button down: still moving
        assert asked and all(a == (True, True) for a in asked)
        mouse(QEvent.Type.MouseButtonRelease, 360, left, Qt.MouseButton.NoButton)
        qtbot.waitUntil(lambda: asked[-1] == (False, True), timeout=5000)
        # the wheel: reduced detail, then the full picture after STILL_MS without another step
        del asked[:]
        view.zoom(1.1)
        qtbot.waitUntil(lambda: bool(asked), timeout=5000)
        assert asked[0] == (True, True)
        t0 = time.perf_counter()
        qtbot.waitUntil(lambda: asked[-1] == (False, True), timeout=5000)
        assert time.perf_counter() - t0 >= 0.8 * view.STILL_MS / 1000
        n = len(rendered)
        qtbot.waitUntil(lambda: len(rendered) > n and not s.overlay.render.view_runner.is_busy(), timeout=60000)
        assert rendered[-1] == (c.height(), c.width())  # every picture at the widget's size
    finally:
        s.shutdown()


def test_view3d_frame_time_text_does_not_widen_the_view(qapp, qtbot):
    """The frame-time label changes with every picture ("… ms (moving: reduced detail)" while orbiting): the
    view's minimum width must not follow it, or the main window widens the mesh dock during an orbit (seen on
    Xvfb) and never gives the room back."""
    s = Session(inference=InferenceService(estimator_factory=lambda: RecordingEstimator()))
    try:
        view = MeshView(s)
        qtbot.addWidget(view)
        view.show()
        qtbot.waitExposed(view)
        view.info.setText("12 ms")
        QApplication.processEvents()
        short = (view.minimumSizeHint().width(), view.sizeHint().width(), view.layout().minimumSize().width())
        view.info.setText("1234 ms (moving: reduced detail) and a good deal more text than fits anywhere")
        QApplication.processEvents()
        assert (view.minimumSizeHint().width(), view.sizeHint().width(), view.layout().minimumSize().width()) == short
        view.info.setText("34 ms (moving: reduced detail)")
        view.place_info()
        g, c = view.info.geometry(), view.canvas.rect()
        assert view.info.parent() is view.canvas and c.contains(g.topLeft()) and g.right() <= c.right()
    finally:
        s.shutdown()


def test_view3d_asks_for_one_picture_at_a_time_and_then_the_newest(qapp, qtbot, media_dir):
    """While a picture is being drawn, camera steps (and frame changes) ask for no other picture: once it
    arrives, one picture of the camera as it is then is asked for (Play and a fast orbit no longer build a
    scene on the GUI thread for every step, only for the pictures drawn)."""
    s = _couch_with_two_bodies(qtbot, media_dir)
    try:
        view = MeshView(s)
        asked: list[np.ndarray] = []
        got: list[int] = []
        real = s.overlay.render_view

        def spy(key, meshes, camera, v, size, scene=None, clip=None, lod=False):
            if key == ("meshview", id(view)):
                asked.append(np.array(v, copy=True))
            return real(key, meshes, camera, v, size, scene=scene, clip=clip, lod=lod)

        s.overlay.render_view = spy
        s.overlay.view_rendered.connect(lambda k, rgb, _s: got.append(1) if k == ("meshview", id(view)) else None)
        qtbot.addWidget(view)
        view.resize(600, 400)
        view.show()
        qtbot.waitExposed(view)
        qtbot.waitUntil(lambda: bool(got), timeout=60000)
        qtbot.waitUntil(lambda: not s.render.is_busy(), timeout=20000)
        qtbot.wait(3 * view.STILL_MS)  # (the view is still: no full-detail picture is due any more)
        del asked[:], got[:]
        view.orbit(5, 0)
        qtbot.waitUntil(lambda: bool(asked), timeout=5000)
        steps = 0
        for _ in range(8):  # steps while the first picture is drawn (before it arrives)
            if got:
                break
            view.orbit(5, 0)
            steps += 1
            QApplication.processEvents()
        steps_in_flight = len(asked)
        qtbot.waitUntil(lambda: len(got) >= 2, timeout=20000)
        assert steps >= 2 and steps_in_flight == 1
        # the second picture shows the camera after every step
        np.testing.assert_allclose(asked[1], view.camera.view_matrix(), atol=1e-9)
    finally:
        s.shutdown()


def test_played_overlay_waits_for_the_3d_view_and_a_stopped_frame_gets_its_layers(qapp, qtbot, media_dir,
                                                                                  monkeypatch):
    """While a video plays, the image overlay and the 3-D view take turns: an overlay asked for while the 3-D
    view draws is sent once that picture is done (as a played frame: one pass); once a played overlay took
    longer than a frame stays on screen, no more are drawn during that Play (each would be dropped as late);
    when Play stops, the frame shown gets its still overlay (playing=False)."""
    import threading

    s = _couch_with_two_bodies(qtbot, media_dir)
    try:
        qtbot.waitUntil(lambda: not s.render.is_busy(), timeout=20000)
        sent: list[bool] = []
        real = s.render.render_overlay

        def spy(*a, playing=False, **k):
            sent.append(playing)
            return real(*a, playing=playing, **k)

        s.render.render_overlay = spy
        gate = threading.Event()
        s.render.view_runner.submit(("meshview", "busy"), lambda: (gate.wait(20), (None, 0.0))[1])
        qtbot.waitUntil(lambda: s.render.view_runner.is_busy(), timeout=5000)
        s.overlay.set_playing(True)
        s.overlay.request(s.doc.current_frame)
        qtbot.wait(100)
        assert sent == []  # waits for the 3-D view's picture
        gate.set()
        qtbot.waitUntil(lambda: sent == [True], timeout=10000)
        qtbot.waitUntil(lambda: not s.render.is_busy() and s.overlay._played_s > 0, timeout=20000)
        monkeypatch.setattr(type(s.doc), "fps", property(lambda _d: 1e6))  # frames far shorter than an overlay
        s.overlay.request(s.doc.current_frame)
        qtbot.wait(100)
        assert sent == [True]  # skipped: it would come too late to be shown
        s.overlay.set_playing(False)
        qtbot.waitUntil(lambda: sent == [True, False], timeout=10000)
    finally:
        s.shutdown()
