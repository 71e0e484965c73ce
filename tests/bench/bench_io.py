"""io benchmarks (prints medians; no assertions). Run:
    DPMESH_HOME=$PWD/.dpmesh-home .venv/bin/python tests/bench/bench_io.py
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import trimesh

from dpmesh_core.io import MeshRenderer, VideoReader, read_image, read_keypoints, write_coco_keypoints
from dpmesh_core.types import Camera, Person

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from shared_data import MEDIA  # noqa: E402  (tests/ on the path above)


def median_time(fn, n=5, warmup=1):
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def body_like_mesh():
    """~14k-vertex ellipsoid the size of a standing person, 4 m in front of the camera."""
    s = trimesh.creation.uv_sphere(radius=1.0, count=[84, 84])
    v = s.vertices * np.array([0.28, 0.85, 0.16]) + np.array([0.1, 0.0, 4.0])
    return v, s.faces


def main():
    v, f = body_like_mesh()
    W, H = 1280, 800
    cam = Camera.default_for(W, H)
    print(f"mesh: {len(v)} vertices, {len(f)} faces; image {W}x{H} ({W * H / 1e6:.2f} MP)")
    npr = MeshRenderer(W, H, backend="numpy")
    t_np = median_time(lambda: npr.render_with_mask([(v, f, (0.6, 0.7, 1.0))], cam))
    cover = npr.render_with_mask([(v, f, (0.6, 0.7, 1.0))], cam)[1].mean()
    print(f"numpy rasteriser: median {t_np * 1000:.0f} ms per render (mesh covers {cover * 100:.1f} % of the image)")
    t0 = time.perf_counter()
    o3r = MeshRenderer(W, H, backend="open3d")
    t_create = time.perf_counter() - t0
    t_o3 = median_time(lambda: o3r.render_with_mask([(v, f, (0.6, 0.7, 1.0))], cam))
    print(f"open3d headless: create {t_create * 1000:.0f} ms, median {t_o3 * 1000:.0f} ms per render "
          f"(numpy/open3d ratio {t_np / t_o3:.2f})")
    o3r.close()

    imgs = sorted(MEDIA.glob("*.jpg"))
    t_img = median_time(lambda: [read_image(p) for p in imgs], n=3) / len(imgs)
    print(f"read_image: median {t_img * 1000:.1f} ms per COCO photo ({len(imgs)} photos)")

    with VideoReader(MEDIA / "street.avi") as r:
        t = time.perf_counter()
        for i in range(50):
            r.read(i)
        t_seq = (time.perf_counter() - t) / 50
        rng = np.random.default_rng(0)
        idx = rng.integers(0, r.num_frames, 10)
        t = time.perf_counter()
        for i in idx:
            r.read(int(i))
        t_rand = (time.perf_counter() - t) / len(idx)
    print(f"street.avi 1280x720 h264: sequential {t_seq * 1000:.1f} ms/frame, random seek {t_rand * 1000:.1f} ms/frame "
          f"(ratio {t_rand / t_seq:.1f})")

    rng = np.random.default_rng(1)
    frames = {i: [Person(box=[0, 0, 100, 200], keypoints=np.c_[rng.uniform(0, 100, (17, 2)), rng.uniform(0.1, 1, 17)])
                  for _ in range(5)] for i in range(1000)}
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "k.json"
        t_w = median_time(lambda: write_coco_keypoints(p, frames), n=3)
        t_r = median_time(lambda: read_keypoints(p), n=3)
    print(f"COCO key-points, 1000 frames x 5 persons: write {t_w * 1000:.0f} ms, read {t_r * 1000:.0f} ms")


if __name__ == "__main__":
    main()
