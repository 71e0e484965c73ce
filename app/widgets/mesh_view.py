"""The 3-D mesh view: every person's mesh in camera space, rendered by ``api.MeshRenderer`` on the render
thread (Open3D is thread-confined) and shown as a QImage.

Mouse: left-drag orbits about the people's centre, right- or middle-drag pans, the wheel zooms,
double-click (or the Reset button) returns to the camera's own view. "Selected only" shows one person.
The orbit is a (4, 4) view transform handed to the renderer with the frame's own camera, so what you
see at reset is exactly what the camera saw. Rendering happens at the frame's size on the render thread
(one Open3D context, shared with the overlay) and is scaled to the widget.
"""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QPointF, QSize, Qt, QTimer
from PySide6.QtGui import QColor, QImage, QPainter
from PySide6.QtWidgets import QCheckBox, QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from dpmesh_core.types import Camera

from ..palette import mesh_rgb01
from ..session import Session
from .image_view import rgb_to_qimage


def _rot(yaw_deg: float, pitch_deg: float) -> np.ndarray:
    """(3, 3) rotation: yaw about the camera's y axis, then pitch about x (OpenCV camera frame)."""
    y, p = np.deg2rad(yaw_deg), np.deg2rad(pitch_deg)
    ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    rx = np.array([[1, 0, 0], [0, np.cos(p), -np.sin(p)], [0, np.sin(p), np.cos(p)]])
    return rx @ ry


class MeshCanvas(QWidget):
    """Shows the last rendered frame; turns mouse gestures into view changes."""

    def __init__(self, view: MeshView):
        super().__init__(view)
        self.view = view
        self.image: QImage | None = None
        self.scaled: QImage | None = None
        self._last: QPointF | None = None
        self._button = Qt.MouseButton.NoButton
        self.setMinimumSize(160, 140)
        self.setMouseTracking(False)

    def paintEvent(self, e) -> None:  # noqa: N802 - Qt API
        p = QPainter(self)
        p.fillRect(self.rect(), QColor(28, 30, 34))
        if self.image is not None:
            img = self.image
            if img.width() > self.width() or img.height() > self.height():
                if self.scaled is None or self.scaled.size() != img.size().scaled(
                        self.size(), Qt.AspectRatioMode.KeepAspectRatio):
                    self.scaled = img.scaled(self.size(), Qt.AspectRatioMode.KeepAspectRatio,
                                             Qt.TransformationMode.SmoothTransformation)
                img = self.scaled
            x = (self.width() - img.width()) // 2
            y = (self.height() - img.height()) // 2
            p.drawImage(x, y, img)
        else:
            p.setPen(QColor(170, 170, 170))
            p.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter, self.view.placeholder)
        p.end()

    def mousePressEvent(self, e) -> None:  # noqa: N802
        self._last, self._button = e.position(), e.button()

    def mouseMoveEvent(self, e) -> None:  # noqa: N802
        if self._last is None:
            return
        d = e.position() - self._last
        self._last = e.position()
        if self._button == Qt.MouseButton.LeftButton:
            self.view.orbit(d.x() * 0.4, -d.y() * 0.4)
        else:
            self.view.pan(d.x(), d.y())

    def mouseReleaseEvent(self, e) -> None:  # noqa: N802
        self._last = None

    def mouseDoubleClickEvent(self, e) -> None:  # noqa: N802
        self.view.reset_view()

    def wheelEvent(self, e) -> None:  # noqa: N802
        self.view.zoom(1.0015 ** e.angleDelta().y())

    def resizeEvent(self, e) -> None:  # noqa: N802
        self.scaled = None
        self.view.schedule()


