"""The DPMesh network computes what the release computes: stage by stage, then end to end.

Ground truth: ``shared/reference/dpmesh_parity/dpmesh_e2e_tiny.pt``, one complete inference computed by the
DPMesh release's own code (EternalEvan/DPMesh@721191b) at tiny width with random weights, and its state dict
in the official ``module.*`` layout (aliases, CLIP and schedule keys included, as a real file has them).
Nothing here is produced by our own converter first.

Each stage is fed the reference's own input for that stage, so a failure names the first stage that
diverges; the end-to-end tests start from the image array and the key-points and go through the public API
and through ``dpmesh predict`` as a user types it. Tolerance: 1e-4 of the reference tensor's largest
magnitude (a faithful fp32 implementation lands near 1e-6; the README of the reference treats anything above
1e-5 as a real difference). Rotations are also compared as matrices.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dpmesh_core.model import camera as C
from dpmesh_core.model import preprocess as P

SHARED = Path(os.environ.get("DPMESH_SHARED", Path(__file__).resolve().parents[3] / "shared"))
REF_DIR = SHARED / "reference" / "dpmesh_parity"
REF_PT = REF_DIR / "dpmesh_e2e_tiny.pt"
REF_JSON = REF_DIR / "dpmesh_e2e_tiny.json"
TOL = 1e-4

if not REF_PT.is_file():  # the reference ships with shared/: without it the suite is not set up
    raise RuntimeError(f"the DPMesh parity reference is missing: {REF_PT} (set DPMESH_SHARED)")

#: stage-by-stage errors, printed at the end of the module (the closing note lists them)
ERRORS: dict[str, float] = {}


def rel_err(ours, ref) -> float:
    """max |ours − ref| / max |ref| (float64)."""
    o = torch.as_tensor(np.asarray(ours) if not isinstance(ours, torch.Tensor) else ours).double()
    r = torch.as_tensor(np.asarray(ref) if not isinstance(ref, torch.Tensor) else ref).double()
    assert o.shape == r.shape, f"shape {tuple(o.shape)} vs reference {tuple(r.shape)}"
    return float((o - r).abs().max() / r.abs().max().clamp_min(1e-12))


def check(name: str, ours, ref, tol: float = TOL) -> None:
    e = rel_err(ours, ref)
    ERRORS[name] = max(e, ERRORS.get(name, 0.0))
    assert e <= tol, f"{name}: relative error {e:.3e} > {tol:.0e}"


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    if ERRORS:
        width = max(map(len, ERRORS))
        print("\nDPMesh release parity, max relative error per tensor:")
        for k, v in ERRORS.items():
            print(f"  {k:<{width}}  {v:.2e}")


@pytest.fixture(scope="module")
def ref():
    # our own trusted reference file (shared/): it holds lists and strings besides tensors
    return torch.load(REF_PT, map_location="cpu", weights_only=False)


@pytest.fixture(scope="module")
def exp(ref):  # the reference's outputs
    return ref["outputs"]


@pytest.fixture(scope="module")
def official_state(ref):
    # as the reference's README says: floating tensors to float32 (they were rounded to fp16 values before
    # the run, so this gives back exactly what the release computed with)
    return {k: (v.float() if v.is_floating_point() else v) for k, v in ref["state_dict"].items()}


@pytest.fixture(scope="module")
def loaded(official_state):
    from dpmesh_core.model.checkpoint import infer_network_config, load_official_network, read_ldm_config

    cfg = infer_network_config(official_state, read_ldm_config(REF_JSON))
    net, res = load_official_network("dpmesh_e2e_tiny.pt", cfg, state=official_state)
    return net.float().eval(), res


@pytest.fixture(scope="module")
def net(loaded):
    return loaded[0]


@pytest.fixture(scope="module")
def body(loaded, ref):
    from dpmesh_core.body.smpl_model import SMPLBody
    from dpmesh_core.model.predictor import smpl_arrays_from_official

    return SMPLBody.from_arrays(smpl_arrays_from_official(loaded[1].smpl),
                                j_regressor_extra=ref["inputs"]["j_regressor_extra"].numpy())


# ------------------------------------------------------------------------------------------ loading


def test_official_layout_loads_strictly_with_its_real_shapes(official_state, loaded):
    net, res = loaded
    sd = official_state
    # the real stored shapes, as the release writes them
    assert tuple(sd["module.pos_embed_1d.pos_table"].shape) == (512, 256)
    assert tuple(sd["module.transformer.smpl_tgt"].shape) == (256,)
    assert tuple(sd["module.human_model_layer.th_v_template"].shape) == (1, 6890, 3)
    assert sd["module.human_model_layer.th_faces"].dtype == torch.int64
    assert res.lora_pairs == 144
    # what the file holds and inference does not use is dropped, by name
    for name in ("backbone.unet", "backbone.encoder_vq", "backbone.sd_model.cond_stage_model", "schedule buffers"):
        assert res.dropped.get(name, 0) > 0, (name, res.dropped)
    assert res.smpl["v_template"].shape == (1, 6890, 3)
    ours = net.state_dict()
    assert torch.equal(ours["pos_embed_1d.pos_table"], sd["module.pos_embed_1d.pos_table"])
    assert torch.equal(ours["transformer.kp_tgt"], sd["module.transformer.kp_tgt"])


def test_architecture_is_read_from_the_file(official_state):
    from dpmesh_core.model.checkpoint import infer_network_config, read_ldm_config

    ldm = read_ldm_config(REF_JSON)
    cfg = infer_network_config(official_state, ldm)
    up = ldm["unet_config"]["params"]
    assert cfg.backbone.block_out_channels == tuple(up["model_channels"] * m for m in up["channel_mult"])
    assert cfg.backbone.layers_per_block == up["num_res_blocks"]
    assert cfg.backbone.cross_attention_dim == up["context_dim"]
    assert cfg.backbone.num_heads == up["num_heads"]  # the one thing shapes cannot tell
    vae = ldm["first_stage_config"]["params"]["ddconfig"]
    assert cfg.backbone.vae_block_out_channels == tuple(vae["ch"] * m for m in vae["ch_mult"])
    assert cfg.backbone.vae_layers_per_block == vae["num_res_blocks"]
    assert cfg.backbone.lora_rank == 4 and cfg.backbone.num_joints == 30
    h = cfg.head
    assert (h.d_model, h.ffn, h.refine_ffn, h.enc_layers, h.dec_layers) == (256, 128, 128, 2, 4)
    assert (h.fused_channels, h.depth_bins, h.vposer_hidden, h.vposer_latent) == (2048, 8, 512, 32)
    # without the ldm config the released head count is assumed (8), which this tiny file does not use
    assert infer_network_config(official_state).backbone.num_heads == 8


def test_a_file_with_a_missing_or_unknown_key_is_refused_listing_it(official_state, tmp_path):
    from dpmesh_core.errors import CheckpointMismatchError
    from dpmesh_core.model.checkpoint import infer_network_config, load_official_network, read_ldm_config

    cfg = infer_network_config(official_state, read_ldm_config(REF_JSON))
    bad = dict(official_state)
    del bad["module.cascade_cam_out.2.bias"]
    bad["module.mystery_head.weight"] = torch.zeros(3)
    with pytest.raises(CheckpointMismatchError) as e:
        load_official_network("x.pth.tar", cfg, state=bad)
    assert "cascade_cam_out.2.bias" in str(e.value) and "mystery_head.weight" in str(e.value)


# ------------------------------------------------------------------------------------ preprocessing


@pytest.mark.parametrize("b", [0, 1])
def test_stage_keypoints_box_affine_crop(ref, exp, b):
    img = ref["inputs"]["image_rgb_uint8"].numpy()
    H, W = img.shape[:2]
    kp = ref["inputs"]["keypoints_coco17"][b].numpy()
    c19 = P.add_pelvis_neck(kp)
    check("coco19_img", c19, exp["coco19_img"][b])
    k30 = P.coco19_to_smpl30(exp["coco19_img"][b].numpy())
    check("joint_coord_img_30", k30, exp["joint_coord_img_30"][b])
    valid = P.joint_valid(exp["joint_coord_img_30"][b].numpy())
    assert np.array_equal(valid, exp["joint_valid"][b].numpy() > 0)
    bb = P.bbox_from_joints(exp["joint_coord_img_30"][b].numpy(), exp["joint_valid"][b].numpy() > 0)
    check("bbox_from_joints", bb, exp["bbox_from_joints"][b])
    check("bbox", P.process_bbox(exp["bbox_from_joints"][b].numpy(), (W, H)), exp["bbox"][b])
    check("img2bb_trans", P.crop_affine(exp["bbox"][b].numpy()), exp["img2bb_trans"][b])
    check("bb2img_trans", P.crop_affine(exp["bbox"][b].numpy(), inverse=True), exp["bb2img_trans"][b])
    check("img", P.crop_image(img, exp["img2bb_trans"][b].numpy()), exp["img"][b])
    g = P.joints_to_grid(exp["joint_coord_img_30"][b].numpy(), exp["img2bb_trans"][b].numpy())
    check("joints", g, exp["joints"][b])
    m = P.joints_mask(exp["joints"][b].numpy(), exp["joint_valid"][b].numpy() > 0)
    assert np.array_equal(m, exp["joints_mask"][b, :, 0].numpy() > 0)


def test_box_rule_shifts_a_box_that_starts_outside_the_image(exp):
    """Person 1's box starts left of the image: the release shifts it (x1 = max(0, x), x2 = min(W-1,
    x1 + w - 1)) instead of cutting it, and the square is centred on the shifted box."""
    bb = exp["bbox_from_joints"][1].numpy()
    assert bb[0] < 0
    box = P.process_bbox(bb, (640, 580))
    w = bb[2] - 1  # shifted to x = 0, one pixel shorter
    assert box[0] + box[2] / 2 == pytest.approx(w / 2, abs=1e-3)


def test_the_warp_runs_on_the_float_image(ref, exp):
    """Warping the uint8 image instead rounds pixels: visibly different from the release."""
    import cv2

    img = ref["inputs"]["image_rgb_uint8"].numpy()
    A = exp["img2bb_trans"][0].numpy()
    u8 = cv2.warpAffine(img, A, (256, 256), flags=cv2.INTER_LINEAR).astype(np.float32).transpose(2, 0, 1) / 255
    assert rel_err(u8, exp["img"][0]) > 1e-3
    assert rel_err(P.crop_image(img, A), exp["img"][0]) == 0.0


# ---------------------------------------------------------------------------------------- network


def test_stage_vae(net, exp):
    vae = net.backbone.vae
    with torch.no_grad():
        h = vae.encoder(exp["img"])
        moments = vae.quant_conv(h)
        check("vae_encoder_h", h, exp["vae_encoder_h"])
        check("moments", moments, exp["moments"])
        check("latents", net.encode(exp["img"]), exp["latents"])


def test_stage_conditions(net, exp):
    with torch.no_grad():
        heat, ctx = net.conditions(exp["joints"][..., :2] * 8, exp["joints_mask"][..., 0] > 0)
    check("input_heatmap", heat, exp["input_heatmap"])
    check("context", ctx, exp["context"])


def test_stage_backbone(net, exp):
    got = {}
    hook = net.backbone.controlnet.register_forward_hook(lambda m, a, out: got.update(out=out))
    try:
        with torch.no_grad():
            bb = net.backbone(exp["latents"], exp["input_heatmap"], exp["context"])
    finally:
        hook.remove()
    down, mid = got["out"][0], got["out"][1]
    for i, r in enumerate(list(down) + [mid]):
        check(f"control.{i:02d}", r, exp[f"control.{i:02d}"])
    check("out_list.0_output_blocks1", bb.features["f4"], exp["out_list.0_output_blocks1"])
    c8, c16 = exp["out_list.1_output_blocks4"].shape[1], exp["out_list.2_output_blocks7"].shape[1]
    check("out_list.1_output_blocks4", bb.features["f8"][:, :c8], exp["out_list.1_output_blocks4"])
    check("out_list.2_output_blocks7", bb.features["f16"][:, :c16], exp["out_list.2_output_blocks7"])
    check("out_list.3_final", bb.features["f32"], exp["out_list.3_final"])
    # the release's names: attn16 is the 8×8 map, attn32 the 16×16 map
    check("attn16 (8x8)", bb.attention["8"], exp["attn16"])
    check("attn32 (16x16)", bb.attention["16"], exp["attn32"])


def test_stage_fusion(net, exp):
    feats = {"f32": exp["out_list.3_final"], "f16": torch.cat([exp["out_list.2_output_blocks7"], exp["attn32"]], 1),
             "f8": torch.cat([exp["out_list.1_output_blocks4"], exp["attn16"]], 1), "f4": exp["out_list.0_output_blocks1"]}
    with torch.no_grad():
        check("outmodules0", net.fusion.outmodules[0](feats["f32"]), exp["outmodules0"])
        check("outmodules1", net.fusion.outmodules[1](feats["f16"]), exp["outmodules1"])
        check("img_fused", net.fusion(feats), exp["img_fused"])


def test_stage_regressor(net, exp):
    from dpmesh_core.model.regressor import sine_position_embedding

    got = {}
    hooks = [net.conv_3d_coord.register_forward_hook(lambda m, a, out: got.update(coord=out)),
             net.transformer.encoder.register_forward_hook(lambda m, a, out: got.update(memory=out)),
             net.transformer.decoder.register_forward_hook(lambda m, a, out: got.update(hs=out[0]))]
    try:
        with torch.no_grad():
            r = net.regress(exp["img_fused"])
    finally:
        for h in hooks:
            h.remove()
    check("dense_feat_coord", got["coord"], exp["dense_feat_coord"])
    check("dense_feat", r.feat_3d, exp["dense_feat"])
    check("down_linear", r.feat_2d, exp["down_linear"])
    check("img_pos", sine_position_embedding(2, 256, 8, 8, torch.device("cpu"), torch.float32), exp["img_pos"])
    check("memory", got["memory"], exp["memory"])
    check("hs", got["hs"], exp["hs"])
    check("joint_img", r.joint_img, exp["joint_img"])
    check("root_pose_6d", r.root_pose6d, exp["root_pose_6d"])
    check("pose_param_latent", r.pose_code, exp["pose_param_latent"])
    check("shape_param", r.betas, exp["shape_param"])
    check("cam_param", r.cam, exp["cam_param"])


def _decoded(net, body, exp, focal):
    from dpmesh_core.model.regressor import RegressorOutput

    reg = RegressorOutput(exp["joint_img"], exp["root_pose_6d"], exp["pose_param_latent"], exp["shape_param"],
                          exp["cam_param"], exp["down_linear"], exp["dense_feat"])
    with torch.no_grad():
        return net.decode(reg, torch.full((2,), focal), body)


def _rotmats(aa: torch.Tensor) -> torch.Tensor:
    from dpmesh_core.torchgeom import axis_angle_to_matrix

    return axis_angle_to_matrix(aa.double().reshape(-1, 3))


def test_stage_decode(net, body, ref, exp):
    out = _decoded(net, body, exp, ref["inputs"]["focal"])
    check("vposer_body_pose", out.pose72[:, 3:], exp["vposer_body_pose"])
    check("smpl_pose", out.pose72, exp["smpl_pose"])
    check("smpl_pose (as rotation matrices)", _rotmats(out.pose72), _rotmats(exp["smpl_pose"]))
    check("cam_trans", out.transl, exp["cam_trans"])
    check("joint_cam", out.joints30, exp["joint_cam"])
    check("joint_proj", out.joint_proj * (64 / 256), exp["joint_proj"])
    check("smpl_mesh_cam", out.vertices_rel, exp["smpl_mesh_cam"])
    check("mesh_cam_render", out.vertices, exp["mesh_cam_render"])


def test_stage_image_placement(net, body, ref, exp):
    f = torch.full((2,), ref["inputs"]["focal"])
    out = _decoded(net, body, exp, ref["inputs"]["focal"])
    rt = C.release_render_translation(out.transl, exp["bbox"])
    check("render_cam_trans", rt, exp["render_cam_trans"])
    # SMPL is affine in its translation: the mesh at the render translation
    check("render_mesh_cam", out.vertices - out.transl[:, None] + rt[:, None], exp["render_mesh_cam"])
    c = C.release_principal(exp["bbox"])
    check("render_vertices_img", C.cam2pixel(exp["render_mesh_cam"], f, c), exp["render_vertices_img"])
    check("render_joints_img", C.cam2pixel(body.joints_from_mesh(exp["render_mesh_cam"]), f, c),
          exp["render_joints_img"])
    check("joint_proj_img", C.denorm_joints(exp["joint_proj"], exp["bb2img_trans"]), exp["joint_proj_img"])


def test_joints_come_from_the_posed_mesh_not_the_skeleton(net, body, ref, exp):
    """The kinematic skeleton (what SMPL layers return) is centimetres away from the release's joints."""
    out = _decoded(net, body, exp, ref["inputs"]["focal"])
    skel = body(out.pose72[:, :3], out.pose72[:, 3:], out.betas, out.transl, joint_sets=("smpl30",)).joints["smpl30"]
    assert rel_err(skel - skel[:, :1], exp["joint_cam"]) > 1e-3


