"""The demo scene the app opens when no file is given: built by the project, no downloads, no licences.

Two people rendered from the Anny body model (``body.load_body_model("anny")``) with ``io.render``'s
``MeshRenderer`` over a procedural room (a floor and a wall gradient). The front person partly hides the
one behind. The persons returned are what a perfect detector would see: COCO-17 key-points projected from
the model's own COCO regressor, with the joints hidden behind the other person marked ``visible=False``
(confidence 0.35), and boxes around the projected bodies.

The scene is deterministic, so it is cached under ``paths.cache_dir("demo")`` (an ``.npz``): the second
start is instant.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import numpy as np

from .paths import cache_dir
from .types import Camera, Person

log = logging.getLogger(__name__)

DEMO_VERSION = 1
FLOOR_Y = 1.1  # metres below the camera centre (camera frame: y down)


def _background(width: int, height: int, horizon: float) -> np.ndarray:
    """(H, W, 3) uint8: a warm wall gradient above ``horizon`` (pixels) and a tiled floor below it."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    t = np.clip(yy / max(horizon, 1.0), 0, 1)[..., None]
    wall = (1 - t) * np.array([205, 214, 226], np.float32) + t * np.array([168, 160, 150], np.float32)
    # soft vignette on the wall
    cx, cy = width / 2, horizon * 0.6
    r = np.hypot((xx - cx) / width, (yy - cy) / height)[..., None]
    wall = wall * (1.0 - 0.25 * r)
    # floor: perspective checker (tiles of 0.5 m) seen by a level camera FLOOR_Y above it
    below = np.maximum(yy - horizon, 1.0)
    f = float(np.hypot(width, height))
    z = FLOOR_Y * f / below  # depth of the floor point seen at this row
    x = (xx - width / 2) * z / f
    checker = ((np.floor(x / 0.5) + np.floor(z / 0.5)) % 2).astype(np.float32)[..., None]
    fog = np.clip(z / 25.0, 0, 1)[..., None]
    floor = (0.82 + 0.1 * checker) * np.array([150, 128, 104], np.float32)
    floor = (1 - fog) * floor + fog * np.array([168, 160, 150], np.float32)
    img = np.where(yy[..., None] < horizon, wall, floor)
    return np.clip(img, 0, 255).astype(np.uint8)


def _pose(body, spec: dict[str, tuple[float, float, float]]) -> np.ndarray:
    """(pose_dim,) body pose from {SMPL-like joint name: axis-angle (3,) radians} (others 0)."""
    from .body.anny_model import ANNY_POSE_BONES

    pose = np.zeros(body.pose_dim, np.float32)
    names = [n for _, n in ANNY_POSE_BONES]
    for name, aa in spec.items():
        i = names.index(name)
        pose[3 * i: 3 * i + 3] = aa
    return pose


