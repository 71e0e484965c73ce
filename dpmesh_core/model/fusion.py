"""Fusion of the four U-Net feature taps into one (B, F, 8, 8) map (spec §2.8, ``VPDEncoder.outmodules``).

Attribute paths (relative to the network; the release stores them as ``backbone.outmodules.*``, the
official-checkpoint loader renames ``backbone.outmodules.`` → ``fusion.outmodules.``):

* ``fusion.outmodules.0.0`` Conv3×3 s2 (C0→C0), ``.0.1`` GroupNorm(16, C0), (ReLU), ``.0.3`` Conv3×3 s2
* ``fusion.outmodules.1.0`` Conv3×3 s2 (C1'→C1') — a one-conv Sequential [infer: VPD layout]
* ``fusion.outmodules.2.0`` Conv1×1 (ΣC→F), ``.2.1`` GroupNorm(16, F), (ReLU)

SD1.5: C0 = 320, C1' = 670, C2' = 1310, C3 = 1280, ΣC = 3580, F = 2048.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Fusion(nn.Module):
    """features {"f32": (B,C0,4s,4s), "f16": (B,C1',2s,2s), "f8": (B,C2',s,s), "f4": (B,C3,s/2,s/2)}
    → (B, F, s, s) with s = 8 for a 32×32 latent."""

    def __init__(self, feature_channels: tuple[int, int, int, int], out_channels: int = 2048, groups: int = 16):
        super().__init__()
        c0, c1, c2, c3 = feature_channels
        self.outmodules = nn.ModuleList([
            nn.Sequential(
                nn.Conv2d(c0, c0, 3, stride=2, padding=1),
                nn.GroupNorm(groups, c0),
                nn.ReLU(),
                nn.Conv2d(c0, c0, 3, stride=2, padding=1),
            ),
            nn.Sequential(nn.Conv2d(c1, c1, 3, stride=2, padding=1)),
            nn.Sequential(
                nn.Conv2d(c0 + c1 + c2 + c3, out_channels, 1),
                nn.GroupNorm(groups, out_channels),
                nn.ReLU(),
            ),
        ])
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Conv weights: truncated normal std 0.02, bias 0 (``VPDEncoder._init_weights``)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        x32 = self.outmodules[0](features["f32"])
        x16 = self.outmodules[1](features["f16"])
        f4 = F.interpolate(features["f4"], scale_factor=2, mode="nearest")
        x8 = torch.cat([features["f8"], f4], dim=1)
        return self.outmodules[2](torch.cat([x32, x16, x8], dim=1))
