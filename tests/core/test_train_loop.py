"""Synthetic data, the training loop (exact resume, learning), evaluation — with the real DPMesh network
at a micro size (same DPMeshNetwork class and structure as the "tiny" preset, narrower, so a few dozen
steps fit in a CPU test)."""

import json

import numpy as np
import pytest
import torch

from dpmesh_core.body import load_body_model
from dpmesh_core.config import to_dict
from dpmesh_core.geometry import project
from dpmesh_core.model.config import preset
from dpmesh_core.train.config import train_config_from_dict
from dpmesh_core.train.datasets import DPMeshAnnotations, SampleConfig
from dpmesh_core.train.evaluate import evaluate, evaluate_network, format_table
from dpmesh_core.train.loop import build_network, latest_checkpoint, seed_everything, train
from dpmesh_core.train.synthetic import generate_dataset

# The "micro" preset with dropout off, so a few dozen steps show learning deterministically.
MICRO = to_dict(preset("micro"))
MICRO["head"]["dropout"] = 0.0
NO_AUG = {"rotation_prob": 0.0, "flip_prob": 0.0, "occlusion_prob": 0.0, "posefix": False, "scale_factor": 0.0,
          "color_factor": 0.0}


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    body = load_body_model("synthetic-smpl")
    # an easy distribution (near-rest poses, bodies roughly facing the camera) so a few steps learn it
    easy = {"max_persons": 1, "pose_scale": 0.3, "occluder_prob": 0.3, "yaw_range": 0.4}
    train_ann = generate_dataset(root / "train", 8, body, seed=1, **easy)
    val_ann = generate_dataset(root / "val", 4, body, seed=2, **easy)
    multi = generate_dataset(root / "multi", 3, body, seed=3, max_persons=2, occluder_prob=1.0)
    return {"train": train_ann, "val": val_ann, "multi": multi, "body": body}


def _cfg(out, train_ann, **kw):
    d = {"output_dir": str(out), "batch_size": 2, "max_steps": 4, "log_every": 1, "checkpoint_every": 0,
         "data": {"train": [{"kind": "dpmesh", "path": str(train_ann)}]}, "model": {"network": MICRO},
         "optim": {"lr": 2e-3, "lr_backbone": 2e-3}}
    for k, v in kw.items():
        d[k] = v
    return train_config_from_dict(d)


def test_synthetic_2d_keypoints_are_projections_of_3d_joints(synth):
    recs = [json.loads(line) for line in synth["multi"].read_text().splitlines()]
    assert len(recs) == 3
    n_vis = n_all = 0
    for r in recs:
        cam = r["camera"]
        for p in r["persons"]:
            j3 = np.asarray(p["joints3d"])
            kp = np.asarray(p["keypoints"])
            assert p["joint_set"] == "smpl30" and j3.shape == (30, 3)
            np.testing.assert_allclose(kp[:, :2], project(j3, cam["focal"][0], cam["principal"]), atol=2e-3)
            assert (j3[:, 2] > 1.0).all()
            vis = np.asarray(p["visible"])
            inside = (kp[:, 0] >= 0) & (kp[:, 0] < r["width"]) & (kp[:, 1] >= 0) & (kp[:, 1] < r["height"])
            assert not (vis & ~inside).any()  # outside the image → never visible
            n_vis += vis.sum()
            n_all += len(vis)
            # the ground-truth parameters reproduce the 3-D joints through the body model
            prm = {k: torch.tensor([v], dtype=torch.float32) for k, v in p["params"].items()}
            out = synth["body"](prm["global_orient"], prm["body_pose"], prm["betas"], prm["transl"],
                                joint_sets=("smpl30",))
            np.testing.assert_allclose(out.joints["smpl30"][0].numpy(), j3, atol=1e-4)
    assert 0 < n_vis < n_all  # occluders hide some joints, most are visible


