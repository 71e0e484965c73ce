"""Typed configuration of the DPMesh network (backbone + head), with the ``tiny`` and ``sd15`` presets.

All dataclasses load strictly through :func:`dpmesh_core.config.from_dict` and round-trip through
``to_dict``. ``preset("sd15")`` is the released architecture (SD1.5 U-Net/ControlNet/VAE, 768-d context,
2048×8×8 fusion, JOTR regressor with 2 encoder / 4 decoder layers); ``preset("tiny")`` keeps the same
*structure* (4 down/up blocks, cross-attention in the first three, 2 layers per block, so every layer
index named in the spec exists; a VAE downsampling ×8 so a 256 crop gives a 32×32 latent) at a width that
runs in milliseconds on CPU, for tests.

The diffusers constructor kwargs are derived here (``BackboneConfig.unet_kwargs`` etc.) so the backbone,
the checkpoint converter and tests build exactly the same modules.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import ConfigError

#: Cross-attention layers (diffusers module paths inside the U-Net) whose ``attn2`` maps are recorded,
#: keyed by the map side in latent cells (spec §2.7: 5 layers per resolution, unweighted mean).
DEFAULT_ATTENTION_LAYERS: dict[str, tuple[str, ...]] = {
    "8": (
        "down_blocks.2.attentions.0", "down_blocks.2.attentions.1",
        "up_blocks.1.attentions.0", "up_blocks.1.attentions.1", "up_blocks.1.attentions.2",
    ),
    "16": (
        "down_blocks.1.attentions.0", "down_blocks.1.attentions.1",
        "up_blocks.2.attentions.0", "up_blocks.2.attentions.1", "up_blocks.2.attentions.2",
    ),
}

#: peft LoRA target module names in the U-Net (spec §5.4): 144 linears in SD1.5.
DEFAULT_LORA_TARGETS: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj")


@dataclass
class BackboneConfig:
    """Frozen VAE encoder + ControlNet (latent ⊕ heatmaps) + U-Net with LoRA, run once at t = 1.

    U-Net / ControlNet (same block layout, SD1.5 style):
      block_out_channels: channels of the 4 down blocks (SD1.5: 320, 640, 1280, 1280).
      layers_per_block: resnets per down block (up blocks have one more). Keep 2: spec layer indices.
      num_heads: attention heads (diffusers' SD1.5 ``attention_head_dim=8`` means 8 heads).
      cross_attention_dim: width D of the joint-coordinate context tokens (SD1.5: 768).
      norm_num_groups: GroupNorm groups in the U-Net/ControlNet.
    VAE (encoder only is used): vae_block_out_channels (4 blocks → ×8 downsampling),
      vae_layers_per_block, vae_norm_num_groups, latent_channels (4).
    Conditions: num_joints (30 heatmap channels = 30 context tokens, SMPL-30 order).
    LoRA: lora_rank, lora_alpha (scale = alpha / rank = 1 as released), lora_targets (peft names),
      lora_merged: True when LoRA has been folded into the base weights (then no adapter is attached).
    attention_layers: map side ("8", "16") → U-Net module paths of the Transformer2DModel blocks whose
      attn2 probabilities are averaged into that map.
    timestep: the single diffusion timestep the U-Net and ControlNet run at (released: 1).
    """

    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    layers_per_block: int = 2
    num_heads: int = 8
    cross_attention_dim: int = 768
    norm_num_groups: int = 32
    vae_block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    vae_layers_per_block: int = 2
    vae_norm_num_groups: int = 32
    latent_channels: int = 4
    num_joints: int = 30
    lora_rank: int = 64
    lora_alpha: float = 64.0
    lora_targets: tuple[str, ...] = DEFAULT_LORA_TARGETS
    lora_merged: bool = False
    attention_layers: dict[str, tuple[str, ...]] = field(
        default_factory=lambda: {k: tuple(v) for k, v in DEFAULT_ATTENTION_LAYERS.items()})
    timestep: int = 1

    def validate(self) -> None:
        if len(self.block_out_channels) != 4:
            raise ConfigError("need exactly 4 U-Net blocks", "block_out_channels")
        if len(self.vae_block_out_channels) != 4:
            raise ConfigError("need exactly 4 VAE blocks (×8 downsampling)", "vae_block_out_channels")
        if self.layers_per_block < 1:
            raise ConfigError("must be ≥ 1", "layers_per_block")
        for c in self.block_out_channels:
            if c % self.norm_num_groups or c % self.num_heads:
                raise ConfigError(f"channel count {c} not divisible by norm_num_groups/num_heads",
                                  "block_out_channels")
        if any(c % self.vae_norm_num_groups for c in self.vae_block_out_channels):
            raise ConfigError("not divisible by vae_norm_num_groups", "vae_block_out_channels")
        if self.lora_rank < 1:
            raise ConfigError("must be ≥ 1", "lora_rank")
        if set(self.attention_layers) - {"8", "16"}:
            raise ConfigError("keys must be '8' and/or '16'", "attention_layers")

    # ---- derived -----------------------------------------------------------------------------------
    @property
    def feature_channels(self) -> tuple[int, int, int, int]:
        """Channels of the backbone features (f32, f16, f8, f4): (C0, C1+J, C2+J, C3).

        f16/f8 carry the J = num_joints attention maps concatenated (SD1.5: 320, 670, 1310, 1280).
        """
        b = self.block_out_channels
        j = self.num_joints
        return (b[0], b[1] + j, b[2] + j, b[3])

    @property
    def fusion_in_channels(self) -> int:
        """Channels entering the 1×1 fusion conv (SD1.5: 320 + 670 + 1310 + 1280 = 3580)."""
        return sum(self.feature_channels)

    @property
    def controlnet_in_channels(self) -> int:
        """latent ⊕ heatmaps (SD1.5: 4 + 30 = 34)."""
        return self.latent_channels + self.num_joints

    def _encoder_kwargs(self) -> dict[str, Any]:
        """What the U-Net and the ControlNet share: the SD1.5 encoder layout at this width."""
        return dict(
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                              "DownBlock2D"),
            block_out_channels=tuple(self.block_out_channels),
            layers_per_block=self.layers_per_block,
            attention_head_dim=self.num_heads,
            cross_attention_dim=self.cross_attention_dim,
            norm_num_groups=self.norm_num_groups,
            flip_sin_to_cos=True,
            freq_shift=0,
        )

    def unet_kwargs(self) -> dict[str, Any]:
        """``UNet2DConditionModel(**kwargs)`` for this config (SD1.5 block types)."""
        return dict(
            sample_size=32,
            in_channels=self.latent_channels,
            out_channels=self.latent_channels,
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            **self._encoder_kwargs(),
        )

    def controlnet_kwargs(self) -> dict[str, Any]:
        """``ControlNetModel(**kwargs)``: SD1.5 encoder layout, ``in_channels`` = latent + joints."""
        return dict(
            in_channels=self.controlnet_in_channels,
            conditioning_channels=self.num_joints,
            conditioning_embedding_out_channels=(16, 32, 96, 256),
            **self._encoder_kwargs(),
        )

    def vae_kwargs(self) -> dict[str, Any]:
        """``AutoencoderKL(**kwargs)`` (SD1.5 layout at this width)."""
        return dict(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=tuple(self.vae_block_out_channels),
            layers_per_block=self.vae_layers_per_block,
            latent_channels=self.latent_channels,
            norm_num_groups=self.vae_norm_num_groups,
            sample_size=256,
        )


@dataclass
class HeadConfig:
    """Fusion + JOTR-style regressor + pose decoder + camera (spec §2.8–2.11).

    fused_channels: channels of the fused map (2048 released) = d_model × depth_bins.
    depth_bins: depth of the 3-D feature volume (8: 2048 = 256 × 8).
    fusion_groups: GroupNorm groups in the fusion modules (16 released).
    d_model/nheads/ffn/dropout: regressor transformer; enc_layers/dec_layers: 2/4 as released.
    refine_ffn / refine_layers: the 3-D refinement encoder (`refine_3d`, FFN 1024, 2 layers).
    num_joint_queries: 15 ("graph" joint set).
    pose_decoder: "vposer" (released, 32-d latent) or "vq" (paper's token decoder, option).
    kp_lifting: "linear" (released ``Linear(2→D)``) or "mlp" (the paper's two-layer MLP).
    camera_3d_size: metres (t_z = sigmoid(γ)·f·camera_3d_size/input_size).
    input_size: crop side in px (256); heatmap_size: condition grid (32); output_hm_size: 64 grid of
    ``joint_img``; sigma: heatmap σ in heatmap cells.
    vposer_latent / vposer_hidden: VPoser v1 decoder sizes (32 / 512).
    vq_tokens / vq_codebook / vq_dim: VQ pose prior sizes (48 / 2048 / 256).
    """

    fused_channels: int = 2048
    depth_bins: int = 8
    fusion_groups: int = 16
    d_model: int = 256
    nheads: int = 8
    ffn: int = 2048
    dropout: float = 0.1
    enc_layers: int = 2
    dec_layers: int = 4
    refine_ffn: int = 1024
    refine_layers: int = 2
    num_joint_queries: int = 15
    pose_decoder: Literal["vposer", "vq"] = "vposer"
    kp_lifting: Literal["linear", "mlp"] = "linear"
    camera_3d_size: float = 2.5
    input_size: int = 256
    heatmap_size: int = 32
    output_hm_size: int = 64
    sigma: float = 2.5
    vposer_latent: int = 32
    vposer_hidden: int = 512
    vq_tokens: int = 48
    vq_codebook: int = 2048
    vq_dim: int = 256

    def validate(self) -> None:
        if self.fused_channels != self.d_model * self.depth_bins:
            raise ConfigError(f"must equal d_model × depth_bins = {self.d_model * self.depth_bins}",
                              "fused_channels")
        if self.d_model % self.nheads:
            raise ConfigError("d_model must be divisible by nheads", "nheads")
        if self.fused_channels % self.fusion_groups:
            raise ConfigError("fused_channels must be divisible by fusion_groups", "fusion_groups")
        if self.input_size % self.heatmap_size:
            raise ConfigError("input_size must be a multiple of heatmap_size", "heatmap_size")


@dataclass
class NetworkConfig:
    """Backbone + head. ``preset`` names where it came from ("tiny", "sd15" or "custom")."""

    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    preset: str = "custom"

    def validate(self) -> None:
        if self.backbone.block_out_channels[0] % self.head.fusion_groups:
            raise ConfigError("block_out_channels[0] must be divisible by head.fusion_groups",
                              "backbone.block_out_channels")

    @property
    def feature_channels(self) -> tuple[int, int, int, int]:
        """(C0, C1+J, C2+J, C3): see :attr:`BackboneConfig.feature_channels`."""
        return self.backbone.feature_channels

    @property
    def context_dim(self) -> int:
        """Width of the joint-coordinate prompt tokens (= U-Net cross_attention_dim)."""
        return self.backbone.cross_attention_dim


PRESETS = ("tiny", "micro", "sd15")


def preset(name: str) -> NetworkConfig:
    """The named architecture: ``"sd15"`` (released sizes), ``"tiny"`` (tests; same structure) or
    ``"micro"`` (narrower, fewer regressor layers: short CPU training runs in tests and benchmarks).

    Raises ConfigError for an unknown name.
    """
    if name == "sd15":
        cfg = NetworkConfig(backbone=BackboneConfig(), head=HeadConfig(), preset="sd15")
    elif name == "tiny":
        bb = BackboneConfig(
            block_out_channels=(32, 32, 64, 64),
            layers_per_block=2,
            num_heads=2,
            cross_attention_dim=32,
            norm_num_groups=8,
            vae_block_out_channels=(8, 16, 16, 16),
            vae_layers_per_block=1,
            vae_norm_num_groups=4,
            lora_rank=4,
            lora_alpha=4.0,
        )
        head = HeadConfig(
            fused_channels=128, depth_bins=8, fusion_groups=16, d_model=16, nheads=2, ffn=32,
            refine_ffn=32, vposer_hidden=32, vq_tokens=8, vq_codebook=16, vq_dim=16,
        )
        cfg = NetworkConfig(backbone=bb, head=head, preset="tiny")
    elif name == "micro":
        # Narrower still, fewer regressor layers: the same structure, cheap enough on a CPU for tests that
        # train for tens of steps (the learning test) and for the training benchmark.
        bb = BackboneConfig(
            block_out_channels=(8, 8, 16, 16),
            layers_per_block=2,
            num_heads=2,
            cross_attention_dim=16,
            norm_num_groups=4,
            vae_block_out_channels=(4, 4, 4, 4),
            vae_layers_per_block=1,
            vae_norm_num_groups=2,
            lora_rank=2,
            lora_alpha=2.0,
        )
        head = HeadConfig(
            fused_channels=64, depth_bins=8, fusion_groups=4, d_model=8, nheads=2, ffn=16, refine_ffn=16,
            vposer_hidden=32, enc_layers=1, dec_layers=2, refine_layers=1,
        )
        cfg = NetworkConfig(backbone=bb, head=head, preset="micro")
    else:
        raise ConfigError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}", "preset")
    cfg.backbone.validate()
    cfg.head.validate()
    cfg.validate()
    return cfg
