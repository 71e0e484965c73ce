"""The assembled DPMesh network at the tiny preset: shapes/dtypes through every stage, determinism,
attention maps, gradients reaching exactly the trainable parts, save → load, cached-latent re-run,
official-layout round trip, and loud failures on bad checkpoints. CPU, seeded, seconds."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from dpmesh_core.body import load_body_model
from dpmesh_core.errors import CheckpointMismatchError, ConfigError, InputError, ModelFilesMissingError
from dpmesh_core.model.config import preset
from dpmesh_core.model.network import DPMeshNetwork, load_network, save_network

B = 2


@pytest.fixture(scope="module")
def body():
    return load_body_model("synthetic-smpl")


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return DPMeshNetwork("tiny").eval()


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(1)
    img = torch.rand(B, 3, 256, 256, generator=g)
    joints = 40 + torch.rand(B, 30, 2, generator=g) * 176
    mask = torch.rand(B, 30, generator=g) > 0.3
    mask[:, 0] = True
    focal = torch.tensor([900.0, 1300.0])
    return img, joints, mask, focal


@pytest.fixture(scope="module")
def out(net, inputs, body):
    img, joints, mask, focal = inputs
    with torch.no_grad():
        return net(img, joints, mask, focal, body)


def test_shapes_and_dtypes_through_every_stage(net, inputs, body, out):
    img, joints, mask, focal = inputs
    cfg = net.config
    with torch.no_grad():
        lat = net.encode(img)
        heat, ctx = net.conditions(joints, mask)
        bb = net.backbone(lat, heat, ctx)
        fused = net.fusion(bb.features)
        reg = net.regress(fused)
    assert lat.shape == (B, 4, 32, 32) and lat.dtype == torch.float32
    assert heat.shape == (B, 30, 32, 32) and ctx.shape == (B, 30, cfg.context_dim)
    assert torch.equal(heat.flatten(2).amax(-1) > 0.5, mask)  # zeroed channels for invalid joints
    c = net.backbone.feature_channels
    assert bb.features["f32"].shape == (B, c[0], 32, 32) and bb.features["f16"].shape == (B, c[1], 16, 16)
    assert bb.features["f8"].shape == (B, c[2], 8, 8) and bb.features["f4"].shape == (B, c[3], 4, 4)
    assert fused.shape == (B, cfg.head.fused_channels, 8, 8)
    assert reg.joint_img.shape == (B, 15, 3)
    V = body.num_vertices
    expect = {"joint_img": (B, 15, 3), "root_pose6d": (B, 6), "pose72": (B, 72), "pose_code": (B, 32),
              "betas": (B, 10), "cam": (B, 3), "transl": (B, 3), "vertices": (B, V, 3), "vertices_rel": (B, V, 3),
              "joints30": (B, 30, 3), "joints30_cam": (B, 30, 3), "joint_proj": (B, 30, 2),
              "fused": (B, cfg.head.fused_channels, 8, 8), "feat_2d": (B, cfg.head.d_model, 8, 8),
              "feat_3d": (B, cfg.head.d_model, 8, 8, 8), "latent": (B, 4, 32, 32)}
    for name, shape in expect.items():
        t = getattr(out, name)
        assert tuple(t.shape) == shape, name
        assert t.dtype == torch.float32 and torch.isfinite(t).all(), name
    assert torch.allclose(out.latent, lat)
    assert torch.allclose(out.fused, fused, atol=1e-5)
    # consistency of the decoded quantities
    assert torch.equal(out.pose72[:, -6:], torch.zeros(B, 6))  # VPoser leaves the hands at zero
    assert torch.allclose(out.joints30[:, 0], torch.zeros(B, 3), atol=1e-6)
    assert torch.allclose(out.joints30_cam - out.joints30, out.joints30_cam[:, :1].expand(-1, 30, -1))
    z = out.joints30_cam[..., 2:3] + 1e-4
    assert torch.allclose(out.joint_proj, out.joints30_cam[..., :2] / z * focal[:, None, None] + 128, atol=1e-3)
    assert torch.allclose(out.transl[:, 2], torch.sigmoid(out.cam[:, 2]) * focal * 2.5 / 256)


def test_attention_maps_are_probabilities_over_joint_tokens(out):
    assert set(out.attention) == {"8", "16"}
    for side in ("8", "16"):
        a = out.attention[side]
        s = int(side)
        assert a.shape == (B, 30, s, s)
        assert (a >= 0).all()
        assert torch.allclose(a.sum(1), torch.ones(B, s, s), atol=1e-5)


def test_determinism(net, inputs, body, out):
    img, joints, mask, focal = inputs
    with torch.no_grad():
        again = net(img, joints, mask, focal, body)
    assert torch.equal(again.vertices, out.vertices)
    torch.manual_seed(0)
    twin = DPMeshNetwork("tiny").eval()
    with torch.no_grad():
        o2 = twin(img, joints, mask, focal, body)
    assert torch.equal(o2.vertices, out.vertices) and torch.equal(o2.joint_img, out.joint_img)


def test_cached_latent_rerun_equals_full_run(net, inputs, body, out):
    img, joints, mask, focal = inputs
    with torch.no_grad():
        lat = net.encode(img)
        rerun = net(None, joints, mask, focal, body, latent=lat)
    for name in ("vertices", "joint_img", "pose72", "betas", "transl", "joint_proj"):
        assert torch.equal(getattr(rerun, name), getattr(out, name)), name
    assert torch.equal(rerun.attention["16"], out.attention["16"])
    # the key-points matter: moving one joint changes the result through ControlNet + U-Net + head
    j2 = joints.clone()
    j2[:, 16] += 30
    with torch.no_grad():
        moved = net(None, j2, mask, focal, body, latent=lat)
    assert not torch.allclose(moved.joint_img, out.joint_img)


def _randomise_zeros(module: torch.nn.Module, seed: int = 3) -> None:
    """Zero-initialised layers (LoRA B, ControlNet zero convs, proj_out...) hide whole paths: fill them."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.numel() and float(p.abs().max()) == 0.0:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


