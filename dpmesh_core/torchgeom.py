"""Torch versions of the rotation and projection helpers in ``geometry`` (same conventions).

Differentiable, batched, device- and dtype-agnostic. Imported only by torch-using layers
(body, fit, model, detect, train) — never by the app.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def skew(v: torch.Tensor) -> torch.Tensor:
    """(..., 3) → (..., 3, 3) cross-product matrix [v]×: [v]× w = v × w."""
    x, y, z = v.unbind(-1)
    o = torch.zeros_like(x)
    return torch.stack([o, -z, y, z, o, -x, -y, x, o], -1).reshape(*v.shape[:-1], 3, 3)


def axis_angle_to_matrix(aa: torch.Tensor) -> torch.Tensor:
    """Rodrigues: (..., 3) radians → (..., 3, 3). Smooth at 0 (Taylor terms), differentiable."""
    theta2 = (aa * aa).sum(-1, keepdim=True).unsqueeze(-1)  # (..., 1, 1)
    theta = torch.sqrt(theta2.clamp_min(1e-12))
    small = theta2 < 1e-8
    sin_t = torch.where(small, 1 - theta2 / 6, torch.sin(theta) / theta)
    cos_t = torch.where(small, 0.5 - theta2 / 24, (1 - torch.cos(theta)) / theta2.clamp_min(1e-12))
    K = skew(aa)
    eye = torch.eye(3, dtype=aa.dtype, device=aa.device).expand_as(K)
    return eye + sin_t * K + cos_t * (K @ K)


def axis_angle_right_jacobian(aa: torch.Tensor) -> torch.Tensor:
    """(..., 3) axis-angle ω → (..., 3, 3) right Jacobian of SO(3): exp(ω + δ) ≈ exp(ω) exp(Jr(ω) δ);
    Jr = I − (1 − cos θ)/θ² [ω]× + (θ − sin θ)/θ³ [ω]×² (Taylor terms near 0)."""
    theta2 = (aa * aa).sum(-1, keepdim=True).unsqueeze(-1)
    theta = torch.sqrt(theta2.clamp_min(1e-12))
    small = theta2 < 1e-6
    a = torch.where(small, 0.5 - theta2 / 24, (1 - torch.cos(theta)) / theta2.clamp_min(1e-12))
    b = torch.where(small, 1 / 6 - theta2 / 120, (theta - torch.sin(theta)) / (theta2 * theta).clamp_min(1e-18))
    K = skew(aa)
    eye = torch.eye(3, dtype=aa.dtype, device=aa.device).expand_as(K)
    return eye - a * K + b * (K @ K)


def matrix_to_quaternion(R: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) → (..., 4) unit quaternion (w, x, y, z), w ≥ 0."""
    m = R
    m00, m11, m22 = m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]
    q_abs = torch.sqrt(
        torch.stack([1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], -1)
        .clamp_min(1e-12)
    )
    m21, m12, m02, m20, m10, m01 = m[..., 2, 1], m[..., 1, 2], m[..., 0, 2], m[..., 2, 0], m[..., 1, 0], m[..., 0, 1]
    cands = torch.stack(
        [
            torch.stack([q_abs[..., 0] ** 2, m21 - m12, m02 - m20, m10 - m01], -1),
            torch.stack([m21 - m12, q_abs[..., 1] ** 2, m10 + m01, m02 + m20], -1),
            torch.stack([m02 - m20, m10 + m01, q_abs[..., 2] ** 2, m12 + m21], -1),
            torch.stack([m10 - m01, m20 + m02, m21 + m12, q_abs[..., 3] ** 2], -1),
        ],
        -2,
    ) / (2 * q_abs[..., None].clamp_min(0.1))
    best = q_abs.argmax(-1)
    q = torch.gather(cands, -2, best[..., None, None].expand(*best.shape, 1, 4)).squeeze(-2)
    q = F.normalize(q, dim=-1)
    return torch.where(q[..., :1] < 0, -q, q)


def quaternion_to_axis_angle(q: torch.Tensor) -> torch.Tensor:
    """(..., 4) (w, x, y, z) → (..., 3) radians."""
    v = q[..., 1:]
    n = v.norm(dim=-1, keepdim=True)
    angle = 2 * torch.atan2(n, q[..., :1])
    small = n < 1e-6
    scale = torch.where(small, 2 / q[..., :1].clamp_min(1e-6) * torch.ones_like(n), angle / n.clamp_min(1e-12))
    return v * scale


def matrix_to_axis_angle(R: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) → (..., 3) radians, robust near 0 and π (no torchgeometry, spec §9.19)."""
    return quaternion_to_axis_angle(matrix_to_quaternion(R))


def rot6d_to_matrix(x: torch.Tensor) -> torch.Tensor:
    """DPMesh 6-D → rotation (spec §2.10): (..., 6) as a row-major 3×2 matrix (column 1 = elements
    0, 2, 4; column 2 = 1, 3, 5); Gram–Schmidt; R = [b1 b2 b1×b2] as columns → (..., 3, 3)."""
    m = x.reshape(*x.shape[:-1], 3, 2)
    b1 = F.normalize(m[..., 0], dim=-1)
    a2 = m[..., 1]
    b2 = F.normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1, dim=-1)
    b3 = torch.cross(b1, b2, dim=-1)
    return torch.stack([b1, b2, b3], -1)


def matrix_to_rot6d(R: torch.Tensor) -> torch.Tensor:
    """Inverse of ``rot6d_to_matrix``: (..., 3, 3) → (..., 6)."""
    return R[..., :, :2].reshape(*R.shape[:-2], 6)


def rot6d_to_axis_angle(x: torch.Tensor) -> torch.Tensor:
    """(..., 6) DPMesh 6-D → (..., 3) axis-angle."""
    return matrix_to_axis_angle(rot6d_to_matrix(x))


def project(points: torch.Tensor, focal: torch.Tensor | float, principal: torch.Tensor) -> torch.Tensor:
    """Pinhole: camera-frame (B, N, 3) metres → (B, N, 2) pixels. focal: scalar, (B,) or (B, 2);
    principal: (2,) or (B, 2). z is offset by 1e-4 as in DPMesh's ``get_coord``."""
    z = points[..., 2:3] + 1e-4
    f = torch.as_tensor(focal, dtype=points.dtype, device=points.device)
    if f.ndim == 1:
        f = f[:, None, None]
    elif f.ndim == 2:
        f = f[:, None, :]
    c = torch.as_tensor(principal, dtype=points.dtype, device=points.device)
    if c.ndim == 2:
        c = c[:, None, :]
    return points[..., :2] / z * f + c
