"""The body-model protocol shared by every body model (SMPL via smplx, Anny).

Conventions every implementation follows, so that fitting, the network and exports need not care which
model they drive:

* **Canonical frame = SMPL's**: metres, y up, the body facing +z, before ``global_orient``/``transl``.
  (An adapter whose native frame differs — Anny is z-up — converts inside ``forward``.)
  To place a body in the OpenCV camera frame (y down, z forward), a ``global_orient`` of (π, 0, 0) makes
  a person stand upright facing the camera.
* ``global_orient`` (B, 3) axis-angle rotates the canonical body about its root joint (as smplx does);
  ``transl`` (B, 3) metres is added afterwards.
* ``body_pose`` (B, pose_dim) is model specific (SMPL: 23 × 3 axis-angle; Anny: axis-angle of a fixed list
  of bones). ``pose_prior`` and ``joint_limit_penalty`` make it usable by a generic fitter.
* ``betas`` (B, num_betas) shape (SMPL: PCA betas; Anny: phenotype values, 0.5 = average).
* ``forward(..., joint_sets=("coco17",), return_vertices=False)`` must be cheap: it computes only the
  joints asked for (skeleton + the few vertices joint regressors need), so a fitter can iterate at
  key-point rate and skin the full mesh once at the end with ``return_vertices=True``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class BodyOutput:
    """joints: {joint_set: (B, J, 3) metres}; vertices: (B, V, 3) metres or None."""

    joints: dict[str, torch.Tensor]
    vertices: torch.Tensor | None = None


class BodyModel(torch.nn.Module):
    """Abstract body model (a torch Module so it moves with ``.to(device)``)."""

    name: str = "abstract"
    num_betas: int = 0
    pose_dim: int = 0
    #: joint sets ``forward`` can return
    joint_sets: tuple[str, ...] = ()

    @property
    def faces(self) -> np.ndarray:  # (F, 3) int32
        raise NotImplementedError

    @property
    def num_vertices(self) -> int:
        raise NotImplementedError

    def forward(
        self,
        global_orient: torch.Tensor,
        body_pose: torch.Tensor,
        betas: torch.Tensor,
        transl: torch.Tensor | None = None,
        *,
        joint_sets: tuple[str, ...] = ("coco17",),
        return_vertices: bool = False,
    ) -> BodyOutput:
        raise NotImplementedError

    def joints_jacobian(self, global_orient: torch.Tensor, body_pose: torch.Tensor, betas: torch.Tensor,
                        transl: torch.Tensor, joint_set: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Joints (B, J, 3) of ``joint_set`` and their exact derivative (B, J, 3, 3 + pose_dim) with respect
        to (global_orient, body_pose) — each joint also moves one-for-one with ``transl`` — or None where the
        model has no closed form (the fitter then differentiates ``forward`` numerically)."""
        return None

    def check_joint_sets(self, joint_sets: tuple[str, ...]) -> None:
        """Raise ValueError naming any joint set this model cannot return."""
        for s in joint_sets:
            if s not in self.joint_sets:
                raise ValueError(f"{self.name}: joint set {s!r} not available; have {self.joint_sets}")

    def mean_betas(self, batch: int = 1) -> torch.Tensor:
        """(B, num_betas) the average body."""
        return torch.zeros(batch, self.num_betas)

    def pose_prior(self, body_pose: torch.Tensor) -> torch.Tensor:
        """(B,) penalty, 0 at the rest/mean pose, growing with implausibility (unitless, ~ squared z-score)."""
        return (body_pose**2).sum(-1)

    def shape_prior(self, betas: torch.Tensor) -> torch.Tensor:
        """(B,) penalty for unlikely shapes, 0 at the mean body."""
        return ((betas - self.mean_betas(betas.shape[0]).to(betas)) ** 2).sum(-1)

    def joint_limit_penalty(self, body_pose: torch.Tensor) -> torch.Tensor:
        """(B,) penalty, 0 inside the anatomical joint-angle limits, growing quadratically outside."""
        return body_pose.new_zeros(body_pose.shape[0])

    # Residual forms of the two pose penalties (``penalty == (residuals ** 2).sum(-1)``), for least-squares
    # solvers (the fitter's Gauss-Newton warm re-fit). A model whose penalties are sums of squares returns
    # the terms; the defaults here are the square roots of the penalties (one residual each), exact for
    # the value and usable for any model, but with a rank-one Jacobian.

    def pose_prior_residuals(self, body_pose: torch.Tensor) -> torch.Tensor:
        """(B, M) residuals whose squares sum to ``pose_prior``."""
        return (self.pose_prior(body_pose).clamp_min(0) + 1e-12).sqrt()[:, None]

    def joint_limit_residuals(self, body_pose: torch.Tensor) -> torch.Tensor:
        """(B, M) residuals whose squares sum to ``joint_limit_penalty``."""
        return (self.joint_limit_penalty(body_pose).clamp_min(0) + 1e-12).sqrt()[:, None]
