"""The DPMesh backbone: frozen SD1.5 VAE encoder, ControlNet on (latent ⊕ heatmaps), U-Net with LoRA.

Spec §2.3–2.7. One U-Net step at t = 1 with no noise; the same context tokens (joint-coordinate prompt)
go to the ControlNet and the U-Net; the ControlNet residuals (scale 1) feed the U-Net skips. Four U-Net
features are tapped with forward hooks and the cross-attention maps of 10 layers are recorded by
:class:`~dpmesh_core.model.attention.AttentionRecorder`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
from torch import nn

from .attention import AttentionRecorder
from .config import BackboneConfig

log = logging.getLogger(__name__)

#: Where the four features are tapped (forward-hook output), spec §2.7 table.
FEATURE_TAPS: dict[str, str] = {
    "f4": "up_blocks.0.resnets.1",
    "f8": "up_blocks.1.attentions.1",
    "f16": "up_blocks.2.attentions.1",
    "f32": "up_blocks.3",
}


class NoConditioningEmbedding(nn.Module):
    """Stands in for ``ControlNetModel.controlnet_cond_embedding``: DPMesh has no hint encoder, the
    heatmaps enter through the ControlNet's 34-channel ``conv_in``. Returns a scalar 0 (adds nothing)."""

    def forward(self, conditioning: torch.Tensor) -> torch.Tensor:
        return conditioning.new_zeros(())


class _TapHook:
    """Forward hook storing a module's output in ``store[name]`` (an object, so deepcopy re-targets it)."""

    def __init__(self, store: dict[str, torch.Tensor], name: str):
        self.store = store
        self.name = name

    def __call__(self, module, args, output):
        self.store[self.name] = output[0] if isinstance(output, (tuple, list)) else getattr(output, "sample", output)


@dataclass
class BackboneOutput:
    """features: "f32" (B,C0,32,32), "f16" (B,C1+J,16,16), "f8" (B,C2+J,8,8), "f4" (B,C3,4,4);
    attention: "8" (B,J,8,8), "16" (B,J,16,16) probabilities over the J joint tokens (sum 1 over dim 1).
    (Sides for a 32×32 latent, i.e. a 256 px crop.)"""

    features: dict[str, torch.Tensor]
    attention: dict[str, torch.Tensor]


def lora_config(cfg: BackboneConfig):
    """The peft ``LoraConfig`` matching the release (spec §5.4): gaussian A (std 1/r), zero B, α = r."""
    from peft import LoraConfig

    return LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=0.0,
                      init_lora_weights="gaussian", target_modules=list(cfg.lora_targets))


def build_unet(cfg: BackboneConfig) -> UNet2DConditionModel:
    return UNet2DConditionModel(**cfg.unet_kwargs())


def build_controlnet(cfg: BackboneConfig) -> ControlNetModel:
    cn = ControlNetModel(**cfg.controlnet_kwargs())
    cn.controlnet_cond_embedding = NoConditioningEmbedding()
    return cn


def build_vae_encoder(cfg: BackboneConfig) -> AutoencoderKL:
    vae = AutoencoderKL(**cfg.vae_kwargs())
    strip_vae_decoder(vae)
    return vae


def strip_vae_decoder(vae: AutoencoderKL) -> AutoencoderKL:
    """Drop the decoder and ``post_quant_conv`` (never used; spec §2.3)."""
    vae.decoder = None
    vae.post_quant_conv = None
    return vae


