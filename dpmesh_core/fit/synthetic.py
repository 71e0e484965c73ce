"""Synthetic fitting scenes with ground truth, for tests and benchmarks of the fitter.

Poses are drawn from the body model's own priors so this works for any ``BodyModel`` whose
``pose_prior``/``shape_prior`` are zero-mean diagonal quadratics (SMPL and Anny adapters are): the
per-dimension standard deviation is read off the prior (``prior(σ e_i) = 1``), a Gaussian draw scaled by
``pose_scale`` is taken, and the result is projected inside the anatomical limits by descending
``joint_limit_penalty`` (exact for box limits). Persons stand upright (small random lean), turned by a
random yaw, at a random distance, inside the image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..body.base import BodyModel
from ..geometry import axis_angle_to_matrix, matrix_to_axis_angle
from ..types import BodyParams, Camera


@dataclass(frozen=True)
class SyntheticPerson:
    """Ground truth of one synthetic person: params, joints (K, 3) metres camera frame in ``joint_set``,
    and their projections (K, 2) pixels."""

    params: BodyParams
    joints3d: np.ndarray
    joints2d: np.ndarray
    joint_set: str


def prior_std(prior, dim: int, centre: torch.Tensor | None = None) -> torch.Tensor:
    """(dim,) per-dimension std of a diagonal quadratic prior: 1 / sqrt(prior(centre + e_i))."""
    c = torch.zeros(dim) if centre is None else centre.reshape(-1).float()
    with torch.no_grad():
        e = c[None] + torch.eye(dim)
        val = prior(e) - prior(c[None])
    return 1.0 / val.clamp_min(1e-6).sqrt()


def sample_body_pose(body: BodyModel, n: int, rng: np.random.Generator, pose_scale: float = 0.5) -> torch.Tensor:
    """(n, pose_dim) plausible random poses: prior-shaped Gaussian draws projected inside joint limits."""
    std = prior_std(body.pose_prior, body.pose_dim).to(torch.float32)
    pose = torch.as_tensor(rng.standard_normal((n, body.pose_dim)), dtype=torch.float32) * std * pose_scale
    for _ in range(10):  # Newton steps on the quadratic out-of-limit penalty: lands exactly on the limits
        p = pose.clone().requires_grad_(True)
        pen = body.joint_limit_penalty(p).sum()
        if float(pen.detach()) <= 1e-10:
            break
        (g,) = torch.autograd.grad(pen, p)
        pose = (p - 0.5 * g).detach()
    return pose


def sample_scene(
    body: BodyModel,
    camera: Camera,
    n: int,
    rng: np.random.Generator,
    joint_set: str = "coco17",
    pose_scale: float = 0.5,
    shape_scale: float = 0.5,
    depth_range: tuple[float, float] = (3.0, 12.0),
    max_yaw: float = math.pi,
) -> list[SyntheticPerson]:
    """``n`` independent synthetic persons seen by ``camera`` (each fully inside the image)."""
    bp = sample_body_pose(body, n, rng, pose_scale)
    mean = body.mean_betas(1)[0].float()
    sstd = prior_std(body.shape_prior, body.num_betas, mean)
    betas = mean[None] + torch.as_tensor(rng.standard_normal((n, body.num_betas)), dtype=torch.float32) * sstd * \
        shape_scale
    flip = np.diag([1.0, -1.0, -1.0])
    go = np.zeros((n, 3))
    for i in range(n):
        yaw = rng.uniform(-max_yaw, max_yaw)
        lean = rng.normal(0, 0.08, 2)
        R = axis_angle_to_matrix(np.array([lean[0], yaw, lean[1]])) @ flip
        go[i] = matrix_to_axis_angle(R)
    go_t = torch.as_tensor(go, dtype=torch.float32)
    W, H = camera.image_size
    (fx, fy), (cx, cy) = camera.focal, camera.principal
    out = []
    with torch.no_grad():
        rest = body(go_t, bp, betas, torch.zeros(n, 3), joint_sets=(joint_set,)).joints[joint_set].numpy()
    for i in range(n):
        for _ in range(50):
            z = rng.uniform(*depth_range)
            u, v = rng.uniform(0.15 * W, 0.85 * W), rng.uniform(0.25 * H, 0.75 * H)
            c = rest[i].mean(0)
            t = np.array([(u - cx) / fx * z, (v - cy) / fy * z, z]) - c
            j3 = rest[i] + t
            if (j3[:, 2] < 0.5).any():
                continue
            j2 = j3[:, :2] / j3[:, 2:3] * np.array([fx, fy]) + np.array([cx, cy])
            if (j2 >= 0).all() and (j2[:, 0] < W).all() and (j2[:, 1] < H).all():
                break
        params = BodyParams(body.name, go[i], bp[i].numpy(), betas[i].numpy(), t)
        out.append(SyntheticPerson(params, j3.astype(np.float32), j2.astype(np.float32), joint_set))
    return out
