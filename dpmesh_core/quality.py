"""Trust signals: the ``Quality`` record of a mesh, and the sanity rules for persons' key-points.

``assess(person, result)`` -> ``types.Quality`` (visible joints, re-projection residual, legs inferred
without evidence, where the depth came from, ``low_confidence`` by the documented thresholds in
``dpmesh_core.types``). Estimators that know more (the key-point fitter knows whether its depth came from the
key-points) pass ``depth_from``.

``sanitize_persons(persons, image_size)`` -> (kept persons, warnings), the same rules for every source of
persons (key-point files, the app's edits, detectors):

* a person with a labelled key-point more than one image size outside the image (x < -W or x > 2W, y < -H or
  y > 2H) is refused, with a warning: such points are a broken file or a unit mix-up, not a person;
* persons with the same key-points (the same labelled joints at the same positions, rounded to
  ``DUPLICATE_TOLERANCE_PX``) are one person listed twice: the later copies are dropped, with a warning.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from .types import (
    LOW_CONFIDENCE_MAX_RESIDUAL,
    LOW_CONFIDENCE_MIN_VISIBLE,
    MeshResult,
    Person,
    Quality,
)

__all__ = ["assess", "with_quality", "sanitize_persons", "DUPLICATE_TOLERANCE_PX", "LEG_JOINTS"]

#: two persons whose labelled key-points are equal on a grid of this many pixels are the same person
DUPLICATE_TOLERANCE_PX = 0.5
#: knee and ankle names (any joint set): none of them visible -> the legs are inferred
LEG_JOINTS = frozenset({"left_knee", "right_knee", "left_ankle", "right_ankle", "L_Knee", "R_Knee", "L_Ankle",
                        "R_Ankle", "LKnee", "RKnee", "LAnkle", "RAnkle"})


def _leg_mask(joint_set: str, n: int) -> np.ndarray:
    try:
        from .body.joints import joint_names

        names = joint_names(joint_set)
    except Exception:  # noqa: BLE001 - an unknown joint set has no known legs
        return np.zeros(n, bool)
    m = np.array([nm in LEG_JOINTS for nm in names], bool)
    return m if m.size == n else np.zeros(n, bool)


def assess(person: Person, result: MeshResult, depth_from: str = "keypoints",
           usable: np.ndarray | None = None) -> Quality:
    """The quality record of ``result`` fitted to ``person`` (see ``types.Quality``). ``usable``: (J,) bool
    joints the estimator could use (default: the person's visible, finite, positive-confidence joints)."""
    kp = np.asarray(person.keypoints, np.float64)
    ok = (person.weights > 0) if usable is None else np.asarray(usable, bool)
    nvis = int(ok.sum())
    residual = rel = None
    if result.keypoints2d is not None and nvis:
        pred = np.asarray(result.keypoints2d, np.float64)
        if pred.shape[0] == kp.shape[0]:
            d = np.linalg.norm(pred[ok] - kp[ok, :2], axis=1)
            d = d[np.isfinite(d)]
            if d.size:
                residual = float(np.median(d))
                vis = kp[ok, :2]
                size = max(float(np.ptp(vis[:, 0])), float(np.ptp(vis[:, 1])), 16.0)
                rel = residual / size
    legs = _leg_mask(person.joint_set, kp.shape[0])
    legs_inferred = not bool((legs & ok).any())
    reasons = []
    if nvis < LOW_CONFIDENCE_MIN_VISIBLE:
        reasons.append(f"only {nvis} visible key-points (< {LOW_CONFIDENCE_MIN_VISIBLE})")
    if rel is not None and rel > LOW_CONFIDENCE_MAX_RESIDUAL:
        reasons.append(f"re-projection error {rel:.0%} of the person's size (> {LOW_CONFIDENCE_MAX_RESIDUAL:.0%})")
    if depth_from != "keypoints":
        reasons.append(f"depth from the {'other persons of the frame' if depth_from == 'frame' else 'height prior'}"
                       ", not from key-points")
    return Quality(visible_joints=nvis, total_joints=int(kp.shape[0]), residual_px=residual, residual_rel=rel,
                   legs_inferred=legs_inferred, depth_from=depth_from, low_confidence=bool(reasons),
                   reasons=tuple(reasons))


def with_quality(results: Sequence, persons: Sequence[Person]) -> list:
    """``results`` with a quality record on every ``MeshResult`` that has none (others unchanged)."""
    out = []
    for r, p in zip(results, persons):
        if isinstance(r, MeshResult) and r.quality is None and p is not None:
            r = dataclasses.replace(r, quality=assess(p, r))
        out.append(r)
    return out


def sanitize_persons(persons: Sequence[Person], image_size: tuple[int, int],
                     where: str = "") -> tuple[list[Person], list[str]]:
    """(persons kept, warnings): persons with key-points beyond one image size outside the image are refused,
    persons listed twice (same key-points) are merged. ``where`` prefixes the warnings (e.g. a file name)."""
    w, h = float(image_size[0]), float(image_size[1])
    pre = f"{where}: " if where else ""
    kept: list[Person] = []
    seen: dict[tuple, int] = {}  # rounded labelled key-points -> index of the first person with them
    warnings: list[str] = []
    for i, p in enumerate(persons):
        kp = np.asarray(p.keypoints, np.float64)
        lab = np.isfinite(kp[:, :2]).all(1) & (kp[:, 2] > 0)
        if lab.any():
            x, y = kp[lab, 0], kp[lab, 1]
            out_x = np.maximum(np.maximum(-w - x, x - 2 * w), 0.0)
            out_y = np.maximum(np.maximum(-h - y, y - 2 * h), 0.0)
            far = float(max(out_x.max(), out_y.max()))
            if far > 0:
                worst = float(np.max(np.maximum(np.maximum(-x, x - w), np.maximum(-y, y - h))))
                warnings.append(f"{pre}person {i}: key-points up to {worst:.0f} px outside the {int(w)}x{int(h)} "
                                "image (more than one image size): person refused")
                continue
        key = (p.joint_set, lab.tobytes(), np.round(np.where(lab[:, None], kp[:, :2], 0.0)
                                                    / DUPLICATE_TOLERANCE_PX).astype(np.int64).tobytes())
        dup = seen.get(key) if lab.any() else None
        if dup is not None:
            warnings.append(f"{pre}person {i} has the same key-points as person {dup}: merged into one")
            continue
        seen[key] = i
        kept.append(p)
    return kept, warnings
