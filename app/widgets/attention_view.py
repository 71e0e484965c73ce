"""Attention view (pyqtgraph): the DPMesh network's per-joint cross-attention maps for the selected person.

The network records, per prompt joint (30 joints of the SMPL-30 set), an 8×8 and a 16×16 attention map
over the person crop (``MeshResult.attention`` {"8": (30, 8, 8), "16": (30, 16, 16)}). Shown as a grid of
all joints and as an overlay on the crop for the selected joint. With the fitting estimator there are
no maps: the panel says how to get them instead of staying empty.
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import QComboBox, QHBoxLayout, QLabel, QSlider, QStackedWidget, QVBoxLayout, QWidget

from ..session import Session

SMPL30 = ("Pelvis", "L_Hip", "R_Hip", "Torso", "L_Knee", "R_Knee", "Spine", "L_Ankle", "R_Ankle", "Chest",
          "L_Toe", "R_Toe", "Neck", "L_Thorax", "R_Thorax", "Head", "L_Shoulder", "R_Shoulder", "L_Elbow",
          "R_Elbow", "L_Wrist", "R_Wrist", "L_Hand", "R_Hand", "Nose", "L_Eye", "R_Eye", "L_Ear", "R_Ear",
          "Head_top")

EXPLANATION = (
    "<h3>No attention maps with key-point fitting</h3>"
    "<p>Attention maps come from the <b>DPMesh network</b>: for each body joint it shows where in the person "
    "crop the diffusion backbone looked (8×8 and 16×16 cross-attention).</p>"
    "<p>To see them:</p><ol>"
    "<li>Open <b>Tools ▸ Models…</b> and set a <b>DPMesh checkpoint</b> (an official "
    "<code>*_best_ckpt.pth.tar</code> as released — it loads directly — or a folder from <code>dpmesh convert</code> "
    "or <code>dpmesh train</code>) and "
    "the SMPL file.</li>"
    "<li>Choose <b>DPMesh network</b> in the toolbar's Estimator list.</li>"
    "<li>Select a person: its maps appear here.</li></ol>")


def attention_grid(maps: np.ndarray, cols: int = 6, pad: int = 1) -> np.ndarray:
    """Tile (J, h, w) maps (each normalised to [0, 1]) into one (rows*(h+pad), cols*(w+pad)) image."""
    maps = np.asarray(maps, np.float32)
    j, h, w = maps.shape
    rows = (j + cols - 1) // cols
    out = np.full((rows * (h + pad), cols * (w + pad)), np.nan, np.float32)
    for k in range(j):
        m = maps[k]
        lo, hi = float(np.nanmin(m)), float(np.nanmax(m))
        m = (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)
        r, c = divmod(k, cols)
        out[r * (h + pad): r * (h + pad) + h, c * (w + pad): c * (w + pad) + w] = m
    return out


def overlay_on_crop(crop: np.ndarray, amap: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """RGB uint8 crop (S, S, 3) with a (h, w) attention map upsampled and blended as a heat map."""
    import cv2

    s = crop.shape[0]
    m = np.asarray(amap, np.float32)
    m = (m - m.min()) / max(float(m.max() - m.min()), 1e-8)
    m = cv2.resize(m, (s, s), interpolation=cv2.INTER_CUBIC).clip(0, 1)
    heat = cv2.applyColorMap((m * 255).astype(np.uint8), cv2.COLORMAP_INFERNO)[..., ::-1]
    return (crop.astype(np.float32) * (1 - alpha) + heat.astype(np.float32) * alpha).clip(0, 255).astype(np.uint8)


class AttentionView(QWidget):
    def __init__(self, session: Session, parent: QWidget | None = None):
        super().__init__(parent)
        self.session = session
        self.doc = session.doc
        self.stack = QStackedWidget()
        self.explain = QLabel(EXPLANATION)
        self.explain.setWordWrap(True)
        self.explain.setTextFormat(Qt.TextFormat.RichText)
        self.explain.setAlignment(Qt.AlignmentFlag.AlignTop)
        self.explain.setMargin(8)
        maps = QWidget()
        self.res_combo = QComboBox()
        self.res_combo.addItems(["16×16", "8×8"])
        self.joint_combo = QComboBox()
        self.joint_combo.addItems(list(SMPL30))
        self.alpha = QSlider(Qt.Orientation.Horizontal)
        self.alpha.setRange(0, 100)
        self.alpha.setValue(55)
        row = QHBoxLayout()
        row.addWidget(QLabel("maps"))
        row.addWidget(self.res_combo)
        row.addWidget(QLabel("joint"))
        row.addWidget(self.joint_combo)
        row.addWidget(QLabel("opacity"))
        row.addWidget(self.alpha)
        self.grid_view = pg.ImageView()
        self.grid_view.ui.roiBtn.hide()
        self.grid_view.ui.menuBtn.hide()
        self.grid_view.setColorMap(pg.colormap.get("inferno"))
        self.crop_view = pg.ImageView()
        self.crop_view.ui.roiBtn.hide()
        self.crop_view.ui.menuBtn.hide()
        self.crop_view.ui.histogram.hide()
        v = QVBoxLayout(maps)
        v.setContentsMargins(0, 0, 0, 0)
        v.addLayout(row)
        v.addWidget(QLabel("all joints (click a joint name above for the overlay)"))
        v.addWidget(self.grid_view, 1)
        v.addWidget(self.crop_view, 1)
        self.stack.addWidget(self.explain)
        self.stack.addWidget(maps)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.stack)
        for sig in (self.res_combo.currentIndexChanged, self.joint_combo.currentIndexChanged,
                    self.alpha.valueChanged):
            sig.connect(lambda *_: self.refresh())
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(0)
        self._timer.timeout.connect(self.refresh)
        self.doc.selection_changed.connect(lambda _u: self._timer.start())
        self.doc.results_changed.connect(lambda _f: self._timer.start())
        self.refresh()

    def current_attention(self) -> tuple[dict | None, object]:
        att, person, _box = self._current()
        return att, person

    def _current(self) -> tuple[dict | None, object, object]:
        """(attention maps, person, the crop box the network looked at (None: not recorded))."""
        uid = self.doc.selected_uid
        if uid == -1:
            uids = self.doc.uids()
            uid = uids[0] if uids else -1
        r = self.doc.result(uid) if uid != -1 else None
        box = (r.params.extra or {}).get("crop_box") if r is not None else None
        return (r.attention if r is not None else None), (self.doc.person(uid) if uid != -1 else None), box

    def crop_box(self) -> object:
        """The square box of the crop under the overlay: the network's own crop when the result records it
        (the maps are in its coordinates), else the box DPMesh would choose for the person now."""
        _att, person, box = self._current()
        img = self.doc.image()
        if box is not None:
            return np.asarray(box, np.float64)
        if img is None or person is None:
            return None
        from dpmesh_core import api

        return api.crop_box(person, (img.shape[1], img.shape[0]))

    def refresh(self) -> None:
        att, person = self.current_attention()
        if not att:
            if self.session.estimator_kind == "dpmesh":
                self.explain.setText("<h3>Attention maps</h3><p>Select a person estimated by the DPMesh network "
                                     "to see its per-joint attention maps.</p>")
            else:
                self.explain.setText(EXPLANATION)
            self.stack.setCurrentIndex(0)
            return
        self.stack.setCurrentIndex(1)
        key = "16" if self.res_combo.currentIndex() == 0 else "8"
        maps = np.asarray(att.get(key, next(iter(att.values()))))
        self.grid_view.setImage(attention_grid(maps).T, autoLevels=False, levels=(0, 1))
        j = min(self.joint_combo.currentIndex(), maps.shape[0] - 1)
        img = self.doc.image()
        box = self.crop_box()
        if img is None or box is None:
            return
        from dpmesh_core import api

        crop = api.crop_image(img, box, size=256)
        self.last_crop = crop
        over = overlay_on_crop(crop, maps[j], self.alpha.value() / 100)
        self.crop_view.setImage(np.transpose(over, (1, 0, 2)), autoLevels=False, levels=(0, 255))