# ------------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def user_files(ref, official_state, tmp_path_factory):
    """What a user has: the checkpoint as a ``.pth.tar`` (a flat module.* dict, as the release saves it),
    J_regressor_extra.npy, the photo (written losslessly from the reference's decoded array: JPEG decoders
    differ) and an AlphaPose key-point file."""
    import cv2

    d = tmp_path_factory.mktemp("release_user")
    ckpt = d / "tiny_best_ckpt.pth.tar"
    torch.save(official_state, ckpt)
    extra = d / "J_regressor_extra.npy"
    np.save(extra, ref["inputs"]["j_regressor_extra"].numpy())
    img = ref["inputs"]["image_rgb_uint8"].numpy()
    photo = d / "COCO_val2014_000000000395.png"
    cv2.imwrite(str(photo), np.ascontiguousarray(img[..., ::-1]))
    # AlphaPose's COCO-17 output, as the release's demo suggests: image_id = file name, x y score triples
    kp = ref["inputs"]["keypoints_coco17"].numpy()
    anns = [{"image_id": photo.name, "category_id": 1, "keypoints": k.reshape(-1).tolist(), "score": 1.0}
            for k in kp]
    kpf = d / "keypoints.json"
    kpf.write_text(json.dumps(anns))
    return {"dir": d, "ckpt": ckpt, "extra": extra, "photo": photo, "keypoints": kpf}


