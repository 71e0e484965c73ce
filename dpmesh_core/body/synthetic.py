"""A synthetic, deterministic SMPL-like body (no licensed files) for tests and demos.

``synthetic_smpl_arrays`` returns the 7 arrays a SMPL model consists of, shaped exactly like the real
``basicModel_neutral_lbs_10_207_0_v1.0.0.pkl`` (6,890 vertices, 24 joints, 10 betas, 207 pose blend
shapes), so that ``smplx.SMPL(data_struct=...)`` and everything downstream treat it like the real thing.

The body is a "stick figure of ellipsoids": one ellipsoid around each bone of SMPL's kinematic tree, with
the real SMPL neutral T-pose joint locations (metres, y up, facing +z, left = +x), plus a head, hands and
toes. Each ellipsoid is triangulated (convex hull of a Fibonacci sphere), skinned to its parent joint
(blending into the neighbouring joints near both ends), and the joint regressor is a small non-negative
average of the vertices nearest each joint, solved so that ``J_regressor @ v_template`` equals the SMPL
joint locations. Shape direction 0 changes the height, 1 the girth, the others are small seeded
per-part changes; pose blend shapes are small seeded offsets of the vertices each joint drives.

The vertices DPMesh's SMPL-30 picks (nose 331, eyes 2802/6262, ears 3489/3990) and the head-top vertex
411 sit at the corresponding places on the head.
"""

from __future__ import annotations

import numpy as np

#: SMPL neutral T-pose joint locations (``J_regressor @ v_template`` of the real model, rounded), metres.
SMPL_TPOSE_JOINTS = np.array([
    [-0.0018, -0.2233, 0.0282], [0.0695, -0.3143, 0.0239], [-0.0677, -0.3144, 0.0214],
    [-0.0025, -0.1089, -0.0014], [0.1040, -0.6990, 0.0115], [-0.1055, -0.6990, 0.0127],
    [0.0056, 0.0247, -0.0027], [0.0887, -1.1024, -0.0281], [-0.0918, -1.1005, -0.0299],
    [0.0016, 0.0766, 0.0183], [0.1185, -1.1544, 0.0868], [-0.1193, -1.1557, 0.0900],
    [-0.0026, 0.2909, -0.0203], [0.0789, 0.1987, -0.0150], [-0.0826, 0.1993, -0.0168],
    [0.0091, 0.3569, 0.0369], [0.1756, 0.2271, -0.0192], [-0.1752, 0.2277, -0.0215],
    [0.4355, 0.2142, -0.0404], [-0.4409, 0.2165, -0.0419], [0.6843, 0.2214, -0.0472],
    [-0.6880, 0.2207, -0.0461], [0.7731, 0.2110, -0.0590], [-0.7722, 0.2124, -0.0588],
], dtype=np.float64)

#: SMPL kinematic tree: parent of each of the 24 joints (-1 for the root).
SMPL_PARENTS = np.array([-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21])

#: Vertex ids DPMesh's SMPL-30 uses (spec §2.11), and the head-top vertex used without J_regressor_extra.
NOSE_VERTEX, L_EYE_VERTEX, R_EYE_VERTEX, L_EAR_VERTEX, R_EAR_VERTEX = 331, 2802, 6262, 3489, 3990
HEAD_TOP_VERTEX = 411

_HEAD_CENTRE = SMPL_TPOSE_JOINTS[15] + np.array([0.0, 0.085, 0.0])
_HEAD_RADII = np.array([0.082, 0.115, 0.095])  # x (ear to ear), y (chin to top), z (back to nose)


