"""Persons panel: the list of persons of the frame (select), their state, and the joint table of the
selected person (select a joint; double-click toggles visibility)."""

from __future__ import annotations

from PySide6.QtCore import Qt, QTimer
from PySide6.QtGui import QBrush, QColor, QIcon, QPixmap
from PySide6.QtWidgets import (
    QHBoxLayout,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..document import Document
from ..editor import Editor
from .skeletons import JointTables, person_color


class PersonsPanel(QWidget):
    def __init__(self, doc: Document, parent: QWidget | None = None):
        super().__init__(parent)
        self.doc = doc
        self.list = QListWidget()
        self.list.currentRowChanged.connect(self._on_row)
        self.remove_btn = QPushButton("Remove person")
        self.remove_btn.clicked.connect(self._remove)
        self.table = QTableWidget(0, 4)
        self.table.setHorizontalHeaderLabels(["joint", "conf", "state", "source"])
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QTableWidget.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QTableWidget.SelectionMode.SingleSelection)
        self.table.currentCellChanged.connect(self._on_cell)
        self.table.cellDoubleClicked.connect(self._toggle)
        self.table.horizontalHeader().setStretchLastSection(True)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(2, 2, 2, 2)
        lay.addWidget(self.list, 1)
        row = QHBoxLayout()
        row.addWidget(self.remove_btn)
        row.addStretch(1)
        lay.addLayout(row)
        lay.addWidget(self.table, 2)
        self._updating = False
        self._timer = QTimer(self)  # many changes in one event-loop turn (a batch of results) → one refresh
        self._timer.setSingleShot(True)
        self._timer.setInterval(0)
        self._timer.timeout.connect(self.refresh)
        doc.persons_changed.connect(lambda _f: self._timer.start())
        doc.results_changed.connect(lambda _f: self._timer.start())
        doc.selection_changed.connect(lambda _u: self.refresh())
        doc.joint_selection_changed.connect(self._on_joint)
        doc.frame_changed.connect(lambda _f: self.refresh())
        doc.media_changed.connect(self.refresh)
        self.refresh()

    def refresh(self) -> None:
        self._updating = True
        try:
            self.list.clear()
            sel_row = -1
            for i, (u, p) in enumerate(zip(self.doc.uids(), self.doc.persons())):
                n_vis = int(p.visible.sum())
                n_ed = int(p.edited.sum())
                err = self.doc.result_error(u)
                has = self.doc.result(u) is not None
                guess = self.doc.low_confidence(u)
                state = ("mesh ? low confidence" if guess else "mesh ✓") if has else ("⚠ " + err if err else "estimating…")
                n_int = int(self.doc.interpolated[u].sum()) if u in self.doc.interpolated else 0
                tid = " (track)" if p.track_id is not None else ""
                text = f"{self.doc.label(u)}{tid} · {n_vis}/{p.num_joints} visible" + (
                    f" · {n_ed} edited" if n_ed else "") + (f" · {n_int} interpolated" if n_int else "")
                text += f" · {p.source} · {state}"
                pm = QPixmap(12, 12)
                pm.fill(person_color(self.doc.color_key(u)))
                it = QListWidgetItem(QIcon(pm), text)
                it.setData(Qt.ItemDataRole.UserRole, u)
                if guess:
                    it.setForeground(QBrush(QColor(160, 160, 160)))
                    it.setToolTip("Low confidence: the mesh is a guess — " + "; ".join(guess))
                self.list.addItem(it)
                if u == self.doc.selected_uid:
                    sel_row = i
            self.list.setCurrentRow(sel_row)
            self.remove_btn.setEnabled(sel_row >= 0)
            self._fill_table()
        finally:
            self._updating = False

    def _fill_table(self) -> None:
        p = self.doc.person(self.doc.selected_uid) if self.doc.selected_uid != -1 else None
        if p is None:
            self.table.setRowCount(0)
            return
        names, _ = JointTables.get(p.joint_set)
        interp = self.doc.interpolated.get(self.doc.selected_uid)
        self.table.setRowCount(p.num_joints)
        for j in range(p.num_joints):
            name = names[j] if j < len(names) else str(j)
            conf = float(p.keypoints[j, 2])
            state = "visible" if p.visible[j] else ("missing" if conf <= 0 else "occluded")
            src = "✎ edited" if p.edited[j] else ("◇ interpolated" if interp is not None and interp[j] else (
                "placed" if p.source == "user" and p.score >= 1.0 else "auto"))
            for c, v in enumerate((name, f"{conf:.2f}", state, src)):
                item = QTableWidgetItem(v)
                if not p.visible[j]:
                    item.setForeground(QBrush(QColor(150, 150, 150)))
                self.table.setItem(j, c, item)
        self.table.resizeColumnsToContents()
        if 0 <= self.doc.selected_joint < p.num_joints:
            self.table.selectRow(self.doc.selected_joint)

    def _on_row(self, row: int) -> None:
        if self._updating:
            return
        it = self.list.item(row)
        self.doc.select(-1 if it is None else int(it.data(Qt.ItemDataRole.UserRole)))

    def _on_cell(self, row: int, *_a: int) -> None:
        if not self._updating and row >= 0:
            self.doc.select_joint(row)

    def _on_joint(self, j: int) -> None:
        if not self._updating and j >= 0 and j < self.table.rowCount():
            self._updating = True
            self.table.selectRow(j)
            self._updating = False

    def _toggle(self, row: int, _col: int) -> None:
        if self.doc.selected_uid != -1:
            Editor(self.doc).toggle_visibility(self.doc.selected_uid, row)

    def _remove(self) -> None:
        if self.doc.selected_uid != -1:
            Editor(self.doc).remove_person(self.doc.selected_uid)
