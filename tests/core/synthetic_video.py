"""A synthetic multi-person video with known identities, rendered by the project (test helper).

Three Anny bodies walk across a 400x300 frame (f = 500 px, the DPMesh focal rule): A (z = 6 m) left to
right, B (z = 4 m, in front) right to left, so they cross and B occludes A in the middle; C (z = 8 m) walks
behind a pillar on the right and is hidden for several frames. Frames are rendered with the project's
z-buffer rasteriser (``dpmesh_core.io.render.rasterize``); a joint is visible when the nearest surface at
its pixel is its own body (within 0.3 m in front of the joint), not another body or the pillar.

``detections(frame)`` plays a key-point detector from the truth: COCO-17 key-points of every person with at
least ``min_visible`` visible joints, with pixel noise, invisible joints at confidence 0, a box around the
visible key-points, a score falling with occlusion, in a shuffled order (detections carry no identity).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from dpmesh_core.fit.synthetic import sample_body_pose
from dpmesh_core.geometry import axis_angle_to_matrix, matrix_to_axis_angle
from dpmesh_core.io.render import rasterize
from dpmesh_core.types import Camera, Person

W, H = 400, 300
CAMERA = Camera.default_for(W, H)  # f = 500 px
PILLAR = (250, 320)  # image columns of an occluding pillar 2 m from the camera

# (depth m, first centre column px, last centre column px, yaw rad)
PATHS = {0: (6.0, 30.0, 225.0, 0.5), 1: (4.0, 215.0, 25.0, -0.5), 2: (8.0, 372.0, 215.0, 0.35)}


@dataclass
class SyntheticVideo:
    frames: list[np.ndarray]                        # (H, W, 3) uint8 RGB
    keypoints: list[dict[int, np.ndarray]]          # frame -> {identity: (17, 2) projected COCO-17 joints}
    visible: list[dict[int, np.ndarray]]            # frame -> {identity: (17,) bool}
    seed: int = 0
    _rng: np.random.Generator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._rng = np.random.default_rng(self.seed)

    def detections(self, t: int, noise_px: float = 1.0, min_visible: int = 5) -> tuple[list[Person], list[int]]:
        """(persons in a shuffled order, their true identities)."""
        persons, ids = [], []
        for k, uv in self.keypoints[t].items():
            vis = self.visible[t][k]
            if int(vis.sum()) < min_visible:
                continue  # too occluded: a detector misses it
            kp = np.c_[uv + self._rng.normal(0, noise_px, uv.shape), np.where(vis, 0.9, 0.0)]
            box = Person.box_from_keypoints(kp, vis, pad=1.15)
            persons.append(Person(box=box, keypoints=kp, visible=vis, score=float(0.35 + 0.6 * vis.mean())))
            ids.append(k)
        order = self._rng.permutation(len(persons))
        return [persons[i] for i in order], [ids[i] for i in order]


def render_video(body, num_frames: int = 28, seed: int = 0) -> SyntheticVideo:
    """Render the scene (see the module docstring) with ``body`` (the Anny model)."""
    rng = np.random.default_rng(seed)
    f, (cx, cy) = CAMERA.focal[0], CAMERA.principal
    K = CAMERA.K
    faces = np.asarray(body.faces)
    flip = np.diag([1.0, -1.0, -1.0])
    n = len(PATHS)
    pose = sample_body_pose(body, n, rng, pose_scale=0.3)
    betas = body.mean_betas(n).float()
    go = np.stack([matrix_to_axis_angle(axis_angle_to_matrix(np.array([0.0, PATHS[k][3], 0.0])) @ flip)
                   for k in range(n)])
    with torch.no_grad():
        rest = body(torch.as_tensor(go, dtype=torch.float32), pose, betas, torch.zeros(n, 3),
                    joint_sets=("coco17",), return_vertices=True)
    joints0, verts0 = rest.joints["coco17"].numpy().astype(np.float64), rest.vertices.numpy().astype(np.float64)
    colours = [(0.85, 0.45, 0.35), (0.35, 0.55, 0.85), (0.45, 0.8, 0.4)]
    frames, kps, viss = [], [], []
    yy, xx = np.mgrid[0:H, 0:W]
    background = (110 + 40 * np.sin(xx / 37.0) + 30 * np.cos(yy / 23.0)).astype(np.uint8)
    for t in range(num_frames):
        meshes, joints = [], {}
        for k in range(n):
            z, u0, u1, _ = PATHS[k]
            u = u0 + (u1 - u0) * t / (num_frames - 1)
            c = joints0[k].mean(0)
            shift = np.array([(u - cx) / f * z, (150 - cy) / f * z, z]) - c
            meshes.append((verts0[k] + shift, faces, colours[k]))
            joints[k] = joints0[k] + shift
        rgb, mask, depth = rasterize(meshes, K, W, H, background=(0.5, 0.5, 0.5))
        img = np.where(mask[..., None], rgb, np.repeat(background[..., None], 3, 2)).astype(np.uint8)
        img[:, PILLAR[0]:PILLAR[1]] = (90, 70, 60)
        depth = depth.copy()
        depth[:, PILLAR[0]:PILLAR[1]] = 2.0
        kp_t, vis_t = {}, {}
        for k, j3 in joints.items():
            uv = j3[:, :2] / j3[:, 2:3] * f + np.array([cx, cy])
            ui = np.round(uv).astype(int)
            inside = (ui[:, 0] >= 0) & (ui[:, 0] < W) & (ui[:, 1] >= 0) & (ui[:, 1] < H)
            vis = np.zeros(len(j3), bool)
            d = depth[np.clip(ui[:, 1], 0, H - 1), np.clip(ui[:, 0], 0, W - 1)]
            vis[inside] = ((d == 0) | (d >= j3[:, 2] - 0.3))[inside]
            kp_t[k], vis_t[k] = uv, vis
        frames.append(img)
        kps.append(kp_t)
        viss.append(vis_t)
    return SyntheticVideo(frames, kps, viss, seed=seed)
