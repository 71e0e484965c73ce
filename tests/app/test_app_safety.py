"""Issue 12, the app's side: export folders, the training panel's Start, recovery that keeps unsaved work,
Open/New/Quit asking about unsaved work, NaN in projects, exported key-point labels, frame stepping with the
renderer."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QSettings, Qt
from PySide6.QtWidgets import QDockWidget, QMainWindow

from app.editor import Editor


def test_export_dialog_starts_in_the_documents_folder_then_the_last_used_one(qapp, qtbot, tmp_path, monkeypatch):
    import platformdirs
    from app_testkit import PHOTO, RecordingEstimator

    from app.dialogs.export_dialog import ExportDialog
    from app.folders import remember_export_folder
    from app.jobs import InferenceService
    from app.session import Session

    docs = tmp_path / "Documents"
    docs.mkdir()
    monkeypatch.setattr(platformdirs, "user_documents_dir", lambda: str(docs))
    monkeypatch.chdir(tmp_path)
    settings = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    est = RecordingEstimator()
    s = Session(inference=InferenceService(estimator_factory=lambda: est))
    s.auto_detect = False
    try:
        s.open_path(PHOTO)
        dlg = ExportDialog(s, settings=settings)
        qtbot.addWidget(dlg)
        folder = Path(dlg.folder.text())
        assert folder.parent == docs, folder  # not the media's folder, not the working directory
        assert folder.parent != Path(PHOTO).parent and folder.parent != tmp_path
        used = tmp_path / "exports"
        used.mkdir()
        remember_export_folder(settings, used)
        dlg2 = ExportDialog(s, settings=settings)
        qtbot.addWidget(dlg2)
        assert Path(dlg2.folder.text()).parent == used
    finally:
        s.shutdown()


def test_training_panel_start_without_config_says_so_and_does_not_widen_the_dock(qapp, qtbot, tmp_path):
    from app.widgets.training_panel import BUNDLED_CONFIG, TrainingPanel

    win = QMainWindow()
    qtbot.addWidget(win)
    tp = TrainingPanel()
    dock = QDockWidget("Training", win)
    dock.setWidget(tp)
    win.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, dock)
    win.resize(1200, 700)
    win.show()
    qtbot.waitExposed(win)
    width = dock.width()
    tp.start_btn.click()  # the button's clicked(bool) must not be taken for the program to run
    assert not tp.proc.is_running()
    assert "Choose a training config" in tp.state.text()
    # the bundled example: its data are missing from the run folder, and the panel says how to make them
    tp.run_edit.setText(str(tmp_path / "run"))
    tp.use_example()
    assert tp.config_edit.text() == str(BUNDLED_CONFIG) and BUNDLED_CONFIG.is_file()
    tp.start_btn.click()
    assert not tp.proc.is_running()
    text = tp.state.text()
    assert "data/synthetic_train/annotations.jsonl" in text and "dpmesh synth data/synthetic_train" in text
    assert str(tmp_path / "run") in text
    qapp.processEvents()
    assert dock.width() <= width + 2, f"the message widened the dock from {width} to {dock.width()} px"
    # a folder given as the config: said, not run
    tp.config_edit.setText(str(tmp_path))
    tp.start_btn.click()
    assert not tp.proc.is_running() and "is a folder" in tp.state.text()


def test_training_panel_finds_the_data_relative_to_its_run_folder(qapp, qtbot, tmp_path):
    from app.widgets.training_panel import BUNDLED_CONFIG, TrainingPanel

    tp = TrainingPanel()
    qtbot.addWidget(tp)
    run = tmp_path / "run"
    for split in ("synthetic_train", "synthetic_val"):
        (run / "data" / split).mkdir(parents=True)
        (run / "data" / split / "annotations.jsonl").write_text("")
    tp.run_edit.setText(str(run))
    tp.config_edit.setText(str(BUNDLED_CONFIG))
    assert tp.check() and str(run) in tp.state.text()
    # the training process works in the run folder (a stand-in program that prints where it runs)
    import sys

    tp.start((sys.executable, ["-c", "import os; print('cwd=' + os.getcwd())"]))
    qtbot.waitUntil(lambda: not tp.proc.is_running(), timeout=30000)
    assert f"cwd={run}" in tp.log.toPlainText()


def _tetra_results(frame: int, n: int, w: int = 160, h: int = 120) -> list:
    """``n`` small tetrahedra in a row that shift with ``frame`` (a new mesh for every person and frame)."""
    import numpy as np

    from dpmesh_core.types import BodyParams, Camera, MeshResult

    cam = Camera.default_for(w, h)
    out = []
    faces = np.array([[0, 1, 2], [0, 1, 3], [0, 2, 3], [1, 2, 3]], np.int32)
    for i in range(n):
        x, z = -0.8 + 0.3 * i + 0.01 * frame, 3.0 + 0.02 * i
        v = np.array([[x, 0, z], [x + .2, 0, z], [x, .4, z], [x, 0, z + .2]], np.float32)
        out.append(MeshResult(v, faces, v, np.zeros((4, 2), np.float32), "coco17",
                              BodyParams("test", np.zeros(3), np.zeros(6), np.zeros(2), v[0]), cam, estimator="fit"))
    return out


def _walk(steps: int, seed: int = 0) -> list[tuple[int, int]]:
    """(frame, persons) of a user stepping back and forth (, . and jumps) over 40 frames."""
    import numpy as np

    rng = np.random.default_rng(seed)
    f, out = 0, []
    for _ in range(steps):
        f = int(np.clip(f + rng.choice([-1, 1, 1, 3, -3]), 0, 40))
        out.append((f, int(rng.integers(6, 10))))
    return out


def test_overlay_layer_cache_survives_stepping_frames_back_and_forth():
    """The render process's layer cache: a frame shown again once the cache was full made it evict the
    layers of the very request it was composing (KeyError: b'.H\\xd1…' in the app, 3-D view black)."""
    import numpy as np

    from dpmesh_core import api

    renderers = {}

    def get(w, h):
        if (w, h) not in renderers:
            renderers[(w, h)] = api.MeshRenderer(w, h, backend="numpy")
        return renderers[(w, h)]

    layers = api.OverlayLayers()
    img = np.zeros((120, 160, 3), np.uint8)
    for step, (f, n) in enumerate(_walk(200)):
        res = _tetra_results(f, n)
        out = layers.overlay(get, img + f, res, 0.6, [(1.0, 0.0, 0.0)] * n)
        if step % 20 == 0:  # still the renderer's own picture
            assert np.array_equal(out, get(160, 120).render_overlay(img + f, res, 0.6, colors=[(1.0, 0.0, 0.0)] * n))
        layers.view(get, [(r.vertices, r.faces, (0.0, 1.0, 0.0)) for r in res], res[0].camera, np.eye(4), (160, 120))
        assert len(layers.layers) <= layers.MAX_LAYERS


def test_render_service_survives_200_frame_steps(qapp, qtbot):
    """The app's render client and process, stepping 200 frames back and forth: every overlay (and the mesh
    view, every 5th step) comes back, no error."""
    import numpy as np

    from app.jobs.render import RenderService

    svc = RenderService()
    errors, got = [], {}
    svc.error.connect(errors.append)
    svc.rendered.connect(lambda key, rgb, secs: got.__setitem__(key, rgb))
    img = np.full((120, 160, 3), 40, np.uint8)
    svc.start()
    try:
        for step, (f, n) in enumerate(_walk(200, seed=2)):
            res = _tetra_results(f, n)
            want = [("overlay", step)] + ([("view", step)] if step % 5 == 0 else [])
            svc.render_overlay(want[0], img, res, 0.6, [(1.0, 0.0, 0.0)] * n)
            if len(want) > 1:
                svc.render_view(want[1], [(r.vertices, r.faces, (0.0, 1.0, 0.0)) for r in res], res[0].camera,
                                np.eye(4), (160, 120))
            qtbot.waitUntil(lambda w=want: all(k in got for k in w) or bool(errors), timeout=30000)
            assert not errors, errors[0]
            over = got.pop(want[0])
            assert (over != img).any(axis=-1).sum() > 50  # meshes drawn
            if len(want) > 1:
                assert got.pop(want[1]).std() > 0  # the mesh view is not blank
    finally:
        svc.shutdown()


def test_low_confidence_persons_are_drawn_as_guesses(qapp, qtbot, image):
    """A mesh flagged ``quality.low_confidence`` (few visible joints, depth from a prior…) is washed out in
    the overlay and the 3-D view, drawn dashed in the image view, and marked in the persons panel."""
    import dataclasses

    from app_testkit import RecordingEstimator, make_person

    from app.jobs import InferenceService
    from app.palette import faint, person_rgb01
    from app.session import Session
    from app.widgets.image_view import ImageView
    from app.widgets.persons_panel import PersonsPanel
    from dpmesh_core.types import Quality

    est = RecordingEstimator()
    s = Session(inference=InferenceService(estimator_factory=lambda: est))
    s.auto_detect = False
    sent = []
    render_overlay = s.render.render_overlay
    s.render.render_overlay = lambda *a, **k: (sent.append(k.get("colors")), render_overlay(*a, **k))[1]
    try:
        s.open_image_array(image, [make_person(0), make_person(1, x0=300)])
        qtbot.waitUntil(lambda: all(r is not None for r in s.doc.results()), timeout=60000)
        u0, u1 = s.doc.uids()
        panel = PersonsPanel(s.doc)
        view = ImageView(s.doc)
        for w in (panel, view):
            qtbot.addWidget(w)
            w.show()
        view.resize(640, 480)
        qapp.processEvents()
        before = view.viewport().grab().toImage()
        guess = Quality(visible_joints=3, total_joints=17, low_confidence=True,
                        reasons=("3 visible key-points", "depth from the height prior"))
        s.doc.set_result(u1, dataclasses.replace(s.doc.result(u1), quality=guess))
        qtbot.waitUntil(lambda: bool(sent) and sent[-1] == [person_rgb01(u0), faint(person_rgb01(u1))], timeout=5000)
        panel.refresh()
        texts = [panel.list.item(i).text() for i in range(2)]
        assert "low confidence" not in texts[0] and "low confidence" in texts[1]
        assert "depth from the height prior" in panel.list.item(1).toolTip()
        qapp.processEvents()
        assert view.viewport().grab().toImage() != before  # its skeleton is drawn differently
        assert s.doc.low_confidence(u0) is None and s.doc.low_confidence(u1) == guess.reasons
    finally:
        s.shutdown()


# ---------------------------------------------------------------------------------------------------
# recovery, unsaved work, damaged projects

def _answer(button, seen: list | None = None):
    """Click ``button`` of the next message box that opens (as a user would), noting its default button."""
    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication, QMessageBox

    def click():
        box = QApplication.activeModalWidget()
        if not isinstance(box, QMessageBox):
            QTimer.singleShot(10, click)
            return
        if seen is not None:
            seen.append((box.text(), box.standardButton(box.defaultButton())))
        box.button(button).click()

    QTimer.singleShot(0, click)


def _window(tmp_path, name: str):
    from app_testkit import RecordingEstimator

    from app.jobs import InferenceService
    from app.main_window import MainWindow
    from app.session import Session

    est = RecordingEstimator()
    s = Session(inference=InferenceService(estimator_factory=lambda: est))
    s.auto_detect = False
    return MainWindow(session=s, settings=QSettings(str(tmp_path / f"{name}.ini"), QSettings.Format.IniFormat))


def test_recovery_keeps_the_work_unsaved_and_tied_to_its_project(qapp, qtbot, tmp_path, isolated_home):
    from app_testkit import PHOTO, make_person
    from PySide6.QtWidgets import QMessageBox

    from dpmesh_core import api

    B = QMessageBox.StandardButton
    # a user saves a project, edits on, the app autosaves, then crashes (no save, no clean close)
    w1 = _window(tmp_path, "a")
    qtbot.addWidget(w1)
    assert w1.open_path(PHOTO)
    w1.doc.set_frame_persons(0, [make_person(0)])
    project = w1.session.save_project(tmp_path / "work.dpmesh")
    u = w1.doc.uids()[0]
    Editor(w1.doc).move_keypoint(u, 3, (123.0, 234.0))  # the unsaved edit
    recovery = w1.session.autosave()
    assert recovery is not None and recovery.exists()
    w1.session.shutdown()
    w1._no_prompt = True

    # next start: the prompt's default is Restore; the work comes back unsaved, tied to its project
    w2 = _window(tmp_path, "b")
    qtbot.addWidget(w2)
    seen: list = []
    _answer(B.Yes, seen)
    assert w2.offer_recovery()
    assert seen[0][1] == B.Yes, "Enter must restore the work, not ignore it"
    assert tuple(w2.doc.persons(0)[0].keypoints[3, :2]) == (123.0, 234.0)
    assert not w2.doc.undo_stack.isClean() and w2.windowTitle().endswith("•")
    assert w2.doc.project_path == str(project)  # Ctrl+S saves the project, not a file beside the media
    # Quit, Open and New ask about the unsaved work; Cancel keeps everything, recovery file included
    for act in (lambda: w2.close(), lambda: w2.open_path(PHOTO), lambda: w2.a_new.trigger()):
        asked: list = []
        _answer(B.Cancel, asked)
        act()
        assert asked and "Save your changes to work.dpmesh" in asked[0][0] and asked[0][1] == B.Save
        assert w2.doc.media_path and recovery.exists()
        assert tuple(w2.doc.persons(0)[0].keypoints[3, :2]) == (123.0, 234.0)

    # another window that ignores the prompt, opens the saved project and quits leaves the recovery file
    w3 = _window(tmp_path, "c")
    qtbot.addWidget(w3)
    _answer(B.Ignore)
    assert not w3.offer_recovery()
    assert w3.open_path(str(project))
    w3.close()
    assert recovery.exists(), "the recovery file held unsaved work: only a save or a discard removes it"

    # saving (Ctrl+S goes to the project) removes it, and the project holds the edit
    assert w2.save_project()
    assert not recovery.exists() and api.find_recovery_files() == []
    assert w2.doc.undo_stack.isClean()
    saved = api.load_project(project)
    assert tuple(saved.frames[0][0].keypoints[3, :2]) == (123.0, 234.0)
    w2.close()


def test_discarding_unsaved_work_deletes_its_recovery_file(qapp, qtbot, tmp_path, isolated_home):
    from app_testkit import PHOTO, make_person
    from PySide6.QtWidgets import QMessageBox

    from dpmesh_core import api

    w = _window(tmp_path, "d")
    qtbot.addWidget(w)
    assert w.open_path(PHOTO)
    w.doc.set_frame_persons(0, [make_person(0)])
    Editor(w.doc).move_keypoint(w.doc.uids()[0], 2, (50.0, 60.0))
    recovery = w.session.autosave()
    assert recovery.exists()
    _answer(QMessageBox.StandardButton.Discard)
    w.a_new.trigger()  # File ▸ New, the edit discarded on purpose
    assert w.doc.media_path is None and not recovery.exists() and api.find_recovery_files() == []
    w.close()


def test_damaged_numbers_in_a_project_are_refused_per_person(qapp, qtbot, tmp_path, isolated_home, media_dir,
                                                            reference_dir):
    """A project whose saved body parameters hold NaN no longer restores a NaN mesh (exported as such); a
    person whose box is not finite is left out; both are said."""
    import json

    import numpy as np
    from app_testkit import fitted_photo_project

    from app.jobs import InferenceService
    from app.session import Session

    fitter, out, _, _ = fitted_photo_project(qtbot, tmp_path, media_dir, reference_dir)
    data = json.loads(out.read_text())
    data["results"]["0"][0]["transl"][0] = None  # a NaN in the saved parameters (NaN is stored as null)
    data["frames"]["0"][2]["box"][1] = None  # a person whose box is not a number
    out.write_text(json.dumps(data))
    s2 = Session(inference=InferenceService(estimator_factory=lambda: fitter))
    s2.auto_detect = False
    said: list = []
    s2.error.connect(lambda t, m: said.append(m))
    s2.message.connect(said.append)
    try:
        assert s2.load_project(out)
        assert len(s2.doc.persons(0)) == 2
        qtbot.waitUntil(lambda: all(r is not None for r in s2.doc.results()), timeout=60000)
        for r in s2.doc.results():
            assert np.isfinite(r.vertices).all() and np.isfinite(r.joints3d).all()
        assert any("person #3" in m and "not finite" in m for m in said), said
        assert any("NaN/inf" in m and "refused" in m for m in said), said
        files = s2.export_meshes(tmp_path / "export", "all", ("npz",))
        assert len(files) == 2 and all(np.isfinite(np.load(f)["transl"]).all() for f in files)
    finally:
        s2.shutdown()


def test_exported_keypoints_label_only_what_was_seen_or_marked(qapp, qtbot, tmp_path, isolated_home):
    """COCO export: a detector's guess below the visibility threshold (confidence 0.01) is not a labelled
    point (v=0); a joint the user marked occluded is (v=1); a visible one is v=2."""
    import json

    import numpy as np
    from app_testkit import PHOTO, RecordingEstimator

    from app.jobs import InferenceService
    from app.session import Session
    from dpmesh_core.types import Person

    kp = np.zeros((17, 3), np.float32)
    kp[:, 0] = np.linspace(100, 200, 17)
    kp[:, 1] = np.linspace(50, 350, 17)
    kp[:, 2] = 0.9
    kp[5, 2] = 0.01  # the detector's guess at a joint it does not see
    kp[6, 2] = 0.3
    s = Session(inference=InferenceService(estimator_factory=lambda: RecordingEstimator()))
    s.auto_detect = False
    try:
        s.open_path(PHOTO)
        s.doc.set_frame_persons(0, [Person(box=Person.box_from_keypoints(kp), keypoints=kp)])
        u = s.doc.uids()[0]
        Editor(s.doc).toggle_visibility(u, 9)  # the user says: the wrist is there, hidden
        out = s.export_keypoints(tmp_path / "kp.json")
        v = json.loads(out.read_text())["annotations"][0]["keypoints"][2::3]
        assert v[5] == 0 and v[6] == 0, "detector guesses are not labels"
        assert v[9] == 1 and v[0] == 2
    finally:
        s.shutdown()
