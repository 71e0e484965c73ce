"""The image view: the frame, persons' skeletons and key-point editing, with the mesh overlay on top.

A ``QGraphicsView`` (zoom with the wheel about the cursor, pan by dragging empty space or with the
middle button). Skeletons are coloured per person; a joint's size and opacity follow its confidence;
occluded joints are hollow with a cross and their limbs dashed; joints the user edited carry a white ring.

Edit modes: ``edit`` (click to select, drag a joint to move it), ``add_joint`` (click to place the joint
chosen in ``joint_to_add`` on the selected person), ``box`` (draw a box: a person is detected inside it),
``place`` (click joint after joint to build a new person). The view never mutates the Document directly:
it calls the Document's ``edit_*`` methods, which push undoable commands.
"""

from __future__ import annotations

import itertools

import numpy as np
from PySide6.QtCore import QPointF, QRectF, Qt, Signal
from PySide6.QtGui import QColor, QPainter, QPen, QPixmap
from PySide6.QtWidgets import (
    QGraphicsPixmapItem,
    QGraphicsRectItem,
    QGraphicsScene,
    QGraphicsView,
    QMenu,
    QWidget,
)

from dpmesh_core.types import Person

from ..document import Document
from ..editor import Editor
from .skeletons import JointTables, PersonsItem, rgb_to_qimage


