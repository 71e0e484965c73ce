"""Key-point files written by mmpose 1.x (``--keypoints``): the MMPoseInferencer's per-image and per-video
JSON and the demo scripts' ``{meta_info, instance_info}`` files.

The documents are built here the way mmpose 1.3.2 builds them (``mmpose.structures.split_instances``: per
instance ``keypoints`` [[x, y], ...], ``keypoint_scores``, ``bbox`` as a 1-tuple of [x0, y0, x1, y1],
``bbox_score``; the inferencer dumps them with ``mmengine.dump``, the demos with ``json_tricks``, which
writes numpy arrays as ``{"__ndarray__": ..., "dtype", "shape"}``). Files written by a real mmpose are read
by test_detect_mmpose_integration.py in the mmpose environment.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dpmesh_core.errors import KeypointFileError
from dpmesh_core.io import read_keypoints
from dpmesh_core.io.keypoints import COCO17_NAMES, detect_keypoint_format


def _instance(seed: int, n: int = 17, bbox: bool = True, score=0.87) -> dict:
    rng = np.random.default_rng(seed)
    inst = {"keypoints": rng.uniform(20, 400, (n, 2)).tolist(),
            "keypoint_scores": np.linspace(-0.2, 1.4, n).tolist()}  # raw model scores: beyond [0, 1]
    if bbox:
        inst["bbox"] = ([10.0 + seed, 20.0, 300.0, 420.0 + seed],)
        inst["bbox_score"] = score
    return inst


def _trick(a, dtype="float32") -> dict:
    a = np.asarray(a)
    return {"__ndarray__": a.tolist(), "dtype": dtype, "shape": list(a.shape), "Corder": True}


def _meta(names=COCO17_NAMES, dataset="coco") -> dict:
    return {"dataset_name": dataset, "num_keypoints": len(names),
            "keypoint_id2name": {str(i): n for i, n in enumerate(names)},
            "keypoint_name2id": {n: i for i, n in enumerate(names)},
            "sigmas": _trick(np.full(len(names), 0.05)), "flip_indices": list(range(len(names)))}


def _write(path: Path, doc) -> Path:
    path.write_text(json.dumps(doc, indent=2))
    return path


def test_inferencer_image_file(tmp_path):
    insts = [_instance(0), _instance(1, score=0.4), _instance(2, bbox=False)]
    f = _write(tmp_path / "COCO_val2014_000000000395.json", insts)  # the inferencer names it after the image
    assert detect_keypoint_format(json.loads(f.read_text())) == "mmpose"
    table = read_keypoints(f)
    assert list(table) == [0] and len(table[0]) == 3
    for p, d in zip(table[0], insts):
        assert p.joint_set == "coco17" and p.source == "file" and p.keypoints.shape == (17, 3)
        np.testing.assert_allclose(p.keypoints[:, :2], d["keypoints"], rtol=1e-6)
        conf = np.clip(d["keypoint_scores"], 0, 1)
        np.testing.assert_allclose(p.keypoints[:, 2], conf, rtol=1e-6)
        np.testing.assert_array_equal(p.visible, conf > 0.5)  # as the live mmpose backend
    np.testing.assert_allclose(table[0][0].box, [10, 20, 300, 420])
    assert [round(p.score, 3) for p in table[0][:2]] == [0.87, 0.4]
    third = table[0][2]  # no bbox: box around the key-points, score = mean confidence
    assert third.score == pytest.approx(float(np.clip(insts[2]["keypoint_scores"], 0, 1).mean()), rel=1e-6)
    xy = np.asarray(insts[2]["keypoints"])
    assert third.box[0] <= xy[:, 0].min() + 1e-3 and third.box[3] >= xy[:, 1].max() - 1e-3
    assert read_keypoints(f, format="mmpose")[0][0].score == pytest.approx(0.87)
    assert read_keypoints(_write(tmp_path / "empty.json", []), format="mmpose") == {0: []}


def test_inferencer_video_file_frames_from_zero(tmp_path):
    doc = [{"frame_id": i, "instances": [_instance(10 * i + k) for k in range(i + 1)]} for i in range(3)]
    doc[1]["instances"] = []
    table = read_keypoints(_write(tmp_path / "street.json", doc))
    assert list(table) == [0, 1, 2] and [len(v) for v in table.values()] == [1, 0, 3]
    np.testing.assert_allclose(table[2][1].keypoints[:, :2], doc[2]["instances"][1]["keypoints"], rtol=1e-6)


def test_demo_file_with_meta_info_frames_from_one(tmp_path):
    # topdown_demo_with_mmdet.py --save-predictions on a video: frame_id counts from 1 there
    frames = [{"frame_id": i + 1, "instances": [_instance(i, score=1.0)]} for i in range(2)]
    table = read_keypoints(_write(tmp_path / "results_street.json", {"meta_info": _meta(), "instance_info": frames}))
    assert list(table) == [0, 1]
    np.testing.assert_allclose(table[1][0].keypoints[:, :2], frames[1]["instances"][0]["keypoints"], rtol=1e-6)
    # on an image it holds the instance list itself; bbox_score may be a json_tricks numpy scalar
    inst = _instance(5)
    inst["bbox_score"] = {"__ndarray__": 0.75, "dtype": "float32", "shape": []}
    table = read_keypoints(_write(tmp_path / "results_395.json", {"meta_info": _meta(), "instance_info": [inst]}))
    assert list(table) == [0] and table[0][0].score == pytest.approx(0.75)
    # whole-body layouts keep their first 17 (= COCO-17) points
    names = COCO17_NAMES + tuple(f"extra_{i}" for i in range(116))
    table = read_keypoints(_write(tmp_path / "wb.json", {"meta_info": _meta(names, "coco_wholebody"),
                                                         "instance_info": [_instance(3, n=133)]}))
    assert table[0][0].keypoints.shape == (17, 3)


AP10K = ("left_eye", "right_eye", "nose", "neck", "root_of_tail", "left_shoulder", "left_elbow", "left_front_paw",
         "right_shoulder", "right_elbow", "right_front_paw", "left_hip", "left_knee", "left_back_paw", "right_hip",
         "right_knee", "right_back_paw")


@pytest.mark.parametrize("case, match", [
    ("ap10k", "ap10k"),
    ("mpii", "16 key-points"),
    ("count", "21 key-points"),
    ("3d", "3 coordinates"),
    ("nan", "NaN"),
    ("scores", "16 keypoint_scores"),
    ("frame0", "frame_id must be an integer >= 1"),
    ("dup", "appears twice"),
    ("bbox", "bbox must have 4"),
    ("mixed", "instances or"),
])
def test_bad_mmpose_files_are_refused(tmp_path, case, match):
    inst = _instance(0)
    doc: object = [inst]
    if case == "ap10k":
        doc = {"meta_info": _meta(AP10K, "ap10k"), "instance_info": [inst]}
    elif case == "mpii":
        doc = {"meta_info": _meta(COCO17_NAMES[:16], "mpii"), "instance_info": [_instance(0, n=16)]}
    elif case == "count":
        doc = [_instance(0, n=21)]
    elif case == "3d":
        inst["keypoints"] = [p + [1.0] for p in inst["keypoints"]]
    elif case == "nan":
        inst["keypoints"][3][0] = float("nan")
    elif case == "scores":
        inst["keypoint_scores"] = inst["keypoint_scores"][:16]
    elif case == "frame0":
        doc = {"meta_info": _meta(), "instance_info": [{"frame_id": 0, "instances": [inst]}]}
    elif case == "dup":
        doc = [{"frame_id": 4, "instances": []}, {"frame_id": 4, "instances": [inst]}]
    elif case == "bbox":
        inst["bbox"] = ([1.0, 2.0, 3.0],)
    elif case == "mixed":
        doc = {"meta_info": _meta(), "instance_info": [inst, {"frame_id": 1, "instances": []}]}
    f = _write(tmp_path / f"{case}.json", doc)
    with pytest.raises(KeypointFileError, match=match) as ei:
        read_keypoints(f)
    assert f.name in str(ei.value)


# ------------------------------------------------------------------------------ files written by a real mmpose

DATA = Path(__file__).parent / "data" / "mmpose"


def test_files_written_by_a_real_mmpose():
    """JSON written by mmpose 1.3.2 itself (RTMPose-t with random weights; made by
    test_detect_mmpose_integration.py with DPMESH_WRITE_MMPOSE_FIXTURES=tests/core/data/mmpose in the
    mmpose environment): the inferencer on COCO_val2014_000000000395.jpg and on 3 frames of street.avi, and
    topdown_demo_with_mmdet.py --save-predictions on the photo."""
    raw = json.loads((DATA / "inferencer_image_395.json").read_text())
    table = read_keypoints(DATA / "inferencer_image_395.json")
    assert list(table) == [0] and len(table[0]) == len(raw) == 1
    p, d = table[0][0], raw[0]
    np.testing.assert_allclose(p.keypoints[:, :2], d["keypoints"], rtol=1e-6)
    np.testing.assert_allclose(p.keypoints[:, 2], np.clip(d["keypoint_scores"], 0, 1), rtol=1e-6)
    np.testing.assert_allclose(p.box, np.asarray(d["bbox"]).reshape(4), rtol=1e-6)
    assert min(d["keypoint_scores"]) < 1 < max(d["keypoint_scores"])  # raw scores, clipped on reading

    frames = read_keypoints(DATA / "inferencer_video_street3.json")
    raw = json.loads((DATA / "inferencer_video_street3.json").read_text())
    assert list(frames) == [f["frame_id"] for f in raw] == [0, 1, 2]
    for key, f in zip(frames, raw):
        assert len(frames[key]) == len(f["instances"])
        np.testing.assert_allclose(frames[key][0].keypoints[:, :2], f["instances"][0]["keypoints"], rtol=1e-6)

    raw = json.loads((DATA / "topdown_demo_395.json").read_text())
    assert raw["meta_info"]["dataset_name"] == "coco" and "__ndarray__" in json.dumps(raw["meta_info"])
    table = read_keypoints(DATA / "topdown_demo_395.json")
    assert list(table) == [0] and len(table[0]) == len(raw["instance_info"]) == 3  # trimmed from 300
    for p, d in zip(table[0], raw["instance_info"]):
        assert p.joint_set == "coco17" and p.score == 1.0  # the demo stores constant box scores
        np.testing.assert_allclose(p.keypoints[:, :2], d["keypoints"], rtol=1e-6)
