"""Evaluation of a trained network: MPJPE / PA-MPJPE / MPVE (mm), per sequence and overall (spec §6).

``evaluate(model, data, regressor=None, ...)`` loads a saved network (a ``save_network`` folder or a
training checkpoint folder), runs it on a dataset without augmentation and returns a JSON-able table.

Protocols:
* ``"h36m-regressor"`` (``regressor`` = the user's ``J_regressor_h36m_correct.npy``, (17, V)): both meshes
  → H36M-17 joints, pelvis-aligned, 14 joints; MPVE over all vertices after subtracting each mesh's
  SMPL-30 pelvis. Ground-truth meshes come from the body model with the ground-truth parameters.
* ``"smpl30-joints"`` (no regressor; e.g. the synthetic benchmark): the network's SMPL-30 joints mapped by
  name onto H36M-17 against the ground-truth 3-D joints (same 14 joints, pelvis-aligned); MPVE when
  ground-truth parameters exist.
Occluded-joint error: the input visibility mapped to H36M-17 splits the 14 joints (``occ_mpjpe``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..body.joints import mapping
from ..errors import InputError
from .datasets import DPMeshAnnotations, SampleConfig, collate
from .metrics import format_table, joint_metrics, load_joint_regressor, summarize

__all__ = ["evaluate", "evaluate_network", "format_table"]

log = logging.getLogger(__name__)

_S30_TO_H36M = mapping("smpl30", "h36m17")  # every H36M-17 name exists in SMPL-30


@torch.no_grad()
def evaluate_network(
    net: torch.nn.Module,
    dataset: torch.utils.data.Dataset,
    body_model: Any,
    *,
    regressor: np.ndarray | None = None,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
    batch_size: int = 8,
    max_samples: int | None = None,
) -> dict[str, Any]:
    """Run ``net`` (eval mode) over ``dataset`` samples (test crops) and compute the metric tables.

    Returns {"overall": {...}, "per_sequence": {...}, "num_samples", "skipped", "protocol"}; metric values
    in mm (see ``metrics.summarize``).
    """
    from ..devices import autocast_for

    device = torch.device(device)
    was_training = net.training
    net.eval()
    n = len(dataset) if max_samples is None else min(len(dataset), int(max_samples))
    J = None if regressor is None else torch.as_tensor(regressor, dtype=torch.float32, device=device)
    rows: dict[str, list[np.ndarray]] = {}
    seqs: list[str] = []
    skipped = 0
    for start in range(0, n, batch_size):
        batch = collate([dataset[i] for i in range(start, min(start + batch_size, n))])
        skipped += batch["num_skipped"]
        if "image" not in batch:
            continue
        b = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
        with autocast_for(device, precision):
            out = net(b["image"], b["input_joints"], b["input_mask"] > 0, b["focal"], body_model,
                      heatmap_dropout=0.0)
        if out.joints30 is None:
            raise InputError("evaluation needs a body model giving SMPL-30 joints")
        has_params = b["has_params"] > 0
        vis30 = b["visible"].cpu().numpy() > 0
        vis_h36 = vis30[:, _S30_TO_H36M]
        gt_verts = None
        if bool(has_params.all()):
            pose, betas = b["pose"], b["betas"]
            g = body_model(pose[:, :3], pose[:, 3:], betas[:, : body_model.num_betas], None,
                           joint_sets=("smpl30",), return_vertices=True)
            gt_verts = g.vertices - g.joints["smpl30"][:, :1]
            gt_j30 = g.joints["smpl30"] - g.joints["smpl30"][:, :1]
        else:
            gt_j30 = b["joints_cam"]
        keep = (has_params | (b["has_3d"] > 0)).cpu().numpy()
        skipped += int((~keep).sum())
        if not keep.any():
            continue
        if J is not None and gt_verts is not None:
            pj = torch.einsum("jv,bvc->bjc", J, out.vertices_rel.float())
            gj = torch.einsum("jv,bvc->bjc", J, gt_verts.float())
            protocol = "h36m-regressor"
        else:
            pj = out.joints30.float()[:, _S30_TO_H36M]
            gj = gt_j30.float()[:, _S30_TO_H36M]
            protocol = "smpl30-joints"
        m = joint_metrics(pj.cpu().numpy()[keep], gj.cpu().numpy()[keep], visible_h36m=vis_h36[keep])
        if gt_verts is not None:
            d = (out.vertices_rel.float() - gt_verts.float()).norm(dim=-1).mean(1) * 1000.0
            m["mpve"] = d.cpu().numpy()
        for k, v in m.items():
            rows.setdefault(k, []).append(v)
        seqs.extend(s for s, k in zip(b.get("sequence", [""] * len(vis30)), keep, strict=True) if k)
    if was_training:
        net.train()
    if not rows:
        return {"overall": {"count": 0}, "per_sequence": {}, "num_samples": 0, "skipped": skipped,
                "protocol": "none"}
    per = {k: np.concatenate(v) for k, v in rows.items() if len(v) == len(rows["mpjpe"])}
    table = summarize(per, seqs)
    table.update(num_samples=int(len(per["mpjpe"])), skipped=int(skipped), protocol=protocol)
    return table


def _dataset_for(data: str | os.PathLike, sample: SampleConfig, max_samples: int | None):
    p = Path(data)
    if p.is_file() and p.suffix == ".jsonl":
        return DPMeshAnnotations(p, sample=sample)
    if p.is_dir() and (p / "annotations.jsonl").is_file():
        return DPMeshAnnotations(p / "annotations.jsonl", sample=sample)
    if p.is_dir() and (p / "sequenceFiles").is_dir():
        from .datasets import PW3D

        return PW3D(p, split="test", sample=sample)
    raise InputError("evaluation data must be a .jsonl annotation file, a folder holding annotations.jsonl, "
                     "or a 3DPW root (with sequenceFiles/)", p)


def evaluate(
    model: str | os.PathLike,
    data: str | os.PathLike,
    *,
    regressor: str | os.PathLike | None = None,
    device: str | None = None,
    max_samples: int | None = None,
    batch_size: int = 8,
    body_model: str | None = None,
    body_model_path: str | None = None,
    precision: str = "fp32",
) -> dict[str, Any]:
    """Evaluate a saved network on a dataset.

    model: a ``save_network`` folder or a training checkpoint folder (``.../checkpoints/step_N``) or a run
    folder (its latest checkpoint). data: .jsonl / folder with annotations.jsonl / 3DPW root.
    regressor: (17, V) H36M joint regressor .npy (DPMesh protocol); None → SMPL-30 joint protocol.
    body_model: "smpl" | "synthetic-smpl" | "anny"; default: the run's ``model.body_model`` when the folder
    has a ``train_config.yaml``, else "smpl". Returns the ``evaluate_network`` dict plus "model", "data".
    """
    from ..body import load_body_model
    from ..devices import resolve_device
    from ..model.network import load_network
    from .run_dir import latest_checkpoint

    mp = Path(model)
    if (mp / "latest").is_file() or (mp / "checkpoints").is_dir():
        ck = latest_checkpoint(mp)
        if ck is None:
            raise InputError("the run folder has no checkpoint", mp)
        mp = ck
    dev = resolve_device(device or "auto")
    if body_model is None:
        body_model = "smpl"
        cfg_file = mp / "train_config.yaml"
        if cfg_file.is_file():
            from .config import load_train_config

            tc = load_train_config(cfg_file)
            body_model = tc.model.body_model
            body_model_path = body_model_path or tc.model.body_model_path
    body = load_body_model(body_model, body_model_path, device=dev)
    net = load_network(mp, device=dev, body_model=body)
    J = load_joint_regressor(regressor) if regressor else None
    if J is not None and J.shape[1] != body.num_vertices:
        raise InputError(f"regressor has {J.shape[1]} vertex columns; the body model has {body.num_vertices}",
                         regressor)
    ds = _dataset_for(data, SampleConfig(train=False, input_size=net.config.head.input_size), max_samples)
    res = evaluate_network(net, ds, body, regressor=J, device=dev, precision=precision, batch_size=batch_size,
                           max_samples=max_samples)
    res.update(model=str(mp), data=str(data))
    return res
