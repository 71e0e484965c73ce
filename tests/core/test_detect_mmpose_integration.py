"""The mmpose detector backend against a real mmpose installation (mmpose 1.3.2, mmcv 2.1.0 with ops, mmdet
3.2.0), on a real photo and a real video clip from ../shared/media.

Runs only in the environment ``bash scripts/mmpose_env.sh`` builds (it is skipped elsewhere, saying so):

    .venv-mmpose/bin/python -m pytest -q -rs tests/core/test_detect_mmpose_integration.py

The models are built from the configs mmpose and mmdet ship inside their packages, with random weights (no
weights can be downloaded here): RTMPose-t (top-down, COCO-17), RTMO-s (bottom-up, COCO-17), RTMPose-m for
MPII (16 points) and AP-10K (17 animal points), RTMDet-tiny (person boxes). Random weights make the outputs
meaningless as poses but exactly defined, which is what checking an adapter needs: every number the adapter
returns is compared with what mmpose's own API returns for the same call.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

mmpose = pytest.importorskip(
    "mmpose", reason="needs a real mmpose: run `bash scripts/mmpose_env.sh`, then this file with "
                     ".venv-mmpose/bin/python -m pytest -rs tests/core/test_detect_mmpose_integration.py")
import torch  # noqa: E402
from mmpose.apis import inference_bottomup, inference_topdown, init_model  # noqa: E402

from dpmesh_core.detect import Detector, get_detector  # noqa: E402
from dpmesh_core.detect.mmpose_backend import COCO17_NAMES, numpy_safe_globals  # noqa: E402
from dpmesh_core.errors import InputError  # noqa: E402
from dpmesh_core.io.keypoints import read_keypoints  # noqa: E402

PHOTO = "COCO_val2014_000000000395.jpg"
MIM = Path(mmpose.__file__).parent / ".mim"
RTMPOSE_T = MIM / "configs/body_2d_keypoint/rtmpose/coco/rtmpose-t_8xb256-420e_coco-256x192.py"
RTMO_S = MIM / "configs/body_2d_keypoint/rtmo/coco/rtmo-s_8xb32-600e_coco-640x640.py"
MPII = MIM / "configs/body_2d_keypoint/rtmpose/mpii/rtmpose-m_8xb64-210e_mpii-256x256.py"
AP10K = MIM / "configs/animal_2d_keypoint/rtmpose/ap10k/rtmpose-m_8xb64-210e_ap10k-256x256.py"


def _mmdet_config(name: str) -> Path:
    import mmdet

    return Path(mmdet.__file__).parent / ".mim" / "configs" / name


@pytest.fixture(scope="module")
def photo(media_dir) -> tuple[np.ndarray, np.ndarray]:
    bgr = cv2.imread(str(media_dir / PHOTO), cv2.IMREAD_COLOR)
    assert bgr is not None
    return np.ascontiguousarray(bgr[:, :, ::-1]), bgr


@pytest.fixture(scope="module")
def rtmpose(tmp_path_factory, photo):
    """RTMPose-t with random weights, its SimCC classifiers (bias-free linear layers) rescaled so that each
    raw key-point score s -> a * s puts the photo's median score at 1: about half the raw scores exceed 1,
    which the adapter must clip. Saved as an mmpose checkpoint with its dataset meta."""
    torch.manual_seed(0)
    model = init_model(str(RTMPOSE_T), None, device="cpu")
    _, sc = _raw(inference_topdown(model, photo[1]))
    a = 1.0 / max(float(np.median(sc[0])), 1e-6)
    with torch.no_grad():
        for lin in (model.head.cls_x, model.head.cls_y):
            lin.weight.mul_(a)
    ckpt = tmp_path_factory.mktemp("mmpose") / "rtmpose-t_random.pth"
    torch.save({"state_dict": model.state_dict(), "meta": {"dataset_meta": model.dataset_meta}}, ckpt)
    return model, ckpt


@pytest.fixture(scope="module")
def rtmdet(tmp_path_factory):
    """RTMDet-tiny (mmdet's shipped config) with random weights, its class-0 (person) logits raised so that it
    "finds" persons, saved as a checkpoint."""
    from mmdet.apis import init_detector

    torch.manual_seed(1)
    cfg = _mmdet_config("rtmdet/rtmdet_tiny_8xb32-300e_coco.py")
    model = init_detector(str(cfg), None, device="cpu")
    with torch.no_grad():
        for conv in model.bbox_head.rtm_cls:
            conv.bias[0] += 6.0
    ckpt = tmp_path_factory.mktemp("mmdet") / "rtmdet-tiny_random.pth"
    torch.save({"state_dict": model.state_dict(), "meta": {"dataset_meta": model.dataset_meta}}, ckpt)
    return cfg, ckpt


def _raw(samples) -> tuple[np.ndarray, np.ndarray]:
    kp = np.concatenate([s.pred_instances.keypoints for s in samples], 0)
    sc = np.concatenate([s.pred_instances.keypoint_scores for s in samples], 0)
    return kp, sc


def test_topdown_whole_image_layout_bgr_and_score_clipping(rtmpose, photo):
    model, ckpt = rtmpose
    rgb, bgr = photo
    det = get_detector("mmpose", config=str(RTMPOSE_T), checkpoint=str(ckpt), conf=0.0)
    assert isinstance(det, Detector) and det.name == "mmpose" and det.data_mode == "topdown"
    # the checkpoint loaded: the same weights as the model we saved
    for k, v in model.state_dict().items():
        assert torch.equal(v, det.model.state_dict()[k]), k
    persons = det.detect(rgb)
    assert len(persons) == 1  # no person detector: the whole image is one box, as in mmpose's demo
    p = persons[0]
    assert p.joint_set == "coco17" and p.keypoints.shape == (17, 3) and p.source == "detector"
    # mmpose gets BGR: the adapter's key-points are mmpose's own for the BGR image ...
    kp, sc = _raw(inference_topdown(model, bgr))
    np.testing.assert_allclose(p.keypoints[:, :2], kp[0], atol=1e-4)
    # ... and not those for the RGB image (the channel order reaches the network)
    kp_rgb, _ = _raw(inference_topdown(model, rgb))
    assert np.abs(kp_rgb[0] - kp[0]).max() > 1.0
    # raw scores exceed 1 (RTMPose's SimCC maxima are not probabilities); the adapter clips them to [0, 1],
    # visible = clipped score > 0.5
    assert sc.max() > 1.0 and sc.min() < 1.0, (sc.min(), sc.max())
    np.testing.assert_allclose(p.keypoints[:, 2], np.clip(sc[0], 0, 1), atol=1e-6)
    np.testing.assert_array_equal(p.visible, np.clip(sc[0], 0, 1) > 0.5)
    assert p.score == pytest.approx(float(np.clip(sc[0], 0, 1).mean()), abs=1e-6)
    h, w = rgb.shape[:2]
    np.testing.assert_allclose(p.box, [0, 0, w, h])
    print(f"\nRTMPose-t whole image {w}x{h}: raw scores {sc.min():.2f}..{sc.max():.2f}, "
          f"{int(p.visible.sum())} visible; nose at {p.keypoints[0, :2].round(1).tolist()}")


def test_detect_in_box_passes_the_box(rtmpose, photo):
    model, ckpt = rtmpose
    rgb, bgr = photo
    det = get_detector("mmpose", config=str(RTMPOSE_T), checkpoint=str(ckpt))
    boxes = ([60, 40, 260, 560], [300, 90, 470, 500])
    got = []
    for box in boxes:
        q = det.detect_in_box(rgb, box)
        kp, sc = _raw(inference_topdown(model, bgr, np.array([box], np.float32), bbox_format="xyxy"))
        np.testing.assert_allclose(q.keypoints[:, :2], kp[0], atol=1e-4)
        np.testing.assert_allclose(q.keypoints[:, 2], np.clip(sc[0], 0, 1), atol=1e-6)
        np.testing.assert_allclose(q.box, box)  # the user's box is kept
        # top-down key-points come from the box's window: padded by 1.25, widened to the 192:256 input
        # (a key-point mmpose finds nowhere, raw score <= 0, is put just outside the window)
        c, size = (np.array(box[:2]) + box[2:]) / 2, (np.array(box[2:]) - box[:2]) * 1.25
        size = np.maximum(size, [size[1] * 0.75, size[0] / 0.75])
        found = q.keypoints[:, 2] > 0
        assert found.sum() >= 3 and (np.abs(q.keypoints[found, :2] - c) <= size / 2 + 1).all()
        got.append(q.keypoints[:, :2])
    assert not np.allclose(got[0], got[1], atol=1.0)  # each box gave its own pose
    # corners in any order are the same box; a box outside the image is refused
    q2 = det.detect_in_box(rgb, [260, 560, 60, 40])
    np.testing.assert_allclose(q2.keypoints, det.detect_in_box(rgb, boxes[0]).keypoints)
    with pytest.raises(InputError, match="no area"):
        det.detect_in_box(rgb, [2000, 2000, 2100, 2100])


def test_with_an_mmdet_person_detector(rtmpose, rtmdet, photo):
    """Top-down with mmdet boxes, filtered as mmpose's topdown demo does (label 0, score > bbox_thr, NMS)."""
    from mmdet.apis import inference_detector
    from mmpose.evaluation.functional import nms

    model, ckpt = rtmpose
    det_cfg, det_ckpt = rtmdet
    rgb, bgr = photo
    det = get_detector("mmpose", config=str(RTMPOSE_T), checkpoint=str(ckpt), det_config=str(det_cfg),
                       det_checkpoint=str(det_ckpt), bbox_thr=0.0, conf=0.0)
    inst = inference_detector(det.det_model, bgr).pred_instances.cpu().numpy()
    ref = np.concatenate([inst.bboxes, inst.scores[:, None]], 1)[inst.labels == 0]
    ref = ref[nms(ref, 0.3)]
    boxes = det.person_boxes(rgb)
    np.testing.assert_allclose(boxes, ref, atol=1e-4)
    assert len(boxes) >= 2
    persons = det.detect(rgb)
    assert len(persons) == len(boxes)
    kp, sc = _raw(inference_topdown(model, bgr, boxes[:, :4], bbox_format="xyxy"))
    order = np.argsort(-boxes[:, 4], kind="stable")
    for p, i in zip(persons, order):  # best detector score first; the person score is the box score
        assert p.score == pytest.approx(float(np.clip(boxes[i, 4], 0, 1)), abs=1e-6)
        np.testing.assert_allclose(p.box, boxes[i, :4], atol=1e-4)
        np.testing.assert_allclose(p.keypoints[:, :2], kp[i], atol=1e-4)
    # the default threshold keeps what the random detector is confident about (few or none) and conf too
    strict = get_detector("mmpose", config=str(RTMPOSE_T), checkpoint=str(ckpt), det_config=str(det_cfg),
                          det_checkpoint=str(det_ckpt), conf=0.25)
    assert all(p.score >= 0.3 for p in strict.detect(rgb))


def test_bottomup_rtmo(photo):
    """A one-stage model (RTMO-s): persons with their own boxes and scores; detect_in_box picks in a crop."""
    torch.manual_seed(2)
    model = init_model(str(RTMO_S), None, device="cpu")
    rgb, bgr = photo
    det = get_detector("mmpose", model=model, conf=0.0)
    assert det.data_mode == "bottomup"
    persons = det.detect(rgb)
    inst = inference_bottomup(model, bgr)[0].pred_instances
    # random weights: some candidates diverge (non-finite); the adapter drops those and keeps the rest
    finite = np.isfinite(inst.keypoints).all(axis=(1, 2)) & np.isfinite(inst.keypoint_scores).all(axis=1)
    assert len(persons) == int(finite.sum()) > 0
    expected = sorted(np.flatnonzero(finite), key=lambda i: -float(np.clip(inst.bbox_scores[i], 0, 1)))
    for p, i in zip(persons[:20], expected):  # best box score first, as mmpose's own order for ties
        np.testing.assert_allclose(p.keypoints[:, :2], inst.keypoints[i], rtol=1e-5, atol=1e-3)
        np.testing.assert_allclose(p.keypoints[:, 2], np.clip(inst.keypoint_scores[i], 0, 1), atol=1e-6)
        np.testing.assert_allclose(p.box, inst.bboxes[i], rtol=1e-5, atol=1e-3)
        assert p.score == pytest.approx(float(np.clip(inst.bbox_scores[i], 0, 1)), abs=1e-6)
    q = det.detect_in_box(rgb, [60, 40, 260, 560])
    assert q is None or (np.allclose(q.box, [60, 40, 260, 560]) and q.keypoints.shape == (17, 3))
    print(f"\nRTMO-s: {len(inst.keypoints)} candidates, {len(persons)} finite persons kept")


@pytest.mark.parametrize("config, match", [(MPII, "16 key-points"), (AP10K, "ap10k")])
def test_non_coco17_models_are_refused(config, match):
    with pytest.raises(InputError, match=match):
        get_detector("mmpose", config=str(config))
    # the same model handed over already built
    model = init_model(str(config), None, device="cpu")
    assert model.dataset_meta["num_keypoints"] != 17 or tuple(
        model.dataset_meta["keypoint_id2name"][i] for i in range(17)) != COCO17_NAMES
    with pytest.raises(InputError, match=match):
        get_detector("mmpose", model=model)


def _clip(media_dir: Path, out: Path, n: int = 3) -> Path:
    cap = cv2.VideoCapture(str(media_dir / "street.avi"))
    frames = [cap.read()[1] for _ in range(n)]
    cap.release()
    h, w = frames[0].shape[:2]
    vw = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"MJPG"), 25, (w // 2, h // 2))
    for f in frames:
        vw.write(cv2.resize(f, (w // 2, h // 2)))
    vw.release()
    return out


def test_keypoint_files_written_by_mmpose_itself(rtmpose, rtmdet, photo, media_dir, tmp_path):
    """mmpose's MMPoseInferencer (image and video) and its topdown demo script write JSON; --keypoints reads
    each into the same persons the live adapter finds. (The checkpoints hold numpy meta, as mmpose's own do:
    the live adapter loads them under ``numpy_safe_globals``; mmpose's own tools need it too, or
    TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1.)
    With DPMESH_WRITE_MMPOSE_FIXTURES=DIR the files are also copied there (how tests/core/data/mmpose/ was
    made)."""
    import os
    import shutil

    from mmpose.apis import MMPoseInferencer

    model, ckpt = rtmpose
    det_cfg, det_ckpt = rtmdet
    rgb, bgr = photo
    live = get_detector("mmpose", config=str(RTMPOSE_T), checkpoint=str(ckpt), conf=0.0)
    # 1. the inferencer on the photo (whole image: no detector), then on a 3-frame clip
    with numpy_safe_globals():  # the checkpoint's dataset meta holds numpy arrays (as mmpose's own do)
        inferencer = MMPoseInferencer(pose2d=str(RTMPOSE_T), pose2d_weights=str(ckpt), det_model="whole_image",
                                      device="cpu")
    img_path = tmp_path / PHOTO
    shutil.copy(media_dir / PHOTO, img_path)
    for _ in inferencer(str(img_path), pred_out_dir=str(tmp_path / "pred")):
        pass
    image_json = tmp_path / "pred" / (img_path.stem + ".json")
    table = read_keypoints(image_json)
    assert list(table) == [0] and len(table[0]) == 1
    p, q = table[0][0], live.detect(rgb)[0]
    assert p.joint_set == "coco17" and p.source == "file"
    np.testing.assert_allclose(p.keypoints, q.keypoints, atol=1e-3)
    np.testing.assert_array_equal(p.visible, q.visible)
    np.testing.assert_allclose(p.box, q.box, atol=1e-3)
    clip = _clip(media_dir, tmp_path / "clip.avi")
    for _ in inferencer(str(clip), pred_out_dir=str(tmp_path / "pred")):
        pass
    video_json = tmp_path / "pred" / "clip.json"
    frames = read_keypoints(video_json)
    assert list(frames) == [0, 1, 2]  # the inferencer's frame_id counts from 0
    cap = cv2.VideoCapture(str(clip))
    for i in range(3):
        ok, f = cap.read()
        assert ok
        q = live.detect(f[:, :, ::-1])[0]
        np.testing.assert_allclose(frames[i][0].keypoints, q.keypoints, atol=1e-3)
    cap.release()
    # 2. the {meta_info, instance_info} file of mmpose's topdown demo (--save-predictions). The demo script
    # itself stops at its drawing step here (mmpose 1.3.2's OpenCV visualiser calls int() on a 1-element
    # array, an error under numpy 2), so its prediction-saving lines run in-process: boxes as the demo
    # filters them, inference_topdown, merge_data_samples, split_instances, json_tricks.dump.
    import json_tricks
    from mmpose.structures import merge_data_samples, split_instances

    boxed = get_detector("mmpose", config=str(RTMPOSE_T), checkpoint=str(ckpt), det_config=str(det_cfg),
                         det_checkpoint=str(det_ckpt), bbox_thr=0.0, conf=0.0)
    boxes = boxed.person_boxes(rgb)
    pred = merge_data_samples(inference_topdown(boxed.model, bgr, boxes[:, :4])).get("pred_instances", None)
    demo_json = tmp_path / f"results_{img_path.stem}.json"
    with open(demo_json, "w") as f:
        json_tricks.dump(dict(meta_info=boxed.model.dataset_meta, instance_info=split_instances(pred)), f,
                         indent="\t")
    doc = json.loads(demo_json.read_text())
    assert set(doc) == {"meta_info", "instance_info"} and doc["meta_info"]["dataset_name"] == "coco"
    table = read_keypoints(demo_json)
    assert list(table) == [0] and len(table[0]) == len(boxes) >= 2
    live_boxed = boxed.detect(rgb)  # the live adapter on the same boxes, best box score first (= NMS order)
    assert len(live_boxed) == len(boxes)
    for p, q, b in zip(table[0], live_boxed, boxes):
        np.testing.assert_allclose(p.keypoints, q.keypoints, atol=1e-3)
        np.testing.assert_allclose(p.box, b[:4], atol=1e-3)
        np.testing.assert_allclose(q.box, b[:4], atol=1e-3)
        assert p.score == 1.0  # the demo stores inference_topdown's constant bbox_scores
    dest = os.environ.get("DPMESH_WRITE_MMPOSE_FIXTURES")
    if dest:
        Path(dest).mkdir(parents=True, exist_ok=True)
        shutil.copy(image_json, Path(dest) / "inferencer_image_395.json")
        shutil.copy(video_json, Path(dest) / "inferencer_video_street3.json")
        doc = json.loads(demo_json.read_text())  # the random detector's 300 persons: keep the first 3
        doc["instance_info"] = doc["instance_info"][:3]
        (Path(dest) / "topdown_demo_395.json").write_text(json.dumps(doc, indent="\t"))
    print(f"\nmmpose files read back: {image_json.name} (1 person), {video_json.name} (3 frames), "
          f"{demo_json.name} ({len(table[0])} persons)")
