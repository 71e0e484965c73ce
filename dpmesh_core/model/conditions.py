"""The two conditions DPMesh derives from 2-D key-points (spec §2.4, §2.5).

* ``make_heatmaps``: c_j, one unnormalised Gaussian per joint (peak 1) on the heatmap grid, zeroed for
  invisible joints; concatenated with the VAE latent and fed to the ControlNet.
* ``KeypointPrompt``: c_t, the joint-coordinate prompt, ``Linear(2→D)`` of the coordinates divided by the
  grid size (as released) or the paper's two-layer MLP; used as ``encoder_hidden_states`` of both the
  ControlNet and the U-Net. The network owns it as its ``kp_lifting`` attribute; in the ``"linear"``
  form its parameters are named ``weight``/``bias`` so the official ``kp_lifting.*`` keys load 1:1.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn


def make_heatmaps(joints: torch.Tensor, mask: torch.Tensor, size: int = 32, sigma: float = 2.5) -> torch.Tensor:
    """Joint heatmaps on the ``size``×``size`` integer grid.

    Args:
        joints: (B, J, 2) float, (x, y) in heatmap cells (crop px × size / input_size).
        mask: (B, J) bool or float; 0/False zeroes the joint's channel (invisible / outside the crop).
        size: grid side in cells (32).
        sigma: Gaussian σ in cells (2.5).
    Returns:
        (B, J, size, size) in ``joints.dtype``: exp(-((x-cx)² + (y-cy)²) / (2σ²)) · mask, peak 1 at an
        integer centre; row index = y, column index = x.
    """
    dtype = joints.dtype if joints.is_floating_point() else torch.float32
    j = joints.to(torch.float32)
    grid = torch.arange(size, device=joints.device, dtype=torch.float32)
    cx = j[..., 0, None, None]  # (B,J,1,1)
    cy = j[..., 1, None, None]
    xx = grid.view(1, 1, 1, size)
    yy = grid.view(1, 1, size, 1)
    heat = torch.exp(-(((xx - cx) / sigma) ** 2) / 2 - (((yy - cy) / sigma) ** 2) / 2)
    heat = heat * mask.to(torch.float32)[..., None, None]
    return heat.to(dtype)


class KeypointPrompt(nn.Module):
    """Joint-coordinate prompt c_t: (B, J, 2) heatmap-grid coordinates → (B, J, D) context tokens.

    ``kind="linear"`` (released): tokens = W · (xy / grid) + b with ``weight`` (D, 2), ``bias`` (D,),
    initialised like ``nn.Linear(2, D)``. ``kind="mlp"`` (paper): Linear(2→D) → GELU → Linear(D→D) in
    ``fc1``/``fc2``. Invisible joints are NOT masked (as released): a missing joint at (0, 0) gives the
    bias token.
    """

    def __init__(self, dim: int, kind: Literal["linear", "mlp"] = "linear", grid: int = 32):
        super().__init__()
        self.kind = kind
        self.grid = float(grid)
        if kind == "linear":
            self.weight = nn.Parameter(torch.empty(dim, 2))
            self.bias = nn.Parameter(torch.empty(dim))
            nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
            bound = 1 / math.sqrt(2)
            nn.init.uniform_(self.bias, -bound, bound)
        elif kind == "mlp":
            self.fc1 = nn.Linear(2, dim)
            self.fc2 = nn.Linear(dim, dim)
        else:
            raise ValueError(f"unknown KeypointPrompt kind {kind!r}")

    def forward(self, joints: torch.Tensor) -> torch.Tensor:
        """joints: (B, J, 2) in heatmap cells (x, y) → (B, J, D)."""
        x = joints[..., :2] / self.grid
        if self.kind == "linear":
            return nn.functional.linear(x.to(self.weight.dtype), self.weight, self.bias)
        x = x.to(self.fc1.weight.dtype)
        return self.fc2(nn.functional.gelu(self.fc1(x)))
