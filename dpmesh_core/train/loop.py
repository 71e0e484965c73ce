"""The training loop: a generator of JSON-able events.

``train(config, resume=False)`` yields, in order:

* ``{"event": "start", "step", "total_steps", "device", "precision", "num_params", "num_trainable", "data": {counts},
  "output_dir"}``
* every ``log_every`` steps: ``{"event": "step", "step", "epoch", "loss", "losses": {term: value}, "lr":
  {group: lr}, "grad_norm", "skipped", "samples_per_s"}``
* every ``eval_every`` steps (with validation data): ``{"event": "eval", "step", "metrics": {...}}``
* every ``checkpoint_every`` steps and at the end: ``{"event": "checkpoint", "step", "path"}``
* ``{"event": "done", "step", "checkpoint", "loss"}``

Closing the generator stops training (the last checkpoint stays valid). Checkpoints are folders
``<output_dir>/checkpoints/step_NNNNNNN/`` holding the network (``save_network``: config.json +
model.safetensors, loadable with ``load_network``), ``train_state.pt`` (optimiser, scheduler, loss
weights, step, data position, RNG states of python / numpy / torch; loads with ``weights_only=True``),
the NKR teacher when it is a copy of the student, and ``train_config.yaml``. ``<output_dir>/latest``
names the newest one. ``resume=True`` continues exactly from it (same weights as an uninterrupted run on
the same device).
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import save_config, to_dict
from ..devices import autocast_for, resolve_device, training_precision  # noqa: F401 - re-exported
from ..errors import ConfigError, InputError
from .config import TrainConfig
from .datasets import MixedDataset, SampleConfig, build_dataset, collate
from .losses import AutomaticWeightedLoss, combine, dpmesh_losses
from .nkr import NKRLoss, freeze, make_teacher
from .run_dir import STATE_NAME, latest_checkpoint, list_checkpoints  # noqa: F401 - re-exported

log = logging.getLogger(__name__)

TEACHER_NAME = "teacher.safetensors"


# --------------------------------------------------------------------------------------------- helpers


def sample_config(cfg: TrainConfig, train: bool) -> SampleConfig:
    s = cfg.data.sample
    return SampleConfig.from_settings(
        s, train=train, box_jitter=tuple(s.box_jitter),
        joint_drop=max(s.joint_drop, cfg.nkr.student_joint_drop if cfg.nkr.enabled else 0.0),
        return_clean=bool(cfg.nkr.enabled and train))


def build_source(src: Any, sample: SampleConfig, seed: int):
    kw: dict[str, Any] = {"sample": sample, "seed": seed}
    if src.kind == "dpmesh":
        kw["path"] = src.path
    elif src.kind == "3dpw":
        kw.update(root=src.path, split=src.split, stride=src.stride)
    elif src.kind == "coco":
        if not src.image_root:
            raise ConfigError("a coco source needs image_root", "data.image_root")
        kw.update(annotations=src.path, image_root=src.image_root, smpl_fits=src.smpl_fits)
    return build_dataset(src.kind, **kw)


def build_train_data(cfg: TrainConfig) -> MixedDataset:
    if not cfg.data.train:
        raise ConfigError("at least one training data source is needed", "data.train")
    sc = sample_config(cfg, train=True)
    parts = [build_source(s, sc, cfg.seed) for s in cfg.data.train]
    if sum(len(p) for p in parts) == 0:
        raise InputError("the training data has no usable sample (see the warnings above)",
                         cfg.data.train[0].path)
    return MixedDataset(parts, [s.ratio for s in cfg.data.train], cfg.data.epoch_length, seed=cfg.seed)


def lr_lambda(cfg: TrainConfig):
    sc = cfg.schedule
    total = max(cfg.max_steps, 1)

    def f(step: int) -> float:
        m = 1.0
        if sc.warmup_steps > 0 and step < sc.warmup_steps:
            m = (step + 1) / sc.warmup_steps
        if sc.kind == "step":
            m *= sc.decay_factor ** sum(step >= s for s in sc.decay_steps)
        elif sc.kind == "cosine":
            t = min(step / total, 1.0)
            m *= sc.min_ratio + (1 - sc.min_ratio) * 0.5 * (1 + np.cos(np.pi * t))
        return float(m)

    return f


def build_optimizer(cfg: TrainConfig, net: torch.nn.Module, awl: torch.nn.Module | None):
    """AdamW with groups lora / controlnet / fusion / head (+ loss_weights) (spec §5.6)."""
    o = cfg.optim
    groups = net.parameter_groups() if hasattr(net, "parameter_groups") else {
        "head": [p for p in net.parameters() if p.requires_grad]}
    lrs = {"lora": o.lr_backbone, "fusion": o.lr_backbone,
           "controlnet": o.lr_controlnet if o.lr_controlnet is not None else o.lr_backbone, "head": o.lr}
    pg = []
    for name, params in groups.items():
        params = [p for p in params if p.requires_grad]
        if params:
            pg.append({"params": params, "lr": lrs.get(name, o.lr), "name": name, "weight_decay": o.weight_decay})
    if awl is not None:
        pg.append({"params": list(awl.parameters()), "lr": o.lr, "name": "loss_weights", "weight_decay": 0.0})
    return torch.optim.AdamW(pg, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)


def _rng_state() -> dict[str, Any]:
    nps = np.random.get_state(legacy=False)  # noqa: NPY002 - global state of third-party code, for resume
    npd = {"bit_generator": nps["bit_generator"], "key": [int(x) for x in nps["state"]["key"]],
           "pos": int(nps["state"]["pos"]), "has_gauss": int(nps["has_gauss"]), "gauss": float(nps["gauss"])}
    st = {"python": random.getstate(), "numpy": npd, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: dict[str, Any]) -> None:
    py = st["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = st["numpy"]
    np.random.set_state({"bit_generator": n["bit_generator"],  # noqa: NPY002
                         "state": {"key": np.asarray(n["key"], np.uint32), "pos": int(n["pos"])},
                         "has_gauss": int(n["has_gauss"]), "gauss": float(n["gauss"])})
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))  # noqa: NPY002 - seeds third-party users of the global RNG
    torch.manual_seed(seed)


def _batches_for_epoch(n: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    perm = np.random.default_rng([seed, epoch, 104729]).permutation(n)
    nb = n // batch_size if n >= batch_size else (1 if n else 0)
    return [perm[i * batch_size:(i + 1) * batch_size].tolist() for i in range(nb)]


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def build_network(cfg: TrainConfig, device: torch.device):
    """The network (fresh from the config, or ``init_from``) with its body model attached, on ``device``."""
    from ..body import load_body_model
    from ..model.network import DPMeshNetwork, load_network

    body = load_body_model(cfg.model.body_model, cfg.model.body_model_path, device=device)
    if cfg.model.init_from:
        net = load_network(cfg.model.init_from, device=device, body_model=body)
    else:
        net = DPMeshNetwork(cfg.model.network_config(), body_model=body)
    if cfg.model.pose_prior:
        from .pose_prior import load_into_network

        load_into_network(net, cfg.model.pose_prior)
    return net.to(device), body


# ------------------------------------------------------------------------------------------------- train


def train(config: TrainConfig, resume: bool = False) -> Iterator[dict[str, Any]]:
    """Train the DPMesh network; a generator of events (see module docstring).

    ``resume``: continue from ``<output_dir>/latest`` (error if there is none). Without it, an existing
    run folder is reused but training starts from step 0.
    """
    from ..model.network import save_network

    cfg = config
    out_dir = Path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    precision = cfg.precision
    if precision == "fp16" and device.type != "cuda":
        log.warning("fp16 needs CUDA; training in fp32 on %s", device)
        precision = "fp32"
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        log.warning("this GPU has no bf16; training in fp32")
        precision = "fp32"

    net, body = build_network(cfg, device)
    awl = AutomaticWeightedLoss().to(device) if cfg.loss.weighting == "uncertainty" else None
    opt = build_optimizer(cfg, net, awl)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg))
    scaler = torch.amp.GradScaler(device.type, enabled=(precision == "fp16"))
    teacher = None
    nkr = None
    if cfg.nkr.enabled:
        from ..model.network import load_network

        nkr = NKRLoss(cfg.nkr.weight, cfg.nkr.temperature, cfg.nkr.features)
        if cfg.nkr.teacher:
            teacher = freeze(load_network(cfg.nkr.teacher, device=device, body_model=body))
        else:
            teacher = make_teacher(net)

    data = build_train_data(cfg)
    step, epoch, pos = 0, 0, 0
    if resume:
        ck = latest_checkpoint(out_dir)
        if ck is None:
            raise InputError("nothing to resume: no checkpoint in the run folder", out_dir / "checkpoints")
        step, epoch, pos = _load_checkpoint(ck, net, opt, sched, awl, scaler, teacher, device)
        log.info("resumed from %s (step %d)", ck, step)
    save_config(cfg, out_dir / "train_config.yaml")

    n_params = sum(p.numel() for p in net.parameters())
    n_train = sum(p.numel() for g in opt.param_groups for p in g["params"])
    yield {"event": "start", "step": step, "total_steps": cfg.max_steps, "device": str(device), "precision": precision,
           "num_params": n_params,
           "num_trainable": n_train, "data": data.stats.as_dict(), "train_samples": len(data),
           "output_dir": str(out_dir)}

    net.train()
    losses_acc: dict[str, float] = {}
    n_acc, skipped_acc, t0, seen = 0, 0, time.perf_counter(), 0
    last_ck: Path | None = None
    last_loss = float("nan")
    val_data = None
    loader_workers = cfg.data.num_workers
    while step < cfg.max_steps:
        data.set_epoch(epoch)
        batches = _batches_for_epoch(len(data), cfg.batch_size, cfg.seed, epoch)
        if not batches:
            raise InputError("the training data is empty", cfg.data.train[0].path)
        # a private generator: creating the loader must not consume the global torch RNG (exact resume)
        loader = torch.utils.data.DataLoader(data, batch_sampler=batches[pos:], collate_fn=collate,
                                             num_workers=loader_workers,
                                             generator=torch.Generator().manual_seed(cfg.seed + epoch))
        for batch in loader:
            pos += 1
            skipped_acc += int(batch.get("num_skipped", 0))
            if "image" not in batch:  # every sample of the batch was unreadable
                continue
            b = _to_device(batch, device)
            with autocast_for(device, precision):
                out = net(b["image"], b["input_joints"], b["input_mask"] > 0, b["focal"],
                          heatmap_dropout=cfg.heatmap_dropout)
            losses = dpmesh_losses(out, b, input_size=cfg.data.sample.input_size, factors=cfg.loss.factors)
            total = combine(losses, cfg.loss.weights, awl)
            if nkr is not None and teacher is not None:
                with torch.no_grad(), autocast_for(device, precision):
                    t_out = teacher(b["image_clean"], b["input_joints_clean"], b["input_mask_clean"] > 0,
                                    b["focal"], heatmap_dropout=0.0)
                nk = nkr(out, t_out)
                losses.update({k: v for k, v in nk.items() if k != "nkr"})
                total = total + nk["nkr"]
            if not torch.isfinite(total):
                raise FloatingPointError(f"non-finite loss at step {step}: { {k: float(v) for k, v in losses.items()} }")
            opt.zero_grad(set_to_none=True)
            scaler.scale(total).backward()
            scaler.unscale_(opt)
            params = [p for g in opt.param_groups for p in g["params"]]
            gn = torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip) if cfg.optim.grad_clip > 0 else \
                torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params if p.grad is not None]))
            scaler.step(opt)
            scaler.update()
            sched.step()
            step += 1
            seen += int(b["image"].shape[0])
            last_loss = float(total.detach())
            for k, v in losses.items():
                losses_acc[k] = losses_acc.get(k, 0.0) + float(v.detach())
            losses_acc["total"] = losses_acc.get("total", 0.0) + last_loss
            n_acc += 1
            if cfg.log_every and step % cfg.log_every == 0:
                dt = time.perf_counter() - t0
                yield {"event": "step", "step": step, "epoch": epoch,
                       "loss": losses_acc["total"] / n_acc,
                       "losses": {k: v / n_acc for k, v in losses_acc.items() if k != "total"},
                       "lr": {g.get("name", str(i)): g["lr"] for i, g in enumerate(opt.param_groups)},
                       "grad_norm": float(gn), "skipped": skipped_acc, "samples_per_s": seen / max(dt, 1e-9)}
                losses_acc, n_acc, skipped_acc, seen, t0 = {}, 0, 0, 0, time.perf_counter()
            if cfg.eval_every and step % cfg.eval_every == 0 and cfg.data.val:
                if val_data is None:
                    val_data = _build_val(cfg)
                from .evaluate import evaluate_network

                metrics = evaluate_network(net, val_data, body, device=device, precision=precision,
                                           batch_size=cfg.batch_size, max_samples=cfg.data.val_max_samples)
                net.train()
                yield {"event": "eval", "step": step, "metrics": metrics}
            at_end = step >= cfg.max_steps
            if (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or at_end:
                last_ck = _save_checkpoint(out_dir, cfg, step, epoch, pos, net, opt, sched, awl, scaler, teacher,
                                           save_network)
                yield {"event": "checkpoint", "step": step, "path": str(last_ck)}
            if at_end:
                break
        else:
            epoch += 1
            pos = 0
            continue
        break
    if last_ck is None:
        last_ck = latest_checkpoint(out_dir)
    yield {"event": "done", "step": step, "checkpoint": str(last_ck) if last_ck else None, "loss": last_loss}


def _build_val(cfg: TrainConfig):
    sc = sample_config(cfg, train=False)
    parts = [build_source(s, sc, cfg.seed) for s in cfg.data.val]
    return parts[0] if len(parts) == 1 else torch.utils.data.ConcatDataset(parts)


def _save_checkpoint(out_dir: Path, cfg: TrainConfig, step: int, epoch: int, pos: int, net, opt, sched, awl, scaler,
                     teacher, save_network) -> Path:
    from safetensors.torch import save_file

    ck_root = out_dir / "checkpoints"
    final = ck_root / f"step_{step:07d}"
    tmp = ck_root / f".tmp_step_{step:07d}_{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_network(net, tmp)
    state = {
        "step": step, "epoch": epoch, "pos": pos,
        "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
        "awl": awl.state_dict() if awl is not None else None,
        "scaler": scaler.state_dict() if scaler.is_enabled() else None,
        "rng": _rng_state(),
        "config": to_dict(cfg),
    }
    torch.save(state, tmp / STATE_NAME)
    if teacher is not None and not cfg.nkr.teacher:
        save_file({k: v.detach().contiguous().clone() for k, v in teacher.state_dict().items()},
                  str(tmp / TEACHER_NAME))
    save_config(cfg, tmp / "train_config.yaml")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    ptr_tmp = out_dir / f".latest.tmp{os.getpid()}"
    ptr_tmp.write_text(str(final.relative_to(out_dir)), encoding="utf-8")
    os.replace(ptr_tmp, out_dir / "latest")
    for old in list_checkpoints(out_dir)[:-cfg.keep_checkpoints]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _load_checkpoint(ck: Path, net, opt, sched, awl, scaler, teacher, device) -> tuple[int, int, int]:
    from safetensors.torch import load_file

    from ..model.network import WEIGHTS_NAME, check_state_dict

    try:
        state = torch.load(ck / STATE_NAME, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for a bad file
        raise InputError(f"cannot read training state: {e}", ck / STATE_NAME) from e
    weights = load_file(str(ck / WEIGHTS_NAME), device="cpu")
    check_state_dict(net, weights, ck / WEIGHTS_NAME)
    net.load_state_dict(weights, strict=True)
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    if awl is not None and state.get("awl") is not None:
        awl.load_state_dict(state["awl"])
    if scaler.is_enabled() and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    if teacher is not None and (ck / TEACHER_NAME).is_file():
        teacher.load_state_dict(load_file(str(ck / TEACHER_NAME), device=str(device)), strict=True)
    _set_rng_state(state["rng"])
    return int(state["step"]), int(state["epoch"]), int(state["pos"])
