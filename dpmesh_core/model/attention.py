"""Recording cross-attention processor (spec §2.7).

``AttentionRecorder.install(unet, layers)`` puts a :class:`RecordingAttnProcessor` on the ``attn2``
(cross-attention) module of each named U-Net transformer block and the default ``AttnProcessor2_0`` on
every other attention module, through diffusers' ``set_attn_processor`` (``forward`` is never patched).
The recording processor computes softmax(QKᵀ·scale) explicitly (in fp32), so it can keep the
probabilities, averaged over heads, per layer. ``AttentionRecorder.maps(B)`` then gives the
layer-averaged maps per resolution as (B, J, H, W) probabilities over the J context tokens.

peft LoRA layers wrapping ``to_q/to_k/to_v/to_out.0`` keep working: the processor just calls them.
"""

from __future__ import annotations

import math

import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0


class RecordingAttnProcessor:
    """Attention with explicit softmax; stores head-averaged probabilities in ``recorder``.

    Output equals ``AttnProcessor2_0`` (up to float rounding, ~1e-6 in fp32). The stored map is
    (B, N_query, N_key) float32, averaged over heads; it keeps autograd history when grad is enabled.
    """

    def __init__(self, recorder: AttentionRecorder, name: str):
        self.recorder = recorder
        self.name = name

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args,
        **kwargs,
    ) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size, sequence_length, _ = (
            hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        )
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)

        inner_dim = key.shape[-1]
        head_dim = inner_dim // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        # SDPA's default scale is 1/sqrt(head_dim); we compute the same probabilities explicitly.
        scale = 1.0 / math.sqrt(head_dim)
        scores = torch.matmul(query.float(), key.float().transpose(-1, -2)) * scale  # (B,h,Nq,Nk)
        if attention_mask is not None:
            if attention_mask.dtype == torch.bool:
                scores = scores.masked_fill(~attention_mask, float("-inf"))
            else:
                scores = scores + attention_mask.float()
        probs = scores.softmax(dim=-1)
        self.recorder.record(self.name, probs.mean(dim=1))
        hidden_states = torch.matmul(probs.to(value.dtype), value)

        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        hidden_states = hidden_states / attn.rescale_output_factor
        return hidden_states


class AttentionRecorder:
    """Holds the per-layer cross-attention probabilities of the latest U-Net forward.

    ``layers``: map side (str, e.g. "8") → transformer-block module paths inside the U-Net
    (e.g. "down_blocks.2.attentions.0"); the ``attn2`` of each block's transformer blocks is recorded.
    One recorder belongs to one backbone (no global state). Not thread-safe: one forward at a time.
    """

    def __init__(self, layers: dict[str, tuple[str, ...]]):
        self.layers = {k: tuple(v) for k, v in layers.items()}
        self._store: dict[str, torch.Tensor] = {}
        self._owner: dict[str, str] = {}  # attn2 processor key → map side

    def install(self, unet: torch.nn.Module) -> None:
        """Set processors on ``unet`` (a diffusers ``UNet2DConditionModel``): recording on the named
        blocks' ``attn2``, ``AttnProcessor2_0`` everywhere else. Raises KeyError for a path that has no
        cross-attention module."""
        procs = {}
        wanted = {path: side for side, paths in self.layers.items() for path in paths}
        found = set()
        for key in unet.attn_processors:  # e.g. "up_blocks.1.attentions.0.transformer_blocks.0.attn2.processor"
            block = key.split(".transformer_blocks.")[0]
            if key.endswith("attn2.processor") and block in wanted:
                name = key[: -len(".processor")]
                procs[key] = RecordingAttnProcessor(self, name)
                self._owner[name] = wanted[block]
                found.add(block)
            else:
                procs[key] = AttnProcessor2_0()
        missing = sorted(set(wanted) - found)
        if missing:
            raise KeyError(f"U-Net has no cross-attention at {missing}")
        unet.set_attn_processor(procs)

    def reset(self) -> None:
        """Forget the recorded maps (call before each forward)."""
        self._store.clear()

    def record(self, name: str, probs: torch.Tensor) -> None:
        """Called by the processors: probs (B, N_query, N_key), head-averaged."""
        self._store[name] = probs

    def maps(self) -> dict[str, torch.Tensor]:
        """Layer-averaged maps: side → (B, N_key, side, side) float32, each query's column a probability
        distribution over the N_key context tokens (sums to 1 over dim 1). Row-major (y, x) layout."""
        out: dict[str, torch.Tensor] = {}
        for side, _ in self.layers.items():
            mats = [p for n, p in self._store.items() if self._owner.get(n) == side]
            if not mats:
                raise RuntimeError(f"no attention recorded for the {side}×{side} maps; run the U-Net first")
            s = int(side)
            avg = torch.stack(mats, 0).mean(0)  # (B, s*s, Nk)
            if avg.shape[1] != s * s:
                raise RuntimeError(f"attention at {side}×{side} has {avg.shape[1]} queries; latent not 32×32?")
            out[side] = avg.transpose(1, 2).reshape(avg.shape[0], avg.shape[2], s, s)
        return out
