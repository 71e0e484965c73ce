"""The main window: docks, dialogs and wiring (logic lives in Session / Document / widgets; the actions, menus and
toolbar are built by ``window_actions.WindowActions``)."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np
from PySide6.QtCore import QSettings, Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QApplication,
    QDockWidget,
    QFileDialog,
    QMainWindow,
    QMessageBox,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from dpmesh_core.errors import DPMeshError
from dpmesh_core.types import Person

from .document import Document
from .editor import Editor
from .session import PROJECT_EXT, Session
from .widgets.image_view import ImageView
from .widgets.mesh_view import MeshView
from .widgets.persons_panel import PersonsPanel
from .widgets.timeline import Timeline
from .window_actions import WindowActions

MEDIA_FILTER = ("Images, videos and projects (*.jpg *.jpeg *.png *.bmp *.tif *.tiff *.webp *.mp4 *.avi *.mov "
                "*.mkv *.webm *.dpmesh);;Projects (*.dpmesh);;All files (*)")
MAX_RECENT = 10


class MainWindow(WindowActions, QMainWindow):
    """DPMesh Studio main window. ``overlay_shown`` fires each time a new mesh overlay is on screen."""

    overlay_shown = Signal(int)

    def __init__(self, session: Session | None = None, settings: QSettings | None = None):
        super().__init__()
        self.session = session or Session(parent=self)
        self.doc: Document = self.session.doc
        self.settings = settings or QSettings("dpmesh-studio", "DPMesh Studio")
        self.setWindowTitle("DPMesh Studio")
        self.resize(1500, 940)
        self.setAcceptDrops(True)
        self.overlay_updates = 0
        self.last_overlay_time = 0.0

        self.image_view = ImageView(self.doc)
        self.timeline = Timeline(self.doc)
        central = QWidget()
        lay = QVBoxLayout(central)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(2)
        lay.addWidget(self.image_view, 1)
        lay.addWidget(self.timeline)
        self.setCentralWidget(central)

        self.persons_panel = PersonsPanel(self.doc)
        self.mesh_view = MeshView(self.session)
        self.help_panel = QTextBrowser()
        self._docks: dict[str, QDockWidget] = {}
        self._add_dock("Persons", self.persons_panel, Qt.DockWidgetArea.LeftDockWidgetArea)
        self._add_dock("Mesh", self.mesh_view, Qt.DockWidgetArea.RightDockWidgetArea)
        self._lazy_docks()
        self._add_dock("Shortcuts", self.help_panel, Qt.DockWidgetArea.LeftDockWidgetArea)
        from .widgets.tracks_panel import TracksPanel

        self.tracks_panel = TracksPanel(self.doc)
        self.tabifyDockWidget(self._docks["Shortcuts"],
                              self._add_dock("Tracks", self.tracks_panel, Qt.DockWidgetArea.LeftDockWidgetArea))
        self.resizeDocks([self._docks["Persons"], self._docks["Mesh"]], [330, 460], Qt.Orientation.Horizontal)
        self.resizeDocks([self._docks["Mesh"], self._docks["Attention"]], [430, 400], Qt.Orientation.Vertical)
        self.resizeDocks([self._docks["Persons"], self._docks["Shortcuts"]], [520, 300], Qt.Orientation.Vertical)

        self._build_actions()
        self._build_menus()
        self._build_toolbar()
        self._build_status()
        self._fill_help()
        self._wire()
        self._update_title()

    # ------------------------------------------------------------------ construction
    def _add_dock(self, title: str, w: QWidget, area: Qt.DockWidgetArea) -> QDockWidget:
        d = QDockWidget(title, self)
        d.setObjectName(f"dock-{title}")
        d.setWidget(w)
        self.addDockWidget(area, d)
        self._docks[title] = d
        return d

    def _lazy_docks(self) -> None:
        """Attention view and training panel (pyqtgraph: imported here, still no torch)."""
        from .widgets.attention_view import AttentionView
        from .widgets.training_panel import TrainingPanel

        self.attention_view = AttentionView(self.session)
        self.training_panel = TrainingPanel()
        d1 = self._add_dock("Attention", self.attention_view, Qt.DockWidgetArea.RightDockWidgetArea)
        d2 = self._add_dock("Training", self.training_panel, Qt.DockWidgetArea.RightDockWidgetArea)
        self.tabifyDockWidget(d1, d2)
        d1.raise_()

    def _wire(self) -> None:
        s = self.session
        s.overlay_ready.connect(self._on_overlay)
        s.busy_changed.connect(self._on_busy)
        s.message.connect(lambda m: self.statusBar().showMessage(m, 8000))
        s.error.connect(self.show_error)
        s.result_timing.connect(lambda _u, t: self.timing_label.setText(f"last estimate {t * 1000:.0f} ms"))
        s.media_loaded.connect(lambda _p: self._update_title())
        self.image_view.status_message.connect(lambda m: self.statusBar().showMessage(m, 10000))
        self.image_view.box_drawn.connect(self._on_box)
        self.image_view.mode_changed.connect(self._on_mode)
        s.media.person_in_box.connect(self._on_box_person)
        s.video_progress.connect(self._on_video_progress)
        s.video.running_changed.connect(self._on_video_running)
        self.timeline.ready = s.video.frame_ready  # Play shows a frame once the pipeline has processed it
        self.timeline.frames = s.frames  # ... and once it was decoded off the GUI thread
        s.frames.playing_changed.connect(self.image_view.set_playing)
        self.timeline.play_started.connect(s.video.play_from)
        self.timeline.play_stopped.connect(s.video.stop_play)
        self.doc.undo_stack.cleanChanged.connect(lambda _c: self._update_title())
        self.doc.media_changed.connect(self._update_title)

    # ------------------------------------------------------------------ title / status
    def _update_title(self) -> None:
        name = self.doc.media_path or self.doc.settings.get("title") or "no media"
        try:
            dirty = "" if self.doc.undo_stack.isClean() else " •"
        except RuntimeError:  # the stack is being destroyed (window closing)
            return
        self.setWindowTitle(f"DPMesh Studio — {Path(str(name)).name}{dirty}")

    def _on_busy(self, busy: bool) -> None:
        self.busy.setVisible(busy)
        self.busy_label.setText("estimating…" if busy else "")

    def _on_overlay(self, frame: int, rgb: Any) -> None:
        self.image_view.set_overlay(rgb)
        self.overlay_updates += 1
        self.last_overlay_time = time.perf_counter()
        self.overlay_shown.emit(frame)

    def show_error(self, title: str, text: str) -> None:
        box = QMessageBox(QMessageBox.Icon.Warning, title, text, QMessageBox.StandardButton.Ok, self)
        box.setWindowModality(Qt.WindowModality.WindowModal)
        box.open()

    # ------------------------------------------------------------------ files
    def confirm_unsaved(self, before: str) -> bool:
        """Ask what to do with unsaved work before ``before`` (opening, closing, quitting): Save (the
        default), Discard (its recovery file goes too) or Cancel. True when it may go on."""
        if self.doc.undo_stack.isClean() or not self.doc.media_path or getattr(self, "_no_prompt", False):
            return True
        name = Path(self.doc.project_path or self.doc.media_path).name
        ans = QMessageBox.question(self, "Unsaved changes", f"Save your changes to {name} before {before}?",
                                   QMessageBox.StandardButton.Save | QMessageBox.StandardButton.Discard
                                   | QMessageBox.StandardButton.Cancel, QMessageBox.StandardButton.Save)
        if ans == QMessageBox.StandardButton.Save:
            return self.save_project()
        if ans == QMessageBox.StandardButton.Discard:
            self.session.projects.discard_recovery()
            self.doc.undo_stack.setClean()
            return True
        return False

    def new_document(self) -> None:
        if self.confirm_unsaved("closing it"):
            self.session.media.close_media()
            self._update_title()

    def open_path(self, path: str) -> bool:
        if not self.confirm_unsaved(f"opening {Path(path).name}"):
            return False
        try:
            if Path(path).suffix.lower() == PROJECT_EXT:
                ok = self.session.load_project(path)
                if not ok:
                    return self._relocate_media(path)
            else:
                self.session.open_path(path)
        except DPMeshError as e:
            self.show_error("Cannot open file", str(e))
            return False
        self._add_recent(path)
        self._update_title()
        return True

    def _relocate_media(self, project_path: str) -> bool:
        fn, _ = QFileDialog.getOpenFileName(self, "The project's media file moved — where is it now?", "",
                                            MEDIA_FILTER)
        if not fn:
            return False
        try:
            return self.session.load_project(project_path, media_override=fn)
        except DPMeshError as e:
            self.show_error("Cannot open project", str(e))
            return False

    def open_dialog(self) -> None:
        start = self.settings.value("last_dir", str(Path.home()))
        fn, _ = QFileDialog.getOpenFileName(self, "Open image, video or project", str(start), MEDIA_FILTER)
        if fn:
            self.settings.setValue("last_dir", str(Path(fn).parent))
            self.open_path(fn)

    def _recent(self) -> list[str]:
        v = self.settings.value("recent", [])
        if isinstance(v, str):
            v = [v]
        return [str(x) for x in (v or [])]

    def _add_recent(self, path: str) -> None:
        r = [str(Path(path).resolve())] + [x for x in self._recent() if x != str(Path(path).resolve())]
        self.settings.setValue("recent", r[:MAX_RECENT])
        self._fill_recent()

    def _fill_recent(self) -> None:
        self.recent_menu.clear()
        rec = self._recent()
        for p in rec:
            a = self.recent_menu.addAction(Path(p).name)
            a.setToolTip(p)
            a.triggered.connect(lambda _c=False, p=p: self.open_path(p))
        self.recent_menu.setEnabled(bool(rec))

    def save_project(self, ask: bool = False) -> bool:
        path = self.doc.project_path
        if ask or not path:
            base = Path(self.doc.media_path).with_suffix(PROJECT_EXT) if self.doc.media_path else Path("scene.dpmesh")
            path, _ = QFileDialog.getSaveFileName(self, "Save project", str(base), "Projects (*.dpmesh)")
            if not path:
                return False
        try:
            self.session.save_project(path)
        except (DPMeshError, OSError) as e:
            self.show_error("Cannot save project", str(e))
            return False
        self._update_title()
        return True

    def export_dialog(self) -> None:
        from .dialogs.export_dialog import ExportDialog

        dlg = ExportDialog(self.session, self)
        dlg.exec()

    def quick_export(self, which: str) -> None:
        from .folders import export_folder, remember_export_folder

        d = QFileDialog.getExistingDirectory(self, "Export to folder", str(export_folder(self.settings)))
        if not d:
            return
        remember_export_folder(self.settings, d)
        try:
            files = self.session.export_meshes(d, which, ("obj",))
        except (DPMeshError, OSError) as e:
            self.show_error("Export failed", str(e))
            return
        self.statusBar().showMessage(f"Wrote {len(files)} file(s) to {d}", 8000)

    def export_keypoints(self) -> None:
        from .folders import export_folder, remember_export_folder

        start = export_folder(self.settings) / f"{self.session.stem()}_keypoints.json"
        fn, _ = QFileDialog.getSaveFileName(self, "Export key-points", str(start), "COCO JSON (*.json)")
        if not fn:
            return
        remember_export_folder(self.settings, Path(fn).parent)
        try:
            self.session.export_keypoints(fn)
        except (DPMeshError, OSError) as e:
            self.show_error("Export failed", str(e))
            return
        self.statusBar().showMessage(f"Wrote {fn}", 8000)

    def models_dialog(self) -> None:
        from .dialogs.models_dialog import ModelsDialog

        dlg = ModelsDialog(self)
        if dlg.exec() and self.session.estimator_kind == "dpmesh":
            self.session.set_estimator("dpmesh")

    def about(self) -> None:
        QMessageBox.about(self, "About DPMesh Studio",
                          "<b>DPMesh Studio</b> — 3-D human meshes of occluded people (DPMesh, CVPR 2024).<br>"
                          "Licence: AGPL-3.0-or-later. Default detector YOLO11n-pose (AGPL-3.0); default body "
                          "model Anny (Apache-2.0, CC0 assets). SMPL is licensed separately by its owners.")

    # drag and drop ----------------------------------------------------------------------
    def dragEnterEvent(self, e) -> None:  # noqa: N802
        if e.mimeData().hasUrls():
            e.acceptProposedAction()

    def dropEvent(self, e) -> None:  # noqa: N802
        urls = [u.toLocalFile() for u in e.mimeData().urls() if u.isLocalFile()]
        if urls:
            self.open_path(urls[0])

    # ------------------------------------------------------------------ editing
    def _on_mode(self, mode: str) -> None:
        {"edit": self.a_mode_edit, "add_joint": self.a_mode_add, "box": self.a_mode_box,
         "place": self.a_mode_place}[mode].setChecked(True)

    def _on_joint_combo(self, i: int) -> None:
        self.image_view.joint_to_add = max(i, 0)

    def toggle_visibility(self) -> None:
        if self.doc.selected_uid != -1 and self.doc.selected_joint >= 0:
            Editor(self.doc).toggle_visibility(self.doc.selected_uid, self.doc.selected_joint)
        else:
            self.statusBar().showMessage("Select a joint first (click it).", 5000)

    def delete_joint(self) -> None:
        if self.doc.selected_uid != -1 and self.doc.selected_joint >= 0:
            Editor(self.doc).delete_keypoint(self.doc.selected_uid, self.doc.selected_joint)
        else:
            self.statusBar().showMessage("Select a joint first (click it).", 5000)

    def remove_person(self) -> None:
        if self.doc.selected_uid != -1:
            Editor(self.doc).remove_person(self.doc.selected_uid)

    def cycle_person(self, d: int) -> None:
        uids = self.doc.uids()
        if not uids:
            return
        i = uids.index(self.doc.selected_uid) if self.doc.selected_uid in uids else -1
        self.doc.select(uids[(i + d) % len(uids)])

    def cycle_joint(self, d: int) -> None:
        p = self.doc.person(self.doc.selected_uid)
        if p is not None:
            self.doc.select_joint((self.doc.selected_joint + d) % p.num_joints)

    def _on_box(self, x0: float, y0: float, x1: float, y1: float) -> None:
        img = self.doc.image()
        if img is None:
            return
        self._pending_box = np.array([x0, y0, x1, y1], np.float32)
        self.session.media.detect_in_box(self._pending_box)
        self.statusBar().showMessage("Detecting key-points inside the box…", 5000)

    def _on_box_person(self, frame: int, person: Person | None) -> None:
        box = getattr(self, "_pending_box", None)
        if box is None:
            return
        self._pending_box = None
        if person is None:
            n = self.joint_combo.count() or 17
            kp = np.zeros((n, 3), np.float32)
            p = Person(box=box, keypoints=kp, visible=np.zeros(n, bool), source="user")
            Editor(self.doc).add_person(p, frame)
            self.statusBar().showMessage("No key-points found in the box: person added empty — place its joints "
                                         "with Add key-point (A).", 10000)
            self.a_mode_add.setChecked(True)
            return
        p = dataclasses.replace(person, box=box, source="user")
        Editor(self.doc).add_person(p, frame)
        self.statusBar().showMessage("Person added from the box.", 5000)

    def propagate(self) -> None:
        self.tracks_panel.run_action(self.tracks_panel.interpolate)
        self.statusBar().showMessage(self.tracks_panel.state.text(), 10000)

    def carry_past_last(self) -> None:
        from PySide6.QtWidgets import QInputDialog

        n, ok = QInputDialog.getInt(self, "Carry past the last key frame",
                                    "Carry the selected track's corrections to how many frames after its last key "
                                    "frame?", self.tracks_panel.carry_n.value(), 1, max(self.doc.num_frames, 1))
        if ok:
            self.tracks_panel.carry_n.setValue(n)
            self.tracks_panel.run_action(lambda: self.tracks_panel.interpolate(n))
            self.statusBar().showMessage(self.tracks_panel.state.text(), 10000)

    def _toggle_video(self, on: bool) -> None:
        if on:
            if not self.session.process_video():
                self.a_process_video.setChecked(False)
                self.statusBar().showMessage("Open a video first.", 5000)
        else:
            self.session.cancel_video()

    def _on_video_progress(self, f: int, n: int) -> None:
        self.busy_label.setText(f"video {f + 1}/{n}")

    def _on_video_running(self, on: bool) -> None:
        self.a_process_video.blockSignals(True)  # (a job started by Play checks it too, without restarting)
        self.a_process_video.setChecked(on)
        self.a_process_video.blockSignals(False)

    def _set_live(self, on: bool) -> None:
        self.session.live_inference = bool(on)

    def _set_smooth(self, on: bool) -> None:
        self.session.smooth_video = bool(on)

    def _on_estimator(self, i: int) -> None:
        kind = self.estimator_combo.itemData(i)
        if kind == "dpmesh":
            from dpmesh_core.config import ModelFiles

            try:
                ckpt = ModelFiles.load().dpmesh_checkpoint
            except DPMeshError:
                ckpt = None
            if not ckpt or not Path(ckpt).exists():
                ans = QMessageBox.question(
                    self, "DPMesh checkpoint needed",
                    "The DPMesh network needs a checkpoint (and the SMPL file). None is set, so key-point "
                    "fitting stays in use.\n\nOpen the Models dialog to set them?")
                self.estimator_combo.blockSignals(True)
                self.estimator_combo.setCurrentIndex(self.estimator_combo.findData(self.session.estimator_kind))
                self.estimator_combo.blockSignals(False)
                if ans == QMessageBox.StandardButton.Yes:
                    self.models_dialog()
                return
        self.session.set_estimator(kind)
        self.attention_view.refresh()

    # ------------------------------------------------------------------ start-up / shutdown
    def offer_recovery(self) -> bool:
        """If autosaved work exists (the app did not close cleanly), offer to restore it."""
        files = self.session.recovery_files()
        if not files:
            return False
        newest = max(files, key=lambda p: p.stat().st_mtime)
        ans = QMessageBox.question(
            self, "Recover unsaved work?",
            f"DPMesh Studio found unsaved work from a previous session:\n{newest}\n\nRestore it?",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.Discard | QMessageBox.StandardButton.Ignore,
            QMessageBox.StandardButton.Yes)  # Enter restores: the safe choice
        if ans == QMessageBox.StandardButton.Yes:
            try:
                ok = self.session.recover(newest)
                if not ok:
                    return self._relocate_media(str(newest))
                return True
            except DPMeshError as e:
                self.show_error("Cannot recover", str(e))
        elif ans == QMessageBox.StandardButton.Discard:
            for f in files:
                try:
                    f.unlink()
                except OSError:
                    pass
        return False

    def closeEvent(self, e) -> None:  # noqa: N802
        if not self.confirm_unsaved("quitting"):
            e.ignore()
            return
        if self.doc.undo_stack.isClean():
            self.session.projects.closing_clean()  # this session's own recovery files; never another's
        self.training_panel.shutdown()
        self.session.shutdown()
        e.accept()


def process_events_until(pred: Any, timeout_s: float = 10.0) -> bool:
    """Spin the event loop until ``pred()`` (benchmarks)."""
    t0 = time.perf_counter()
    app = QApplication.instance()
    while not pred():
        app.processEvents()
        if time.perf_counter() - t0 > timeout_s:
            return False
        QTimer.singleShot(1, lambda: None)
        time.sleep(0.001)
    return True
