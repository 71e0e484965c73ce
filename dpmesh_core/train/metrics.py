"""Evaluation metrics of the DPMesh protocol (DPMESH_SPEC §6), numpy, millimetres.

* MPJPE: both meshes go through the Human3.6M joint regressor (17, V) the user provides
  (``J_regressor_h36m_correct.npy``); the H36M pelvis (index 0) is subtracted; the 14 evaluation joints
  (``body.joints.H36M_EVAL14``) are kept; mean Euclidean distance × 1000.
* PA-MPJPE: the same after a similarity Procrustes alignment (scale, rotation with reflection fix,
  translation) of the prediction onto the ground truth.
* MPVE: all vertices, after subtracting each mesh's pelvis (the SMPL regressor pelvis when given,
  else the H36M pelvis).
* OCC-MPJPE / VIS-MPJPE: MPJPE restricted to the evaluation joints marked invisible / visible in the
  input (``visible_h36m`` (N, 17) bool, H36M-17 order); averaged over joints, not samples.

Inputs are metres; outputs millimetres. Per-sample values are aggregated per sequence and overall by
``summarize``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..body.joints import H36M_EVAL14
from ..errors import InputError

log = logging.getLogger(__name__)

EVAL14 = np.array(H36M_EVAL14, dtype=np.int64)


def load_joint_regressor(path: str | Path, num_joints: int = 17) -> np.ndarray:
    """Read a (num_joints, V) joint regressor from ``.npy`` / ``.npz`` (first array); InputError if unusable."""
    p = Path(path)
    try:
        if p.suffix == ".npz":
            with np.load(p, allow_pickle=False) as z:
                arr = z[z.files[0]]
        else:
            arr = np.load(p, allow_pickle=False)
    except (OSError, ValueError, IndexError) as e:
        raise InputError(f"cannot read joint regressor: {e}", p) from e
    arr = np.asarray(arr)
    if arr.ndim != 2 or arr.shape[0] != num_joints or not np.issubdtype(arr.dtype, np.number):
        raise InputError(f"joint regressor must be a ({num_joints}, V) numeric array, got {arr.shape}", p)
    if not np.isfinite(arr).all():
        raise InputError("joint regressor contains NaN/inf", p)
    return arr.astype(np.float64)


def procrustes_align(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Similarity-align ``pred`` onto ``gt``: (N, J, 3) or (J, 3) → same shape.

    Finds s, R (proper rotation: the reflection is fixed), t minimising ||s·R·pred + t − gt||².
    """
    single = pred.ndim == 2
    X = np.asarray(pred, np.float64).reshape(-1, *pred.shape[-2:])
    Y = np.asarray(gt, np.float64).reshape(-1, *gt.shape[-2:])
    mx, my = X.mean(1, keepdims=True), Y.mean(1, keepdims=True)
    X0, Y0 = X - mx, Y - my
    var_x = (X0 ** 2).sum(axis=(1, 2))
    K = np.einsum("nji,njk->nik", X0, Y0)  # (N,3,3) = X0ᵀ Y0
    U, S, Vt = np.linalg.svd(K)
    d = np.sign(np.linalg.det(np.einsum("nij,njk->nik", U, Vt)))
    D = np.tile(np.eye(3), (len(X), 1, 1))
    D[:, 2, 2] = d
    R = np.einsum("nij,njk,nkl->nil", U, D, Vt)  # applied as X0 @ R
    scale = np.einsum("ni,nii->n", S, D) / np.maximum(var_x, 1e-12)
    out = scale[:, None, None] * np.einsum("nji,nik->njk", X0, R) + my
    return out[0] if single else out


