"""The DPMesh release's test-time preprocessing, step for step (spec §2.1–2.2, corrected 2026-12-01).

Every function reproduces one release function on the same inputs, in the same precision, so that an
official checkpoint sees exactly the crops and key-points it saw in the authors' evaluation. They are checked
stage by stage against ``shared/reference/dpmesh_parity`` (computed by the release's own code) in
``tests/core/test_model_release_parity.py``.

=============================  =======================================================================
here                           release (EternalEvan/DPMesh@721191b)
=============================  =======================================================================
``add_pelvis_neck``            ``PW3D.add_pelvis`` / ``PW3D.add_neck`` (mean of the parents, conf = product)
``coco19_to_smpl30``           ``transform_joint_to_other_db`` (COCO-19 → SMPL-30 slots, missing = 0)
``joint_valid``                ``conf > 0.05`` (``PW3D``: ``conf_thr``)
``bbox_from_joints``           ``get_bbox`` (tight box of the valid joints, ×1.2 about its centre; x, y, w, h)
``process_bbox``               ``process_bbox(is_3dpw_test=True)``: x1 = max(0, x), x2 = min(W−1, x1 +
                               max(0, w−1)) (a box starting outside the image is *shifted*, and loses 1 px),
                               squared to the input aspect, ×1.1 about the centre of that box
``crop_affine``                ``gen_trans_from_patch_cv`` (three float32 points, ``cv2.getAffineTransform``,
                               cast to float32)
``crop_image``                 ``generate_patch_image`` on the **float32** image (bilinear, black border),
                               then ToTensor (no scaling of a float array) and ``/ 255``: RGB in [0, 1]
``joints_to_grid``             the affine applied to (x, y, 1), then × 32 / 256 onto the heatmap grid
``joints_mask``                valid AND 0 ≤ x < 32 AND 0 ≤ y < 32
=============================  =======================================================================

Boxes here are the release's (x, y, w, h); ``xywh_to_corners`` gives the (x0, y0, x1, y1) the rest of the
project uses.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..body import joints as J
from ..types import VISIBLE_THRESHOLD

#: A joint is valid when its confidence is above this (``PW3D.conf_thr``). The DPMesh network uses this
#: rule on every key-point source; it is the release's, and it is lower than the detector's own.
CONF_THRESHOLD = 0.05
#: ``get_bbox``'s widening and the test-time ``process_bbox`` scale.
BOX_EXTEND = 1.2
BOX_SCALE_TEST = 1.1

#: COCO-19 (COCO-17 + Pelvis + Neck, ``PW3D.coco_joints_name``) → SMPL-30 slot (spec §8).
COCO19_TO_SMPL30 = (24, 25, 26, 27, 28, 16, 17, 18, 19, 20, 21, 1, 2, 4, 5, 7, 8, 0, 12)


def add_pelvis_neck(coco17: np.ndarray) -> np.ndarray:
    """(…, 17, 3) COCO-17 (x, y, conf) → (…, 19, 3) float64 with Pelvis (mean of the hips) and Neck (mean of
    the shoulders) appended, each with confidence = the product of its parents' (``add_pelvis``/``add_neck``).
    """
    kp = np.asarray(coco17, np.float64)
    lhip, rhip, lsh, rsh = kp[..., 11, :], kp[..., 12, :], kp[..., 5, :], kp[..., 6, :]
    pelvis = np.concatenate([(lhip[..., :2] + rhip[..., :2]) * 0.5, (lhip[..., 2:] * rhip[..., 2:])], -1)
    neck = np.concatenate([(lsh[..., :2] + rsh[..., :2]) * 0.5, (lsh[..., 2:] * rsh[..., 2:])], -1)
    return np.concatenate([kp, pelvis[..., None, :], neck[..., None, :]], axis=-2)


def coco19_to_smpl30(coco19: np.ndarray) -> np.ndarray:
    """(…, 19, C) → (…, 30, C) float32 in the SMPL-30 slot order; slots COCO does not provide are 0."""
    kp = np.asarray(coco19)
    out = np.zeros(kp.shape[:-2] + (30, kp.shape[-1]), np.float32)
    out[..., list(COCO19_TO_SMPL30), :] = kp.astype(np.float32)
    return out


def keypoints_to_smpl30(keypoints: np.ndarray, joint_set: str) -> np.ndarray:
    """(J, 3) key-points (x, y, conf) of any known joint set → (30, 3) float32 as the release would hold them.

    COCO-17 goes through the release's own path (``add_pelvis_neck`` → ``coco19_to_smpl30``); other joint
    sets are mapped by name with the same Pelvis/Neck synthesis (``body.joints.convert``).
    """
    kp = np.asarray(keypoints, np.float64)
    if joint_set == "coco17":
        return coco19_to_smpl30(add_pelvis_neck(kp))
    return J.convert(kp.astype(np.float32), joint_set, "smpl30").astype(np.float32)


def joint_valid(kp30: np.ndarray) -> np.ndarray:
    """(…, 30) bool: confidence > 0.05."""
    return np.asarray(kp30)[..., 2] > CONF_THRESHOLD


def bbox_from_joints(kp30: np.ndarray, valid: np.ndarray, extend: float = BOX_EXTEND) -> np.ndarray:
    """``get_bbox``: (x, y, w, h) float32 of the valid joints' tight box widened ×``extend`` about its centre.
    Raises ValueError when no joint is valid (the release crashes there)."""
    kp = np.asarray(kp30)
    m = np.asarray(valid, bool)
    if not m.any():
        raise ValueError("no valid key-point to build a box from")
    x, y = kp[m, 0], kp[m, 1]
    xmin, xmax, ymin, ymax = min(x), max(x), min(y), max(y)
    xc, width = (xmin + xmax) / 2.0, xmax - xmin
    xmin, xmax = xc - 0.5 * width * extend, xc + 0.5 * width * extend
    yc, height = (ymin + ymax) / 2.0, ymax - ymin
    ymin, ymax = yc - 0.5 * height * extend, yc + 0.5 * height * extend
    return np.array([xmin, ymin, xmax - xmin, ymax - ymin]).astype(np.float32)


def process_bbox(bbox: np.ndarray, image_size: tuple[int, int], scale: float = BOX_SCALE_TEST,
                 aspect: float = 1.0) -> np.ndarray:
    """``process_bbox(…, is_3dpw_test=True)``: (x, y, w, h) → the square crop box (x, y, w, h) float32.

    image_size is (W, H). The box is brought inside the image the release's way — x1 = max(0, x),
    x2 = min(W − 1, x1 + max(0, w − 1)) — so a box that starts left of / above the image is shifted rather
    than cut and every box loses 1 px; then the shorter side grows to ``aspect`` (w/h, 1 for the 256×256
    input) and both sides are scaled by ``scale`` about the centre of that box.
    """
    x, y, w, h = (np.float32(v) for v in np.asarray(bbox, np.float32))
    W, H = image_size
    x1 = np.max((0, x))
    y1 = np.max((0, y))
    x2 = np.min((W - 1, x1 + np.max((0, w - 1))))
    y2 = np.min((H - 1, y1 + np.max((0, h - 1))))
    box = np.array([x1, y1, x2 - x1, y2 - y1], dtype=np.float32)
    w, h = box[2], box[3]
    c_x = box[0] + w / 2.0
    c_y = box[1] + h / 2.0
    if w > aspect * h:
        h = w / aspect
    elif w < aspect * h:
        w = h * aspect
    box[2] = w * scale
    box[3] = h * scale
    box[0] = c_x - box[2] / 2.0
    box[1] = c_y - box[3] / 2.0
    return box


def crop_affine(bbox: np.ndarray, out_size: int = 256, inverse: bool = False) -> np.ndarray:
    """``gen_trans_from_patch_cv`` at test time (scale 1, no rotation): the (2, 3) float32 affine mapping the
    (x, y, w, h) box onto the ``out_size`` patch (``inverse``: patch → image), built from three float32
    points with ``cv2.getAffineTransform`` as released."""
    import cv2

    b = np.asarray(bbox, np.float32)
    c_x = float(b[0] + 0.5 * b[2])
    c_y = float(b[1] + 0.5 * b[3])
    src_w, src_h = float(b[2]), float(b[3])
    src_center = np.array([c_x, c_y], dtype=np.float32)
    src_down = np.array([0, src_h * 0.5], dtype=np.float32)
    src_right = np.array([src_w * 0.5, 0], dtype=np.float32)
    dst_center = np.array([out_size * 0.5, out_size * 0.5], dtype=np.float32)
    dst_down = np.array([0, out_size * 0.5], dtype=np.float32)
    dst_right = np.array([out_size * 0.5, 0], dtype=np.float32)
    src = np.stack([src_center, src_center + src_down, src_center + src_right]).astype(np.float32)
    dst = np.stack([dst_center, dst_center + dst_down, dst_center + dst_right]).astype(np.float32)
    a, b2 = (dst, src) if inverse else (src, dst)
    return cv2.getAffineTransform(np.float32(a), np.float32(b2)).astype(np.float32)


def crop_image(image_rgb: np.ndarray, affine: np.ndarray, out_size: int = 256) -> np.ndarray:
    """``generate_patch_image`` + ``ToTensor`` + ``/ 255``: (H, W, 3) RGB (uint8 or float) → (3, S, S)
    float32 RGB in [0, 1]. The warp runs on the float32 image (bilinear, constant-0 border), as released:
    warping the uint8 image would round every pixel."""
    import cv2

    img = np.asarray(image_rgb).astype(np.float32)
    patch = cv2.warpAffine(img, np.asarray(affine, np.float32), (int(out_size), int(out_size)),
                           flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
    return np.ascontiguousarray(patch.astype(np.float32).transpose(2, 0, 1)) / 255.0


def joints_to_grid(kp30: np.ndarray, affine: np.ndarray, input_size: int = 256, grid: int = 32) -> np.ndarray:
    """(30, 3) image px → (30, 3) float32 on the ``grid`` heatmap grid (the affine on (x, y, 1), then
    × grid / input_size); confidences unchanged."""
    kp = np.array(kp30, np.float32)
    xy1 = np.concatenate([kp[:, :2], np.ones_like(kp[:, :1])], 1)
    kp[:, :2] = np.dot(np.asarray(affine, np.float32), xy1.transpose(1, 0)).transpose(1, 0)
    kp[:, 0] = kp[:, 0] / input_size * grid
    kp[:, 1] = kp[:, 1] / input_size * grid
    return kp


def joints_mask(grid_kp: np.ndarray, valid: np.ndarray, grid: int = 32) -> np.ndarray:
    """(30,) bool: valid AND inside [0, grid) in x and y."""
    g = np.asarray(grid_kp)
    inside = (g[:, 0] >= 0) & (g[:, 0] < grid) & (g[:, 1] >= 0) & (g[:, 1] < grid)
    return np.asarray(valid, bool) & inside


def xywh_to_corners(bbox: np.ndarray) -> np.ndarray:
    """(x, y, w, h) → (x0, y0, x1, y1) float32."""
    b = np.asarray(bbox, np.float32)
    return np.array([b[0], b[1], b[0] + b[2], b[1] + b[3]], np.float32)


def corners_to_xywh(box: np.ndarray) -> np.ndarray:
    """(x0, y0, x1, y1) → (x, y, w, h) float32."""
    b = np.asarray(box, np.float32)
    return np.array([b[0], b[1], b[2] - b[0], b[3] - b[1]], np.float32)


@dataclass(frozen=True)
class PreparedPerson:
    """One person as the release feeds it to the network.

    kp30 (30, 3) image px + conf; valid (30,) bool; bbox (4,) the square crop box (x, y, w, h);
    affine / inverse (2, 3) float32 image → crop / crop → image; grid (30, 3) key-points on the heatmap grid;
    mask (30,) bool (valid and inside the grid).
    """

    kp30: np.ndarray
    valid: np.ndarray
    bbox: np.ndarray
    affine: np.ndarray
    inverse: np.ndarray
    grid: np.ndarray
    mask: np.ndarray

    @property
    def box(self) -> np.ndarray:
        """The crop box as (x0, y0, x1, y1)."""
        return xywh_to_corners(self.bbox)


def prepare_person(keypoints: np.ndarray, joint_set: str, image_size: tuple[int, int], *,
                   bbox: np.ndarray | None = None, input_size: int = 256, grid: int = 32,
                   scale: float = BOX_SCALE_TEST) -> PreparedPerson:
    """Key-points of one person → :class:`PreparedPerson`, as the release's test loader does.

    ``bbox`` (x, y, w, h) fixes the crop box (e.g. to keep the box of an earlier run after an edit); by
    default it is computed from the valid key-points. Raises ValueError when no key-point is valid.
    """
    kp30 = keypoints_to_smpl30(keypoints, joint_set)
    valid = joint_valid(kp30)
    if bbox is None:
        bbox = process_bbox(bbox_from_joints(kp30, valid), image_size, scale=scale)
    bbox = np.asarray(bbox, np.float32)
    A = crop_affine(bbox, input_size)
    Ainv = crop_affine(bbox, input_size, inverse=True)
    g = joints_to_grid(kp30, A, input_size, grid)
    return PreparedPerson(kp30, valid, bbox, A, Ainv, g, joints_mask(g, valid, grid))

def release_confidence(person) -> np.ndarray:
    """(J,) the confidences the DPMesh network sees, under the release's own rule (valid = conf > 0.05).

    The project's display/fitting rule counts a joint as visible above ``types.VISIBLE_THRESHOLD`` (0.5); the
    release was trained and evaluated on every detected joint above 0.05, so the network gets the raw
    confidence. Only an explicit "not visible" — a joint the user marked occluded (``edited``), or one whose
    confidence is high but is flagged invisible by its source (e.g. a COCO v=1 label) — is zeroed; so are
    non-finite points.
    """
    kp = np.asarray(person.keypoints, np.float32)
    conf = np.nan_to_num(kp[:, 2], nan=0.0)
    finite = np.isfinite(kp).all(axis=1)
    implied = ~np.asarray(person.edited, bool) & (conf <= VISIBLE_THRESHOLD)  # invisible only by confidence
    return np.where(finite & (np.asarray(person.visible, bool) | implied), np.clip(conf, 0.0, None), 0.0
                    ).astype(np.float32)


def person_crop_box(person, image_size: tuple[int, int], scale: float = BOX_SCALE_TEST) -> np.ndarray | None:
    """The square crop box (x0, y0, x1, y1) the DPMesh network takes for a ``types.Person`` under the release's
    rule (``release_confidence``, ``bbox_from_joints``, ``process_bbox``); None when no joint is valid."""
    kp = np.asarray(person.keypoints, np.float32)
    w = release_confidence(person)
    kp30 = keypoints_to_smpl30(np.concatenate([np.nan_to_num(kp[:, :2]), w[:, None]], axis=1), person.joint_set)
    valid = joint_valid(kp30)
    if not valid.any():
        return None
    return xywh_to_corners(process_bbox(bbox_from_joints(kp30, valid), image_size, scale=scale))
