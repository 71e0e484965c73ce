"""Benchmark: Play street.avi in the whole window (issues 11 and 13; printed, never asserted).

The real main window (image view with the 2-D mesh overlay, the 3-D view, docks; the render processes) on
street.avi (1280x720, 50 fps, 205 frames), every frame already holding tracked persons with meshes (synthetic
SMPL bodies, as ``bench_view3d_play.py`` makes them: Play shows computed meshes, it runs no estimator) or no
persons at all, Play pressed on the timeline, the whole video played once each way: with the frame prefetcher
(``session.frames``, the app as it is) and without it (every frame decoded on the GUI thread, as before). Printed for each: frames
shown per second (and dropped), 2-D overlay and 3-D pictures on screen per second, the GUI thread's longest
stall and p99 (a 5 ms QTimer measuring the gaps between its ticks, as bench_app.py does), and the frames
decoded on the GUI thread; with the load average (the machine is shared).

Run:  OMP_NUM_THREADS=1 QT_QPA_PLATFORM=offscreen .venv/bin/python tests/bench/bench_play.py [--persons P]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "app"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchkit import VIDEO, StallMeter, main_window, spin  # noqa: E402  (tests/bench on the path above)


def play_once(app, win, label: str, max_seconds: float) -> None:
    s, doc, tl = win.session, win.doc, win.timeline
    doc.set_current_frame(0)
    spin(app, None, 1.5, poll=0.001)  # the first frame's overlay and 3-D picture, the prefetcher fills up
    changes: list[int] = []
    doc.frame_changed.connect(changes.append)
    overlays0 = win.overlay_updates
    views: list[float] = []

    def on_view(key, rgb, _sec) -> None:
        if rgb is not None and key == ("meshview", id(win.mesh_view)):
            views.append(time.perf_counter())

    s.overlay.view_rendered.connect(on_view)
    meter = StallMeter(precise=True)
    gui0 = doc.frames_decoded_here
    pf = s.frames.prefetcher
    pf0 = pf.decoded if pf is not None else 0
    meter.start()
    t0 = time.perf_counter()
    tl.set_playing(True)
    spin(app, lambda: not tl.is_playing(), max_seconds, poll=0.001)
    dt = time.perf_counter() - t0
    tl.set_playing(False)
    meter.stop()
    doc.frame_changed.disconnect(changes.append)
    s.overlay.view_rendered.disconnect(on_view)
    g = meter.sorted(1)
    n = len(changes)
    print(f"{label}: played frames {changes[0] if changes else 0}..{doc.current_frame} in {dt:.2f} s "
          f"(video time {doc.current_frame / doc.fps:.2f} s): {n} frames shown ({n / dt:.1f}/s of "
          f"{doc.fps:.0f}), {tl.dropped} dropped; 2-D overlays on screen {win.overlay_updates - overlays0} "
          f"({(win.overlay_updates - overlays0) / dt:.1f}/s), 3-D pictures {len(views)} ({len(views) / dt:.1f}/s)")
    print(f"{label}: GUI-thread stall longest {g[-1]:.0f} ms, p99 {g[int(0.99 * (len(g) - 1))]:.0f} ms, median "
          f"{statistics.median(g):.1f} ms ({len(g)} ticks); frames decoded on the GUI thread "
          f"{doc.frames_decoded_here - gui0}, by the prefetcher {(pf.decoded - pf0) if pf is not None else 0}; "
          f"load average {os.getloadavg()[0]:.1f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--persons", type=int, default=4, help="tracked bodies with meshes on every frame")
    ap.add_argument("--seconds", type=float, default=12.0, help="longest a play may take")
    args = ap.parse_args()
    from app_testkit import RecordingEstimator
    from bench_view3d_play import add_walking_bodies
    from PySide6.QtWidgets import QApplication

    from app.jobs import InferenceService
    from app.session import Session
    from dpmesh_core import api

    QApplication.instance() or QApplication([])
    s = Session(inference=InferenceService(estimator_factory=lambda: RecordingEstimator()))
    s.auto_detect = False
    app, win = main_window(s)
    media = api.open_media(VIDEO)
    s.doc.set_media(media)
    n = media.num_frames
    s.video.done.update(range(n))  # every frame processed: Play starts no pipeline job
    s.start_background()
    spin(app, lambda: win.overlay_updates > 0, 60, poll=0.001)
    print(f"street.avi {media.size[0]}x{media.size[1]} at {media.fps:.0f} fps, {n} frames; window "
          f"{win.width()}x{win.height()}; load average {os.getloadavg()[0]:.1f}")
    for on in (True, False):
        if not on:
            s.frames.close()  # as before: the Document decodes every frame on the GUI thread
            win.timeline.frames = None
        for persons in (0, args.persons):
            if persons:
                add_walking_bodies(s.doc, n, persons=persons)
            else:
                for f in range(n):
                    s.doc.set_frame_persons(f, [])
            play_once(app, win, f"prefetch {'on ' if on else 'off'}, {persons} persons", args.seconds)
    win.close()
    s.shutdown()


if __name__ == "__main__":
    main()
