"""Drive the real main window's 3-D view and save screenshots (for eyes, not CI): a photo at the camera
view, after a 40° orbit, bird's-eye and side; then a video's first frames processed, played in 3-D with a
track's trajectory.

Run under a virtual screen:
  DPMESH_HOME=$PWD/.dpmesh-home xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python tests/bench/tour_view3d.py \
      OUT_DIR [PHOTO] [VIDEO] [VIDEO_FRAMES]
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from benchkit import PHOTO, VIDEO, main_window
from benchkit import spin as spin_events


def main(out: Path) -> None:
    app, win = main_window()
    out.mkdir(parents=True, exist_ok=True)
    view = win.mesh_view
    doc = win.doc
    renders = [0]
    win.session.overlay.view_rendered.connect(lambda k, *_: renders.__setitem__(0, renders[0] + 1))

    def spin(pred, timeout=300.0):
        spin_events(app, pred, timeout, poll=0.005, settle=0.2)

    def settled():
        return (doc.persons() and all(doc.result(u) is not None or doc.result_error(u) for u in doc.uids())
                and not win.session.is_busy())

    def shot(name: str, action=None) -> None:
        n = renders[0]
        if action is not None:
            action()
        spin(lambda: renders[0] > n and not win.session.render.is_busy(), 120)
        screen = app.primaryScreen().grabWindow(0)  # the whole virtual screen (as `import -window root`)
        screen.save(str(out / f"{name}_screen.png"))
        view.canvas.grab().save(str(out / f"{name}_view.png"))
        rows = ", ".join(f"{label} {d:.1f} m" for _, label, d in view.depth_rows)
        print(f"{name}: preset {view.camera.preset if view.camera else None!r}, {view.info.text()}, depth order: {rows}",
              flush=True)

    # the mesh dock large: float it over most of the screen
    dock = view.parentWidget()
    while dock is not None and not hasattr(dock, "setFloating"):
        dock = dock.parentWidget()
    if dock is not None:
        dock.setFloating(True)
        dock.setGeometry(300, 60, 1250, 860)
    photo = sys.argv[2] if len(sys.argv) > 2 else str(PHOTO)
    win.open_path(photo)
    spin(settled)
    ground = view.build_scene().ground if view.build_scene() is not None else None
    print("ground:", None if ground is None else f"normal {ground.normal.round(3)}, residual "
          f"{ground.residual_m * 100:.1f} cm, {ground.persons} persons")
    shot("1_camera", view.reset_view)
    shot("2_orbit40", lambda: view.orbit(40, 0))
    shot("3_top", lambda: view.set_preset("top"))
    shot("4_side", lambda: view.set_preset("side"))
    # video: process the first frames, then play a track with its trajectory
    video = sys.argv[3] if len(sys.argv) > 3 else str(VIDEO)
    frames = int(sys.argv[4]) if len(sys.argv) > 4 else 12
    win.open_path(video)
    spin(lambda: doc.num_frames > 1 and not win.session.is_busy(), 120)
    win.session.video.process_video(stop=frames)
    spin(lambda: not win.session.is_busy() and all(doc.results(f) and all(r is not None for r in doc.results(f))
                                                   for f in range(frames)), 900)
    doc.set_current_frame(0)
    tracks = doc.tracks()
    longest = max(tracks, key=lambda t: len(tracks[t])) if tracks else None
    print("video tracks:", {t: len(f) for t, f in tracks.items()})
    if longest is not None:
        doc.select(doc.track_members(longest)[tracks[longest][0]])
    view.toggles["trajectory"].setChecked(True)
    shot("5_video_top", lambda: view.set_preset("top"))
    seen: list[int] = []
    doc.frame_changed.connect(seen.append)
    t0 = time.perf_counter()
    n0 = renders[0]
    view.play_btn.setChecked(True)
    spin(lambda: len(seen) >= 2 * frames, 60)
    dt = time.perf_counter() - t0
    print(f"played {len(seen)} frame changes in {dt:.1f} s (video {doc.fps:.1f} fps), frames {sorted(set(seen))}; "
          f"3-D pictures shown {renders[0] - n0} ({(renders[0] - n0) / dt:.1f} frames/s, "
          f"{view.canvas.width()}x{view.canvas.height()}); load average {os.getloadavg()[0]:.1f}", flush=True)
    view.play_btn.setChecked(False)
    shot("6_video_orbit", lambda: (view.set_preset("camera"), view.orbit(-35, 15)))
    view.canvas.setFocus()
    win.close()


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/tour_view3d"))
