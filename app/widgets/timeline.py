"""Video timeline: scrub (slider), step (◀ ▶, keys , and .), play/pause (Space), frame counter, and a bar
under the slider that marks key frames (frames corrected by hand; the selected person's track brighter).

Play never runs ahead of the work: with ``ready(frame)`` set (the session: "this frame has its persons and
meshes"), it moves to the next frame only once that frame is ready, and ``play_started(frame)`` lets the
session start processing from there (the core frame pipeline); the counter says when it waits.
"""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import QRect, Qt, QTimer, Signal
from PySide6.QtGui import QColor, QPainter
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QSlider,
    QStyle,
    QStyleOptionSlider,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from ..document import Document


class KeyframeBar(QWidget):
    """Ticks under the slider: every key frame (grey), the selected person's track's key frames (yellow)."""

    def __init__(self, timeline: Timeline):
        super().__init__(timeline)
        self.timeline = timeline
        self.setFixedHeight(7)
        self.all_keys: list[int] = []
        self.track_keys: list[int] = []

    def set_keys(self, all_keys: list[int], track_keys: list[int]) -> None:
        if (all_keys, track_keys) != (self.all_keys, self.track_keys):
            self.all_keys, self.track_keys = all_keys, track_keys
            self.setToolTip("Key frames (corrected by hand): " + (", ".join(str(f + 1) for f in all_keys[:30])
                                                                  or "none yet"))
            self.update()

    def x_of(self, frame: int) -> int:
        s = self.timeline.slider
        opt = QStyleOptionSlider()
        s.initStyleOption(opt)
        groove = s.style().subControlRect(QStyle.ComplexControl.CC_Slider, opt,
                                          QStyle.SubControl.SC_SliderGroove, s)
        handle = s.style().subControlRect(QStyle.ComplexControl.CC_Slider, opt,
                                          QStyle.SubControl.SC_SliderHandle, s)
        span = max(groove.width() - handle.width(), 1)
        pos = QStyle.sliderPositionFromValue(s.minimum(), s.maximum(), frame, span)
        return s.x() - self.x() + groove.x() + pos + handle.width() // 2

    def paintEvent(self, _e) -> None:  # noqa: N802 - Qt API
        p = QPainter(self)
        for frames, color, top in ((self.all_keys, QColor(170, 170, 170), 3), (self.track_keys, QColor(255, 210, 0), 0)):
            for f in frames:
                p.fillRect(QRect(self.x_of(f) - 1, top, 3, self.height() - top), color)
        p.end()


class Timeline(QWidget):
    play_started = Signal(int)  # frame where Play was pressed
    play_stopped = Signal()

    def __init__(self, doc: Document, parent: QWidget | None = None):
        super().__init__(parent)
        self.doc = doc
        self.ready: Callable[[int], bool] | None = None  # frame -> its persons and meshes are there
        self.waiting_for: int | None = None  # Play waits for this frame to be processed
        self.prev_btn = QToolButton(text="◀")
        self.play_btn = QToolButton(text="▶ Play")
        self.next_btn = QToolButton(text="▶")
        self.prev_btn.setToolTip("Previous frame (,)")
        self.next_btn.setToolTip("Next frame (.)")
        self.play_btn.setToolTip("Play / pause (Space): detects and estimates each frame as it goes")
        self.play_btn.setCheckable(True)
        self.slider = QSlider(Qt.Orientation.Horizontal)
        self.label = QLabel("0 / 0")
        self.label.setMinimumWidth(110)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(4, 0, 4, 0)
        outer.setSpacing(0)
        lay = QHBoxLayout()
        for w in (self.prev_btn, self.play_btn, self.next_btn):
            lay.addWidget(w)
        lay.addWidget(self.slider, 1)
        lay.addWidget(self.label)
        outer.addLayout(lay)
        self.keys = KeyframeBar(self)
        outer.addWidget(self.keys)
        self._timer = QTimer(self)
        self._timer.timeout.connect(self._tick)
        self._keys_timer = QTimer(self)  # many person changes in one turn (a batch edit) → one recount
        self._keys_timer.setSingleShot(True)
        self._keys_timer.setInterval(0)
        self._keys_timer.timeout.connect(self.update_keys)
        self.prev_btn.clicked.connect(lambda: self.step(-1))
        self.next_btn.clicked.connect(lambda: self.step(1))
        self.play_btn.toggled.connect(self.set_playing)
        self.slider.valueChanged.connect(self.doc.set_current_frame)
        doc.frame_changed.connect(self._on_frame)
        doc.media_changed.connect(self._on_media)
        doc.persons_changed.connect(self._on_persons)
        doc.selection_changed.connect(lambda _u: self._keys_timer.start())
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
        self.update_keys()

    def _on_persons(self, f: int) -> None:
        if f == self.doc.current_frame:
            self._update_label()
        self._keys_timer.start()

    def update_keys(self) -> None:
        p = self.doc.person(self.doc.selected_uid) if self.doc.selected_uid != -1 else None
        track = self.doc.key_frames(p.track_id) if p is not None and p.track_id is not None else []
        self.keys.set_keys(self.doc.key_frames(), track)

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
        text = f"{f + 1} / {n} · {k} pers." + (" ◆ key" if edited else "")
        hidden = self.doc.occluded.get(f, {})
        if hidden:  # known to be here, hidden behind another person (no key-points, no mesh)
            text += " · hidden: " + ", ".join(f"#{t} behind #{b}" for t, b in sorted(hidden.items()))
        if self.waiting_for is not None:
            text += f" · processing {self.waiting_for + 1}…"
        self.label.setText(text)

    def step(self, d: int) -> None:
        self.doc.set_current_frame(self.doc.current_frame + d)

    def set_playing(self, on: bool) -> None:
        if self.play_btn.isChecked() != on:
            self.play_btn.setChecked(on)
            return
        self.play_btn.setText("❚❚ Pause" if on else "▶ Play")
        self.waiting_for = None
        if on:
            self._timer.start(int(1000 / max(self.doc.fps, 1.0)))
            self.play_started.emit(self.doc.current_frame)
        elif self._timer.isActive():
            self._timer.stop()
            self.play_stopped.emit()
        self._update_label()

    def is_playing(self) -> bool:
        return self._timer.isActive()

    def toggle_play(self) -> None:
        self.set_playing(not self.play_btn.isChecked())

    def _tick(self) -> None:
        if self.doc.current_frame >= self.doc.num_frames - 1:
            self.set_playing(False)
            return
        nxt = self.doc.current_frame + 1
        if self.ready is not None and not self.ready(nxt):
            if self.waiting_for != nxt:
                self.waiting_for = nxt
                self._update_label()
            return  # not processed yet: wait for it rather than show a frame without persons
        self.waiting_for = None
        self.step(1)