def _parts() -> list[tuple[np.ndarray, np.ndarray, float, float, int, int]]:
    """(start, end, radius_x, radius_z, driving joint, end joint or -1) of each ellipsoid."""
    J = SMPL_TPOSE_JOINTS
    radius = {  # by child joint: (rx, rz)
        1: (0.09, 0.09), 2: (0.09, 0.09), 3: (0.14, 0.10), 4: (0.075, 0.075), 5: (0.075, 0.075),
        6: (0.15, 0.10), 7: (0.05, 0.05), 8: (0.05, 0.05), 9: (0.16, 0.11), 10: (0.045, 0.06),
        11: (0.045, 0.06), 12: (0.06, 0.06), 13: (0.06, 0.06), 14: (0.06, 0.06), 15: (0.055, 0.055),
        16: (0.06, 0.06), 17: (0.06, 0.06), 18: (0.05, 0.05), 19: (0.05, 0.05), 20: (0.04, 0.04),
        21: (0.04, 0.04), 22: (0.045, 0.02), 23: (0.045, 0.02),
    }
    parts = []
    for j in range(1, 24):
        p = int(SMPL_PARENTS[j])
        rx, rz = radius[j]
        parts.append((J[p], J[j], rx, rz, p, j))
    # hand tips (driven by the hand joints) and toes (driven by the foot joints)
    for j, sx in ((22, 1.0), (23, -1.0)):
        parts.append((J[j], J[j] + np.array([sx * 0.09, -0.005, 0.0]), 0.045, 0.018, j, -1))
    for j in (10, 11):
        parts.append((J[j], J[j] + np.array([0.0, -0.01, 0.07]), 0.045, 0.025, j, -1))
    return parts


def _fibonacci_sphere(n: int) -> np.ndarray:
    i = np.arange(n) + 0.5
    y = 1.0 - 2.0 * i / n
    r = np.sqrt(np.clip(1.0 - y * y, 0.0, None))
    phi = i * np.pi * (3.0 - np.sqrt(5.0))
    return np.stack([r * np.cos(phi), y, r * np.sin(phi)], axis=1)


def _sphere_faces(unit: np.ndarray) -> np.ndarray:
    """Outward-oriented triangles of points on the unit sphere (their convex hull)."""
    from scipy.spatial import ConvexHull

    hull = ConvexHull(unit)
    if len(hull.vertices) != len(unit):  # pragma: no cover - cannot happen for a Fibonacci sphere
        raise RuntimeError("degenerate sphere sampling")
    f = hull.simplices.copy()
    a, b, c = unit[f[:, 0]], unit[f[:, 1]], unit[f[:, 2]]
    flip = (np.cross(b - a, c - a) * (a + b + c)).sum(1) < 0
    f[flip] = f[flip][:, [0, 2, 1]]
    return f


