"""End to end on ../shared/media/street.avi: detect + track + fit every person, frames per second.

Prints figures; asserts nothing. Usage:
    .venv/bin/python tests/bench/bench_pipeline.py [--frames 40] [--video PATH]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

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
    from dpmesh_core.types import Camera

    t0 = time.perf_counter()
    detector = api.get_detector("yolo")
    estimator = api.make_estimator("fit")
    print(f"setup (detector + Anny fitter): {time.perf_counter() - t0:.2f} s; torch threads {torch.get_num_threads()}")

    media = api.open_media(args.video)
    w, h = media.size
    cam = Camera.default_for(w, h)
    tracker = api.Tracker()
    prev: dict[int, object] = {}
    t_read, t_det, t_fit, n_persons, n_fail = [], [], [], [], 0
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
        for p, r in zip(persons, res):
            if isinstance(r, EstimationError):
                n_fail += 1
            else:
                prev[p.track_id] = r
        t_read.append(b - a)
        t_det.append(c - b)
        t_fit.append(d - c)
        n_persons.append(len(persons))
    wall = time.perf_counter() - wall
    media.close()
    med = statistics.median
    print(f"video {Path(args.video).name}: {w}x{h}, {n} frames")
    print(f"persons per frame: median {med(n_persons)}, max {max(n_persons)}; failed fits {n_fail}")
    print(f"median ms per frame: read {1000 * med(t_read):.1f}, detect {1000 * med(t_det):.1f}, "
          f"fit (all persons) {1000 * med(t_fit):.1f}")
    per_person = [f / max(k, 1) for f, k in zip(t_fit, n_persons) if k]
    if per_person:
        print(f"median fit ms per person (warm-started from the previous frame): {1000 * med(per_person):.1f}")
    print(f"end to end: {n / wall:.2f} frames/s ({wall:.1f} s for {n} frames)")


if __name__ == "__main__":
    main()
