"""Boundary types: frozen dataclasses of numpy arrays.

These are what crosses between the core and the app (and between pipeline stages). Torch tensors never
appear here. Arrays are validated and made read-only on construction so a result cannot be mutated
behind a view's back; use ``dataclasses.replace`` to derive a changed copy.

Conventions
-----------
* Image pixels: x to the right, y down, origin at the top-left corner of the top-left pixel's centre
  (OpenCV convention). Boxes are ``(x0, y0, x1, y1)``.
* Camera frame: OpenCV camera (x right, y down, z forward), metres.
* Key-points are ``(J, 3)``: x, y in image pixels and a confidence in [0, 1]. ``visible`` is a per-joint
  bool: False means "occluded / not usable" and such joints weigh nothing in estimation, whatever their
  confidence. Joint order is named by ``joint_set`` (see ``dpmesh_core.body.joints``).
* The one visibility rule (``is_visible``), for every source: a joint is visible when its source labels it
  so explicitly (a COCO dataset flag ``v=2``, a joint the user placed or edited) or, for sources that give
  only a confidence (every detector, COCO results / AlphaPose / OpenPose files, a ``Person`` built without
  ``visible``), when its confidence is greater than ``VISIBLE_THRESHOLD`` (0.5).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Sequence

    from .errors import EstimationError


#: A key-point given only with a confidence counts as visible when the confidence exceeds this (the value
#: the YOLO-pose family draws with; weaker points are guesses of where an unseen joint might be).
VISIBLE_THRESHOLD = 0.5


def is_visible(confidence: Any) -> np.ndarray:
    """The visibility rule for confidences: ``confidence > VISIBLE_THRESHOLD`` (bool array; NaN -> False)."""
    c = np.asarray(confidence, np.float64)
    with np.errstate(invalid="ignore"):
        return np.nan_to_num(c, nan=0.0) > VISIBLE_THRESHOLD


def _ro(a: Any, dtype: Any, shape_tail: tuple[int, ...] | None = None, name: str = "array") -> np.ndarray:
    arr = np.array(a, dtype=dtype, copy=True)
    if shape_tail is not None:
        if arr.ndim != len(shape_tail) or any(s != -1 and s != d for s, d in zip(shape_tail, arr.shape)):
            raise ValueError(f"{name}: expected shape {shape_tail} (-1 = any), got {arr.shape}")
    arr.setflags(write=False)
    return arr


@dataclass(frozen=True)
class Camera:
    """Pinhole camera of a full image.

    ``focal``: (fx, fy) pixels; ``principal``: (cx, cy) pixels; ``image_size``: (width, height) pixels.
    Use ``Camera.default_for(w, h)`` for the DPMesh/CLIFF rule f = sqrt(w^2 + h^2), principal at the centre.
    """

    focal: tuple[float, float]
    principal: tuple[float, float]
    image_size: tuple[int, int]

    @staticmethod
    def default_for(width: int, height: int) -> Camera:
        f = float(np.hypot(width, height))
        return Camera((f, f), (width / 2.0, height / 2.0), (int(width), int(height)))

    @property
    def K(self) -> np.ndarray:
        """(3, 3) intrinsic matrix."""
        (fx, fy), (cx, cy) = self.focal, self.principal
        return np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]], dtype=np.float64)


@dataclass(frozen=True)
class Person:
    """One person in one frame.

    box: (4,) float32, (x0, y0, x1, y1) image pixels.
    keypoints: (J, 3) float32, (x, y, confidence) image pixels.
    visible: (J,) bool, False = occluded or missing (weighs nothing); default ``is_visible(confidence)``.
    joint_set: name of the joint order of ``keypoints`` (default COCO-17).
    score: detection score in [0, 1].
    track_id: stable id across video frames, or None.
    source: "detector", "user" (added/edited by hand), "file" (key-point file) or "tracker".
    edited: (J,) bool, True where the user changed the joint by hand (drawn differently in the app).
    """

    box: np.ndarray
    keypoints: np.ndarray
    visible: np.ndarray | None = None
    joint_set: str = "coco17"
    score: float = 1.0
    track_id: int | None = None
    source: str = "detector"
    edited: np.ndarray | None = None

    def __post_init__(self) -> None:
        kp = _ro(self.keypoints, np.float32, (-1, 3), "keypoints")
        object.__setattr__(self, "keypoints", kp)
        object.__setattr__(self, "box", _ro(self.box, np.float32, (4,), "box"))
        vis = is_visible(kp[:, 2]) if self.visible is None else self.visible
        object.__setattr__(self, "visible", _ro(vis, bool, (kp.shape[0],), "visible"))
        ed = np.zeros(kp.shape[0], bool) if self.edited is None else self.edited
        object.__setattr__(self, "edited", _ro(ed, bool, (kp.shape[0],), "edited"))

    @property
    def num_joints(self) -> int:
        return int(self.keypoints.shape[0])

    @property
    def weights(self) -> np.ndarray:
        """(J,) float32 per-joint weight for estimation: confidence where visible and finite, else 0."""
        kp = self.keypoints
        ok = self.visible & np.isfinite(kp).all(axis=1) & (kp[:, 2] > 0)
        return np.where(ok, kp[:, 2], 0.0).astype(np.float32)

    @staticmethod
    def box_from_keypoints(keypoints: np.ndarray, visible: np.ndarray | None = None, pad: float = 1.2) -> np.ndarray:
        """(4,) tight box of the visible key-points widened by ``pad`` about its centre."""
        kp = np.asarray(keypoints, np.float32)
        m = (kp[:, 2] > 0) if visible is None else np.asarray(visible, bool)
        m = m & np.isfinite(kp[:, :2]).all(axis=1)
        if not m.any():
            raise ValueError("no visible key-point to build a box from")
        lo, hi = kp[m, :2].min(0), kp[m, :2].max(0)
        c, half = (lo + hi) / 2, np.maximum((hi - lo) / 2 * pad, 1.0)
        return np.concatenate([c - half, c + half]).astype(np.float32)


@dataclass(frozen=True)
class BodyParams:
    """Parameters of a body model.

    model: "smpl" or "anny" (or another registered body model name).
    global_orient: (3,) axis-angle, camera frame.
    body_pose: (P,) model-specific pose (SMPL: (69,) = 23 joints x axis-angle; Anny: flattened bone rotations).
    betas: (S,) shape (SMPL: 10 betas; Anny: 6 phenotype values in [0, 1]).
    transl: (3,) metres, camera frame.
    extra: other named arrays (e.g. VPoser latent ``vposer_z`` (32,), Anny ``bone_rotvec``).
    """

    model: str
    global_orient: np.ndarray
    body_pose: np.ndarray
    betas: np.ndarray
    transl: np.ndarray
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "global_orient", _ro(self.global_orient, np.float32, (3,), "global_orient"))
        object.__setattr__(self, "body_pose", _ro(self.body_pose, np.float32, (-1,), "body_pose"))
        object.__setattr__(self, "betas", _ro(self.betas, np.float32, (-1,), "betas"))
        object.__setattr__(self, "transl", _ro(self.transl, np.float32, (3,), "transl"))
        object.__setattr__(self, "extra", {k: _ro(v, None) for k, v in dict(self.extra).items()})


#: ``Quality.low_confidence`` is set when fewer key-points than this were visible (of the person's joint set) ...
LOW_CONFIDENCE_MIN_VISIBLE = 8
#: ... or the median re-projection error of the visible key-points exceeds this fraction of the person's size
#: (the larger side of the visible key-points' box) ...
LOW_CONFIDENCE_MAX_RESIDUAL = 0.08
#: ... or the depth could not be set from the key-points (``Quality.depth_from`` other than "keypoints").


@dataclass(frozen=True)
class Quality:
    """How much of a ``MeshResult`` rests on evidence (the "trust signals" of a mesh).

    visible_joints / total_joints: usable key-points (visible, finite, modelled by the body) / the person's.
    residual_px: median distance, image pixels, between the visible key-points and the mesh's re-projected
      key-points (None when not measurable); residual_rel: the same over the person's size in pixels.
    legs_inferred: no knee or ankle was visible: the legs are the body prior's guess.
    depth_from: "keypoints" (segment lengths in the image), "frame" (no usable segment: the median depth of
      the frame's persons that had one) or "height_prior" (no usable segment and no such person: a 1.7 m
      person spanning half the image height, see ``dpmesh_core.fit.fitter``).
    low_confidence: fewer than ``LOW_CONFIDENCE_MIN_VISIBLE`` visible key-points, or ``residual_rel`` >
      ``LOW_CONFIDENCE_MAX_RESIDUAL``, or the depth not from key-points. Draw such a mesh as a guess.
    reasons: why ``low_confidence`` is set (human-readable, empty when it is not).
    """

    visible_joints: int
    total_joints: int
    residual_px: float | None = None
    residual_rel: float | None = None
    legs_inferred: bool = False
    depth_from: str = "keypoints"
    low_confidence: bool = False
    reasons: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form (what ``--json`` events and npz files carry)."""
        return {"visible_joints": int(self.visible_joints), "total_joints": int(self.total_joints),
                "residual_px": None if self.residual_px is None else round(float(self.residual_px), 3),
                "residual_rel": None if self.residual_rel is None else round(float(self.residual_rel), 4),
                "legs_inferred": bool(self.legs_inferred), "depth_from": self.depth_from,
                "low_confidence": bool(self.low_confidence), "reasons": list(self.reasons)}