def test_kill_and_resume_gives_the_same_weights(synth, tmp_path):
    kw = {"max_steps": 2, "checkpoint_every": 1, "nkr": {"enabled": True},
          "data": {"train": [{"kind": "dpmesh", "path": str(synth["train"])}], "sample": {"joint_drop": 0.1}}}
    # uninterrupted
    ref = list(train(_cfg(tmp_path / "a", synth["train"], **kw)))
    assert [e["event"] for e in ref][0] == "start" and ref[-1]["event"] == "done" and ref[-1]["step"] == 2
    # killed after the step-1 checkpoint, then resumed
    gen = train(_cfg(tmp_path / "b", synth["train"], **kw))
    for ev in gen:
        if ev["event"] == "checkpoint":
            assert ev["step"] == 1
            break
    gen.close()
    resumed = list(train(_cfg(tmp_path / "b", synth["train"], **kw), resume=True))
    assert resumed[0]["step"] == 1 and resumed[-1]["step"] == 2
    la = [e["loss"] for e in ref if e["event"] == "step"][1:]
    lb = [e["loss"] for e in resumed if e["event"] == "step"]
    assert la == lb
    from safetensors.torch import load_file

    wa = load_file(str(latest_checkpoint(tmp_path / "a") / "model.safetensors"))
    wb = load_file(str(latest_checkpoint(tmp_path / "b") / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    for e in ref:
        json.dumps(e)  # events are JSON-able


def test_tiny_training_lowers_loss_and_heldout_mpjpe(synth, tmp_path):
    n_steps = 16
    cfg = _cfg(tmp_path / "run", synth["train"], max_steps=n_steps, log_every=1, heatmap_dropout=0.0,
               loss={"weighting": "fixed"},
               data={"train": [{"kind": "dpmesh", "path": str(synth["train"])}], "sample": NO_AUG})
    val = DPMeshAnnotations(synth["val"], sample=SampleConfig(train=False))
    seed_everything(cfg.seed)  # the same initial weights as the training run
    net0, body = build_network(cfg, torch.device("cpu"))
    before = evaluate_network(net0, val, body)["overall"]["mpjpe"]
    events = list(train(cfg))
    losses = [e["loss"] for e in events if e["event"] == "step"]
    assert len(losses) == n_steps
    first, last = np.mean(losses[:3]), np.mean(losses[-5:])
    print(f"train loss {first:.3f} -> {last:.3f}")
    assert last < 0.5 * first, (first, last)
    res = evaluate(tmp_path / "run", synth["val"])
    after = res["overall"]["mpjpe"]
    assert res["protocol"] == "smpl30-joints" and res["num_samples"] == 4
    print(f"held-out MPJPE {before:.1f} -> {after:.1f} mm")
    assert after < 0.8 * before, (before, after)
    assert {"mpjpe", "pa_mpjpe", "mpve", "occ_mpjpe"} <= set(res["overall"])
    assert res["overall"]["pa_mpjpe"] <= res["overall"]["mpjpe"] + 1e-6
    assert "overall" in format_table(res)
    # the DPMesh protocol through a user-provided H36M regressor (17, V)
    rng = np.random.default_rng(0)
    J = rng.random((17, synth["body"].num_vertices)) ** 8
    np.save(tmp_path / "J_h36m.npy", J / J.sum(1, keepdims=True))
    res2 = evaluate(tmp_path / "run", synth["val"], regressor=tmp_path / "J_h36m.npy", max_samples=2)
    assert res2["protocol"] == "h36m-regressor" and res2["num_samples"] == 2
    assert np.isfinite(res2["overall"]["mpjpe"]) and res2["overall"]["mpve"] > 0


def test_augmented_pose_matches_augmented_3d_joints(synth):
    """Flip + rotation move the SMPL pose and the 3-D joint targets consistently (same order as the crop)."""
    sc = SampleConfig(train=True, flip_prob=1.0, rotation_prob=1.0, occlusion_prob=0.0, posefix=False)
    ds = DPMeshAnnotations(synth["train"], sample=sc)
    body = synth["body"]
    for i in range(3):
        s = ds[i]
        pose = torch.as_tensor(s["pose"])[None]
        out = body(pose[:, :3], pose[:, 3:], torch.as_tensor(s["betas"])[None], None, joint_sets=("smpl30",))
        j = out.joints["smpl30"][0]
        j = (j - j[0]).numpy()
        err = np.linalg.norm(j - s["joints_cam"], axis=1)
        assert np.median(err) < 0.03, err  # metres; only the body's own left/right asymmetry remains
