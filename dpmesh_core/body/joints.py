"""Joint sets and mappings between them.

Each set is an ordered tuple of joint names; joints with the same name in two sets are the same
anatomical point, so mapping is by name (``mapping(src, dst)``), plus a few synthesised joints (Pelvis =
mean of the hips, Neck = mean of the shoulders; their confidence is the product, as in DPMesh
``PW3D.add_pelvis/add_neck``).

Sets:
  coco17      COCO key-points (detectors, COCO JSON).
  openpose18  OpenPose BODY/COCO-18 order (Nose, Neck, R arm, L arm, R leg, L leg, eyes, ears).
  smpl24      SMPL kinematic joints.
  smpl30      DPMesh's heatmap / prompt / loss set (spec §8): SMPL-24 + nose, eyes, ears, head-top.
  graph15     DPMesh regressor ``joint_img`` set (spec §8).
  h36m17      Human3.6M evaluation order.
"""

from __future__ import annotations

import numpy as np

COCO17 = (
    "Nose", "L_Eye", "R_Eye", "L_Ear", "R_Ear", "L_Shoulder", "R_Shoulder", "L_Elbow", "R_Elbow",
    "L_Wrist", "R_Wrist", "L_Hip", "R_Hip", "L_Knee", "R_Knee", "L_Ankle", "R_Ankle",
)
OPENPOSE18 = (
    "Nose", "Neck", "R_Shoulder", "R_Elbow", "R_Wrist", "L_Shoulder", "L_Elbow", "L_Wrist", "R_Hip",
    "R_Knee", "R_Ankle", "L_Hip", "L_Knee", "L_Ankle", "R_Eye", "L_Eye", "R_Ear", "L_Ear",
)
SMPL24 = (
    "Pelvis", "L_Hip", "R_Hip", "Torso", "L_Knee", "R_Knee", "Spine", "L_Ankle", "R_Ankle", "Chest",
    "L_Toe", "R_Toe", "Neck", "L_Thorax", "R_Thorax", "Head", "L_Shoulder", "R_Shoulder", "L_Elbow",
    "R_Elbow", "L_Wrist", "R_Wrist", "L_Hand", "R_Hand",
)
SMPL30 = SMPL24 + ("Nose", "L_Eye", "R_Eye", "L_Ear", "R_Ear", "Head_top")
GRAPH15 = (
    "Pelvis", "L_Hip", "R_Hip", "L_Knee", "R_Knee", "L_Ankle", "R_Ankle", "Neck", "Head_top",
    "L_Shoulder", "R_Shoulder", "L_Elbow", "R_Elbow", "L_Wrist", "R_Wrist",
)
# Human3.6M 17-joint evaluation order. H36M "Thorax" is the neck base and "Spine" the mid torso; they map
# onto SMPL's "Neck" and "Torso" slots the way DPMesh does (spec §8: H36M lands "Torso" on SMPL slot 3).
H36M17 = (
    "Pelvis", "R_Hip", "R_Knee", "R_Ankle", "L_Hip", "L_Knee", "L_Ankle", "Torso", "Neck", "Nose",
    "Head_top", "L_Shoulder", "L_Elbow", "L_Wrist", "R_Shoulder", "R_Elbow", "R_Wrist",
)
# The 14 H36M joints used by the DPMesh evaluation protocol (spec §6): H36M-17 minus Pelvis, Torso, Nose.
H36M_EVAL14 = tuple(i for i, n in enumerate(H36M17) if n not in ("Pelvis", "Torso", "Nose"))

JOINT_SETS: dict[str, tuple[str, ...]] = {
    "coco17": COCO17,
    "openpose18": OPENPOSE18,
    "smpl24": SMPL24,
    "smpl30": SMPL30,
    "graph15": GRAPH15,
    "h36m17": H36M17,
}

# Limbs to draw, as name pairs (filtered per set).
_SKELETON_NAMES = (
    ("L_Ankle", "L_Knee"), ("L_Knee", "L_Hip"), ("R_Ankle", "R_Knee"), ("R_Knee", "R_Hip"),
    ("L_Hip", "R_Hip"), ("L_Shoulder", "L_Hip"), ("R_Shoulder", "R_Hip"), ("L_Shoulder", "R_Shoulder"),
    ("L_Shoulder", "L_Elbow"), ("R_Shoulder", "R_Elbow"), ("L_Elbow", "L_Wrist"), ("R_Elbow", "R_Wrist"),
    ("L_Eye", "R_Eye"), ("Nose", "L_Eye"), ("Nose", "R_Eye"), ("L_Eye", "L_Ear"), ("R_Eye", "R_Ear"),
    ("L_Ear", "L_Shoulder"), ("R_Ear", "R_Shoulder"), ("Neck", "Nose"), ("Neck", "L_Shoulder"),
    ("Neck", "R_Shoulder"), ("Pelvis", "L_Hip"), ("Pelvis", "R_Hip"), ("Neck", "Head_top"),
    ("Pelvis", "Torso"), ("Torso", "Neck"),
)

