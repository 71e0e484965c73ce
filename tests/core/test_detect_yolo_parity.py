"""Numeric parity of our torch YOLO11n-pose with the reference (ONNX/onnxruntime) outputs in ../shared."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from dpmesh_core.detect import get_detector
from dpmesh_core.detect.yolo import letterbox, nms, postprocess
from dpmesh_core.detect.yolo_net import build_from_checkpoint, load_yolo_pose_net
from dpmesh_core.detect.yolo_weights import read_yolo_checkpoint
from dpmesh_core.geometry import box_iou


def read_rgb(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert bgr is not None, f"cannot read {path}"
    return np.ascontiguousarray(bgr[:, :, ::-1])


@pytest.fixture(scope="module")
def detector():
    return get_detector("yolo", device="cpu", conf=0.25, iou=0.7)


def test_checkpoint_is_read_without_ultralytics():
    ck = read_yolo_checkpoint()
    assert len(ck.state) == 541
    n_params = sum(t.numel() for k, t in ck.state.items() if "running" not in k and "num_batches" not in k)
    assert 2.8e6 < n_params < 3.0e6
    assert ck.state["model.0.conv.weight"].dtype == torch.float16
    assert ck.yaml["kpt_shape"] == [17, 3]
    assert ck.stride == (8.0, 16.0, 32.0)
    assert ck.modules["model.23"] == "Pose" and ck.modules["model.10"] == "C2PSA"
    import sys

    assert "ultralytics" not in sys.modules


def test_raw_output_matches_reference(reference_dir):
    ref_dir = reference_dir
    x = read_rgb(ref_dir / "yolo11n_pose_input_395_letterbox640.png")
    ref = np.load(ref_dir / "yolo11n_pose_raw_output_395.npy")
    assert x.shape == (640, 640, 3) and ref.shape == (1, 56, 8400)
    t = torch.from_numpy(x).permute(2, 0, 1)[None].float() / 255.0
    rng = float(ref.max() - ref.min())
    # the fused, channels-last network used by the detector
    with torch.inference_mode():
        out = load_yolo_pose_net("cpu", torch.float32)(t.contiguous(memory_format=torch.channels_last)).numpy()
    assert out.shape == ref.shape
    err = np.abs(out - ref)
    assert err.max() <= 1e-3 * rng, f"max abs error {err.max():.4g} vs range {rng:.4g}"
    # every row group agrees (boxes, score, key-points) — not only the largest values
    assert err[:, 4].max() < 1e-3  # person score (sigmoid)
    # the unfused network gives the same numbers (BN fusion is exact up to rounding)
    with torch.inference_mode():
        plain_net = build_from_checkpoint(read_yolo_checkpoint()).to(memory_format=torch.channels_last)
        plain = plain_net(t.contiguous(memory_format=torch.channels_last)).numpy()
    assert np.abs(plain - ref).max() <= 1e-3 * rng
    assert np.abs(plain - out).max() <= 1e-4 * rng


def test_letterbox_reproduces_reference_input(shared_dir):
    sh = shared_dir
    ref = read_rgb(sh / "reference" / "yolo11n_pose_input_395_letterbox640.png")
    canvas, gain, pad = letterbox(read_rgb(sh / "media" / "COCO_val2014_000000000395.jpg"))
    assert canvas.shape == (640, 640, 3) and gain == 1.0 and pad == (0, 30)
    np.testing.assert_array_equal(canvas, ref)


def test_detections_match_reference_on_every_image(detector, shared_dir):
    sh = shared_dir
    ref_all = json.loads((sh / "reference" / "yolo11n_pose_detections.json").read_text())
    images = ref_all["images"]
    assert len(images) >= 10
    checked_kp = 0
    for name, ref in images.items():
        img = read_rgb(sh / "media" / name)
        assert img.shape[:2] == (ref["height"], ref["width"])
        persons = detector.detect(img)
        assert len(persons) == len(ref["people"]), f"{name}: {len(persons)} vs {len(ref['people'])} people"
        if not persons:
            continue
        rb = np.array([p["box_xyxy"] for p in ref["people"]], np.float64)
        iou = box_iou(np.stack([p.box for p in persons]), rb)
        rows, cols = linear_sum_assignment(-iou)
        assert iou[rows, cols].min() >= 0.95, f"{name}: box IoU {iou[rows, cols].min():.3f}"
        for i, j in zip(rows, cols):
            p, r = persons[i], ref["people"][j]
            assert abs(p.score - r["score"]) < 0.01, name
            rk = np.array(r["keypoints"], np.float64)
            ok = rk[:, 2] > 0.5
            err = np.linalg.norm(p.keypoints[ok, :2] - rk[ok, :2], axis=1)
            assert err.size == 0 or err.max() <= 1.5, f"{name}: key-point error {err.max():.2f} px"
            checked_kp += int(ok.sum())
            assert p.joint_set == "coco17" and p.source == "detector" and p.keypoints.shape == (17, 3)
            np.testing.assert_array_equal(p.visible, p.keypoints[:, 2] > 0.5)
        scores = [p.score for p in persons]
        assert scores == sorted(scores, reverse=True)
    assert checked_kp > 300


def test_nms_and_postprocess_basics():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 10.5]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.95], np.float32)
    keep = nms(boxes, scores, 0.5)
    assert keep.tolist() == [3, 2]
    # a raw output with two overlapping candidates and one below threshold
    raw = np.zeros((56, 5), np.float32)
    raw[:4, 0] = [100, 100, 50, 80]
    raw[:4, 1] = [101, 100, 50, 80]
    raw[:4, 2] = [300, 300, 40, 40]
    raw[4] = [0.9, 0.8, 0.2, 0.1, 0.3]
    raw[:4, 4] = [500, 500, 10, 10]
    b, s, k = postprocess(raw, conf=0.25, iou=0.7)
    assert s.tolist() == pytest.approx([0.9, 0.3])
    np.testing.assert_allclose(b[0], [75, 60, 125, 140])
    assert k.shape == (2, 17, 3)


def test_onnxruntime_path_matches_reference_and_torch(reference_dir, monkeypatch):
    """The default runtime (our module exported to ONNX in the cache, run by onnxruntime) gives the reference
    output within the same tolerance as the torch path, for a batch too, and the torch fallback still works."""
    from dpmesh_core.detect.yolo import YoloPoseDetector
    from dpmesh_core.detect.yolo_ort import onnx_path

    x = read_rgb(reference_dir / "yolo11n_pose_input_395_letterbox640.png")
    ref = np.load(reference_dir / "yolo11n_pose_raw_output_395.npy")
    rng = float(ref.max() - ref.min())
    det = YoloPoseDetector()
    assert det.runtime == "onnxruntime" and onnx_path(640).is_file()
    out = det.raw_output(x)
    assert out.shape == ref.shape and np.abs(out - ref).max() <= 1e-3 * rng
    assert np.abs(out[:, 4] - ref[:, 4]).max() < 1e-3
    flipped = np.ascontiguousarray(x[:, ::-1])
    both = det.raw_output(np.stack([x, flipped]))
    np.testing.assert_allclose(both[:1], out, atol=1e-4 * rng)
    torch_det = YoloPoseDetector(runtime="torch")
    assert torch_det.runtime == "torch"
    assert np.abs(both[1:] - torch_det.raw_output(flipped)).max() <= 1e-4 * rng
    monkeypatch.setenv("DPMESH_YOLO_RUNTIME", "torch")
    assert YoloPoseDetector().runtime == "torch"
