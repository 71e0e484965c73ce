"""Pre-training of the paper's VQ-VAE pose tokenizer (spec §3) on any set of body poses.

The architecture is ``model.pose_decoders.PoseVQVAE`` (48 tokens × 256-d, 2048-entry codebook for the
paper's size); the codebook is updated by EMA (decay 0.9, Laplace smoothing) inside its ``quantize``;
the encoder/decoder are trained by Adam on the reconstruction MSE of the 23 body-joint rotation matrices
plus β × the commitment loss. The result can be loaded into ``VQPoseDecoder.vqvae`` (network option
``head.pose_decoder = "vq"``).

Pose files: ``.npz`` with an array named ``poses``, ``pose`` or ``body_pose`` (N, W): W = 72 (SMPL, root
first), 69 (body only), 63 (21 body joints; hands zero) or ≥ 66 (SMPL-H / SMPL-X / AMASS: joints 1..21
taken, hands zero).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError
from ..torchgeom import axis_angle_to_matrix

log = logging.getLogger(__name__)


def _body_pose(arr: np.ndarray, path: Path) -> np.ndarray:
    a = np.asarray(arr, np.float64)
    if a.ndim == 1:
        a = a[None]
    if a.ndim != 2:
        raise InputError(f"poses must be (N, W), got {a.shape}", path)
    w = a.shape[1]
    if w == 69:
        out = a
    elif w == 72:
        out = a[:, 3:72]
    elif w == 63:
        out = np.c_[a, np.zeros((len(a), 6))]
    elif w >= 66:
        out = np.c_[a[:, 3:66], np.zeros((len(a), 6))]
    else:
        raise InputError(f"cannot interpret {w} pose values per row (want 63, 69, 72 or ≥ 66)", path)
    if not np.isfinite(out).all():
        raise InputError("poses contain NaN/inf", path)
    return out


def load_pose_files(paths: Sequence[str | os.PathLike]) -> np.ndarray:
    """Read body poses from ``.npz`` files → (N, 69) axis-angle of SMPL joints 1..23 (float64).

    A file that cannot be read or has no pose array raises InputError naming it.
    """
    out = []
    for p in map(Path, paths):
        try:
            with np.load(p, allow_pickle=False) as z:
                key = next((k for k in ("poses", "pose", "body_pose") if k in z.files), None)
                if key is None:
                    raise InputError(f"no 'poses'/'pose'/'body_pose' array (has {z.files})", p)
                out.append(_body_pose(z[key], p))
        except (OSError, ValueError) as e:
            raise InputError(f"cannot read pose file: {e}", p) from e
    if not out:
        raise InputError("no pose files given")
    return np.concatenate(out, 0)


@dataclass
class PosePriorConfig:
    """Training settings. Sizes default to the paper's (48 tokens, 2048 × 256 codebook)."""

    tokens: int = 48
    codebook_size: int = 2048
    dim: int = 256
    hidden: int = 512
    steps: int = 10000
    batch_size: int = 256
    lr: float = 1e-3
    commitment: float = 0.25
    ema_decay: float = 0.9
    seed: int = 0
    log_every: int = 100
    init_codebook_from_data: bool = True


def build_pose_vqvae(cfg: PosePriorConfig):
    from ..model.pose_decoders import PoseVQVAE

    return PoseVQVAE(tokens=cfg.tokens, codebook_size=cfg.codebook_size, dim=cfg.dim, hidden=cfg.hidden,
                     ema_decay=cfg.ema_decay)


