"""End to end on ../shared/media/street.avi: detect + track + fit every person + temporal smoothing (the
``dpmesh predict`` default on video), frames per second; and how much the smoothing steadies the motion
(mean root-relative joint acceleration per track, before and after).

Prints figures; asserts nothing. Usage:
    .venv/bin/python tests/bench/bench_pipeline.py [--frames 40] [--video PATH]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
os.environ.setdefault("DPMESH_HOME", str(REPO / ".dpmesh-home"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--video", default=str(REPO.parent / "shared" / "media" / "street.avi"))
    ap.add_argument("--frames", type=int, default=40)
    args = ap.parse_args()

    import torch

    from dpmesh_core import api
    from dpmesh_core.errors import EstimationError
    from dpmesh_core.fit import StreamingSmoother
    from dpmesh_core.types import Camera, MeshResult

    t0 = time.perf_counter()
    detector = api.get_detector("yolo")
    estimator = api.make_estimator("fit")
    print(f"setup (detector + Anny fitter): {time.perf_counter() - t0:.2f} s; torch threads {torch.get_num_threads()}")

    media = api.open_media(args.video)
    w, h = media.size
    cam = Camera.default_for(w, h)
    tracker = api.Tracker()
    prev: dict[int, object] = {}
    smoother = StreamingSmoother(estimator, sigma=1.5)
    raw: list[list] = []
    smoothed: list[list] = []
    t_read, t_det, t_fit, t_smooth, n_persons, n_fail = [], [], [], [], [], 0
    n = min(args.frames, media.num_frames)
    wall = time.perf_counter()
    for i in range(n):
        a = time.perf_counter()
        img = media.frame(i)
        b = time.perf_counter()
        persons = tracker.update(detector.detect(img))
        c = time.perf_counter()
        previous = [prev.get(p.track_id) for p in persons]
        res = estimator.estimate(img, persons, camera=cam, previous=previous) if persons else []
        d = time.perf_counter()
        smoothed += [r for _, _, r in smoother.push(i, persons, res)]
        t_smooth.append(time.perf_counter() - d)
        raw.append(res)
        for p, r in zip(persons, res):
            if isinstance(r, EstimationError):
                n_fail += 1
            else:
                prev[p.track_id] = r
        t_read.append(b - a)
        t_det.append(c - b)
        t_fit.append(d - c)
        n_persons.append(len(persons))
    smoothed += [r for _, _, r in smoother.flush()]
    wall = time.perf_counter() - wall
    media.close()
    med = statistics.median
    print(f"video {Path(args.video).name}: {w}x{h}, {n} frames")
    print(f"persons per frame: median {med(n_persons)}, max {max(n_persons)}; failed fits {n_fail}")
    print(f"median ms per frame: read {1000 * med(t_read):.1f}, detect {1000 * med(t_det):.1f}, "
          f"fit (all persons) {1000 * med(t_fit):.1f}, smoothing {1000 * med(t_smooth):.1f}")
    per_person = [f / max(k, 1) for f, k in zip(t_fit, n_persons) if k]
    if per_person:
        print(f"median fit ms per person (warm-started from the previous frame): {1000 * med(per_person):.1f}")
    print(f"end to end: {n / wall:.2f} frames/s ({wall:.1f} s for {n} frames)")

    def jerk(frames: list[list]) -> float:
        tracks: dict = {}
        for t, rs in enumerate(frames):
            for r in rs:
                if isinstance(r, MeshResult) and r.track_id is not None:
                    tracks.setdefault(r.track_id, {})[t] = r.joints3d - r.joints3d.mean(0)
        acc = [np.linalg.norm(s[t + 1] - 2 * s[t] + s[t - 1], axis=1).mean() for s in tracks.values() for t in s
               if t - 1 in s and t + 1 in s]
        return 1000 * float(np.mean(acc)) if acc else float("nan")

    print(f"mean root-relative joint acceleration per track: {jerk(raw):.1f} mm/frame² warm-started, "
          f"{jerk(smoothed):.1f} mm/frame² smoothed (σ 1.5 frames)")


if __name__ == "__main__":
    main()