class MeshView(QWidget):
    """Mesh view dock content: canvas + Reset + "Selected only"."""

    def __init__(self, session: Session, parent: QWidget | None = None):
        super().__init__(parent)
        self.session = session
        self.doc = session.doc
        self.yaw = 0.0
        self.pitch = 0.0
        self.distance_scale = 1.0
        self.pan_px = np.zeros(2)
        self._focal_px = 1000.0
        self.selected_only = False
        self.placeholder = "No mesh yet: open an image; meshes appear here once estimated."
        self.canvas = MeshCanvas(self)
        self.reset_btn = QPushButton("Reset view")
        self.reset_btn.setToolTip("Back to the camera's view (double-click the view)")
        self.reset_btn.clicked.connect(self.reset_view)
        self.sel_box = QCheckBox("Selected only")
        self.sel_box.toggled.connect(self._set_selected_only)
        self.info = QLabel("")
        self.info.setStyleSheet("color: #999")
        bar = QHBoxLayout()
        bar.addWidget(self.reset_btn)
        bar.addWidget(self.sel_box)
        bar.addStretch(1)
        bar.addWidget(self.info)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(2, 2, 2, 2)
        lay.addWidget(self.canvas, 1)
        lay.addLayout(bar)
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(0)
        self._timer.timeout.connect(self.request_render)
        self.doc.results_changed.connect(lambda _f: self.schedule_after_overlay())
        # New results: the image overlay (what the user watches while editing) renders first; the 3-D view
        # follows when no overlay and no estimation is under way (at most MAX_DEFER_MS later: during a drag
        # or a whole-video job it still refreshes), so it never takes the CPU from the next edit's fit and
        # overlay.
        self._settle = QTimer(self)
        self._settle.setSingleShot(True)
        self._settle.setInterval(self.MAX_DEFER_MS)
        self._settle.timeout.connect(self.schedule)
        session.overlay.idle.connect(self._overlay_idle)
        self.doc.selection_changed.connect(lambda _u: self.schedule() if self.selected_only else None)
        self.doc.frame_changed.connect(lambda _f: self.schedule())
        self.doc.media_changed.connect(self.reset_view)
        session.overlay.view_rendered.connect(self._on_rendered)
        self.last_render_s = 0.0

    def sizeHint(self) -> QSize:  # noqa: N802
        return QSize(420, 380)

    # view controls ------------------------------------------------------------------
    def orbit(self, dyaw: float, dpitch: float) -> None:
        self.yaw = (self.yaw + dyaw) % 360
        self.pitch = float(np.clip(self.pitch + dpitch, -89, 89))
        self.schedule()

    def pan(self, dx: float, dy: float) -> None:
        self.pan_px += (dx, dy)
        self.schedule()

    def zoom(self, factor: float) -> None:
        self.distance_scale = float(np.clip(self.distance_scale / factor, 0.1, 10))
        self.schedule()

    def reset_view(self) -> None:
        self.yaw = self.pitch = 0.0
        self.distance_scale = 1.0
        self.pan_px = np.zeros(2)
        self.schedule()

    def _set_selected_only(self, on: bool) -> None:
        self.selected_only = bool(on)
        self.schedule()

    MAX_DEFER_MS = 250

    def schedule(self) -> None:
        self._settle.stop()
        if self.isVisible() or self.canvas.isVisible():
            self._timer.start()

    def schedule_after_overlay(self) -> None:
        """Render for new results once no overlay or estimation is under way (see ``__init__``)."""
        if not self._settle.isActive():
            self._settle.start()
        if not self.session.overlay_pending():
            QTimer.singleShot(0, self._overlay_idle)

    def _overlay_idle(self) -> None:
        if self._settle.isActive() and not self.session.overlay_pending():
            self.schedule()

    def showEvent(self, e) -> None:  # noqa: N802
        self.schedule()

    # rendering ------------------------------------------------------------------------
    def view_matrix(self, pivot: np.ndarray) -> np.ndarray:
        """(4, 4) rigid transform: orbit about ``pivot`` (metres, camera frame), then zoom along the
        viewing ray and pan; identity at reset (the camera's own view)."""
        R = _rot(self.yaw, self.pitch)
        depth = max(float(pivot[2]), 0.5)
        new_pivot = pivot * np.array([1.0, 1.0, self.distance_scale])
        pan = np.array([self.pan_px[0], self.pan_px[1], 0.0]) * depth * self.distance_scale / self._focal_px
        T = np.eye(4)
        T[:3, :3] = R
        T[:3, 3] = new_pivot + pan - R @ pivot
        return T

    def scene_meshes(self) -> tuple[list, Camera | None, np.ndarray | None]:
        """(meshes, camera, view) for the renderer: each person's mesh in its colour."""
        results = list(zip(self.doc.uids(), self.doc.results()))
        if self.selected_only:
            results = [(u, r) for u, r in results if u == self.doc.selected_uid]
        results = [(u, r) for u, r in results if r is not None]
        if not results:
            return [], None, None
        cam = results[0][1].camera
        s = min(self.canvas.width() / cam.image_size[0], self.canvas.height() / cam.image_size[1], 1.0)
        self._focal_px = max(cam.focal[0] * s, 1.0)
        pivot = np.concatenate([r.vertices for _, r in results]).mean(0).astype(np.float64)
        meshes = []
        for u, r in results:
            meshes.append((r.vertices, r.faces, mesh_rgb01(self.doc, u)))
        return meshes, cam, self.view_matrix(pivot)

    def request_render(self) -> None:
        meshes, camera, view = self.scene_meshes()
        if not meshes:
            self.canvas.image = None
            self.canvas.update()
            return
        # Render at the widget's size (same aspect as the frame): fewer pixels than the frame on big videos.
        iw, ih = camera.image_size
        scale = min(self.canvas.width() / iw, self.canvas.height() / ih, 1.0)
        size = (max(int(iw * scale), 32), max(int(ih * scale), 32))
        self.session.overlay.render_view(("meshview", id(self)), meshes, camera, view, size)

    def _on_rendered(self, key: object, rgb: object, secs: float) -> None:
        if key != ("meshview", id(self)) or rgb is None:
            return
        self.last_render_s = secs
        self.canvas.image = rgb_to_qimage(np.asarray(rgb))
        self.canvas.scaled = None
        self.info.setText(f"{secs * 1000:.0f} ms")
        self.canvas.update()
