"""The training loop: a generator of JSON-able events, on one process or several (Hugging Face Accelerate).

``train(config, resume=False)`` yields, in order:

* ``{"event": "start", "step", "total_steps", "device", "precision", "num_params", "num_trainable", "data": {counts},
  "output_dir", "num_processes", "batch_per_process", "grad_accum", "global_batch", "distributed",
  "find_unused_parameters"}``
* every ``log_every`` steps: ``{"event": "step", "step", "epoch", "loss", "losses": {term: value}, "lr":
  {group: lr}, "grad_norm", "skipped", "samples_per_s"}`` (loss, skipped and samples/s over all processes)
* every ``eval_every`` steps (with validation data): ``{"event": "eval", "step", "metrics": {...}}``
* every ``checkpoint_every`` steps and at the end: ``{"event": "checkpoint", "step", "path"}``
* ``{"event": "done", "step", "checkpoint", "loss"}``

The main process also appends every event to ``<output_dir>/events.jsonl`` (a fresh run starts it anew).

Closing the generator stops training (the last checkpoint stays valid). Checkpoints are folders
``<output_dir>/checkpoints/step_NNNNNNN/`` holding the network (``save_network``: config.json +
model.safetensors, loadable with ``load_network``), ``train_state.pt`` (optimiser, scheduler, loss
weights, step, data position, global batch, RNG states of python / numpy / torch of every process; loads
with ``weights_only=True``), the NKR teacher when it is a copy of the student, and ``train_config.yaml``.
``<output_dir>/latest`` names the newest one. ``resume=True`` continues exactly from it (same weights as an
uninterrupted run on the same device and number of processes).

Several processes
-----------------
The loop runs through an ``accelerate.Accelerator``, which reads its environment: the same code runs alone,
under ``dpmesh train --num-processes N`` (which launches through Accelerate), ``accelerate launch``, plain
``torchrun`` and Slurm (``srun`` around ``torchrun`` / ``accelerate launch``). Data parallel (DDP;
unused-parameter detection when a probe at start-up finds trainable parameters without gradient):

* ``batch_size`` is per process and micro-batch; ``grad_accum`` micro-batches make one step; the global
  batch is ``batch_size × processes × grad_accum``. Each epoch's global batches come from one permutation
  of (seed, epoch); process r takes part ``j·N + r`` of the ``grad_accum × N`` equal parts of a global batch
  as its micro-batch j. Losses are per-sample means, so N processes give the weights of one process with the
  same global batch (up to float summation order) — except NKR's contrastive term, whose negatives are the
  samples of each process's micro-batch (as in the released DDP training).
* Only the main process writes events, logs and checkpoints. Every process resumes from the same checkpoint
  with its own RNG state; the data position counts global batches, so a run may also resume on another
  number of processes as long as the global batch is the same (RNG streams of the forward pass — heatmap
  dropout — then restart for the new processes).
* Mixed precision: the config's ``precision``, unless the launcher sets another (``--mixed-precision`` /
  ``ACCELERATE_MIXED_PRECISION`` from an accelerate config file).
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import time
from collections.abc import Iterable, Iterator
from contextlib import nullcontext
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


# ---------------------------------------------------------------------------------------- processes


def _process_batches(global_batch: list[int], num_processes: int, rank: int, accum: int) -> list[list[int]]:
    """This process's ``accum`` micro-batches of one global batch: the batch cut into ``accum × N`` equal
    parts; micro-batch j of process r is part ``j·N + r``."""
    parts = np.array_split(np.asarray(global_batch, np.int64), accum * num_processes)
    if any(len(p) == 0 for p in parts):
        raise InputError(f"only {len(global_batch)} training samples for {accum * num_processes} micro-batches "
                         f"({num_processes} processes × grad_accum {accum})")
    return [parts[j * num_processes + rank].tolist() for j in range(accum)]


def _grouped(items: Iterable[Any], n: int) -> Iterator[tuple[Any, ...]]:
    """Consecutive groups of ``n`` items (a shorter tail is dropped)."""
    it = iter(items)
    return zip(*([it] * n))


def _rank_seed(seed: int, rank: int) -> None:
    """Give process ``rank`` > 0 its own RNG streams (heatmap dropout differs per sample across processes);
    process 0 keeps the streams of a single-process run."""
    if rank > 0:
        seed_everything(int(np.random.SeedSequence([seed, rank]).generate_state(1)[0]))


def _precision_for(cfg: TrainConfig, device: torch.device) -> str:
    precision = cfg.precision
    launched = os.environ.get("ACCELERATE_MIXED_PRECISION", "no").lower()
    if launched in ("bf16", "fp16"):  # set by `accelerate launch` (flag or config file)
        precision = launched
    return training_precision(precision, device)


class _TrainStep(torch.nn.Module):
    """What DDP wraps: the network and the learned loss weights, whose forward is the network plus the losses
    (and NKR against the frozen teacher), so one DDP reduces every trainable parameter."""

    def __init__(self, net: torch.nn.Module, awl: torch.nn.Module | None, cfg: TrainConfig,
                 teacher: torch.nn.Module | None, nkr: NKRLoss | None):
        super().__init__()
        self.net = net
        self.awl = awl
        self.cfg = cfg
        self._teacher = [teacher] if teacher is not None else []  # not a submodule: frozen, never reduced
        self.nkr = nkr

    def forward(self, b: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        cfg = self.cfg
        out = self.net(b["image"], b["input_joints"], b["input_mask"] > 0, b["focal"],
                       heatmap_dropout=cfg.heatmap_dropout)
        losses = dpmesh_losses(out, b, input_size=cfg.data.sample.input_size, factors=cfg.loss.factors)
        total = combine(losses, cfg.loss.weights, self.awl)
        if self.nkr is not None and self._teacher:
            with torch.no_grad():
                t_out = self._teacher[0](b["image_clean"], b["input_joints_clean"], b["input_mask_clean"] > 0,
                                         b["focal"], heatmap_dropout=0.0)
            nk = self.nkr(out, t_out)
            losses.update({k: v for k, v in nk.items() if k != "nkr"})
            total = total + nk["nkr"]
        return total, losses


def _unused_parameters(step_module: _TrainStep, data: torch.utils.data.Dataset, device: torch.device) -> list[str]:
    """Names of trainable parameters that get no gradient from one forward/backward on a real sample (the
    probe that decides DDP's ``find_unused_parameters``; global RNG states are left untouched)."""
    sample = None
    for i in range(min(len(data), 16)):
        sample = data[i]
        if sample is not None:
            break
    if sample is None:
        return []
    b = _to_device(collate([sample]), device)
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        total, _ = step_module(b)
        total.backward()
    unused = [n for n, p in step_module.named_parameters() if p.requires_grad and p.grad is None]
    step_module.zero_grad(set_to_none=True)
    return unused


def _make_accelerator(cfg: TrainConfig, net_device: torch.device, precision: str, find_unused: bool):
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    return Accelerator(
        cpu=net_device.type == "cpu", mixed_precision={"fp32": "no"}.get(precision, precision),
        gradient_accumulation_steps=cfg.grad_accum, device_placement=False, step_scheduler_with_optimizer=False,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=find_unused)])


