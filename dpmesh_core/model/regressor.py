"""The JOTR-style regressor (spec §2.9): 3-D feature volume, 2-D memory, an 18-query transformer with
per-layer joint refinement, and cascaded SMPL heads.

``Regressor`` holds its modules under the release's attribute names so the official head keys load 1:1
(``DPMeshNetwork`` subclasses it, so they sit at the top level of the network's state dict):

==============================================  ==========================================================
``down_linear``                                 Conv1×1 F→d (2-D memory; its output is ``feat_2d``)
``conv2d_to_3d``                                Conv1×1 F→d·depth (viewed as (B, d, depth, 8, 8))
``conv_3d_coord.0``                             Conv3d 1×1 (d+3)→d
``exponent``                                    learnable depth exponent k (init 3, clamped to [1, 20])
``pos_embed_1d.pos_table``                      fixed sinusoid table (depth·64, d) (buffer), the ``pos`` of
                                                every ``refine_3d`` layer (added to queries and keys only)
``refine_3d.layers.{i}.*``, ``refine_3d.norm``  post-norm encoder (FFN ``refine_ffn``) + final LayerNorm
``spose_shape_cam_param``                       (n_smpl, d) positional part of the SMPL queries (randn)
``query.weight``                                Embedding(15, d) positional part of the joint queries
``transformer.encoder.layers.{i}.*``            post-norm encoder over the 8×8 tokens, no final norm
``transformer.decoder.layers.{i}.*``            post-norm decoder layers (self_attn, multihead_attn, ...)
``transformer.decoder.norm``                    shared decoder LayerNorm, applied after EVERY layer and fed on
``transformer.decoder.joint_img_regress.{i}``   Linear d→3 (layer 0), Linear (d+3)→3 (later layers)
``transformer.decoder.fc_pos_3d.{0,1,3}``       Linear 3→d, LayerNorm, ReLU, Linear d→d
``transformer.smpl_tgt`` / ``kp_tgt``           (d,) content vectors (zeros)
``cascade_{root_pose,pose,shaoe,cam}_out.{i}``  Linear d→n (i = 0) / Linear (d+n)→n (i > 0)
``cascade_vq_out.{i}`` (pose_decoder="vq")      Linear d→K / (d+K)→K, shared by the T VQ tokens
==============================================  ==========================================================

Attention layers are ``nn.MultiheadAttention`` (``in_proj_weight``/``in_proj_bias``/``out_proj``);
sequence-first tensors (L, B, d) inside the transformer. Stored shapes are the release's (checked against a
state dict written by the release: ``pos_table`` (512, 256), ``smpl_tgt``/``kp_tgt`` (256,)); folders saved
by earlier versions of this project held (1, 512, 256) / (1, 1, 256) and still load (same elements).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import HeadConfig

_RESHAPE_TOLERANT = ("exponent", "transformer.smpl_tgt", "transformer.kp_tgt", "pos_embed_1d.pos_table",
                     "spose_shape_cam_param")


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """logit with clamping (Deformable-DETR style)."""
    x = x.clamp(0, 1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


class SinusoidTable(nn.Module):
    """Fixed 1-D sinusoid table ``pos_table`` (n, d): sin on even, cos on odd channels (the release's
    ``PositionalEncoding1D``; an official checkpoint carries the table itself, which is what is used)."""

    def __init__(self, d: int, n: int):
        super().__init__()
        pos = torch.arange(n, dtype=torch.float64)[:, None]
        j = torch.arange(d, dtype=torch.float64)[None]
        angle = pos / torch.pow(10000.0, 2 * torch.div(j, 2, rounding_mode="floor") / d)
        table = torch.where(j.long() % 2 == 0, torch.sin(angle), torch.cos(angle))
        self.register_buffer("pos_table", table.float())

    def forward(self, n: int, dtype: torch.dtype) -> torch.Tensor:
        """The first ``n`` rows as a sequence-first positional embedding (n, 1, d)."""
        return self.pos_table.reshape(-1, self.pos_table.shape[-1])[:n, None].to(dtype)


def sine_position_embedding(b: int, d: int, h: int, w: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The release's ``PositionEmbeddingSine(d/2, normalize=True)`` without mask → (B, d, h, w) (y half first).

    Not DETR's: the release computes the frequency exponent ``2·⌊i/2⌋ // (d/2)`` with *truncating integer*
    division, so every exponent is 0 and all channels share one frequency (divisor 1). Reproduced as released
    (spec §2.9, corrected); DETR's form changes every head output.
    """
    npf = d // 2
    scale, eps = 2 * math.pi, 1e-6
    y = torch.arange(1, h + 1, device=device, dtype=torch.float32)[:, None].expand(h, w)
    x = torch.arange(1, w + 1, device=device, dtype=torch.float32)[None, :].expand(h, w)
    y = y / (y[-1:, :] + eps) * scale
    x = x / (x[:, -1:] + eps) * scale
    dim_t = torch.arange(npf, device=device, dtype=torch.float32)
    dim_t = 10000.0 ** torch.div(2 * torch.div(dim_t, 2, rounding_mode="floor"), npf, rounding_mode="floor")
    px, py = x[..., None] / dim_t, y[..., None] / dim_t
    px = torch.stack([px[..., 0::2].sin(), px[..., 1::2].cos()], dim=-1).flatten(-2)
    py = torch.stack([py[..., 0::2].sin(), py[..., 1::2].cos()], dim=-1).flatten(-2)
    pos = torch.cat([py, px], dim=-1).permute(2, 0, 1)
    return pos[None].expand(b, -1, -1, -1).to(dtype)


