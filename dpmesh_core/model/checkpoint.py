"""Loading what users have: the official DPMesh checkpoints and SD1.5 / ControlNet files (spec §7).

* :func:`load_official_checkpoint` reads an official ``*_best_ckpt.pth.tar`` (a flat, ``module.``-prefixed
  state dict; ``torch.load(weights_only=True, mmap=True)``), renames the ldm U-Net / ControlNet / VAE keys
  to diffusers, turns the LoRA pairs (``lora_down``/``lora_up``) into peft ``lora_A``/``lora_B`` (or merges
  them), drops CLIP, schedule buffers and duplicate aliases, hands the head keys 1:1 to the network and
  returns the SMPL buffers (``human_model_layer.th_*``) separately. Strict: any missing, unexpected or
  mis-shaped key raises :class:`~dpmesh_core.errors.CheckpointMismatchError` listing them.
* :func:`official_state_dict_from_network` is the inverse (a network → a state dict in the official
  layout); tests use it to fabricate official-layout checkpoints at tiny width.
* :func:`load_sd15` / :func:`load_controlnet` read SD1.5 and ControlNet weights from a diffusers folder or
  a single ``.safetensors`` / ``.ckpt`` (ldm layout), offline, with the configs built here.
* :func:`convert_official` converts an official checkpoint once into our own format (config +
  safetensors, memory-mapped later); the licensed SMPL buffers go only to the user's cache.

The ldm ↔ diffusers key mapping is generated from the :class:`BackboneConfig` (one table, used in both
directions), and is checked in the tests against diffusers' own ``convert_ldm_unet_checkpoint`` and
``convert_ldm_vae_checkpoint``.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..errors import CheckpointMismatchError, InputError, ModelFilesMissingError
from .config import BackboneConfig

if TYPE_CHECKING:
    from torch import nn

log = logging.getLogger(__name__)

SD = "backbone.sd_model."
UNET_OFF = SD + "model.diffusion_model."
CN_OFF = SD + "control_model."
VAE_OFF = SD + "first_stage_model."

#: Official head key prefixes → our network's attribute paths (everything else in the head is 1:1).
HEAD_RENAMES: dict[str, str] = {"backbone.outmodules.": "fusion.outmodules."}

#: Official keys that are read and thrown away (unused by inference), by prefix.
DROP_PREFIXES: tuple[str, ...] = (
    SD + "cond_stage_model.",       # CLIP text encoder (the prompt is the key-point Linear)
    SD + "model_ema.",              # EMA copies, if a training run kept them
    VAE_OFF + "decoder.",           # VAE decoder (deleted in the release, dropped if present)
    VAE_OFF + "post_quant_conv.",
    "backbone.unet.",               # UNetWrapper alias of the same sd_model tensors
    "backbone.encoder_vq.",         # alias of first_stage_model
    "vposer.vposer.bodyprior_enc_",  # VPoser encoder (only the decoder is used) unless the network has it
)
SMPL_PREFIX = "human_model_layer."

_RES = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
        "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut"}
_VAE_RES = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "nin_shortcut": "conv_shortcut"}
_VAE_ATTN = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
_LORA_TARGET_SUFFIXES = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0",
                         "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0", "ff.net.0.proj")


# ---------------------------------------------------------------------------------------------------------
# ldm ↔ diffusers module maps
# ---------------------------------------------------------------------------------------------------------
def _resnet(m: dict[str, str], ldm: str, dif: str) -> None:
    for a, b in _RES.items():
        m[f"{ldm}.{a}"] = f"{dif}.{b}"


def _encoder_map(cfg: BackboneConfig, m: dict[str, str]) -> None:
    """Shared by U-Net and ControlNet: time embedding, input blocks, middle block."""
    L = cfg.layers_per_block
    m["time_embed.0"] = "time_embedding.linear_1"
    m["time_embed.2"] = "time_embedding.linear_2"
    m["input_blocks.0.0"] = "conv_in"
    n_blocks = len(cfg.block_out_channels)
    for lvl in range(n_blocks):
        for k in range(L):
            n = lvl * (L + 1) + k + 1
            _resnet(m, f"input_blocks.{n}.0", f"down_blocks.{lvl}.resnets.{k}")
            if lvl < n_blocks - 1:  # cross-attention in all but the last down block
                m[f"input_blocks.{n}.1"] = f"down_blocks.{lvl}.attentions.{k}"
        if lvl < n_blocks - 1:
            m[f"input_blocks.{(lvl + 1) * (L + 1)}.0.op"] = f"down_blocks.{lvl}.downsamplers.0.conv"
    _resnet(m, "middle_block.0", "mid_block.resnets.0")
    m["middle_block.1"] = "mid_block.attentions.0"
    _resnet(m, "middle_block.2", "mid_block.resnets.1")


def unet_key_map(cfg: BackboneConfig) -> dict[str, str]:
    """ldm module path (under ``model.diffusion_model.``) → diffusers ``UNet2DConditionModel`` path."""
    m: dict[str, str] = {}
    _encoder_map(cfg, m)
    L = cfg.layers_per_block
    n_blocks = len(cfg.block_out_channels)
    for lvl in range(n_blocks):
        for k in range(L + 1):
            n = lvl * (L + 1) + k
            _resnet(m, f"output_blocks.{n}.0", f"up_blocks.{lvl}.resnets.{k}")
            if lvl > 0:
                m[f"output_blocks.{n}.1"] = f"up_blocks.{lvl}.attentions.{k}"
            if k == L and lvl < n_blocks - 1:
                m[f"output_blocks.{n}.{1 if lvl == 0 else 2}.conv"] = f"up_blocks.{lvl}.upsamplers.0.conv"
    m["out.0"] = "conv_norm_out"
    m["out.2"] = "conv_out"
    return m


def controlnet_key_map(cfg: BackboneConfig) -> dict[str, str]:
    """ldm ``control_model`` module path → diffusers ``ControlNetModel`` path (no hint block)."""
    m: dict[str, str] = {}
    _encoder_map(cfg, m)
    n_zero = len(cfg.block_out_channels) * (cfg.layers_per_block + 1)
    for i in range(n_zero):
        m[f"zero_convs.{i}.0"] = f"controlnet_down_blocks.{i}"
    m["middle_block_out.0"] = "controlnet_mid_block"
    return m


def vae_key_map(cfg: BackboneConfig) -> dict[str, str]:
    """ldm ``first_stage_model`` encoder module path → diffusers ``AutoencoderKL`` path."""
    m: dict[str, str] = {"encoder.conv_in": "encoder.conv_in", "encoder.norm_out": "encoder.conv_norm_out",
                         "encoder.conv_out": "encoder.conv_out", "quant_conv": "quant_conv"}
    n = len(cfg.vae_block_out_channels)
    for i in range(n):
        for j in range(cfg.vae_layers_per_block):
            for a, b in _VAE_RES.items():
                m[f"encoder.down.{i}.block.{j}.{a}"] = f"encoder.down_blocks.{i}.resnets.{j}.{b}"
        if i < n - 1:
            m[f"encoder.down.{i}.downsample.conv"] = f"encoder.down_blocks.{i}.downsamplers.0.conv"
    for t, d in (("block_1", "resnets.0"), ("block_2", "resnets.1")):
        for a, b in _VAE_RES.items():
            m[f"encoder.mid.{t}.{a}"] = f"encoder.mid_block.{d}.{b}"
    for a, b in _VAE_ATTN.items():
        m[f"encoder.mid.attn_1.{a}"] = f"encoder.mid_block.attentions.0.{b}"
    return m


def _rename(key: str, table: Mapping[str, str]) -> str | None:
    """Longest dotted-prefix match of ``key`` in ``table``; None if no prefix matches."""
    parts = key.split(".")
    for i in range(len(parts) - 1, 0, -1):
        head = ".".join(parts[:i])
        if head in table:
            return table[head] + "." + ".".join(parts[i:])
    return None


def _is_vae_attn_linear(dif_key: str) -> bool:
    return ".mid_block.attentions.0.to_" in dif_key and dif_key.endswith(".weight")


# ---------------------------------------------------------------------------------------------------------
# reading files
# ---------------------------------------------------------------------------------------------------------
#: Modules a tensor pickle legitimately imports from (torch's rebuild helpers and storages, OrderedDict,
#: _codecs for byte strings, numpy scalars/dtypes some trainers store).
_SAFE_PICKLE_MODULES = ("torch", "collections", "_codecs", "numpy")


def _pickle_bytes(p: Path) -> list[bytes]:
    """The pickle streams of a checkpoint: ``*/data.pkl`` inside a torch zip archive, else the whole file."""
    if zipfile.is_zipfile(p):
        try:
            with zipfile.ZipFile(p) as z:
                return [z.read(n) for n in z.namelist() if n.endswith(".pkl")]
        except (zipfile.BadZipFile, OSError, EOFError, ValueError):
            return []
    try:
        with open(p, "rb") as fh:
            return [fh.read(64 << 20)]  # a legacy pickle header; tensors follow it in the old format
    except OSError:
        return []


def _unsafe_imports(p: Path) -> list[str]:
    """Globals a checkpoint's pickle would import outside :data:`_SAFE_PICKLE_MODULES` (e.g. ``posix.system``),
    read with ``pickletools`` (which never executes anything). Unparseable streams give []."""
    import pickletools

    found: list[str] = []
    for data in _pickle_bytes(p):
        strings: list[str] = []
        try:
            for op, arg, _pos in pickletools.genops(data):
                if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8"):
                    strings.append(str(arg))
                elif op.name in ("GLOBAL", "INST"):
                    mod, _, name = str(arg).partition(" ")
                    found.append(f"{mod}.{name}")
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    found.append(f"{strings[-2]}.{strings[-1]}")
        except Exception:  # noqa: BLE001 - a corrupt stream: torch.load reports it below
            pass
    bad = [g for g in found if g.split(".", 1)[0] not in _SAFE_PICKLE_MODULES]
    return sorted(set(bad))


def _load_failure(e: BaseException) -> str:
    """A short cause for a failed ``torch.load`` (without torch's advice to turn ``weights_only`` off)."""
    text = str(e)
    for needle, say in (("central directory", "truncated or damaged zip archive"),
                        ("Unsupported operand", "not a PyTorch weights file, or damaged"),
                        ("invalid load key", "not a PyTorch weights file, or damaged"),
                        ("GLOBAL", "it holds objects other than tensors")):
        if needle in text:
            return say
    if isinstance(e, EOFError) or "EOF" in text or "truncated" in text.lower():
        return "truncated"
    first = text.splitlines()[0] if text else type(e).__name__
    if "weights_only" in first:
        return "not a PyTorch weights file, or damaged"
    return first[:160]


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a tensor state dict from ``.safetensors`` (memory-mapped) or a torch pickle (``weights_only``,
    ``mmap`` when the file is a zip archive). Unwraps ``state_dict`` / ``model`` / ``network`` wrappers.

    Raises InputError naming the file if it is missing, truncated, not a checkpoint, or not a mapping of
    tensors.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError("checkpoint file not found", p)
    if p.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(p))
        except (SafetensorError, OSError, ValueError) as e:
            raise InputError(f"not a readable safetensors file ({e})", p) from e
    if p.stat().st_size == 0:
        raise InputError("empty file (0 bytes), not a checkpoint", p)
    unsafe = _unsafe_imports(p)
    if unsafe:  # refused before torch unpickles anything: nothing in the file was run
        raise InputError(f"unsafe file, refused: loading it would import {', '.join(unsafe[:3])} (code a weights "
                         f"file never needs); nothing in it was run", p)
    try:
        obj = torch.load(str(p), map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(p))
    except Exception as e:  # noqa: BLE001 - torch raises many types for corrupt/unsafe files
        raise InputError(f"not a readable PyTorch checkpoint ({_load_failure(e)})", p) from e
    for wrapper in ("state_dict", "model", "network"):
        if isinstance(obj, Mapping) and wrapper in obj and isinstance(obj[wrapper], Mapping):
            obj = obj[wrapper]
            break
    if not isinstance(obj, Mapping) or not obj:
        raise InputError(f"not a state dict (got {type(obj).__name__})", p)
    bad = [str(k) for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise InputError(f"not a state dict of tensors: {len(bad)} non-tensor entries, e.g. {bad[:3]}", p)
    return dict(obj)


# ---------------------------------------------------------------------------------------------------------
# the architecture of a file: read from its shapes (and the release's ldm config for what shapes cannot say)
# ---------------------------------------------------------------------------------------------------------
#: What the release uses where a checkpoint's shapes say nothing (cldm_v15.yaml, configs/main_train.yml,
#: ldm's GroupNorm32, VPDEncoder's GroupNorm(16), JOTR's 8 heads).
RELEASE_DEFAULTS = {"num_heads": 8, "norm_num_groups": 32, "vae_norm_num_groups": 32, "fusion_groups": 16,
                    "head_nheads": 8}


def read_ldm_config(path: str | os.PathLike) -> dict[str, Any]:
    """The release's ldm/cldm configuration, as ``{unet_config, control_stage_config, first_stage_config}``
    (each with its ``params``).

    Accepts the release's ``cldm_v15.yaml`` layout (``model.params.{unet_config, …}.params``), the mapping
    that sits under ``model.params`` itself, or a JSON file holding either — e.g. the parity reference's
    sidecar, whose ``config.cldm_config`` is exactly what sits under ``model.params``. Raises ConfigError
    naming the file when it cannot be read or lacks a ``unet_config``.
    """
    from ..config import read_mapping
    from ..errors import ConfigError

    p = Path(path)
    doc = read_mapping(p)  # YAML or JSON; ConfigError naming the file when unreadable

    def find(d: Any) -> dict[str, Any] | None:
        if not isinstance(d, Mapping):
            return None
        if isinstance(d.get("unet_config"), Mapping):
            return dict(d)
        for key in ("model", "params", "config", "cldm_config"):
            hit = find(d.get(key))
            if hit is not None:
                return hit
        return None

    found = find(doc)
    if found is None:
        raise ConfigError("no 'unet_config' found (expected the layout of the release's cldm_v15.yaml: "
                          "model.params.{unet_config, control_stage_config, first_stage_config})", source=str(p))
    return found


def _count(keys: set[str], prefix: str) -> int:
    """Number of distinct integer children ``prefix{i}.`` among ``keys``."""
    idx = set()
    for k in keys:
        if k.startswith(prefix):
            head = k[len(prefix):].split(".", 1)[0]
            if head.isdigit():
                idx.add(int(head))
    return len(idx)


def infer_network_config(official: Mapping[str, torch.Tensor], ldm_config: Mapping[str, Any] | None = None,
                         path: str | os.PathLike | None = None):
    """The ``NetworkConfig`` of an official-layout state dict, read from its tensor shapes.

    Every width the shapes determine comes from the file: U-Net/ControlNet channels per level and res-blocks
    per level, context width, number of joints (ControlNet input channels − latent channels), LoRA rank, VAE
    channels, res-blocks and latent channels, the fused width and depth bins, the regressor's width, layer
    counts and feed-forward widths, the joint queries, VPoser's sizes and the key-point lifting. What shapes
    cannot tell — attention heads, GroupNorm groups — comes from ``ldm_config`` (see
    :func:`read_ldm_config`) when given, otherwise from the released values (:data:`RELEASE_DEFAULTS`).

    Raises CheckpointMismatchError naming the first key it needs and does not find (a file of another kind is
    refused here, before any network is built), ConfigError for an ldm config the network cannot express.
    """
    from ..errors import ConfigError
    from .config import BackboneConfig, HeadConfig, NetworkConfig

    sd = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in official.items()}
    keys = set(sd)

    def need(key: str) -> torch.Tensor:
        if key not in sd:
            alt = key.replace(".weight", ".linear.weight")
            if alt in sd:
                return sd[alt]
            note = ("no 'backbone.sd_model.model.diffusion_model' keys: not an official DPMesh checkpoint?"
                    if not any(k.startswith(UNET_OFF) for k in keys) else "cannot read the architecture")
            raise CheckpointMismatchError(path, missing=["module." + key], note=note)
        return sd[key]

    u, c = UNET_OFF, CN_OFF
    if not any(k.startswith(u) for k in keys):
        raise CheckpointMismatchError(path, note="no 'backbone.sd_model.model.diffusion_model' keys: not an official "
                                      "DPMesh checkpoint?")
    n_in = _count(keys, u + "input_blocks.")
    if n_in < 8 or (n_in - 4) % 4:
        raise CheckpointMismatchError(path, note=f"{n_in} U-Net input blocks: not the SD1.5 layout of 4 levels")
    L = (n_in - 4) // 4
    chans = tuple(int(need(f"{u}input_blocks.{lvl * (L + 1) + 1}.0.out_layers.3.weight").shape[0])
                  for lvl in range(4))
    latent = int(need(u + "input_blocks.0.0.weight").shape[1])
    ctx = int(need(u + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight").shape[1])
    cn_in = int(need(c + "input_blocks.0.0.weight").shape[1])
    downs = [k for k in keys if k.startswith(u) and k.endswith(".lora_down.weight")]
    rank = int(sd[downs[0]].shape[0]) if downs else 64
    v = VAE_OFF + "encoder."
    n_vae = _count(keys, v + "down.")
    vae_chans = tuple(int(need(f"{v}down.{i}.block.0.conv2.weight").shape[0]) for i in range(n_vae))
    vae_layers = _count(keys, v + "down.0.block.")
    z = int(need(VAE_OFF + "quant_conv.weight").shape[0]) // 2

    heads, groups, vae_groups = RELEASE_DEFAULTS["num_heads"], RELEASE_DEFAULTS["norm_num_groups"], \
        RELEASE_DEFAULTS["vae_norm_num_groups"]
    if ldm_config is not None:
        up = dict((ldm_config.get("unet_config") or {}).get("params") or {})
        if not up:
            raise ConfigError("ldm config has no unet_config.params", "unet_config")
        if int(up.get("num_head_channels", -1)) not in (-1, None):
            raise ConfigError("num_head_channels (a fixed head width, SD2 style) is not supported; the release "
                              "uses num_heads", "unet_config.params.num_head_channels")
        heads = int(up.get("num_heads", heads))
        mc, mult = up.get("model_channels"), up.get("channel_mult")
        if mc is not None and mult is not None and tuple(int(mc) * int(m) for m in mult) != chans:
            raise CheckpointMismatchError(path, note=f"the ldm config says U-Net channels "
                                          f"{tuple(int(mc) * int(m) for m in mult)}, the file holds {chans}")
        if up.get("num_res_blocks") is not None and int(up["num_res_blocks"]) != L:
            raise CheckpointMismatchError(path, note=f"the ldm config says {up['num_res_blocks']} res-blocks "
                                          f"per level, the file holds {L}")
        if int(up.get("transformer_depth", 1)) != 1:
            raise ConfigError("transformer_depth other than 1 is not supported", "unet_config.params")
        cp = dict((ldm_config.get("control_stage_config") or {}).get("params") or {})
        if cp and int(cp.get("num_heads", heads)) != heads:
            raise ConfigError("ControlNet and U-Net with different num_heads are not supported",
                              "control_stage_config.params.num_heads")

    head_d = int(need("down_linear.weight").shape[0])
    fused = int(need("down_linear.weight").shape[1])
    head = HeadConfig(
        fused_channels=fused,
        depth_bins=fused // head_d if head_d else 8,
        fusion_groups=RELEASE_DEFAULTS["fusion_groups"],
        d_model=head_d,
        nheads=RELEASE_DEFAULTS["head_nheads"],
        ffn=int(need("transformer.encoder.layers.0.linear1.weight").shape[0]),
        enc_layers=_count(keys, "transformer.encoder.layers."),
        dec_layers=_count(keys, "transformer.decoder.layers."),
        refine_ffn=int(need("refine_3d.layers.0.linear1.weight").shape[0]),
        refine_layers=_count(keys, "refine_3d.layers."),
        num_joint_queries=int(need("query.weight").shape[0]),
        kp_lifting="linear" if "kp_lifting.weight" in sd else "mlp",
        vposer_latent=int(need("vposer.vposer.bodyprior_dec_fc1.weight").shape[1]),
        vposer_hidden=int(need("vposer.vposer.bodyprior_dec_fc1.weight").shape[0]),
    )
    bb = BackboneConfig(
        block_out_channels=chans, layers_per_block=L, num_heads=heads, cross_attention_dim=ctx,
        norm_num_groups=groups, vae_block_out_channels=vae_chans, vae_layers_per_block=vae_layers,
        vae_norm_num_groups=vae_groups, latent_channels=latent, num_joints=cn_in - latent,
        lora_rank=rank, lora_alpha=float(rank),
    )
    cfg = NetworkConfig(backbone=bb, head=head, preset="custom")
    try:
        bb.validate()
        head.validate()
        cfg.validate()
    except ConfigError as e:
        raise CheckpointMismatchError(path, note=f"the file's shapes give an architecture the network cannot "
                                      f"build: {e}") from e
    if z != latent:
        raise CheckpointMismatchError(path, note=f"VAE latent {z} channels but U-Net input {latent}")
    return cfg


# ---------------------------------------------------------------------------------------------------------
# official → ours
# ---------------------------------------------------------------------------------------------------------
@dataclass
class OfficialLoadResult:
    """What :func:`official_to_network_state` / :func:`load_official_checkpoint` found.

    smpl: the neutral SMPL buffers (``human_model_layer.th_*`` without the prefix and ``th_``), numpy,
      smplpytorch layout: v_template (6890,3), shapedirs (6890,3,10), posedirs (6890,3,207),
      J_regressor (24,6890), weights (6890,24), faces (13776,3), betas (1,10). Licensed: keep in memory or
      in the user's cache only.
    dropped: number of keys read and dropped, per reason. lora_pairs: LoRA pairs found.
    """

    smpl: dict[str, np.ndarray] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)
    lora_pairs: int = 0


def _drop_reason(k: str, target: Mapping[str, Any]) -> str | None:
    if k.startswith(SD) and "." not in k[len(SD):]:
        return "schedule buffers"
    if k.endswith("position_ids"):
        return "CLIP position_ids"
    for p in DROP_PREFIXES:
        if k.startswith(p):
            if p.startswith("vposer.") and k in target:
                return None
            return p.rstrip("._")
    return None


def official_to_network_state(
    official: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor], cfg: BackboneConfig,
    path: str | os.PathLike | None = None,
) -> tuple[dict[str, torch.Tensor], OfficialLoadResult]:
    """Map an official state dict onto the key set of our network.

    Args:
        official: the file's state dict (keys with or without the ``module.`` prefix).
        target: our network's ``state_dict()`` (only keys and shapes are used; may live on "meta").
        cfg: the network's backbone config (layer layout; whether LoRA is kept as peft or merged).
        path: named in errors.
    Returns:
        (state dict with exactly ``target``'s keys and shapes, OfficialLoadResult).
    Raises:
        CheckpointMismatchError listing missing / unexpected / mis-shaped keys (also for a file of another
        kind, e.g. no ``backbone.sd_model`` keys at all).
    """
    umap, cmap, vmap = unet_key_map(cfg), controlnet_key_map(cfg), vae_key_map(cfg)
    res = OfficialLoadResult()
    out: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    lora: dict[str, dict[str, torch.Tensor]] = {}  # our module path → {"down","up","weight","bias"}
    for raw_key, v in official.items():
        k = raw_key[len("module."):] if raw_key.startswith("module.") else raw_key
        reason = _drop_reason(k, target)
        if reason:
            res.dropped[reason] = res.dropped.get(reason, 0) + 1
            continue
        if k.startswith(SMPL_PREFIX):
            name = k[len(SMPL_PREFIX):]
            name = name[3:] if name.startswith("th_") else name
            res.smpl[name] = v.detach().cpu().numpy()
            continue
        if k.startswith(UNET_OFF):
            sub = k[len(UNET_OFF):]
            low = None
            for tag in (".linear.weight", ".linear.bias", ".lora_down.weight", ".lora_up.weight"):
                if sub.endswith(tag):
                    low = tag
                    sub = sub[: -len(tag)]
                    break
            if low is None:
                new = _rename(sub, umap)
                if new is None:
                    unexpected.append(raw_key)
                    continue
                out["backbone.unet." + new] = v
            else:
                new = _rename(sub + ".x", umap)
                if new is None:
                    unexpected.append(raw_key)
                    continue
                slot = {".linear.weight": "weight", ".linear.bias": "bias", ".lora_down.weight": "down",
                        ".lora_up.weight": "up"}[low]
                lora.setdefault("backbone.unet." + new[:-2], {})[slot] = v
            continue
        if k.startswith(CN_OFF):
            new = _rename(k[len(CN_OFF):], cmap)
            if new is None:
                unexpected.append(raw_key)
                continue
            out["backbone.controlnet." + new] = v
            continue
        if k.startswith(VAE_OFF):
            new = _rename(k[len(VAE_OFF):], vmap)
            if new is None:
                unexpected.append(raw_key)
                continue
            new = "backbone.vae." + new
            if _is_vae_attn_linear(new) and v.ndim == 4:
                v = v[:, :, 0, 0]
            out[new] = v
            continue
        for a, b in HEAD_RENAMES.items():
            if k.startswith(a):
                k = b + k[len(a):]
                break
        out[k] = v
    # LoRA-wrapped linears
    scale = cfg.lora_rank / float(cfg.lora_alpha)  # peft applies alpha/r; the release applies 1
    incomplete = []
    for mod, parts in lora.items():
        if "weight" not in parts or ("down" in parts) != ("up" in parts):
            incomplete.append(mod)
            continue
        if "down" in parts:
            res.lora_pairs += 1
        if cfg.lora_merged:
            w = parts["weight"]
            if "down" in parts:
                w = w.float() + parts["up"].float() @ parts["down"].float()
                w = w.to(parts["weight"].dtype)
            out[mod + ".weight"] = w
            if "bias" in parts:
                out[mod + ".bias"] = parts["bias"]
        else:
            out[mod + ".base_layer.weight"] = parts["weight"]
            if "bias" in parts:
                out[mod + ".base_layer.bias"] = parts["bias"]
            if "down" in parts:
                out[mod + ".lora_A.default.weight"] = parts["down"]
                out[mod + ".lora_B.default.weight"] = parts["up"] * scale if scale != 1.0 else parts["up"]
    from ..state_dict import state_dict_mismatch

    missing, extra, shape = state_dict_mismatch(target, out)
    unexpected += extra
    unexpected += [m + " (incomplete LoRA pair)" for m in incomplete]
    if missing or unexpected or shape:
        if not any(k.startswith(UNET_OFF) or k.startswith("module." + UNET_OFF) for k in official):
            note = "no 'backbone.sd_model.model.diffusion_model' keys: not an official DPMesh checkpoint?"
        elif any(".lora_" in k for k in unexpected):
            note = f"LoRA on modules outside lora_targets {list(cfg.lora_targets)}, or a different LoRA layout"
        else:
            note = ""
        raise CheckpointMismatchError(path, missing=missing, unexpected=sorted(unexpected),
                                      shape_mismatch=shape, note=note)
    return {k: out[k] for k in target}, res


