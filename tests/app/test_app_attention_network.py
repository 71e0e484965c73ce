"""The attention view on maps the real DPMesh network recorded (not synthetic arrays): a seeded tiny
network saved the way `dpmesh train` / `dpmesh convert` save one, chosen through the Session like the
Models dialog does, run on a real photo with the reference detector's key-points; its per-joint
cross-attention maps must reach the view at both resolutions, and the crop under the overlay must be the
one the network looked at (it keeps its box after a key-point edit, so it is not recomputed)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from app.editor import Editor
from app.session import Session
from app.widgets.attention_view import AttentionView, attention_grid
from dpmesh_core.body.synthetic import synthetic_smpl_arrays
from dpmesh_core.model.network import DPMeshNetwork, save_network
from dpmesh_core.types import Person

NAME = "COCO_val2014_000000000192.jpg"


@pytest.fixture
def tiny_model(tmp_path, monkeypatch, isolated_home):
    torch.manual_seed(0)
    folder = save_network(DPMeshNetwork("tiny").eval(), tmp_path / "tiny-net")
    smpl = tmp_path / "smpl_synthetic.npz"  # the SMPL file a user would point to (here: built in code)
    np.savez(smpl, **synthetic_smpl_arrays(seed=0))
    monkeypatch.setenv("DPMESH_SMPL", str(smpl))
    return folder


def test_attention_view_shows_the_networks_own_maps(qapp, qtbot, tiny_model, media_dir, reference_dir):
    image = cv2.cvtColor(cv2.imread(str(media_dir / NAME)), cv2.COLOR_BGR2RGB)
    ref = json.loads((reference_dir / "yolo11n_pose_detections.json").read_text())["images"][NAME]
    persons = [Person(box=p["box_xyxy"], keypoints=p["keypoints"], score=p["score"]) for p in ref["people"][:2]]
    s = Session()
    s.auto_detect = False
    try:
        # chosen before the image opens: the inference process never builds the fitter (its Anny cache would
        # be built anew in this test's empty DPMESH_HOME)
        s.set_estimator("dpmesh", str(tiny_model))
        s.open_image_array(image, persons, name=NAME)
        uid = s.doc.uids()[0]

        def network_result():
            r = s.doc.result(uid)
            return r is not None and not isinstance(r, str) and r.estimator.startswith("dpmesh")

        qtbot.waitUntil(network_result, timeout=240000)
        r = s.doc.result(uid)
        assert r.attention is not None and set(r.attention) == {"8", "16"}
        a8, a16 = np.asarray(r.attention["8"]), np.asarray(r.attention["16"])
        assert a8.shape[1:] == (8, 8) and a16.shape[1:] == (16, 16) and a8.shape[0] == a16.shape[0] >= 15
        for a in (a8, a16):  # probabilities, and maps that differ between joints and over the image
            assert np.isfinite(a).all() and a.min() >= 0 and a.max() <= 1 + 1e-5
            assert a.reshape(len(a), -1).std(1).max() > 0 and not np.allclose(a[0], a[1])

        av = AttentionView(s)
        qtbot.addWidget(av)
        s.doc.select(uid)
        qtbot.waitUntil(lambda: av.stack.currentIndex() == 1, timeout=10000)
        grid = attention_grid(a16)
        assert grid.shape[0] > 16 and np.nanmax(grid) == pytest.approx(1.0)
        box = np.asarray(r.params.extra["crop_box"], np.float64)
        assert np.allclose(av.crop_box(), box)  # the overlay sits on the network's crop
        assert av.last_crop.shape == (256, 256, 3)
        av.res_combo.setCurrentIndex(1)  # the 8×8 maps, another joint
        av.joint_combo.setCurrentIndex(min(5, av.joint_combo.count() - 1))
        av.refresh()

        # an edit re-runs the network on the same crop box; the overlay follows the recorded box
        before = r
        Editor(s.doc).move_keypoint(uid, 9, tuple(np.asarray(persons[0].keypoints[9, :2]) + (6.0, -4.0)))
        qtbot.waitUntil(lambda: s.doc.result(uid) is not None and s.doc.result(uid) is not before
                        and not isinstance(s.doc.result(uid), str), timeout=240000)
        after = s.doc.result(uid)
        assert after.attention is not None
        assert np.allclose(after.params.extra["crop_box"], box)
        assert np.allclose(av.crop_box(), box)
    finally:
        s.shutdown()
