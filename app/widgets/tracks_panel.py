"""Tracks panel (video): every track with its colour, first and last frame, frames present, key frames and
where the video pipeline saw it hidden behind another track ("behind #X: a–b": no key-points, no mesh there;
on such a frame its row is orange and says how to add the person), and the proofreading of the selected track at the current frame (SLEAP-like: swap with another track from here on,
merge another track into it, split it here, delete it from here on) and key-frame interpolation (between
its key frames; past the last one for a chosen number of frames). Every action is one undoable command
(``app.tracks``, ``app.keyframes``); a refusal is said in the panel."""

from __future__ import annotations

from PySide6.QtCore import QTimer
from PySide6.QtGui import QBrush, QColor
from PySide6.QtWidgets import (
    QComboBox,
    QGridLayout,
    QLabel,
    QPushButton,
    QSizePolicy,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from .. import keyframes, tracks
from ..document import Document
from ..palette import person_rgb


class TracksPanel(QWidget):
    COLUMNS = ["track", "first", "last", "frames", "key frames", "occluded"]

    def __init__(self, doc: Document, parent: QWidget | None = None):
        super().__init__(parent)
        self.doc = doc
        self.table = QTableWidget(0, len(self.COLUMNS))
        self.table.setHorizontalHeaderLabels(self.COLUMNS)
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QTableWidget.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QTableWidget.SelectionMode.SingleSelection)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.currentCellChanged.connect(lambda r, *_a: self._on_row(r))
        self.table.cellDoubleClicked.connect(lambda r, _c: self.go_to_first(r))
        self.table.setToolTip("Click: select the track's person on this frame. Double-click: go to its first frame.")
        self.other = QComboBox()
        self.other.setToolTip("The other track of a swap or a merge")
        self.swap_btn = QPushButton("Swap from here")
        self.swap_btn.setToolTip("From this frame on, the selected track and the other one exchange persons "
                                 "(fixes an identity switch)")
        self.merge_btn = QPushButton("Merge other in")
        self.merge_btn.setToolTip("The other track becomes part of the selected one (one person seen as two)")
        self.split_btn = QPushButton("Split here")
        self.split_btn.setToolTip("From this frame on, the selected track becomes a new track (two persons seen as one)")
        self.delete_btn = QPushButton("Delete from here")
        self.delete_btn.setToolTip("Remove the selected track's persons from this frame on")
        self.interp_btn = QPushButton("Interpolate key frames")
        self.interp_btn.setToolTip("Carry this track's corrections between each two of its key frames "
                                   "(frames corrected by hand) (Ctrl+I)")
        self.carry_btn = QPushButton("Carry past last key frame:")
        self.carry_btn.setToolTip("Also carry the last key frame's corrections to the next frames")
        self.carry_n = QSpinBox()
        self.carry_n.setRange(1, 10000)
        self.carry_n.setValue(10)
        self.carry_n.setSuffix(" frames")
        self.state = QLabel("")
        self.state.setWordWrap(True)
        self.state.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        grid = QGridLayout()
        grid.addWidget(QLabel("other track:"), 0, 0)
        grid.addWidget(self.other, 0, 1)
        grid.addWidget(self.swap_btn, 1, 0)
        grid.addWidget(self.merge_btn, 1, 1)
        grid.addWidget(self.split_btn, 2, 0)
        grid.addWidget(self.delete_btn, 2, 1)
        grid.addWidget(self.interp_btn, 3, 0, 1, 2)
        grid.addWidget(self.carry_btn, 4, 0)
        grid.addWidget(self.carry_n, 4, 1)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(2, 2, 2, 2)
        lay.addWidget(self.table, 1)
        lay.addLayout(grid)
        lay.addWidget(self.state)
        self.swap_btn.clicked.connect(lambda _c=False: self.run_action(self.swap))
        self.merge_btn.clicked.connect(lambda _c=False: self.run_action(self.merge))
        self.split_btn.clicked.connect(lambda _c=False: self.run_action(self.split))
        self.delete_btn.clicked.connect(lambda _c=False: self.run_action(self.delete))
        self.interp_btn.clicked.connect(lambda _c=False: self.run_action(self.interpolate))
        self.carry_btn.clicked.connect(lambda _c=False: self.run_action(lambda: self.interpolate(self.carry_n.value())))
        self._rows: list[tracks.TrackInfo] = []
        self._updating = False
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(0)
        self._timer.timeout.connect(self.refresh)
        # the summary walks every frame of the document: recomputed when persons or media change, not when
        # only the shown frame or the selection does (Play changes the frame many times a second)
        self._stale = True
        doc.persons_changed.connect(lambda _f: self._mark_stale())
        doc.media_changed.connect(self._mark_stale)
        doc.selection_changed.connect(lambda _u: self._timer.start())
        doc.frame_changed.connect(lambda _f: self._timer.start())
        self.refresh()

    # ------------------------------------------------------------------ state
    def selected_track(self) -> int | None:
        p = self.doc.person(self.doc.selected_uid) if self.doc.selected_uid != -1 else None
        if p is not None and p.track_id is not None:
            return int(p.track_id)
        row = self.table.currentRow()
        return self._rows[row].track_id if 0 <= row < len(self._rows) else None

    def other_track(self) -> int | None:
        data = self.other.currentData()
        return None if data is None else int(data)

    def _mark_stale(self) -> None:
        self._stale = True
        self._timer.start()

    def refresh(self) -> None:
        self._updating = True
        try:
            if self._stale:
                self._rows = tracks.summary(self.doc)
                self._stale = False
            sel = self.selected_track()
            self.table.setRowCount(len(self._rows))
            here = {p.track_id for p in self.doc.persons()}
            hidden = self.doc.occluded.get(self.doc.current_frame, {})
            for r, t in enumerate(self._rows):
                occ = t.occluded_short()
                values = (f"#{t.track_id}", str(t.first + 1), str(t.last + 1), str(t.frames), str(t.key_frames), occ)
                for c, v in enumerate(values):
                    it = QTableWidgetItem(v)
                    if c == 0:
                        it.setForeground(QBrush(QColor(*person_rgb(t.track_id + 1))))
                    if t.track_id in hidden:
                        # known to be here, hidden behind another person: no key-points, no mesh
                        it.setToolTip(f"hidden behind #{hidden[t.track_id]} on this frame: no key-points, no mesh "
                                      "(add the person with the box tool, or place key-points by hand)")
                        if c > 0:
                            it.setForeground(QBrush(QColor(200, 120, 40)))
                    elif t.track_id not in here:
                        it.setToolTip("not on this frame")
                        if c > 0:
                            it.setForeground(QBrush(QColor(140, 140, 140)))
                    if c == 5 and t.occluded:
                        lines = t.occluded_text()
                        it.setToolTip("\n".join(lines[:20] + ([f"… {len(lines) - 20} more"] if len(lines) > 20 else [])))
                    self.table.setItem(r, c, it)
            rows = [r for r, t in enumerate(self._rows) if t.track_id == sel]
            if rows:
                self.table.selectRow(rows[0])
            else:
                self.table.clearSelection()
            keep = self.other_track()
            self.other.clear()
            for t in self._rows:
                if t.track_id != sel:
                    self.other.addItem(f"#{t.track_id} (frames {t.first + 1}–{t.last + 1})", t.track_id)
            i = self.other.findData(keep)
            if i >= 0:
                self.other.setCurrentIndex(i)
            has = sel is not None
            for b in (self.split_btn, self.delete_btn, self.interp_btn, self.carry_btn):
                b.setEnabled(has)
            for b in (self.swap_btn, self.merge_btn):
                b.setEnabled(has and self.other.count() > 0)
        finally:
            self._updating = False

    def _on_row(self, row: int) -> None:
        if self._updating or not 0 <= row < len(self._rows):
            return
        t = self._rows[row].track_id
        for u, p in zip(self.doc.uids(), self.doc.persons()):
            if p.track_id == t:
                self.doc.select(u)
                return

    def go_to_first(self, row: int) -> None:
        if 0 <= row < len(self._rows):
            t = self._rows[row]
            self.doc.set_current_frame(t.first)
            self._on_row(row)

    # ------------------------------------------------------------------ actions
    def run_action(self, fn) -> str:
        """Run one of the actions below; what it did (or why it refused) is shown and returned."""
        try:
            msg = fn() or ""
        except tracks.TrackEditError as e:
            msg = f"⚠ {e}"
        self.state.setText(msg)
        return msg

    def _need(self, other: bool = False) -> tuple[int, int | None]:
        t = self.selected_track()
        if t is None:
            raise tracks.TrackEditError("select a tracked person (or a row of the list) first")
        o = self.other_track() if other else None
        if other and o is None:
            raise tracks.TrackEditError("choose the other track first")
        return t, o

    def swap(self) -> str:
        t, o = self._need(other=True)
        f = self.doc.current_frame
        n = tracks.swap_tracks(self.doc, t, o, f)
        return f"Swapped #{t} and #{o} from frame {f + 1} on ({n} persons)."

    def merge(self) -> str:
        t, o = self._need(other=True)
        n = tracks.merge_tracks(self.doc, t, o)
        return f"Merged #{o} into #{t} ({n} persons)."

    def split(self) -> str:
        t, _ = self._need()
        new = tracks.split_track(self.doc, t, self.doc.current_frame)
        return f"Split #{t}: from frame {self.doc.current_frame + 1} on it is #{new}."

    def delete(self) -> str:
        t, _ = self._need()
        n = tracks.delete_track(self.doc, t, self.doc.current_frame)
        return f"Deleted #{t} from frame {self.doc.current_frame + 1} on ({n} persons)."

    def interpolate(self, after_last: int = 0) -> str:
        t, _ = self._need()
        keys = self.doc.key_frames(t)
        n = keyframes.interpolate_track(self.doc, t, after_last)
        if n == 0:
            if len(keys) < 2 and not after_last:
                return (f"#{t} has {len(keys)} key frame(s): correct it on a second frame first (interpolation "
                        "runs only between two key frames), or carry past the last key frame.")
            return "Nothing to interpolate (no joint corrected on both key frames, or no frame between them)."
        return f"Interpolated #{t} on {n} frame(s) (◇ marks interpolated points; one undo step)."
