"""Pose decoders: the released VPoser v1 decoder, and the paper's VQ-VAE token prior (option).

Attribute paths (checkpoint keys, relative to the network):

* ``vposer.vposer.bodyprior_enc_bn1`` BatchNorm1d(63), ``bodyprior_enc_fc1`` Linear(63→H),
  ``bodyprior_enc_bn2`` BatchNorm1d(H), ``bodyprior_enc_fc2`` Linear(H→H), ``bodyprior_enc_mu`` /
  ``bodyprior_enc_logvar`` Linear(H→Z), ``bodyprior_dec_fc1`` Linear(Z→H), ``bodyprior_dec_fc2``
  Linear(H→H), ``bodyprior_dec_out`` Linear(H→126) — VPoser v1.0 (H = 512, Z = 32). Only the decoder runs;
  the encoder exists so the released keys load strictly. The whole VPoser is frozen and always in eval.
* ``PoseVQVAE`` (spec §3): ``start_embed``, ``encoder_mixers.{i}``, ``encoder_norm``, ``token_mlp``,
  ``feature_embed``, buffers ``codebook`` / ``ema_cluster_size`` / ``ema_w``, ``decoder_token_mlp``,
  ``decoder_start``, ``decoder_mixers.{i}``, ``decoder_norm``, ``recover_embed``. Nothing released loads
  into it; the training code pre-trains it.

Rotations: VPoser's 6-D → matrix is the same convention as DPMesh's root 6-D (a row-major 3×2 matrix read
column-wise, Gram–Schmidt, columns [b1 b2 b1×b2]) so ``torchgeom.rot6d_to_matrix`` is used for both.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..torchgeom import matrix_to_axis_angle, rot6d_to_matrix

#: SMPL body joints decoded by VPoser (joints 1..21; the two hand joints 22, 23 are set to zero).
VPOSER_JOINTS = 21


class VPoserV1(nn.Module):
    """VPoser v1.0 (human_body_prior) parameters, decoder path only used.

    ``decode(z (B, Z)) -> (B, 21, 3, 3)`` rotation matrices of SMPL joints 1..21.
    """

    def __init__(self, latent_dim: int = 32, hidden: int = 512, num_joints: int = VPOSER_JOINTS):
        super().__init__()
        n_in = num_joints * 3
        self.num_joints = num_joints
        self.bodyprior_enc_bn1 = nn.BatchNorm1d(n_in)
        self.bodyprior_enc_fc1 = nn.Linear(n_in, hidden)
        self.bodyprior_enc_bn2 = nn.BatchNorm1d(hidden)
        self.bodyprior_enc_fc2 = nn.Linear(hidden, hidden)
        self.bodyprior_enc_mu = nn.Linear(hidden, latent_dim)
        self.bodyprior_enc_logvar = nn.Linear(hidden, latent_dim)
        self.dropout = nn.Dropout(p=0.25)
        self.bodyprior_dec_fc1 = nn.Linear(latent_dim, hidden)
        self.bodyprior_dec_fc2 = nn.Linear(hidden, hidden)
        self.bodyprior_dec_out = nn.Linear(hidden, num_joints * 6)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, Z) → (B, 21, 3, 3)."""
        x = F.leaky_relu(self.bodyprior_dec_fc1(z), negative_slope=0.2)
        x = self.dropout(x)
        x = F.leaky_relu(self.bodyprior_dec_fc2(x), negative_slope=0.2)
        x = self.bodyprior_dec_out(x).float()  # rotations in fp32 whatever the network dtype
        return rot6d_to_matrix(x.reshape(z.shape[0], self.num_joints, 6))


