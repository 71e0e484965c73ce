"""Key-point files: every format read, autodetected, round-tripped, and every bad-input case refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from shared_data import REFERENCE

from dpmesh_core.errors import InputError, KeypointFileError
from dpmesh_core.io import BODY25_TO_OPENPOSE18, read_keypoints, write_coco_keypoints, write_openpose
from dpmesh_core.io.keypoints import detect_keypoint_format
from dpmesh_core.types import VISIBLE_THRESHOLD, Person

DETECTIONS = REFERENCE / "yolo11n_pose_detections.json"


def _kp(n, seed):
    rng = np.random.default_rng(seed)
    kp = np.zeros((n, 3), np.float32)
    kp[:, 0] = rng.uniform(10, 300, n)
    kp[:, 1] = rng.uniform(10, 200, n)
    kp[:, 2] = rng.uniform(0.2, 1.0, n)
    return kp


def _write(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj))
    return path


def _coco_dataset():
    kp = _kp(17, 0)
    flags = np.full(17, 2)
    flags[[1, 2]] = 1  # labelled, occluded
    flags[[3]] = 0  # not labelled
    flat = []
    for (x, y, _), v in zip(kp, flags):
        flat += [float(x), float(y), int(v)] if v else [0.0, 0.0, 0]
    return {
        "images": [{"id": 7, "file_name": "a.jpg", "width": 320, "height": 240},
                   {"id": 8, "file_name": "b.jpg", "width": 320, "height": 240}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 1, "keypoints": flat, "num_keypoints": 16,
             "bbox": [10, 20, 100, 150], "area": 15000, "iscrowd": 0},
            {"id": 2, "image_id": 7, "category_id": 1, "keypoints": [0] * 51, "num_keypoints": 0,
             "bbox": [0, 0, 50, 50], "iscrowd": 1},
        ],
        "categories": [{"id": 1, "name": "person"}],
    }, kp, flags


def test_coco_dataset_visibility_flags(tmp_path):
    doc, kp, flags = _coco_dataset()
    out = read_keypoints(_write(tmp_path / "coco.json", doc))
    assert list(out) == ["a.jpg", "b.jpg"]
    assert out["b.jpg"] == []
    assert len(out["a.jpg"]) == 1  # the crowd annotation is skipped
    p = out["a.jpg"][0]
    assert p.joint_set == "coco17" and p.source == "file" and p.num_joints == 17
    np.testing.assert_array_equal(p.visible, flags == 2)
    np.testing.assert_array_equal(p.keypoints[:, 2], (flags > 0).astype(np.float32))
    np.testing.assert_allclose(p.keypoints[flags > 0, :2], kp[flags > 0, :2], rtol=1e-6)
    np.testing.assert_allclose(p.box, [10, 20, 110, 170])
    assert p.weights[1] == 0 and p.weights[3] == 0 and p.weights[0] == 1


def test_coco_results_and_alphapose(tmp_path):
    kp1, kp2 = _kp(17, 1), _kp(26, 2)
    kp1[4, 2] = 0.0
    res = [{"image_id": 42, "category_id": 1, "keypoints": kp1.reshape(-1).tolist(), "score": 0.8},
           {"image_id": 42, "category_id": 1, "keypoints": _kp(17, 3).reshape(-1).tolist(), "score": 0.5},
           {"image_id": 43, "category_id": 1, "keypoints": _kp(17, 4).reshape(-1).tolist(), "score": 0.9}]
    f = _write(tmp_path / "res.json", res)
    assert detect_keypoint_format(json.loads(f.read_text())) == "coco_results"
    out = read_keypoints(f)
    assert sorted(out) == [42, 43] and len(out[42]) == 2
    p = out[42][0]
    np.testing.assert_allclose(p.keypoints, kp1, rtol=1e-6)
    # the one visibility rule of every source (types.is_visible): confidence > 0.5, as for the detectors
    np.testing.assert_array_equal(p.visible, kp1[:, 2] > VISIBLE_THRESHOLD)
    assert not p.visible[4] and p.score == pytest.approx(0.8)
    # box from the key-points when the file has none: covers every labelled point
    lab = kp1[kp1[:, 2] > 0, :2]
    assert (p.box[:2] <= lab.min(0)).all() and (p.box[2:] >= lab.max(0)).all()

    ap = [{"image_id": "img1.jpg", "category_id": 1, "keypoints": kp2.reshape(-1).tolist(), "score": 2.7,
           "box": [5, 6, 50, 80], "idx": [3]}]
    out = read_keypoints(_write(tmp_path / "alphapose-results.json", ap))
    p = out["img1.jpg"][0]
    assert p.joint_set == "coco17" and p.num_joints == 17  # Halpe-26 keeps its COCO-17 head
    np.testing.assert_allclose(p.keypoints, kp2[:17], rtol=1e-6)
    np.testing.assert_allclose(p.box, [5, 6, 55, 86])
    assert p.track_id == 3 and p.score == pytest.approx(2.7)
    assert read_keypoints(tmp_path / "alphapose-results.json", format="alphapose")["img1.jpg"][0].track_id == 3


def _openpose(kps, ids=None):
    return {"version": 1.3, "people": [
        {"person_id": [ids[i] if ids else -1], "pose_keypoints_2d": k.reshape(-1).tolist()} for i, k in enumerate(kps)]}


def test_openpose_coco18_body25_and_folder(tmp_path):
    k18 = _kp(18, 5)
    k18[16] = 0  # missing right ear
    out = read_keypoints(_write(tmp_path / "single.json", _openpose([k18], ids=[4])))
    assert list(out) == [0]
    p = out[0][0]
    assert p.joint_set == "openpose18" and p.track_id == 4
    np.testing.assert_allclose(p.keypoints, k18, rtol=1e-6)
    assert not p.visible[16]
    np.testing.assert_array_equal(p.visible, k18[:, 2] > VISIBLE_THRESHOLD)

    k25 = _kp(25, 6)
    out = read_keypoints(_write(tmp_path / "b25.json", _openpose([k25])))
    p = out[0][0]
    assert p.joint_set == "openpose18"
    np.testing.assert_allclose(p.keypoints, k25[list(BODY25_TO_OPENPOSE18)], rtol=1e-6)
    np.testing.assert_allclose(p.keypoints[8], k25[9], rtol=1e-6)  # RHip skips MidHip

    d = tmp_path / "op"
    d.mkdir()
    _write(d / "clip_000000000012_keypoints.json", _openpose([k18, _kp(18, 7)]))
    _write(d / "clip_000000000003_keypoints.json", _openpose([]))
    out = read_keypoints(d)
    assert list(out) == [3, 12] and out[3] == [] and len(out[12]) == 2


def test_coco_roundtrip_with_confidences_and_int_keys(tmp_path):
    kp = _kp(17, 8)
    vis = np.ones(17, bool)
    vis[[2, 9]] = False
    kp[5, 2] = 0.0
    vis[5] = False
    frames = {
        0: [Person(box=[1, 2, 30, 40], keypoints=kp, visible=vis, score=0.7, track_id=2, source="detector")],
        5: [],
        9: [Person(box=[5, 5, 60, 90], keypoints=_kp(17, 9))],
    }
    f = write_coco_keypoints(tmp_path / "out.json", frames, image_sizes={0: (320, 240)})
    doc = json.loads(f.read_text())
    assert doc["categories"][0]["name"] == "person" and len(doc["categories"][0]["skeleton"]) == 19
    assert doc["images"][0]["width"] == 320 and doc["images"][0]["file_name"] == "frame_000000"
    a = doc["annotations"][0]
    assert a["bbox"] == [1, 2, 29, 38] and a["area"] == pytest.approx(29 * 38)
    v = a["keypoints"][2::3]
    assert v[2] == 1 and v[9] == 1 and v[5] == 0 and v[0] == 2 and a["num_keypoints"] == 16
    back = read_keypoints(f)
    assert list(back) == [0, 5, 9] and back[5] == []
    p, q = back[0][0], frames[0][0]
    np.testing.assert_allclose(p.keypoints, q.keypoints, atol=1e-3)
    np.testing.assert_array_equal(p.visible, q.visible)
    np.testing.assert_allclose(p.box, q.box, atol=1e-3)
    assert p.track_id == 2 and p.score == pytest.approx(0.7) and p.joint_set == "coco17"


def test_openpose_roundtrip_and_conversion(tmp_path):
    k18 = _kp(18, 10)
    vis = np.ones(18, bool)
    vis[3] = False
    frames = {0: [Person(box=[0, 0, 300, 200], keypoints=k18, visible=vis, joint_set="openpose18", track_id=1)],
              # confidences above the visibility threshold: every joint visible, so all of them round-trip
              1: [Person(box=[0, 0, 300, 200], keypoints=np.c_[_kp(17, 11)[:, :2], np.linspace(0.6, 1.0, 17)])]}
    files = write_openpose(tmp_path / "op", frames, stem="clip")
    assert [f.name for f in files] == ["clip_000000000000_keypoints.json", "clip_000000000001_keypoints.json"]
    back = read_keypoints(tmp_path / "op")
    p = back[0][0]
    np.testing.assert_allclose(p.keypoints[:, :2], k18[:, :2], atol=1e-3)
    # occluded -> confidence 0 -> not visible; visible joints stay visible when their confidence is > 0.5
    np.testing.assert_array_equal(p.visible, vis & (k18[:, 2] > VISIBLE_THRESHOLD))
    assert p.keypoints[3, 2] == 0 and p.track_id == 1
    c = back[1][0]  # COCO-17 converted to OpenPose-18: Neck = mean of the shoulders
    k17 = frames[1][0].keypoints
    assert c.joint_set == "openpose18"
    np.testing.assert_allclose(c.keypoints[1, :2], (k17[5, :2] + k17[6, :2]) / 2, atol=1e-3)
    np.testing.assert_allclose(c.keypoints[0], k17[0], atol=1e-3)  # nose
    np.testing.assert_allclose(c.keypoints[2], k17[6], atol=1e-3)  # R_Shoulder
    # and back to COCO through a COCO dataset file
    f = write_coco_keypoints(tmp_path / "c.json", {"x.jpg": back[1]})
    np.testing.assert_allclose(read_keypoints(f)["x.jpg"][0].keypoints, k17, atol=1e-3)


def test_reference_detections_roundtrip(tmp_path):
    ref = json.loads(DETECTIONS.read_text())
    frames = {name: [Person(box=p["box_xyxy"], keypoints=p["keypoints"], score=p["score"]) for p in im["people"]]
              for name, im in ref["images"].items()}
    sizes = {name: (im["width"], im["height"]) for name, im in ref["images"].items()}
    back = read_keypoints(write_coco_keypoints(tmp_path / "ref.json", frames, sizes))
    assert list(back) == list(frames) and len(back) == 16
    n = 0
    for name, persons in frames.items():
        assert len(back[name]) == len(persons)
        for p, q in zip(persons, back[name]):
            np.testing.assert_allclose(q.keypoints, p.keypoints, atol=1e-3)
            np.testing.assert_allclose(q.box, p.box, atol=1e-2)
            n += 1
    assert n > 16


@pytest.mark.parametrize("case,match", [
    ("nan", "NaN"), ("inf", "inf"), ("negconf", "negative confidence"), ("count", "expected 17 joints"),
    ("flag", "visibility flag 3"), ("broken", "broken JSON"), ("unknown", "unknown key-point format"),
    ("empty", "empty file"), ("opcount", "18 joints"), ("opneg", "negative confidence"),
    ("strcoord", "non-number"), ("badbox", "bbox"), ("badimage", "not in 'images'"),
])
def test_bad_inputs(tmp_path, case, match):
    kp = _kp(17, 12).reshape(-1).tolist()
    res = [{"image_id": 1, "category_id": 1, "keypoints": kp, "score": 0.9}]
    f = tmp_path / f"{case}.json"
    if case == "nan":
        res[0]["keypoints"][4] = float("nan")
        f.write_text(json.dumps(res))  # json writes NaN literally, Python reads it back
    elif case == "inf":
        res[0]["keypoints"][0] = float("inf")
        f.write_text(json.dumps(res))
    elif case == "negconf":
        res[0]["keypoints"][5] = -0.5
        _write(f, res)
    elif case == "count":
        res[0]["keypoints"] = kp[:48]
        _write(f, res)
    elif case == "flag":
        doc, _, _ = _coco_dataset()
        doc["annotations"][0]["keypoints"][2] = 3
        _write(f, doc)
    elif case == "broken":
        f.write_text(json.dumps(res)[:-5])
    elif case == "unknown":
        _write(f, {"hello": [1, 2, 3]})
    elif case == "empty":
        f.write_text("   ")
    elif case == "opcount":
        _write(f, {"people": [{"pose_keypoints_2d": [1.0] * 60}]})
    elif case == "opneg":
        k = _kp(18, 13)
        k[2, 2] = -1
        _write(f, _openpose([k]))
    elif case == "strcoord":
        res[0]["keypoints"][3] = "abc"
        _write(f, res)
    elif case == "badbox":
        doc, _, _ = _coco_dataset()
        doc["annotations"][0]["bbox"] = [1, 2, -5, 3]
        _write(f, doc)
    elif case == "badimage":
        doc, _, _ = _coco_dataset()
        doc["annotations"][0]["image_id"] = 99
        _write(f, doc)
    with pytest.raises(KeypointFileError, match=match) as ei:
        read_keypoints(f)
    assert ei.value.path == str(f)
    assert f.name in str(ei.value)


def test_format_argument(tmp_path):
    f = _write(tmp_path / "op.json", _openpose([_kp(18, 14)]))
    assert read_keypoints(f, format="openpose")[0][0].joint_set == "openpose18"
    with pytest.raises(KeypointFileError, match="looks like 'openpose'"):
        read_keypoints(f, format="coco")
    with pytest.raises(KeypointFileError, match="unknown key-point format"):
        read_keypoints(f, format="h36m")
    with pytest.raises(KeypointFileError, match="no such file"):
        read_keypoints(tmp_path / "missing.json")
    empty_dir = tmp_path / "emptydir"
    empty_dir.mkdir()
    with pytest.raises(KeypointFileError, match="no OpenPose"):
        read_keypoints(empty_dir)


def test_writer_refuses_unknown_joint_set(tmp_path):
    p = Person(box=[0, 0, 1, 1], keypoints=np.ones((24, 3)), joint_set="smpl24")
    with pytest.raises(InputError, match="smpl24"):
        write_coco_keypoints(tmp_path / "x.json", {"a.jpg": [p]})
    assert not (tmp_path / "x.json").exists() and list(tmp_path.iterdir()) == []


def test_wholebody_alphapose_and_nan_written_as_missing(tmp_path):
    k133 = _kp(133, 15)
    ap = [{"image_id": "w.jpg", "category_id": 1, "keypoints": k133.reshape(-1).tolist(), "score": 1.0}]
    p = read_keypoints(_write(tmp_path / "wb.json", ap))["w.jpg"][0]
    np.testing.assert_allclose(p.keypoints, k133[:17], rtol=1e-6)
    kp = _kp(17, 16)
    kp[6] = np.nan  # a joint without a position in memory
    f = write_coco_keypoints(tmp_path / "n.json", {"a.jpg": [Person(box=[0, 0, 9, 9], keypoints=kp)]})
    q = read_keypoints(f)["a.jpg"][0]
    assert not q.visible[6] and q.keypoints[6, 2] == 0
    np.testing.assert_allclose(np.delete(q.keypoints, 6, 0), np.delete(kp, 6, 0), atol=1e-3)
    # an OpenPose person with only hand / face points is skipped, not an error
    doc = {"people": [{"pose_keypoints_2d": [], "hand_left_keypoints_2d": [1.0] * 63}]}
    assert read_keypoints(_write(tmp_path / "hands.json", doc)) == {0: []}
