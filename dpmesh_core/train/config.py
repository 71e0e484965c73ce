"""Typed training configuration (strict: unknown key or bad value → ConfigError naming it).

``load_train_config(path, overrides=["optim.lr=1e-4", ...])`` reads YAML/JSON and applies dotted
overrides (values parsed as YAML). The config is saved beside every checkpoint (``train_config.yaml``).
Example: ``dpmesh_core/data/configs/tiny_synthetic.yaml``.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Literal

from ..config import from_dict, read_mapping
from ..errors import ConfigError
from ..model.config import NetworkConfig

# the dataset kinds ``datasets.DATASETS`` registers (kept equal by a test; named here so that validating a
# config does not import the datasets)
DATASET_KINDS = ("dpmesh", "3dpw", "coco")


@dataclass
class SampleConfig:
    """How a person becomes a training sample: crop and augmentation (spec §5.2); a TrainConfig's
    ``data.sample``, completed at run time (``train``, ``return_clean``) by ``loop.sample_config``.

    input_size: crop side px (256); heatmap_size: input key-point grid (32); output_size: target grid (64).
    train: enables the augmentations; test crops use ``test_box_scale`` and no augmentation.
    bbox_3d_size: metres spanned by the 64 depth bins (2.0; spec §5.7). return_clean: also the NKR
    teacher's clean inputs.
    """

    input_size: int = 256
    box_pad: float = 1.2
    test_box_scale: float = 1.1
    box_jitter: tuple[float, float] = (1.0, 1.2)
    scale_factor: float = 0.25
    rotation_factor: float = 30.0
    rotation_prob: float = 0.6
    flip_prob: float = 0.5
    color_factor: float = 0.2
    occlusion_prob: float = 0.5
    occlusion_max_area: float = 0.3
    posefix: bool = True
    joint_drop: float = 0.0
    bbox_3d_size: float = 2.0
    heatmap_size: int = 32
    output_size: int = 64
    train: bool = True
    return_clean: bool = False

    @classmethod
    def from_settings(cls, settings: SampleConfig, **runtime: Any) -> SampleConfig:
        """``settings`` with the run-time fields (``train``, ...) set."""
        return dataclasses.replace(settings, **runtime)

    def validate(self) -> None:
        for name in ("rotation_prob", "flip_prob", "occlusion_prob", "joint_drop"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ConfigError(f"must be in [0, 1], got {v}", name)
        if not 0.0 < self.occlusion_max_area <= 1.0:
            raise ConfigError("must be in (0, 1]", "occlusion_max_area")
        if self.input_size % 32:
            raise ConfigError("must be a multiple of 32", "input_size")


@dataclass
class DataSource:
    """One dataset. kind: a ``datasets.DATASETS`` name ("dpmesh", "3dpw", "coco").

    path: .jsonl (dpmesh), 3DPW root (3dpw) or COCO annotation JSON (coco); image_root (coco);
    smpl_fits (coco, optional); split (3dpw); stride (3dpw); ratio: mixing weight.
    """

    kind: str = "dpmesh"
    path: str = ""
    image_root: str | None = None
    smpl_fits: str | None = None
    split: str = "train"
    stride: int = 1
    ratio: float = 1.0

    def validate(self) -> None:
        if self.kind not in DATASET_KINDS:
            raise ConfigError(f"unknown dataset kind {self.kind!r}; known: {', '.join(sorted(DATASET_KINDS))}",
                              "kind")
        if not self.path:
            raise ConfigError("a data source needs a path", "path")
        if self.ratio < 0:
            raise ConfigError("must be ≥ 0", "ratio")


@dataclass
class DataConfig:
    """train / val: lists of sources (train sources mixed by ratio); epoch_length: samples per epoch of
    the mix (None = the sum of lengths); num_workers: DataLoader workers; val_max_samples: cap for the
    periodic evaluation."""

    train: list[DataSource] = field(default_factory=list)
    val: list[DataSource] = field(default_factory=list)
    sample: SampleConfig = field(default_factory=SampleConfig)
    epoch_length: int | None = None
    num_workers: int = 0
    val_max_samples: int | None = 256

    def validate(self) -> None:
        if not self.train:
            raise ConfigError("at least one training data source is needed", "data.train")
        if self.num_workers < 0:
            raise ConfigError("must be ≥ 0", "num_workers")


@dataclass
class ModelSettings:
    """preset: "tiny" | "sd15" (ignored when ``network`` is given in full); init_from: a saved network
    folder to start from; body_model: "synthetic-smpl" | "smpl" | "anny" (the loss needs SMPL-30 joints);
    body_model_path: the SMPL file for "smpl"; pose_prior: a ``pose_prior.save_pose_prior`` file installed
    as the pose decoder (needs ``network.head.pose_decoder: vq``)."""

    preset: str = "tiny"
    network: NetworkConfig | None = None
    init_from: str | None = None
    body_model: str = "synthetic-smpl"
    body_model_path: str | None = None
    pose_prior: str | None = None

    def validate(self) -> None:
        from ..model.config import PRESETS

        if self.network is None and self.preset not in PRESETS:
            raise ConfigError(f"unknown preset {self.preset!r}; known: {', '.join(PRESETS)}", "preset")

    def network_config(self) -> NetworkConfig:
        from ..model.config import preset

        return self.network if self.network is not None else preset(self.preset)


@dataclass
class OptimConfig:
    """AdamW with parameter groups: LoRA and fusion at ``lr_backbone``, ControlNet at ``lr_controlnet``
    (default ``lr_backbone``), head (kp_lifting + regressor) at ``lr``, loss weights at ``lr`` with no weight
    decay. grad_clip: max gradient norm (10 as released; 0 = off)."""

    lr: float = 1e-4
    lr_backbone: float = 1e-4
    lr_controlnet: float | None = None
    weight_decay: float = 1e-6
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    grad_clip: float = 10.0

    def validate(self) -> None:
        for name in ("lr", "lr_backbone"):
            if getattr(self, name) <= 0:
                raise ConfigError("must be > 0", name)
        if self.lr_controlnet is not None and self.lr_controlnet < 0:
            raise ConfigError("must be ≥ 0", "lr_controlnet")
        if self.weight_decay < 0 or self.grad_clip < 0:
            raise ConfigError("must be ≥ 0", "weight_decay" if self.weight_decay < 0 else "grad_clip")


@dataclass
class ScheduleConfig:
    """Learning-rate multiplier per step: linear warm-up over ``warmup_steps``, then
    "constant"; "step": × ``decay_factor`` at each of ``decay_steps`` (paper: 1e-4 → 1e-5 for the last
    epochs); "cosine": to ``min_ratio`` at ``max_steps``."""

    kind: Literal["constant", "step", "cosine"] = "constant"
    warmup_steps: int = 0
    decay_steps: tuple[int, ...] = ()
    decay_factor: float = 0.1
    min_ratio: float = 0.0


@dataclass
class LossSettings:
    """weighting: "uncertainty" (release AutomaticWeightedLoss) or "fixed" (Σ weights·L; paper λ2D = 5,
    λ3D = 2, λSMPL = 1 can be given in ``weights``); factors: per-term multipliers applied first
    (release defaults in ``losses.DEFAULT_FACTORS``)."""

    weighting: Literal["fixed", "uncertainty"] = "uncertainty"
    weights: dict[str, float] = field(default_factory=dict)
    factors: dict[str, float] = field(default_factory=dict)

    def validate(self) -> None:
        from .losses import DEFAULT_FACTORS

        for name in list(self.weights) + list(self.factors):
            if name not in DEFAULT_FACTORS:
                raise ConfigError(f"unknown loss term {name!r}; known: {', '.join(sorted(DEFAULT_FACTORS))}",
                                  f"loss.{name}")


@dataclass
class NKRSettings:
    """NKR distillation: teacher = ``teacher`` (a saved network folder trained on clean data) or, if None,
    a frozen copy of the student at the start; features distilled; NT-Xent temperature; weight (0.1);
    student_joint_drop: extra random drop of the student's input joints (release SSL loaders: 0.2)."""

    enabled: bool = False
    teacher: str | None = None
    weight: float = 0.1
    temperature: float = 1.0
    features: tuple[str, ...] = ("feat_2d",)
    student_joint_drop: float = 0.2

    def validate(self) -> None:
        if self.temperature <= 0:
            raise ConfigError("must be > 0", "temperature")
        bad = set(self.features) - {"feat_2d", "fused", "feat_3d"}
        if bad:
            raise ConfigError(f"unknown feature {sorted(bad)[0]!r} (feat_2d, fused, feat_3d)", "features")