def _people(seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    j = lambda s=0.05: float(rng.normal(0, s))  # noqa: E731 - small jitter per seed
    return [
        {  # behind, walking, to the right
            "betas": [0.8 + j(), 0.45, 0.5, 0.45, 0.55 + j(), 0.5],
            "pose": {"L_Hip": (-0.35 + j(), 0, 0), "R_Hip": (0.3, 0, 0), "R_Knee": (0.55, 0, 0),
                     "L_Shoulder": (0.35, 0, 0.15), "R_Shoulder": (-0.35, 0, -0.15), "L_Elbow": (0, 0, 0.3),
                     "Head": (0.1, 0.2, 0)},
            "yaw": -0.35 + j(), "x": 0.05, "z": 6.4, "color": (0.36, 0.52, 0.78),
        },
        {  # in front, waving, partly hiding the other one
            "betas": [0.25 + j(), 0.5, 0.55, 0.5, 0.5 + j(), 0.5],
            "pose": {"R_Shoulder": (-0.2, 0, -1.7), "R_Elbow": (0, 0.5, -1.0), "L_Shoulder": (-0.5, 0, 0.1),
                     "L_Elbow": (0, -0.9, 0), "L_Knee": (0.25, 0, 0), "Torso": (0.05, 0.15, 0)},
            "yaw": 0.3 + j(), "x": -0.2, "z": 4.6, "color": (0.84, 0.45, 0.32),
        },
    ]


def _rot_x_pi_then_yaw(yaw: float) -> np.ndarray:
    """(3,) axis-angle of R = R_y(yaw) · R_x(π): upright in the OpenCV camera frame, turned by ``yaw``."""
    from scipy.spatial.transform import Rotation

    return (Rotation.from_rotvec([0, yaw, 0]) * Rotation.from_rotvec([np.pi, 0, 0])).as_rotvec().astype(np.float32)


def build_demo_scene(size: tuple[int, int] = (960, 720), seed: int = 0) -> tuple[np.ndarray, list[Person]]:
    """Render the scene (needs torch + Anny; a second or two once Anny's cache exists)."""
    import torch

    from .body import load_body_model
    from .io.render import MeshRenderer

    width, height = int(size[0]), int(size[1])
    cam = Camera.default_for(width, height)
    body = load_body_model("anny")
    faces = np.asarray(body.faces, np.int32)
    meshes, kps = [], []
    for spec in _people(seed):
        with torch.no_grad():
            out = body(torch.as_tensor(_rot_x_pi_then_yaw(spec["yaw"]))[None],
                       torch.as_tensor(_pose(body, spec["pose"]))[None],
                       torch.as_tensor(np.asarray(spec["betas"], np.float32))[None],
                       torch.zeros(1, 3), joint_sets=("coco17",), return_vertices=True)
        v = out.vertices[0].double().numpy()
        k = out.joints["coco17"][0].double().numpy()
        shift = np.array([spec["x"], FLOOR_Y - v[:, 1].max(), spec["z"]])  # feet on the floor
        meshes.append(((v + shift).astype(np.float32), faces, spec["color"]))
        kps.append(k + shift)
    horizon = cam.principal[1]  # a level camera: the horizon is the image centre row
    bg = _background(width, height, horizon)
    renderer = MeshRenderer(width, height)
    try:
        rgb, mask, _ = renderer.render_with_mask(meshes, cam)
        depths = [renderer.render_with_mask([m], cam)[2] for m in meshes]
    finally:
        renderer.close()
    image = np.where(mask[..., None], rgb, bg).astype(np.uint8)
    persons = []
    K = cam.K
    for i, k3 in enumerate(kps):
        uvw = k3 @ K.T
        uv = uvw[:, :2] / uvw[:, 2:3]
        vis = np.ones(len(uv), bool)
        for o, d in enumerate(depths):
            if o == i:
                continue
            px = np.clip(np.round(uv).astype(int), 0, [width - 1, height - 1])
            od = d[px[:, 1], px[:, 0]]
            vis &= ~((od > 0) & (od < k3[:, 2] - 0.05))  # the other body is in front of this joint
        inside = (uv[:, 0] >= 0) & (uv[:, 0] < width) & (uv[:, 1] >= 0) & (uv[:, 1] < height)
        vis &= inside
        conf = np.where(vis, 0.92, 0.35).astype(np.float32)
        kp = np.concatenate([uv, conf[:, None]], 1).astype(np.float32)
        v2 = meshes[i][0].astype(np.float64) @ K.T
        v2 = v2[:, :2] / v2[:, 2:3]
        lo, hi = v2.min(0), v2.max(0)
        box = np.concatenate([np.maximum(lo - 6, 0), np.minimum(hi + 6, [width - 1, height - 1])]).astype(np.float32)
        persons.append(Person(box=box, keypoints=kp, visible=vis, score=0.99, source="detector"))
    # the front person first, as a detector sorted by area would list it
    persons = [persons[1], persons[0]]
    return image, persons


def _cache_path(size: tuple[int, int], seed: int) -> Path:
    return cache_dir("demo") / f"demo_v{DEMO_VERSION}_{int(size[0])}x{int(size[1])}_seed{seed}.npz"


def demo_scene(size: tuple[int, int] = (960, 720), seed: int = 0) -> tuple[np.ndarray, list[Person]]:
    """The demo scene: (image RGB uint8 (H, W, 3), [Person, Person]) — built once, then read from cache."""
    path = _cache_path(size, seed)
    if path.exists():
        try:
            with np.load(path) as z:
                image = z["image"]
                persons = [Person(box=z["boxes"][i], keypoints=z["keypoints"][i], visible=z["visible"][i],
                                  score=0.99, source="detector") for i in range(len(z["boxes"]))]
            if image.shape == (int(size[1]), int(size[0]), 3):
                return image, persons
        except (OSError, KeyError, ValueError) as e:
            log.warning("demo cache %s unreadable (%s); rebuilding", path, e)
    image, persons = build_demo_scene(size, seed)
    fd, tmp = tempfile.mkstemp(suffix=".npz", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez_compressed(f, image=image, boxes=np.stack([p.box for p in persons]),
                                keypoints=np.stack([p.keypoints for p in persons]),
                                visible=np.stack([p.visible for p in persons]))
        os.replace(tmp, path)
    except OSError as e:
        log.warning("cannot cache the demo scene at %s: %s", path, e)
        if os.path.exists(tmp):
            os.unlink(tmp)
    return image, persons