def _with_pos(x: torch.Tensor, pos: torch.Tensor | None) -> torch.Tensor:
    return x if pos is None else x + pos


class EncoderLayer(nn.Module):
    """DETR post-norm encoder layer on (L, B, d); ``pos`` is added to queries and keys."""

    def __init__(self, d: int, nheads: int, ffn: int, dropout: float):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d, nheads, dropout=dropout)
        self.linear1 = nn.Linear(d, ffn)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(ffn, d)
        self.norm1 = nn.LayerNorm(d)
        self.norm2 = nn.LayerNorm(d)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def forward(self, src: torch.Tensor, pos: torch.Tensor | None = None) -> torch.Tensor:
        q = k = _with_pos(src, pos)
        src = self.norm1(src + self.dropout1(self.self_attn(q, k, src, need_weights=False)[0]))
        src2 = self.linear2(self.dropout(F.relu(self.linear1(src))))
        return self.norm2(src + self.dropout2(src2))


class DecoderLayer(nn.Module):
    """DETR post-norm decoder layer on (L, B, d)."""

    def __init__(self, d: int, nheads: int, ffn: int, dropout: float):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d, nheads, dropout=dropout)
        self.multihead_attn = nn.MultiheadAttention(d, nheads, dropout=dropout)
        self.linear1 = nn.Linear(d, ffn)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(ffn, d)
        self.norm1 = nn.LayerNorm(d)
        self.norm2 = nn.LayerNorm(d)
        self.norm3 = nn.LayerNorm(d)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor, pos: torch.Tensor | None,
                query_pos: torch.Tensor | None) -> torch.Tensor:
        q = k = _with_pos(tgt, query_pos)
        tgt = self.norm1(tgt + self.dropout1(self.self_attn(q, k, tgt, need_weights=False)[0]))
        t2 = self.multihead_attn(_with_pos(tgt, query_pos), _with_pos(memory, pos), memory, need_weights=False)[0]
        tgt = self.norm2(tgt + self.dropout2(t2))
        t2 = self.linear2(self.dropout(F.relu(self.linear1(tgt))))
        return self.norm3(tgt + self.dropout3(t2))


class TransformerEncoder(nn.Module):
    """Stack of ``EncoderLayer``; optional final LayerNorm ``norm``."""

    def __init__(self, d: int, nheads: int, ffn: int, dropout: float, num_layers: int, final_norm: bool):
        super().__init__()
        self.layers = nn.ModuleList([EncoderLayer(d, nheads, ffn, dropout) for _ in range(num_layers)])
        self.norm = nn.LayerNorm(d) if final_norm else None

    def forward(self, src: torch.Tensor, pos: torch.Tensor | None = None) -> torch.Tensor:
        for layer in self.layers:
            src = layer(src, pos)
        return src if self.norm is None else self.norm(src)


def sample_volume(volume: torch.Tensor, joint_img: torch.Tensor, exponent: torch.Tensor) -> torch.Tensor:
    """Trilinear sample of volume (B, C, D, H, W) at joint_img (B, N, 3) in [0, 1] (x, y, z); depth warped
    by z^k as the anchors are → (B, N, C)."""
    x, y, z = joint_img.unbind(-1)
    zk = z.clamp_min(0).pow(exponent.to(z.dtype))
    grid = torch.stack([2 * x - 1, 2 * y - 1, 2 * zk - 1], dim=-1)[:, None, None]  # (B,1,1,N,3)
    out = F.grid_sample(volume, grid.to(volume.dtype), mode="bilinear", align_corners=True)
    return out[:, :, 0, 0].transpose(1, 2)