class DPMeshBackbone(nn.Module):
    """VAE encoder + ControlNet + U-Net (peft LoRA adapter "default" unless ``cfg.lora_merged``).

    Attributes: ``vae`` (AutoencoderKL without decoder), ``controlnet`` (ControlNetModel, in_channels
    latent+J, no hint encoder), ``unet`` (UNet2DConditionModel), ``recorder`` (AttentionRecorder).
    Frozen: VAE and U-Net base weights. Trainable: LoRA and the ControlNet.

    The modules may be given pre-built (e.g. loaded from SD1.5 files); otherwise they are built with
    random weights from ``cfg``.
    """

    def __init__(self, cfg: BackboneConfig, *, vae: AutoencoderKL | None = None,
                 controlnet: ControlNetModel | None = None, unet: UNet2DConditionModel | None = None):
        super().__init__()
        self.cfg = cfg
        self.vae = vae if vae is not None else build_vae_encoder(cfg)
        if self.vae.decoder is not None:
            strip_vae_decoder(self.vae)
        self.controlnet = controlnet if controlnet is not None else build_controlnet(cfg)
        if not isinstance(self.controlnet.controlnet_cond_embedding, NoConditioningEmbedding):
            self.controlnet.controlnet_cond_embedding = NoConditioningEmbedding()
        self.unet = unet if unet is not None else build_unet(cfg)
        self.vae.requires_grad_(False)
        self.unet.requires_grad_(False)
        self.controlnet.requires_grad_(True)
        if not cfg.lora_merged:
            self.unet.add_adapter(lora_config(cfg), adapter_name="default")
        self.recorder = AttentionRecorder(cfg.attention_layers)
        self.recorder.install(self.unet)
        self._taps: dict[str, torch.Tensor] = {}
        for name, path in FEATURE_TAPS.items():
            self.unet.get_submodule(path).register_forward_hook(_TapHook(self._taps, name))

    # ---- properties --------------------------------------------------------------------------------
    @property
    def feature_channels(self) -> tuple[int, int, int, int]:
        """(C0, C1+J, C2+J, C3) of features f32, f16, f8, f4."""
        return self.cfg.feature_channels

    @property
    def lora_merged(self) -> bool:
        return self.cfg.lora_merged

    def lora_parameters(self) -> list[nn.Parameter]:
        """The LoRA A/B weights (empty once merged)."""
        return [p for n, p in self.unet.named_parameters() if ".lora_A." in n or ".lora_B." in n]

    def trainable_parameters(self) -> list[nn.Parameter]:
        """LoRA + ControlNet parameters (VAE and U-Net base weights stay frozen)."""
        return self.lora_parameters() + list(self.controlnet.parameters())

    def train(self, mode: bool = True):
        """Train mode for ControlNet/U-Net (dropout is 0 in SD1.5 anyway); the VAE stays in eval."""
        super().train(mode)
        self.vae.eval()
        return self

    # ---- LoRA --------------------------------------------------------------------------------------
    def merge_lora(self) -> None:
        """Fold LoRA into the U-Net base weights (W ← W + α/r·B·A) and remove the adapter.

        Afterwards ``cfg.lora_merged`` is True (the config object is updated in place) and the U-Net's
        state dict has plain diffusers keys. No-op when already merged.
        """
        if self.cfg.lora_merged:
            return
        from peft.tuners.lora import LoraLayer

        for name, module in list(self.unet.named_modules()):
            if isinstance(module, LoraLayer):
                module.merge(safe_merge=False)
                parent_name, _, child = name.rpartition(".")
                parent = self.unet.get_submodule(parent_name) if parent_name else self.unet
                setattr(parent, child, module.get_base_layer())
        self.unet._hf_peft_config_loaded = False
        if hasattr(self.unet, "peft_config"):
            del self.unet.peft_config
        self.cfg.lora_merged = True
        self.recorder.install(self.unet)

    def set_lora_merged(self, merged: bool) -> None:
        """Merge LoRA (True). Un-merging is not supported once merged (raises ValueError)."""
        if merged:
            self.merge_lora()
        elif self.cfg.lora_merged:
            raise ValueError("LoRA has been merged into the U-Net; reload the checkpoint to un-merge")

    # ---- forward -----------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, image01: torch.Tensor) -> torch.Tensor:
        """image01: (B, 3, S, S) RGB in [0, 1] → latent (B, 4, S/8, S/8): posterior mode, NO scaling
        factor (as released). No gradient."""
        vae_dtype = next(self.vae.parameters()).dtype
        h = self.vae.encoder(image01.to(vae_dtype))
        if self.vae.quant_conv is not None:
            h = self.vae.quant_conv(h)
        mean, _logvar = torch.chunk(h, 2, dim=1)
        return mean

    def forward(self, latent: torch.Tensor, heatmaps: torch.Tensor, context: torch.Tensor) -> BackboneOutput:
        """latent (B, 4, h, h) (h = 32 for a 256 crop), heatmaps (B, J, h, h), context (B, J, D)
        → :class:`BackboneOutput`. Runs the ControlNet then the U-Net once at ``cfg.timestep``."""
        dtype = next(self.unet.parameters()).dtype
        latent = latent.to(dtype)
        context = context.to(dtype)
        heatmaps = heatmaps.to(dtype)
        b = latent.shape[0]
        t = torch.full((b,), self.cfg.timestep, device=latent.device, dtype=torch.long)
        down_res, mid_res = self.controlnet(
            torch.cat([latent, heatmaps], dim=1), t, encoder_hidden_states=context,
            controlnet_cond=latent, conditioning_scale=1.0, guess_mode=False, return_dict=False)
        self._taps.clear()
        self.recorder.reset()
        try:
            self.unet(latent, t, encoder_hidden_states=context, down_block_additional_residuals=down_res,
                      mid_block_additional_residual=mid_res, return_dict=False)
            attn = self.recorder.maps()
            taps = dict(self._taps)
        finally:
            self._taps.clear()
            self.recorder.reset()
        feats = {
            "f32": taps["f32"],
            "f16": torch.cat([taps["f16"], attn["16"].to(taps["f16"].dtype)], dim=1),
            "f8": torch.cat([taps["f8"], attn["8"].to(taps["f8"].dtype)], dim=1),
            "f4": taps["f4"],
        }
        return BackboneOutput(features=feats, attention=attn)
