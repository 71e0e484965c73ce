"""The detector protocol and helpers shared by every backend.

A detector takes an RGB uint8 image (H, W, 3) — (H, W) grey and (H, W, 4) RGBA arrays are accepted and
converted, see :func:`as_rgb_uint8` — and returns :class:`~dpmesh_core.types.Person` objects in original
image pixels: ``box`` (4,) x0, y0, x1, y1; ``keypoints`` (17, 3) COCO-17 x, y, confidence;
``visible = confidence > visible_threshold`` (default :data:`DEFAULT_VISIBLE_THRESHOLD`);
``joint_set="coco17"``; ``score`` the person score; ``source="detector"``.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..errors import InputError
from ..geometry import box_iou
from ..types import VISIBLE_THRESHOLD, Person

#: A key-point is ``visible`` when its confidence exceeds this. 0.5 is the value Ultralytics draws with,
#: and on the reference photos (crowds, occlusion) YOLO11n-pose confidences are bimodal: of 731 joints,
#: 130 are below 0.2 (hidden or guessed behind other people) and 496 above 0.8, with few in between, so
#: 0.5 sits in the valley; the lower-confidence joints stay in ``keypoints`` for display. It is the one
#: visibility rule of every source (``dpmesh_core.types.VISIBLE_THRESHOLD``: files, the app, detectors).
DEFAULT_VISIBLE_THRESHOLD = VISIBLE_THRESHOLD

#: Largest image side accepted (a sanity bound, not a model limit).
MAX_SIDE = 32768


@runtime_checkable
class Detector(Protocol):
    """2-D person + key-point detector.

    ``detect(image)`` -> every person found, best score first (empty list when there is none).
    ``detect_in_box(image, box)`` -> the person inside a user-drawn box (4,) x0, y0, x1, y1 image pixels,
    or None when nothing person-like is found there.
    """

    name: str

    def detect(self, image: np.ndarray) -> list[Person]: ...

    def detect_in_box(self, image: np.ndarray, box: Any) -> Person | None: ...


def as_rgb_uint8(image: Any) -> np.ndarray:
    """Return a C-contiguous (H, W, 3) uint8 RGB view/copy of ``image``.

    Accepts (H, W) or (H, W, 1) grey, (H, W, 3) RGB, (H, W, 4) RGBA (composited on white, like
    ``io.images``); uint8, bool, other integer types (clipped to 0..255; uint16 scaled by 1/257) and floats
    (scaled by 255 when their maximum is <= 1, else taken as 0..255). Raises InputError for anything
    else (wrong rank, empty, NaN, too large).
    """
    a = np.asarray(image)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)):
        raise InputError(f"image must be (H, W), (H, W, 3) or (H, W, 4); got shape {a.shape}")
    if a.shape[0] < 1 or a.shape[1] < 1:
        raise InputError(f"image is empty (shape {a.shape})")
    if max(a.shape[:2]) > MAX_SIDE:
        raise InputError(f"image too large ({a.shape[1]}x{a.shape[0]}; max side {MAX_SIDE})")
    if a.dtype != np.uint8:
        if a.dtype == np.bool_:
            a = a.astype(np.uint8) * 255
        elif a.dtype == np.uint16:
            a = np.rint(a / 257.0).astype(np.uint8)
        elif np.issubdtype(a.dtype, np.integer):
            a = np.clip(a, 0, 255).astype(np.uint8)
        elif np.issubdtype(a.dtype, np.floating):
            if not np.isfinite(a).all():
                raise InputError("image contains NaN or infinite values")
            scale = 255.0 if a.size == 0 or float(a.max()) <= 1.0 else 1.0  # [0, 1] floats, else 0..255
            a = np.clip(np.rint(a * scale), 0, 255).astype(np.uint8)
        else:
            raise InputError(f"unsupported image dtype {a.dtype}")
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    elif a.shape[2] == 4:
        alpha = a[:, :, 3:4].astype(np.float32) / 255.0
        a = np.rint(a[:, :, :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
    return np.ascontiguousarray(a)


def as_box(box: Any, image_shape: tuple[int, ...] | None = None) -> np.ndarray:
    """(4,) float32 x0, y0, x1, y1 from any 4-sequence; reorders corners; clips to the image when given.

    Raises InputError for a non-finite box or one with no area (after clipping).
    """
    b = np.asarray(box, dtype=np.float64).reshape(-1)
    if b.shape != (4,) or not np.isfinite(b).all():
        raise InputError(f"box must be 4 finite numbers x0, y0, x1, y1; got {box!r}")
    b = np.array([min(b[0], b[2]), min(b[1], b[3]), max(b[0], b[2]), max(b[1], b[3])])
    if image_shape is not None:
        h, w = image_shape[:2]
        b = np.clip(b, 0, [w, h, w, h])
    if b[2] - b[0] < 1 or b[3] - b[1] < 1:
        raise InputError(f"box {np.round(b, 1).tolist()} has no area inside the image")
    return b.astype(np.float32)


def make_person(box: np.ndarray, keypoints: np.ndarray, score: float,
                visible_threshold: float = DEFAULT_VISIBLE_THRESHOLD, source: str = "detector") -> Person:
    """A COCO-17 Person from a box (4,), key-points (17, 3) and a score; ``visible = conf > threshold``."""
    kp = np.asarray(keypoints, np.float32)
    return Person(box=np.asarray(box, np.float32), keypoints=kp, visible=kp[:, 2] > visible_threshold,
                  joint_set="coco17", score=float(score), source=source)


def pick_in_box(persons: list[Person], box: np.ndarray, min_iou: float = 0.1) -> Person | None:
    """The person whose box best matches ``box`` (IoU x score), or None below ``min_iou``."""
    if not persons:
        return None
    iou = box_iou(np.stack([p.box for p in persons]), box[None])[:, 0]
    rank = iou * np.array([max(p.score, 1e-3) for p in persons])
    i = int(np.argmax(rank))
    return persons[i] if iou[i] >= min_iou else None
