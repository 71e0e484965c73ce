"""PoseFix-style "realistic error" synthesis on COCO-17 key-points (DPMESH_SPEC §5.3).

Used to corrupt the *input* key-points during training (the targets stay clean) and by benchmarks that
need realistic detector errors. Everything is numpy and driven by an explicit ``np.random.Generator``.

For every valid joint j, one of five outcomes is sampled:

=========  ======  ==========================================================================
code       name    new position
=========  ======  ==========================================================================
0          jitter  r ~ U(d(.85), d(.50)) around GT, farther than r from every other candidate
1          miss    r ~ U(d(.50), d(.10)) around any candidate, ≥ d(.50) from the other candidates
2          inv     r ~ U(0, d(.50)) around the left/right partner's GT (partner must be valid)
3          swap    r ~ U(0, d(.50)) around a near person's same or partner joint
4          good    r ~ U(0, d(.85)) around GT
=========  ======  ==========================================================================

``d(ks) = sqrt(-2 · area · (2σ_j)² · ln ks)`` is the distance at OKS level ``ks`` (σ = COCO-17 sigmas,
``area`` the tight box area in the same pixel units as the key-points). The candidate centres are the GT,
the same joint of near people, the partner's GT and the partner joint of near people. The outcome
probabilities (``outcome_probabilities``) depend on the joint, the number of valid joints and the
number of overlapping people; they are renormalised over the outcomes that produced a valid position.
A synthesised joint gets confidence 1. Invalid joints (confidence ≤ 0) are left unchanged and get the
outcome code -1.
"""

from __future__ import annotations

import numpy as np

from ..body.joints import COCO17_SIGMAS, flip_permutation

OUTCOMES = ("jitter", "miss", "inversion", "swap", "good")
JITTER, MISS, INVERSION, SWAP, GOOD = range(5)
UNTOUCHED = -1

_PARTNER = flip_permutation("coco17")  # (17,) index of the left/right partner (self for the nose)
_SAMPLES = 128  # proposals per candidate centre (PoseFix uses 500; the outcome law does not depend on it)


def oks_distance(ks: float, area: float, sigmas: np.ndarray = COCO17_SIGMAS) -> np.ndarray:
    """(17,) distance in pixels at which a joint's OKS equals ``ks`` for a box of ``area`` px²."""
    area = max(float(area), 1e-6)
    return np.sqrt(-2.0 * area * (2.0 * sigmas) ** 2 * np.log(ks))


def outcome_probabilities(j: int, num_valid: int, num_overlap: int) -> np.ndarray:
    """(5,) prior probabilities (jitter, miss, inversion, swap, good) of COCO-17 joint ``j`` (spec §5.3).

    ``num_valid``: number of valid joints of the person; ``num_overlap``: number of near people.
    """
    # jitter
    if j == 0 or 13 <= j <= 16:  # nose, knees, ankles
        jit = (0.15, 0.10)
    elif 1 <= j <= 10:  # eyes, ears, upper body
        jit = (0.20, 0.15)
    else:  # hips
        jit = (0.25, 0.20)
    p_jitter = jit[0] if num_valid <= 10 else jit[1]
    # miss
    if j <= 4:
        miss = (0.15, 0.10, 0.02)  # face
    elif j in (5, 6, 15, 16):
        miss = (0.20, 0.13, 0.05)  # shoulders, ankles
    else:
        miss = (0.25, 0.15, 0.10)
    p_miss = miss[0] if num_valid <= 5 else miss[1] if num_valid <= 10 else miss[2]
    # inversion
    p_inv = 0.01 if j <= 4 else 0.03 if j <= 10 else 0.06
    # swap
    crowded = (num_valid <= 10 and num_overlap > 0) or (num_valid <= 15 and num_overlap >= 3)
    if j <= 4:
        sw = (0.02, 0.01)
    elif j <= 10:
        sw = (0.15, 0.06)
    else:
        sw = (0.10, 0.03)
    p_swap = sw[0] if crowded else sw[1]
    p_good = 1.0 - (p_jitter + p_miss + p_inv + p_swap)
    return np.array([p_jitter, p_miss, p_inv, p_swap, p_good], dtype=np.float64)


