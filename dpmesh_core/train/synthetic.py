"""Synthetic training / benchmark data: the body model rendered in varied poses, shapes and cameras over
backgrounds, with occluders (objects and other people), written in the project's annotation format with
full ground truth.

Per image: a pinhole camera with the DPMesh focal rule (f = √(W² + H²), principal point at the centre);
1..``max_persons`` bodies with random shape (betas ~ N(0, 1), clipped to ±2), random pose (Gaussian
around the rest pose, scaled by the body model's pose spread, clipped to its joint limits), random yaw,
placed 3–7 m in front of the camera; a background (gradients, noise and random shapes, or a random crop
of a user photo); and with probability ``occluder_prob`` 1–2 random objects (rectangles / ellipses) in
front of the people.

Ground truth per person: ``params`` (global_orient, body_pose, betas, transl in the camera frame),
``joints3d`` (SMPL-30, camera frame, metres), 2-D ``keypoints`` = the pinhole projections of ``joints3d``
(confidence 1 for every joint: all are known), and ``visible`` = the joint projects inside the image onto
a pixel the person itself owns in the rendered id-map (not covered by an object or a nearer person).

Rendering is a small painter's-algorithm rasteriser (triangles sorted far to near, Lambert shading,
``cv2.fillConvexPoly``) that also produces the id-map needed for visibility.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from ..body.base import BodyModel
from ..geometry import axis_angle_to_matrix, dpmesh_focal, matrix_to_axis_angle, project
from .datasets import ImageRecord, PersonAnnotation, write_annotations

log = logging.getLogger(__name__)

_OBJECT_ID = 255  # id-map value of object occluders; persons are 1..N, background 0


def procedural_background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """(H, W, 3) uint8: a random two-colour gradient + low-frequency noise + a few random shapes."""
    import cv2

    c0, c1 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    ang = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    t = (np.cos(ang) * xx / width + np.sin(ang) * yy / height)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    img = (c0[None, None] * (1 - t[..., None]) + c1[None, None] * t[..., None]).astype(np.float32)
    small = rng.normal(0, 25, (max(height // 16, 2), max(width // 16, 2), 3)).astype(np.float32)
    img += cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
    img = np.clip(img, 0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(2, 7))):
        col = tuple(int(v) for v in rng.integers(0, 256, 3))
        cx, cy = int(rng.integers(0, width)), int(rng.integers(0, height))
        if rng.random() < 0.5:
            w, h = int(rng.integers(5, width // 3 + 6)), int(rng.integers(5, height // 3 + 6))
            cv2.rectangle(img, (cx - w // 2, cy - h // 2), (cx + w // 2, cy + h // 2), col, -1)
        else:
            cv2.circle(img, (cx, cy), int(rng.integers(4, min(width, height) // 5 + 5)), col, -1)
    return img


def photo_background(path: str | os.PathLike, rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A random crop of a user photo resized to (H, W, 3) uint8."""
    import cv2

    from ..io.images import read_image

    img = read_image(path)
    H, W = img.shape[:2]
    s = rng.uniform(0.5, 1.0)
    cw, ch = max(int(W * s), 8), max(int(H * s), 8)
    x0 = int(rng.integers(0, W - cw + 1))
    y0 = int(rng.integers(0, H - ch + 1))
    return cv2.resize(img[y0:y0 + ch, x0:x0 + cw], (width, height), interpolation=cv2.INTER_AREA)


