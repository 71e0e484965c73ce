"""The 3-D view: the frame's persons in metres with the ground, axes and the photo's camera, seen by a free
camera (``api.OrbitCamera``), rendered by ``api.render_scene`` in the 3-D view's render process and shown as
a QImage that fills the widget (any aspect ratio; the GUI thread never waits for a render).

Mouse: left-drag orbits (turntable about the ground's normal, no roll), right- or middle-drag pans, the wheel
zooms, double-click returns to the photo's own camera. Keys (when the view has focus): 1 camera, 2 side
(from +x), 3 top (bird's-eye with a 1 m grid), 0 or R reset. The persons list is the depth order (nearest
first, metres from the photo camera): its check boxes show/hide persons, a click selects one; "Solo selected"
shows only the selected person. On a video the view follows the timeline; Play runs the selected person's
track (or the whole video) at the video's frame rate over the meshes already computed (skipping frames when
the machine cannot keep up); "Trajectory" draws
tracks' paths on the ground. "Save view…" writes the current picture to PNG. While the camera moves (drag, wheel)
or a video plays, the persons are drawn with their reduced face lists (``api.render_scene(lod=True)``, about 1,500
faces each, at the widget's full size); once the camera has been still for ``STILL_MS`` (or the mouse is
released, or playback stops) one full-detail frame follows.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
from PySide6.QtCore import QEvent, QPointF, QSize, Qt, QTimer
from PySide6.QtGui import QColor, QImage, QPainter, QPixmap
from PySide6.QtWidgets import (
    QCheckBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from dpmesh_core import api

from ..palette import person_rgb, person_rgb01
from ..session import Session
from .skeletons import rgb_to_qimage

VIEW_KEYS = {Qt.Key.Key_1: "camera", Qt.Key.Key_2: "side", Qt.Key.Key_3: "top", Qt.Key.Key_0: "reset",
             Qt.Key.Key_R: "reset"}


class MeshCanvas(QWidget):
    """Shows the last rendered frame over the whole widget; turns mouse gestures and keys into view changes."""

    def __init__(self, view: MeshView):
        super().__init__(view)
        self.view = view
        self.image: QImage | None = None
        self._last: QPointF | None = None
        self._button = Qt.MouseButton.NoButton
        self.setMinimumSize(160, 140)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)

    def paintEvent(self, e) -> None:  # noqa: N802 - Qt API
        p = QPainter(self)
        p.fillRect(self.rect(), QColor(28, 30, 34))
        if self.image is not None:
            p.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
            p.drawImage(self.rect(), self.image)  # rendered at this widget's aspect: fills it
        else:
            p.setPen(QColor(170, 170, 170))
            p.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter, self.view.placeholder)
        p.end()

    def event(self, e) -> bool:
        # the view's keys win over the main window's shortcuts while the view has focus
        if e.type() == QEvent.Type.ShortcutOverride and e.key() in VIEW_KEYS and not e.modifiers():
            e.accept()
            return True
        return super().event(e)

    def keyPressEvent(self, e) -> None:  # noqa: N802
        what = VIEW_KEYS.get(e.key())
        if what is None or e.modifiers():
            super().keyPressEvent(e)
        elif what == "reset":
            self.view.reset_view()
        else:
            self.view.set_preset(what)

    def mousePressEvent(self, e) -> None:  # noqa: N802
        self.setFocus()
        self._last, self._button = e.position(), e.button()
        self.view.dragging = True

    def mouseMoveEvent(self, e) -> None:  # noqa: N802
        if self._last is None:
            return
        d = e.position() - self._last
        self._last = e.position()
        if self._button == Qt.MouseButton.LeftButton:
            self.view.orbit(-d.x() * 0.4, -d.y() * 0.4)
        else:
            self.view.pan(d.x(), d.y())

    def mouseReleaseEvent(self, e) -> None:  # noqa: N802
        self._last = None
        self.view.dragging = False
        self.view.settle()  # the full-detail picture

    def mouseDoubleClickEvent(self, e) -> None:  # noqa: N802
        self.view.reset_view()

    def wheelEvent(self, e) -> None:  # noqa: N802
        self.view.zoom(1.0015 ** e.angleDelta().y())

    def resizeEvent(self, e) -> None:  # noqa: N802
        self.view.place_info()
        self.view.schedule()


class MeshView(QWidget):
    """Mesh view dock content: canvas, view buttons and toggles, the depth-ordered persons list, playback."""

    MAX_DEFER_MS = 250
    STILL_MS = 150  # the camera still this long: the full-detail frame
    IN_FLIGHT_MAX_S = 2.0  # a picture not back after this long is given up (its request is made again)

    def __init__(self, session: Session, parent: QWidget | None = None):
        super().__init__(parent)
        self.session = session
        self.doc = session.doc
        self.camera: api.OrbitCamera | None = None
        self.hidden: set[int] = set()  # colour keys (tracks follow across frames) of hidden persons
        self.selected_only = False
        self.dragging = False
        self.moving = False  # the camera moved less than STILL_MS ago: reduced level of detail
        self.last_lod = False  # whether the last requested picture was at the reduced level of detail
        self.placeholder = "No mesh yet: open an image; meshes appear here once estimated."
        self.last_render_s = 0.0
        self.last_rgb: np.ndarray | None = None
        self.depth_rows: list[tuple[int, str, float]] = []
        self._centres: dict[int, tuple] = {}  # id(result) -> (result, its centre) (trajectories)
        self._ground_key: tuple | None = None
        self._ground = None
        self._pending_preset: str | None = None
        self._scene_cache: tuple | None = None  # (key, scene, its meshes): an orbit step builds nothing again
        self._asked_again = False  # a picture was wanted while one was being drawn: ask once it arrives

        self.canvas = MeshCanvas(self)
        self.reset_btn = QPushButton("Reset")
        self.reset_btn.setToolTip("Back to the photo's camera (0 / R, or double-click the view)")
        self.reset_btn.clicked.connect(self.reset_view)
        self.preset_btns = {}
        for name, label, key in (("camera", "Camera", "1"), ("side", "Side", "2"), ("top", "Top", "3")):
            b = QPushButton(label)
            b.setToolTip(f"{label} view ({key})")
            b.clicked.connect(lambda _c=False, n=name: self.set_preset(n))
            self.preset_btns[name] = b
        self.toggles = {}
        for name, label, tip in (("ground", "Ground", "the ground fitted to the persons' feet, 1 m grid"),
                                 ("axes", "Axes", "the photo camera's axes: x red, y green (down), z blue"),
                                 ("frustum", "Camera", "the photo's camera as a frustum, the photo on its far plane"),
                                 ("labels", "Labels", "each person's label and distance"),
                                 ("trajectory", "Trajectory", "the selected track's path on the ground (all "
                                                              "tracks of the frame when none is selected)")):
            box = QCheckBox(label)
            box.setToolTip(tip)
            box.setChecked(name != "trajectory")
            box.toggled.connect(lambda _on: self.schedule())
            self.toggles[name] = box
        self.sel_box = QCheckBox("Solo selected")
        self.sel_box.setToolTip("Show only the selected person")
        self.sel_box.toggled.connect(self._set_selected_only)
        self.play_btn = QPushButton("Play")
        self.play_btn.setToolTip("Play the selected person's track (else the video) at the video's frame rate")
        self.play_btn.setCheckable(True)
        self.play_btn.toggled.connect(self.set_playing)
        self.save_btn = QPushButton("Save view…")
        self.save_btn.clicked.connect(self._save_dialog)
        # the last picture's time, in the canvas's top-right corner (not in a layout: a text that changes with
        # every picture would widen the dock while orbiting, and the main window never gives the room back)
        self.info = QLabel("", self.canvas)
        self.info.setStyleSheet("color: #bbb; background: rgba(0, 0, 0, 110); padding: 1px 4px;")
        self.info.setAttribute(Qt.WidgetAttribute.WA_TransparentForMouseEvents)
        self.persons_list = QListWidget()
        self.persons_list.setToolTip("Depth order: nearest first, metres from the photo camera. Tick to show.")
        self.persons_list.itemChanged.connect(self._item_changed)
        self.persons_list.itemClicked.connect(lambda it: self.doc.select(int(it.data(Qt.ItemDataRole.UserRole))))

        bar1 = QHBoxLayout()
        for w in (self.reset_btn, *self.preset_btns.values(), self.play_btn, self.save_btn):
            bar1.addWidget(w)
        bar1.addStretch(1)
        bar2 = QHBoxLayout()
        for w in (*self.toggles.values(), self.sel_box):
            bar2.addWidget(w)
        bar2.addStretch(1)
        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(self.canvas)
        split.addWidget(self.persons_list)
        split.setStretchFactor(0, 5)
        split.setStretchFactor(1, 1)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(2, 2, 2, 2)
        lay.addWidget(split, 1)
        lay.addLayout(bar1)
        lay.addLayout(bar2)

        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(0)
        self._timer.timeout.connect(self.request_render)
        # New results: the image overlay renders first; the 3-D view follows once no overlay and no estimation
        # is under way (at most MAX_DEFER_MS later), so it never takes the CPU from the next edit's fit.
        self._settle = QTimer(self)
        self._settle.setSingleShot(True)
        self._settle.setInterval(self.MAX_DEFER_MS)
        self._settle.timeout.connect(self.schedule)
        self._still = QTimer(self)
        self._still.setSingleShot(True)
        self._still.setInterval(self.STILL_MS)
        self._still.timeout.connect(self.settle)
        # active while a picture is being drawn; one not back after IN_FLIGHT_MAX_S (a failed render) is given up,
        # and a picture wanted meanwhile is asked for
        self._in_flight = QTimer(self)
        self._in_flight.setSingleShot(True)
        self._in_flight.setInterval(int(self.IN_FLIGHT_MAX_S * 1000))
        self._in_flight.timeout.connect(lambda: self.schedule() if self._asked_again else None)
        self._play = QTimer(self)
        self._play.timeout.connect(self._play_step)
        self._play_range = (0, 0)
        self._play_t0 = (0.0, 0)
        self.doc.results_changed.connect(lambda _f: self.schedule_after_overlay())
        session.overlay.idle.connect(self._overlay_idle)
        self.doc.selection_changed.connect(lambda _u: self.schedule())
        self.doc.frame_changed.connect(lambda _f: self.schedule())
        self.doc.media_changed.connect(self._media_changed)
        session.overlay.view_rendered.connect(self._on_rendered)

    def sizeHint(self) -> QSize:  # noqa: N802
        return QSize(520, 420)

    # view controls ------------------------------------------------------------------
    def _cam(self) -> api.OrbitCamera | None:
        if self.camera is None:
            scene = self.build_scene()
            if scene is None:
                return None
            self.camera = api.OrbitCamera(scene.photo_camera)
            self.camera.set_preset(self._pending_preset or "camera", scene, self.render_size())
            self._pending_preset = None
        return self.camera

    def orbit(self, dyaw: float, dpitch: float) -> None:
        if (cam := self._cam()) is not None:
            cam.orbit(dyaw, dpitch)
            self._moved()

    def pan(self, dx: float, dy: float) -> None:
        if (cam := self._cam()) is not None:
            cam.pan(dx, dy, cam.intrinsics(self.canvas_size()).focal[0])
            self._moved()

    def zoom(self, factor: float) -> None:
        if (cam := self._cam()) is not None:
            cam.zoom(factor)
            self._moved()

    def _moved(self) -> None:
        """The camera moved: reduced-detail frames until it is still for STILL_MS (or the mouse is released)."""
        self.moving = True
        if not self.dragging:
            self._still.start()
        self.schedule()

    def settle(self) -> None:
        """The camera stopped: one full-detail frame."""
        self._still.stop()
        if self.moving:
            self.moving = False
            self.schedule()

    def reset_view(self) -> None:
        self.set_preset("camera")

    def set_preset(self, name: str) -> None:
        """One of ``api.VIEW_PRESETS`` ("camera", "side", "top"), framed on the current scene."""
        scene = self.build_scene()
        if scene is None:
            self.camera, self._pending_preset = None, name
            return
        self.camera = api.OrbitCamera(scene.photo_camera)
        self.camera.set_preset(name, scene, self.canvas_size())
        self.schedule()

    def _media_changed(self) -> None:
        self.set_playing(False)
        self.camera = None
        self._centres.clear()
        self._scene_cache = None
        self._ground_key, self._ground = None, None
        self.schedule()

    def _set_selected_only(self, on: bool) -> None:
        self.selected_only = bool(on)
        self.schedule()

    def set_hidden(self, uid: int, hidden: bool) -> None:
        """Show or hide person ``uid`` (by its colour key: a track stays hidden on every frame)."""
        key = self.doc.color_key(uid)
        (self.hidden.add if hidden else self.hidden.discard)(key)
        self.schedule()

    def _item_changed(self, item: QListWidgetItem) -> None:
        uid = int(item.data(Qt.ItemDataRole.UserRole))
        hidden = item.checkState() != Qt.CheckState.Checked
        if (self.doc.color_key(uid) in self.hidden) != hidden:
            self.set_hidden(uid, hidden)

    # playback -------------------------------------------------------------------------
    def set_playing(self, on: bool) -> None:
        """Play the selected person's track range (or the whole video) at the video's frame rate, looping."""
        if on and self.doc.num_frames > 1:
            frames = None
            p = self.doc.person(self.doc.selected_uid) if self.doc.selected_uid >= 0 else None
            if p is not None and p.track_id is not None:
                frames = self.doc.tracks().get(int(p.track_id))
            frames = frames or list(range(self.doc.num_frames))
            self._play_range = (min(frames), max(frames))
            if not self._play_range[0] <= self.doc.current_frame < self._play_range[1]:
                self.doc.set_current_frame(self._play_range[0])
            self._play_t0 = (time.perf_counter(), self.doc.current_frame)
            self._play.start(max(int(round(1000 / max(self.doc.fps, 1e-3))), 1))
            self.session.frames.set_playing(True)
        else:
            was = self._play.isActive()
            self._play.stop()
            if was:
                self.session.frames.set_playing(False)
            if was:
                self.schedule()  # the full-detail frame of where playback stopped
        if self.play_btn.isChecked() != self._play.isActive():
            self.play_btn.blockSignals(True)
            self.play_btn.setChecked(self._play.isActive())
            self.play_btn.blockSignals(False)

    def _play_step(self) -> None:
        """The frame due now at the video's frame rate (frames are skipped when a step falls behind); only
        frames already decoded off the GUI thread are shown (``session.frames``), except the loop's first."""
        lo, hi = self._play_range
        t0, f0 = self._play_t0
        f = f0 + int((time.perf_counter() - t0) * self.doc.fps)
        if f > hi:  # loop
            self._play_t0 = (time.perf_counter(), lo)
            self.doc.set_current_frame(lo)
            return
        cur = self.doc.current_frame
        if f <= cur:
            return
        frames = self.session.frames
        frames.play_clock(f)
        show = next((g for g in range(f, cur, -1) if frames.decoded(g)), None)
        if show is not None:
            self.doc.set_current_frame(show)

    # scheduling ------------------------------------------------------------------------
    def schedule(self) -> None:
        self._settle.stop()
        # not restarted when already pending: playback's frame timer (due again after every slow frame change)
        # would otherwise push this zero-delay timer back for ever, and no picture would be asked for
        if (self.isVisible() or self.canvas.isVisible()) and not self._timer.isActive():
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

    # the scene -------------------------------------------------------------------------
    def canvas_size(self) -> tuple[int, int]:
        return max(self.canvas.width(), 32), max(self.canvas.height(), 32)

    def render_size(self) -> tuple[int, int]:
        """The picture's size: the widget's, moving or not (moving lowers the detail, not the resolution)."""
        return self.canvas_size()

    def lod(self) -> bool:
        """Whether the next picture draws the persons at their reduced level of detail (moving, dragging or
        playing)."""
        return self.moving or self.dragging or self._play.isActive()

    def _trajectories(self, uids: list[int]) -> tuple:
        if not self.toggles["trajectory"].isChecked() or not self.doc.is_video:
            return ()
        tracks = {self.doc.person(u).track_id for u in uids if self.doc.person(u) is not None}
        sel = self.doc.person(self.doc.selected_uid) if self.doc.selected_uid >= 0 else None
        if sel is not None and sel.track_id is not None:
            tracks = {sel.track_id}
        out = []
        for t in sorted(x for x in tracks if x is not None):
            pts, cur = [], -1
            for f, u in self.doc.track_members(int(t)).items():
                r = self.doc.result(u)
                if r is None:
                    continue
                kept = self._centres.get(id(r))
                if kept is None or kept[0] is not r:
                    v = np.asarray(r.vertices, np.float64)
                    kept = self._centres[id(r)] = (r, (v.min(0) + v.max(0)) / 2)  # r kept: its id stays its own
                c = kept[1]
                if f == self.doc.current_frame:
                    cur = len(pts)
                pts.append(c)
            if len(pts) >= 2:
                out.append((np.array(pts), person_rgb01(int(t) + 1), cur))
        return tuple(out)

    def build_scene(self) -> api.Scene | None:
        """The ``api.Scene`` of the current frame (None without any mesh), with show/hide/solo applied."""
        uids = self.doc.uids()
        results = [self.doc.result(u) for u in uids]
        have = [(u, r) for u, r in zip(uids, results) if r is not None]
        if not have:
            self.depth_rows = []
            return None
        key = tuple(id(r) for _, r in have)
        t = self.toggles
        scene_key = (key, frozenset(self.hidden), self.selected_only, self.doc.selected_uid, self.doc.current_frame,
                     tuple(b.isChecked() for b in t.values()), id(self.doc.image()))
        if self._scene_cache is not None and self._scene_cache[0] == scene_key:  # orbiting: same scene
            return self._scene_cache[1]
        if key != self._ground_key and not (self._ground is not None and self.session.frames.playing):
            # (while the video plays, the ground fitted before Play stays: a refit per frame costs the GUI
            # thread ~50 ms and only makes a static camera's ground jitter)
            self._ground_key, self._ground = key, api.fit_ground([r for _, r in have])
        all_persons = api.scene_persons([r for _, r in have], [person_rgb01(self.doc.color_key(u)) for u, _ in have],
                                        [self.doc.label(u) for u, _ in have], [u for u, _ in have],
                                        selected=self.doc.selected_uid)
        self.depth_rows = api.depth_order(all_persons)
        shown = [p for p in all_persons if self.doc.color_key(p.key) not in self.hidden
                 and (not self.selected_only or p.key == self.doc.selected_uid)]
        img = self.doc.image()
        scene = api.Scene(tuple(shown), have[0][1].camera, self._ground,
                          None if img is None else api.thumbnail(img), self._trajectories(uids),
                          show_ground=t["ground"].isChecked(), show_axes=t["axes"].isChecked(),
                          show_frustum=t["frustum"].isChecked(), show_labels=t["labels"].isChecked())
        self._scene_cache = (scene_key, scene, api.scene_meshes(scene))
        return scene

    def _update_list(self) -> None:
        lst = self.persons_list
        lst.blockSignals(True)
        lst.clear()
        for uid, label, dist in self.depth_rows:
            r = self.doc.result(uid)
            low = r is not None and r.quality is not None and r.quality.low_confidence
            item = QListWidgetItem(f"{label}  {dist:.1f} m" + ("  (low confidence)" if low else ""))
            pm = QPixmap(12, 12)
            pm.fill(QColor(*person_rgb(self.doc.color_key(uid))))
            item.setIcon(pm)
            item.setData(Qt.ItemDataRole.UserRole, uid)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            item.setCheckState(Qt.CheckState.Unchecked if self.doc.color_key(uid) in self.hidden
                               else Qt.CheckState.Checked)
            lst.addItem(item)
            if uid == self.doc.selected_uid:
                item.setSelected(True)
        lst.blockSignals(False)

    # rendering ------------------------------------------------------------------------
    def request_render(self) -> None:
        """Ask for a picture of the current scene and camera; while one is being drawn, only note that another
        is wanted: it is asked for when that one arrives (``_on_rendered``), from the scene and camera of that
        moment. During Play the frame changes 25-50 times a second while a picture takes longer, and building
        each frame's scene (~10 ms of the GUI thread) for a request a later one replaces would be wasted."""
        if self._in_flight.isActive():
            self._asked_again = True
            return
        self._asked_again = False
        scene = self.build_scene()
        self._update_list()
        if scene is None:
            self.canvas.image = None
            self.canvas.update()
            return
        cam = self._cam()
        if cam is None:
            return
        if scene.ground is not None:
            cam.up = np.asarray(scene.ground.normal, np.float64)
        size = self.render_size()
        vc = cam.view_camera(size, scene)
        meshes = self._scene_cache[2] if self._scene_cache and self._scene_cache[1] is scene else api.scene_meshes(scene)
        light = dataclasses.replace(scene, persons=tuple(dataclasses.replace(p, vertices=None, faces=None)
                                                         for p in scene.persons))
        self.last_lod = self.lod()
        self.session.overlay.render_view(("meshview", id(self)), meshes, vc.camera, vc.view, size,
                                         scene=light, clip=(vc.near, vc.far), lod=self.last_lod)
        self._in_flight.start()

    def _on_rendered(self, key: object, rgb: object, secs: float) -> None:
        if key != ("meshview", id(self)):
            return
        self._in_flight.stop()
        if self._asked_again:
            self.schedule()
        if rgb is None:
            return
        self.last_render_s = secs
        self.last_rgb = np.asarray(rgb)
        self.canvas.image = rgb_to_qimage(self.last_rgb)
        self.info.setText(f"{secs * 1000:.0f} ms" + (" (moving: reduced detail)" if self.last_lod else ""))
        self.place_info()
        self.canvas.update()

    def place_info(self) -> None:
        """The frame-time label at the canvas's top-right corner, sized to its text."""
        self.info.adjustSize()
        self.info.move(max(self.canvas.width() - self.info.width() - 4, 0), 4)

    def save_view(self, path: str | Path) -> Path:
        """Write the current picture (the last full render) to ``path`` (PNG)."""
        if self.last_rgb is None:
            raise ValueError("nothing rendered yet")
        return api.write_image(Path(path), self.last_rgb)

    def _save_dialog(self) -> None:
        if self.last_rgb is None:
            return
        path, _ = QFileDialog.getSaveFileName(self, "Save view", "view.png", "PNG images (*.png)")
        if path:
            try:
                self.save_view(path if path.lower().endswith(".png") else path + ".png")
            except (OSError, ValueError) as e:
                self.info.setText(f"Could not save: {e}")
                self.place_info()