class JointDecoder(nn.Module):
    """Decoder with the shared norm fed forward and per-layer joint refinement (spec §2.9.4)."""

    def __init__(self, d: int, nheads: int, ffn: int, dropout: float, num_layers: int):
        super().__init__()
        self.layers = nn.ModuleList([DecoderLayer(d, nheads, ffn, dropout) for _ in range(num_layers)])
        self.norm = nn.LayerNorm(d)
        self.joint_img_regress = nn.ModuleList(
            [nn.Linear(d, 3)] + [nn.Linear(d + 3, 3) for _ in range(num_layers - 1)])
        self.fc_pos_3d = nn.Sequential(nn.Linear(3, d), nn.LayerNorm(d), nn.ReLU(), nn.Linear(d, d))

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor, pos: torch.Tensor, query_pos: torch.Tensor,
                num_joints: int, dense_feat: torch.Tensor, exponent: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """tgt/query_pos (n_smpl + J, B, d); memory/pos (HW, B, d); dense_feat (B, d, D, H, W).
        Returns hs (L, n_smpl, B, d) (SMPL tokens after each layer's norm) and joint_img (B, J, 3)."""
        n_smpl = tgt.shape[0] - num_joints
        out, mem, mem_pos = tgt, memory, pos
        hs = []
        joint_img = None
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            out = self.norm(layer(out, mem, mem_pos, query_pos))
            hs.append(out[:n_smpl])
            tok = out[n_smpl:].transpose(0, 1)  # (B, J, d)
            if joint_img is None:
                joint_img = torch.sigmoid(self.joint_img_regress[i](tok))
            else:
                inv = inverse_sigmoid(joint_img)
                joint_img = torch.sigmoid(inv + self.joint_img_regress[i](torch.cat([tok, inv], dim=-1)))
            if i < last:  # the features sampled after the last layer would never be read
                sampled = sample_volume(dense_feat, joint_img, exponent).transpose(0, 1)
                jpos = self.fc_pos_3d(inverse_sigmoid(joint_img)).transpose(0, 1)
                mem = torch.cat([memory, sampled], dim=0)
                mem_pos = torch.cat([pos, jpos], dim=0)
        return torch.stack(hs), joint_img


class Transformer(nn.Module):
    """``transformer``: 2-D encoder + joint decoder + the learnable query contents."""

    def __init__(self, d: int, nheads: int, ffn: int, dropout: float, enc_layers: int, dec_layers: int):
        super().__init__()
        self.encoder = TransformerEncoder(d, nheads, ffn, dropout, enc_layers, final_norm=False)
        self.decoder = JointDecoder(d, nheads, ffn, dropout, dec_layers)
        for p in self.parameters():  # before the query contents exist (spec §2.9.4)
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        self.smpl_tgt = nn.Parameter(torch.zeros(d))
        self.kp_tgt = nn.Parameter(torch.zeros(d))


def _cascade(d: int, n: int, layers: int) -> nn.ModuleList:
    return nn.ModuleList([nn.Linear(d, n)] + [nn.Linear(d + n, n) for _ in range(layers - 1)])


def cascade_fc(heads: nn.ModuleList, hs: torch.Tensor) -> torch.Tensor:
    """out₀ = FC₀(h₀); outᵢ = outᵢ₋₁ + FCᵢ([hᵢ, outᵢ₋₁]); hs (L, ..., d) → last output (..., n)."""
    out = heads[0](hs[0])
    for i in range(1, len(heads)):
        out = out + heads[i](torch.cat([hs[i], out], dim=-1))
    return out


@dataclass
class RegressorOutput:
    """joint_img (B, 15, 3) in [0, 1] of the 64-grid (x, y, depth); root_pose6d (B, 6); pose_latent (B, 32)
    (VPoser) or pose_logits (B, T, K) (VQ); betas (B, 10); cam (B, 3) raw (t_x, t_y, γ);
    feat_2d (B, d, 8, 8) ``down_linear`` output; feat_3d (B, d, D, 8, 8) refined volume."""

    joint_img: torch.Tensor
    root_pose6d: torch.Tensor
    pose_code: torch.Tensor
    betas: torch.Tensor
    cam: torch.Tensor
    feat_2d: torch.Tensor
    feat_3d: torch.Tensor


