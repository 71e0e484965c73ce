"""Backbone (VAE encoder + ControlNet + U-Net with LoRA), conditions and the attention recorder (tiny preset)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from diffusers import ControlNetModel, UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor2_0

from dpmesh_core.config import from_dict, to_dict
from dpmesh_core.errors import ConfigError
from dpmesh_core.model.attention import RecordingAttnProcessor
from dpmesh_core.model.backbone import DPMeshBackbone, lora_config
from dpmesh_core.model.conditions import KeypointPrompt, make_heatmaps
from dpmesh_core.model.config import NetworkConfig, preset


def _randomise_zeros(module: torch.nn.Module, seed: int = 0) -> None:
    """Zero-initialised layers (LoRA B, zero convs, proj_out...) hide whole paths: fill them."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.state_dict().values():
            if p.is_floating_point() and bool((p == 0).all()):
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


@pytest.fixture(scope="module")
def tiny_cfg():
    return preset("tiny").backbone


@pytest.fixture(scope="module")
def backbone(tiny_cfg):
    torch.manual_seed(0)
    bb = DPMeshBackbone(copy.deepcopy(tiny_cfg)).eval()
    _randomise_zeros(bb)
    return bb


@pytest.fixture(scope="module")
def inputs(tiny_cfg):
    g = torch.Generator().manual_seed(1)
    image = torch.rand(2, 3, 256, 256, generator=g)
    joints = torch.rand(2, 30, 2, generator=g) * 32
    mask = torch.rand(2, 30, generator=g) > 0.3
    ctx = KeypointPrompt(tiny_cfg.cross_attention_dim)(joints).detach()
    return image, make_heatmaps(joints, mask), ctx


# ---- config ------------------------------------------------------------------------------------------
def test_presets_round_trip_and_feature_channels():
    sd15 = preset("sd15")
    assert sd15.feature_channels == (320, 670, 1310, 1280)
    assert sd15.backbone.fusion_in_channels == 3580
    assert sd15.backbone.controlnet_in_channels == 34
    for name in ("tiny", "sd15"):
        cfg = preset(name)
        assert from_dict(NetworkConfig, to_dict(cfg)) == cfg
    with pytest.raises(ConfigError):
        preset("huge")
    bad = to_dict(preset("tiny"))
    bad["head"]["fused_channels"] = 100
    with pytest.raises(ConfigError, match="fused_channels"):
        from_dict(NetworkConfig, bad)


def test_sd15_layout_on_meta_device():
    """The sd15 preset gives SD1.5's U-Net (859.5 M), a 34-channel ControlNet and 144 LoRA pairs."""
    cfg = preset("sd15").backbone
    with torch.device("meta"):
        unet = UNet2DConditionModel(**cfg.unet_kwargs())
        cn = ControlNetModel(**cfg.controlnet_kwargs())
    assert sum(p.numel() for p in unet.parameters()) == 859_520_964
    assert tuple(cn.conv_in.weight.shape) == (320, 34, 3, 3)
    assert unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2.heads == 8
    with torch.device("meta"):
        unet.add_adapter(lora_config(cfg))
    names = [n for n, _ in unet.named_parameters() if ".lora_A." in n]
    assert len(names) == 144
    lora_numel = sum(p.numel() for n, p in unet.named_parameters() if ".lora_" in n)
    assert abs(lora_numel - 19.94e6) < 0.01e6  # spec §5.4 count


# ---- conditions --------------------------------------------------------------------------------------
def test_heatmaps_peak_sigma_and_mask():
    joints = torch.tensor([[[5.0, 7.0], [10.5, 3.0], [20.0, 20.0]]])
    mask = torch.tensor([[True, True, False]])
    h = make_heatmaps(joints, mask, size=32, sigma=2.5)
    assert h.shape == (1, 3, 32, 32)
    assert h[0, 0, 7, 5] == pytest.approx(1.0)  # row = y, column = x
    assert h[0, 0].argmax() == 7 * 32 + 5
    assert h[0, 0, 7, 8] == pytest.approx(math.exp(-9 / (2 * 2.5**2)), rel=1e-6)
    assert h[0, 1, 3, 10] == pytest.approx(math.exp(-0.25 / (2 * 2.5**2)), rel=1e-6)
    assert float(h[0, 2].abs().max()) == 0.0
    assert float(h.max()) <= 1.0