def load_official_checkpoint(path: str | os.PathLike, network: nn.Module, merge_lora: bool = False,
                             state: Mapping[str, torch.Tensor] | None = None) -> OfficialLoadResult:
    """Load an official ``*_best_ckpt.pth.tar`` into ``network`` (a DPMeshNetwork built from the matching
    config; LoRA kept as the peft adapter "default" unless the network is already merged or
    ``merge_lora``). Returns the SMPL buffers and a summary (:class:`OfficialLoadResult`).

    ``state`` may pass an already-read state dict (then ``path`` is only used in messages).
    Raises InputError (unreadable file) or CheckpointMismatchError (key/shape mismatch, listed).
    """
    official = state if state is not None else read_state_dict(path)
    cfg = network.backbone.cfg
    target = network.state_dict()
    mapped, res = official_to_network_state(official, target, cfg, path)
    if any(t.is_meta for t in target.values()):  # built on "meta" (fast): take the tensors as they are
        network.load_state_dict(mapped, strict=True, assign=True)
        network.requires_grad_(False)
        trainable = getattr(network, "trainable_parameters", None) or network.backbone.trainable_parameters
        for p in trainable():
            p.requires_grad_(True)
    else:
        with torch.no_grad():
            for k, t in target.items():
                t.copy_(mapped[k].to(t.dtype))
    if merge_lora:
        network.backbone.merge_lora()
    log.info("loaded official checkpoint %s: %d LoRA pairs, dropped %s", path, res.lora_pairs, res.dropped)
    return res