class Regressor(nn.Module):
    """Fused map (B, F, 8, 8) → ``RegressorOutput`` (spec §2.9)."""

    def __init__(self, head: HeadConfig):
        super().__init__()
        d, D = head.d_model, head.depth_bins
        self.head_config = head
        self.num_joint_queries = head.num_joint_queries
        self.vq = head.pose_decoder == "vq"
        self.num_smpl_queries = 3 + (head.vq_tokens if self.vq else 0)
        self.down_linear = nn.Conv2d(head.fused_channels, d, 1)
        self.conv2d_to_3d = nn.Conv2d(head.fused_channels, d * D, 1)
        self.conv_3d_coord = nn.Sequential(nn.Conv3d(d + 3, d, 1))
        self.exponent = nn.Parameter(torch.tensor(3.0))
        self.pos_embed_1d = SinusoidTable(d, D * 8 * 8)
        self.refine_3d = TransformerEncoder(d, head.nheads, head.refine_ffn, head.dropout, head.refine_layers,
                                            final_norm=True)
        self.spose_shape_cam_param = nn.Parameter(torch.randn(self.num_smpl_queries, d))
        self.query = nn.Embedding(head.num_joint_queries, d)
        self.transformer = Transformer(d, head.nheads, head.ffn, head.dropout, head.enc_layers, head.dec_layers)
        L = head.dec_layers
        self.cascade_root_pose_out = _cascade(d, 6, L)
        if self.vq:
            self.cascade_vq_out = _cascade(d, head.vq_codebook, L)
        else:
            self.cascade_pose_out = _cascade(d, head.vposer_latent, L)
        self.cascade_shaoe_out = _cascade(d, 10, L)
        self.cascade_cam_out = _cascade(d, 3, L)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001 - torch signature
        own = {n: t for n, t in list(self.named_parameters()) + list(self.named_buffers())}
        for name in _RESHAPE_TOLERANT:
            key = prefix + name
            t = state_dict.get(key)
            mine = own.get(name)
            if t is not None and mine is not None and t.shape != mine.shape and t.numel() == mine.numel():
                state_dict[key] = t.reshape(mine.shape)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def anchor_grid(self, b: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """(B, 3, D, H, W) depth anchors [Z, Y, X]: Z = (i/D)^k along depth, Y = i/H, X = i/W."""
        D, H, W = self.head_config.depth_bins, 8, 8
        k = self.exponent.clamp(1, 20)
        zi = (torch.arange(D, device=device, dtype=torch.float32) / D).to(k.dtype).pow(k)
        yi = torch.arange(H, device=device, dtype=torch.float32) / H
        xi = torch.arange(W, device=device, dtype=torch.float32) / W
        Z = zi[:, None, None].expand(D, H, W)
        Y = yi[None, :, None].expand(D, H, W).to(Z.dtype)
        X = xi[None, None, :].expand(D, H, W).to(Z.dtype)
        return torch.stack([Z, Y, X])[None].expand(b, -1, -1, -1, -1).to(dtype)

    def regress(self, fused: torch.Tensor) -> RegressorOutput:
        """fused (B, F, 8, 8) → RegressorOutput."""
        B, _, H, W = fused.shape
        d, D = self.head_config.d_model, self.head_config.depth_bins
        # 3-D volume
        vol = self.conv2d_to_3d(fused).view(B, d, D, H, W)
        vol = torch.cat([vol, self.anchor_grid(B, vol.dtype, vol.device)], dim=1)
        vol = self.conv_3d_coord(vol)
        tok = vol.flatten(2).permute(2, 0, 1)  # (DHW, B, d)
        # the table is the pos of every refine_3d layer (queries and keys), never added to the tokens
        tok = self.refine_3d(tok, self.pos_embed_1d(tok.shape[0], tok.dtype))
        dense_feat = tok.permute(1, 2, 0).reshape(B, d, D, H, W)
        # 2-D memory
        feat_2d = self.down_linear(fused)
        pos = sine_position_embedding(B, d, H, W, fused.device, fused.dtype).flatten(2).permute(2, 0, 1)
        memory = self.transformer.encoder(feat_2d.flatten(2).permute(2, 0, 1), pos)
        # queries
        ns, nj = self.num_smpl_queries, self.num_joint_queries
        tr = self.transformer
        tgt = torch.cat([tr.smpl_tgt.reshape(1, 1, d).expand(ns, B, d), tr.kp_tgt.reshape(1, 1, d).expand(nj, B, d)])
        qpos = torch.cat([self.spose_shape_cam_param, self.query.weight])[:, None].expand(-1, B, -1)
        k = self.exponent.clamp(1, 20)
        hs, joint_img = tr.decoder(tgt.to(memory.dtype), memory, pos, qpos.to(memory.dtype), nj, dense_feat, k)
        # heads: token 0 root (+ pose for VPoser), [1..T VQ], then shape, then cam
        root = cascade_fc(self.cascade_root_pose_out, hs[:, 0])
        if self.vq:
            pose_code = cascade_fc(self.cascade_vq_out, hs[:, 1:ns - 2]).transpose(0, 1)  # (B, T, K)
        else:
            pose_code = cascade_fc(self.cascade_pose_out, hs[:, 0])
        betas = cascade_fc(self.cascade_shaoe_out, hs[:, ns - 2])
        cam = cascade_fc(self.cascade_cam_out, hs[:, ns - 1])
        return RegressorOutput(joint_img, root, pose_code, betas, cam, feat_2d, dense_feat)

    def forward(self, fused: torch.Tensor) -> RegressorOutput:
        return self.regress(fused)
