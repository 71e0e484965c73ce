"""Unit tests of the head parts: camera, fusion, regressor, pose decoders (tiny sizes, CPU, seeded)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from dpmesh_core.geometry import apply_affine, crop_affine, invert_affine
from dpmesh_core.model.camera import camera_translation, crop_to_grid, place_in_image, project_to_crop
from dpmesh_core.model.config import HeadConfig, preset
from dpmesh_core.model.fusion import Fusion
from dpmesh_core.model.pose_decoders import PoseVQVAE, VPoserDecoder, VPoserV1
from dpmesh_core.model.regressor import Regressor, inverse_sigmoid, sample_volume
from dpmesh_core.torchgeom import axis_angle_to_matrix


def _feats(cfg, b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = cfg.feature_channels
    return {"f32": torch.randn(b, c[0], 32, 32, generator=g), "f16": torch.randn(b, c[1], 16, 16, generator=g),
            "f8": torch.randn(b, c[2], 8, 8, generator=g), "f4": torch.randn(b, c[3], 4, 4, generator=g)}


def test_camera_translation_formula():
    raw = torch.tensor([[0.1, -0.2, 0.0], [0.0, 0.0, 2.0]])
    f = torch.tensor([1000.0, 500.0])
    t = camera_translation(raw, f, 2.5, 256)
    assert torch.allclose(t[:, :2], raw[:, :2])
    expected = torch.sigmoid(raw[:, 2]) * f * 2.5 / 256
    assert torch.allclose(t[:, 2], expected)
    assert t[0, 2].item() == pytest.approx(0.5 * 1000 * 2.5 / 256)


def test_projection_centre_and_grid():
    pts = torch.tensor([[[0.0, 0.0, 5.0], [1.0, -0.5, 2.0]]])
    p = project_to_crop(pts, torch.tensor([100.0]), 256)
    assert torch.allclose(p[0, 0], torch.tensor([128.0, 128.0]))
    assert p[0, 1, 0].item() == pytest.approx(1.0 / (2.0 + 1e-4) * 100 + 128, rel=1e-6)
    assert torch.allclose(crop_to_grid(p), p * 0.25)


def test_place_in_image_keeps_root_pixel_and_scales_depth():
    """The root projects, in the full image, exactly where its crop projection maps back to."""
    box = np.array([300.0, 100.0, 500.0, 300.0], np.float32)  # 200 px square
    f, principal = 1200.0, (640.0, 360.0)
    root = torch.tensor([[0.15, -0.05, 11.0]])
    crop_px = project_to_crop(root[:, None], torch.tensor([f]))[0, 0].numpy()
    A = crop_affine(box, 256)
    img_px = apply_affine(invert_affine(A), crop_px)
    placed = place_in_image(root, torch.tensor([f]), torch.from_numpy(box)[None], torch.tensor([principal]))
    z = placed[0, 2].item()
    assert z == pytest.approx(11.0 * 256 / 200, rel=1e-5)
    u = placed[0, 0].item() / z * f + principal[0]
    v = placed[0, 1].item() / z * f + principal[1]
    assert np.allclose([u, v], img_px, atol=1e-2)


def test_fusion_shapes_and_init():
    cfg = preset("tiny")
    torch.manual_seed(0)
    fu = Fusion(cfg.feature_channels, cfg.head.fused_channels, cfg.head.fusion_groups)
    assert fu.outmodules[2][0].weight.shape == (cfg.head.fused_channels, sum(cfg.feature_channels), 1, 1)
    assert float(fu.outmodules[0][0].weight.detach().std()) == pytest.approx(0.02, rel=0.2)
    assert float(fu.outmodules[0][0].bias.detach().abs().max()) == 0.0
    out = fu(_feats(cfg))
    assert out.shape == (2, cfg.head.fused_channels, 8, 8)
    assert (out >= 0).all()  # ends in ReLU


def test_sd15_head_key_names_and_shapes_match_release():
    """The release's sanity checks (spec §7.3.8) on our attribute names, without building the backbone."""
    head = HeadConfig()
    with torch.device("meta"):
        r = Regressor(head)
        fu = Fusion(preset("sd15").feature_channels, 2048, 16)
    sd = r.state_dict()
    assert sd["cascade_pose_out.0.weight"].shape == (32, 256)
    assert fu.state_dict()["outmodules.2.0.weight"].shape == (2048, 3580, 1, 1)
    assert len(r.transformer.decoder.layers) == 4 and len(r.transformer.encoder.layers) == 2
    for k in ("conv_3d_coord.0.weight", "exponent", "spose_shape_cam_param", "query.weight", "pos_embed_1d.pos_table",
              "refine_3d.norm.weight", "transformer.decoder.norm.weight", "transformer.decoder.fc_pos_3d.3.weight",
              "transformer.decoder.joint_img_regress.3.weight", "transformer.smpl_tgt", "transformer.kp_tgt",
              "cascade_shaoe_out.3.weight", "cascade_cam_out.0.weight", "cascade_root_pose_out.1.weight",
              "transformer.encoder.layers.1.self_attn.in_proj_weight",
              "transformer.decoder.layers.3.multihead_attn.out_proj.weight", "refine_3d.layers.1.linear1.weight"):
        assert k in sd, k
    assert sd["conv2d_to_3d.weight"].shape == (2048, 2048, 1, 1)
    assert sd["conv_3d_coord.0.weight"].shape == (256, 259, 1, 1, 1)
    assert sd["transformer.decoder.joint_img_regress.0.weight"].shape == (3, 256)
    assert sd["transformer.decoder.joint_img_regress.1.weight"].shape == (3, 259)
    assert sd["cascade_cam_out.1.weight"].shape == (3, 259)
    assert sd["refine_3d.layers.0.linear1.weight"].shape == (1024, 256)
    assert sd["transformer.decoder.layers.0.linear1.weight"].shape == (2048, 256)
    assert sd["pos_embed_1d.pos_table"].shape[-2:] == (512, 256)
    assert not any(k.startswith("transformer.encoder.norm") for k in sd)  # no final encoder norm


