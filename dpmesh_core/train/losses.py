"""Training losses of spec §5.7 and their weighting.

All terms are masked L1, averaged with ``.mean()`` over every element (masked entries count as zeros, as
released), multiplied by a fixed factor, then combined either by fixed weights (a plain sum) or by learned
uncertainty weighting (``AutomaticWeightedLoss``: 0.5/σ²·L + log(1 + σ²), σ initialised to 1).

===================  =====================================================================  =========
key                  definition                                                             factor
===================  =====================================================================  =========
``joint_img``        |64·joint_img − GT graph-15 (64-grid; z = depth bin)| · valid; z only   1/64
                     where the sample has 3-D
``smpl_pose``        |pose72 − GT| · pose_valid (ankles, toes, wrists, hands zeroed)          2
``smpl_shape``       |β − GT| · has_params                                                    2
``joint_proj``       |projected SMPL-30 (64-grid) − GT 2-D| · valid                           1
``joint_cam``        |root-relative SMPL-30 (m) − GT| · valid · has_3d                        2
===================  =====================================================================  =========

(The release's ``smpl_joint_img`` term, against pre-projected SMPL-fit joints, is the same as
``joint_img`` for data whose 2-D joints are SMPL joints, e.g. ours; it is not duplicated.)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

DEFAULT_FACTORS: dict[str, float] = {
    "joint_img": 1.0 / 64.0, "smpl_pose": 2.0, "smpl_shape": 2.0, "joint_proj": 1.0, "joint_cam": 2.0,
}
LOSS_KEYS = tuple(sorted(DEFAULT_FACTORS))


def dpmesh_losses(out: Any, batch: Mapping[str, torch.Tensor], *, input_size: int = 256,
                  output_size: int = 64, factors: Mapping[str, float] | None = None) -> dict[str, torch.Tensor]:
    """Per-term losses (scalars, factors applied) from a ``NetworkOutput`` and a collated batch.

    Needs ``out.joint_img`` (B, 15, 3) in [0, 1], ``out.pose72`` (B, 72), ``out.betas`` (B, 10) and, for
    the mesh terms, ``out.joint_proj`` (B, 30, 2) crop px and ``out.joints30`` (B, 30, 3) root-relative m
    (skipped when the network ran without a body model). Batch keys: see ``datasets.SampleBuilder``.
    """
    f = dict(DEFAULT_FACTORS)
    if factors:
        f.update(factors)
    dev = out.joint_img.device
    b = {k: v.to(dev) for k, v in batch.items() if isinstance(v, torch.Tensor)}
    L: dict[str, torch.Tensor] = {}
    # 2.5-D joints in the 64 grid
    tgt = b["joints_img"]
    m = b["joints_img_valid"][..., None].expand_as(tgt).clone()
    m[..., 2] = m[..., 2] * b["has_3d"][:, None]
    L["joint_img"] = ((out.joint_img.float() * output_size - tgt).abs() * m).mean() * f["joint_img"]
    # body parameters
    L["smpl_pose"] = ((out.pose72.float() - b["pose"]).abs() * b["pose_valid"]).mean() * f["smpl_pose"]
    L["smpl_shape"] = ((out.betas.float() - b["betas"]).abs() * b["has_params"][:, None]).mean() * f["smpl_shape"]
    if out.joint_proj is not None:
        proj = out.joint_proj.float() * (output_size / input_size)
        L["joint_proj"] = ((proj - b["joints_2d"]).abs() * b["joints_2d_valid"][..., None]).mean() * f["joint_proj"]
    if out.joints30 is not None:
        mc = (b["joints_cam_valid"] * b["has_3d"][:, None])[..., None]
        L["joint_cam"] = ((out.joints30.float() - b["joints_cam"]).abs() * mc).mean() * f["joint_cam"]
    return L


class AutomaticWeightedLoss(nn.Module):
    """Learned uncertainty weighting (release ``AutomaticWeightedLoss``): Σ 0.5/σᵢ²·Lᵢ + log(1 + σᵢ²),
    one σ per key (sorted order), initialised to 1."""

    def __init__(self, keys: tuple[str, ...] = LOSS_KEYS):
        super().__init__()
        self.keys = tuple(sorted(keys))
        self.params = nn.Parameter(torch.ones(len(self.keys)))

    def forward(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        total = self.params.new_zeros(())
        for i, k in enumerate(self.keys):
            if k in losses:
                s2 = self.params[i] ** 2
                total = total + 0.5 / s2 * losses[k] + torch.log1p(s2)
        return total


def combine(losses: Mapping[str, torch.Tensor], weights: Mapping[str, float] | None = None,
            awl: AutomaticWeightedLoss | None = None) -> torch.Tensor:
    """Total loss: ``awl(losses)`` when given, else Σ weights[k]·losses[k] (missing weight = 1)."""
    if awl is not None:
        return awl(losses)
    w = weights or {}
    vals = [float(w.get(k, 1.0)) * v for k, v in losses.items()]
    return torch.stack(vals).sum() if vals else torch.zeros(())
