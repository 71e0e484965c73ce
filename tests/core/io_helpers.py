"""Shared builders for the io tests (tests/core/test_io_*.py)."""

from __future__ import annotations

import numpy as np
import trimesh

from dpmesh_core.types import BodyParams, Camera, MeshResult


def make_result(seed=0, offset=(0.0, 0.0, 3.0), track_id=None) -> MeshResult:
    rng = np.random.default_rng(seed)
    s = trimesh.creation.icosphere(subdivisions=2, radius=0.25)
    params = BodyParams("smpl", rng.normal(size=3) * 0.1, rng.normal(size=69) * 0.1, rng.normal(size=10),
                        np.array(offset), extra={"vposer_z": rng.normal(size=32).astype(np.float32)})
    cam = Camera.default_for(640, 480)
    j3 = rng.normal(size=(24, 3)).astype(np.float32) * 0.3 + np.array(offset, np.float32)
    j2 = j3[:, :2] / j3[:, 2:] * cam.focal[0] + np.array(cam.principal)
    return MeshResult(vertices=s.vertices + np.array(offset), faces=s.faces, joints3d=j3, joints2d=j2,
                      joint_set="smpl24", params=params, camera=cam, keypoints2d=rng.uniform(0, 400, (17, 2)),
                      estimator="fit", loss=0.25, track_id=track_id)
