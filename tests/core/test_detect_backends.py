"""Optional backends behind the same protocol: mmpose adapter, key-points from file, mediapipe."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dpmesh_core.detect import Detector, get_detector
from dpmesh_core.detect.mediapipe_backend import BLAZEPOSE_TO_COCO17, landmarks_to_coco17, mediapipe_available
from dpmesh_core.errors import ConfigError, InputError, ModelFilesMissingError
from dpmesh_core.types import Person


def test_mmpose_conversion_of_model_outputs():
    """What the adapter makes of mmpose's ``pred_instances`` arrays (the real-model path is checked end to end
    by test_detect_mmpose_integration.py in the mmpose environment)."""
    from dpmesh_core.detect.mmpose_backend import persons_from_instances

    rng = np.random.default_rng(0)
    kp = rng.uniform(10, 100, (2, 17, 2)).astype(np.float32)
    sc = np.linspace(0.1, 1.3, 34).reshape(2, 17)  # RTMPose's SimCC scores exceed 1
    boxes = np.array([[5, 6, 105, 120], [0, 0, 50, 60]], np.float32)
    out = persons_from_instances(kp, sc, boxes, np.array([0.9, 0.4]), (150, 200), 0.5)
    assert [p.score for p in out] == pytest.approx([0.9, 0.4])
    for p, k, s, b in zip(out, kp, sc, boxes):
        assert p.joint_set == "coco17" and p.source == "detector" and p.keypoints.shape == (17, 3)
        np.testing.assert_allclose(p.keypoints[:, :2], k)
        np.testing.assert_allclose(p.keypoints[:, 2], np.clip(s, 0, 1), rtol=1e-6)
        np.testing.assert_allclose(p.box, b)
        np.testing.assert_array_equal(p.visible, np.clip(s, 0, 1) > 0.5)
    # no boxes (a bottom-up model without them): box from the key-points, score = mean key-point score
    one = persons_from_instances(kp[0], sc[0], image_shape=(150, 200))[0]
    assert one.score == pytest.approx(float(np.clip(sc[0], 0, 1).mean()), rel=1e-6)
    assert one.box[0] <= kp[0, :, 0].min() and one.box[2] >= kp[0, :, 0].max()
    assert persons_from_instances(np.zeros((0, 17, 2)), np.zeros((0, 17))) == []
    # a diverging candidate is dropped, the others kept
    bad = kp.copy()
    bad[0, 3, 1] = np.inf
    kept = persons_from_instances(bad, sc, boxes, np.array([0.9, 0.4]))
    assert len(kept) == 1 and kept[0].score == pytest.approx(0.4)


def test_mmpose_refuses_non_coco17_and_names_missing_package():
    import importlib.util

    from dpmesh_core.detect.base import DEFAULT_VISIBLE_THRESHOLD
    from dpmesh_core.detect.mmpose_backend import COCO17_NAMES, check_coco17_meta, persons_from_instances
    from dpmesh_core.io import keypoints as kpio

    # the io layer's copies (it sits below detect) agree with the detector's
    assert kpio.COCO17_NAMES == COCO17_NAMES and kpio.MMPOSE_VISIBLE_THRESHOLD == DEFAULT_VISIBLE_THRESHOLD
    check_coco17_meta({"num_keypoints": 17, "keypoint_id2name": dict(enumerate(COCO17_NAMES))})
    with pytest.raises(InputError, match="133 key-points"):
        check_coco17_meta({"num_keypoints": 133, "dataset_name": "coco_wholebody"})
    ap10k = ("left_eye", "right_eye", "nose", "neck", "root_of_tail", "left_shoulder", "left_elbow",
             "left_front_paw", "right_shoulder", "right_elbow", "right_front_paw", "left_hip", "left_knee",
             "left_back_paw", "right_hip", "right_knee", "right_back_paw")
    with pytest.raises(InputError, match="ap10k"):  # 17 points, but an animal's
        check_coco17_meta({"num_keypoints": 17, "keypoint_id2name": dict(enumerate(ap10k)), "dataset_name": "ap10k"})
    with pytest.raises(InputError, match="21 key-points"):
        persons_from_instances(np.zeros((1, 21, 2)), np.ones((1, 21)))
    if importlib.util.find_spec("mmpose") is None:
        with pytest.raises(ModelFilesMissingError, match="mmpose_env.sh"):
            get_detector("mmpose", config="rtmpose.py", checkpoint="rtmpose.pth")
    else:
        with pytest.raises(InputError, match="does not exist"):
            get_detector("mmpose", config="rtmpose.py", checkpoint="rtmpose.pth")
        with pytest.raises(InputError, match="pose config"):
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