def _release_accelerate(owned: bool) -> None:
    """Forget the process-wide Accelerate state this run created (a later run in the same process — a test,
    the app — may then use other settings), and end the process group of a multi-process run."""
    if not owned:
        return
    from accelerate.state import AcceleratorState, GradientState, PartialState

    if PartialState._shared_state and PartialState().use_distributed:
        PartialState().destroy_process_group()
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def _gather(state: Any, obj: Any) -> list[Any]:
    """``obj`` of every process, in rank order (a collective: every process calls it)."""
    if state.num_processes == 1:
        return [obj]
    from accelerate.utils import gather_object

    return gather_object([obj])


def _reduce(state: Any, values: list[float], op: str = "mean") -> list[float]:
    """Element-wise mean / sum of ``values`` over the processes (a collective)."""
    if state.num_processes == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64 if state.device.type == "cpu" else torch.float32,
                     device=state.device)
    torch.distributed.all_reduce(t)
    if op == "mean":
        t = t / state.num_processes
    return [float(v) for v in t.cpu()]


class _EventLog:
    """The main process's copy of the events in ``<output_dir>/events.jsonl``."""

    def __init__(self, path: Path | None, append: bool):
        self.f = open(path, "a" if append else "w", encoding="utf-8") if path is not None else None  # noqa: SIM115

    def __call__(self, ev: dict[str, Any]) -> dict[str, Any]:
        if self.f is not None:
            self.f.write(json.dumps(ev, default=str) + "\n")
            self.f.flush()
        return ev

    def close(self) -> None:
        if self.f is not None:
            self.f.close()


