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