def load_official_network(path: str | os.PathLike, config=None, *, merge_lora: bool = False,
                          state: Mapping[str, torch.Tensor] | None = None):
    """Build a DPMeshNetwork for an official checkpoint without random initialisation (modules are built on
    the "meta" device and the file's memory-mapped tensors are assigned) and load it strictly.

    config: a NetworkConfig (default ``preset("sd15")``). Returns ``(network, OfficialLoadResult)``; the
    network is on CPU in the file's dtype, in eval mode, with no body model attached.
    """
    from . import network as network_mod
    from .config import preset

    cfg = copy.deepcopy(config) if config is not None else preset("sd15")
    if merge_lora:
        cfg.backbone.lora_merged = True
    official = state if state is not None else read_state_dict(path)
    net = network_mod._build_empty(cfg)
    res = load_official_checkpoint(path, net, state=official)
    return net.eval(), res


# ---------------------------------------------------------------------------------------------------------
# ours → official (tests, export)
# ---------------------------------------------------------------------------------------------------------
def official_state_dict_from_network(network: nn.Module, smpl: Mapping[str, np.ndarray] | None = None,
                                     *, extras: bool = True, seed: int = 0) -> dict[str, torch.Tensor]:
    """Build a state dict in the official layout (``module.``-prefixed, ldm names, LoRA as
    ``linear``/``lora_down``/``lora_up``) holding ``network``'s weights.

    A merged network gets LoRA pairs drawn from a seeded generator with ``linear.weight = W − up·down``,
    so the official computation W + up·down gives back W. ``smpl`` adds ``human_model_layer.th_*``.
    ``extras`` adds what real files carry and the loader must drop (a CLIP key with ``position_ids``,
    schedule buffers, ``post_quant_conv``, alias keys). Used by tests to fabricate official checkpoints.
    """
    cfg: BackboneConfig = network.backbone.cfg
    inv_u = {v: k for k, v in unet_key_map(cfg).items()}
    inv_c = {v: k for k, v in controlnet_key_map(cfg).items()}
    inv_v = {v: k for k, v in vae_key_map(cfg).items()}
    inv_head = {b: a for a, b in HEAD_RENAMES.items()}
    g = torch.Generator().manual_seed(seed)
    scale = float(cfg.lora_alpha) / cfg.lora_rank
    out: dict[str, torch.Tensor] = {}
    sd = {k: v.detach().clone() for k, v in network.state_dict().items()}

    def fail(k: str):
        raise CheckpointMismatchError(None, unexpected=[k], note="no official name for this key")

    for k, v in sd.items():
        if k.startswith("backbone.unet."):
            sub = k[len("backbone.unet."):]
            if ".lora_A." in sub or ".lora_B." in sub:
                continue
            leaf = next(t for t in (".base_layer.weight", ".base_layer.bias", ".weight", ".bias", "")
                        if sub.endswith(t))
            mod = sub[: len(sub) - len(leaf)] if leaf else sub
            if leaf and any(mod.endswith("." + t) for t in _LORA_TARGET_SUFFIXES):
                leaf = "weight" if leaf.endswith("weight") else "bias"
                ldm = _rename(mod + ".x", inv_u)
                if ldm is None:
                    fail(k)
                ldm = UNET_OFF + ldm[:-2]
                if leaf == "bias":
                    out[f"{ldm}.linear.bias"] = v
                    continue
                a_key = f"backbone.unet.{mod}.lora_A.default.weight"
                if a_key in sd:
                    down = sd[a_key]
                    up = sd[f"backbone.unet.{mod}.lora_B.default.weight"] * scale
                    w = v
                else:  # merged: fabricate a pair that leaves W unchanged
                    down = torch.randn(cfg.lora_rank, v.shape[1], generator=g, dtype=torch.float32) / cfg.lora_rank
                    up = torch.randn(v.shape[0], cfg.lora_rank, generator=g, dtype=torch.float32) * 0.02
                    w = (v.float() - up @ down).to(v.dtype)
                    down, up = down.to(v.dtype), up.to(v.dtype)
                out[f"{ldm}.linear.weight"] = w
                out[f"{ldm}.lora_down.weight"] = down
                out[f"{ldm}.lora_up.weight"] = up
                continue
            ldm = _rename(sub, inv_u)
            if ldm is None:
                fail(k)
            out[UNET_OFF + ldm] = v
        elif k.startswith("backbone.controlnet."):
            ldm = _rename(k[len("backbone.controlnet."):], inv_c)
            if ldm is None:
                fail(k)
            out[CN_OFF + ldm] = v
        elif k.startswith("backbone.vae."):
            sub = k[len("backbone.vae."):]
            ldm = _rename(sub, inv_v)
            if ldm is None:
                fail(k)
            if _is_vae_attn_linear(k) and v.ndim == 2:
                v = v[:, :, None, None]
            out[VAE_OFF + ldm] = v
        else:
            for b, a in inv_head.items():
                if k.startswith(b):
                    k = a + k[len(b):]
                    break
            out[k] = v
    if smpl:
        for name, arr in smpl.items():
            out[SMPL_PREFIX + "th_" + name] = torch.as_tensor(np.asarray(arr))
    if extras:
        lat = cfg.latent_channels
        out[SD + "betas"] = torch.linspace(1e-4, 2e-2, 1000)
        out[SD + "alphas_cumprod"] = torch.cumprod(1 - out[SD + "betas"], 0)
        out[SD + "scale_factor"] = torch.tensor(0.18215)
        out[VAE_OFF + "post_quant_conv.weight"] = torch.randn(lat, lat, 1, 1, generator=g)
        out[VAE_OFF + "post_quant_conv.bias"] = torch.zeros(lat)
        out[SD + "cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(77)[None]
        out[SD + "cond_stage_model.transformer.text_model.final_layer_norm.weight"] = torch.ones(8)
        k0 = next(k for k in out if k.startswith(UNET_OFF))
        out["backbone.unet.unet." + k0[len(SD):]] = out[k0]
        kv = next(k for k in out if k.startswith(VAE_OFF))
        out["backbone.encoder_vq." + kv[len(VAE_OFF):]] = out[kv]
    return {"module." + k: v for k, v in out.items()}


# ---------------------------------------------------------------------------------------------------------
# SD1.5 / ControlNet weights (training from scratch)
# ---------------------------------------------------------------------------------------------------------
_SD15_HOW = ("Point DPMESH_SD15 (or the model-files dialog) at a local Stable Diffusion 1.5 diffusers folder "
             "or v1-5-pruned(.safetensors|.ckpt); nothing is downloaded.")
_CN_HOW = ("Point DPMESH_CONTROLNET at a local ControlNet (diffusers folder or control_sd15_openpose.pth / "
           "control_v11p_sd15_openpose .pth/.safetensors); nothing is downloaded.")


def _strip_prefix(sd: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def _convert_ldm(sd: Mapping[str, torch.Tensor], table: Mapping[str, str], target: Mapping[str, torch.Tensor],
                 path, what: str, ignore: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    out, unexpected = {}, []
    for k, v in sd.items():
        if any(k.startswith(p) for p in ignore):
            continue
        new = _rename(k, table)
        if new is None:
            unexpected.append(k)
            continue
        if _is_vae_attn_linear(new) and v.ndim == 4:
            v = v[:, :, 0, 0]
        out[new] = v
    missing = sorted(set(target) - set(out))
    unexpected += sorted(set(out) - set(target))
    shape = sorted(f"{k}: file {tuple(out[k].shape)} vs model {tuple(target[k].shape)}"
                   for k in set(out) & set(target) if out[k].shape != target[k].shape)
    if missing or unexpected or shape:
        raise CheckpointMismatchError(path, missing, unexpected, shape, note=what)
    return out


def _find_single_file(p: Path) -> bool:
    return p.is_file() and (p.suffix in (".safetensors", ".ckpt", ".pth", ".pt", ".bin", ".tar"))


def load_sd15(path: str | os.PathLike, cfg: BackboneConfig | None = None):
    """SD1.5 VAE (encoder only) and U-Net (no LoRA) from a diffusers folder (``vae/``, ``unet/``) or a single
    ldm ``.safetensors`` / ``.ckpt``. Returns ``(vae, unet)``. Offline: configs come from ``cfg``.

    Raises ModelFilesMissingError if nothing is there, CheckpointMismatchError if the weights do not fit.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from .backbone import build_unet, build_vae_encoder, strip_vae_decoder

    cfg = cfg or BackboneConfig()
    p = Path(path)
    if p.is_dir() and (p / "unet").is_dir() and (p / "vae").is_dir():
        try:
            unet = UNet2DConditionModel.from_pretrained(p, subfolder="unet", local_files_only=True)
            vae = AutoencoderKL.from_pretrained(p, subfolder="vae", local_files_only=True)
        except (OSError, ValueError) as e:
            raise ModelFilesMissingError(f"Stable Diffusion 1.5 weights in {p} ({e})", [p], _SD15_HOW) from e
        return strip_vae_decoder(vae), unet
    if not _find_single_file(p):
        raise ModelFilesMissingError("Stable Diffusion 1.5 weights", [p], _SD15_HOW)
    sd = read_state_dict(p)
    unet, vae = build_unet(cfg), build_vae_encoder(cfg)
    u = _convert_ldm(_strip_prefix(sd, "model.diffusion_model."), unet_key_map(cfg), unet.state_dict(), p,
                     "SD1.5 U-Net")
    v = _convert_ldm(_strip_prefix(sd, "first_stage_model."), vae_key_map(cfg), vae.state_dict(), p,
                     "SD1.5 VAE", ignore=("decoder.", "post_quant_conv."))
    unet.load_state_dict(u, strict=True)
    vae.load_state_dict(v, strict=True)
    return vae, unet


def load_controlnet(path: str | os.PathLike, cfg: BackboneConfig | None = None):
    """A ControlNet initialisation for DPMesh from a diffusers folder (``config.json`` + weights) or a single
    ldm file (``control_model.*`` keys or bare ControlNet-1.1 keys). The hint encoder is dropped; the
    standard 4-channel ``conv_in`` is copied into the latent channels of our (latent+J)-channel ``conv_in``
    and the heatmap channels start at zero. Returns a ControlNetModel without cond embedding.
    """
    from diffusers import ControlNetModel

    from .backbone import build_controlnet

    cfg = cfg or BackboneConfig()
    p = Path(path)
    net = build_controlnet(cfg)
    target = net.state_dict()
    if p.is_dir() and (p / "config.json").is_file():
        try:
            src = ControlNetModel.from_pretrained(p, local_files_only=True).state_dict()
        except (OSError, ValueError) as e:
            raise ModelFilesMissingError(f"ControlNet weights in {p} ({e})", [p], _CN_HOW) from e
        sd = {k: v for k, v in src.items() if not k.startswith("controlnet_cond_embedding.")}
    elif _find_single_file(p):
        raw = read_state_dict(p)
        raw = _strip_prefix(raw, "control_model.") if any(k.startswith("control_model.") for k in raw) else raw
        raw = {k: v for k, v in raw.items() if not k.startswith("input_hint_block.")}
        sd = _convert_ldm(raw, controlnet_key_map(cfg), {**target, "conv_in.weight": raw.get(
            "input_blocks.0.0.weight", target["conv_in.weight"])}, p, "ControlNet")
    else:
        raise ModelFilesMissingError("ControlNet weights", [p], _CN_HOW)
    w = sd.get("conv_in.weight")
    if w is not None and w.shape != target["conv_in.weight"].shape:
        new = torch.zeros_like(target["conv_in.weight"])
        c = min(w.shape[1], new.shape[1])
        new[:, :c] = w[:, :c]
        sd["conv_in.weight"] = new
    missing = sorted(set(target) - set(sd))
    unexpected = sorted(set(sd) - set(target))
    shape = sorted(k for k in set(sd) & set(target) if sd[k].shape != target[k].shape)
    if missing or unexpected or shape:
        raise CheckpointMismatchError(p, missing, unexpected, shape, note="ControlNet")
    net.load_state_dict(sd, strict=True)
    return net


# ---------------------------------------------------------------------------------------------------------
# conversion to our own format
# ---------------------------------------------------------------------------------------------------------
def save_smpl_to_cache(smpl: Mapping[str, np.ndarray]) -> Path:
    """Write the checkpoint's SMPL buffers to the user's cache (``paths.cache_dir("smpl")``), atomically,
    named by content hash. Returns the ``.npz`` path. Never call with a path outside the cache."""
    from ..paths import cache_dir

    h = hashlib.sha256()
    for k in sorted(smpl):
        h.update(k.encode())
        h.update(np.ascontiguousarray(smpl[k]).tobytes())
    out = cache_dir("smpl") / f"dpmesh_smpl_{h.hexdigest()[:16]}.npz"
    if not out.exists():
        tmp = out.with_name(f".{out.name}.tmp{os.getpid()}.npz")
        np.savez(tmp, **{k: np.asarray(v) for k, v in smpl.items()})
        os.replace(tmp, out)
    return out


def convert_official(src: str | os.PathLike, out_dir: str | os.PathLike, *, preset_name: str | None = None,
                     merge_lora: bool = False, ldm_config: str | os.PathLike | Mapping | None = None) -> Path:
    """Convert an official ``*_best_ckpt.pth.tar`` once into our format (``config.json`` +
    ``model.safetensors`` via ``network.save_network``) so later loads are memory-mapped and fast.

    The architecture is read from the file (:func:`infer_network_config`), with ``ldm_config`` (the release's
    ``cldm_v15.yaml`` or a mapping laid out like it) for what shapes cannot tell; ``preset_name`` forces a
    named preset instead. The file is read and checked before any network is built. The SMPL buffers are NOT
    written to ``out_dir``; they go to the user's cache (see :func:`save_smpl_to_cache`). Returns ``out_dir``.
    """
    from . import network as network_mod
    from .config import preset

    state = read_state_dict(src)
    if preset_name:
        cfg = preset(preset_name)
    else:
        ldm = read_ldm_config(ldm_config) if isinstance(ldm_config, (str, os.PathLike)) else ldm_config
        cfg = infer_network_config(state, ldm, src)
    net, res = load_official_network(src, cfg, merge_lora=merge_lora, state=state)
    out = Path(out_dir)
    network_mod.save_network(net, out)
    if res.smpl:
        cached = save_smpl_to_cache(res.smpl)
        log.info("SMPL buffers from %s stored in the user cache: %s", src, cached)
    return out
