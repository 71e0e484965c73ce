"""Export dialog: which meshes (selected person / all persons / every frame of a video), which formats
(OBJ, PLY, GLB, parameter .npz), where; file names from ``api.mesh_filename``."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMessageBox,
    QPushButton,
    QRadioButton,
    QVBoxLayout,
    QWidget,
)

from dpmesh_core.errors import DPMeshError

from ..folders import export_folder, remember_export_folder
from ..session import Session


class ExportDialog(QDialog):
    def __init__(self, session: Session, parent: QWidget | None = None, settings=None):
        super().__init__(parent)
        self.session = session
        self.settings = settings if settings is not None else getattr(parent, "settings", None)
        self.setWindowTitle("Export meshes")
        self.which = QButtonGroup(self)
        lay = QVBoxLayout(self)
        lay.addWidget(QLabel("<b>Meshes</b>"))
        for i, (key, text) in enumerate((("selected", "Selected person"), ("all", "All persons of this frame"),
                                          ("video", "Every frame of the video (one file per person per frame)"))):
            rb = QRadioButton(text)
            rb.setProperty("key", key)
            self.which.addButton(rb, i)
            lay.addWidget(rb)
            if key == "video":
                rb.setEnabled(session.doc.is_video)
        (self.which.button(0) if session.doc.selected_uid != -1 else self.which.button(1)).setChecked(True)
        lay.addWidget(QLabel("<b>Formats</b>"))
        row = QHBoxLayout()
        self.fmt = {}
        for f, on in (("obj", True), ("ply", False), ("glb", False), ("npz", False)):
            cb = QCheckBox(f.upper() if f != "npz" else "parameters .npz")
            cb.setChecked(on)
            self.fmt[f] = cb
            row.addWidget(cb)
        lay.addLayout(row)
        lay.addWidget(QLabel("<b>Folder</b>"))
        row = QHBoxLayout()
        start = export_folder(self.settings)  # last used, else the documents folder (never the media's)
        self.folder = QLineEdit(str(start / f"{session.stem()}_meshes"))
        b = QPushButton("…")
        b.clicked.connect(self._browse)
        row.addWidget(self.folder, 1)
        row.addWidget(b)
        lay.addLayout(row)
        self.preview = QLabel()
        self.preview.setStyleSheet("color: #777")
        lay.addWidget(self.preview)
        self._update_preview()
        self.which.idToggled.connect(lambda *_: self._update_preview())
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        buttons.button(QDialogButtonBox.StandardButton.Ok).setText("Export")
        buttons.accepted.connect(self.export)
        buttons.rejected.connect(self.reject)
        lay.addWidget(buttons)
        self.written: list[Path] = []

    def _browse(self) -> None:
        d = QFileDialog.getExistingDirectory(self, "Export to folder", self.folder.text())
        if d:
            self.folder.setText(d)

    def _update_preview(self) -> None:
        try:
            from dpmesh_core import api

            frame = 0 if self.which.checkedButton().property("key") == "video" else None
            self.preview.setText("e.g. " + api.mesh_filename(self.session.stem(), 0, "obj", frame=frame))
        except Exception:  # noqa: BLE001 - preview only
            self.preview.setText("")

    def export(self) -> None:
        formats = tuple(f for f, cb in self.fmt.items() if cb.isChecked())
        if not formats:
            QMessageBox.warning(self, "Export", "Choose at least one format.")
            return
        which = self.which.checkedButton().property("key")
        try:
            self.written = self.session.export_meshes(self.folder.text(), which, formats)
        except (DPMeshError, OSError) as e:
            QMessageBox.warning(self, "Export failed", str(e))
            return
        remember_export_folder(self.settings, Path(self.folder.text()).parent)
        QMessageBox.information(self, "Export", f"Wrote {len(self.written)} file(s) to {self.folder.text()}")
        self.accept()