def test_gradients_reach_exactly_the_trainable_parts(inputs, body):
    torch.manual_seed(0)
    net = DPMeshNetwork("tiny")
    _randomise_zeros(net)
    net.train()
    assert not net.vposer.training and not net.backbone.vae.training
    img, joints, mask, focal = inputs
    o = net(img, joints, mask, focal, body, heatmap_dropout=0.0)
    loss = (o.vertices.square().mean() + o.joint_img.mean() + o.joint_proj.abs().mean() * 1e-3
            + o.betas.square().mean() + o.attention["8"].std() + o.attention["16"].std())
    loss.backward()
    trainable = {id(p) for p in net.trainable_parameters()}
    groups = net.parameter_groups()
    assert len(groups["lora"]) > 0 and len(groups["controlnet"]) > 0
    names_no_grad, frozen_with_grad, zero = [], [], []
    for name, p in net.named_parameters():
        if id(p) in trainable:
            assert p.requires_grad, name
            if p.grad is None:
                names_no_grad.append(name)
            elif float(p.grad.abs().max()) == 0.0:
                zero.append(name)
        else:
            assert not p.requires_grad, name
            if p.grad is not None:
                frozen_with_grad.append(name)
    assert not names_no_grad, names_no_grad[:10]
    assert not frozen_with_grad, frozen_with_grad[:10]
    assert not zero, zero[:10]
    # the frozen set is exactly VAE + U-Net base + pose decoder
    frozen = {n.split(".")[0] if not n.startswith("backbone.") else ".".join(n.split(".")[:2])
              for n, p in net.named_parameters() if id(p) not in trainable}
    assert frozen == {"backbone.vae", "backbone.unet", "vposer"}
    unet_trainable = [n for n, p in net.backbone.unet.named_parameters() if p.requires_grad]
    assert unet_trainable and all(".lora_A." in n or ".lora_B." in n for n in unet_trainable)


def test_save_load_identical_outputs(net, inputs, body, out, tmp_path):
    d = save_network(net, tmp_path / "m")
    doc = json.loads((d / "config.json").read_text())
    assert doc["format_version"] == 1 and doc["lora"] == "peft" and doc["config"]["preset"] == "tiny"
    assert sorted(p.name for p in d.iterdir()) == ["config.json", "model.safetensors"]
    loaded = load_network(d)
    assert not loaded.training
    img, joints, mask, focal = inputs
    with torch.no_grad():
        o2 = loaded(img, joints, mask, focal, body)
    for name in ("vertices", "joint_img", "attention"):
        a, b = getattr(o2, name), getattr(out, name)
        if isinstance(a, dict):
            assert all(torch.equal(a[k], b[k]) for k in a)
        else:
            assert torch.equal(a, b), name
    # same trainable / frozen split after a (meta-built, assigned) load
    assert {n for n, p in loaded.named_parameters() if p.requires_grad} == \
           {n for n, p in net.named_parameters() if p.requires_grad}


def test_merged_lora_save_load(inputs, body, tmp_path):
    torch.manual_seed(0)
    net = DPMeshNetwork("tiny")
    _randomise_zeros(net.backbone.unet)
    net.eval()
    img, joints, mask, focal = inputs
    with torch.no_grad():
        ref = net(img, joints, mask, focal, body)
        net.backbone.merge_lora()
        merged = net(img, joints, mask, focal, body)
    assert torch.allclose(merged.vertices, ref.vertices, atol=1e-4)
    d = save_network(net, tmp_path / "merged")
    assert json.loads((d / "config.json").read_text())["lora"] == "merged"
    loaded = load_network(d)
    assert loaded.backbone.lora_merged and not loaded.backbone.lora_parameters()
    with torch.no_grad():
        o = loaded(img, joints, mask, focal, body)
    assert torch.equal(o.vertices, merged.vertices)