# ------------------------------------------------------------------------------------------------- train


def train(config: TrainConfig, resume: bool = False) -> Iterator[dict[str, Any]]:
    """Train the DPMesh network; a generator of events (see module docstring).

    ``resume``: continue from ``<output_dir>/latest`` (error if there is none). Without it, an existing
    run folder is reused but training starts from step 0. In a multi-process run only the main process
    yields events; the others train silently (iterate their generators all the same).
    """
    from accelerate.state import PartialState

    from ..model.network import save_network

    cfg = config
    out_dir = Path(cfg.output_dir)
    device = resolve_device(cfg.device)
    owned = not PartialState._shared_state
    state = PartialState(cpu=device.type == "cpu")  # reads the launcher's environment; joins the process group
    events = None
    try:
        n_proc, rank, main = state.num_processes, state.process_index, state.is_main_process
        sharded = [k for k in ("FSDP", "DEEPSPEED", "MEGATRON_LM")
                   if os.environ.get(f"ACCELERATE_USE_{k}", "false").lower() == "true"]
        if sharded:  # set by `accelerate launch` from a config file
            raise ConfigError(f"{sharded[0]} is not supported by dpmesh train yet; use data parallel (multi_gpu) "
                              "in the accelerate config", "distributed_type")
        if n_proc > 1:
            device = state.device  # one device per process (cuda:LOCAL_RANK, or the CPU)
        if not main:  # only the main process writes logs
            logging.getLogger("dpmesh_core").setLevel(logging.ERROR)
        if main:
            out_dir.mkdir(parents=True, exist_ok=True)
        seed_everything(cfg.seed)
        precision = _precision_for(cfg, device)
        accum = cfg.grad_accum
        global_batch = cfg.batch_size * n_proc * accum

        net, body = build_network(cfg, device)
        awl = AutomaticWeightedLoss().to(device) if cfg.loss.weighting == "uncertainty" else None
        opt = build_optimizer(cfg, net, awl)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg))
        teacher = None
        nkr = None
        if cfg.nkr.enabled:
            from ..model.network import load_network

            nkr = NKRLoss(cfg.nkr.weight, cfg.nkr.temperature, cfg.nkr.features)
            if cfg.nkr.teacher:
                teacher = freeze(load_network(cfg.nkr.teacher, device=device, body_model=body))
            else:
                teacher = make_teacher(net)
        step_module = _TrainStep(net, awl, cfg, teacher, nkr)

        data = build_train_data(cfg)
        find_unused = bool(cfg.find_unused_parameters)
        if n_proc > 1 and cfg.find_unused_parameters is None:
            unused = _unused_parameters(step_module, data, device)
            find_unused = bool(unused)
            if unused and main:
                log.info("%d trainable parameters get no gradient (%s...): DDP detects unused parameters",
                         len(unused), ", ".join(unused[:3]))
        acc = _make_accelerator(cfg, device, precision, find_unused)
        step, epoch, pos = 0, 0, 0
        if resume:
            ck = latest_checkpoint(out_dir)
            if ck is None:
                raise InputError("nothing to resume: no checkpoint in the run folder", out_dir / "checkpoints")
            step, epoch, pos = _load_checkpoint(ck, net, opt, sched, awl, acc.scaler, teacher, device,
                                                rank=rank, num_processes=n_proc, global_batch=global_batch,
                                                seed=cfg.seed)
            if main:
                log.info("resumed from %s (step %d)", ck, step)
        elif n_proc > 1:
            _rank_seed(cfg.seed, rank)
        model, opt = acc.prepare(step_module, opt)  # DDP (several processes), autocast (bf16/fp16)
        if main:
            save_config(cfg, out_dir / "train_config.yaml")
            events = _EventLog(out_dir / "events.jsonl", append=resume)

        n_params = sum(p.numel() for p in net.parameters())
        n_train = sum(p.numel() for g in opt.param_groups for p in g["params"])
        if main:
            yield events({
                "event": "start", "step": step, "total_steps": cfg.max_steps, "device": str(device),
                "precision": precision, "num_params": n_params, "num_trainable": n_train,
                "data": data.stats.as_dict(), "train_samples": len(data), "output_dir": str(out_dir),
                "num_processes": n_proc, "batch_per_process": cfg.batch_size, "grad_accum": accum,
                "global_batch": global_batch, "distributed": state.distributed_type.value,
                "find_unused_parameters": find_unused if n_proc > 1 else None})

        model.train()
        params = [p for g in opt.param_groups for p in g["params"]]
        losses_acc: dict[str, float] = {}
        n_acc, skipped_acc, t0, seen = 0, 0, time.perf_counter(), 0
        last_ck: Path | None = None
        last_loss = float("nan")
        val_data = None
        while step < cfg.max_steps:
            data.set_epoch(epoch)
            batches = _batches_for_epoch(len(data), global_batch, cfg.seed, epoch)
            if not batches:
                raise InputError("the training data is empty", cfg.data.train[0].path)
            mine = [mb for gb in batches[pos:] for mb in _process_batches(gb, n_proc, rank, accum)]
            # a private generator: creating the loader must not consume the global torch RNG (exact resume)
            loader = torch.utils.data.DataLoader(data, batch_sampler=mine, collate_fn=collate,
                                                 num_workers=cfg.data.num_workers,
                                                 generator=torch.Generator().manual_seed(cfg.seed + epoch))
            for micro in _grouped(loader, accum):  # this process's micro-batches of one global batch
                pos += 1
                skipped_acc += sum(int(b.get("num_skipped", 0)) for b in micro)
                have = all("image" in b for b in micro)  # False: every sample of a micro-batch was unreadable
                if n_proc > 1:
                    have = _reduce(state, [float(have)], "sum")[0] == n_proc
                if not have:  # every process skips this global batch
                    continue
                opt.zero_grad(set_to_none=True)
                step_loss: dict[str, float] = {}
                for j, batch in enumerate(micro):
                    b = _to_device(batch, device)
                    # gradients are reduced across processes once, in the last micro-batch's backward
                    with acc.no_sync(model) if j < accum - 1 else nullcontext():
                        total, losses = model(b)
                        if n_proc == 1 and not torch.isfinite(total):
                            raise FloatingPointError(
                                f"non-finite loss at step {step}: { {k: float(v) for k, v in losses.items()} }")
                        acc.backward(total)  # ÷ grad_accum
                    for k, v in losses.items():
                        step_loss[k] = step_loss.get(k, 0.0) + float(v.detach()) / accum
                    step_loss["total"] = step_loss.get("total", 0.0) + float(total.detach()) / accum
                    seen += int(b["image"].shape[0])
                if cfg.optim.grad_clip > 0:
                    gn = acc.clip_grad_norm_(params, cfg.optim.grad_clip)
                else:
                    acc.unscale_gradients()
                    gn = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params if p.grad is not None]))
                if n_proc > 1 and precision != "fp16" and not torch.isfinite(gn):  # same on every process
                    raise FloatingPointError(f"non-finite gradient at step {step} (loss on this process: "
                                             f"{ {k: round(v, 6) for k, v in step_loss.items()} })")
                opt.step()
                sched.step()
                step += 1
                last_loss = step_loss["total"]
                for k, v in step_loss.items():
                    losses_acc[k] = losses_acc.get(k, 0.0) + v
                n_acc += 1
                if cfg.log_every and step % cfg.log_every == 0:
                    keys = sorted(losses_acc)
                    means = dict(zip(keys, _reduce(state, [losses_acc[k] / n_acc for k in keys])))
                    skipped_all, seen_all = _reduce(state, [float(skipped_acc), float(seen)], "sum")
                    dt = time.perf_counter() - t0
                    if main:
                        yield events({
                            "event": "step", "step": step, "epoch": epoch, "loss": means["total"],
                            "losses": {k: v for k, v in means.items() if k != "total"},
                            "lr": {g.get("name", str(i)): g["lr"] for i, g in enumerate(opt.param_groups)},
                            "grad_norm": float(gn), "skipped": int(skipped_all),
                            "samples_per_s": seen_all / max(dt, 1e-9)})
                    losses_acc, n_acc, skipped_acc, seen, t0 = {}, 0, 0, 0, time.perf_counter()
                if cfg.eval_every and step % cfg.eval_every == 0 and cfg.data.val and main:
                    if val_data is None:
                        val_data = _build_val(cfg)
                    from .evaluate import evaluate_network

                    metrics = evaluate_network(net, val_data, body, device=device, precision=precision,
                                               batch_size=cfg.batch_size, max_samples=cfg.data.val_max_samples)
                    model.train()
                    yield events({"event": "eval", "step": step, "metrics": metrics})
                at_end = step >= cfg.max_steps
                if (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or at_end:
                    rngs = _gather(state, _rng_state())
                    if main:
                        last_ck = _save_checkpoint(out_dir, cfg, step, epoch, pos, net, opt, sched, awl, acc.scaler,
                                                   teacher, save_network, rngs, global_batch)
                        yield events({"event": "checkpoint", "step": step, "path": str(last_ck)})
                if at_end:
                    break
            else:
                epoch += 1
                pos = 0
                continue
            break
        if n_proc > 1:
            last_loss = _reduce(state, [last_loss])[0]
            acc.wait_for_everyone()
        if main:
            if last_ck is None:
                last_ck = latest_checkpoint(out_dir)
            yield events({"event": "done", "step": step, "checkpoint": str(last_ck) if last_ck else None,
                          "loss": last_loss})
    finally:
        if events is not None:
            events.close()
        _release_accelerate(owned)


def _build_val(cfg: TrainConfig):
    sc = sample_config(cfg, train=False)
    parts = [build_source(s, sc, cfg.seed) for s in cfg.data.val]
    return parts[0] if len(parts) == 1 else torch.utils.data.ConcatDataset(parts)


def _save_checkpoint(out_dir: Path, cfg: TrainConfig, step: int, epoch: int, pos: int, net, opt, sched, awl, scaler,
                     teacher, save_network, rngs: list[dict[str, Any]], global_batch: int) -> Path:
    from safetensors.torch import save_file

    ck_root = out_dir / "checkpoints"
    final = ck_root / f"step_{step:07d}"
    tmp = ck_root / f".tmp_step_{step:07d}_{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_network(net, tmp)
    state = {
        "step": step, "epoch": epoch, "pos": pos, "global_batch": global_batch,
        "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
        "awl": awl.state_dict() if awl is not None else None,
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "rng": rngs[0],
        "rng_processes": rngs,
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


def _load_checkpoint(ck: Path, net, opt, sched, awl, scaler, teacher, device, *, rank: int = 0,
                     num_processes: int = 1, global_batch: int | None = None, seed: int = 0) -> tuple[int, int, int]:
    from safetensors.torch import load_file

    from ..model.network import WEIGHTS_NAME, check_state_dict

    try:
        state = torch.load(ck / STATE_NAME, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for a bad file
        raise InputError(f"cannot read training state: {e}", ck / STATE_NAME) from e
    saved_batch = state.get("global_batch")
    if global_batch is not None and saved_batch is not None and int(saved_batch) != global_batch:
        raise ConfigError(f"the run was trained with a global batch of {saved_batch}; this resume would use "
                          f"{global_batch} (batch_size × processes × grad_accum): keep the product the same",
                          "batch_size")
    weights = load_file(str(ck / WEIGHTS_NAME), device="cpu")
    check_state_dict(net, weights, ck / WEIGHTS_NAME)
    net.load_state_dict(weights, strict=True)
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    if awl is not None and state.get("awl") is not None:
        awl.load_state_dict(state["awl"])
    if scaler is not None and scaler.is_enabled() and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    if teacher is not None and (ck / TEACHER_NAME).is_file():
        teacher.load_state_dict(load_file(str(ck / TEACHER_NAME), device=str(device)), strict=True)
    rngs = state.get("rng_processes") or [state["rng"]]
    if len(rngs) == num_processes:
        _set_rng_state(rngs[rank])
    else:  # another number of processes: the data order is kept, the forward's random streams restart
        if rank == 0:
            log.warning("the checkpoint holds the RNG state of %d process(es), this run has %d: heatmap dropout "
                        "draws differ from an uninterrupted run", len(rngs), num_processes)
            _set_rng_state(rngs[0])
        else:
            _rank_seed(seed + int(state["step"]), rank)
    return int(state["step"]), int(state["epoch"]), int(state["pos"])
