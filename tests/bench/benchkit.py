"""What the app benchmarks and tours share: where the shared media are, a real main window, waiting on the Qt
event loop, and the GUI-thread stall meter (a 5 ms Qt timer on the GUI thread whose tick-to-tick gaps say how
long the thread was busy: a gap of 5 ms is an idle thread; 80 ms means it did not return to its event loop for
~75 ms). Qt is imported only by what needs it."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from shared_data import SHARED  # noqa: E402  (tests/ on the path above)

PHOTO = SHARED / "media" / "COCO_val2014_000000000395.jpg"
VIDEO = SHARED / "media" / "street.avi"


def main_window(session: Any = None, size: tuple[int, int] | None = (1600, 1000)) -> tuple[Any, Any]:
    """(QApplication, the app's MainWindow shown, with ``session`` or its own; ``size`` None: Qt's default
    size); no prompts on close."""
    from PySide6.QtWidgets import QApplication

    from app.main import configure_runtime
    from app.main_window import MainWindow

    app = QApplication.instance() or QApplication([])
    configure_runtime()
    win = MainWindow(session) if session is not None else MainWindow()
    win._no_prompt = True
    if size is not None:
        win.resize(*size)
    win.show()
    return app, win


def spin(app: Any, until: Any = None, timeout: float = 120.0, poll: float = 0.0005, settle: float = 0.0) -> bool:
    """Process Qt events until ``until()`` is true (never, without one) or ``timeout`` seconds passed, sleeping
    ``poll`` seconds between rounds; then ``settle`` more seconds of events (a screenshot after the last paint).
    Returns whether ``until()`` came true."""
    t0 = time.perf_counter()
    done = False
    while time.perf_counter() - t0 < timeout:
        if until is not None and until():
            done = True
            break
        app.processEvents()
        time.sleep(poll)
    t1 = time.perf_counter()
    while time.perf_counter() - t1 < settle:
        app.processEvents()
        time.sleep(0.01)
    return done


class StallMeter:
    """The GUI-thread stall meter. ``start()`` / ``stop()`` a 5 ms timer; ``gaps`` (ms) collects the intervals between its ticks
    (``clear()`` starts a new list); ``sorted(skip)``: the gaps without the first ``skip``, ascending."""

    def __init__(self, interval_ms: int = 5, precise: bool = False):
        from PySide6.QtCore import QElapsedTimer, Qt, QTimer

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


def cpu_reference() -> str:
    """This machine's speed right now, for reading the other figures: a fixed pure-Python loop (2 million
    additions), median of three, in ms. On the 2-core development machine it took 140-155 ms on 2026-12-02
    (the same loop at module level, slower, varied 240-490 ms that day: the host's speed varies, and every
    figure of a run scales with it)."""
    runs = []
    for _ in range(3):
        t0 = time.perf_counter()
        s = 0
        for i in range(2_000_000):
            s += i
        runs.append((time.perf_counter() - t0) * 1000)
    return f"CPU reference (a fixed Python loop; 140-155 ms on this machine's quiet runs): {sorted(runs)[1]:.0f} ms"