def _frame(axis: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two unit vectors orthogonal to ``axis``: the first as close to +x (or +z for x-aligned bones)."""
    ref = np.array([1.0, 0.0, 0.0]) if abs(axis[0]) < 0.7 else np.array([0.0, 0.0, 1.0])
    u = ref - axis * (ref @ axis)
    u /= np.linalg.norm(u)
    w = np.cross(u, axis)  # (u, axis, w) is right-handed, so the triangles stay outward-facing
    return u, w


def synthetic_smpl_arrays(seed: int = 0, num_vertices: int = 6890, num_betas: int = 10) -> dict:
    """The 7 SMPL arrays of a deterministic human-like stick body.

    Returns a dict: ``v_template`` (V, 3) metres, ``shapedirs`` (V, 3, B), ``posedirs`` (V, 3, 207),
    ``J_regressor`` (24, V) dense, ``weights`` (V, 24) rows summing to 1, ``kintree_table`` (2, 24) int64,
    ``f`` (F, 3) int64 (outward-facing triangles). All floats are float64 like the SMPL pickles.
    ``num_vertices`` must be at least 2,000; with 6,890 (the default, as real SMPL) the SMPL-30 vertex
    picks land on the face.
    """
    if num_vertices < 2000:
        raise ValueError(f"num_vertices must be >= 2000, got {num_vertices}")
    rng = np.random.default_rng(seed)
    J = SMPL_TPOSE_JOINTS
    parts = _parts()

    # --- vertex budget: head gets 14 %, the rest proportional to ellipsoid surface area
    areas = []
    for a, b, rx, rz, _, _ in parts:
        half = np.linalg.norm(b - a) / 2 + 0.5 * min(rx, rz)
        areas.append(4 * np.pi * ((half * rx) ** 1.6 + (half * rz) ** 1.6 + (rx * rz) ** 1.6) ** (1 / 1.6) / 3)
    areas = np.array(areas)
    n_head = int(round(0.14 * num_vertices))
    share = areas / areas.sum() * (num_vertices - n_head)
    counts = np.maximum(np.floor(share).astype(int), 24)
    counts[np.argmax(areas)] += num_vertices - n_head - counts.sum()

    verts, faces, drive, tparam, ends, axis_pt, part_id = [], [], [], [], [], [], []
    offset = 0
    for k, ((a, b, rx, rz, pj, ej), n) in enumerate(zip(parts, counts, strict=True)):
        unit = _fibonacci_sphere(int(n))
        f = _sphere_faces(unit)
        axis = (b - a) / np.linalg.norm(b - a)
        u, w = _frame(axis)
        half = np.linalg.norm(b - a) / 2 + 0.5 * min(rx, rz)
        centre = (a + b) / 2
        # unit.y runs along the bone, unit.x / unit.z across it
        pts = centre + np.outer(unit[:, 1] * half, axis) + np.outer(unit[:, 0] * rx, u) + np.outer(unit[:, 2] * rz, w)
        t = ((pts - a) @ axis) / np.linalg.norm(b - a)
        verts.append(pts)
        faces.append(f + offset)
        drive.append(np.full(len(pts), pj))
        ends.append(np.full(len(pts), ej))
        tparam.append(t)
        axis_pt.append(a + np.outer(np.clip(t, 0, 1) * np.linalg.norm(b - a), axis))
        part_id.append(np.full(len(pts), k))
        offset += len(pts)

    # head ellipsoid
    unit = _fibonacci_sphere(n_head)
    f = _sphere_faces(unit)
    pts = _HEAD_CENTRE + unit * _HEAD_RADII
    verts.append(pts)
    faces.append(f + offset)
    drive.append(np.full(n_head, 15))
    ends.append(np.full(n_head, -1))
    tparam.append(np.full(n_head, 0.5))
    axis_pt.append(np.repeat(_HEAD_CENTRE[None], n_head, 0))
    part_id.append(np.full(n_head, len(parts)))
    head_start = offset

    v = np.concatenate(verts)
    f = np.concatenate(faces)
    drive = np.concatenate(drive)
    ends = np.concatenate(ends)
    t = np.concatenate(tparam)
    axis_pt = np.concatenate(axis_pt)
    part_id = np.concatenate(part_id)
    V = len(v)

    # --- put the SMPL-30 vertex picks on the face (swap vertex ids, then snap onto the target)
    face_targets = {
        NOSE_VERTEX: np.array([0.0, -0.015, 1.0]),
        L_EYE_VERTEX: np.array([0.33, 0.12, 0.92]),
        R_EYE_VERTEX: np.array([-0.33, 0.12, 0.92]),
        L_EAR_VERTEX: np.array([1.0, 0.0, -0.05]),
        R_EAR_VERTEX: np.array([-1.0, 0.0, -0.05]),
        HEAD_TOP_VERTEX: np.array([0.0, 1.0, 0.0]),
    }
    perm = np.arange(V)  # perm[new_id] = old_id
    used: set[int] = set()
    head_ids = np.arange(head_start, V)
    for vid, tgt in face_targets.items():
        if vid >= V:
            continue
        tgt_pt = _HEAD_CENTRE + tgt / np.linalg.norm(tgt) * _HEAD_RADII
        d = np.linalg.norm(v[head_ids] - tgt_pt, axis=1)
        for cand in head_ids[np.argsort(d)]:
            if cand not in used:
                break
        used.add(int(cand))
        # swap the vertex currently at slot vid with the chosen head vertex
        pos_c = int(np.nonzero(perm == cand)[0][0])
        perm[vid], perm[pos_c] = perm[pos_c], perm[vid]
        v[cand] = tgt_pt
    inv = np.empty(V, np.int64)
    inv[perm] = np.arange(V)
    v, drive, ends, t, axis_pt, part_id = (x[perm] for x in (v, drive, ends, t, axis_pt, part_id))
    f = inv[f]

    # --- skinning weights: the driving joint, blended into its parent near the start of the bone and
    # into the end joint near its end
    weights = np.zeros((V, 24))
    rows = np.arange(V)
    w_start = np.clip((0.2 - t) / 0.2, 0, 1) * 0.5
    w_end = np.clip((t - 0.8) / 0.2, 0, 1) * 0.5
    parent_of_drive = SMPL_PARENTS[drive]
    has_parent = parent_of_drive >= 0
    has_end = ends >= 0
    w_start = np.where(has_parent, w_start, 0.0)
    w_end = np.where(has_end, w_end, 0.0)
    weights[rows, drive] += 1.0 - w_start - w_end
    weights[rows[has_parent], parent_of_drive[has_parent]] += w_start[has_parent]
    weights[rows[has_end], ends[has_end]] += w_end[has_end]

    # --- joint regressor: non-negative weights over the 96 nearest vertices reproducing each joint
    Jreg = np.zeros((24, V))
    for j in range(24):
        idx = np.argsort(np.linalg.norm(v - J[j], axis=1))[:96]
        P = v[idx]
        w = np.full(len(idx), 1.0 / len(idx))
        A = np.vstack([P.T, np.ones(len(idx))])  # (4, k)
        for _ in range(50):  # least-norm correction, then clip negatives and repeat
            r = np.concatenate([J[j], [1.0]]) - A @ w
            w = w + A.T @ np.linalg.solve(A @ A.T + 1e-12 * np.eye(4), r)
            w = np.clip(w, 0, None)
        r = np.concatenate([J[j], [1.0]]) - A @ w
        w = w + A.T @ np.linalg.solve(A @ A.T + 1e-12 * np.eye(4), r)  # exact (may dip slightly < 0)
        Jreg[j, idx] = w

    # --- shape directions (V, 3, B)
    shapedirs = np.zeros((V, 3, num_betas))
    if num_betas > 0:  # height: stretch y about the pelvis height
        shapedirs[:, 1, 0] = 0.06 * (v[:, 1] - J[0, 1])
    if num_betas > 1:  # girth: push every vertex away from its bone axis
        shapedirs[:, :, 1] = 0.15 * (v - axis_pt)
    n_parts = int(part_id.max()) + 1
    for k in range(2, num_betas):
        s_rad = rng.normal(0, 0.05, n_parts)[part_id]
        s_all = rng.normal(0, 0.01, n_parts)[part_id]
        shapedirs[:, :, k] = s_rad[:, None] * (v - axis_pt) + s_all[:, None] * (v - J[0])

    # --- pose blend shapes (V, 3, 207): small offsets of the vertices each joint (1..23) drives
    posedirs = np.zeros((V, 3, 207))
    dirs = rng.normal(0, 0.002, (23, 9, 3))
    for j in range(1, 24):
        wj = weights[:, j]
        for e in range(9):
            posedirs[:, :, 9 * (j - 1) + e] = wj[:, None] * dirs[j - 1, e]

    kintree = np.stack([SMPL_PARENTS, np.arange(24)]).astype(np.int64)
    kintree[0, 0] = 4294967295  # as in the SMPL pickles (uint32 -1)
    return {
        "v_template": v,
        "shapedirs": shapedirs,
        "posedirs": posedirs,
        "J_regressor": Jreg,
        "weights": weights,
        "kintree_table": kintree,
        "f": f.astype(np.int64),
    }
