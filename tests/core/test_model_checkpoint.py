"""Official-checkpoint mapping, strict loading, conversion, and SD1.5 / ControlNet file loading (tiny preset)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL
from diffusers.loaders import single_file_utils as sfu
from safetensors.torch import load_file, save_file

from dpmesh_core.errors import CheckpointMismatchError, InputError, ModelFilesMissingError
from dpmesh_core.model import checkpoint as ck
from dpmesh_core.model.backbone import build_controlnet
from dpmesh_core.model.config import preset
from dpmesh_core.model.network import DPMeshNetwork, load_network


def _randomise_zeros(module: torch.nn.Module, seed: int = 0) -> None:
    """Zero-initialised tensors (LoRA B, zero convs, proj_out, query contents...) would hide whole paths
    from a parity test: fill every all-zero floating tensor."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.state_dict().values():
            if p.is_floating_point() and p.numel() > 0 and bool((p == 0).all()):
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


def _net(merged: bool = False, seed: int = 0) -> DPMeshNetwork:
    cfg = preset("tiny")
    cfg.backbone.lora_merged = merged
    torch.manual_seed(seed)
    net = DPMeshNetwork(cfg).eval()
    _randomise_zeros(net, seed)
    return net


@pytest.fixture(scope="module")
def source_net() -> DPMeshNetwork:
    return _net()


@pytest.fixture(scope="module")
def smpl_arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"v_template": rng.normal(size=(50, 3)).astype(np.float32),
            "faces": rng.integers(0, 50, size=(20, 3)).astype(np.int32),
            "J_regressor": rng.random((24, 50)).astype(np.float32)}


@pytest.fixture(scope="module")
def official(source_net, smpl_arrays) -> dict[str, torch.Tensor]:
    return ck.official_state_dict_from_network(source_net, smpl_arrays)


@pytest.fixture(scope="module")
def official_file(official, tmp_path_factory):
    p = tmp_path_factory.mktemp("official") / "3dpw_best_ckpt.pth.tar"
    torch.save(official, p)
    return p


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(3)
    image = torch.rand(2, 3, 256, 256, generator=g)
    joints = torch.rand(2, 30, 2, generator=g) * 256
    mask = torch.rand(2, 30, generator=g) > 0.3
    focal = torch.tensor([1200.0, 900.0])
    return image, joints, mask, focal


def _outputs(net, batch):
    image, joints, mask, focal = batch
    with torch.no_grad():
        o = net(image, joints, mask, focal)
    return {"joint_img": o.joint_img, "pose72": o.pose72, "betas": o.betas, "cam": o.cam, "fused": o.fused,
            "att8": o.attention["8"], "att16": o.attention["16"]}


# ---- the key maps agree with diffusers' own converters ----------------------------------------------------
def test_key_maps_match_diffusers_converters():
    torch.manual_seed(0)
    net = _net(merged=True, seed=1)
    off = ck.official_state_dict_from_network(net, extras=False)
    ldm = {k[len("module.backbone.sd_model."):]: v for k, v in off.items() if k.startswith("module.backbone.sd_model.")}
    unet_ldm = {}
    for k, v in ldm.items():
        if not k.startswith("model.diffusion_model."):
            continue
        if k.endswith(".linear.weight"):
            base = k[: -len(".linear.weight")]
            unet_ldm[base + ".weight"] = v + ldm[base + ".lora_up.weight"] @ ldm[base + ".lora_down.weight"]
        elif k.endswith(".linear.bias"):
            unet_ldm[k[: -len(".linear.bias")] + ".bias"] = v
        elif ".lora_" not in k:
            unet_ldm[k] = v
    bb = net.backbone
    for name, conv, module in (
        ("unet", sfu.convert_ldm_unet_checkpoint(unet_ldm, dict(bb.unet.config)), bb.unet),
        ("vae", sfu.convert_ldm_vae_checkpoint(
            {k: v for k, v in ldm.items() if k.startswith("first_stage_model.")}, dict(bb.vae.config)), bb.vae),
        ("controlnet", sfu.convert_controlnet_checkpoint(
            {k: v for k, v in ldm.items() if k.startswith("control_model.")}, dict(bb.controlnet.config)),
         bb.controlnet),
    ):
        ref = module.state_dict()
        conv = {k: v for k, v in conv.items() if v is not None}
        assert set(conv) == set(ref), (name, sorted(set(conv) ^ set(ref))[:5])
        for k in ref:
            assert torch.allclose(conv[k].reshape(ref[k].shape), ref[k], atol=1e-6), (name, k)


