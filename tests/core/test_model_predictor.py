"""DPMeshPredictor on a real photo with the reference YOLO key-points (tiny network, synthetic SMPL):
the Estimator contract, per-person errors, cached-latent re-runs after an edit, batching, placement in
the full image, device/dtype choice and bad inputs. CPU, seeded."""

from __future__ import annotations

import dataclasses
import json

import cv2
import numpy as np
import pytest
import torch
from shared_data import MEDIA, REFERENCE

from dpmesh_core.body import BodyModel, load_body_model
from dpmesh_core.errors import ConfigError, EstimationError, InputError, ModelFilesMissingError
from dpmesh_core.geometry import apply_affine, crop_affine, invert_affine, project
from dpmesh_core.model import preprocess as release_prep
from dpmesh_core.model.network import DPMeshNetwork, save_network
from dpmesh_core.model.predictor import DPMeshPredictor, release_confidence, resolve_device_dtype
from dpmesh_core.types import Camera, Estimator, MeshResult, Person

REF = REFERENCE / "yolo11n_pose_detections.json"
NAME = "COCO_val2014_000000000192.jpg"


@pytest.fixture(scope="module")
def image():
    img = cv2.imread(str(MEDIA / NAME))
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="module")
def persons():
    ref = json.loads(REF.read_text())["images"][NAME]
    ps = [Person(box=p["box_xyxy"], keypoints=p["keypoints"], score=p["score"], track_id=i)
          for i, p in enumerate(ref["people"])]
    assert len(ps) >= 2
    return ps[:3]


@pytest.fixture(scope="module")
def body():
    return load_body_model("synthetic-smpl")


@pytest.fixture(scope="module")
def network():
    torch.manual_seed(0)
    return DPMeshNetwork("tiny").eval()


@pytest.fixture()
def predictor(network, body):
    return DPMeshPredictor(network, body_model=body, device="cpu")


@pytest.fixture(scope="module")
def first(network, body, image, persons):
    pred = DPMeshPredictor(network, body_model=body, device="cpu")
    return pred, pred.estimate(image, persons)


def test_estimator_contract_on_a_real_photo(first, image, persons, body):
    pred, res = first
    assert isinstance(pred, Estimator) and pred.name == "dpmesh"
    assert len(res) == len(persons)
    H, W = image.shape[:2]
    cam = Camera.default_for(W, H)
    for r, p in zip(res, persons):
        assert isinstance(r, MeshResult)
        assert r.estimator == "dpmesh" and r.track_id == p.track_id
        assert r.vertices.shape == (body.num_vertices, 3) and r.faces.shape[1] == 3
        assert r.joints3d.shape == (30, 3) and r.joint_set == "smpl30" and r.joints2d.shape == (30, 2)
        assert r.keypoints2d.shape == (17, 2) and np.isfinite(r.keypoints2d).all()
        assert r.params.model == "synthetic-smpl" and r.params.body_pose.shape == (69,)
        assert r.params.betas.shape == (10,) and r.params.extra["pose_code"].shape == (32,)
        assert r.camera == cam
        assert (r.vertices[:, 2] > 0).all()  # in front of the camera
        assert np.allclose(r.joints2d, project(r.joints3d, cam.focal, cam.principal), atol=1e-2)
        assert set(r.attention) == {"8", "16"}
        assert r.attention["8"].shape == (30, 8, 8) and r.attention["16"].shape == (30, 16, 16)
        assert np.allclose(r.attention["16"].sum(0), 1.0, atol=1e-4)
        # crop box = the release's rule (spec §2.1, corrected): get_bbox then process_bbox on SMPL-30
        kp30 = release_prep.keypoints_to_smpl30(
            np.concatenate([p.keypoints[:, :2], release_confidence(p)[:, None]], 1), p.joint_set)
        rbox = release_prep.process_bbox(release_prep.bbox_from_joints(kp30, kp30[:, 2] > 0.05), (W, H))
        assert np.array_equal(r.params.extra["bbox_xywh"], rbox)
        assert np.allclose(r.params.extra["crop_box"], release_prep.xywh_to_corners(rbox), atol=1e-4)