def test_regressor_outputs_ranges_and_determinism():
    cfg = preset("tiny")
    torch.manual_seed(0)
    r = Regressor(cfg.head).eval()
    fused = torch.randn(3, cfg.head.fused_channels, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = r(fused), r(fused)
    assert a.joint_img.shape == (3, 15, 3) and a.root_pose6d.shape == (3, 6) and a.pose_code.shape == (3, 32)
    assert a.betas.shape == (3, 10) and a.cam.shape == (3, 3)
    assert a.feat_2d.shape == (3, cfg.head.d_model, 8, 8)
    assert a.feat_3d.shape == (3, cfg.head.d_model, cfg.head.depth_bins, 8, 8)
    assert ((a.joint_img > 0) & (a.joint_img < 1)).all()
    for x, y in zip(dataclasses.astuple(a), dataclasses.astuple(b)):
        assert torch.equal(x, y)
    # per-sample independence: batch of 3 == one at a time
    with torch.no_grad():
        one = r(fused[1:2])
    assert torch.allclose(one.betas[0], a.betas[1], atol=1e-5)


def test_regressor_loads_same_numel_reshaped_parameters():
    cfg = preset("tiny")
    torch.manual_seed(0)
    src, dst = Regressor(cfg.head), Regressor(cfg.head)
    sd = src.state_dict()
    # folders saved by earlier versions held (1, 1, d) / (1, n, d); the release stores (d,) / (n, d)
    sd["transformer.smpl_tgt"] = torch.arange(cfg.head.d_model, dtype=torch.float32)[None, None]
    sd["exponent"] = torch.tensor([4.0])  # (1,) instead of ()
    sd["pos_embed_1d.pos_table"] = sd["pos_embed_1d.pos_table"][None]
    assert dst.transformer.smpl_tgt.shape == (cfg.head.d_model,)
    assert dst.pos_embed_1d.pos_table.shape == (cfg.head.depth_bins * 64, cfg.head.d_model)
    dst.load_state_dict(sd, strict=True)
    assert dst.exponent.item() == 4.0
    assert torch.equal(dst.transformer.smpl_tgt.flatten(), torch.arange(cfg.head.d_model, dtype=torch.float32))


def test_sample_volume_hits_grid_points():
    vol = torch.arange(2 * 8 * 8 * 8, dtype=torch.float32).reshape(1, 2, 8, 8, 8)
    # x = 3/7 → index 3 (align_corners), y = 5/7 → 5, z with k = 1: 6/7 → 6
    ji = torch.tensor([[[3 / 7, 5 / 7, 6 / 7]]])
    out = sample_volume(vol, ji, torch.tensor(1.0))
    assert torch.allclose(out[0, 0], vol[0, :, 6, 5, 3], atol=1e-3)
    assert torch.allclose(inverse_sigmoid(torch.sigmoid(torch.tensor([0.3, -2.0]))), torch.tensor([0.3, -2.0]),
                          atol=1e-5)


def test_vposer_decoder_rotations_valid_and_frozen():
    torch.manual_seed(0)
    dec = VPoserDecoder(32, 64)
    dec.train()
    assert not dec.training and not dec.vposer.training
    assert not any(p.requires_grad for p in dec.parameters())
    z = torch.randn(4, 32)
    pose = dec(z)
    assert pose.shape == (4, 69)
    assert torch.equal(pose[:, 63:], torch.zeros(4, 6))  # hands zero
    R = axis_angle_to_matrix(pose[:, :63].reshape(4, 21, 3))
    R_direct = dec.vposer.decode(z)
    assert torch.allclose(R, R_direct, atol=1e-4)
    assert torch.allclose(torch.linalg.det(R_direct), torch.ones(4, 21), atol=1e-5)
    # release key names
    keys = set(VPoserV1().state_dict())
    for k in ("bodyprior_enc_bn1.running_mean", "bodyprior_enc_fc1.weight", "bodyprior_enc_bn2.weight",
              "bodyprior_enc_fc2.weight", "bodyprior_enc_mu.weight", "bodyprior_enc_logvar.weight",
              "bodyprior_dec_fc1.weight", "bodyprior_dec_fc2.weight", "bodyprior_dec_out.weight"):
        assert k in keys
    assert VPoserV1().bodyprior_dec_out.weight.shape == (126, 512)
    assert VPoserV1().bodyprior_enc_bn1.num_features == 63


def test_vposer_6d_convention_is_columns_of_row_major_3x2():
    """VPoser reads its 6 numbers as a row-major 3×2 matrix whose columns are Gram–Schmidt'ed."""
    v = VPoserV1(latent_dim=2, hidden=4, num_joints=1)
    with torch.no_grad():
        for m in (v.bodyprior_dec_fc1, v.bodyprior_dec_fc2, v.bodyprior_dec_out):
            m.weight.zero_()
            m.bias.zero_()
        # a1 = (0, 1, 0) → elements 0, 2, 4; a2 = (0, 0, 1) → elements 1, 3, 5
        v.bodyprior_dec_out.bias.copy_(torch.tensor([0.0, 0.0, 1.0, 0.0, 0.0, 1.0]))
    R = v.eval().decode(torch.zeros(1, 2))[0, 0]
    assert torch.allclose(R[:, 0], torch.tensor([0.0, 1.0, 0.0]))
    assert torch.allclose(R[:, 1], torch.tensor([0.0, 0.0, 1.0]))
    assert torch.allclose(R[:, 2], torch.tensor([1.0, 0.0, 0.0]))


def test_pose_vqvae_shapes_quantize_and_ema():
    torch.manual_seed(0)
    vq = PoseVQVAE(tokens=6, codebook_size=16, dim=8, hidden=32, enc_blocks=2, dec_hidden=16)
    R = axis_angle_to_matrix(0.3 * torch.randn(5, 23, 3))
    z = vq.encode(R)
    assert z.shape == (5, 6, 8)
    zq, idx, loss = vq.quantize(z)
    assert zq.shape == z.shape and idx.shape == (5, 6) and idx.dtype == torch.int64 and loss.item() >= 0
    assert torch.allclose(zq, vq.codebook[idx], atol=1e-6)  # forward value = nearest entries
    assert vq.decode(zq).shape == (5, 23, 3, 3)
    probs = torch.softmax(torch.randn(5, 6, 16), -1)
    assert torch.allclose(vq.decode_soft(probs), vq.decode(probs @ vq.codebook), atol=1e-6)
    onehot = torch.nn.functional.one_hot(idx, 16).float()
    assert torch.allclose(vq.decode_soft(onehot), vq.decode(zq.detach()), atol=1e-5)
    before = vq.codebook.clone()
    vq.train()
    recon, _, _ = vq(R)
    assert recon.shape == (5, 23, 3, 3)
    used = torch.unique(idx)
    assert not torch.allclose(vq.codebook[used], before[used])  # EMA moved the used entries
    recon.square().mean().backward()
    assert vq.start_embed.weight.grad is not None and vq.recover_embed.weight.grad is not None