class VPoserDecoder(nn.Module):
    """The released body-pose decoder: VPoser latent (B, 32) → SMPL body_pose (B, 69) axis-angle radians
    (joints 1..21 decoded, hands 22, 23 zero). Frozen; ``train()`` keeps it in eval mode."""

    def __init__(self, latent_dim: int = 32, hidden: int = 512):
        super().__init__()
        self.vposer = VPoserV1(latent_dim, hidden)
        self.latent_dim = latent_dim
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> VPoserDecoder:  # noqa: ARG002 - always eval (spec §2.10)
        return super().train(False)

    @property
    def input_dim(self) -> int:
        return self.latent_dim

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, 32) → body_pose (B, 69) axis-angle radians."""
        R = self.vposer.decode(z)
        aa = matrix_to_axis_angle(R).reshape(z.shape[0], -1)
        return torch.cat([aa, aa.new_zeros(z.shape[0], 6)], dim=1)


# ------------------------------------------------------------------------------------------ VQ prior


class _MLPBlock(nn.Sequential):
    def __init__(self, dim: int, inter: int, dropout: float = 0.0):
        super().__init__(nn.Linear(dim, inter), nn.GELU(), nn.Dropout(dropout), nn.Linear(inter, dim),
                         nn.Dropout(dropout))


class MixerLayer(nn.Module):
    """PCT-style MLP-Mixer block on (B, T, C): pre-LN token MLP (across T) and channel MLP; out = x + y + z."""

    def __init__(self, hidden: int, hidden_inter: int, tokens: int, token_inter: int, dropout: float = 0.0):
        super().__init__()
        self.layernorm1 = nn.LayerNorm(hidden)
        self.mlp_token = _MLPBlock(tokens, token_inter, dropout)
        self.layernorm2 = nn.LayerNorm(hidden)
        self.mlp_channel = _MLPBlock(hidden, hidden_inter, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.mlp_token(self.layernorm1(x).transpose(1, 2)).transpose(1, 2)
        z = self.mlp_channel(self.layernorm2(x + y))
        return x + y + z


class PoseVQVAE(nn.Module):
    """The paper's VQ-VAE pose tokenizer (spec §3, architecture only).

    Input: body-joint rotation matrices (B, J, 3, 3) (J = 23 SMPL joints 1..23, root excluded).
    ``encode`` → (B, T, D) continuous tokens (T = 48, D = 256); ``quantize`` → nearest codebook entries
    (straight-through), indices (B, T) and the commitment loss; ``decode`` (B, T, D) → (B, J, 3, 3) raw
    (not orthogonalised, as released); ``decode_soft(probs (B, T, K))`` decodes the convex mix
    probs @ codebook. Codebook (K, D) updated by EMA (decay 0.9, Laplace ε = 1e-5) in training mode;
    call ``ema_update`` from the training loop (``quantize`` does it when ``update=True``).
    """

    def __init__(self, num_joints: int = 23, tokens: int = 48, codebook_size: int = 2048, dim: int = 256,
                 hidden: int = 512, enc_blocks: int = 4, dec_hidden: int = 32, ema_decay: float = 0.9):
        super().__init__()
        self.num_joints, self.tokens, self.codebook_size, self.dim = num_joints, tokens, codebook_size, dim
        self.ema_decay = ema_decay
        self.start_embed = nn.Linear(9, hidden)
        self.encoder_mixers = nn.ModuleList(
            [MixerLayer(hidden, hidden, num_joints, 64) for _ in range(enc_blocks)])
        self.encoder_norm = nn.LayerNorm(hidden)
        self.token_mlp = nn.Linear(num_joints, tokens)
        self.feature_embed = nn.Linear(hidden, dim)
        g = torch.Generator().manual_seed(0)
        cb = torch.randn(codebook_size, dim, generator=g)
        self.register_buffer("codebook", cb)
        self.register_buffer("ema_cluster_size", torch.zeros(codebook_size))
        self.register_buffer("ema_w", cb.clone())
        self.decoder_token_mlp = nn.Linear(tokens, num_joints)
        self.decoder_start = nn.Linear(dim, dec_hidden)
        self.decoder_mixers = nn.ModuleList([MixerLayer(dec_hidden, 64, num_joints, 64)])
        self.decoder_norm = nn.LayerNorm(dec_hidden)
        self.recover_embed = nn.Linear(dec_hidden, 9)

    def encode(self, rotmats: torch.Tensor) -> torch.Tensor:
        """(B, J, 3, 3) → (B, T, D)."""
        x = self.start_embed(rotmats.reshape(rotmats.shape[0], self.num_joints, 9))
        for m in self.encoder_mixers:
            x = m(x)
        x = self.encoder_norm(x)
        x = self.token_mlp(x.transpose(1, 2)).transpose(1, 2)
        return self.feature_embed(x)

    def quantize(self, z: torch.Tensor, update: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """z (B, T, D) → (z_q straight-through (B, T, D), indices (B, T) int64, commitment loss ())."""
        flat = z.reshape(-1, self.dim)
        cb = self.codebook.to(flat.dtype)
        d = (flat.pow(2).sum(1, keepdim=True) - 2 * flat @ cb.t() + cb.pow(2).sum(1)[None])
        idx = d.argmin(1)
        zq = cb[idx].reshape(z.shape)
        loss = F.mse_loss(z, zq.detach())
        if update and self.training:
            self.ema_update(flat.detach(), idx)
        return z + (zq - z).detach(), idx.reshape(z.shape[:2]), loss

    @torch.no_grad()
    def ema_update(self, flat: torch.Tensor, idx: torch.Tensor) -> None:
        """EMA codebook update from encoder outputs flat (N, D) assigned to idx (N,). (Multi-GPU callers
        all-reduce the counts and sums themselves before calling.)"""
        onehot = F.one_hot(idx, self.codebook_size).to(self.ema_w.dtype)
        counts = onehot.sum(0)
        sums = onehot.t() @ flat.to(self.ema_w.dtype)
        dcy = self.ema_decay
        self.ema_cluster_size.mul_(dcy).add_(counts, alpha=1 - dcy)
        self.ema_w.mul_(dcy).add_(sums, alpha=1 - dcy)
        n = self.ema_cluster_size.sum()
        eps = 1e-5
        size = (self.ema_cluster_size + eps) / (n + self.codebook_size * eps) * n
        self.codebook.copy_(self.ema_w / size[:, None])

    def decode(self, zq: torch.Tensor) -> torch.Tensor:
        """(B, T, D) → (B, J, 3, 3) raw matrices."""
        x = self.decoder_token_mlp(zq.transpose(1, 2)).transpose(1, 2)
        x = self.decoder_start(x)
        for m in self.decoder_mixers:
            x = m(x)
        x = self.recover_embed(self.decoder_norm(x))
        return x.reshape(zq.shape[0], self.num_joints, 3, 3)

    def decode_soft(self, probs: torch.Tensor) -> torch.Tensor:
        """probs (B, T, K) (softmax over the codebook) → (B, J, 3, 3) via probs @ codebook."""
        return self.decode(probs @ self.codebook.to(probs.dtype))

    def forward(self, rotmats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reconstruct: (B, J, 3, 3) → (recon (B, J, 3, 3), indices (B, T), commitment loss)."""
        zq, idx, loss = self.quantize(self.encode(rotmats), update=True)
        return self.decode(zq), idx, loss


class VQPoseDecoder(nn.Module):
    """Token-probability pose decoder: probs (B, T, K) → SMPL body_pose (B, 69) axis-angle radians.

    Wraps a ``PoseVQVAE`` (attribute ``vqvae``), frozen like VPoser (the training engineer pre-trains it).
    """

    def __init__(self, tokens: int = 48, codebook_size: int = 2048, dim: int = 256):
        super().__init__()
        self.vqvae = PoseVQVAE(tokens=tokens, codebook_size=codebook_size, dim=dim)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> VQPoseDecoder:  # noqa: ARG002
        return super().train(False)

    def forward(self, probs: torch.Tensor) -> torch.Tensor:
        R = self.vqvae.decode_soft(probs).float()
        return matrix_to_axis_angle(R).reshape(probs.shape[0], -1)