def train_pose_prior(poses: np.ndarray, cfg: PosePriorConfig, model: Any = None,
                     device: str | torch.device = "cpu") -> Iterator[dict[str, Any]]:
    """Train a ``PoseVQVAE`` on (N, 69) body poses; a generator of events
    {"event": "step", "step", "loss", "recon", "commit", "codes_used"} and a final {"event": "done", ...}.

    ``model``: the PoseVQVAE to train (built from ``cfg`` when None; pass your own to keep a handle on it).
    With ``init_codebook_from_data`` the codebook (and its EMA sums) start from encoder outputs of random
    training poses, which avoids dead codes.
    """
    dev = torch.device(device)
    g = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    vq = model if model is not None else build_pose_vqvae(cfg)
    vq.to(dev).train()
    P = torch.as_tensor(np.asarray(poses, np.float32))
    if P.ndim != 2 or P.shape[1] != 69:
        raise InputError(f"poses must be (N, 69), got {tuple(P.shape)}")
    R_all = axis_angle_to_matrix(P.reshape(-1, 23, 3))  # (N, 23, 3, 3)
    n = len(R_all)
    if cfg.init_codebook_from_data:
        with torch.no_grad():
            idx = torch.randint(0, n, (max(cfg.codebook_size // vq.tokens + 1, 1),), generator=g)
            z = vq.encode(R_all[idx].to(dev)).reshape(-1, vq.dim)
            pick = z[torch.randint(0, len(z), (vq.codebook_size,), generator=g).to(dev)]
            pick = pick + 0.01 * torch.randn(pick.shape, generator=g).to(dev)
            vq.codebook.copy_(pick)
            vq.ema_w.copy_(pick)
            vq.ema_cluster_size.fill_(1.0)
    params = [p for p in vq.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.lr)
    acc = {"loss": 0.0, "recon": 0.0, "commit": 0.0}
    k = 0
    used: set[int] = set()
    for step in range(1, cfg.steps + 1):
        bi = torch.randint(0, n, (min(cfg.batch_size, n),), generator=g)
        R = R_all[bi].to(dev)
        recon, codes, commit = vq(R)
        rl = F.mse_loss(recon, R)
        loss = rl + cfg.commitment * commit
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        acc["loss"] += float(loss.detach())
        acc["recon"] += float(rl.detach())
        acc["commit"] += float(commit.detach())
        used.update(codes.unique().tolist())
        k += 1
        if cfg.log_every and (step % cfg.log_every == 0 or step == cfg.steps):
            yield {"event": "step", "step": step, **{a: b / k for a, b in acc.items()}, "codes_used": len(used)}
            acc = {a: 0.0 for a in acc}
            k = 0
            used = set()
    vq.eval()
    yield {"event": "done", "step": cfg.steps}


@torch.no_grad()
def reconstruction_error(vq: Any, poses: np.ndarray) -> float:
    """Mean squared error of the reconstructed rotation matrices of (N, 69) poses (eval mode, no update)."""
    was = vq.training
    vq.eval()
    R = axis_angle_to_matrix(torch.as_tensor(np.asarray(poses, np.float32)).reshape(-1, 23, 3))
    zq, _, _ = vq.quantize(vq.encode(R), update=False)
    err = float(F.mse_loss(vq.decode(zq), R))
    vq.train(was)
    return err


def save_pose_prior(vq: Any, path: str | os.PathLike, cfg: PosePriorConfig | None = None) -> Path:
    """Write the tokenizer's state dict as safetensors (atomic), with the sizes as metadata."""
    from safetensors.torch import save_file

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    meta = {"tokens": str(vq.tokens), "codebook_size": str(vq.codebook_size), "dim": str(vq.dim)}
    tmp = p.with_name(f".{p.name}.tmp{os.getpid()}")
    save_file({k: v.detach().contiguous().clone() for k, v in vq.state_dict().items()}, str(tmp), metadata=meta)
    os.replace(tmp, p)
    return p


def load_pose_prior(path: str | os.PathLike, vq: Any) -> Any:
    """Load a ``save_pose_prior`` file into ``vq`` strictly (InputError if unreadable or mismatched)."""
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
        vq.load_state_dict(state, strict=True)
    except (OSError, RuntimeError, ValueError) as e:
        raise InputError(f"cannot load pose prior: {e}", path) from e
    return vq


def load_into_network(net: Any, path: str | os.PathLike) -> Any:
    """Install a pre-trained tokenizer as the pose decoder of a network built with
    ``head.pose_decoder = "vq"`` (``net.vq.vqvae``, kept frozen). ConfigError for a VPoser network."""
    from ..errors import ConfigError

    if not hasattr(net, "vq"):
        raise ConfigError("the network uses the VPoser decoder; build it with head.pose_decoder: vq",
                          "model.pose_prior")
    load_pose_prior(path, net.vq.vqvae)
    net.vq.requires_grad_(False)
    return net
