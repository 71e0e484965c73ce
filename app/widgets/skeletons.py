"""How persons are drawn on the image: the skeleton item of the image view (boxes, labels, limbs, joints
with confidence, occlusion, user edits and interpolation marks), per-person colours and the RGB → QImage
conversion shared by the views."""

from __future__ import annotations

from typing import Any

import numpy as np
from PySide6.QtCore import QLineF, QPointF, QRectF, Qt
from PySide6.QtGui import QBrush, QColor, QImage, QPainter, QPen, QPixmap
from PySide6.QtWidgets import QGraphicsItem, QStyleOptionGraphicsItem, QWidget

from dpmesh_core.types import Person

from ..palette import person_rgb


def person_color(uid: int) -> QColor:
    return QColor(*person_rgb(uid))


def rgb_to_qimage(rgb: np.ndarray) -> QImage:
    """RGB uint8 (H, W, 3) → QImage (a deep copy, so the array may be freed)."""
    a = np.ascontiguousarray(rgb[..., :3], dtype=np.uint8)
    h, w = a.shape[:2]
    return QImage(a.data, w, h, 3 * w, QImage.Format.Format_RGB888).copy()


class JointTables:
    """Joint names and limbs per joint set, from ``dpmesh_core.api`` (``dpmesh_core.body.joints``: numpy only,
    no torch, so the GUI process reads them directly), memoised per set."""

    _cache: dict[str, tuple[tuple[str, ...], list[tuple[int, int]]]] = {}

    @classmethod
    def get(cls, joint_set: str) -> tuple[tuple[str, ...], list[tuple[int, int]]]:
        hit = cls._cache.get(joint_set)
        if hit is None:
            from dpmesh_core import api

            try:
                hit = (tuple(api.joint_names(joint_set)), [(int(a), int(b)) for a, b in api.skeleton(joint_set)])
            except KeyError:  # an unknown set: joints without names or limbs
                hit = ((), [])
            cls._cache[joint_set] = hit
        return hit


