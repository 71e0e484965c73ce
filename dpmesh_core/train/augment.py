"""Training augmentation (DPMESH_SPEC §5.2), numpy.

Geometric augmentation is applied through the crop affine (``geometry.crop_affine`` with a scale,
an in-plane rotation and a horizontal flip); this module holds the parameter sampling and everything
that must follow the image: joint-order mirroring, SMPL pose mirroring, 3-D rotation about the optical
axis, colour gains, synthetic occlusion **in crop coordinates** (the release placed the rectangle using
original-image coordinates on the crop, spec §9.7), PoseFix noise on the *input* key-points (targets stay
clean) and random joint drop.

Conventions: camera frame is OpenCV (x right, y down, z forward); SMPL pose is (72,) axis-angle, 24
joints in SMPL order; rotation angles are degrees, counter-clockwise in the image as in ``crop_affine``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..body.joints import flip_permutation, mapping
from .posefix import random_joint_drop, synthesize_pose

__all__ = [
    "AugParams", "sample_aug_params", "flip_pose", "flip_keypoints", "flip_points_3d", "rotation_z",
    "rotate_points_3d", "rotate_root", "apply_color", "occlude_crop", "noisy_input_keypoints",
    "random_joint_drop",
]

_SMPL24_FLIP = flip_permutation("smpl24")


@dataclass(frozen=True)
class AugParams:
    """One sample's augmentation: box ``scale`` factor, ``rotation`` degrees, ``flip``, ``color`` (3,) gains."""

    scale: float = 1.0
    rotation: float = 0.0
    flip: bool = False
    color: tuple[float, float, float] = (1.0, 1.0, 1.0)


def sample_aug_params(
    rng: np.random.Generator,
    *,
    scale_factor: float = 0.25,
    rotation_factor: float = 30.0,
    rotation_prob: float = 0.6,
    flip_prob: float = 0.5,
    color_factor: float = 0.2,
) -> AugParams:
    """Spec §5.2: scale = 1 + f·clip(N(0,1), ±1); rotation = r·clip(N(0,1), ±2) with prob ``rotation_prob``;
    flip with ``flip_prob``; per-channel colour gain U(1 − c, 1 + c)."""
    scale = 1.0 + scale_factor * float(np.clip(rng.standard_normal(), -1.0, 1.0))
    rot = rotation_factor * float(np.clip(rng.standard_normal(), -2.0, 2.0))
    if rng.random() >= rotation_prob:
        rot = 0.0
    flip = bool(rng.random() < flip_prob)
    color = tuple(float(c) for c in rng.uniform(1.0 - color_factor, 1.0 + color_factor, 3))
    return AugParams(scale, rot, flip, color)  # type: ignore[arg-type]


def flip_pose(pose: np.ndarray) -> np.ndarray:
    """Mirror SMPL poses (..., 72) axis-angle about the x = 0 plane: swap left/right joints and negate the
    y and z components. Applying it twice is the identity."""
    p = np.asarray(pose, np.float64).reshape(*np.shape(pose)[:-1], 24, 3)
    p = p[..., _SMPL24_FLIP, :].copy()
    p[..., 1:] *= -1.0
    return p.reshape(np.shape(pose))


def flip_keypoints(kp: np.ndarray, width: float, joint_set: str) -> np.ndarray:
    """Mirror 2-D key-points (..., J, C) horizontally in an image ``width`` px wide (x → width − 1 − x,
    pixel-centre convention) and swap left/right joints of ``joint_set``."""
    out = np.array(kp, dtype=np.float64, copy=True)
    out[..., 0] = width - 1.0 - out[..., 0]
    return out[..., flip_permutation(joint_set), :]


def flip_points_3d(j: np.ndarray, joint_set: str | None) -> np.ndarray:
    """Mirror camera-frame points (..., J, 3) about x = 0 (and swap left/right joints if ``joint_set``)."""
    out = np.array(j, dtype=np.float64, copy=True)
    out[..., 0] *= -1.0
    return out if joint_set is None else out[..., flip_permutation(joint_set), :]


def rotation_z(deg: float) -> np.ndarray:
    """(3, 3) camera-frame rotation about the optical axis matching ``crop_affine(rotation_deg=deg)``:
    projections of rotated points are the crop-rotated projections (principal point at the crop centre)."""
    t = np.deg2rad(deg)
    c, s = np.cos(t), np.sin(t)
    return np.array([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]])


def rotate_points_3d(j: np.ndarray, deg: float) -> np.ndarray:
    """Rotate camera-frame points (..., 3) about the optical axis by ``deg`` (see ``rotation_z``)."""
    return np.asarray(j, np.float64) @ rotation_z(deg).T


