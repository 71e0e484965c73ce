"""NKR (noisy key-point reasoning) distillation (spec §4).

A frozen teacher sees clean images with ground-truth key-points; the student sees occluded images with
PoseFix-noisy key-points. The student's feature maps are pulled toward the teacher's:

    L_NKR = weight · (NT-Xent(student, teacher; τ) + MSE(student, teacher))      (paper: weight 0.1)

``nt_xent`` is the release's ``SimCLR`` loss: each sample's features are flattened; the 2B vectors
(student rows 0..B−1, teacher rows B..2B−1) are L2-normalised; with cosine similarities s, row i's
positive is its counterpart (i ± B) and its denominator sums exp(s_ik/τ) over all k ≠ i (the positive
included); the loss is the mean over the 2B rows of −log(exp(s_pos/τ) / Σ_{k≠i} exp(s_ik/τ)).

What holds for identical teacher and student features (tested): the MSE term is exactly 0; every
positive similarity is 1 (its maximum) and NT-Xent equals the closed form
mean_i log(1 + 2·Σ_{k≠i} exp((cos(a_i, a_k) − 1)/τ)) over the B samples — not 0 unless B = 1. Because
the denominators only depend on the set of 2B vectors, among teachers that are any re-ordering of the
student's batch the identical order gives the smallest NT-Xent.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def nt_xent(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """NT-Xent between (B, ...) student and teacher features (flattened per sample) → scalar."""
    B = student.shape[0]
    z = torch.cat([student.reshape(B, -1), teacher.reshape(B, -1)], 0).float()
    z = F.normalize(z, dim=1)
    sim = z @ z.t() / temperature  # (2B, 2B)
    eye = torch.eye(2 * B, dtype=torch.bool, device=z.device)
    sim = sim.masked_fill(eye, float("-inf"))
    pos = torch.cat([torch.arange(B, 2 * B), torch.arange(0, B)]).to(z.device)
    return F.cross_entropy(sim, pos)


class NKRLoss(nn.Module):
    """weight · Σ_features (NT-Xent + MSE) between student and teacher ``NetworkOutput`` feature fields.

    features: names of output fields to distil ("feat_2d" (B, d, 8, 8), "fused" (B, F, 8, 8), "feat_3d").
    Returns {"nkr_ntxent", "nkr_mse", "nkr"} (``nkr`` = weight · (ntxent + mse), the term to add).
    """

    def __init__(self, weight: float = 0.1, temperature: float = 1.0, features: Sequence[str] = ("feat_2d",)):
        super().__init__()
        self.weight = float(weight)
        self.temperature = float(temperature)
        self.features = tuple(features)

    def forward(self, student_out: Any, teacher_out: Any) -> dict[str, torch.Tensor]:
        nt = mse = None
        for name in self.features:
            s = getattr(student_out, name)
            t = getattr(teacher_out, name).detach().to(s.dtype)
            a = nt_xent(s, t, self.temperature)
            b = F.mse_loss(s.float(), t.float())
            nt = a if nt is None else nt + a
            mse = b if mse is None else mse + b
        if nt is None:
            raise ValueError("NKRLoss needs at least one feature name")
        return {"nkr_ntxent": nt, "nkr_mse": mse, "nkr": self.weight * (nt + mse)}


def make_teacher(student: nn.Module) -> nn.Module:
    """A frozen copy of ``student`` (eval mode, no gradients), as ``Trainer_SSL`` initialises it."""
    teacher = copy.deepcopy(student)
    teacher.requires_grad_(False)
    return teacher.eval()


def freeze(teacher: nn.Module) -> nn.Module:
    """Freeze a loaded teacher in place (eval mode, no gradients)."""
    teacher.requires_grad_(False)
    return teacher.eval()
