"""Drive the real main window through the three daily workflows and save screenshots (for eyes, not CI).

  load-and-inspect → correct key-points (drag, mark occluded) and re-infer → export OBJ.

Run under a virtual screen:
  DPMESH_HOME=$PWD/.dpmesh-home xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python tests/bench/tour_app.py OUT_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from benchkit import PHOTO, main_window
from benchkit import spin as spin_events


def main(out: Path) -> None:
    from app.editor import Editor

    app, win = main_window()
    out.mkdir(parents=True, exist_ok=True)

    def spin(pred, timeout=120.0):
        spin_events(app, pred, timeout, poll=0.005, settle=0.2)

    doc = win.doc

    def settled():
        return (doc.persons() and all(doc.result(u) is not None or doc.result_error(u) for u in doc.uids())
                and not win.session.is_busy())

    win.open_path(sys.argv[2] if len(sys.argv) > 2 else str(PHOTO))
    spin(settled)
    win.grab().save(str(out / "1_inspect.png"))
    # correct: select the most complete person, drag its left wrist, mark its right knee occluded
    uid = max(doc.uids(), key=lambda u: doc.person(u).weights.sum())
    doc.select(uid)
    p = doc.person(uid)
    doc.select_joint(9)
    Editor(doc).move_keypoint(uid, 9, (float(p.keypoints[9, 0]) - 30, float(p.keypoints[9, 1]) - 40), drag_id=1)
    Editor(doc).toggle_visibility(uid, 14)
    win.mesh_view.sel_box.setChecked(True)
    win.mesh_view.orbit(40, 10)
    spin(lambda: not win.session.is_busy() and doc.result(uid) is not None)
    win.grab().save(str(out / "2_corrected.png"))
    files = win.session.export_meshes(out / "export", "all", ("obj",))
    print("exported:", [f.name for f in files])
    win.a_overlay.setChecked(False)
    spin(lambda: True, 0.2)
    win.grab().save(str(out / "3_overlay_off.png"))
    print("persons", len(doc.persons()), "meshes", sum(r is not None for r in doc.results()),
          "edited joints of selected:", np.flatnonzero(doc.person(uid).edited).tolist())
    win.close()


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/dpmesh_tour"))