@dataclass
class TrainConfig:
    """Everything a training run needs.

    output_dir: run folder (checkpoints/, train_config.yaml, events.jsonl). device: "auto" | "cpu" |
    "cuda[:n]". precision: "fp32" | "bf16" | "fp16" (autocast; fp16 only on CUDA, with a GradScaler;
    fp32 is used where the device lacks support). max_steps: optimisation steps. log_every / eval_every /
    checkpoint_every: in steps (0 = never; a checkpoint is always written at the end). keep_checkpoints:
    how many step checkpoints to keep. heatmap_dropout: random heatmap drop inside the network (0.1).

    Several processes (``dpmesh train --num-processes N``, ``accelerate launch``, ``torchrun``, ``srun``; see
    ``loop.train``): ``batch_size`` is per process and per micro-batch; ``grad_accum`` micro-batches make one
    optimisation step, so the global batch is batch_size × processes × grad_accum.
    ``find_unused_parameters``: DDP's detection of trainable parameters that get no gradient (None = decided
    at start-up by one probe forward/backward on a real sample; true/false force it).
    """

    output_dir: str = "runs/train"
    seed: int = 0
    device: str = "auto"
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    batch_size: int = 8
    max_steps: int = 1000
    log_every: int = 10
    eval_every: int = 0
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    heatmap_dropout: float = 0.1
    grad_accum: int = 1
    find_unused_parameters: bool | None = None
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelSettings = field(default_factory=ModelSettings)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    loss: LossSettings = field(default_factory=LossSettings)
    nkr: NKRSettings = field(default_factory=NKRSettings)

    def validate(self) -> None:
        if self.batch_size < 1:
            raise ConfigError("must be ≥ 1", "batch_size")
        if self.max_steps < 0:
            raise ConfigError("must be ≥ 0", "max_steps")
        for name in ("log_every", "eval_every", "checkpoint_every"):
            if getattr(self, name) < 0:
                raise ConfigError("must be ≥ 0", name)
        if self.grad_accum < 1:
            raise ConfigError("must be ≥ 1", "grad_accum")
        if self.keep_checkpoints < 1:
            raise ConfigError("must be ≥ 1", "keep_checkpoints")
        if not 0.0 <= self.heatmap_dropout < 1.0:
            raise ConfigError("must be in [0, 1)", "heatmap_dropout")
        if not (self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda")
                or self.device == "mps"):
            raise ConfigError(f"unknown device {self.device!r}", "device")


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    d = data
    for p in parts[:-1]:
        nxt = d.get(p)
        if nxt is None:
            nxt = {}
            d[p] = nxt
        if not isinstance(nxt, dict):
            raise ConfigError(f"cannot set {key}: {p} is not a mapping", key)
        d = nxt
    d[parts[-1]] = value


def apply_overrides(data: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Apply "a.b.c=value" strings (value parsed as YAML) to nested plain data (in place; returned)."""
    import yaml

    for ov in overrides:
        if "=" not in ov:
            raise ConfigError(f"override {ov!r} must look like key=value", ov)
        key, raw = ov.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise ConfigError(f"cannot parse value {raw!r}: {e}", key.strip()) from e
        _set_dotted(data, key.strip(), value)
    return data


def train_config_from_dict(data: dict[str, Any], source: str | None = None) -> TrainConfig:
    """Strictly build a TrainConfig from plain data."""
    return from_dict(TrainConfig, data, source=source)


def load_train_config(path: str | os.PathLike, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Read a YAML/JSON training config, apply ``overrides``, build it strictly (ConfigError names the file
    and the dotted key). Relative data/output paths stay relative to the current directory."""
    data = apply_overrides(read_mapping(path), list(overrides))
    return from_dict(TrainConfig, data, source=str(path))