def test_keypoint_prompt_linear_and_mlp():
    torch.manual_seed(0)
    kp = KeypointPrompt(16, "linear")
    assert sorted(n for n, _ in kp.named_parameters()) == ["bias", "weight"]  # official kp_lifting.* 1:1
    j = torch.rand(2, 30, 2) * 32
    ref = (j / 32) @ kp.weight.T + kp.bias
    assert torch.allclose(kp(j), ref, atol=1e-6)
    zero = kp(torch.zeros(1, 30, 2))
    assert torch.allclose(zero, kp.bias.expand(1, 30, 16))
    mlp = KeypointPrompt(16, "mlp")
    assert mlp(j).shape == (2, 30, 16)
    assert mlp.fc1.in_features == 2


# ---- backbone ----------------------------------------------------------------------------------------
def test_shapes_dtypes_and_determinism(backbone, inputs, tiny_cfg):
    image, heat, ctx = inputs
    z = backbone.encode(image)
    assert z.shape == (2, 4, 32, 32) and z.dtype == torch.float32 and not z.requires_grad
    with torch.no_grad():
        out = backbone(z, heat, ctx)
        out2 = backbone(z, heat, ctx)
    c0, c1, c2, c3 = backbone.feature_channels
    assert (c1, c2) == (tiny_cfg.block_out_channels[1] + 30, tiny_cfg.block_out_channels[2] + 30)
    assert out.features["f32"].shape == (2, c0, 32, 32)
    assert out.features["f16"].shape == (2, c1, 16, 16)
    assert out.features["f8"].shape == (2, c2, 8, 8)
    assert out.features["f4"].shape == (2, c3, 4, 4)
    assert out.attention["8"].shape == (2, 30, 8, 8)
    assert out.attention["16"].shape == (2, 30, 16, 16)
    for k in out.features:
        assert out.features[k].dtype == torch.float32
        assert torch.equal(out.features[k], out2.features[k])
    # the attention maps are the last 30 channels of f16 / f8
    assert torch.equal(out.features["f16"][:, -30:], out.attention["16"])
    assert torch.equal(out.features["f8"][:, -30:], out.attention["8"])
    # the latent is the posterior mode without scaling: equals diffusers' encode().latent_dist.mode()
    with torch.no_grad():
        ref = backbone.vae.encode(image).latent_dist.mode()
    assert torch.allclose(z, ref, atol=1e-6)


def test_wiring_controlnet_residuals_into_unet_at_t1(backbone, inputs):
    """f32 = output of up_blocks[3] of the U-Net run at t = 1 on the clean latent with the residuals of a
    ControlNet fed cat(latent, heatmaps) (34 channels) and the same context."""
    image, heat, ctx = inputs
    z = backbone.encode(image)
    got = {}
    h = backbone.unet.up_blocks[3].register_forward_hook(lambda m, a, o: got.__setitem__("f32", o))
    try:
        with torch.no_grad():
            t = torch.tensor([1, 1])
            down, mid = backbone.controlnet(torch.cat([z, heat], 1), t, encoder_hidden_states=ctx,
                                            controlnet_cond=z, return_dict=False)
            backbone.unet(z, t, encoder_hidden_states=ctx, down_block_additional_residuals=down,
                          mid_block_additional_residual=mid)
    finally:
        h.remove()
    with torch.no_grad():
        out = backbone(z, heat, ctx)
        no_heat = backbone(z, torch.zeros_like(heat), ctx)
    assert backbone.controlnet.conv_in.in_channels == 34
    assert torch.equal(out.features["f32"], got["f32"])
    assert not torch.allclose(out.features["f32"], no_heat.features["f32"])  # heatmaps matter


def test_attention_maps_are_probabilities_over_joint_tokens(backbone, inputs):
    image, heat, ctx = inputs
    with torch.no_grad():
        out = backbone(backbone.encode(image), heat, ctx)
    for side in ("8", "16"):
        a = out.attention[side]
        assert float(a.min()) >= 0.0
        assert torch.allclose(a.sum(1), torch.ones_like(a.sum(1)), atol=1e-5)
        assert float(a.std()) > 1e-4  # not uniform: the tokens differ


