"""Benchmark of the 3-D view (issue 17; printed, never asserted): one frame of 10 persons (6,890-vertex
synthetic SMPL bodies) at 1280x720 while orbiting, per renderer backend, side by side:

* "before": what the mesh view did until issue 17 on each orbit step: every mesh handed to the renderer again
  (Open3D: geometry rebuilt and uploaded), no scene context;
* "scene, full": ``api.render_scene`` (persons + ground + grid + axes + frustum with the photo + labels),
  the persons' geometry kept by the renderer between orbit steps, at 1280x720;
* "scene, dragging": the same at half resolution (what the view renders while the mouse drags).

Wall time and the process's CPU time (less sensitive to other processes on a shared machine) are medians
over orbit steps of 3°. Target: ≤ 33 ms per frame.

Run:  OMP_NUM_THREADS=1 .venv/bin/python tests/bench/bench_view3d.py [--steps N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np


def persons(n: int = 10):
    from dpmesh_core.body.synthetic import synthetic_smpl_arrays
    from dpmesh_core.types import BodyParams, Camera, MeshResult

    a = synthetic_smpl_arrays()
    body = np.asarray(a["v_template"], np.float64) * np.array([1.0, -1.0, -1.0])
    body[:, 1] -= body[:, 1].max()
    faces = np.asarray(a["f"], np.int32)
    cam = Camera.default_for(1280, 720)
    z3 = np.zeros(3, np.float32)
    out = []
    for i in range(n):
        v = (body + np.array([(i % 5 - 2) * 0.9, 1.5, 5.0 + (i // 5) * 2.5])).astype(np.float32)
        out.append(MeshResult(v, faces, v[:24], np.zeros((24, 2), np.float32), "smpl24",
                              BodyParams("smpl", z3, np.zeros(69, np.float32), np.zeros(10, np.float32), z3), cam))
    return out, cam


def timed(fn, steps: int) -> tuple[float, float]:
    wall, cpu = [], []
    for k in range(steps):
        t0, c0 = time.perf_counter(), time.process_time()
        fn(k)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return statistics.median(wall[1:]) * 1000, statistics.median(cpu[1:]) * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=8)
    args = ap.parse_args()
    from dpmesh_core import api

    results, cam = persons()
    photo = np.full((720, 1280, 3), 128, np.uint8)
    colors = [np.array(api.person_color(i)) for i in range(len(results))]
    scene = api.Scene(api.scene_persons(results, colors, [f"#{i}" for i in range(len(results))]), cam,
                      api.fit_ground(results), api.thumbnail(photo))
    print(f"10 persons x {len(results[0].vertices)} vertices / {len(results[0].faces)} faces, 1280x720; ground "
          f"{'fitted' if scene.ground is not None else 'not fitted'}; load average {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} CPUs")
    print(f"{'backend':8s} {'what':28s} {'wall ms':>8s} {'CPU ms':>8s}")
    for backend in ("open3d", "numpy"):
        bench_backend(backend, scene, results, colors, cam, args.steps)


def bench_backend(backend: str, scene, results, colors, cam, steps: int) -> None:
    from dpmesh_core import api
    from dpmesh_core.io import scene3d

    renderers = {}
    for size in ((1280, 720), (640, 360)):
        try:
            renderers[size] = api.MeshRenderer(*size, backend=backend, background=scene3d.VIEW_BACKGROUND)
        except RuntimeError as e:
            print(f"{backend:8s} unavailable: {e}")
            return
    orbit = api.OrbitCamera(cam)
    orbit.reset(scene.centre())
    meshes = [(r.vertices, r.faces, c / 255 if c.max() > 1 else c) for r, c in zip(results, colors)]
    big, small = renderers[(1280, 720)], renderers[(640, 360)]

    def before(k: int) -> None:
        orbit.orbit(3, 0)
        big._geometry = None  # the old path: geometry handed over again on every step
        big.render(meshes, cam, orbit.view_matrix())

    def full(k: int, r=big, size=(1280, 720)) -> None:
        orbit.orbit(3, 0)
        api.render_scene(r, scene, orbit.view_camera(size, scene))

    rows = [("before (meshes only)", before), ("scene, full 1280x720", full),
            ("scene, dragging 640x360", lambda k: full(k, small, (640, 360)))]
    for name, fn in rows:
        w, c = timed(fn, steps)
        print(f"{backend:8s} {name:28s} {w:8.0f} {c:8.0f}")
    for r in renderers.values():
        r.close()

if __name__ == "__main__":
    main()
