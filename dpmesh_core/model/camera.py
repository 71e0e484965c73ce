"""DPMesh camera (spec §2.10–2.11): crop-space translation, projection, and full-image placement.

Conventions: OpenCV camera frame (x right, y down, z forward), metres. The network works in the
``input_size`` (256) crop with a pinhole camera of focal ``f`` pixels (the CLIFF rule: f = sqrt(W² + H²)
of the ORIGINAL full image) and principal point at the crop centre. Nothing here has parameters.
"""

from __future__ import annotations

import torch


def camera_translation(
    cam_raw: torch.Tensor, focal: torch.Tensor, camera_3d_size: float = 2.5, input_size: int = 256
) -> torch.Tensor:
    """Release ``Model.get_camera_trans``: raw (B, 3) = (t_x, t_y, γ) and focal (B,) px → translation
    (B, 3) metres in the crop camera, with t_z = sigmoid(γ) · f · camera_3d_size / input_size."""
    k = focal.to(cam_raw.dtype) * (camera_3d_size / input_size)
    tz = torch.sigmoid(cam_raw[:, 2]) * k
    return torch.stack([cam_raw[:, 0], cam_raw[:, 1], tz], dim=1)


def project_to_crop(points: torch.Tensor, focal: torch.Tensor, input_size: int = 256) -> torch.Tensor:
    """Release ``Model.get_coord``: camera-frame points (B, N, 3) metres → (B, N, 2) pixels of the
    ``input_size`` crop (principal point at the crop centre, z offset 1e-4). ``focal`` (B,) px."""
    z = points[..., 2:3] + 1e-4
    f = focal.to(points.dtype)[:, None, None]
    return points[..., :2] / z * f + input_size / 2.0


def crop_to_grid(xy_crop: torch.Tensor, input_size: int = 256, grid_size: int = 64) -> torch.Tensor:
    """Crop pixels (..., 2) → the ``grid_size`` output-heatmap grid (64 in the release)."""
    return xy_crop * (grid_size / input_size)


def place_in_image(
    transl_crop: torch.Tensor,
    focal: torch.Tensor,
    box: torch.Tensor,
    principal: torch.Tensor,
    input_size: int = 256,
) -> torch.Tensor:
    """Move a crop-camera translation into the full-image camera (spec §2.11, last bullet).

    transl_crop (B, 3) metres, crop camera (focal f, principal at the crop centre);
    focal (B,) px (the same f is kept for the full image); box (B, 4) the SQUARE crop box (x0, y0, x1, y1)
    in image pixels; principal (B, 2) the full image's principal point, pixels.
    Returns (B, 3) metres in the full-image camera.

    Like the release, depth is scaled by input_size / sqrt(box_w · box_h). Unlike the release, which then
    puts the principal point at the box centre, we keep the image's own principal point and move the
    root sideways so that it projects exactly where it projected in the crop (mapped back to the image).
    """
    dtype = transl_crop.dtype
    box = box.to(dtype)
    f = focal.to(dtype)
    side = torch.sqrt((box[:, 2] - box[:, 0]).clamp_min(1e-6) * (box[:, 3] - box[:, 1]).clamp_min(1e-6))
    tz = transl_crop[:, 2] * (input_size / side)
    # where the root lands in the crop, then in the image
    z = transl_crop[:, 2] + 1e-4
    uc = transl_crop[:, 0] / z * f + input_size / 2.0
    vc = transl_crop[:, 1] / z * f + input_size / 2.0
    u = box[:, 0] + uc * (box[:, 2] - box[:, 0]) / input_size
    v = box[:, 1] + vc * (box[:, 3] - box[:, 1]) / input_size
    p = principal.to(dtype)
    tx = (u - p[:, 0]) * tz / f
    ty = (v - p[:, 1]) * tz / f
    return torch.stack([tx, ty, tz], dim=1)


# ------------------------------------------------------------------ the release's own image placement


def release_render_translation(transl_crop: torch.Tensor, bbox_xywh: torch.Tensor,
                               input_size: int = 256) -> torch.Tensor:
    """The release's translation for drawing a person in the full image (``Model.get_camera_trans`` with
    ``cfg.render``): t_z × input_size / sqrt(box_w · box_h); t_x, t_y unchanged. With it the release projects
    with the same focal f and the principal point at the crop box's centre (:func:`release_principal`).

    transl_crop (B, 3) metres; bbox_xywh (B, 4) the square crop box (x, y, w, h) → (B, 3) metres.
    """
    b = bbox_xywh.to(transl_crop.dtype)
    k = input_size / torch.sqrt(b[:, 2] * b[:, 3])
    return torch.stack([transl_crop[:, 0], transl_crop[:, 1], transl_crop[:, 2] * k], dim=1)


def release_principal(bbox_xywh: torch.Tensor) -> torch.Tensor:
    """(B, 4) (x, y, w, h) → (B, 2) the crop box's centre: the principal point of the release's renderer."""
    b = bbox_xywh
    return torch.stack([b[:, 0] + b[:, 2] / 2, b[:, 1] + b[:, 3] / 2], dim=1)


def cam2pixel(points: torch.Tensor, focal: torch.Tensor, principal: torch.Tensor) -> torch.Tensor:
    """The release's ``cam2pixel``: camera points (B, N, 3) → (B, N, 3) (u, v, depth), with (B,) focal and
    (B, 2) principal point (no depth offset)."""
    f = focal.to(points.dtype)[:, None]
    c = principal.to(points.dtype)[:, None]
    u = points[..., 0] / points[..., 2] * f + c[..., 0]
    v = points[..., 1] / points[..., 2] * f + c[..., 1]
    return torch.stack([u, v, points[..., 2]], dim=-1)


def denorm_joints(joint_proj_grid: torch.Tensor, bb2img: torch.Tensor, input_size: int = 256,
                  grid_size: int = 64) -> torch.Tensor:
    """The release's ``denorm_joints``: (B, N, 2) points on the output grid → (B, N, 2) image pixels through
    the crop → image affine (B, 2, 3)."""
    xy = joint_proj_grid * (input_size / grid_size)
    A = bb2img.to(xy.dtype)
    return xy @ A[:, :, :2].transpose(1, 2) + A[:, None, :, 2]