def joint_errors(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """(N, J) Euclidean distance in mm between (N, J, 3) metre arrays."""
    return np.linalg.norm(np.asarray(pred, np.float64) - np.asarray(gt, np.float64), axis=-1) * 1000.0


def mpjpe(pred: np.ndarray, gt: np.ndarray, root: int | None = 0) -> np.ndarray:
    """(N,) mean per-joint error in mm of (N, J, 3) metre joints, both root-aligned at joint ``root``
    (None: no alignment)."""
    pred = np.asarray(pred, np.float64)
    gt = np.asarray(gt, np.float64)
    if root is not None:
        pred = pred - pred[:, root:root + 1]
        gt = gt - gt[:, root:root + 1]
    return joint_errors(pred, gt).mean(1)


def pa_mpjpe(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """(N,) mean per-joint error in mm after similarity Procrustes alignment."""
    return joint_errors(procrustes_align(pred, gt), gt).mean(1)


def mesh_metrics(
    pred_vertices: np.ndarray,
    gt_vertices: np.ndarray,
    j_regressor_h36m: np.ndarray,
    *,
    pelvis_regressor: np.ndarray | None = None,
    visible_h36m: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Per-sample DPMesh metrics from meshes.

    pred_vertices, gt_vertices: (N, V, 3) metres (any translation: everything is root-aligned).
    j_regressor_h36m: (17, V) Human3.6M regressor.
    pelvis_regressor: (V,) weights of the SMPL pelvis for MPVE (row 0 of the SMPL J_regressor);
        None = use the H36M pelvis (row 0 of ``j_regressor_h36m``).
    visible_h36m: (N, 17) bool input visibility in H36M-17 order, for the occluded split.
    Returns {"mpjpe": (N,), "pa_mpjpe": (N,), "mpve": (N,), "joint_err": (N, 14)} in mm, plus, with
    ``visible_h36m``, "occluded": (N, 14) bool.
    """
    pv = np.asarray(pred_vertices, np.float64)
    gv = np.asarray(gt_vertices, np.float64)
    if pv.shape != gv.shape or pv.ndim != 3 or pv.shape[-1] != 3:
        raise ValueError(f"vertex arrays must both be (N, V, 3), got {pv.shape} and {gv.shape}")
    J = np.asarray(j_regressor_h36m, np.float64)
    if J.shape != (17, pv.shape[1]):
        raise ValueError(f"H36M regressor must be (17, {pv.shape[1]}), got {J.shape}")
    pj = np.einsum("jv,nvc->njc", J, pv)
    gj = np.einsum("jv,nvc->njc", J, gv)
    pj = pj - pj[:, :1]
    gj = gj - gj[:, :1]
    out = joint_metrics(pj, gj, visible_h36m=visible_h36m)
    w = J[0] if pelvis_regressor is None else np.asarray(pelvis_regressor, np.float64)
    pr = np.einsum("v,nvc->nc", w, pv)[:, None]
    gr = np.einsum("v,nvc->nc", w, gv)[:, None]
    out["mpve"] = joint_errors(pv - pr, gv - gr).mean(1)
    return out


def joint_metrics(
    pred_h36m: np.ndarray, gt_h36m: np.ndarray, *, visible_h36m: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Per-sample MPJPE / PA-MPJPE (mm) from (N, 17, 3) H36M-17 joints in metres (pelvis-aligned here).

    Returns {"mpjpe": (N,), "pa_mpjpe": (N,), "joint_err": (N, 14)} and "occluded" (N, 14) bool when
    ``visible_h36m`` (N, 17) is given.
    """
    pj = np.asarray(pred_h36m, np.float64)
    gj = np.asarray(gt_h36m, np.float64)
    pj = pj - pj[:, :1]
    gj = gj - gj[:, :1]
    p14, g14 = pj[:, EVAL14], gj[:, EVAL14]
    err = joint_errors(p14, g14)
    out = {"mpjpe": err.mean(1), "pa_mpjpe": pa_mpjpe(p14, g14), "joint_err": err}
    if visible_h36m is not None:
        vis = np.asarray(visible_h36m, bool)
        if vis.shape != (len(pj), 17):
            raise ValueError(f"visible_h36m must be ({len(pj)}, 17), got {vis.shape}")
        out["occluded"] = ~vis[:, EVAL14]
    return out


def summarize(per_sample: dict[str, np.ndarray], sequences: Sequence[str] | None = None) -> dict:
    """Aggregate per-sample metrics into {"overall": {...}, "per_sequence": {name: {...}}}.

    Each table row holds "count" and the mean of every (N,) metric; with "joint_err" and "occluded" it
    also holds "occ_mpjpe" and "vis_mpjpe" (mean over occluded / visible joints; None if there are none)
    and "num_occluded_joints". Values are plain floats (JSON-able).
    """
    n = len(next(iter(per_sample.values()))) if per_sample else 0
    seq = np.asarray(list(sequences) if sequences is not None else ["all"] * n)
    if len(seq) != n:
        raise ValueError(f"{len(seq)} sequence names for {n} samples")

    def row(idx: np.ndarray) -> dict:
        r: dict = {"count": int(idx.sum())}
        for k, v in per_sample.items():
            v = np.asarray(v)
            if v.ndim == 1 and k not in ("occluded",):
                r[k] = float(v[idx].mean()) if idx.any() else None
        if "joint_err" in per_sample and "occluded" in per_sample:
            e = np.asarray(per_sample["joint_err"])[idx]
            o = np.asarray(per_sample["occluded"], bool)[idx]
            r["occ_mpjpe"] = float(e[o].mean()) if o.any() else None
            r["vis_mpjpe"] = float(e[~o].mean()) if (~o).any() else None
            r["num_occluded_joints"] = int(o.sum())
        return r

    table = {"overall": row(np.ones(n, bool)), "per_sequence": {}}
    for name in sorted(set(seq.tolist())):
        table["per_sequence"][str(name)] = row(seq == name)
    return table


def format_table(table: dict, keys: Sequence[str] = ("mpjpe", "pa_mpjpe", "mpve", "occ_mpjpe")) -> str:
    """Plain-text table of ``summarize`` output (one line per sequence, then overall)."""
    head = f"{'sequence':<28}{'count':>7}" + "".join(f"{k:>12}" for k in keys)
    lines = [head]

    def fmt(name: str, r: dict) -> str:
        vals = "".join(f"{r[k]:>12.1f}" if isinstance(r.get(k), float) else f"{'-':>12}" for k in keys)
        return f"{name:<28}{r['count']:>7}" + vals

    for name, r in table.get("per_sequence", {}).items():
        lines.append(fmt(name, r))
    lines.append(fmt("overall", table["overall"]))
    return "\n".join(lines)
