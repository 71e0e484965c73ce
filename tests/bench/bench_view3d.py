"""Benchmark of the 3-D view (issue 17; printed, never asserted): one frame of 10 persons (6,890-vertex
synthetic SMPL bodies, 13,776 faces) at 1280x720, per renderer backend, "before" and "new" side by side in one
run:

* "before": ``render_scene`` as it was until the speed work: meshes through ``render_with_mask`` (blake2b digest
  of every array, float colour capture, depth capture), grid / axes / frustum / photo drawn in numpy
  (``scene3d.render_scene_numpy_lines``);
* "new, full": ``api.render_scene``: the lines as GL geometry kept between frames, byte read-back, no depth unless
  the frustum's photo is in view, the persons at full detail;
* "new, LOD": the same with ``lod=True`` (each person drawn with its topology's reduced face list, about 1,500
  faces: what the view draws while the camera moves or a video plays), same 1280x720 size;
* "LOD at 640x360": for comparison only (a half-resolution drag mode, which the app does not use);
* orbit rows: the camera turns 3° a step (the geometry is unchanged); playback rows: every step brings new
  vertices for all 10 persons (a video's next frame; Open3D updates its kept meshes in place); "top view" rows:
  the bird's-eye preset with the frustum's photo in view (its depth read-back included).

Wall time and the process's CPU time (llvmpipe's threads included; less sensitive to other processes on a
shared machine) are medians over the steps, with the load average before and after. Target: ≤ 33 ms per frame.

Run:  OMP_NUM_THREADS=1 .venv/bin/python tests/bench/bench_view3d.py [--steps N] [--backend open3d|numpy|both]
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
    return statistics.median(wall) * 1000, statistics.median(cpu) * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--backend", default="both", choices=("open3d", "numpy", "both"))
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
    print(f"{'backend':8s} {'what':44s} {'wall ms':>8s} {'CPU ms':>8s}")
    for backend in (("open3d", "numpy") if args.backend == "both" else (args.backend,)):
        bench_backend(backend, scene, args.steps if backend == "open3d" else max(3, args.steps // 3))
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    from benchkit import cpu_reference

    print(cpu_reference())


def bench_backend(backend: str, scene, steps: int) -> None:
    import dataclasses

    from dpmesh_core import api
    from dpmesh_core.io import scene3d

    try:
        r = api.MeshRenderer(1280, 720, backend=backend, background=scene3d.VIEW_BACKGROUND)
    except RuntimeError as e:
        print(f"{backend:8s} unavailable: {e}")
        return
    size = (1280, 720)
    orbit = api.OrbitCamera(scene.photo_camera)
    orbit.reset(scene.centre())
    top = api.OrbitCamera(scene.photo_camera)
    top.set_preset("top", scene, size)
    for v, f, _ in scene3d.scene_meshes(scene)[:1]:
        api.lod_levels(v, f)  # every reduced face list of the topology, computed once (not timed)
    # a video's frames: every person moves a little each frame (new arrays, same faces)
    frames = [dataclasses.replace(scene, persons=tuple(
        dataclasses.replace(p, vertices=(p.vertices + np.float32([0.01 * k, 0, 0.004 * k])).astype(np.float32))
        for p in scene.persons)) for k in range(steps)]

    def orbiting(fn):
        def step(k: int) -> None:
            orbit.orbit(3, 0)
            fn(scene, orbit.view_camera(size, scene))
        return step

    def playing(fn):
        vc = orbit.view_camera(size, scene)
        return lambda k: fn(frames[k % len(frames)], vc)

    def top_view(fn):
        def step(k: int) -> None:
            top.orbit(1, 0)
            fn(scene, top.view_camera(size, scene))
        return step

    def before(sc, vc):
        scene3d.render_scene_numpy_lines(r, sc, vc)

    def new_full(sc, vc):
        api.render_scene(r, sc, vc)

    def new_lod(sc, vc):
        api.render_scene(r, sc, vc, lod=True)

    budget = api.LodBudget()  # the app's (scene3d.FRAME_BUDGET_S)
    budget_ms = round(budget.budget_s * 1000)

    def new_budget(sc, vc):
        api.render_scene(r, sc, vc, lod=True, budget=budget)

    rows = [("orbit      before (full detail)", orbiting(before)),
            ("orbit      new, full detail", orbiting(new_full)),
            ("orbit      new, LOD", orbiting(new_lod)),
            (f"orbit      new, LOD + {budget_ms} ms budget (the app)", orbiting(new_budget)),
            ("playback   before (full detail)", playing(before)),
            ("playback   new, full detail", playing(new_full)),
            ("playback   new, LOD", playing(new_lod)),
            (f"playback   new, LOD + {budget_ms} ms budget (the app)", playing(new_budget)),
            ("top view   before (full detail, photo)", top_view(before)),
            ("top view   new, full detail (photo: depth)", top_view(new_full)),
            ("top view   new, LOD (photo: depth)", top_view(new_lod))]
    for name, fn in rows:
        fn(0)  # a first frame of this kind (geometry uploaded once; not timed)
        if "budget" in name:
            settled = 0
            for k in range(100):  # the budget settles on its level first (not timed)
                before = budget.coarser
                fn(k)
                settled = settled + 1 if budget.coarser == before else 0
                if settled >= 6:
                    break
        w, c = timed(fn, steps)
        extra = ""
        if "LOD" in name:
            vc = (top if name.startswith("top") else orbit).view_camera(size, scene)
            chosen = scene3d.lod_meshes(scene3d.scene_meshes(scene), len(scene.persons), vc=vc,
                                        coarser=budget.coarser if "budget" in name else 0)
            faces = [len(f) for _, f, _ in chosen[:len(scene.persons)]]
            extra = f"   faces/person {min(faces)}-{max(faces)}"
        print(f"{backend:8s} {name:44s} {w:8.1f} {c:8.1f}{extra}")
    r.close()
    # for comparison only, NOT the 1280x720 figure: reduced detail at half resolution (a drag mode the app
    # does not use; it would be upscaled on screen)
    half = api.MeshRenderer(640, 360, backend=backend, background=scene3d.VIEW_BACKGROUND)

    def half_lod(k: int) -> None:
        orbit.orbit(3, 0)
        api.render_scene(half, scene, orbit.view_camera((640, 360), scene), lod=True)

    half_lod(0)
    w, c = timed(half_lod, steps)
    print(f"{backend:8s} {'orbit      LOD at 640x360 (not 1280x720)':44s} {w:8.1f} {c:8.1f}")
    half.close()


if __name__ == "__main__":
    main()
