"""Video timeline: scrub (slider), step (◀ ▶, keys , and .), play/pause (Space), frame counter."""

from __future__ import annotations

from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import QHBoxLayout, QLabel, QSlider, QToolButton, QWidget

from ..document import Document


class Timeline(QWidget):
    def __init__(self, doc: Document, parent: QWidget | None = None):
        super().__init__(parent)
        self.doc = doc
        self.prev_btn = QToolButton(text="◀")
        self.play_btn = QToolButton(text="▶ Play")
        self.next_btn = QToolButton(text="▶")
        self.prev_btn.setToolTip("Previous frame (,)")
        self.next_btn.setToolTip("Next frame (.)")
        self.play_btn.setToolTip("Play / pause (Space)")
        self.play_btn.setCheckable(True)
        self.slider = QSlider(Qt.Orientation.Horizontal)
        self.label = QLabel("0 / 0")
        self.label.setMinimumWidth(110)
        lay = QHBoxLayout(self)
        lay.setContentsMargins(4, 0, 4, 0)
        for w in (self.prev_btn, self.play_btn, self.next_btn):
            lay.addWidget(w)
        lay.addWidget(self.slider, 1)
        lay.addWidget(self.label)
        self._timer = QTimer(self)
        self._timer.timeout.connect(self._tick)
        self.prev_btn.clicked.connect(lambda: self.step(-1))
        self.next_btn.clicked.connect(lambda: self.step(1))
        self.play_btn.toggled.connect(self.set_playing)
        self.slider.valueChanged.connect(self.doc.set_current_frame)
        doc.frame_changed.connect(self._on_frame)
        doc.media_changed.connect(self._on_media)
        doc.persons_changed.connect(lambda _f: self._update_label())
        self._on_media()

    def _on_media(self) -> None:
        n = self.doc.num_frames
        self.slider.blockSignals(True)
        self.slider.setRange(0, max(n - 1, 0))
        self.slider.setValue(0)
        self.slider.blockSignals(False)
        self.set_playing(False)
        self.setVisible(self.doc.is_video)
        self._update_label()

    def _on_frame(self, f: int) -> None:
        self.slider.blockSignals(True)
        self.slider.setValue(f)
        self.slider.blockSignals(False)
        self._update_label()

    def _update_label(self) -> None:
        f = self.doc.current_frame
        n = self.doc.num_frames
        k = len(self.doc.persons(f))
        edited = any(p.edited.any() for p in self.doc.persons(f))
        self.label.setText(f"{f + 1} / {n} · {k} pers." + (" ◆" if edited else ""))

    def step(self, d: int) -> None:
        self.doc.set_current_frame(self.doc.current_frame + d)

    def set_playing(self, on: bool) -> None:
        if self.play_btn.isChecked() != on:
            self.play_btn.setChecked(on)
            return
        self.play_btn.setText("❚❚ Pause" if on else "▶ Play")
        if on:
            self._timer.start(int(1000 / max(self.doc.fps, 1.0)))
        else:
            self._timer.stop()

    def toggle_play(self) -> None:
        self.set_playing(not self.play_btn.isChecked())

    def _tick(self) -> None:
        if self.doc.current_frame >= self.doc.num_frames - 1:
            self.set_playing(False)
            return
        self.step(1)