# ---- official layout → our network ----------------------------------------------------------------------
def test_official_checkpoint_loads_to_identical_outputs(source_net, official_file, smpl_arrays, batch):
    assert sum(k.endswith(".lora_down.weight") for k in torch.load(official_file, weights_only=True)) == 144
    net = _net(seed=7)  # different random weights, all overwritten by the load
    res = ck.load_official_checkpoint(official_file, net)
    assert res.lora_pairs == 144
    assert {"schedule buffers", "CLIP position_ids", "backbone.unet", "backbone.encoder_vq"} <= set(res.dropped)
    assert set(res.smpl) == set(smpl_arrays)
    for k, v in smpl_arrays.items():
        np.testing.assert_array_equal(res.smpl[k], v)
    ref, got = _outputs(source_net, batch), _outputs(net, batch)
    for k in ref:
        assert torch.equal(ref[k], got[k]), k
    # the state dicts are identical, key for key
    sd_a, sd_b = source_net.state_dict(), net.state_dict()
    assert set(sd_a) == set(sd_b) and all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)


def test_official_checkpoint_merged_lora(source_net, official_file, batch):
    net = _net(merged=True, seed=5)
    ck.load_official_checkpoint(official_file, net)
    assert not net.backbone.lora_parameters()
    ref, got = _outputs(source_net, batch), _outputs(net, batch)
    for k in ref:
        scale = max(1.0, float(ref[k].abs().max()))
        assert (ref[k] - got[k]).abs().max() <= 2e-5 * scale, k
    # merging on request after a peft load gives the same
    net2 = _net(seed=6)
    ck.load_official_checkpoint(official_file, net2, merge_lora=True)
    assert net2.config.backbone.lora_merged and not net2.backbone.lora_parameters()
    assert torch.allclose(_outputs(net2, batch)["fused"], got["fused"], atol=1e-5)


def test_merged_network_exports_and_reloads(batch):
    src = _net(merged=True, seed=2)
    off = ck.official_state_dict_from_network(src)
    assert sum(k.endswith(".lora_up.weight") for k in off) == 144
    dst = _net(merged=True, seed=9)
    ck.load_official_checkpoint("mem", dst, state=off)
    ref, got = _outputs(src, batch), _outputs(dst, batch)
    for k in ref:
        assert (ref[k] - got[k]).abs().max() <= 2e-5 * max(1.0, float(ref[k].abs().max())), k


def test_convert_official_to_our_format(official_file, source_net, batch, tmp_path, monkeypatch):
    monkeypatch.setenv("DPMESH_HOME", str(tmp_path / "home"))
    out = ck.convert_official(official_file, tmp_path / "converted", preset_name="tiny")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    keys = load_file(out / "model.safetensors").keys()
    assert not any("human_model_layer" in k or "v_template" in k for k in keys)
    assert json.loads((out / "config.json").read_text())["config"]["preset"] == "tiny"
    cached = list((tmp_path / "home" / "cache" / "smpl").glob("*.npz"))
    assert len(cached) == 1 and "v_template" in np.load(cached[0]).files
    net = load_network(out)
    ref, got = _outputs(source_net, batch), _outputs(net, batch)
    for k in ref:
        assert torch.equal(ref[k], got[k]), k


# ---- strictness -----------------------------------------------------------------------------------------
def _expect_mismatch(net, state, field: str, needle: str):
    with pytest.raises(CheckpointMismatchError) as ei:
        ck.load_official_checkpoint("bad.pth.tar", net, state=state)
    err = ei.value
    assert any(needle in k for k in getattr(err, field)), (field, needle, str(err)[:500])
    assert "bad.pth.tar" in str(err)


