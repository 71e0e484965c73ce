"""Video timeline: scrub (slider), step (◀ ▶, keys , and .), play/pause (Space), frame counter, and a bar
under the slider that marks key frames (frames corrected by hand; the selected person's track brighter).

Play runs at the video's frame rate by the clock (frame = start + elapsed * fps): when the GUI cannot keep up,
frames are dropped rather than played slowly. It never runs ahead of the work: with ``ready(frame)`` set (the
session: "this frame has its persons and meshes"), it moves only to frames that are ready (and restarts its
clock there), and ``play_started(frame)`` lets the session start processing from there (the core frame
pipeline); the counter says when it waits. With ``frames`` set (the session's ``FramesController``), it moves
only to frames already decoded off the GUI thread, telling the prefetcher where its clock is, so playing never
decodes on the GUI thread, and it stops at the last frame that decodes (a truncated file).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

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
        self.frames: Any = None  # .decoded(f), .play_clock(f), .set_playing(on), .end(): session.frames
        self._clock = (0.0, 0)  # (perf_counter, frame) where Play's clock started
        self.shown = 0  # frames shown by Play since it last started
        self.dropped = 0  # frames Play skipped to keep the video's frame rate
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
        self._timer.setTimerType(Qt.TimerType.PreciseTimer)
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
        if self.frames is not None:
            self.frames.set_playing(on)
        if on:
            self._clock = (time.perf_counter(), self.doc.current_frame)
            self.shown = self.dropped = 0
            self._timer.start(max(int(1000 / max(self.doc.fps, 1.0)), 1))
            self.play_started.emit(self.doc.current_frame)
        elif self._timer.isActive():
            self._timer.stop()
            self.play_stopped.emit()
        self._update_label()

    def is_playing(self) -> bool:
        return self._timer.isActive()

    def toggle_play(self) -> None:
        self.set_playing(not self.play_btn.isChecked())

    def _last_frame(self) -> int:
        n = self.doc.num_frames
        end = self.frames.end() if self.frames is not None else None
        return (n if end is None else min(n, end)) - 1

    def _tick(self) -> None:
        cur = self.doc.current_frame
        last = self._last_frame()
        if cur >= last:
            self.set_playing(False)
            return
        now = time.perf_counter()
        t0, f0 = self._clock
        target = min(f0 + int((now - t0) * max(self.doc.fps, 1.0)), last)
        if target <= cur:
            return
        if self.frames is not None:
            self.frames.play_clock(target)  # the prefetcher skips what the clock has passed
        show, blocked = None, None
        for f in range(cur + 1, target + 1):
            if self.ready is not None and not self.ready(f):
                blocked = f
                break
            if self.frames is None or self.frames.decoded(f):
                show = f
        if blocked is not None:  # processing sets the pace: restart the clock where Play now stands
            self._clock = (now, cur if show is None else show)
            if show is None:
                if self.waiting_for != blocked:
                    self.waiting_for = blocked
                    self._update_label()
                return  # not processed yet: wait for it rather than show a frame without persons
        if show is None:
            return  # not decoded yet (the prefetcher is on it): keep the shown frame
        self.waiting_for = None
        self.shown += 1
        self.dropped += show - cur - 1
        self.doc.set_current_frame(show)