# DPMesh SMPL-30 flip pairs (spec §8).
SMPL30_FLIP_PAIRS = ((1, 2), (4, 5), (7, 8), (10, 11), (13, 14), (16, 17), (18, 19), (20, 21), (22, 23), (25, 26), (27, 28))

# OKS sigmas in COCO-17 order (PoseFix, spec §5.3).
COCO17_SIGMAS = np.array([.26, .25, .25, .35, .35, .79, .79, .72, .72, .62, .62, 1.07, 1.07, .87, .87, .89, .89]) / 10.0

_SYNTHESISED = {"Pelvis": ("L_Hip", "R_Hip"), "Neck": ("L_Shoulder", "R_Shoulder")}


def joint_names(joint_set: str) -> tuple[str, ...]:
    try:
        return JOINT_SETS[joint_set]
    except KeyError:
        raise KeyError(f"unknown joint set {joint_set!r}; known: {sorted(JOINT_SETS)}") from None


def num_joints(joint_set: str) -> int:
    return len(joint_names(joint_set))


def index(joint_set: str, name: str) -> int:
    return joint_names(joint_set).index(name)


def mapping(src: str, dst: str) -> np.ndarray:
    """(len(dst),) int array: for each joint of ``dst``, its index in ``src`` or -1 if absent."""
    s = {n: i for i, n in enumerate(joint_names(src))}
    return np.array([s.get(n, -1) for n in joint_names(dst)], dtype=np.int64)


def flip_permutation(joint_set: str) -> np.ndarray:
    """(J,) permutation swapping left and right joints (L_x ↔ R_x)."""
    names = joint_names(joint_set)
    pos = {n: i for i, n in enumerate(names)}
    out = []
    for n in names:
        if n.startswith("L_"):
            out.append(pos.get("R_" + n[2:], pos[n]))
        elif n.startswith("R_"):
            out.append(pos.get("L_" + n[2:], pos[n]))
        else:
            out.append(pos[n])
    return np.array(out, np.int64)


def skeleton(joint_set: str) -> list[tuple[int, int]]:
    """Limb index pairs to draw for ``joint_set``."""
    pos = {n: i for i, n in enumerate(joint_names(joint_set))}
    return [(pos[a], pos[b]) for a, b in _SKELETON_NAMES if a in pos and b in pos]


def convert(keypoints: np.ndarray, src: str, dst: str, synthesise: bool = True) -> np.ndarray:
    """Map key-points (..., J_src, C) (C = 2 or 3; the last channel of C = 3 is a confidence) to
    (..., J_dst, C). Missing joints are zeros (confidence 0). With ``synthesise``, a Pelvis or Neck that the
    source lacks is the mean of the hips / shoulders, with confidence the product of theirs."""
    kp = np.asarray(keypoints, dtype=np.float32)
    if kp.shape[-2] != num_joints(src):
        raise ValueError(f"expected {num_joints(src)} joints for {src!r}, got {kp.shape[-2]}")
    m = mapping(src, dst)
    out = np.zeros(kp.shape[:-2] + (len(m), kp.shape[-1]), np.float32)
    ok = m >= 0
    out[..., ok, :] = kp[..., m[ok], :]
    if synthesise:
        src_pos = {n: i for i, n in enumerate(joint_names(src))}
        for j, name in enumerate(joint_names(dst)):
            if ok[j] or name not in _SYNTHESISED:
                continue
            a, b = _SYNTHESISED[name]
            if a in src_pos and b in src_pos:
                pa, pb = kp[..., src_pos[a], :], kp[..., src_pos[b], :]
                out[..., j, :2] = (pa[..., :2] + pb[..., :2]) / 2
                if kp.shape[-1] == 3:
                    out[..., j, 2] = pa[..., 2] * pb[..., 2]
    return out


def convert_visibility(visible: np.ndarray, src: str, dst: str, synthesise: bool = True) -> np.ndarray:
    """Map a (..., J_src) bool visibility to (..., J_dst): absent joints are invisible; synthesised joints
    are visible when both parents are."""
    v = np.asarray(visible, bool)
    m = mapping(src, dst)
    out = np.zeros(v.shape[:-1] + (len(m),), bool)
    ok = m >= 0
    out[..., ok] = v[..., m[ok]]
    if synthesise:
        src_pos = {n: i for i, n in enumerate(joint_names(src))}
        for j, name in enumerate(joint_names(dst)):
            if not ok[j] and name in _SYNTHESISED:
                a, b = _SYNTHESISED[name]
                if a in src_pos and b in src_pos:
                    out[..., j] = v[..., src_pos[a]] & v[..., src_pos[b]]
    return out