def test_wrong_shape_missing_and_unexpected_keys_fail_loudly(official):
    net = _net(seed=4)  # nothing is written into it: every failure is raised before loading
    before = {k: v.clone() for k, v in net.state_dict().items()}
    key = "module.backbone.sd_model.control_model.input_blocks.0.0.weight"
    bad = dict(official)
    bad[key] = bad[key][:, :4].clone()  # a standard 4-channel ControlNet conv_in
    _expect_mismatch(net, bad, "shape_mismatch", "backbone.controlnet.conv_in.weight")
    bad = dict(official)
    del bad["module.cascade_pose_out.0.weight"]
    _expect_mismatch(net, bad, "missing", "cascade_pose_out.0.weight")
    bad = dict(official)
    del bad["module.backbone.sd_model.model.diffusion_model.out.2.bias"]
    _expect_mismatch(net, bad, "missing", "backbone.unet.conv_out.bias")
    bad = dict(official)
    bad["module.extra_head.weight"] = torch.zeros(3)
    _expect_mismatch(net, bad, "unexpected", "extra_head.weight")
    bad = dict(official)
    bad["module.backbone.sd_model.model.diffusion_model.no_such_block.0.weight"] = torch.zeros(3)
    _expect_mismatch(net, bad, "unexpected", "no_such_block")
    bad = dict(official)
    k = next(k for k in bad if k.endswith("attn2.to_k.lora_up.weight"))
    del bad[k]
    _expect_mismatch(net, bad, "unexpected", "incomplete LoRA pair")
    bad = dict(official)  # a checkpoint from another architecture: a different LoRA rank
    for k in [k for k in bad if k.endswith(".lora_down.weight")]:
        bad[k] = bad[k][:2].clone()
    _expect_mismatch(net, bad, "shape_mismatch", "lora_A.default.weight")
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_bad_files_fail_naming_the_file(tmp_path):
    net = _net(seed=4)
    missing = tmp_path / "nope.pth.tar"
    with pytest.raises(InputError, match="nope.pth.tar"):
        ck.load_official_checkpoint(missing, net)
    text = tmp_path / "notes.pth.tar"
    text.write_text("this is not a checkpoint\n")
    with pytest.raises(InputError, match="notes.pth.tar"):
        ck.load_official_checkpoint(text, net)
    truncated = tmp_path / "truncated.pth.tar"
    torch.save({"module.a": torch.randn(1000, 100)}, truncated)
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="truncated.pth.tar"):
        ck.load_official_checkpoint(truncated, net)
    nontensor = tmp_path / "meta.pth"
    torch.save({"epoch": 3, "name": "x", "lr": 0.1}, nontensor)
    with pytest.raises(InputError, match="non-tensor"):
        ck.load_official_checkpoint(nontensor, net)
    other = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(4, 3, 3, 3), "fc.weight": torch.zeros(10, 4)}, other)
    with pytest.raises(CheckpointMismatchError, match="not an official DPMesh checkpoint"):
        ck.load_official_checkpoint(other, net)
    corrupt = tmp_path / "x.safetensors"
    corrupt.write_bytes(b"\x00\x01garbage")
    with pytest.raises(InputError, match="x.safetensors"):
        ck.read_state_dict(corrupt)


# ---- SD1.5 and ControlNet files -------------------------------------------------------------------------
def test_load_sd15_single_file_and_diffusers_folder(tmp_path):
    cfg = preset("tiny").backbone
    src = _net(merged=True, seed=11).backbone
    inv_u = {v: k for k, v in ck.unet_key_map(cfg).items()}
    inv_v = {v: k for k, v in ck.vae_key_map(cfg).items()}
    ldm = {"model.diffusion_model." + ck._rename(k, inv_u): v.contiguous() for k, v in src.unet.state_dict().items()}
    for k, v in src.vae.state_dict().items():
        v = v[:, :, None, None] if ck._is_vae_attn_linear(k) else v
        ldm["first_stage_model." + ck._rename(k, inv_v)] = v.contiguous()
    ldm["first_stage_model.post_quant_conv.weight"] = torch.zeros(4, 4, 1, 1)
    ldm["cond_stage_model.transformer.x"] = torch.zeros(2)
    single = tmp_path / "v1-5-tiny.safetensors"
    save_file(ldm, single)
    vae, unet = ck.load_sd15(single, cfg)
    for a, b in ((unet, src.unet), (vae, src.vae)):
        sa, sb = a.state_dict(), b.state_dict()
        assert set(sa) == set(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)
    folder = tmp_path / "sd15"
    src.unet.save_pretrained(folder / "unet")
    full = AutoencoderKL(**cfg.vae_kwargs())
    full.load_state_dict(vae.state_dict(), strict=False)  # encoder weights; the decoder stays random
    full.save_pretrained(folder / "vae")
    vae2, unet2 = ck.load_sd15(folder, cfg)
    assert vae2.decoder is None
    assert torch.equal(unet2.conv_out.weight, src.unet.conv_out.weight)
    assert torch.equal(vae2.encoder.conv_in.weight, src.vae.encoder.conv_in.weight)
    with pytest.raises(ModelFilesMissingError, match="Stable Diffusion"):
        ck.load_sd15(tmp_path / "missing", cfg)
    broken = dict(ldm)
    del broken["model.diffusion_model.out.2.weight"]
    save_file(broken, tmp_path / "broken.safetensors")
    with pytest.raises(CheckpointMismatchError, match="conv_out.weight"):
        ck.load_sd15(tmp_path / "broken.safetensors", cfg)