def rasterize(
    img: np.ndarray, idmap: np.ndarray, depth: np.ndarray, verts_cam: np.ndarray, faces: np.ndarray,
    focal: float, principal: tuple[float, float], color: np.ndarray, ident: int,
) -> None:
    """Draw a mesh into ``img`` (H, W, 3) uint8, ``idmap`` (H, W) uint8 and ``depth`` (H, W) float32 in
    place, with a per-triangle depth test against ``depth`` (painter's order within the mesh).

    verts_cam (V, 3) camera frame metres (z > 0 forward); faces (F, 3); color (3,) base RGB.
    """
    import cv2

    H, W = idmap.shape
    uv = project(verts_cam, focal, principal)
    tri = verts_cam[faces]  # (F,3,3)
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
    centre = tri.mean(1)
    facing = (n * centre).sum(1) < 0  # normal points toward the camera
    z = centre[:, 2]
    tuv = uv[faces]
    on = facing & (z > 0.1) & (tuv[..., 0].max(1) >= 0) & (tuv[..., 0].min(1) < W) \
        & (tuv[..., 1].max(1) >= 0) & (tuv[..., 1].min(1) < H)
    idx = np.nonzero(on)[0]
    idx = idx[np.argsort(-z[idx])]  # far to near
    light = np.array([0.3, -0.5, -0.8])
    light /= np.linalg.norm(light)
    shade = 0.35 + 0.65 * np.clip(n @ light, 0, 1)  # light: direction from the surface toward the lamp
    pts_all = np.round(tuv * 4).astype(np.int32)  # 2 bits of sub-pixel precision
    cols = np.clip(color[None, :] * shade[:, None], 0, 255).astype(int).tolist()
    cxy = np.clip(tuv.mean(1), 0, [W - 1, H - 1]).astype(int)
    zs = z.tolist()
    for f in idx.tolist():
        pts = pts_all[f]
        if depth[cxy[f, 1], cxy[f, 0]] < zs[f] - 0.05:  # something clearly nearer is already there
            continue
        cv2.fillConvexPoly(img, pts, cols[f], lineType=cv2.LINE_8, shift=2)
        cv2.fillConvexPoly(idmap, pts, int(ident), lineType=cv2.LINE_8, shift=2)
        cv2.fillConvexPoly(depth, pts, zs[f], lineType=cv2.LINE_8, shift=2)


def _random_person(rng: np.random.Generator, body: BodyModel, focal: float, size: tuple[int, int],
                   pose_scale: float, yaw_range: float = np.pi) -> dict[str, np.ndarray]:
    W, H = size
    nb = int(getattr(body, "num_betas", 10) or 10)
    betas = np.clip(rng.normal(0, 1, nb), -2, 2)
    std = getattr(body, "_pose_std", None)
    std = std.cpu().numpy() if isinstance(std, torch.Tensor) else np.full(body.pose_dim or 69, 0.3)
    pose = rng.normal(0, 1, std.shape) * std * pose_scale
    lo, hi = getattr(body, "_lim_lo", None), getattr(body, "_lim_hi", None)
    if isinstance(lo, torch.Tensor) and isinstance(hi, torch.Tensor):
        pose = np.clip(pose, lo.cpu().numpy(), hi.cpu().numpy())
    yaw = rng.uniform(-yaw_range, yaw_range)
    tilt = rng.normal(0, 0.08, 2)
    R = axis_angle_to_matrix(np.array([np.pi, 0, 0])) @ axis_angle_to_matrix(np.array([tilt[0], yaw, tilt[1]]))
    go = matrix_to_axis_angle(R)
    z = rng.uniform(3.0, 7.0)
    x = rng.uniform(-0.35, 0.35) * W / focal * z
    y = rng.uniform(-0.15, 0.2) * H / focal * z
    return {"global_orient": go, "body_pose": pose, "betas": betas, "transl": np.array([x, y, z])}


