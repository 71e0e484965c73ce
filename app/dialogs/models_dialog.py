"""Models dialog: where the user's model files are (SMPL, DPMesh checkpoint, SD1.5, ControlNet), with a
found / missing check like ``dpmesh doctor``, and which 2-D detector to use (YOLO11n-pose, or the user's
mmpose model and optional mmdet person detector). Saved with ``ModelFiles.save()``."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QGridLayout,
    QGroupBox,
    QLabel,
    QLineEdit,
    QMessageBox,
    QPushButton,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from dpmesh_core.config import ModelFiles
from dpmesh_core.errors import DPMeshError

FIELDS = (
    ("smpl", "SMPL neutral model", "SMPL (*.pkl *.npz);;All files (*)", False,
     "Licensed: register at smpl.is.tue.mpg.de and download basicModel_neutral_lbs_10_207_0_v1.0.0.pkl"),
    ("dpmesh_checkpoint", "DPMesh checkpoint", "Checkpoints (*.pth.tar *.pth *.safetensors);;All files (*)", True,
     "An official *_best_ckpt.pth.tar (loads as released) or a folder from `dpmesh convert` / `dpmesh train`"),
    ("sd15", "Stable Diffusion 1.5", "Weights (*.safetensors *.ckpt);;All files (*)", True,
     "A diffusers folder or a single .safetensors (only needed to train from scratch)"),
    ("controlnet", "ControlNet", "Weights (*.safetensors *.pth);;All files (*)", True,
     "ControlNet openpose weights (only needed to train from scratch)"),
    ("j_regressor_extra", "J_regressor_extra (head-top)", "NumPy (*.npy);;All files (*)", False,
     "SPIN's J_regressor_extra.npy: the DPMesh network's head-top joint (not in the checkpoint; without it "
     "SMPL vertex 411 stands in)"),
)

# The 2-D detector choice: mmpose files (shown when "mmpose" is chosen). Same tuple layout as FIELDS.
MMPOSE_FIELDS = (
    ("mmpose_pose_config", "mmpose pose config", "mmpose configs (*.py);;All files (*)", False,
     "An mmpose 1.x config (top-down, e.g. RTMPose / HRNet, or bottom-up, e.g. RTMO) predicting the 17 COCO "
     "key-points"),
    ("mmpose_pose_checkpoint", "mmpose pose checkpoint", "Checkpoints (*.pth *.pt);;All files (*)", False,
     "The weights that go with the pose config"),
    ("mmpose_det_config", "mmdet person detector config", "mmdet configs (*.py);;All files (*)", False,
     "Optional, for a top-down model: finds the person boxes (without it the whole image is one person)"),
    ("mmpose_det_checkpoint", "mmdet detector checkpoint", "Checkpoints (*.pth *.pt);;All files (*)", False,
     "The weights that go with the detector config"),
)
DETECTORS = (("yolo", "YOLO11n-pose (built in)"), ("mmpose", "my mmpose model (needs mmpose installed)"))

_EXPECTED_SUFFIXES = {
    "smpl": (".pkl", ".npz"),
    "dpmesh_checkpoint": (".tar", ".pth", ".safetensors", ".pt", ""),
    "sd15": (".safetensors", ".ckpt", ""),
    "controlnet": (".safetensors", ".pth", ".bin", ""),
    "j_regressor_extra": (".npy",),
    "mmpose_pose_config": (".py",),
    "mmpose_pose_checkpoint": (".pth", ".pt"),
    "mmpose_det_config": (".py",),
    "mmpose_det_checkpoint": (".pth", ".pt"),
}


def check_model_file(name: str, path: str) -> tuple[bool, str]:
    """(ok, message) for one model file: exists and has a plausible kind (wrong kinds are named)."""
    if not path:
        return False, "not set"
    p = Path(path)
    if not p.exists():
        return False, "does not exist"
    if p.is_dir():
        if name == "smpl":
            return False, "is a folder; the SMPL model is a single .pkl or .npz file"
        return True, "folder found"
    suf = "".join(p.suffixes[-2:]).lower() if p.name.lower().endswith(".pth.tar") else p.suffix.lower()
    ok_suf = _EXPECTED_SUFFIXES[name]
    if suf not in ok_suf and not (suf.endswith(".tar") and ".tar" in ok_suf):
        return False, f"is a {suf or 'file without extension'}; expected {', '.join(s for s in ok_suf if s)}"
    if name.endswith("_config"):
        return True, "found"
    if p.stat().st_size < 1024:
        return False, "is too small to be a model file"
    return True, f"found ({p.stat().st_size / 1e6:.1f} MB)"


class ModelsDialog(QDialog):
    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setWindowTitle("Model files")
        self.resize(760, 460)
        try:
            self.files = ModelFiles.load()
        except DPMeshError as e:
            QMessageBox.warning(self, "Model settings unreadable", f"{e}\nStarting from empty settings.")
            self.files = ModelFiles()
        grid = QGridLayout()
        self.edits: dict[str, QLineEdit] = {}
        self.status: dict[str, QLabel] = {}
        for r, field in enumerate(FIELDS):
            self._file_row(grid, r, *field, status_column=4)
        det_box = QGroupBox("2-D detector")
        det_grid = QGridLayout(det_box)
        self.detector = QComboBox()
        for key, label in DETECTORS:
            self.detector.addItem(label, key)
        self.detector.setCurrentIndex(max(0, self.detector.findData(self.files.detector)))
        self.detector.setToolTip("mmpose models run in the app's inference process: start the app from a Python "
                                 "environment that has mmpose (scripts/mmpose_env.sh builds one)")
        self.detector.currentIndexChanged.connect(self.update_status)
        det_grid.addWidget(QLabel("Detector"), 0, 0)
        det_grid.addWidget(self.detector, 0, 1)
        for r, field in enumerate(MMPOSE_FIELDS, start=1):
            self._file_row(det_grid, r, *field, status_column=3)
        self.doctor = QTextBrowser()
        self.doctor.setPlaceholderText("Run the full check to see every component, like `dpmesh doctor`.")
        run = QPushButton("Run full check (dpmesh doctor)")
        run.clicked.connect(self.run_doctor)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Save | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.save)
        buttons.rejected.connect(self.reject)
        lay = QVBoxLayout(self)
        lay.addLayout(grid)
        lay.addWidget(det_box)
        lay.addWidget(run)
        lay.addWidget(self.doctor, 1)
        lay.addWidget(buttons)
        self.update_status()

    def _file_row(self, grid: QGridLayout, r: int, name: str, label: str, filt: str, folder_ok: bool, hint: str,
                  *, status_column: int) -> None:
        """One model-file row: label, path field, File… (and Folder…) buttons, status."""
        grid.addWidget(QLabel(label), r, 0)
        e = QLineEdit(getattr(self.files, name) or "")
        e.setToolTip(hint)
        e.setPlaceholderText(hint)
        e.textChanged.connect(self.update_status)
        self.edits[name] = e
        grid.addWidget(e, r, 1)
        b = QPushButton("File…")
        b.clicked.connect(lambda _c=False, n=name, f=filt: self._browse(n, f, False))
        grid.addWidget(b, r, 2)
        if folder_ok and status_column > 3:
            b2 = QPushButton("Folder…")
            b2.clicked.connect(lambda _c=False, n=name: self._browse(n, "", True))
            grid.addWidget(b2, r, 3)
        st = QLabel()
        self.status[name] = st
        grid.addWidget(st, r, status_column)

    def _browse(self, name: str, filt: str, folder: bool) -> None:
        if folder:
            fn = QFileDialog.getExistingDirectory(self, "Choose folder")
        else:
            fn, _ = QFileDialog.getOpenFileName(self, "Choose file", "", filt)
        if fn:
            self.edits[name].setText(fn)

    def mmpose_chosen(self) -> bool:
        return self.detector.currentData() == "mmpose"

    def update_status(self) -> None:
        for name, e in self.edits.items():
            if name.startswith("mmpose_"):
                e.setEnabled(self.mmpose_chosen())
            ok, msg = check_model_file(name, e.text().strip())
            color = "#2e7d32" if ok else ("#888" if msg == "not set" else "#c62828")
            self.status[name].setText(f"<span style='color:{color}'>{'✓' if ok else '✗'} {msg}</span>")

    def run_doctor(self) -> None:
        from dpmesh_core import api

        rows = []
        mm = None
        if self.mmpose_chosen():
            mm = {k: self.edits[f"mmpose_{k}"].text().strip() or None
                  for k in ("pose_config", "pose_checkpoint", "det_config", "det_checkpoint")}
        for c in api.doctor(mmpose=mm):
            mark = "✓" if c.ok else ("–" if getattr(c, "optional", False) else "✗")
            fix = f"<br><i>{c.fix}</i>" if (not c.ok and c.fix) else ""
            rows.append(f"<p>{mark} <b>{c.name}</b>: {c.detail}{fix}</p>")
        self.doctor.setHtml("".join(rows))

    def save(self) -> None:
        bad = []
        for name, e in self.edits.items():
            v = e.text().strip()
            ok, msg = check_model_file(name, v)
            if v and not ok:
                bad.append(f"{name}: {v} {msg}")
            setattr(self.files, name, v or None)
        self.files.detector = str(self.detector.currentData())
        if self.mmpose_chosen() and not self.files.mmpose_pose_config:
            bad.append("detector: mmpose is chosen but no mmpose pose config is set (YOLO11n-pose is used until "
                       "one is)")
        if bad:
            ans = QMessageBox.question(self, "Some files look wrong", "\n".join(bad) + "\n\nSave anyway?")
            if ans != QMessageBox.StandardButton.Yes:
                return
        try:
            self.files.save()
        except (DPMeshError, OSError) as e:
            QMessageBox.warning(self, "Cannot save", str(e))
            return
        self.accept()