class ImageView(QGraphicsView):
    """Frame + skeletons + mesh overlay, with key-point editing (see the module docstring).

    Signals: box_drawn(x0, y0, x1, y1) in image pixels (``box`` mode); mode_changed(str);
    status_message(str); hover_changed(str).
    """

    box_drawn = Signal(float, float, float, float)
    mode_changed = Signal(str)
    status_message = Signal(str)

    HIT_RADIUS = 12.0  # screen pixels

    def __init__(self, doc: Document, parent: QWidget | None = None):
        super().__init__(parent)
        self.doc = doc
        self.setScene(QGraphicsScene(self))
        self.setRenderHints(QPainter.RenderHint.Antialiasing | QPainter.RenderHint.SmoothPixmapTransform)
        self.setTransformationAnchor(QGraphicsView.ViewportAnchor.AnchorUnderMouse)
        self.setResizeAnchor(QGraphicsView.ViewportAnchor.AnchorViewCenter)
        self.setViewportUpdateMode(QGraphicsView.ViewportUpdateMode.FullViewportUpdate)
        self.setBackgroundBrush(QColor(38, 38, 42))
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setMouseTracking(True)
        self.setAcceptDrops(False)  # the main window takes file drops
        self.image_item = QGraphicsPixmapItem()
        self.image_item.setTransformationMode(Qt.TransformationMode.SmoothTransformation)
        self.overlay_item = QGraphicsPixmapItem()
        self.overlay_item.setZValue(5)
        self.persons_item = PersonsItem(self)
        self.rubber = QGraphicsRectItem()
        self.rubber.setPen(QPen(QColor(255, 255, 255), 0, Qt.PenStyle.DashLine))
        self.rubber.setBrush(QColor(255, 255, 255, 30))
        self.rubber.setZValue(20)
        self.rubber.hide()
        for it in (self.image_item, self.overlay_item, self.persons_item, self.rubber):
            self.scene().addItem(it)
        self.mode = "edit"
        self.joint_to_add = 0
        self.overlay_enabled = True
        self.skeleton_enabled = True
        self._drag: tuple[int, int] | None = None
        self._drag_ids = itertools.count(1)
        self._drag_id = 0
        self._pan_from: QPointF | None = None
        self._box_from: QPointF | None = None
        self._place_uid = -1
        self._place_next = 0
        self._image_size: tuple[int, int] | None = None
        self._painted: dict[int, tuple[Person, tuple]] | None = None  # what the persons layer shows
        self._painted_sel = -1
        self._preview_rect: QRectF | None = None
        doc.persons_changed.connect(self._on_persons_changed)
        doc.selection_changed.connect(lambda _u: self._update_changed_persons())
        doc.joint_selection_changed.connect(lambda _j: self._update_person(self.doc.selected_uid))
        doc.results_changed.connect(lambda f: self._on_persons_changed(f))
        doc.frame_changed.connect(self._on_frame_changed)
        doc.media_changed.connect(self._on_media_changed)
        self.refresh_image()

    # ------------------------------------------------------------------ display
    def _on_media_changed(self) -> None:
        self._image_size = None
        self.set_overlay(None)
        self.refresh_image()
        self.fit()

    def _on_frame_changed(self, _frame: int) -> None:
        # The overlay shown belongs to the previous frame: never leave its meshes over this frame's people
        # (they floated beside the skeletons while the new frame's overlay was still being rendered).
        self.set_overlay(None)
        self.refresh_image()

    def _on_persons_changed(self, frame: int) -> None:
        if frame == self.doc.current_frame:
            self._update_changed_persons()

    def _snapshot(self) -> dict[int, tuple[Person, tuple]]:
        doc = self.doc
        return {u: (p, (bool(doc.result_error(u)), doc.low_confidence(u) is not None))
                for u, p in zip(doc.uids(), doc.persons())}

    def _repaint_all_persons(self) -> None:
        self._painted, self._painted_sel = self._snapshot(), self.doc.selected_uid
        self.persons_item.update()

    def _update_person(self, uid: int) -> None:
        p = self.doc.person(uid)
        if p is not None:
            self.persons_item.update(self.persons_item.person_rect(p, uid))

    def _update_changed_persons(self) -> None:
        """Repaint only the persons whose Person object, error or low-confidence mark or selection changed
        since the last call (results arriving change nothing else visible here)."""
        doc = self.doc
        now = self._snapshot()
        before, self._painted = self._painted, now
        sel_before, self._painted_sel = self._painted_sel, doc.selected_uid
        if before is None:
            self.persons_item.update()
            return
        changed = {u for u in now.keys() | before.keys()
                   if u not in now or u not in before or now[u][0] is not before[u][0] or now[u][1] != before[u][1]}
        if sel_before != doc.selected_uid:
            changed |= {sel_before, doc.selected_uid}
        item = self.persons_item
        for u in changed:
            for state in (before.get(u), now.get(u)):
                if state is not None:
                    item.update(item.person_rect(state[0], u))

    def refresh_image(self) -> None:
        img = self.doc.image()
        if img is None:
            self.image_item.setPixmap(QPixmap())
            return
        self.image_item.setPixmap(QPixmap.fromImage(rgb_to_qimage(img)))
        h, w = img.shape[:2]
        rect = QRectF(0, 0, w, h)
        self.persons_item.set_rect(rect)
        self.scene().setSceneRect(rect.adjusted(-w, -h, w, h))
        first = self._image_size is None
        self._image_size = (w, h)
        if first:
            self.fit()
        self._repaint_all_persons()

    def set_overlay(self, rgb: np.ndarray | None) -> None:
        """Show an RGB image (the meshes drawn over the frame) above the frame, or nothing."""
        if rgb is None:
            self.overlay_item.setPixmap(QPixmap())
        else:
            self.overlay_item.setPixmap(QPixmap.fromImage(rgb_to_qimage(rgb)))
        self.overlay_item.setVisible(self.overlay_enabled)

    def set_overlay_enabled(self, on: bool) -> None:
        self.overlay_enabled = bool(on)
        self.overlay_item.setVisible(self.overlay_enabled)

    def set_playing(self, on: bool) -> None:
        """A video is playing (``on``): skeletons are painted fast (see ``PersonsItem.fast``); stopped: the
        frame's skeletons are painted again, antialiased."""
        if bool(on) != self.persons_item.fast:
            self.persons_item.fast = bool(on)
            self.persons_item.update()

    def set_skeleton_enabled(self, on: bool) -> None:
        self.skeleton_enabled = bool(on)
        self.persons_item.setVisible(self.skeleton_enabled)

    def fit(self) -> None:
        if self._image_size is not None:
            w, h = self._image_size
            self.fitInView(QRectF(0, 0, w, h), Qt.AspectRatioMode.KeepAspectRatio)

    def zoom(self, factor: float) -> None:
        s = self.transform().m11() * factor
        if 0.02 < s < 80:
            self.scale(factor, factor)

    def wheelEvent(self, e) -> None:  # noqa: N802 - Qt API
        self.zoom(1.0015 ** e.angleDelta().y())

    # ------------------------------------------------------------------ modes
    def set_mode(self, mode: str) -> None:
        if mode not in ("edit", "add_joint", "box", "place"):
            raise ValueError(mode)
        self.mode = mode
        self._place_uid, self._place_next = -1, 0
        self.rubber.hide()
        self.viewport().setCursor(Qt.CursorShape.ArrowCursor if mode == "edit" else Qt.CursorShape.CrossCursor)
        hints = {
            "edit": "Edit: click a person or joint, drag joints; wheel zooms, drag empty space pans.",
            "add_joint": "Add key-point: click where the chosen joint is (on the selected person). Esc ends.",
            "box": "Add person: drag a box around the person; key-points are detected inside it. Esc ends.",
            "place": "Add person by joints: click each joint in order (N skips one, Esc/right-click ends).",
        }
        self.status_message.emit(hints[mode] + (self._place_hint() if mode == "place" else ""))
        self.mode_changed.emit(mode)

    def _place_hint(self) -> str:
        names, _ = JointTables.get("coco17")
        if self._place_next < len(names):
            return f"  Next: {names[self._place_next]}"
        return "  All joints placed."

    def skip_place_joint(self) -> None:
        if self.mode == "place":
            self._place_next += 1
            self._after_place()

    def _after_place(self) -> None:
        names, _ = JointTables.get("coco17")
        if self._place_next >= len(names):
            self.set_mode("edit")
        else:
            self.status_message.emit("Placing joints." + self._place_hint())

    # ------------------------------------------------------------------ hit testing
    def hit_joint(self, scene_pos: QPointF) -> tuple[int, int] | None:
        """(uid, joint) of the joint under ``scene_pos`` (selected person first), or None."""
        scale = max(self.transform().m11(), 1e-6)
        r = self.HIT_RADIUS / scale
        best, best_d = None, r
        sel = self.doc.selected_uid
        for uid, p in sorted(zip(self.doc.uids(), self.doc.persons()), key=lambda t: t[0] != sel):
            kp = p.keypoints
            ok = (kp[:, 2] > 0) & np.isfinite(kp).all(1)
            if not ok.any():
                continue
            d = np.hypot(kp[:, 0] - scene_pos.x(), kp[:, 1] - scene_pos.y())
            d[~ok] = np.inf
            j = int(np.argmin(d))
            if d[j] < best_d - (0.5 / scale if uid != sel else 0):
                best, best_d = (uid, j), float(d[j])
            if best is not None and best[0] == sel:
                break  # the selected person wins ties
        return best

    def hit_person(self, scene_pos: QPointF) -> int:
        """uid of the smallest box containing ``scene_pos``, or -1."""
        x, y = scene_pos.x(), scene_pos.y()
        best, area = -1, np.inf
        for uid, p in zip(self.doc.uids(), self.doc.persons()):
            b = p.box
            if b[0] <= x <= b[2] and b[1] <= y <= b[3]:
                a = float((b[2] - b[0]) * (b[3] - b[1]))
                if a < area:
                    best, area = uid, a
        return best

    # ------------------------------------------------------------------ mouse
    def mousePressEvent(self, e) -> None:  # noqa: N802 - Qt API
        pos = self.mapToScene(e.position().toPoint())
        if e.button() == Qt.MouseButton.MiddleButton:
            self._pan_from = e.position()
            return
        if e.button() == Qt.MouseButton.RightButton:
            if self.mode == "place":
                self.set_mode("edit")
                return
            self._context_menu(e, pos)
            return
        if e.button() != Qt.MouseButton.LeftButton:
            return
        if self._image_size is None:
            return
        if self.mode == "edit":
            hit = self.hit_joint(pos)
            if hit is not None:
                uid, j = hit
                self.doc.select(uid)
                self.doc.select_joint(j)
                self._drag = hit
                self._drag_id = next(self._drag_ids)
                self.persons_item.drag_preview = (uid, j, pos)
                return
            uid = self.hit_person(pos)
            self.doc.select(uid)
            self.doc.select_joint(-1)
            self._pan_from = e.position()
            self.viewport().setCursor(Qt.CursorShape.ClosedHandCursor)
        elif self.mode == "add_joint":
            uid = self.doc.selected_uid
            if uid == -1:
                self.status_message.emit("Select a person first (click it or pick it in the list).")
                return
            Editor(self.doc).add_keypoint(uid, self.joint_to_add, (pos.x(), pos.y()))
            self.doc.select_joint(self.joint_to_add)
            self.status_message.emit(f"Added key-point {self.joint_to_add}. Pick another joint or press Esc.")
        elif self.mode == "box":
            self._box_from = pos
            self.rubber.setRect(QRectF(pos, pos))
            self.rubber.show()
        elif self.mode == "place":
            self._place_click(pos)

    def _place_click(self, pos: QPointF) -> None:
        j = self._place_next
        if self._place_uid == -1 or self.doc.person(self._place_uid) is None:
            n = len(JointTables.get("coco17")[0]) or 17
            kp = np.zeros((n, 3), np.float32)
            kp[j] = (pos.x(), pos.y(), 1.0)
            ed = np.zeros(n, bool)
            ed[j] = True
            box = np.array([pos.x() - 20, pos.y() - 20, pos.x() + 20, pos.y() + 20], np.float32)
            p = Person(box=box, keypoints=kp, visible=kp[:, 2] > 0, source="user", edited=ed, score=1.0)
            self._place_uid = Editor(self.doc).add_person(p)
        else:
            p = self.doc.person(self._place_uid)
            p2 = Document.with_joint(p, j, xy=(pos.x(), pos.y()), conf=1.0, visible=True)
            try:
                box = Person.box_from_keypoints(p2.keypoints, p2.visible, pad=1.2)
            except ValueError:
                box = p2.box
            import dataclasses

            Editor(self.doc).replace_person(self._place_uid, dataclasses.replace(p2, box=box), f"Place key-point {j}")
        self.doc.select_joint(j)
        self._place_next += 1
        self._after_place()

    def mouseMoveEvent(self, e) -> None:  # noqa: N802 - Qt API
        pos = self.mapToScene(e.position().toPoint())
        if self._pan_from is not None:
            d = e.position() - self._pan_from
            self._pan_from = e.position()
            self.horizontalScrollBar().setValue(int(self.horizontalScrollBar().value() - d.x()))
            self.verticalScrollBar().setValue(int(self.verticalScrollBar().value() - d.y()))
            return
        if self._drag is not None:
            self.persons_item.drag_preview = (self._drag[0], self._drag[1], pos)
            p = self.doc.person(self._drag[0])
            if p is not None:
                rect = self.persons_item.person_rect(p, self._drag[0])
                self.persons_item.update(rect if self._preview_rect is None else rect.united(self._preview_rect))
                self._preview_rect = rect
            return
        if self._box_from is not None:
            self.rubber.setRect(QRectF(self._box_from, pos).normalized())
            return
        if self.mode == "edit":
            hit = self.hit_joint(pos)
            self.viewport().setCursor(Qt.CursorShape.PointingHandCursor if hit else Qt.CursorShape.ArrowCursor)
            if hit is not None:
                p = self.doc.person(hit[0])
                names, _ = JointTables.get(p.joint_set if p else "coco17")
                name = names[hit[1]] if hit[1] < len(names) else str(hit[1])
                kp = p.keypoints[hit[1]]
                state = "visible" if p.visible[hit[1]] else "occluded"
                interp = self.doc.interpolated.get(hit[0])
                src = "edited" if p.edited[hit[1]] else (
                    "interpolated" if interp is not None and interp[hit[1]] else p.source)
                self.status_message.emit(f"Person {self.doc.label(hit[0])} · {name}: "
                                         f"({kp[0]:.0f}, {kp[1]:.0f}) conf {kp[2]:.2f}, {state}, {src}")

    def mouseReleaseEvent(self, e) -> None:  # noqa: N802 - Qt API
        pos = self.mapToScene(e.position().toPoint())
        if self._pan_from is not None:
            self._pan_from = None
            self.viewport().setCursor(Qt.CursorShape.ArrowCursor if self.mode == "edit" else Qt.CursorShape.CrossCursor)
            return
        if self._drag is not None:
            uid, j = self._drag
            self._drag = None
            self.persons_item.drag_preview = None
            p = self.doc.person(uid)
            if p is not None and (abs(p.keypoints[j, 0] - pos.x()) > 1e-3 or abs(p.keypoints[j, 1] - pos.y()) > 1e-3):
                Editor(self.doc).move_keypoint(uid, j, (pos.x(), pos.y()), drag_id=self._drag_id)
            if self._preview_rect is not None:
                self.persons_item.update(self._preview_rect)
                self._preview_rect = None
            self._update_person(uid)
            return
        if self._box_from is not None:
            r = QRectF(self._box_from, pos).normalized()
            self._box_from = None
            self.rubber.hide()
            if r.width() > 8 and r.height() > 8:
                self.box_drawn.emit(r.left(), r.top(), r.right(), r.bottom())
            else:
                self.status_message.emit("Box too small: drag a box around the whole person.")

    def _context_menu(self, e, pos: QPointF) -> None:
        hit = self.hit_joint(pos)
        uid = hit[0] if hit else self.hit_person(pos)
        if uid == -1:
            return
        self.doc.select(uid)
        menu = QMenu(self)
        if hit is not None:
            self.doc.select_joint(hit[1])
            p = self.doc.person(uid)
            label = "Mark visible" if not p.visible[hit[1]] else "Mark occluded"
            menu.addAction(label + "\tO", lambda: Editor(self.doc).toggle_visibility(uid, hit[1]))
            menu.addAction("Delete key-point\tDel", lambda: Editor(self.doc).delete_keypoint(uid, hit[1]))
            menu.addSeparator()
        menu.addAction("Remove person\tShift+Del", lambda: Editor(self.doc).remove_person(uid))
        menu.exec(e.globalPosition().toPoint())
