"""VQ-VAE pose tokenizer pre-training (spec §3): reconstruction improves, EMA moves the codebook."""

import numpy as np
import pytest
import torch

from dpmesh_core.errors import InputError
from dpmesh_core.train.pose_prior import (
    PosePriorConfig,
    build_pose_vqvae,
    load_pose_files,
    load_pose_prior,
    reconstruction_error,
    save_pose_prior,
    train_pose_prior,
)


def test_pose_prior_training(tmp_path):
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 0.4, (4, 72))
    poses72 = centres[rng.integers(0, 4, 200)] + rng.normal(0, 0.03, (200, 72))
    np.savez(tmp_path / "a.npz", poses=poses72[:120])
    np.savez(tmp_path / "b.npz", body_pose=poses72[120:, 3:])
    poses = load_pose_files([tmp_path / "a.npz", tmp_path / "b.npz"])
    assert poses.shape == (200, 69)
    np.testing.assert_allclose(poses[:120], poses72[:120, 3:])
    cfg = PosePriorConfig(tokens=4, codebook_size=16, dim=8, hidden=16, steps=60, batch_size=32, lr=3e-3,
                          log_every=20, commitment=0.25)
    vq = build_pose_vqvae(cfg)
    e0 = reconstruction_error(vq, poses)
    events = list(train_pose_prior(poses, cfg, vq))
    cb_after_init = vq.codebook.clone()
    assert events[-1]["event"] == "done" and [e["step"] for e in events[:-1]] == [20, 40, 60]
    e1 = reconstruction_error(vq, poses)
    assert e1 < 0.3 * e0, (e0, e1)
    assert events[-2]["recon"] < events[0]["recon"]
    # EMA: one more training step changes the codebook buffer without any optimiser
    vq.train()
    from dpmesh_core.torchgeom import axis_angle_to_matrix

    vq(axis_angle_to_matrix(torch.as_tensor(poses[:16], dtype=torch.float32).reshape(-1, 23, 3)))
    assert not torch.equal(vq.codebook, cb_after_init)
    assert not vq.codebook.requires_grad
    # save / load round trip
    p = save_pose_prior(vq, tmp_path / "prior.safetensors")
    vq2 = load_pose_prior(p, build_pose_vqvae(cfg))
    assert torch.equal(vq2.codebook, vq.codebook)
    (tmp_path / "bad.npz").write_bytes(b"nope")
    with pytest.raises(InputError, match="bad.npz"):
        load_pose_files([tmp_path / "bad.npz"])
