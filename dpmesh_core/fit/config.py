"""``FitConfig``: every knob of the key-point fitter, loaded strictly through ``dpmesh_core.config``.

Units
-----
Re-projection residuals are measured in *reference pixels*: the pixel residual rescaled as if the
person's box were ``reference_size_px`` tall (``r_ref = r_px * reference_size_px / box_size``), so the
balance between the data term and the priors does not depend on how large the person appears.
``robust_sigma_px`` is in those reference pixels. Prior weights multiply unitless penalties (squared
z-scores, squared radians); the data term is a confidence-weighted mean of Geman-McClure costs in
reference px² (≈ r² for r ≪ sigma, saturating at sigma²).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..body.joints import JOINT_SETS
from ..errors import ConfigError


@dataclass
class FitConfig:
    """Configuration of :class:`dpmesh_core.fit.KeypointFitter` (see the module docstring for units)."""

    #: cold start, stage 1: global orientation + translation only, on torso key-points
    camera_iters: int = 8
    #: cold start, stage 2: everything (orientation, translation, body pose, shape)
    cold_iters: int = 24
    #: stage 2 is split into len(prior_anneal) equal parts whose pose-prior and joint-limit weights are
    #: multiplied by these factors in turn (strong prior first, then relaxed: avoids bad local minima)
    prior_anneal: tuple[float, ...] = (3.0, 1.0)
    #: robust-scale multipliers of the same parts of stage 2 (a wide scale first lets far key-points — a
    #: raised arm the rest pose is far from — pull the limb before the nominal scale starts to treat
    #: remaining far key-points as outliers); the last factor repeats if there are fewer than parts
    robust_anneal: tuple[float, ...] = (3.0, 1.0)
    #: cold start, stage 3: shape parameters too, on the best initialisation only (0: shape stays at the mean)
    shape_iters: int = 4
    #: cold start, stage 4: Levenberg-Marquardt iterations (at most) over orientation, translation and pose,
    #: shape held: brings the result to the energy's minimum, so that a warm start from it stays put
    polish_iters: int = 6
    #: warm start (previous result given, e.g. one key-point dragged or the next video frame)
    warm_iters: int = 10
    #: the Levenberg-Marquardt warm start stops when its last accepted step lowered the energy by less than
    #: this fraction (a drag is re-fitted on every mouse move: the last fraction of a percent is not worth an
    #: evaluation; the cold start's polish converges to 0.2 % so that a warm start from it stays put)
    warm_tolerance: float = 5e-3
    #: ``refine`` of a network result
    refine_iters: int = 40
    #: "lbfgs" (quasi-Newton with a strong-Wolfe line search: few iterations; the default) or "adam"
    optimizer: Literal["lbfgs", "adam"] = "lbfgs"
    #: solver of warm starts and ``refine`` (``warm_iters`` / ``refine_iters`` are its maximum iterations):
    #: "lm" (Levenberg-Marquardt on the residuals, Jacobian by one batched forward difference; converges in
    #: a few iterations: the drag path) or "gradient" (``optimizer`` with the warm learning rates)
    warm_solver: Literal["lm", "gradient"] = "lm"
    #: Adam learning rates: rotations (rad/step), translation (in-plane: 100 px units; depth: log-metres),
    #: shape parameters
    lr_rotation: float = 0.05
    lr_transl: float = 0.03
    lr_betas: float = 0.03
    #: learning-rate multiplier reached at the last iteration of a stage (cosine decay)
    lr_final_factor: float = 0.1
    #: Geman-McClure scale, reference pixels
    robust_sigma_px: float = 20.0
    #: robust-scale multiplier of key-points the user placed by hand (``Person.edited``): a correction is not
    #: a detector error, so it must not be discounted as an outlier when it is far from the current body
    edited_robust_factor: float = 8.0
    #: person box size that reference pixels correspond to
    reference_size_px: float = 256.0
    #: prior weights
    pose_prior_weight: float = 10.0
    shape_prior_weight: float = 20.0
    joint_limit_weight: float = 50.0
    #: weak prior on log-depth around the key-point-scale initial depth
    depth_prior_weight: float = 2.0
    #: learning-rate multiplier on a warm start / refine (small steps keep a converged fit in place)
    lr_warm_factor: float = 0.3
    #: pull toward the previous params on a warm start (video / drag), per squared rad / metre / beta unit
    temporal_weight: float = 5.0
    #: pull toward the initial params in ``refine``
    refine_prior_weight: float = 5.0
    #: number of initial orientations tried in one batch on a cold start, in this order: facing the camera,
    #: facing away, turned ±90°, ±45°, ±135° (1..8)
    num_inits: int = 8
    #: initial orientations kept after stage 1 (the others are dropped to save time)
    keep_after_camera_stage: int = 8
    #: fit shape parameters in stage 3 of a cold start (False: keep the body model's mean shape). Warm starts
    #: and ``refine`` keep the shape they start from (a person's shape does not change between frames)
    optimize_betas: bool = True
    #: fewer usable key-points than this → EstimationError for that person
    min_visible_joints: int = 2
    #: persons fitted together in one batch (× ``num_inits`` batch elements on a cold start): memory grows
    #: with the batch (about 16 MB per person with 8 initialisations, Anny), not with the number of persons
    #: in the image; larger batches are a little faster per person
    batch_persons: int = 16
    #: torch intra-op threads while fitting (the batches are tiny: 1 thread is fastest, and extra threads
    #: contend badly on a busy machine); set for the duration of a call and restored after. 0 = leave as is
    num_threads: int = 1
    #: joint set of ``MeshResult.joints3d/joints2d``; None = the set the key-points were fitted in
    output_joint_set: str | None = None

    def validate(self) -> None:
        for name in ("camera_iters", "cold_iters", "shape_iters", "polish_iters", "warm_iters", "refine_iters"):
            if getattr(self, name) < 0:
                raise ConfigError(f"must be ≥ 0, got {getattr(self, name)}", name)
        if self.cold_iters + self.camera_iters < 1:
            raise ConfigError("camera_iters + cold_iters must be ≥ 1", "cold_iters")
        for name in ("lr_rotation", "lr_transl", "lr_betas", "robust_sigma_px", "reference_size_px",
                     "edited_robust_factor"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"must be > 0, got {getattr(self, name)}", name)
        if not 0 < self.warm_tolerance < 1:
            raise ConfigError(f"must be in (0, 1), got {self.warm_tolerance}", "warm_tolerance")
        if self.warm_solver not in ("lm", "gradient"):
            raise ConfigError(f"must be 'lm' or 'gradient', got {self.warm_solver!r}", "warm_solver")
        if not 0 < self.lr_warm_factor <= 1:
            raise ConfigError(f"must be in (0, 1], got {self.lr_warm_factor}", "lr_warm_factor")
        if not 0 < self.lr_final_factor <= 1:
            raise ConfigError(f"must be in (0, 1], got {self.lr_final_factor}", "lr_final_factor")
        for name in ("pose_prior_weight", "shape_prior_weight", "joint_limit_weight", "depth_prior_weight",
                     "temporal_weight", "refine_prior_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"must be ≥ 0, got {getattr(self, name)}", name)
        if not self.prior_anneal or any(not m > 0 for m in self.prior_anneal):
            raise ConfigError(f"must be a non-empty list of positive factors, got {self.prior_anneal}",
                              "prior_anneal")
        if not self.robust_anneal or any(not m > 0 for m in self.robust_anneal):
            raise ConfigError(f"must be a non-empty list of positive factors, got {self.robust_anneal}",
                              "robust_anneal")
        if not 1 <= self.num_inits <= 8:
            raise ConfigError(f"must be in 1..8, got {self.num_inits}", "num_inits")
        if not 1 <= self.keep_after_camera_stage <= 8:
            raise ConfigError(f"must be in 1..8, got {self.keep_after_camera_stage}", "keep_after_camera_stage")
        if self.min_visible_joints < 1:
            raise ConfigError(f"must be ≥ 1, got {self.min_visible_joints}", "min_visible_joints")
        if self.batch_persons < 1:
            raise ConfigError(f"must be ≥ 1, got {self.batch_persons}", "batch_persons")
        if self.num_threads < 0:
            raise ConfigError(f"must be ≥ 0, got {self.num_threads}", "num_threads")
        if self.output_joint_set is not None and self.output_joint_set not in JOINT_SETS:
            raise ConfigError(f"unknown joint set {self.output_joint_set!r}; known: {sorted(JOINT_SETS)}",
                              "output_joint_set")