def test_recorder_matches_default_processor_and_manual_softmax(backbone, inputs):
    """Output parity with AttnProcessor2_0 (1e-6), and the recorded 8×8 map equals the mean over its 5
    layers of the head-averaged softmax computed independently from hooked q/k projections."""
    image, heat, ctx = inputs
    z = backbone.encode(image)
    unet = backbone.unet
    t = torch.ones(2, dtype=torch.long)
    with torch.no_grad():
        rec = unet(z, t, encoder_hidden_states=ctx, return_dict=False)[0]
        procs = unet.attn_processors
        assert sum(isinstance(p, RecordingAttnProcessor) for p in procs.values()) == 10
        unet.set_attn_processor(AttnProcessor2_0())
        try:
            ref = unet(z, t, encoder_hidden_states=ctx, return_dict=False)[0]
        finally:
            unet.set_attn_processor(procs)
    assert (rec - ref).abs().max() <= 1e-5 * max(1.0, float(ref.abs().max()))

    captured: dict[str, dict[str, torch.Tensor]] = {}
    hooks = []
    for path in backbone.cfg.attention_layers["8"]:
        attn = unet.get_submodule(path + ".transformer_blocks.0.attn2")
        captured[path] = {}
        for proj in ("to_q", "to_k"):
            hooks.append(getattr(attn, proj).register_forward_hook(
                lambda m, a, o, d=captured[path], p=proj: d.__setitem__(p, o.detach())))
    try:
        with torch.no_grad():
            out = backbone(z, heat, ctx)
    finally:
        for h in hooks:
            h.remove()
    maps = []
    for path, d in captured.items():
        heads = unet.get_submodule(path + ".transformer_blocks.0.attn2").heads
        q, k = d["to_q"], d["to_k"]
        b, n, c = q.shape
        q = q.view(b, n, heads, c // heads).transpose(1, 2)
        k = k.view(b, -1, heads, c // heads).transpose(1, 2)
        maps.append(torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(c // heads), -1).mean(1))  # (B,64,30)
    manual = torch.stack(maps).mean(0).transpose(1, 2).reshape(2, 30, 8, 8)
    assert torch.allclose(out.attention["8"], manual, atol=1e-6)


def test_gradients_reach_lora_and_controlnet_only(tiny_cfg, inputs):
    torch.manual_seed(0)
    bb = DPMeshBackbone(copy.deepcopy(tiny_cfg)).train()
    _randomise_zeros(bb)
    image, heat, ctx = inputs
    out = bb(bb.encode(image), heat, ctx)
    loss = sum(f.float().pow(2).mean() for f in out.features.values())
    loss.backward()
    lora = dict((n, p) for n, p in bb.unet.named_parameters() if ".lora_" in n)
    assert len(lora) == 2 * 144
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in lora.values())
    cn = [p for p in bb.controlnet.parameters()]
    with_grad = [p for p in cn if p.grad is not None and float(p.grad.abs().sum()) > 0]
    assert len(with_grad) >= 0.9 * len(cn)  # a few (e.g. unused last-layer biases) may get zero grads
    assert bb.controlnet.conv_in.weight.grad[:, 4:].abs().sum() > 0  # heatmap channels are trained
    frozen = [p for n, p in bb.unet.named_parameters() if ".lora_" not in n] + list(bb.vae.parameters())
    assert all(not p.requires_grad and p.grad is None for p in frozen)
    trainable = {id(p) for p in bb.trainable_parameters()}
    assert trainable == {id(p) for p in lora.values()} | {id(p) for p in cn}


def test_merge_lora_keeps_outputs(tiny_cfg, inputs):
    torch.manual_seed(0)
    bb = DPMeshBackbone(copy.deepcopy(tiny_cfg)).eval()
    _randomise_zeros(bb)
    image, heat, ctx = inputs
    z = bb.encode(image)
    with torch.no_grad():
        before = bb(z, heat, ctx)
        bb.merge_lora()
        after = bb(z, heat, ctx)
    assert bb.cfg.lora_merged and not bb.lora_parameters()
    assert not any(".lora_" in k or "base_layer" in k for k in bb.state_dict())
    for k in before.features:
        scale = float(before.features[k].abs().max())
        assert (before.features[k] - after.features[k]).abs().max() <= 1e-5 * scale
    for k in before.attention:
        assert torch.allclose(before.attention[k], after.attention[k], atol=1e-6)
    with pytest.raises(ValueError):
        bb.set_lora_merged(False)


def test_bfloat16_forward(backbone, inputs):
    image, heat, ctx = inputs
    bb = copy.deepcopy(backbone).to(torch.bfloat16)
    with torch.no_grad():
        z = bb.encode(image)
        out = bb(z, heat, ctx)
    assert z.dtype == torch.bfloat16
    assert out.features["f32"].dtype == torch.bfloat16
    a = out.attention["16"]
    assert torch.allclose(a.float().sum(1), torch.ones(2, 16, 16), atol=1e-3)
    with torch.no_grad():
        ref = backbone(backbone.encode(image), heat, ctx)
    rel = (out.features["f32"].float() - ref.features["f32"]).abs().mean() / ref.features["f32"].abs().mean()
    assert rel < 0.1
