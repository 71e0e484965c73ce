"""Every photo in ../shared/media: detect, fit, and measure how well each mesh's re-projected key-points land
on the visible detected key-points. Prints figures; asserts nothing.

    .venv/bin/python tests/bench/bench_photos.py
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
os.environ.setdefault("DPMESH_HOME", str(REPO / ".dpmesh-home"))


def main() -> None:
    from dpmesh_core import api
    from dpmesh_core.types import MeshResult

    det = api.get_detector("yolo")
    est = api.make_estimator("fit")
    rel, n_persons, n_meshes, times = [], 0, 0, []
    for path in sorted((REPO.parent / "shared" / "media").glob("*.jpg")):
        img = api.read_image(path)
        persons = det.detect(img)
        t = time.perf_counter()
        results = api.estimate(img, persons, est)
        times.append((time.perf_counter() - t) / max(len(persons), 1))
        per = []
        for p, r in zip(persons, results):
            if not isinstance(r, MeshResult):
                print(f"  {path.name}: {r}")
                continue
            e = np.linalg.norm(r.keypoints2d[p.visible] - p.keypoints[p.visible, :2], axis=1)
            per.append(float(np.median(e)))
            rel.append(float(np.median(e)) / float(p.box[3] - p.box[1]))
        n_persons += len(persons)
        n_meshes += len(per)
        print(f"{path.name}: {len(persons)} persons, {len(per)} meshes, median visible-joint error px "
              f"{[round(x, 1) for x in per]}")
    print(f"total: {n_persons} persons, {n_meshes} meshes; per-person median re-projection error "
          f"{statistics.median(rel) * 100:.2f}% of box height "
          f"(90th percentile {np.percentile(rel, 90) * 100:.2f}%); cold fit {1000 * statistics.median(times):.0f} ms "
          f"per person (median over photos, all persons of a photo in one batch)")


if __name__ == "__main__":
    main()