def test_root_lands_where_the_crop_put_it(first, network, body, image, persons):
    """Full-image placement: the root joint projects onto the image pixel its crop projection maps to."""
    pred, res = first
    r = res[0]
    box = r.params.extra["crop_box"]
    # run the crop-space network directly on the same inputs
    lat = pred._latents[next(k for k in pred._latents if np.allclose(k[1], r.params.extra["bbox_xywh"]))][None]
    from dpmesh_core.body import joints as J

    p = persons[0]
    kp = np.concatenate([p.keypoints[:, :2], p.weights[:, None]], 1)
    kp30 = J.convert(kp, "coco17", "smpl30")
    A = crop_affine(box, 256)
    jc = torch.from_numpy(apply_affine(A, kp30[:, :2]).astype(np.float32))[None]
    H, W = image.shape[:2]
    f = float(np.hypot(W, H))
    with torch.no_grad():
        o = network(None, jc, torch.from_numpy(kp30[:, 2] > 0.05)[None], torch.tensor([f]), body, latent=lat)
    root_crop_px = o.joint_proj[0, 0].numpy()
    root_img_px = apply_affine(invert_affine(A), root_crop_px)
    assert np.allclose(r.joints2d[0], root_img_px, atol=0.05)
    # depth scaled by 256 / box side; the body keeps its shape (root-relative joints unchanged)
    side = box[2] - box[0]
    assert r.joints3d[0, 2] == pytest.approx(o.joints30_cam[0, 0, 2].item() * 256 / side, rel=1e-4)
    assert np.allclose(r.joints3d - r.joints3d[:1], o.joints30[0].numpy(), atol=1e-4)


def test_person_with_too_few_joints_fails_alone(predictor, image, persons):
    kp = np.zeros((17, 3), np.float32)
    kp[0] = [100, 100, 0.9]
    kp[5] = [120, 140, 0.9]
    vis = np.zeros(17, bool)
    vis[0] = True  # the shoulder is marked occluded by the user
    bad = Person(box=[90, 90, 130, 150], keypoints=kp, visible=vis)
    res = predictor.estimate(image, [persons[0], bad, persons[1]])
    assert isinstance(res[0], MeshResult) and isinstance(res[2], MeshResult)
    assert isinstance(res[1], EstimationError) and res[1].person_index == 1
    assert "visible" in str(res[1])
    # the others are unaffected by the failing one (same as running them alone)
    alone = DPMeshPredictor(predictor.network, body_model=predictor.body_model).estimate(image, [persons[0], persons[1]])
    assert np.allclose(alone[1].vertices, res[2].vertices, atol=1e-5)
    nothing = predictor.estimate(image, [bad])
    assert isinstance(nothing[0], EstimationError)


def test_batched_equals_one_by_one(first, predictor, image, persons):
    _, res = first
    for i, p in enumerate(persons):
        one = predictor.estimate(image, [p])[0]
        assert np.allclose(one.vertices, res[i].vertices, atol=1e-4)


