"""Issue 12, the app's side: export folders, the training panel's Start, recovery that keeps unsaved work,
Open/New/Quit asking about unsaved work, NaN in projects, exported key-point labels, frame stepping with the
renderer."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QSettings, Qt
from PySide6.QtWidgets import QDockWidget, QMainWindow


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
    rng = np.random.default_rng(1)
    for step, (f, n) in enumerate(_walk(200)):
        res = _tetra_results(f, n)
        out = layers.overlay(get, img + f, res, 0.6, [(1.0, 0.0, 0.0)] * n)
        if step % 20 == 0:  # still the renderer's own picture
            assert np.array_equal(out, get(160, 120).render_overlay(img + f, res, 0.6, colors=[(1.0, 0.0, 0.0)] * n))
        layers.view(get, [(r.vertices, r.faces, (0.0, 1.0, 0.0)) for r in res], res[0].camera, np.eye(4), (160, 120))
        for _ in range(int(rng.integers(0, 4))):  # the process fills layers while idle
            layers.fill_one(get)


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