def _check_results(tag: str, pose, shape, cam_trans, render_t, joint_cam, mesh_rel, att8, att16, exp, b):
    check(f"e2e {tag}: smpl_pose", pose, exp["smpl_pose"][b])
    check(f"e2e {tag}: smpl_pose (rotation matrices)", _rotmats(torch.as_tensor(pose)), _rotmats(exp["smpl_pose"][b]))
    check(f"e2e {tag}: smpl_shape", shape, exp["shape_param"][b])
    check(f"e2e {tag}: cam_trans", cam_trans, exp["cam_trans"][b])
    check(f"e2e {tag}: render_cam_trans", render_t, exp["render_cam_trans"][b])
    check(f"e2e {tag}: joint_cam", joint_cam, exp["joint_cam"][b])
    check(f"e2e {tag}: smpl_mesh_cam", mesh_rel, exp["smpl_mesh_cam"][b])
    check(f"e2e {tag}: attn16 (8x8)", att8, exp["attn16"][b])
    check(f"e2e {tag}: attn32 (16x16)", att16, exp["attn32"][b])


def test_end_to_end_through_the_api(ref, exp, user_files, monkeypatch):
    from dpmesh_core import api
    from dpmesh_core.types import MeshResult, Person

    monkeypatch.setenv("DPMESH_J_REGRESSOR_EXTRA", str(user_files["extra"]))
    est = api.make_estimator("dpmesh", model_path=str(user_files["ckpt"]), device="cpu", ldm_config=str(REF_JSON))
    img = ref["inputs"]["image_rgb_uint8"].numpy()
    kp = ref["inputs"]["keypoints_coco17"].numpy().astype(np.float32)
    persons = [Person(box=np.array([10.0 * i, 0, 10.0 * i + 5, 5]), keypoints=k) for i, k in enumerate(kp)]
    res = api.estimate(img, persons, estimator=est)
    assert all(isinstance(r, MeshResult) for r in res)
    for b, r in enumerate(res):
        e = r.params.extra
        assert r.vertices.shape == (6890, 3)
        check("e2e api: bbox", e["bbox_xywh"], exp["bbox"][b])
        _check_results("api", e["smpl_pose"], e["smpl_shape"], e["cam_trans_crop"], e["render_cam_trans"],
                       e["joint_cam"], r.vertices - r.joints3d[0], r.attention["8"], r.attention["16"], exp, b)
        # our placement differs from the release's only by a rigid shift of the whole body
        assert np.allclose((r.vertices - r.joints3d[0]), exp["smpl_mesh_cam"][b].numpy(), atol=1e-5)


