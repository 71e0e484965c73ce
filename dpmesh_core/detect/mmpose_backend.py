"""Adapter over a real mmpose 1.x pose model (and optionally an mmdet person detector).

mmpose is never a dependency (see README.md; ``scripts/mmpose_env.sh`` builds an environment that has it):
give a pose config + checkpoint that your mmpose installation loads offline (``mmpose.apis.init_model``),
or a model already built with it, and optionally an mmdet config + checkpoint (``mmdet.apis.init_detector``)
for the person boxes of a top-down model.

What is called, as mmpose's own ``demo/topdown_demo_with_mmdet.py`` does:

* top-down models (RTMPose, HRNet, ViTPose, ...): person boxes from the mmdet detector (label
  ``det_cat_id``, score > ``bbox_thr``, NMS at ``nms_thr``), or the whole image when no detector is given;
  then ``mmpose.apis.inference_topdown(model, bgr, boxes, bbox_format="xyxy")``.
  ``detect_in_box`` passes the user's box straight to ``inference_topdown``. (``MMPoseInferencer`` is not
  used: in mmpose 1.3.2 its top-down ``preprocess_single`` discards the ``bboxes`` argument, and with no
  detector given it downloads the default RTMDet.)
* bottom-up / one-stage models (RTMO, DEKR, ...): ``mmpose.apis.inference_bottomup(model, bgr)``;
  ``detect_in_box`` runs it on the box widened by 25 % and keeps the best-matching person.

Images go to mmpose as BGR uint8 arrays (its data preprocessors convert with ``bgr_to_rgb=True``).
Key-point scores are clipped to [0, 1] (RTMPose's SimCC scores can exceed 1). The model must predict the
COCO-17 layout (17 key-points named as COCO's, checked on ``model.dataset_meta`` at construction), else
InputError. Person score: the detector's box score when there is one, else the mean key-point score
(mmpose's top-down ``bbox_scores`` are constant ones).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np

from ..errors import InputError, ModelFilesMissingError
from ..types import Person
from .base import DEFAULT_VISIBLE_THRESHOLD, as_box, as_rgb_uint8, make_person, pick_in_box

log = logging.getLogger(__name__)

MMPOSE_HINT = ("the mmpose backend needs a working mmpose installation (mmpose 1.x, mmcv with ops, mmdet) "
               "and a pose config + checkpoint on disk; dpmesh never installs it: "
               "`bash scripts/mmpose_env.sh` builds .venv-mmpose (see README.md, \"Optional backends\")")

COCO17_NAMES = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
    "right_knee", "left_ankle", "right_ankle",
)


def mmpose_available() -> tuple[bool, str]:
    """(importable, detail) for mmpose: imports ``mmpose.apis`` (and so mmcv, mmengine) to be sure."""
    import importlib.util

    if importlib.util.find_spec("mmpose") is None:
        return False, "mmpose is not installed"
    try:
        import mmpose  # type: ignore[import-not-found]
        from mmpose.apis import inference_topdown  # type: ignore[import-not-found]  # noqa: F401
    except Exception as e:  # noqa: BLE001 - a broken mmcv / mmengine shows up here in many forms
        return False, f"mmpose is installed but does not import: {type(e).__name__}: {e}"
    return True, f"mmpose {getattr(mmpose, '__version__', '?')} imports"


def check_coco17_meta(meta: Any, what: str = "the mmpose model") -> None:
    """InputError unless ``meta`` (an mmpose ``dataset_meta``) describes the COCO-17 key-point layout."""
    if not isinstance(meta, dict):
        return  # nothing to check against; the per-call shape check still applies
    n = meta.get("num_keypoints")
    names = meta.get("keypoint_id2name")
    dataset = meta.get("dataset_name", "?")
    if n is not None and int(n) != 17:
        raise InputError(f"{what} predicts {int(n)} key-points (dataset {dataset!r}); the COCO-17 layout is needed")
    if isinstance(names, dict) and names:
        got = tuple(str(names.get(i, names.get(str(i), ""))) for i in range(len(names)))
        if got[:17] != COCO17_NAMES or len(got) != 17:
            raise InputError(f"{what} predicts key-points {list(got[:5])}... (dataset {dataset!r}), not the "
                             f"COCO-17 layout {list(COCO17_NAMES[:5])}...")


def persons_from_instances(keypoints: Any, keypoint_scores: Any, boxes: Any = None, box_scores: Any = None,
                           image_shape: tuple[int, ...] | None = None,
                           visible_threshold: float = DEFAULT_VISIBLE_THRESHOLD) -> list[Person]:
    """Persons from mmpose's ``pred_instances`` arrays: keypoints (N, 17, 2) image pixels, keypoint_scores
    (N, 17), optional bboxes (N, 4) x0, y0, x1, y1 and box scores (N,). Scores are clipped to [0, 1]; a
    person's score is its box score when given, else its mean key-point score; a person with a non-finite
    key-point or score is dropped (with a warning). Not sorted."""
    xy = np.asarray(keypoints, np.float32)
    if xy.size == 0:
        return []
    if xy.ndim == 2:
        xy = xy[None]
    n, j = xy.shape[:2]
    if j != 17 or xy.shape[2] < 2:
        raise InputError(f"mmpose backend: the model predicts {j} key-points; the COCO-17 layout is needed")
    sc = np.asarray(keypoint_scores, np.float32).reshape(n, -1)
    if sc.shape[1] != 17:
        raise InputError(f"mmpose backend: {sc.shape[1]} key-point scores for 17 key-points")
    finite = np.isfinite(xy).all(axis=(1, 2)) & np.isfinite(sc).all(axis=1)
    if not finite.all():  # a diverging candidate (seen with RTMO): drop it, keep the frame's other persons
        log.warning("mmpose backend: %d of %d persons with non-finite key-points or scores dropped",
                    int((~finite).sum()), n)
    sc = np.clip(np.nan_to_num(sc), 0.0, 1.0)
    bx = None if boxes is None else np.asarray(boxes, np.float32).reshape(n, -1)[:, :4]
    bs = None if box_scores is None else np.asarray(box_scores, np.float32).reshape(-1)
    out = []
    for i in np.flatnonzero(finite):
        kp = np.concatenate([xy[i, :, :2], sc[i, :, None]], 1)
        if bx is not None:
            box = bx[i]
        elif image_shape is not None and not (sc[i] > 0).any():
            box = np.array([0, 0, image_shape[1], image_shape[0]], np.float32)
        else:
            box = Person.box_from_keypoints(kp)
        score = float(np.clip(bs[i], 0, 1)) if bs is not None and bs.size == n else float(sc[i].mean())
        out.append(make_person(box, kp, score, visible_threshold))
    return out


def _instances(sample: Any) -> tuple[Any, Any, Any, Any]:
    """(keypoints, keypoint_scores, bboxes or None, bbox_scores or None) of a PoseDataSample, as numpy."""
    inst = sample.pred_instances
    if hasattr(inst, "cpu"):
        inst = inst.cpu().numpy()
    get = (lambda k: inst.get(k)) if hasattr(inst, "get") else (lambda k: getattr(inst, k, None))
    return get("keypoints"), get("keypoint_scores"), get("bboxes"), get("bbox_scores")


def numpy_safe_globals() -> Any:
    """A context in which ``torch.load(weights_only=True)`` (torch >= 2.6's default, which mmengine 0.10's
    ``load_checkpoint`` relies on) also accepts numpy arrays, dtypes and scalars: mmpose 1.x checkpoints
    keep their dataset meta (sigmas, colours, weights) as numpy arrays, and fail to load without it.
    Rebuilding numpy data runs no code from the file."""
    import torch

    allowed: list[Any] = [np.ndarray, np.dtype]
    core = getattr(np, "_core", None) or np.core
    allowed += [core.multiarray._reconstruct, core.multiarray.scalar]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        allowed += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType")]
    return torch.serialization.safe_globals(allowed)


def _check_file(path: str | None, what: str) -> None:
    if path is not None and not os.path.isfile(str(path)):
        raise InputError(f"mmpose backend: {what} {path} does not exist")


class MMPoseDetector:
    """Detector protocol over an mmpose pose model (top-down or bottom-up), with an optional mmdet detector.

    config / checkpoint: the pose model's config file and weights (``init_model``); or ``model``: one already
    built. det_config / det_checkpoint (or ``det_model``): an mmdet person detector for top-down models;
    without one a top-down model sees the whole image as one person box. conf: the person score below which
    ``detect`` drops a person; bbox_thr / nms_thr / det_cat_id: the detector's box filtering (as mmpose's
    demo: score > 0.3, NMS 0.3, COCO class 0 = person).
    """

    name = "mmpose"
    licence = "Apache-2.0 (mmpose code); the weights' licence is that of your checkpoint"

    def __init__(self, config: str | None = None, checkpoint: str | None = None, det_config: str | None = None,
                 det_checkpoint: str | None = None, device: str = "cpu",
                 visible_threshold: float = DEFAULT_VISIBLE_THRESHOLD, conf: float = 0.25, bbox_thr: float = 0.3,
                 nms_thr: float = 0.3, det_cat_id: int = 0, model: Any = None, det_model: Any = None):
        try:
            from mmpose.apis import inference_bottomup, inference_topdown  # type: ignore[import-not-found]
        except ImportError as e:
            raise ModelFilesMissingError("python package 'mmpose'", (), f"{MMPOSE_HINT} ({e})") from None
        self._topdown_fn, self._bottomup_fn = inference_topdown, inference_bottomup
        if model is None:
            if config is None:
                raise InputError("mmpose backend: give a pose config (and checkpoint), or a model built with "
                                 "mmpose.apis.init_model")
            _check_file(config, "pose config")
            _check_file(checkpoint, "pose checkpoint")
            if checkpoint is None:
                log.warning("mmpose backend: no pose checkpoint given; the model has random weights")
            from mmpose.apis import init_model  # type: ignore[import-not-found]

            with numpy_safe_globals():
                model = init_model(str(config), None if checkpoint is None else str(checkpoint), device=device)
        self.model = model
        check_coco17_meta(getattr(model, "dataset_meta", None))
        cfg = getattr(model, "cfg", None)
        mode = cfg.get("data_mode", None) if cfg is not None and hasattr(cfg, "get") else None
        if mode is None and cfg is not None:
            mode = "bottomup" if "Bottomup" in str(cfg.get("model", {}).get("type", "")) else "topdown"
        self.data_mode = mode or "topdown"
        if det_model is None and det_config is not None:
            _check_file(det_config, "detector config")
            _check_file(det_checkpoint, "detector checkpoint")
            try:
                from mmdet.apis import init_detector  # type: ignore[import-not-found]
                from mmpose.utils import adapt_mmdet_pipeline  # type: ignore[import-not-found]
            except ImportError as e:
                raise ModelFilesMissingError("python package 'mmdet'", (), f"{MMPOSE_HINT} ({e})") from None
            with numpy_safe_globals():
                det_model = init_detector(str(det_config),
                                          None if det_checkpoint is None else str(det_checkpoint), device=device)
            det_model.cfg = adapt_mmdet_pipeline(det_model.cfg)
        self.det_model = det_model
        self.visible_threshold = float(visible_threshold)
        self.conf, self.bbox_thr, self.nms_thr = float(conf), float(bbox_thr), float(nms_thr)
        self.det_cat_id = int(det_cat_id)

    # -- mmpose calls ---------------------------------------------------------------------------------------

    def person_boxes(self, rgb: np.ndarray) -> np.ndarray | None:
        """(N, 5) x0, y0, x1, y1, score of the persons the mmdet detector finds, or None without one."""
        if self.det_model is None:
            return None
        from mmdet.apis import inference_detector  # type: ignore[import-not-found]
        from mmpose.evaluation.functional import nms  # type: ignore[import-not-found]

        det = inference_detector(self.det_model, np.ascontiguousarray(rgb[:, :, ::-1]))
        inst = det.pred_instances.cpu().numpy()
        boxes = np.concatenate([np.asarray(inst.bboxes, np.float32).reshape(-1, 4),
                                np.asarray(inst.scores, np.float32).reshape(-1, 1)], 1)
        keep = (np.asarray(inst.labels).reshape(-1) == self.det_cat_id) & (boxes[:, 4] > self.bbox_thr)
        boxes = boxes[keep]
        return boxes[nms(boxes, self.nms_thr)] if len(boxes) else boxes

    def _topdown(self, rgb: np.ndarray, boxes: np.ndarray | None) -> list[Person]:
        bgr = np.ascontiguousarray(rgb[:, :, ::-1])
        if boxes is not None and len(boxes) == 0:
            return []
        samples = self._topdown_fn(self.model, bgr, None if boxes is None else boxes[:, :4], bbox_format="xyxy")
        persons = []
        for i, s in enumerate(samples):
            kp, sc, bb, _ = _instances(s)
            score = None if boxes is None or boxes.shape[1] < 5 else boxes[i : i + 1, 4]
            persons += persons_from_instances(kp, sc, bb, score, rgb.shape, self.visible_threshold)
        return persons

    def _bottomup(self, rgb: np.ndarray) -> list[Person]:
        samples = self._bottomup_fn(self.model, np.ascontiguousarray(rgb[:, :, ::-1]))
        persons = []
        for s in samples:
            kp, sc, bb, bs = _instances(s)
            persons += persons_from_instances(kp, sc, bb, bs, rgb.shape, self.visible_threshold)
        return persons

    # -- protocol -------------------------------------------------------------------------------------------

    def detect(self, image: Any) -> list[Person]:
        """Every person, best score first: detector boxes (or the whole image) + top-down pose, or the
        bottom-up model's persons; persons scoring below ``conf`` are dropped."""
        rgb = as_rgb_uint8(image)
        if self.data_mode == "bottomup":
            found = self._bottomup(rgb)
        else:
            found = self._topdown(rgb, self.person_boxes(rgb))
        found = [p for p in found if p.score >= self.conf]
        found.sort(key=lambda p: -p.score)
        return found

    def detect_in_box(self, image: Any, box: Any) -> Person | None:
        """The person inside a user-drawn box (4,) x0, y0, x1, y1: top-down pose on exactly that box, or (for a
        bottom-up model) the best-matching person on the box widened by 25 %. ``box`` is the user's box."""
        img = as_rgb_uint8(image)
        b = as_box(box, img.shape)
        if self.data_mode == "bottomup":
            c, half = (b[:2] + b[2:]) / 2, (b[2:] - b[:2]) / 2 * 1.25
            h, w = img.shape[:2]
            x0, y0 = int(max(0, np.floor(c[0] - half[0]))), int(max(0, np.floor(c[1] - half[1])))
            x1, y1 = int(min(w, np.ceil(c[0] + half[0]))), int(min(h, np.ceil(c[1] + half[1])))
            off = np.array([x0, y0], np.float32)
            moved = []
            for p in self._bottomup(np.ascontiguousarray(img[y0:y1, x0:x1])):
                kp = p.keypoints.copy()
                kp[:, :2] += off
                moved.append(make_person(p.box + np.tile(off, 2), kp, p.score, self.visible_threshold))
            best = pick_in_box(moved, b)
        else:
            found = self._topdown(img, b[None].astype(np.float32))
            best = found[0] if found else None
        return None if best is None else make_person(b, best.keypoints, best.score, self.visible_threshold)