def render_scene(
    rng: np.random.Generator,
    body: BodyModel,
    size: tuple[int, int] = (256, 256),
    *,
    num_persons: int = 1,
    background: np.ndarray | None = None,
    occluder_prob: float = 0.5,
    pose_scale: float = 0.6,
    yaw_range: float = np.pi,
) -> tuple[np.ndarray, list[PersonAnnotation], dict]:
    """Render one scene. Returns (image (H, W, 3) uint8, persons, camera {"focal", "principal"}).

    pose_scale: pose spread relative to the body model's; yaw_range: body yaw ~ U(±yaw_range) radians
    (0 = facing the camera)."""
    import cv2

    W, H = size
    f = dpmesh_focal(W, H)
    pp = (W / 2.0, H / 2.0)
    img = background.copy() if background is not None else procedural_background(rng, W, H)
    idmap = np.zeros((H, W), np.uint8)
    depth = np.full((H, W), np.inf, np.float32)
    people = [_random_person(rng, body, f, size, pose_scale, yaw_range) for _ in range(num_persons)]
    faces = np.asarray(body.faces)
    outs = []
    with torch.no_grad():
        for p in people:
            t = {k: torch.as_tensor(v, dtype=torch.float32)[None] for k, v in p.items()}
            o = body(t["global_orient"], t["body_pose"], t["betas"], t["transl"], joint_sets=("smpl30",),
                     return_vertices=True)
            outs.append((o.joints["smpl30"][0].numpy().astype(np.float64), o.vertices[0].numpy().astype(np.float64)))
    order = np.argsort([-p["transl"][2] for p in people])  # far to near
    for k in order:
        col = rng.integers(60, 230, 3).astype(np.float64)
        rasterize(img, idmap, depth, outs[k][1], faces, f, pp, col, int(k) + 1)
    if rng.random() < occluder_prob:
        for _ in range(int(rng.integers(1, 3))):
            col = tuple(int(v) for v in rng.integers(0, 256, 3))
            cx, cy = int(rng.integers(W // 6, 5 * W // 6)), int(rng.integers(H // 6, 5 * H // 6))
            obj = np.zeros((H, W), np.uint8)
            if rng.random() < 0.5:
                w, h = int(rng.integers(W // 10, W // 3)), int(rng.integers(H // 10, H // 3))
                cv2.rectangle(obj, (cx - w // 2, cy - h // 2), (cx + w // 2, cy + h // 2), 1, -1)
            else:
                axes = (int(rng.integers(W // 14, W // 5)), int(rng.integers(H // 14, H // 5)))
                cv2.ellipse(obj, (cx, cy), axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
            m = obj.astype(bool)
            img[m] = col
            idmap[m] = _OBJECT_ID
            depth[m] = 0.5
    persons = []
    for k, (j3, _) in enumerate(outs):
        uv = project(j3, f, pp)
        ui = np.round(uv).astype(int)
        inside = (ui[:, 0] >= 0) & (ui[:, 0] < W) & (ui[:, 1] >= 0) & (ui[:, 1] < H)
        vis = np.zeros(len(j3), bool)
        vis[inside] = idmap[ui[inside, 1], ui[inside, 0]] == k + 1
        kp = np.c_[uv, np.ones(len(j3))]
        persons.append(PersonAnnotation(keypoints=kp, joint_set="smpl30", visible=vis, params=people[k],
                                        joints3d=j3, joints3d_set="smpl30"))
    return img, persons, {"focal": (f, f), "principal": pp}


def generate(
    out_dir: str | os.PathLike,
    num_images: int,
    body: BodyModel,
    *,
    seed: int = 0,
    size: tuple[int, int] = (256, 256),
    max_persons: int = 2,
    occluder_prob: float = 0.5,
    pose_scale: float = 0.6,
    yaw_range: float = np.pi,
    backgrounds: Sequence[str | os.PathLike] = (),
    sequence: str = "synthetic",
    image_format: str = "jpg",
) -> Iterator[dict]:
    """Write ``num_images`` rendered images to ``out_dir/images`` and ``out_dir/annotations.jsonl``.

    A generator of progress events ({"event": "image", "index", "total"}, then {"event": "done", "path"});
    use ``generate_dataset`` to just run it. ``backgrounds``: optional photo paths (else procedural).
    """
    from ..io.images import write_image

    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    records = []
    for i in range(num_images):
        W, H = size
        bg = None
        if backgrounds and rng.random() < 0.7:
            bg = photo_background(backgrounds[int(rng.integers(len(backgrounds)))], rng, W, H)
        n = int(rng.integers(1, max_persons + 1))
        img, persons, cam = render_scene(rng, body, size, num_persons=n, background=bg,
                                         occluder_prob=occluder_prob, pose_scale=pose_scale, yaw_range=yaw_range)
        path = out / "images" / f"{i:06d}.{image_format}"
        write_image(path, img)
        records.append(ImageRecord(image=path, width=W, height=H, persons=persons, sequence=sequence, camera=cam))
        yield {"event": "image", "index": i, "total": num_images}
    ann = write_annotations(out / "annotations.jsonl", records)
    yield {"event": "done", "path": str(ann)}


def generate_dataset(out_dir: str | os.PathLike, num_images: int, body: BodyModel, **kwargs) -> Path:
    """Run ``generate`` to the end; returns the annotation file path."""
    last: dict = {}
    for ev in generate(out_dir, num_images, body, **kwargs):
        last = ev
    return Path(last["path"]) if "path" in last else Path(out_dir) / "annotations.jsonl"