def rotate_root(pose: np.ndarray, deg: float) -> np.ndarray:
    """Pre-multiply the root orientation (pose[:3]) of a (72,) pose by ``rotation_z(deg)``."""
    from ..geometry import axis_angle_to_matrix, matrix_to_axis_angle

    out = np.array(pose, dtype=np.float64, copy=True)
    if deg == 0.0:
        return out
    R = rotation_z(deg) @ axis_angle_to_matrix(out[:3])
    out[:3] = matrix_to_axis_angle(R)
    return out


def apply_color(img: np.ndarray, gains: tuple[float, float, float]) -> np.ndarray:
    """Per-channel gains on an (H, W, 3) float image in [0, 1] (clipped) → float32."""
    return np.clip(np.asarray(img, np.float32) * np.asarray(gains, np.float32), 0.0, 1.0)


def occlude_crop(
    img: np.ndarray,
    rng: np.random.Generator,
    region: tuple[float, float, float, float] | None = None,
    max_area_frac: float = 0.3,
    min_area_frac: float = 0.0,
    tries: int = 5,
) -> tuple[np.ndarray, tuple[int, int, int, int] | None]:
    """Paste a uniform-noise rectangle into a crop (spec §5.2 occlusion, fixed to crop coordinates).

    img: (S, S, 3) float in [0, 1]. region: (x0, y0, x1, y1) crop px of the person (default: whole crop).
    Area U(min, max)·region area, aspect U(0.5, 2), fully inside the crop; up to ``tries`` attempts.
    Returns (image copy, rectangle (x0, y0, x1, y1) or None when no attempt fitted).
    """
    h, w = img.shape[:2]
    x0, y0, x1, y1 = region if region is not None else (0.0, 0.0, float(w), float(h))
    x0, y0 = max(0.0, x0), max(0.0, y0)
    x1, y1 = min(float(w), x1), min(float(h), y1)
    area = max(x1 - x0, 1.0) * max(y1 - y0, 1.0)
    out = np.array(img, dtype=np.float32, copy=True)
    for _ in range(tries):
        a = rng.uniform(min_area_frac, max_area_frac) * area
        ratio = rng.uniform(0.5, 2.0)
        rw, rh = np.sqrt(a * ratio), np.sqrt(a / ratio)
        if rw < 1 or rh < 1 or rw > x1 - x0 or rh > y1 - y0:
            continue
        rx = rng.uniform(x0, x1 - rw)
        ry = rng.uniform(y0, y1 - rh)
        ix0, iy0 = int(rx), int(ry)
        ix1, iy1 = min(int(rx + rw), w), min(int(ry + rh), h)
        if ix1 <= ix0 or iy1 <= iy0:
            continue
        out[iy0:iy1, ix0:ix1] = rng.random((iy1 - iy0, ix1 - ix0, out.shape[2])).astype(np.float32)
        return out, (ix0, iy0, ix1, iy1)
    return out, None


_C2S = mapping("coco17", "smpl30")  # for each SMPL-30 slot, its COCO-17 index or -1
_S2C = mapping("smpl30", "coco17")  # for each COCO-17 joint, its SMPL-30 slot


def noisy_input_keypoints(
    kp30: np.ndarray,
    valid: np.ndarray,
    rng: np.random.Generator,
    near30: np.ndarray | None = None,
) -> np.ndarray:
    """PoseFix-corrupt SMPL-30 key-points (30, 2|3) in crop px through COCO-17 (spec §5.3).

    The COCO-17 joints are mapped out, corrupted with ``synthesize_pose`` (area = tight box of the valid
    joints), and mapped back; slots without a COCO-17 counterpart are unchanged. ``near30`` (M, 30, 3)
    are nearby people in the same crop space. Returns (30, 2) float64 noisy positions.
    """
    kp30 = np.asarray(kp30, np.float64)
    valid = np.asarray(valid, bool)
    coco = np.zeros((17, 3))
    coco[:, :2] = kp30[_S2C, :2]
    coco[:, 2] = valid[_S2C].astype(np.float64)
    near = None
    if near30 is not None and len(near30):
        n = np.asarray(near30, np.float64)
        near = np.zeros((len(n), 17, 3))
        near[..., :2] = n[:, _S2C, :2]
        near[..., 2] = (n[:, _S2C, 2] > 0) if n.shape[-1] == 3 else 1.0
    out = kp30[:, :2].copy()
    if coco[:, 2].sum() == 0:
        return out
    v = coco[:, 2] > 0
    lo, hi = coco[v, :2].min(0), coco[v, :2].max(0)
    area = float(max((hi - lo).prod(), 1.0))
    noisy = synthesize_pose(coco, area, near, rng)
    out[_S2C[v]] = noisy[v, :2]
    return out
