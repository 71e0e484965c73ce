"""Optional backends behind the same protocol: mmpose adapter, key-points from file, mediapipe."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dpmesh_core.detect import Detector, get_detector
from dpmesh_core.detect.mediapipe_backend import BLAZEPOSE_TO_COCO17, landmarks_to_coco17, mediapipe_available
from dpmesh_core.errors import ConfigError, InputError, ModelFilesMissingError
from dpmesh_core.types import Person


class FakeInferencer:
    """Minimal object with MMPoseInferencer's call interface (a generator of result dicts).

    It "finds" fixed people and records the calls it got, so the adapter's conversions can be checked.
    """

    def __init__(self, people):
        self.people = people
        self.calls = []

    def __call__(self, inputs, return_vis=False, bboxes=None, **kwargs):
        self.calls.append({"shape": inputs.shape, "first_pixel": inputs[0, 0].copy(), "bboxes": bboxes,
                           "return_vis": return_vis})
        if bboxes is not None:
            preds = []
            for b in bboxes:
                x0, y0, x1, y1 = b
                kps = [[x0 + (x1 - x0) * (j + 1) / 18, y0 + (y1 - y0) * (j + 1) / 18] for j in range(17)]
                preds.append({"keypoints": kps, "keypoint_scores": [1.2] * 16 + [0.1], "bbox": (tuple(b),),
                              "bbox_score": 1.0})
        else:
            preds = self.people
        yield {"visualization": [], "predictions": [preds]}


def _inst(x0, y0, score):
    kps = [[x0 + 3 * j, y0 + 5 * j] for j in range(17)]
    return {"keypoints": kps, "keypoint_scores": list(np.linspace(0.1, 0.9, 17)), "bbox": ((x0, y0, x0 + 60, y0 + 90),),
            "bbox_score": score}


def test_mmpose_adapter_with_fake_inferencer():
    fake = FakeInferencer([_inst(10, 20, 0.6), _inst(100, 50, 0.95), _inst(5, 5, 0.1)])
    det = get_detector("mmpose", inferencer=fake, conf=0.25)
    assert isinstance(det, Detector) and det.name == "mmpose"
    img = np.zeros((120, 200, 3), np.uint8)
    img[0, 0] = [255, 0, 0]  # red in RGB
    out = det.detect(img)
    # sorted by score, low score dropped
    assert [round(p.score, 2) for p in out] == [0.95, 0.6]
    assert fake.calls[0]["return_vis"] is False and fake.calls[0]["bboxes"] is None
    np.testing.assert_array_equal(fake.calls[0]["first_pixel"], [0, 0, 255])  # handed over as BGR
    p = out[0]
    assert p.joint_set == "coco17" and p.keypoints.shape == (17, 3)
    np.testing.assert_allclose(p.box, [100, 50, 160, 140])
    np.testing.assert_allclose(p.keypoints[4, :2], [112, 70])
    np.testing.assert_array_equal(p.visible, p.keypoints[:, 2] > 0.5)
    # detect_in_box passes the box to mmpose, clips scores to [0, 1], keeps the user's box
    q = det.detect_in_box(np.dstack([img[:, :, 0]] * 3)[:, :, 0], [150, 100, 20, 10])
    assert fake.calls[-1]["bboxes"] == [[20.0, 10.0, 150.0, 100.0]]
    np.testing.assert_allclose(q.box, [20, 10, 150, 100])
    assert q.keypoints[:, 2].max() == 1.0 and q.keypoints[16, 2] == pytest.approx(0.1)
    assert not q.visible[16] and q.visible[0]


def test_mmpose_adapter_refuses_non_coco17_and_missing_package():
    bad = {"keypoints": [[0, 0]] * 133, "keypoint_scores": [1.0] * 133, "bbox": ((0, 0, 5, 5),), "bbox_score": 1}
    det = get_detector("mmpose", inferencer=FakeInferencer([bad]))
    with pytest.raises(InputError, match="COCO-17"):
        det.detect(np.zeros((10, 10, 3), np.uint8))
    import importlib.util

    if importlib.util.find_spec("mmpose") is None:
        with pytest.raises(ModelFilesMissingError, match="mmpose"):
            get_detector("mmpose", config="rtmpose.py", checkpoint="rtmpose.pth")
    with pytest.raises(InputError):
        get_detector("mmpose")


def test_file_backend_coco_and_frames(tmp_path):
    from dpmesh_core.io.keypoints import write_coco_keypoints

    kp = np.c_[np.arange(17) * 2.0 + 10, np.arange(17) * 3.0 + 20, np.linspace(0.2, 1.0, 17)]
    a = Person(box=[5, 5, 60, 90], keypoints=kp, score=0.8)
    b = Person(box=[100, 5, 160, 90], keypoints=kp + [100, 0, 0], score=0.7)
    f = write_coco_keypoints(tmp_path / "kp.json", {"a.jpg": [a, b], "b.jpg": []})
    det = get_detector("file", path=f)
    assert isinstance(det, Detector) and det.name == "file"
    img = np.zeros((100, 200, 3), np.uint8)
    got = det.detect(img, key="a.jpg")
    assert len(got) == 2 and all(p.source == "file" and p.joint_set == "coco17" for p in got)
    np.testing.assert_allclose(got[0].keypoints[:, :2], kp[:, :2], atol=1e-3)
    assert det.detect(img, key="/some/folder/a.jpg")[1].box[0] == pytest.approx(100)
    assert det.detect(img, key="b.jpg") == [] and det.detect(img, key="c.jpg") == []
    with pytest.raises(InputError, match="key="):
        det.detect(img)
    assert det.detect_in_box(img, [95, 0, 165, 95], key="a.jpg").box[0] == pytest.approx(100)
    assert det.detect_in_box(img, [170, 0, 199, 10], key="a.jpg") is None
    # frame-indexed file: successive detect() calls walk the frames
    fv = write_coco_keypoints(tmp_path / "video.json", {0: [a], 1: [a, b], 2: []})
    dv = get_detector("file", path=fv)
    assert [len(dv.detect(img)) for _ in range(3)] == [1, 2, 0]
    dv.seek(1)
    assert len(dv.detect(img)) == 2 and len(dv.detect(img, key=0)) == 1
    with pytest.raises(ConfigError):
        get_detector("file")


def test_file_backend_openpose_converted_to_coco17(tmp_path):
    # one OpenPose COCO-18 person: joint j at (10 j, 5 j)
    flat = []
    for j in range(18):
        flat += [10.0 * j + 1, 5.0 * j + 1, 0.9]
    (tmp_path / "op.json").write_text(json.dumps({"version": 1.3, "people": [{"pose_keypoints_2d": flat}]}))
    det = get_detector("file", path=tmp_path / "op.json")
    (p,) = det.detect(np.zeros((50, 50, 3), np.uint8))
    assert p.joint_set == "coco17" and p.keypoints.shape == (17, 3)
    # OpenPose-18 index 0 is the nose, 5 the left shoulder; COCO-17 has nose at 0 and left shoulder at 5
    np.testing.assert_allclose(p.keypoints[0, :2], [1, 1])
    np.testing.assert_allclose(p.keypoints[5, :2], [51, 26])


def test_blazepose_mapping():
    lm = np.zeros((33, 3), np.float32)
    lm[:, 0] = np.arange(33) / 33
    lm[:, 1] = 0.5
    lm[:, 2] = 0.7
    kp = landmarks_to_coco17(lm, np.array([100, 200, 166, 300]))
    assert kp.shape == (17, 3)
    np.testing.assert_allclose(kp[:, 0], 100 + np.array(BLAZEPOSE_TO_COCO17) * 2, rtol=1e-5)
    np.testing.assert_allclose(kp[:, 1], 250)
    np.testing.assert_allclose(kp[:, 2], 0.7)


def test_mediapipe_backend_on_a_photo(shared_dir):
    ok, detail = mediapipe_available()
    if not ok:
        with pytest.raises(ModelFilesMissingError, match="mediapipe"):
            get_detector("mediapipe")
        pytest.skip(f"optional mediapipe backend unavailable: {detail}")
    import cv2

    sh = shared_dir
    name = "COCO_val2014_000000000192.jpg"
    ref = json.loads((sh / "reference" / "yolo11n_pose_detections.json").read_text())["images"][name]["people"][0]
    img = np.ascontiguousarray(cv2.imread(str(sh / "media" / name))[:, :, ::-1])
    det = get_detector("mediapipe")
    p = det.detect_in_box(img, ref["box_xyxy"])
    assert p is not None and p.joint_set == "coco17"
    rk = np.array(ref["keypoints"])
    ok_j = (rk[:, 2] > 0.5) & (p.keypoints[:, 2] > 0.5)
    assert ok_j.sum() >= 8
    err = np.linalg.norm(p.keypoints[ok_j, :2] - rk[ok_j, :2], axis=1)
    assert np.median(err) < 15.0