def test_bad_checkpoints_fail_loudly(net, tmp_path):
    good = save_network(net, tmp_path / "good")
    from safetensors.torch import load_file, save_file

    state = load_file(str(good / "model.safetensors"))
    # missing key
    d = tmp_path / "missing"
    shutil.copytree(good, d)
    st = dict(state)
    del st["cascade_cam_out.0.weight"]
    save_file(st, str(d / "model.safetensors"))
    with pytest.raises(CheckpointMismatchError) as e:
        load_network(d)
    assert "cascade_cam_out.0.weight" in str(e.value) and e.value.missing == ["cascade_cam_out.0.weight"]
    # wrong shape
    d = tmp_path / "shape"
    shutil.copytree(good, d)
    st = dict(state)
    st["down_linear.weight"] = torch.zeros(3, 3, 1, 1)
    save_file(st, str(d / "model.safetensors"))
    with pytest.raises(CheckpointMismatchError) as e:
        load_network(d)
    assert "down_linear.weight" in str(e.value)
    # unexpected key
    d = tmp_path / "extra"
    shutil.copytree(good, d)
    st = dict(state)
    st["something.else"] = torch.zeros(1)
    save_file(st, str(d / "model.safetensors"))
    with pytest.raises(CheckpointMismatchError, match="something.else"):
        load_network(d)
    # truncated weights file
    d = tmp_path / "trunc"
    shutil.copytree(good, d)
    raw = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(raw[: len(raw) // 3])
    with pytest.raises(InputError, match="model.safetensors"):
        load_network(d)
    # a config of a different architecture than the weights
    d = tmp_path / "arch"
    shutil.copytree(good, d)
    doc = json.loads((d / "config.json").read_text())
    doc["config"]["head"]["dec_layers"] = 3
    (d / "config.json").write_text(json.dumps(doc))
    with pytest.raises(CheckpointMismatchError, match="layers.3"):
        load_network(d)
    # unknown config key, missing folder
    doc["config"]["head"]["bogus"] = 1
    (d / "config.json").write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match="bogus"):
        load_network(d)
    with pytest.raises(ModelFilesMissingError):
        load_network(tmp_path / "nowhere")


def test_official_layout_round_trip_gives_identical_outputs(inputs, body):
    """A tiny network written in the release's key layout (ldm names, LoRA pairs, ``module.`` prefix,
    ``backbone.outmodules``, VPoser encoder, CLIP/schedule extras) loads into a fresh network and
    reproduces the outputs."""
    from dpmesh_core.model.checkpoint import load_official_checkpoint, official_state_dict_from_network

    torch.manual_seed(0)
    src = DPMeshNetwork("tiny")
    _randomise_zeros(src)
    src.eval()
    official = official_state_dict_from_network(src)
    assert all(k.startswith("module.") for k in official)
    assert any(k.startswith("module.backbone.outmodules.2.0.") for k in official)
    assert "module.cascade_shaoe_out.3.weight" in official and "module.vposer.vposer.bodyprior_dec_out.weight" in official
    torch.manual_seed(123)
    dst = DPMeshNetwork("tiny").eval()
    load_official_checkpoint("synthetic.pth.tar", dst, state=official)
    img, joints, mask, focal = inputs
    with torch.no_grad():
        a = src(img, joints, mask, focal, body)
        b = dst(img, joints, mask, focal, body)
    assert torch.allclose(a.vertices, b.vertices, atol=1e-5)
    assert torch.allclose(a.joint_img, b.joint_img, atol=1e-5)
    assert torch.allclose(a.attention["8"], b.attention["8"], atol=1e-5)


def test_vq_pose_decoder_option_runs(inputs, body):
    cfg = preset("tiny")
    cfg.head.pose_decoder = "vq"
    torch.manual_seed(0)
    net = DPMeshNetwork(cfg).eval()
    assert "cascade_vq_out.0.weight" in net.state_dict() and "cascade_pose_out.0.weight" not in net.state_dict()
    img, joints, mask, focal = inputs
    with torch.no_grad():
        o = net(img[:1], joints[:1], mask[:1], focal[:1], body)
    assert o.pose_code.shape == (1, cfg.head.vq_tokens, cfg.head.vq_codebook)
    assert o.pose72.shape == (1, 72) and torch.isfinite(o.vertices).all()
