"""Datasets: own format round trip, bad input skipped with counts, 3DPW pickles, COCO, mixing, config."""

import json
import pickle

import numpy as np
import pytest

from dpmesh_core.errors import ConfigError, UnsafeFileError
from dpmesh_core.io.images import write_image
from dpmesh_core.train.config import load_train_config, train_config_from_dict
from dpmesh_core.train.datasets import (
    PW3D,
    COCOKeypoints,
    DPMeshAnnotations,
    ImageRecord,
    MixedDataset,
    PersonAnnotation,
    SampleConfig,
    build_dataset,
    collate,
    read_annotations,
    safe_load_pickle,
    write_annotations,
)

_XY = np.array([[100, 50], [108, 42], [92, 42], [118, 48], [82, 48], [130, 85], [70, 85], [145, 130],
                [55, 130], [155, 175], [45, 175], [120, 180], [80, 180], [125, 245], [75, 245],
                [128, 310], [72, 310]], float)


def _image(path, w=200, h=340, seed=0):
    rng = np.random.default_rng(seed)
    write_image(path, rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    return path


def _person(shift=0.0, params=True):
    kp = np.c_[_XY + [shift, 0], np.full(17, 1.0)]
    p = {"global_orient": [np.pi, 0, 0], "body_pose": np.zeros(69), "betas": np.arange(10) * 0.1,
         "transl": [0, 0, 5.0]} if params else None
    j3 = np.c_[np.linspace(-0.3, 0.3, 30), np.linspace(-0.8, 0.8, 30), np.full(30, 5.0)]
    return PersonAnnotation(keypoints=kp, joint_set="coco17", params=p, joints3d=j3, joints3d_set="smpl30")


def test_write_read_roundtrip_and_sample(tmp_path):
    img = _image(tmp_path / "a.png")
    rec = ImageRecord(image=img, width=200, height=340, persons=[_person(), _person(3.0, params=False)],
                      sequence="s1", camera={"focal": (500.0, 500.0), "principal": (100.0, 170.0)})
    ann = write_annotations(tmp_path / "ann.jsonl", [rec])
    line = json.loads(ann.read_text().splitlines()[0])
    assert line["image"] == "a.png"  # relative to the annotation file
    back = read_annotations(ann)
    assert len(back) == 1 and back[0].image == img.resolve()
    np.testing.assert_allclose(back[0].persons[0].keypoints, rec.persons[0].keypoints, atol=1e-3)
    np.testing.assert_allclose(back[0].persons[0].params["betas"], rec.persons[0].params["betas"])
    assert back[0].persons[1].params is None
    ds = DPMeshAnnotations(ann, sample=SampleConfig(train=False))
    assert len(ds) == 2
    s = ds[0]
    assert s["image"].shape == (3, 256, 256) and s["image"].dtype == np.float32
    assert 0.0 <= s["image"].min() and s["image"].max() <= 1.0
    assert s["input_joints"].shape == (30, 2) and s["joints_2d"].shape == (30, 2)
    assert s["focal"] == pytest.approx(500.0)
    # test crops: input joints (crop px) and targets (64-grid) are the same points
    m = s["joints_2d_valid"] > 0
    np.testing.assert_allclose(s["input_joints"][m] * 64 / 256, s["joints_2d"][m], atol=1e-4)
    assert s["joints_cam"][0] == pytest.approx(np.zeros(3))
    assert s["has_params"] == 1 and ds[1]["has_params"] == 0
    b = collate([ds[0], None, ds[1]])
    assert b["num_skipped"] == 1 and b["image"].shape == (2, 3, 256, 256)


def test_broken_records_and_missing_images_are_skipped_with_counts(tmp_path, caplog):
    img = _image(tmp_path / "ok.png")
    good = ImageRecord(image=img, width=200, height=340, persons=[_person()])
    missing = ImageRecord(image=tmp_path / "gone.png", width=200, height=340, persons=[_person()])
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    bad_img = ImageRecord(image=corrupt, width=200, height=340, persons=[_person()])
    ann = write_annotations(tmp_path / "ann.jsonl", [good, missing, bad_img])
    with open(ann, "a") as f:
        f.write("{not json\n")
        f.write(json.dumps({"image": "ok.png", "width": 200, "height": 340,
                            "persons": [{"keypoints": [[1, 2, 3]] * 5}]}) + "\n")  # wrong joint count
        f.write(json.dumps({"image": "ok.png", "width": -1, "height": 340, "persons": []}) + "\n")
    ds = DPMeshAnnotations(ann, sample=SampleConfig(train=True))
    assert ds.stats.broken_records == 3
    assert ds.stats.missing_images == 1
    assert len(ds) == 2
    out = [ds[i] for i in range(len(ds))]  # never raises mid-epoch
    assert sum(o is None for o in out) == 1 and ds.stats.failed_reads == 1
    assert collate(out)["num_skipped"] == 1
    assert "broken" in caplog.text


def test_restricted_unpickler_refuses_code_and_reads_3dpw(tmp_path):
    class Evil:
        def __reduce__(self):
            import os
            return (os.system, ("echo pwned",))

    (tmp_path / "evil.pkl").write_bytes(pickle.dumps({"a": Evil()}))
    with pytest.raises(UnsafeFileError):
        safe_load_pickle(tmp_path / "evil.pkl")
    # a minimal 3DPW-like sequence file
    root = tmp_path / "3dpw"
    (root / "sequenceFiles" / "test").mkdir(parents=True)
    (root / "imageFiles" / "seqA").mkdir(parents=True)
    n = 3
    p2d = np.zeros((n, 3, 18))
    from dpmesh_core.body.joints import convert
    op = convert(np.c_[_XY, np.ones(17)], "coco17", "openpose18")
    p2d[:] = op.T[None]
    seq = {"sequence": "seqA", "img_frame_ids": np.arange(n), "cam_intrinsics": np.array(
        [[1000.0, 0, 100], [0, 1000, 170], [0, 0, 1]]), "cam_poses": np.tile(np.eye(4), (n, 1, 1)),
        "poses": [np.zeros((n, 72))], "betas": [np.zeros(10)], "trans": [np.zeros((n, 3)) + [0, 0, 4]],
        "poses2d": [p2d], "jointPositions": [np.zeros((n, 72)) + 0.1], "campose_valid": [np.array([1, 0, 1])],
        "genders": ["m"]}
    (root / "sequenceFiles" / "test" / "seqA.pkl").write_bytes(pickle.dumps(seq, protocol=2))
    for i in range(n):
        _image(root / "imageFiles" / "seqA" / f"image_{i:05d}.jpg", seed=i)
    ds = PW3D(root, split="test", sample=SampleConfig(train=False))
    assert len(ds) == 2  # frame 1 has an invalid camera pose
    rec, person = ds.annotation(0)
    assert rec.sequence == "seqA" and person.joint_set == "openpose18"
    s = ds[0]
    assert s["has_3d"] == 1 and s["has_params"] == 1 and s["focal"] == pytest.approx(1000.0)


def test_coco_reader_and_mixing(tmp_path):
    _image(tmp_path / "img1.jpg")
    k = np.c_[_XY, np.full(17, 2.0)]
    k[3, 2] = 1  # labelled, not visible
    k[4, 2] = 0  # not labelled
    coco = {"images": [{"id": 1, "file_name": "img1.jpg", "width": 200, "height": 340}],
            "annotations": [{"id": 11, "image_id": 1, "keypoints": k.ravel().tolist(), "bbox": [40, 30, 130, 290],
                             "iscrowd": 0},
                            {"id": 12, "image_id": 1, "keypoints": [0] * 5, "bbox": [0, 0, 1, 1], "iscrowd": 0}]}
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    fits = {"11": {"smpl_param": {"pose": [0.1] * 72, "shape": [0.2] * 10, "trans": [0, 0, 3]},
                   "cam_param": {"focal": [800, 800], "princpt": [100, 170]}}}
    (tmp_path / "fits.json").write_text(json.dumps(fits))
    ds = build_dataset("coco", annotations=tmp_path / "coco.json", image_root=tmp_path,
                       smpl_fits=tmp_path / "fits.json", sample=SampleConfig(train=False))
    assert len(ds) == 1 and ds.stats.broken_records == 1
    _, person = ds.annotation(0)
    assert person.visible[3] == False and person.keypoints[3, 2] == 1 and person.keypoints[4, 2] == 0  # noqa: E712
    s = ds[0]
    assert s["has_params"] == 1 and s["focal"] == pytest.approx(800.0)
    assert isinstance(ds, COCOKeypoints)
    with pytest.raises(ConfigError, match="unknown dataset"):
        build_dataset("imagenet")

    class Const:
        def __init__(self, v, n):
            self.v, self.n = v, n

        def __len__(self):
            return self.n

        def __getitem__(self, i):
            return self.v

    mix = MixedDataset([Const("a", 10), Const("b", 3)], [3, 1], length=400, seed=0)
    got = [mix[i] for i in range(len(mix))]
    assert got.count("a") == 300 and got.count("b") == 100
    mix.set_epoch(1)
    assert [mix[i] for i in range(20)] != got[:20]
    mix2 = MixedDataset([Const("a", 4), Const("b", 0)], [1, 1], length=10)  # an empty set gets no share
    assert [mix2[i] for i in range(10)] == ["a"] * 10


def test_train_config_strict(tmp_path):
    from importlib.resources import files

    cfg = load_train_config(files("dpmesh_core") / "data" / "configs" / "tiny_synthetic.yaml")
    assert cfg.model.preset == "tiny" and cfg.optim.grad_clip == 10.0 and cfg.data.train[0].kind == "dpmesh"
    with pytest.raises(ConfigError, match=r"optim\.learning_rate"):
        train_config_from_dict({"data": {"train": [{"path": "x.jsonl"}]}, "optim": {"learning_rate": 1}})
    with pytest.raises(ConfigError, match="batch_size"):
        train_config_from_dict({"data": {"train": [{"path": "x.jsonl"}]}, "batch_size": "eight"})
    with pytest.raises(ConfigError, match="unknown dataset kind"):
        train_config_from_dict({"data": {"train": [{"kind": "nope", "path": "x"}]}})
    p = tmp_path / "c.yaml"
    p.write_text("data:\n  train: [{path: a.jsonl}]\nmodel: {preset: tiny}\n")
    c = load_train_config(p, overrides=["optim.lr=0.5", "max_steps=3"])
    assert c.optim.lr == 0.5 and c.max_steps == 3
    with pytest.raises(ConfigError, match="bogus"):
        load_train_config(p, overrides=["bogus.key=1"])