def test_keypoint_edit_reuses_latent_and_box_and_equals_full_run(network, body, image, persons):
    pred = DPMeshPredictor(network, body_model=body, device="cpu")
    before = pred.estimate(image, persons)
    n_cached = pred.cached_latents
    assert n_cached == len(persons)
    kp = persons[0].keypoints.copy()
    kp[9, :2] += (25.0, -40.0)  # drag the left wrist
    edited = [dataclasses.replace(persons[0], keypoints=kp, source="user")] + list(persons[1:])
    calls, runs = [], []
    orig, orig_fwd = network.backbone.encode, network.backbone.forward
    network.backbone.encode = lambda x: calls.append(x.shape[0]) or orig(x)
    network.backbone.forward = lambda lat, *a: runs.append(lat.shape[0]) or orig_fwd(lat, *a)
    try:
        after = pred.rerun(image, edited)
    finally:
        del network.backbone.encode, network.backbone.forward
    assert calls == []  # no VAE pass: the latent came from the cache
    assert runs == [1]  # only the edited person went through ControlNet + U-Net + head
    assert pred.cached_latents == n_cached
    assert np.array_equal(after[0].params.extra["crop_box"], before[0].params.extra["crop_box"])
    assert not np.allclose(after[0].vertices, before[0].vertices)
    assert np.array_equal(after[1].vertices, before[1].vertices)  # untouched person, identical
    # equals a full run (fresh predictor, empty cache) on the same crop box
    fresh = DPMeshPredictor(network, body_model=body, device="cpu")
    full = fresh.estimate(image, edited, boxes=[r.params.extra["crop_box"] for r in before])
    for a, b in zip(after, full):
        # the box came back as corners (x0, y0, x1, y1) and is converted to the release's (x, y, w, h) again:
        # float32 rounding of w = x1 - x0 moves the affine by ~1e-6, the mesh by ~1e-5 m
        assert np.allclose(a.vertices, b.vertices, atol=1e-4)
    # asking for a new box recomputes it from the edited key-points
    again = pred.estimate(image, edited, keep_box=False)
    assert not np.allclose(again[0].params.extra["crop_box"], before[0].params.extra["crop_box"])


def test_loads_saved_folder_and_bf16(network, body, image, persons, tmp_path, first):
    _, ref = first
    d = save_network(network, tmp_path / "net")
    pred = DPMeshPredictor(str(d), body_model=body, device="cpu")
    r = pred.estimate(image, persons[:1])[0]
    assert np.allclose(r.vertices, ref[0].vertices, atol=1e-5)
    p16 = DPMeshPredictor(str(d), body_model=body, device="cpu", dtype="bf16")
    assert next(p16.network.parameters()).dtype == torch.bfloat16
    r16 = p16.estimate(image, persons[:1])[0]
    assert r16.vertices.dtype == np.float32 and np.isfinite(r16.vertices).all()
    assert np.abs(r16.joints3d - ref[0].joints3d).max() < 0.5  # same body, bf16 rounding


def test_device_dtype_choice():
    dev, dt = resolve_device_dtype("cpu", None)
    assert dev.type == "cpu" and dt == torch.float32
    assert resolve_device_dtype("cpu", "bf16")[1] == torch.bfloat16
    assert resolve_device_dtype("cpu", torch.float16)[1] == torch.float16
    with pytest.raises(ConfigError):
        resolve_device_dtype("cpu", "int8")


def test_bad_inputs(predictor, network, body, image, persons, tmp_path):
    with pytest.raises(InputError):
        predictor.estimate(image[..., 0], persons)
    with pytest.raises(ModelFilesMissingError):
        DPMeshPredictor(tmp_path / "missing.pth.tar", body_model=body)
    empty = tmp_path / "emptydir"
    empty.mkdir()
    with pytest.raises(ModelFilesMissingError):
        DPMeshPredictor(empty, body_model=body)
    junk = tmp_path / "junk.pth.tar"
    junk.write_text("this is not a checkpoint")
    with pytest.raises(InputError, match="junk.pth.tar"):
        DPMeshPredictor(junk, body_model=body)
    with pytest.raises(ConfigError):
        DPMeshPredictor(network, body_model=body, refine=True)

    class NotSMPL(BodyModel):  # a body model with another pose space (like Anny) cannot carry SMPL output
        name = "other"
        pose_dim = 12
        joint_sets = ("coco17",)

    with pytest.raises(ConfigError, match="SMPL"):
        DPMeshPredictor(network, body_model=NotSMPL())
    unknown = Person(box=[0, 0, 10, 10], keypoints=np.ones((17, 3)), joint_set="coco17")
    unknown = dataclasses.replace(unknown)
    object.__setattr__(unknown, "joint_set", "nonsense")
    res = predictor.estimate(image, [unknown, persons[0]])
    assert isinstance(res[0], EstimationError) and isinstance(res[1], MeshResult)