def test_end_to_end_dpmesh_predict_as_a_user_types_it(exp, user_files):
    d = user_files["dir"]
    env = dict(os.environ, DPMESH_J_REGRESSOR_EXTRA=str(user_files["extra"]), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "dpmesh_core.cli", "predict", user_files["photo"].name, "-o", "out",
           "--estimator", "dpmesh", "--model", user_files["ckpt"].name, "--ldm-config", str(REF_JSON),
           "--keypoints", user_files["keypoints"].name, "--format", "obj,npz", "--device", "cpu"]
    p = subprocess.run(cmd, cwd=d, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    npzs = sorted((d / "out").glob("*_person*.npz"))
    assert len(npzs) == 2, sorted(x.name for x in (d / "out").iterdir())
    for b, f in enumerate(npzs):
        z = np.load(f)
        for key in ("smpl_pose", "smpl_shape", "cam_trans", "joints_cam30", "joints_img30", "attention_8",
                    "attention_16"):
            assert key in z.files, (key, z.files)
        assert z["smpl_pose"].shape == (72,) and z["smpl_shape"].shape == (10,)
        obj = f.with_suffix(".obj").read_text().splitlines()
        verts = np.array([[float(x) for x in line.split()[1:4]] for line in obj if line.startswith("v ")])
        assert verts.shape == (6890, 3)  # the SMPL mesh
        _check_results("cli", z["smpl_pose"], z["smpl_shape"], z["cam_trans_crop"], z["render_cam_trans"],
                       z["joint_cam"], verts - z["joints_cam30"][0], z["attention_8"], z["attention_16"], exp, b)


def test_convert_then_predict_from_the_folder_gives_the_release_numbers(ref, exp, user_files, tmp_path, monkeypatch):
    """``dpmesh convert CKPT OUT --ldm-config`` once, then the converted folder: the same numbers (its SMPL
    buffers went to the user's cache, not into the folder)."""
    from dpmesh_core.model.checkpoint import convert_official
    from dpmesh_core.model.predictor import DPMeshPredictor
    from dpmesh_core.types import Person

    monkeypatch.setenv("DPMESH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DPMESH_J_REGRESSOR_EXTRA", str(user_files["extra"]))
    out = convert_official(user_files["ckpt"], tmp_path / "converted", ldm_config=REF_JSON)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    assert list((tmp_path / "home").rglob("dpmesh_smpl_*.npz"))
    pred = DPMeshPredictor(out, device="cpu")
    img = ref["inputs"]["image_rgb_uint8"].numpy()
    persons = [Person(box=np.array([10.0 * i, 0, 10.0 * i + 5, 5]), keypoints=k.numpy().astype(np.float32))
               for i, k in enumerate(ref["inputs"]["keypoints_coco17"])]
    for b, r in enumerate(pred.estimate(img, persons)):
        e = r.params.extra
        _check_results("converted folder", e["smpl_pose"], e["smpl_shape"], e["cam_trans_crop"],
                       e["render_cam_trans"], e["joint_cam"], r.vertices - r.joints3d[0], r.attention["8"],
                       r.attention["16"], exp, b)


def test_a_release_folder_with_its_yaml_is_accepted_as_model(ref, exp, user_files, tmp_path, monkeypatch):
    """``--model FOLDER`` holding the official checkpoint and the release's ``cldm_v15.yaml`` (its
    ``model.params.{unet_config, …}`` layout): the heads come from the YAML."""
    import yaml

    from dpmesh_core.model.predictor import DPMeshPredictor
    from dpmesh_core.types import Person

    monkeypatch.setenv("DPMESH_J_REGRESSOR_EXTRA", str(user_files["extra"]))
    folder = tmp_path / "release"
    folder.mkdir()
    (folder / user_files["ckpt"].name).symlink_to(user_files["ckpt"])
    cldm = json.loads(REF_JSON.read_text())["config"]["cldm_config"]
    (folder / "cldm_v15.yaml").write_text(yaml.safe_dump({"model": {"target": "cldm.cldm.ControlLDM",
                                                                    "params": cldm}}))
    pred = DPMeshPredictor(folder, device="cpu")
    assert pred.network.config.backbone.num_heads == cldm["unet_config"]["params"]["num_heads"]
    img = ref["inputs"]["image_rgb_uint8"].numpy()
    k = ref["inputs"]["keypoints_coco17"][0].numpy().astype(np.float32)
    r = pred.estimate(img, [Person(box=np.array([0, 0, 5, 5.0]), keypoints=k)])[0]
    check("release folder + yaml: smpl_pose", r.params.extra["smpl_pose"], exp["smpl_pose"][0])
    check("release folder + yaml: attn16 (8x8)", r.attention["8"], exp["attn16"][0])
