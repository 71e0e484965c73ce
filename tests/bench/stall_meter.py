"""The GUI-thread stall meter the app benchmarks share: a 5 ms Qt timer on the GUI thread whose tick-to-tick
gaps say how long the thread was busy (a gap of 5 ms is an idle thread; 80 ms means it did not return to its
event loop for ~75 ms)."""

from __future__ import annotations

from PySide6.QtCore import QElapsedTimer, Qt, QTimer


class StallMeter:
    """``start()`` / ``stop()`` a 5 ms timer; ``gaps`` (ms) collects the intervals between its ticks
    (``clear()`` starts a new list); ``sorted(skip)``: the gaps without the first ``skip``, ascending."""

    def __init__(self, interval_ms: int = 5, precise: bool = False):
        self.gaps: list[float] = []
        self._clock = QElapsedTimer()
        self._clock.start()
        self._last = self._clock.nsecsElapsed()
        self.timer = QTimer()
        if precise:
            self.timer.setTimerType(Qt.TimerType.PreciseTimer)
        self.timer.setInterval(interval_ms)
        self.timer.timeout.connect(self._tick)

    def _tick(self) -> None:
        now = self._clock.nsecsElapsed()
        self.gaps.append((now - self._last) / 1e6)
        self._last = now

    def start(self) -> None:
        self._last = self._clock.nsecsElapsed()
        self.timer.start()

    def stop(self) -> None:
        self.timer.stop()

    def clear(self) -> None:
        self.gaps = []

    def sorted(self, skip: int = 0) -> list[float]:
        return sorted(self.gaps[skip:]) or [0.0]
