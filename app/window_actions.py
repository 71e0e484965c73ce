"""The main window's actions, menus, toolbar, status bar and shortcut help (``WindowActions``, a part of
``MainWindow``): what the user can trigger and where it sits. The slots the actions call are
``MainWindow``'s; the window's behaviour and wiring stay in ``main_window.py``."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtGui import QAction, QActionGroup, QKeySequence
from PySide6.QtWidgets import QComboBox, QLabel, QProgressBar, QToolBar

from .session.estimation import ESTIMATOR_LABELS
from .widgets.image_view import JointTables


class WindowActions:
    """Builds the actions, menus, toolbar, status bar and help of ``MainWindow`` (mixed into it)."""

    def _act(self, text: str, slot: Any, shortcut: str | QKeySequence | None = None, tip: str = "",
             checkable: bool = False, checked: bool = False) -> QAction:
        a = QAction(text, self)
        if shortcut is not None:
            a.setShortcut(QKeySequence(shortcut))
            a.setShortcutContext(Qt.ShortcutContext.WindowShortcut)
        if tip:
            a.setStatusTip(tip)
            a.setToolTip(f"{tip} ({a.shortcut().toString()})" if shortcut else tip)
        if checkable:
            a.setCheckable(True)
            a.setChecked(checked)
            a.toggled.connect(slot)
        else:
            a.triggered.connect(slot)
        self.addAction(a)
        return a

    def _build_actions(self) -> None:
        s = self.session
        self.a_new = self._act("&New", self.new_document, QKeySequence.StandardKey.New, "Close the media (asks about "
                               "unsaved work)")
        self.a_open = self._act("&Open…", self.open_dialog, QKeySequence.StandardKey.Open, "Open an image, video or project")
        self.a_demo = self._act("Open &demo scene", s.open_demo, None, "Two people rendered from the body model")
        self.a_save = self._act("&Save project", self.save_project, QKeySequence.StandardKey.Save, "Save the project")
        self.a_save_as = self._act("Save project &as…", lambda: self.save_project(ask=True), "Ctrl+Shift+S")
        self.a_export = self._act("&Export meshes…", self.export_dialog, "Ctrl+E", "Export OBJ / PLY / GLB / npz")
        self.a_export_sel = self._act("Export selected person as OBJ…", lambda: self.quick_export("selected"))
        self.a_export_kp = self._act("Export key-points (COCO JSON)…", self.export_keypoints)
        self.a_quit = self._act("&Quit", self.close, QKeySequence.StandardKey.Quit)
        self.a_undo = self.doc.undo_stack.createUndoAction(self, "&Undo")
        self.a_undo.setShortcut(QKeySequence("Ctrl+Z"))
        self.a_redo = self.doc.undo_stack.createRedoAction(self, "&Redo")
        self.a_redo.setShortcuts([QKeySequence("Ctrl+Shift+Z"), QKeySequence("Ctrl+Y")])
        self.addAction(self.a_undo)
        self.addAction(self.a_redo)
        self.a_toggle_vis = self._act("Mark joint occluded / visible", self.toggle_visibility, "O",
                                      "Toggle the selected joint's visibility")
        self.a_del_joint = self._act("Delete key-point", self.delete_joint, QKeySequence.StandardKey.Delete,
                                     "Delete the selected key-point")
        self.a_del_person = self._act("Remove person", self.remove_person, "Shift+Del", "Remove the selected person")
        self.a_next_person = self._act("Next person", lambda: self.cycle_person(1), "Tab")
        self.a_prev_person = self._act("Previous person", lambda: self.cycle_person(-1), "Shift+Tab")
        self.a_next_joint = self._act("Next joint", lambda: self.cycle_joint(1), "J")
        self.mode_group = QActionGroup(self)
        self.a_mode_edit = self._act("Select / drag", lambda on: on and self.image_view.set_mode("edit"), "Esc",
                                     "Select persons and drag key-points", checkable=True, checked=True)
        self.a_mode_add = self._act("Add key-point", lambda on: on and self.image_view.set_mode("add_joint"), "A",
                                    "Place the joint chosen in the list on the selected person", checkable=True)
        self.a_mode_box = self._act("Add person (box)", lambda on: on and self.image_view.set_mode("box"), "B",
                                    "Draw a box; key-points are detected inside it", checkable=True)
        self.a_mode_place = self._act("Add person (joints)", lambda on: on and self.image_view.set_mode("place"), "P",
                                      "Click joint after joint to add a person", checkable=True)
        for a in (self.a_mode_edit, self.a_mode_add, self.a_mode_box, self.a_mode_place):
            self.mode_group.addAction(a)
        self.a_skip = self._act("Skip joint (placing)", self.image_view.skip_place_joint, "N")
        self.a_overlay = self._act("Mesh overlay", self.image_view.set_overlay_enabled, "M",
                                   "Show the meshes over the image", checkable=True, checked=True)
        self.a_skeleton = self._act("Skeletons", self.image_view.set_skeleton_enabled, "K",
                                    "Show key-points and skeletons", checkable=True, checked=True)
        self.a_fit = self._act("Fit image in view", self.image_view.fit, "F")
        self.a_zoom_in = self._act("Zoom in", lambda: self.image_view.zoom(1.25), QKeySequence.StandardKey.ZoomIn)
        self.a_zoom_out = self._act("Zoom out", lambda: self.image_view.zoom(0.8), QKeySequence.StandardKey.ZoomOut)
        self.a_detect = self._act("Detect persons", lambda: s.detect_frame(force=True), "Ctrl+D",
                                  "Run the person detector on this frame (replaces its persons)")
        self.a_reestimate = self._act("Re-estimate all", lambda: s.estimate_all(), "Ctrl+R",
                                      "Estimate every person of this frame again")
        self.a_live = self._act("Live re-inference", self._set_live, None,
                                "Re-estimate a person after each edit", checkable=True, checked=True)
        self.a_models = self._act("&Models…", self.models_dialog, None, "SMPL, DPMesh checkpoint, SD1.5 files")
        self.a_prev_frame = self._act("Previous frame", lambda: self.timeline.step(-1), ",")
        self.a_next_frame = self._act("Next frame", lambda: self.timeline.step(1), ".")
        self.a_play = self._act("Play / pause", self.timeline.toggle_play, "Space")
        self.a_propagate = self._act("Interpolate between key frames", self.propagate, "Ctrl+I",
                                     "Interpolate the selected track's corrections between its key frames (frames "
                                     "corrected by hand)")
        self.a_carry = self._act("Carry past the last key frame…", self.carry_past_last, "Ctrl+Shift+I",
                                 "Carry the selected track's last corrections to a chosen number of later frames")
        self.a_process_video = self._act("Process all frames", self._toggle_video, "Ctrl+Shift+P",
                                         "Detect, track and estimate every frame (click again to stop)",
                                         checkable=True)
        self.a_smooth = self._act("Temporal mesh smoothing", self._set_smooth, None,
                                  "Warm-start each frame from the previous one (video)", checkable=True, checked=True)
        self.a_help = self._act("Keyboard shortcuts", lambda: self._docks["Shortcuts"].show(), "F1")
        self.a_about = self._act("About", self.about)

    def _build_menus(self) -> None:
        mb = self.menuBar()
        m = mb.addMenu("&File")
        m.addAction(self.a_new)
        m.addAction(self.a_open)
        self.recent_menu = m.addMenu("Open &recent")
        m.addAction(self.a_demo)
        m.addSeparator()
        for a in (self.a_save, self.a_save_as):
            m.addAction(a)
        m.addSeparator()
        for a in (self.a_export, self.a_export_sel, self.a_export_kp):
            m.addAction(a)
        m.addSeparator()
        m.addAction(self.a_quit)
        self._fill_recent()
        m = mb.addMenu("&Edit")
        for a in (self.a_undo, self.a_redo):
            m.addAction(a)
        m.addSeparator()
        for a in (self.a_mode_edit, self.a_mode_add, self.a_mode_box, self.a_mode_place, self.a_skip):
            m.addAction(a)
        m.addSeparator()
        for a in (self.a_toggle_vis, self.a_del_joint, self.a_del_person, self.a_next_person, self.a_prev_person,
                  self.a_next_joint):
            m.addAction(a)
        m = mb.addMenu("&View")
        for a in (self.a_overlay, self.a_skeleton, self.a_fit, self.a_zoom_in, self.a_zoom_out):
            m.addAction(a)
        m.addSeparator()
        for d in self._docks.values():
            m.addAction(d.toggleViewAction())
        m = mb.addMenu("&Video")
        for a in (self.a_prev_frame, self.a_next_frame, self.a_play, self.a_propagate, self.a_carry,
                  self.a_process_video, self.a_smooth):
            m.addAction(a)
        m = mb.addMenu("&Tools")
        for a in (self.a_detect, self.a_reestimate, self.a_live, self.a_models):
            m.addAction(a)
        m = mb.addMenu("&Help")
        m.addAction(self.a_help)
        m.addAction(self.a_about)

    def _build_toolbar(self) -> None:
        tb = QToolBar("Main", self)
        tb.setObjectName("toolbar-main")
        tb.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextOnly)
        self.addToolBar(tb)
        for a in (self.a_open, self.a_save):
            tb.addAction(a)
        # compact Undo / Redo buttons (the menu entries name the edit); the shortcuts live on the menu ones
        stack = self.doc.undo_stack
        for text, fn, can, sig, txt in (("Undo", stack.undo, stack.canUndo, stack.canUndoChanged, stack.undoText),
                                        ("Redo", stack.redo, stack.canRedo, stack.canRedoChanged, stack.redoText)):
            a = QAction(text, self)
            a.triggered.connect(fn)
            a.setEnabled(can())
            sig.connect(a.setEnabled)
            stack.indexChanged.connect(lambda _i, a=a, text=text, txt=txt: self._undo_tip(a, text, txt))
            tb.addAction(a)
        tb.addSeparator()
        for a in (self.a_mode_edit, self.a_mode_add):
            tb.addAction(a)
        self.joint_combo = QComboBox()
        self.joint_combo.setToolTip("Joint to add (A, then click)")
        self.joint_combo.addItems(list(JointTables.get("coco17")[0]) or [str(i) for i in range(17)])
        self.joint_combo.currentIndexChanged.connect(self._on_joint_combo)
        tb.addWidget(self.joint_combo)
        for a in (self.a_mode_box, self.a_mode_place):
            tb.addAction(a)
        tb.addSeparator()
        tb.addAction(self.a_overlay)
        tb.addAction(self.a_detect)
        tb.addWidget(QLabel(" Estimator: "))
        self.estimator_combo = QComboBox()
        for kind, label in ESTIMATOR_LABELS.items():
            self.estimator_combo.addItem(label, kind)
        self.estimator_combo.setToolTip("Key-point fitting works out of the box; the DPMesh network needs a "
                                        "checkpoint (Tools ▸ Models)")
        self.estimator_combo.currentIndexChanged.connect(self._on_estimator)
        tb.addWidget(self.estimator_combo)
        tb.addSeparator()
        tb.addAction(self.a_export)

    @staticmethod
    def _undo_tip(action: QAction, text: str, txt: Any) -> None:
        try:
            action.setToolTip(f"{text} {txt()}".strip())
        except RuntimeError:  # the stack or the action is being destroyed (window closing)
            pass

    def _build_status(self) -> None:
        sb = self.statusBar()
        self.busy = QProgressBar()
        self.busy.setRange(0, 0)
        self.busy.setMaximumWidth(120)
        self.busy.setMaximumHeight(14)
        self.busy.setToolTip("Estimating in the background")
        self.busy.hide()
        self.busy_label = QLabel("")
        self.timing_label = QLabel("")
        sb.addPermanentWidget(self.timing_label)
        sb.addPermanentWidget(self.busy_label)
        sb.addPermanentWidget(self.busy)

    def _fill_help(self) -> None:
        rows = []
        groups = {
            "Files": (self.a_open, self.a_save, self.a_save_as, self.a_export),
            "Editing": (self.a_undo, self.a_redo, self.a_mode_edit, self.a_mode_add, self.a_mode_box,
                        self.a_mode_place, self.a_skip, self.a_toggle_vis, self.a_del_joint, self.a_del_person,
                        self.a_next_person, self.a_prev_person, self.a_next_joint),
            "View": (self.a_overlay, self.a_skeleton, self.a_fit, self.a_zoom_in, self.a_zoom_out),
            "Video": (self.a_prev_frame, self.a_next_frame, self.a_play, self.a_propagate, self.a_process_video),
            "Inference": (self.a_detect, self.a_reestimate),
        }
        for g, acts in groups.items():
            rows.append(f"<tr><td colspan=2><b>{g}</b></td></tr>")
            for a in acts:
                keys = ", ".join(k.toString(QKeySequence.SequenceFormat.NativeText) for k in a.shortcuts())
                rows.append(f"<tr><td><code>{keys}</code></td><td>{a.text().replace('&', '')}</td></tr>")
        mouse = ("<p><b>Mouse</b>: click a joint to select it, drag to move it (the mesh updates on release); "
                 "right-click a joint for occluded/delete; wheel zooms; drag empty space or middle-drag pans. "
                 "Mesh view: left-drag orbits, right-drag pans, wheel zooms, double-click resets.</p>"
                 "<p><b>Legend</b>: joint size and opacity = detector confidence; hollow ✕ = occluded; white ring "
                 "= corrected by you; dashed limb = involves an occluded joint.</p>")
        self.help_panel.setHtml("<table cellspacing=4>" + "".join(rows) + "</table>" + mouse)