def test_load_controlnet_from_standard_single_file(tmp_path):
    cfg = preset("tiny").backbone
    torch.manual_seed(0)
    src = build_controlnet(cfg)
    inv = {v: k for k, v in ck.controlnet_key_map(cfg).items()}
    ldm = {"control_model." + ck._rename(k, inv): v.contiguous() for k, v in src.state_dict().items()}
    std_conv = torch.randn(cfg.block_out_channels[0], 4, 3, 3)
    ldm["control_model.input_blocks.0.0.weight"] = std_conv  # a standard (4-channel) ControlNet
    ldm["control_model.input_hint_block.0.weight"] = torch.zeros(16, 3, 3, 3)
    p = tmp_path / "control_sd15_tiny.pth"
    torch.save(ldm, p)
    cn = ck.load_controlnet(p, cfg)
    assert torch.equal(cn.conv_in.weight[:, :4], std_conv)
    assert float(cn.conv_in.weight.detach()[:, 4:].abs().max()) == 0.0
    assert torch.equal(cn.controlnet_mid_block.weight, src.controlnet_mid_block.weight)
    with pytest.raises(ModelFilesMissingError, match="ControlNet"):
        ck.load_controlnet(tmp_path / "none", cfg)


def test_sd15_official_layout_on_meta_device():
    """At the real sd15 size (meta tensors: no memory, no init), the official layout has the spec's §7.2/7.3
    names and shapes, and maps back onto the backbone strictly."""
    from dpmesh_core.model.backbone import DPMeshBackbone

    class _Wrap(torch.nn.Module):
        def __init__(self, bb):
            super().__init__()
            self.backbone = bb

    with torch.device("meta"):
        net = _Wrap(DPMeshBackbone(preset("sd15").backbone))
    off = ck.official_state_dict_from_network(net)
    u = "module.backbone.sd_model.model.diffusion_model."
    c = "module.backbone.sd_model.control_model."
    assert sum(k.endswith(".lora_down.weight") for k in off) == 144
    assert tuple(off[c + "input_blocks.0.0.weight"].shape) == (320, 34, 3, 3)
    assert tuple(off[c + "zero_convs.11.0.weight"].shape) == (1280, 1280, 1, 1)
    assert c + "middle_block_out.0.weight" in off and not any("input_hint_block" in k for k in off)
    assert tuple(off[u + "input_blocks.1.1.transformer_blocks.0.attn1.to_q.lora_down.weight"].shape) == (64, 320)
    assert tuple(off[u + "output_blocks.11.1.transformer_blocks.0.ff.net.0.proj.lora_up.weight"].shape) == (2560, 64)
    assert u + "output_blocks.8.2.conv.weight" in off and u + "output_blocks.2.1.conv.weight" in off
    assert u + "input_blocks.1.1.transformer_blocks.0.attn1.to_out.0.linear.bias" in off
    assert tuple(off["module.backbone.sd_model.first_stage_model.encoder.mid.attn_1.q.weight"].shape) == (512, 512, 1, 1)
    mapped, res = ck.official_to_network_state(off, net.state_dict(), net.backbone.cfg)
    assert res.lora_pairs == 144 and set(mapped) == set(net.state_dict())