class PersonsItem(QGraphicsItem):
    """Paints every person of the current frame (one item, so a redraw is one pass)."""

    def __init__(self, view: Any):  # the ImageView: its doc and transform (no import: views import this)
        super().__init__()
        self.view = view
        self.rect = QRectF(0, 0, 1, 1)
        self.drag_preview: tuple[int, int, QPointF] | None = None  # (uid, joint, pos) while dragging
        self._pixmaps: dict[int, tuple] = {}  # uid -> (key, scene rect, pixmap, person): see _person_pixmap
        self.use_pixmaps = True
        # while a video plays: every frame brings new persons, so no pixmap is ever reused, and antialiased
        # skeletons (~8 ms a person in Qt's raster engine) held Play of 10 persons to ~13 frames/s; they are
        # painted directly without antialiasing then, and antialiased again once Play stops
        self.fast = False
        self.setZValue(10)
        # Painted again only on update() (edits, selection, results), not on every viewport repaint: each
        # Python→Qt call of paint() may wait for the GIL while the worker computes.
        self.setCacheMode(QGraphicsItem.CacheMode.DeviceCoordinateCache)
        # update(rect) then repaints only the persons inside ``rect`` (option.exposedRect): an edit redraws
        # one skeleton, not all of them (antialiased wide lines cost ~30 µs each in the raster engine).
        self.setFlag(QGraphicsItem.GraphicsItemFlag.ItemUsesExtendedStyleOption, True)

    def set_rect(self, rect: QRectF) -> None:
        self.prepareGeometryChange()
        self.rect = rect

    def boundingRect(self) -> QRectF:  # noqa: N802 - Qt API
        return self.rect.adjusted(-2000, -2000, 2000, 2000)

    def person_rect(self, p: Person, uid: int | None = None) -> QRectF:
        """Scene rect that holds everything painted for ``p`` (box, label, joints incl. a dragged one)."""
        kp = np.asarray(p.keypoints, np.float64)
        ok = (kp[:, 2] > 0) & np.isfinite(kp).all(1)
        xs = [float(p.box[0]), float(p.box[2])] + [float(x) for x in kp[ok, 0]]
        ys = [float(p.box[1]), float(p.box[3])] + [float(y) for y in kp[ok, 1]]
        if self.drag_preview is not None and self.drag_preview[0] == uid:
            xs.append(self.drag_preview[2].x())
            ys.append(self.drag_preview[2].y())
        m = 48.0 / max(self.view.transform().m11(), 1e-6)  # label, rings and pens: ~48 screen pixels
        return QRectF(min(xs) - m, min(ys) - m, max(xs) - min(xs) + 2 * m, max(ys) - min(ys) + 2 * m)

    def paint(self, painter: QPainter, option: QStyleOptionGraphicsItem, widget: QWidget | None = None) -> None:
        doc = self.view.doc
        scale = max(painter.worldTransform().m11(), 1e-6)
        px = 1.0 / scale  # one screen pixel in scene units
        painter.setRenderHint(QPainter.RenderHint.Antialiasing, not self.fast)
        sel = doc.selected_uid
        exposed = option.exposedRect
        order = sorted(zip(doc.uids(), doc.persons()), key=lambda t: t[0] == sel)  # selected on top
        kept: dict[int, tuple] = {}
        for uid, person in order:
            rect = self.person_rect(person, uid)
            if exposed.isValid() and not exposed.intersects(rect):
                continue  # a partial update: this person's pixels are still in the cache
            if self.fast or not self.use_pixmaps or (self.drag_preview is not None and self.drag_preview[0] == uid):
                self._paint_person(painter, uid, person, px, uid == sel)  # (a drag: changes every mouse move)
                continue
            kept[uid] = self._person_pixmap(painter, uid, person, rect, px, uid == sel)
            painter.drawPixmap(kept[uid][1], kept[uid][2], QRectF(kept[uid][2].rect()))
        live = set(doc.uids())
        self._pixmaps = {**{u: v for u, v in self._pixmaps.items() if u in live}, **kept}

    def _person_pixmap(self, painter: QPainter, uid: int, p: Person, rect: QRectF, px: float,
                       selected: bool) -> tuple:
        """(key, scene rect, pixmap) of one person's drawing at the painter's scale: kept while the person,
        its marks and the zoom are the same, so repainting around an edited person draws its neighbours from
        their pixmaps (antialiased skeletons cost ~8 ms a person in Qt's raster engine)."""
        doc = self.view.doc
        interp = doc.interpolated.get(uid)
        # the pixmap's corner on a whole device pixel (drawn 1:1, no resampling): the same pixels as painting
        # directly
        world = painter.worldTransform()
        corner = world.map(rect.topLeft())
        snapped = QPointF(np.floor(corner.x()), np.floor(corner.y()))
        origin = world.inverted()[0].map(snapped)
        rect = QRectF(origin.x(), origin.y(), rect.width() + 2 * px, rect.height() + 2 * px)
        key = (selected, doc.selected_joint if selected else -1, doc.color_key(uid), doc.label(uid),
               bool(doc.result_error(uid)), doc.low_confidence(uid) is not None,
               None if interp is None else tuple(np.asarray(interp, bool)), round(px, 9),
               round(rect.x(), 6), round(rect.y(), 6), round(rect.width(), 6), round(rect.height(), 6))
        hit = self._pixmaps.get(uid)
        if hit is not None and hit[0] == key and hit[3] is p:
            return hit
        dpr = painter.device().devicePixelRatioF() if painter.device() is not None else 1.0
        scale = dpr / px  # pixmap pixels per scene unit (the screen's, HiDPI included)
        pm = QPixmap(max(int(np.ceil(rect.width() * scale)), 1), max(int(np.ceil(rect.height() * scale)), 1))
        pm.fill(Qt.GlobalColor.transparent)
        q = QPainter(pm)
        q.setRenderHint(QPainter.RenderHint.Antialiasing, True)
        q.setFont(painter.font())
        q.scale(scale, scale)
        q.translate(-rect.x(), -rect.y())
        self._paint_person(q, uid, p, px, selected)
        q.end()
        target = QRectF(rect.x(), rect.y(), pm.width() / scale, pm.height() / scale)
        return (key, target, pm, p)

    def _paint_person(self, painter: QPainter, uid: int, p: Person, px: float, selected: bool) -> None:
        doc = self.view.doc
        color = person_color(doc.color_key(uid))  # a track keeps its colour from frame to frame
        guess = doc.low_confidence(uid) is not None  # its mesh is a guess: drawn faint and dashed
        if guess:
            color.setAlpha(140)
        interp = doc.interpolated.get(uid)
        kp = np.array(p.keypoints, np.float64)
        if self.drag_preview is not None and self.drag_preview[0] == uid:
            _, j, pos = self.drag_preview
            kp[j, :2] = (pos.x(), pos.y())
        present = (kp[:, 2] > 0) & np.isfinite(kp).all(1)
        if self.drag_preview is not None and self.drag_preview[0] == uid:
            present[self.drag_preview[1]] = True
        vis = np.array(p.visible, bool)
        # box
        b = p.box
        pen = QPen(color, (2.0 if selected else 1.0) * px,
                   Qt.PenStyle.DashLine if selected or guess else Qt.PenStyle.DotLine)
        painter.setPen(pen)
        painter.setBrush(Qt.BrushStyle.NoBrush)
        painter.drawRect(QRectF(float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])))
        label = doc.label(uid) + (" ✎" if p.source == "user" or p.edited.any() else "") + (" ?" if guess else "")
        if doc.result_error(uid):
            label += " ⚠"
        painter.setPen(QPen(color))
        f = painter.font()
        f.setPointSizeF(max(9.0 * px, 0.5))
        f.setBold(selected)
        painter.setFont(f)
        painter.drawText(QPointF(float(b[0]) + 3 * px, float(b[1]) - 4 * px), label)
        # limbs
        _, limbs = JointTables.get(p.joint_set)
        # Sizes in screen pixels, shrunk for people that appear small so their skeleton stays readable.
        box_h_screen = float(b[3] - b[1]) / px
        size = float(np.clip(box_h_screen / 90.0, 0.45, 1.0))
        width = (3.0 if selected else 2.0) * px * max(size, 0.6)
        drawn = [(i, j) for i, j in limbs if i < len(kp) and j < len(kp) and present[i] and present[j]]
        # a dark outline under solid limbs keeps them readable over a mesh of the same colour
        painter.setPen(QPen(QColor(0, 0, 0, 120), width + 2.0 * px, Qt.PenStyle.SolidLine, Qt.PenCapStyle.RoundCap))
        painter.drawLines([QLineF(kp[i, 0], kp[i, 1], kp[j, 0], kp[j, 1]) for i, j in drawn if vis[i] and vis[j]])
        for i, j in drawn:
            occl = not (vis[i] and vis[j])
            c = QColor(color)
            c.setAlpha(110 if occl or guess else 230)
            style = Qt.PenStyle.DashLine if occl else (Qt.PenStyle.DashDotLine if guess else Qt.PenStyle.SolidLine)
            painter.setPen(QPen(c, width, style, Qt.PenCapStyle.RoundCap))
            painter.drawLine(QPointF(kp[i, 0], kp[i, 1]), QPointF(kp[j, 0], kp[j, 1]))
        # joints
        for j in range(len(kp)):
            if not present[j]:
                continue
            conf = float(np.clip(kp[j, 2], 0, 1))
            r = (2.5 + 3.5 * conf) * px * (1.25 if selected else 1.0) * size
            c = QColor(color)
            c.setAlpha(int(90 + 165 * conf))
            pt = QPointF(kp[j, 0], kp[j, 1])
            if vis[j]:
                painter.setPen(QPen(QColor(0, 0, 0, 160), 1.0 * px))
                painter.setBrush(QBrush(c))
                painter.drawEllipse(pt, r, r)
            else:  # occluded: hollow circle with a cross
                painter.setPen(QPen(c, 1.5 * px))
                painter.setBrush(Qt.BrushStyle.NoBrush)
                painter.drawEllipse(pt, r, r)
                d = r * 0.7
                painter.drawLine(pt + QPointF(-d, -d), pt + QPointF(d, d))
                painter.drawLine(pt + QPointF(-d, d), pt + QPointF(d, -d))
            if p.edited[j]:  # user correction: white ring
                painter.setPen(QPen(QColor(255, 255, 255), 1.5 * px))
                painter.setBrush(Qt.BrushStyle.NoBrush)
                painter.drawEllipse(pt, r + 2 * px, r + 2 * px)
            elif interp is not None and j < len(interp) and interp[j]:  # interpolated between key frames
                painter.setPen(QPen(QColor(255, 255, 255, 200), 1.2 * px, Qt.PenStyle.DotLine))
                painter.setBrush(Qt.BrushStyle.NoBrush)
                d = r + 2.5 * px
                painter.drawPolygon([pt + QPointF(0, -d), pt + QPointF(d, 0), pt + QPointF(0, d), pt + QPointF(-d, 0)])
            if selected and j == doc.selected_joint:
                painter.setPen(QPen(QColor(255, 220, 0), 2.0 * px))
                painter.setBrush(Qt.BrushStyle.NoBrush)
                painter.drawEllipse(pt, r + 4.5 * px, r + 4.5 * px)