def _ring(rng: np.random.Generator, centre: np.ndarray, r_lo: float, r_hi: float, n: int):
    """n points at radius U(r_lo, r_hi) and a uniform angle around ``centre`` (2,). Returns (pts (n,2), r (n,))."""
    ang = rng.uniform(0.0, 2.0 * np.pi, n)
    r = rng.uniform(r_lo, r_hi, n)
    pts = centre[None, :] + np.stack([r * np.cos(ang), r * np.sin(ang)], axis=1)
    return pts, r


def _far_from(pts: np.ndarray, others: np.ndarray, min_dist: np.ndarray | float) -> np.ndarray:
    """(n,) bool: each point is farther than ``min_dist`` (scalar or (n,)) from every row of ``others`` (K,2)."""
    if len(others) == 0:
        return np.ones(len(pts), bool)
    d = np.linalg.norm(pts[:, None, :] - others[None, :, :], axis=2)  # (n, K)
    thr = np.asarray(min_dist, dtype=np.float64)
    if thr.ndim:
        thr = thr.reshape(-1, 1)
    return np.all(d > thr, axis=1)


def _pick(rng: np.random.Generator, pts: np.ndarray) -> np.ndarray | None:
    return None if len(pts) == 0 else pts[rng.integers(len(pts))]


def synthesize_pose_with_outcomes(
    kp: np.ndarray,
    area: float,
    near_kps: np.ndarray | None,
    rng: np.random.Generator,
    num_overlap: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Like ``synthesize_pose`` and also return the sampled outcome per joint.

    Returns ``(out (17,3), outcome (17,) int)`` with codes JITTER..GOOD (0..4) or UNTOUCHED (-1).
    """
    kp = np.asarray(kp, dtype=np.float64)
    if kp.shape != (17, 3):
        raise ValueError(f"kp must be (17, 3) COCO-17 (x, y, conf), got {kp.shape}")
    if near_kps is None or len(near_kps) == 0:
        near = np.zeros((0, 17, 3))
    else:
        near = np.asarray(near_kps, dtype=np.float64).reshape(-1, 17, 3)
    if num_overlap is None:
        num_overlap = len(near)
    d10, d50, d85 = (oks_distance(k, area) for k in (0.10, 0.50, 0.85))
    valid = kp[:, 2] > 0
    num_valid = int(valid.sum())
    out = kp.copy()
    outcome = np.full(17, UNTOUCHED, dtype=np.int64)
    n = _SAMPLES
    for j in range(17):
        if not valid[j]:
            continue
        pj = int(_PARTNER[j])
        has_pair = pj != j
        gt = kp[j, :2]
        swap_c = near[near[:, j, 2] > 0, j, :2]  # (S,2) same joint of near people
        inv_c = kp[pj:pj + 1, :2] if (has_pair and valid[pj]) else np.zeros((0, 2))
        swap_inv_c = near[near[:, pj, 2] > 0, pj, :2] if has_pair else np.zeros((0, 2))
        cands = np.concatenate([gt[None], swap_c, inv_c, swap_inv_c], axis=0)  # (K,2), row 0 = GT
        idx_inv = 1 + len(swap_c) if len(inv_c) else -1
        swap_rows = [i for i in range(1, len(cands)) if i != idx_inv]
        results: list[np.ndarray | None] = [None] * 5

        # jitter: around GT, farther than r from the other candidates
        pts, r = _ring(rng, gt, d85[j], d50[j], n)
        results[JITTER] = _pick(rng, pts[_far_from(pts, cands[1:], r)])
        # miss: around any candidate (GT weighted 4:1 as in PoseFix), ≥ d(.50) from the others
        miss_pts = []
        for i in range(len(cands)):
            m = 4 * n if i == 0 else n
            p, _ = _ring(rng, cands[i], d50[j], d10[j], m)
            others = np.delete(cands, i, axis=0)
            miss_pts.append(p[_far_from(p, others, d50[j])])
        results[MISS] = _pick(rng, np.concatenate(miss_pts, axis=0))
        # inversion: around the partner's GT
        if idx_inv >= 0:
            pts, r = _ring(rng, cands[idx_inv], 0.0, d50[j], n)
            others = np.delete(cands, idx_inv, axis=0)
            results[INVERSION] = _pick(rng, pts[_far_from(pts, others, r)])
        # swap: around a near person's same or partner joint
        if swap_rows:
            sw = []
            for i in swap_rows:
                p, r = _ring(rng, cands[i], 0.0, d50[j], n)
                others = np.delete(cands, i, axis=0)
                sw.append(p[_far_from(p, others, r)])
            results[SWAP] = _pick(rng, np.concatenate(sw, axis=0))
        # good: around GT
        pts, r = _ring(rng, gt, 0.0, d85[j], n)
        results[GOOD] = _pick(rng, pts[_far_from(pts, cands[1:], r)])
        if results[GOOD] is None:  # cannot happen for r→0 in practice; keep the GT to be safe
            results[GOOD] = gt.copy()

        prob = outcome_probabilities(j, num_valid, num_overlap)
        ok = np.array([res is not None for res in results])
        prob = np.where(ok, prob, 0.0)
        prob = prob / prob.sum()
        k = int(rng.choice(5, p=prob))
        out[j, :2] = results[k]
        out[j, 2] = 1.0
        outcome[j] = k
    return out, outcome


def synthesize_pose(
    kp: np.ndarray,
    area: float,
    near_kps: np.ndarray | None,
    rng: np.random.Generator,
    num_overlap: int | None = None,
) -> np.ndarray:
    """Corrupt one person's COCO-17 key-points with PoseFix-style realistic errors (spec §5.3).

    kp: (17,3) GT (x, y, conf) in pixels; conf ≤ 0 marks an invalid joint (left unchanged).
    area: tight box area in px² (same pixel space as ``kp``).
    near_kps: (M,17,3) key-points of nearby people (IoU ≥ 0.1 in the spec) or None.
    num_overlap: number of overlapping people; defaults to M.
    Returns (17,3) float64: synthesised positions with confidence 1 for valid joints.
    """
    return synthesize_pose_with_outcomes(kp, area, near_kps, rng, num_overlap)[0]


def synthesize_poses(
    kps: np.ndarray,
    areas: np.ndarray | None,
    rng: np.random.Generator,
    near_kps: list[np.ndarray | None] | None = None,
) -> np.ndarray:
    """Batch wrapper: (N,17,3) key-points, (N,) box areas (None → tight box of the valid joints).

    ``near_kps[i]`` is (M_i,17,3) or None. If ``near_kps`` is None, the other persons of the batch whose
    tight boxes overlap (IoU ≥ 0.1) person i are used, which is right when the batch is one image.
    Returns (N,17,3).
    """
    kps = np.asarray(kps, dtype=np.float64)
    n = len(kps)
    boxes = np.stack([tight_box(k) for k in kps]) if n else np.zeros((0, 4))
    if areas is None:
        areas = np.array([max((b[2] - b[0]) * (b[3] - b[1]), 1.0) for b in boxes])
    out = np.empty_like(kps)
    for i in range(n):
        if near_kps is not None:
            near = near_kps[i]
        else:
            near = np.stack([kps[k] for k in range(n) if k != i and _iou(boxes[i], boxes[k]) >= 0.1]) \
                if n > 1 else None
            if near is not None and len(near) == 0:
                near = None
        out[i] = synthesize_pose(kps[i], float(areas[i]), near, rng)
    return out


def tight_box(kp: np.ndarray) -> np.ndarray:
    """(4,) x0, y0, x1, y1 tight box of the valid joints of (J,3) key-points (zeros if none)."""
    v = kp[:, 2] > 0
    if not v.any():
        return np.zeros(4)
    xy = kp[v, :2]
    return np.array([xy[:, 0].min(), xy[:, 1].min(), xy[:, 0].max(), xy[:, 1].max()])


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    ua = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / ua) if ua > 0 else 0.0


def random_joint_drop(mask: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    """Zero each entry of a joint mask independently with probability ``p`` (spec: 10% in training,
    20% for the NKR student). ``mask`` any shape, bool or float; returns a copy of the same dtype."""
    mask = np.asarray(mask)
    keep = rng.random(mask.shape) >= p
    return (mask * keep).astype(mask.dtype)
