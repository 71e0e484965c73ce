"""Adapter over ``mmpose.apis.MMPoseInferencer`` for users who already have a working mmpose.

mmpose is never a dependency (see STACK.md): give either a ready inferencer object or a pose config and
checkpoint (and optionally a detector config/checkpoint) that your mmpose installation can load offline.

The inferencer interface used: ``inferencer(img, return_vis=False, bboxes=...)`` is a generator whose
items are dicts ``{"predictions": [[instance, ...]]}``; an instance has ``keypoints`` (J, 2) image
pixels, ``keypoint_scores`` (J,), ``bbox`` ((x0, y0, x1, y1),) and ``bbox_score``. Images are passed as
BGR uint8 arrays (the OpenMMLab convention). Scores are clipped to [0, 1]; the model must predict COCO-17
(17 key-points), else InputError.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import InputError, ModelFilesMissingError
from ..types import Person
from .base import DEFAULT_VISIBLE_THRESHOLD, as_box, as_rgb_uint8, make_person, pick_in_box

MMPOSE_HINT = ("the mmpose backend needs a working mmpose installation (mmpose 1.x, mmcv, mmdet) and a "
               "pose config + checkpoint on disk; it is never installed by dpmesh (see STACK.md)")


def mmpose_available() -> tuple[bool, str]:
    """(importable, detail) for mmpose, without importing it."""
    import importlib.util

    spec = importlib.util.find_spec("mmpose")
    return (spec is not None, "mmpose found" if spec is not None else "mmpose is not installed")


class MMPoseDetector:
    """Detector protocol over an ``MMPoseInferencer`` (or any object with the same call interface)."""

    name = "mmpose"
    licence = "Apache-2.0 (mmpose code); the weights' licence is that of your checkpoint"

    def __init__(self, inferencer: Any = None, config: str | None = None, checkpoint: str | None = None,
                 det_model: str | None = None, det_weights: str | None = None, device: str = "cpu",
                 visible_threshold: float = DEFAULT_VISIBLE_THRESHOLD, conf: float = 0.25):
        if inferencer is None:
            if config is None:
                raise InputError("mmpose backend: give an inferencer, or a pose config (and checkpoint)")
            try:
                from mmpose.apis import MMPoseInferencer  # type: ignore[import-not-found]
            except ImportError as e:
                raise ModelFilesMissingError("python package 'mmpose'", (), f"{MMPOSE_HINT} ({e})") from None
            inferencer = MMPoseInferencer(pose2d=config, pose2d_weights=checkpoint, det_model=det_model,
                                          det_weights=det_weights, device=device)
        if not callable(inferencer):
            raise InputError("mmpose backend: the inferencer must be callable like MMPoseInferencer")
        self.inferencer = inferencer
        self.visible_threshold = float(visible_threshold)
        self.conf = float(conf)

    def _run(self, rgb: np.ndarray, bboxes: list[list[float]] | None = None) -> list[Person]:
        kwargs: dict[str, Any] = {"return_vis": False}
        if bboxes is not None:
            kwargs["bboxes"] = bboxes
        bgr = np.ascontiguousarray(rgb[:, :, ::-1])
        try:
            result = next(iter(self.inferencer(bgr, **kwargs)))
        except StopIteration:
            return []
        preds = result.get("predictions", []) if isinstance(result, dict) else []
        instances = preds[0] if preds and isinstance(preds[0], (list, tuple)) else preds
        h, w = rgb.shape[:2]
        persons = []
        for inst in instances:
            xy = np.asarray(inst.get("keypoints", []), np.float32).reshape(-1, 2)
            sc = np.clip(np.asarray(inst.get("keypoint_scores", np.ones(len(xy))), np.float32).reshape(-1), 0, 1)
            if xy.shape[0] != 17 or sc.shape[0] != 17:
                raise InputError(f"mmpose backend: the model predicts {xy.shape[0]} key-points; COCO-17 needed")
            kp = np.concatenate([xy, sc[:, None]], 1)
            bb = inst.get("bbox")
            if bb is not None:
                box = np.asarray(bb, np.float32).reshape(-1)[:4]
            else:
                box = Person.box_from_keypoints(kp) if (sc > 0).any() else np.array([0, 0, w, h], np.float32)
            score = inst.get("bbox_score", float(sc.mean()))
            score = float(np.asarray(score, np.float32).reshape(-1)[0]) if np.size(score) else float(sc.mean())
            if bboxes is None and score < self.conf:
                continue
            persons.append(make_person(box, kp, float(np.clip(score, 0, 1)), self.visible_threshold))
        persons.sort(key=lambda p: -p.score)
        return persons

    def detect(self, image: Any) -> list[Person]:
        """Every person mmpose finds (its own detector, or the whole image for top-down without one)."""
        return self._run(as_rgb_uint8(image))

    def detect_in_box(self, image: Any, box: Any) -> Person | None:
        """Top-down pose inside the given box (passed to mmpose as ``bboxes``)."""
        img = as_rgb_uint8(image)
        b = as_box(box, img.shape)
        found = self._run(img, bboxes=[[float(v) for v in b]])
        best = pick_in_box(found, b, min_iou=0.0)
        return None if best is None else make_person(b, best.keypoints, best.score, self.visible_threshold)