@dataclass(frozen=True)
class MeshResult:
    """A recovered body for one person.

    vertices: (V, 3) float32 metres, camera frame.  faces: (F, 3) int32.
    joints3d: (K, 3) float32 metres, camera frame, order ``joint_set``.
    joints2d: (K, 2) float32 re-projected joints, image pixels.
    keypoints2d: (J, 2) float32 the model's prediction of the *input* key-points (same order as the
        person's key-points), image pixels; used for re-projection error.
    params: body-model parameters.  camera: the full-image camera used.
    attention: per-joint cross-attention maps, e.g. {"8": (30, 8, 8), "16": (30, 16, 16)} (DPMesh only).
    estimator: "fit" or "dpmesh" (or "dpmesh+fit").  loss: final fitting loss, if any.
    quality: the trust signals (``Quality``: visible joints, residual, inferred legs/depth,
        ``quality.low_confidence``); None only for results built without a person to judge against.
    """

    vertices: np.ndarray
    faces: np.ndarray
    joints3d: np.ndarray
    joints2d: np.ndarray
    joint_set: str
    params: BodyParams
    camera: Camera
    keypoints2d: np.ndarray | None = None
    attention: dict[str, np.ndarray] | None = None
    estimator: str = "fit"
    loss: float | None = None
    track_id: int | None = None
    quality: Quality | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "vertices", _ro(self.vertices, np.float32, (-1, 3), "vertices"))
        object.__setattr__(self, "faces", _ro(self.faces, np.int32, (-1, 3), "faces"))
        object.__setattr__(self, "joints3d", _ro(self.joints3d, np.float32, (-1, 3), "joints3d"))
        object.__setattr__(self, "joints2d", _ro(self.joints2d, np.float32, (-1, 2), "joints2d"))
        if self.keypoints2d is not None:
            object.__setattr__(self, "keypoints2d", _ro(self.keypoints2d, np.float32, (-1, 2), "keypoints2d"))
        if self.attention is not None:
            object.__setattr__(self, "attention", {k: _ro(v, np.float32) for k, v in self.attention.items()})


@dataclass(frozen=True)
class FrameResult:
    """Everything estimated on one frame: persons (in order) and one MeshResult-or-error per person."""

    frame_index: int
    persons: tuple[Person, ...]
    meshes: tuple[MeshResult | None, ...]
    errors: tuple[str | None, ...] = ()



@runtime_checkable
class Estimator(Protocol):
    """What both estimators (key-point fitting and the DPMesh network) offer.

    ``estimate`` takes an RGB uint8 image (H, W, 3) and the persons of that frame and returns one entry
    per person, in order: a ``MeshResult``, or the ``EstimationError`` that person raised (a person that
    fails, e.g. with fewer than 2 visible joints, never stops the others).
    ``previous`` (optional, same length) gives last frame's results for warm starts on video.
    """

    name: str

    def estimate(
        self,
        image: np.ndarray,
        persons: Sequence[Person],
        camera: Camera | None = None,
        previous: Sequence[MeshResult | None] | None = None,
    ) -> list[MeshResult | EstimationError]: ...
