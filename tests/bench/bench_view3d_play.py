"""Benchmark: video playback in the app's 3-D view (issue 17; printed, never asserted). street.avi opened in a
real ``MeshView`` (render process, as in the app) at 1280x720, 10 tracked synthetic SMPL bodies (6,890
vertices) walking over the frames, Play pressed: how many 3-D pictures per second reach the widget, and the
GUI thread's longest stall (the GUI never waits for a render).

Run:  OMP_NUM_THREADS=1 QT_QPA_PLATFORM=offscreen .venv/bin/python tests/bench/bench_view3d_play.py [--seconds S]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "app"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchkit import VIDEO, main_window  # noqa: E402  (tests/bench on the path above)


def add_walking_bodies(doc, frames: int, persons: int = 10) -> None:
    """``persons`` tracked synthetic SMPL bodies (6,890 vertices) walking over the first ``frames`` frames of the
    Document's video, each with its key-points and mesh result (no estimator involved)."""
    from app_testkit import make_person

    from dpmesh_core.body.synthetic import synthetic_smpl_arrays
    from dpmesh_core.types import BodyParams, Camera, MeshResult

    a = synthetic_smpl_arrays()
    body = np.asarray(a["v_template"], np.float64) * np.array([1.0, -1.0, -1.0])
    body[:, 1] -= body[:, 1].max()
    faces = np.asarray(a["f"], np.int32)
    w, h = doc.media.size
    cam = Camera.default_for(w, h)
    z3 = np.zeros(3, np.float32)
    for f in range(frames):
        people = [dataclasses.replace(make_person(i % 5, x0=60 + 90 * (i % 5)), track_id=i) for i in range(persons)]
        uids = doc.set_frame_persons(f, people)
        for i, u in enumerate(uids):
            v = (body + np.array([(i % 5 - 2) * 0.9 + 0.02 * f, 1.5, 5.0 + (i // 5) * 2.5])).astype(np.float32)
            doc.set_result(u, MeshResult(v, faces, v[:24], np.zeros((24, 2), np.float32), "smpl24",
                                         BodyParams("smpl", z3, np.zeros(69, np.float32),
                                                    np.zeros(10, np.float32), z3), cam, track_id=i))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--frames", type=int, default=40)
    ap.add_argument("--window", action="store_true", help="the whole main window (2-D overlay, image view, "
                    "docks) instead of the 3-D view alone")
    args = ap.parse_args()
    from app_testkit import RecordingEstimator
    from PySide6.QtWidgets import QApplication

    from app.jobs import InferenceService
    from app.session import Session
    from app.widgets.mesh_view import MeshView
    from dpmesh_core import api

    app = QApplication.instance() or QApplication([])
    s = Session(inference=InferenceService(estimator_factory=lambda: RecordingEstimator()))
    s.auto_detect = False
    win = main_window(s)[1] if args.window else None
    media = api.open_media(VIDEO)
    s.doc.set_media(media)
    w, h = media.size
    frames = min(args.frames, media.num_frames if hasattr(media, "num_frames") else args.frames)
    add_walking_bodies(s.doc, frames)
    s.doc.set_current_frame(0)
    s.doc.select(s.doc.uids()[0])  # Play runs this track's frames (the ones with meshes), looping
    view = win.mesh_view if win is not None else MeshView(s)
    shown: list[float] = []
    secs: list[float] = []

    def on_rendered(k, rgb, sec):
        if k == ("meshview", id(view)) and rgb is not None:
            shown.append(time.perf_counter())
            secs.append(sec)

    s.overlay.view_rendered.connect(on_rendered)
    asked: list[float] = []
    real = s.overlay.render_view

    def counted(*a, **k):
        asked.append(time.perf_counter())
        return real(*a, **k)

    s.overlay.render_view = counted
    if win is None:
        view.resize(1280 + 200, 720 + 70)
        view.show()
    else:  # the 3-D dock floated at about 1280x720
        dock = view.parentWidget()
        while dock is not None and not hasattr(dock, "setFloating"):
            dock = dock.parentWidget()
        dock.setFloating(True)
        dock.setGeometry(100, 60, 1280 + 220, 720 + 110)
    t0 = time.perf_counter()
    while not shown and time.perf_counter() - t0 < 120:
        app.processEvents()
        time.sleep(0.002)
    if win is None:
        view.canvas.resize(1280, 720)
    t1 = time.perf_counter()
    while time.perf_counter() - t1 < 2.0:  # the user looks before pressing Play (the render process, idle,
        app.processEvents()                # computes the reduced face lists meanwhile)
        time.sleep(0.005)
    print(f"street.avi {w}x{h} at {media.fps:.1f} fps, {frames} frames with 10 persons; 3-D view "
          f"{view.canvas.width()}x{view.canvas.height()}; load average {os.getloadavg()[0]:.1f}")
    seen: list[int] = []
    s.doc.frame_changed.connect(seen.append)
    view.play_btn.setChecked(True)
    t0 = time.perf_counter()
    n0 = len(shown)
    gaps, last = [], time.perf_counter()
    while time.perf_counter() - t0 < args.seconds:
        app.processEvents()
        now = time.perf_counter()
        gaps.append(now - last)
        last = now
        time.sleep(0.001)
    view.play_btn.setChecked(False)
    dt = time.perf_counter() - t0
    n = len([t for t in shown[n0:] if t <= t0 + dt])
    print(f"playing {dt:.1f} s: {len(seen)} frame changes ({len(seen) / dt:.1f}/s), 3-D pictures shown "
          f"{n} ({n / dt:.1f} frames/s); last render {view.last_render_s * 1000:.0f} ms (round trip); GUI thread's "
          f"longest stall {max(gaps) * 1000:.0f} ms; load average {os.getloadavg()[0]:.1f}")
    print(f"3-D pictures asked for while playing: {len([t for t in asked if t0 <= t <= t0 + dt])}; render round "
          "trips (ms):", [round(x * 1000) for x in secs[-12:]])
    if win is not None:
        win.close()
    s.shutdown()


if __name__ == "__main__":
    main()
