"""Smoke test: the real main window on a real photo with the default estimator (YOLO detection + key-point
fitting of Anny), mesh overlay on screen, a live re-estimation after a key-point edit, screenshot."""

from __future__ import annotations

import numpy as np
from app_testkit import PHOTO
from PySide6.QtCore import QSettings

from app.editor import Editor
from app.main_window import MainWindow


def _grab(view) -> np.ndarray:
    img = view.viewport().grab().toImage().convertToFormat(view.viewport().grab().toImage().Format.Format_RGB888)
    w, h = img.width(), img.height()
    return np.frombuffer(img.constBits(), np.uint8).reshape(h, img.bytesPerLine())[:, : 3 * w].reshape(h, w, 3).copy()


def test_main_window_detect_fit_overlay_screenshot(qtbot, tmp_path):
    settings = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    win = MainWindow(settings=settings)
    win._no_prompt = True
    qtbot.addWidget(win)
    win.show()
    qtbot.waitExposed(win)
    assert win.open_path(PHOTO)
    doc = win.doc
    # detection, then one estimation per person, then the overlay (generous: first use loads torch + Anny)
    qtbot.waitUntil(lambda: len(doc.persons()) > 0, timeout=60000)
    qtbot.waitUntil(lambda: all(doc.result(u) is not None or doc.result_error(u) for u in doc.uids())
                    and win.overlay_updates > 0 and not win.session.is_busy(), timeout=120000)
    n_mesh = sum(r is not None for r in doc.results())
    assert n_mesh >= 2, "the photo has several clearly visible people"
    for r in doc.results():
        if r is not None:
            assert r.vertices.shape[1] == 3 and np.isfinite(r.vertices).all() and r.faces.shape[1] == 3
    # the overlay changes pixels of the image view; toggling it off restores the plain image
    win.a_skeleton.setChecked(False)
    on = _grab(win.image_view)
    win.a_overlay.setChecked(False)
    off = _grab(win.image_view)
    changed = np.abs(on.astype(int) - off.astype(int)).sum(-1) > 30
    assert changed.mean() > 0.02, f"mesh overlay changed only {changed.mean():.4f} of the pixels"
    win.a_overlay.setChecked(True)
    win.a_skeleton.setChecked(True)
    # live re-inference after an edit: drag a joint of the best person, its mesh is re-estimated
    uid = max((u for u in doc.uids() if doc.result(u) is not None), key=lambda u: doc.person(u).weights.sum())
    old = doc.result(uid)
    p = doc.person(uid)
    j = int(np.argmax(p.weights))
    before = win.overlay_updates
    Editor(doc).move_keypoint(uid, j, (float(p.keypoints[j, 0]) + 25.0, float(p.keypoints[j, 1]) + 10.0), drag_id=1)
    qtbot.waitUntil(lambda: doc.result(uid) is not old and doc.result(uid) is not None
                    and win.overlay_updates > before, timeout=60000)
    assert not np.allclose(doc.result(uid).vertices, old.vertices)
    win.a_undo.trigger()
    assert np.allclose(doc.person(uid).keypoints, p.keypoints)
    # add a person by drawing a box: key-points are detected inside it (real detector), then estimated
    n = len(doc.persons())
    x0, y0, x1, y1 = (float(v) for v in doc.person(uid).box)
    win.image_view.box_drawn.emit(x0 - 5, y0 - 5, x1 + 5, y1 + 5)
    qtbot.waitUntil(lambda: len(doc.persons()) == n + 1, timeout=30000)
    added = doc.persons()[-1]
    assert added.source == "user" and int(added.visible.sum()) >= 5
    qtbot.waitUntil(lambda: doc.result(doc.uids()[-1]) is not None, timeout=60000)
    # unreadable media: a message, the scene stays
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    assert not win.open_path(str(bad))
    assert len(doc.persons()) == n + 1
    shot = win.grab()
    path = tmp_path / "main_window.png"
    assert shot.save(str(path)) and path.stat().st_size > 10000
    assert not shot.isNull() and shot.width() > 800
    win.close()
