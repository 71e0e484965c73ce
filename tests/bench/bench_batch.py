"""Batch prediction throughput on the shared photos: a plain run, ``--workers 1`` and ``--workers 2`` (forked
processes, each with its own models; the CPU threads shared out), and the Ray Data path (a local Ray with
``num_cpus`` = the machine's, 2 actors) against the local path on the same inputs.

Run: DPMESH_HOME=/tmp/dpmesh-bench .venv/bin/python tests/bench/bench_batch.py [--n 8] [--repeat 1] [--no-ray]
Prints wall times after a warm-up run (model loading included: it is part of what a batch costs), images/s
and the ratios side by side. Not a test: no assertions. On a 2-core machine expect little gain from 2 workers: both compete for the
same cores, and each loads its own models.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from benchkit import SHARED

from dpmesh_core import api
from dpmesh_core.batch import predict_batch


def timed(fn) -> float:
    t = time.perf_counter()
    for _ in fn():
        pass
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=8, help="number of shared photos (default 8)")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--no-ray", action="store_true")
    args = ap.parse_args()
    photos = sorted((SHARED / "media").glob("*.jpg"))[: args.n]
    opts = api.PredictOptions(formats=("npz",))
    print(f"{len(photos)} photos from {SHARED / 'media'}, {os.cpu_count()} CPUs, estimator fit/anny, npz output")
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        src = d / "in"
        src.mkdir()
        for p in photos:
            (src / p.name).symlink_to(p)
        k = 0

        def out() -> Path:
            nonlocal k
            k += 1
            return d / f"out{k}"

        warm = d / "warm"
        warm.mkdir()
        (warm / photos[0].name).symlink_to(photos[0])
        t = timed(lambda: api.predict(warm, out(), opts))  # one-time imports and caches: not part of a batch
        print(f"warm-up (imports, first model load, 1 photo): {t:.1f} s")
        rows: dict[str, list[float]] = {}
        ray_start = None
        for _ in range(args.repeat):
            rows.setdefault("plain api.predict", []).append(timed(lambda: api.predict(src, out(), opts)))
            rows.setdefault("--workers 1", []).append(timed(lambda: predict_batch(src, out(), opts, workers=1)))
            rows.setdefault("--workers 2", []).append(timed(lambda: predict_batch(src, out(), opts, workers=2)))
            if not args.no_ray:
                import ray

                from dpmesh_core.ray_predict import runner

                t = time.perf_counter()
                ray.init(num_cpus=os.cpu_count(), include_dashboard=False)
                ray_start = time.perf_counter() - t
                run = runner()  # uses the running local Ray; actors start (and import torch) inside the timing
                rows.setdefault("--ray, 2 actors", []).append(
                    timed(lambda run=run: predict_batch(src, out(), opts, workers=2, runner=run)))
                ray.shutdown()
        print(f"{'path':<20} {'wall s':>8} {'images/s':>9}")
        med = {name: statistics.median(v) for name, v in rows.items()}
        for name, s in med.items():
            print(f"{name:<20} {s:>8.1f} {len(photos) / s:>9.3f}")
        print(f"--workers 2 / --workers 1 throughput: {med['--workers 1'] / med['--workers 2']:.2f}x")
        print(f"--workers 1 / plain wall time (the part-folder overhead): {med['--workers 1'] / med['plain api.predict']:.2f}")
        if "--ray, 2 actors" in med:
            print(f"ray.init (local cluster start-up, not in the Ray row): {ray_start:.1f} s")
            print(f"Ray / local (--workers 2) wall time (actor start-up included): "
                  f"{med['--ray, 2 actors'] / med['--workers 2']:.2f}")


if __name__ == "__main__":
    main()
