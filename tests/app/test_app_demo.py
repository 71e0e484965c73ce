"""The demo scene the app opens without a file: built from the Anny body model, cached, deterministic."""

from __future__ import annotations

import time

import numpy as np

from dpmesh_core import api
from dpmesh_core.demo import _cache_path


def test_demo_scene_two_people_one_occluded_and_cached():
    size, seed = (480, 360), 3
    path = _cache_path(size, seed)
    if path.exists():
        path.unlink()  # build it for real (Anny + renderer), then read it back from the cache
    image, persons = api.demo_scene(size=size, seed=seed)
    assert image.shape == (360, 480, 3) and image.dtype == np.uint8
    assert len(persons) == 2 and path.exists()
    front, back = persons
    assert front.visible.sum() >= 15, "the front person is fully in view"
    assert 1 <= (~back.visible).sum() <= 12, "the person behind is partly hidden"
    for p in persons:
        assert p.keypoints.shape == (17, 3) and p.joint_set == "coco17"
        x0, y0, x1, y1 = p.box
        inside = (p.keypoints[:, 0] >= x0 - 1) & (p.keypoints[:, 0] <= x1 + 1) & (p.keypoints[:, 1] >= y0 - 1)
        assert inside.mean() > 0.9
    # the bodies are rendered: pixels inside the front box differ from the plain background's statistics
    fx0, fy0, fx1, fy1 = front.box.astype(int)
    assert image[fy0:fy1, fx0:fx1].std() > 10
    t0 = time.perf_counter()
    image2, persons2 = api.demo_scene(size=size, seed=seed)
    assert time.perf_counter() - t0 < 1.0  # from the cache
    assert np.array_equal(image, image2)
    assert all(np.array_equal(a.keypoints, b.keypoints) and np.array_equal(a.visible, b.visible)
               for a, b in zip(persons, persons2))
