"""The DPMesh network assembled: conditions → backbone → fusion → regressor → pose decoder → camera →
body model; and our own checkpoint format (``save_network`` / ``load_network``).

State-dict layout of ``DPMeshNetwork`` (what the official-checkpoint loader maps onto):

* ``backbone.vae.*``, ``backbone.controlnet.*``, ``backbone.unet.*`` (diffusers names; LoRA as peft
  ``…lora_A.default.weight`` / ``…lora_B.default.weight`` unless merged) — see ``backbone.py``.
* ``kp_lifting.weight`` / ``kp_lifting.bias`` (``KeypointPrompt``, "linear" form) — release ``kp_lifting``.
* ``fusion.outmodules.{0,1,2}.*`` — release ``backbone.outmodules.*`` (see ``fusion.py``).
* the regressor at the TOP level, 1:1 with the release (see ``regressor.py``): ``down_linear``,
  ``conv2d_to_3d``, ``conv_3d_coord.0``, ``exponent``, ``pos_embed_1d.pos_table``, ``refine_3d.*``,
  ``spose_shape_cam_param``, ``query.weight``, ``transformer.*``, ``cascade_*_out.*``.
* ``vposer.vposer.bodyprior_*`` (``pose_decoder="vposer"``) — release 1:1; or ``vq.vqvae.*`` ("vq").

The body model is NOT part of the network's state (SMPL is licensed and never written into our
checkpoints): pass it to ``forward`` or attach it with ``set_body_model``.

Our checkpoint format: a folder with ``config.json`` ({"format_version", "config": NetworkConfig,
"lora": "peft" | "merged"}) and ``model.safetensors`` (every tensor of the state dict), loaded strictly and
memory-mapped.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..body.base import BodyModel
from ..config import from_dict, to_dict
from ..errors import ConfigError, InputError, ModelFilesMissingError
from ..torchgeom import rot6d_to_axis_angle
from .backbone import DPMeshBackbone
from .camera import camera_translation, project_to_crop
from .conditions import KeypointPrompt, make_heatmaps
from .config import NetworkConfig, preset
from .fusion import Fusion
from .pose_decoders import VPoserDecoder, VQPoseDecoder
from .regressor import Regressor, RegressorOutput

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


@dataclass
class NetworkOutput:
    """Everything one forward pass gives, per batch of B persons (crop camera unless said otherwise).

    joint_img (B, 15, 3): graph-15 joints, (x, y, depth) in [0, 1] of the 64-grid / depth range.
    root_pose6d (B, 6): DPMesh 6-D root rotation. pose72 (B, 72): SMPL axis-angle (root + 23 joints).
    pose_code: (B, 32) VPoser latent, or (B, T, K) VQ token logits.
    betas (B, 10). cam (B, 3) raw (t_x, t_y, γ). transl (B, 3) metres.
    vertices (B, V, 3) metres, absolute camera frame; vertices_rel root-relative (SMPL-30 joint 0).
    joints30 (B, 30, 3) root-relative metres; joints30_cam (B, 30, 3) absolute.
    joint_proj (B, 30, 2) crop pixels (``input_size`` crop). (Mesh fields are None without a body model.)
    attention: {"8": (B, 30, 8, 8), "16": (B, 30, 16, 16)} probabilities over the 30 joint tokens.
    fused (B, F, 8, 8); feat_2d (B, d, 8, 8) ``down_linear`` output; feat_3d (B, d, D, 8, 8) refined volume.
    latent (B, 4, 32, 32) the VAE latent used (cache it to re-run after a key-point edit).
    """

    joint_img: torch.Tensor
    root_pose6d: torch.Tensor
    pose72: torch.Tensor
    pose_code: torch.Tensor
    betas: torch.Tensor
    cam: torch.Tensor
    transl: torch.Tensor
    vertices: torch.Tensor | None
    vertices_rel: torch.Tensor | None
    joints30: torch.Tensor | None
    joints30_cam: torch.Tensor | None
    joint_proj: torch.Tensor | None
    attention: dict[str, torch.Tensor]
    fused: torch.Tensor
    feat_2d: torch.Tensor
    feat_3d: torch.Tensor
    latent: torch.Tensor


class DPMeshNetwork(Regressor):
    """Backbone + conditions + fusion + regressor + pose decoder + camera (spec §2).

    It *is* a :class:`Regressor` (so the regressor's modules sit at the top level of the state dict, as
    in the release) with ``backbone``, ``kp_lifting``, ``fusion`` and ``vposer`` (or ``vq``) added.

    Trainable: LoRA, ControlNet, ``kp_lifting``, fusion, regressor. Frozen: VAE, U-Net base weights,
    pose decoder.
    """

    def __init__(self, config: NetworkConfig | str = "tiny", *, backbone: DPMeshBackbone | None = None,
                 body_model: BodyModel | None = None):
        cfg = preset(config) if isinstance(config, str) else config
        super().__init__(cfg.head)
        self.config = cfg
        self.backbone = backbone if backbone is not None else DPMeshBackbone(cfg.backbone)
        self.kp_lifting = KeypointPrompt(cfg.context_dim, cfg.head.kp_lifting, grid=cfg.head.heatmap_size)
        self.fusion = Fusion(self.backbone.feature_channels, cfg.head.fused_channels, cfg.head.fusion_groups)
        if cfg.head.pose_decoder == "vposer":
            self.vposer = VPoserDecoder(cfg.head.vposer_latent, cfg.head.vposer_hidden)
        else:
            self.vq = VQPoseDecoder(cfg.head.vq_tokens, cfg.head.vq_codebook, cfg.head.vq_dim)
        self._body: list[BodyModel] = []  # kept out of the module tree: never saved
        if body_model is not None:
            self.set_body_model(body_model)

    # ---- body model --------------------------------------------------------------------------------
    def set_body_model(self, body_model: BodyModel | None) -> None:
        """Attach the body model used when ``forward`` gets none (not saved with the network)."""
        self._body = [] if body_model is None else [body_model]

    @property
    def body_model(self) -> BodyModel | None:
        return self._body[0] if self._body else None

    # ---- parameter sets ----------------------------------------------------------------------------
    @property
    def pose_decoder(self) -> nn.Module:
        return self.vposer if self.config.head.pose_decoder == "vposer" else self.vq

    def head_modules(self) -> dict[str, nn.Module]:
        """The trainable head parts by release name (kp_lifting, regressor modules; not fusion)."""
        skip = {"backbone", "fusion", "vposer", "vq"}
        return {n: m for n, m in self.named_children() if n not in skip}

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters by group: "lora", "controlnet", "fusion", "head" (kp_lifting + regressor,
        incl. the loose ``exponent`` and ``spose_shape_cam_param``)."""
        own = [self.exponent, self.spose_shape_cam_param]
        head = own + [p for m in self.head_modules().values() for p in m.parameters()]
        return {
            "lora": self.backbone.lora_parameters(),
            "controlnet": list(self.backbone.controlnet.parameters()),
            "fusion": list(self.fusion.parameters()),
            "head": head,
        }

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for g in self.parameter_groups().values() for p in g]

    def train(self, mode: bool = True) -> DPMeshNetwork:
        super().train(mode)
        self.pose_decoder.eval()  # always (spec §2.10)
        return self

    # ---- forward -----------------------------------------------------------------------------------
    def conditions(self, joints_crop: torch.Tensor, joints_mask: torch.Tensor,
                   heatmap_dropout: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        """joints_crop (B, 30, 2) crop px, joints_mask (B, 30) bool → (heatmaps (B, 30, h, h), context
        (B, 30, D)). The heatmap mask is also cleared outside [0, h); ``heatmap_dropout`` zeroes a random
        fraction of heatmaps (training only; the context is never masked, as released)."""
        h = self.config.head
        j32 = joints_crop[..., :2].float() * (h.heatmap_size / h.input_size)
        inside = (j32 >= 0).all(-1) & (j32 < h.heatmap_size).all(-1)
        mask = joints_mask.bool() & inside
        if heatmap_dropout > 0:
            mask = mask & (torch.rand(mask.shape, device=mask.device) >= heatmap_dropout)
        heat = make_heatmaps(j32, mask, size=h.heatmap_size, sigma=h.sigma)
        return heat, self.kp_lifting(j32)

    def encode(self, image01: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) RGB in [0, 1] → VAE latent (B, 4, S/8, S/8) (no grad; cache it for re-runs)."""
        return self.backbone.encode(image01)

    def forward(
        self,
        image01: torch.Tensor | None = None,
        joints_crop: torch.Tensor | None = None,
        joints_mask: torch.Tensor | None = None,
        focal: torch.Tensor | None = None,
        body_model: BodyModel | None = None,
        *,
        latent: torch.Tensor | None = None,
        heatmap_dropout: float | None = None,
    ) -> NetworkOutput:
        """Run the network on B person crops.

        image01 (B, 3, 256, 256) RGB in [0, 1] — or ``latent`` (B, 4, 32, 32) from ``encode`` (skips the
        VAE: a key-point edit re-runs only ControlNet + U-Net + head);
        joints_crop (B, 30, 2) SMPL-30 key-points in crop pixels; joints_mask (B, 30) bool (valid);
        focal (B,) pixels (f = sqrt(W² + H²) of the full image); body_model: SMPL-like BodyModel giving the
        "smpl30" joint set (defaults to the attached one; without one the mesh fields are None).
        heatmap_dropout: fraction of heatmaps zeroed (default 0.1 in training mode, 0 in eval).
        """
        if joints_crop is None or joints_mask is None or focal is None:
            raise TypeError("joints_crop, joints_mask and focal are required")
        if latent is None:
            if image01 is None:
                raise TypeError("give image01 or latent")
            latent = self.encode(image01)
        if heatmap_dropout is None:
            heatmap_dropout = 0.1 if self.training else 0.0
        heat, context = self.conditions(joints_crop, joints_mask, heatmap_dropout)
        dtype = self.fusion.outmodules[2][0].weight.dtype
        bb = self.backbone(latent, heat, context)
        fused = self.fusion({k: v.to(dtype) for k, v in bb.features.items()})
        reg: RegressorOutput = self.regress(fused)
        return self.decode(reg, focal, body_model, attention=bb.attention, fused=fused, latent=latent)

    def decode(self, reg: RegressorOutput, focal: torch.Tensor, body_model: BodyModel | None = None, *,
               attention: dict[str, torch.Tensor] | None = None, fused: torch.Tensor | None = None,
               latent: torch.Tensor | None = None) -> NetworkOutput:
        """Regressor outputs → SMPL parameters, camera and (with a body model) mesh, in fp32."""
        h = self.config.head
        B = reg.cam.shape[0]
        focal = torch.as_tensor(focal, device=reg.cam.device, dtype=torch.float32).reshape(-1).expand(B)
        root_aa = rot6d_to_axis_angle(reg.root_pose6d.float())
        body_pose = self.pose_decoder(reg.pose_code)
        pose72 = torch.cat([root_aa, body_pose.float()], dim=1)
        betas = reg.betas.float()
        cam = reg.cam.float()
        transl = camera_translation(cam, focal, h.camera_3d_size, h.input_size)
        body = body_model if body_model is not None else self.body_model
        verts = verts_rel = j30 = j30_cam = proj = None
        if body is not None:
            out = body(pose72[:, :3], pose72[:, 3:], betas, transl, joint_sets=("smpl30",), return_vertices=True)
            # as released: all 30 joints regressed from the posed mesh (not the kinematic skeleton)
            from_mesh = getattr(body, "joints_from_mesh", None)
            j30_cam = from_mesh(out.vertices) if from_mesh is not None else out.joints["smpl30"]
            root = j30_cam[:, :1]
            j30 = j30_cam - root
            verts = out.vertices
            verts_rel = verts - root
            proj = project_to_crop(j30_cam, focal, h.input_size)
        empty = reg.cam.new_zeros(B, 0)
        return NetworkOutput(
            joint_img=reg.joint_img, root_pose6d=reg.root_pose6d, pose72=pose72, pose_code=reg.pose_code,
            betas=betas, cam=cam, transl=transl, vertices=verts, vertices_rel=verts_rel, joints30=j30,
            joints30_cam=j30_cam, joint_proj=proj, attention=attention or {},
            fused=fused if fused is not None else empty, feat_2d=reg.feat_2d, feat_3d=reg.feat_3d,
            latent=latent if latent is not None else empty)


# ------------------------------------------------------------------------------------ our checkpoints


def _atomic_write_bytes(path: Path, write) -> None:  # noqa: ANN001 - write(tmp_path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_network(net: DPMeshNetwork, directory: str | os.PathLike) -> Path:
    """Write ``net`` to ``directory`` (created) as ``config.json`` + ``model.safetensors``, atomically
    per file (weights first, config last). LoRA is stored as peft keys, or merged — as the network has it.
    The body model is never written. Returns the folder."""
    from safetensors.torch import save_file

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
    # safetensors refuses tensors sharing storage: give each its own
    seen: set[int] = set()
    for k, v in state.items():
        ptr = v.untyped_storage().data_ptr()
        if ptr in seen and v.numel() > 0:
            state[k] = v.clone()
        seen.add(ptr)
    merged = bool(net.backbone.lora_merged)
    net.config.backbone.lora_merged = merged
    meta = {"format_version": str(FORMAT_VERSION), "lora": "merged" if merged else "peft"}
    _atomic_write_bytes(d / WEIGHTS_NAME, lambda p: save_file(state, str(p), metadata=meta))
    doc = {"format_version": FORMAT_VERSION, "lora": meta["lora"], "config": to_dict(net.config)}
    text = json.dumps(doc, indent=2)
    _atomic_write_bytes(d / CONFIG_NAME, lambda p: p.write_text(text, encoding="utf-8"))
    log.info("saved DPMesh network (%s, LoRA %s) to %s", net.config.preset, meta["lora"], d)
    return d


def read_network_config(directory: str | os.PathLike) -> NetworkConfig:
    """The NetworkConfig of a saved network folder (ModelFilesMissingError / ConfigError)."""
    d = Path(directory)
    cfg_path = d / CONFIG_NAME
    if not cfg_path.is_file():
        raise ModelFilesMissingError(f"DPMesh network folder {d} ({CONFIG_NAME})", [str(cfg_path)],
                                     "Save one with save_network or convert an official checkpoint with "
                                     "`dpmesh convert OFFICIAL.pth.tar OUT_DIR`.")
    try:
        doc = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ConfigError(f"not a readable JSON config: {e}", source=str(cfg_path)) from e
    if not isinstance(doc, dict) or "config" not in doc:
        raise ConfigError("missing 'config' (not a DPMesh network folder?)", source=str(cfg_path))
    ver = doc.get("format_version")
    if not isinstance(ver, int) or ver > FORMAT_VERSION:
        raise ConfigError(f"format_version {ver!r} not supported (this version reads ≤ {FORMAT_VERSION})",
                          "format_version", str(cfg_path))
    return from_dict(NetworkConfig, doc["config"], source=str(cfg_path))


def check_state_dict(net: nn.Module, state: dict[str, Any], path: str | os.PathLike | None) -> None:
    """Raise CheckpointMismatchError listing missing, unexpected and mis-shaped keys (strict); folders saved by
    earlier versions with pos_table/smpl_tgt/kp_tgt as (1, …) still pass (same elements, reshaped on load)."""
    from ..state_dict import check_state_dict as _check
    from .regressor import _RESHAPE_TOLERANT

    _check(net, state, path, reshape_ok=_RESHAPE_TOLERANT)


def load_network(directory: str | os.PathLike, device: str | torch.device = "cpu",
                 dtype: torch.dtype | None = None, body_model: BodyModel | None = None) -> DPMeshNetwork:
    """Load a folder written by ``save_network`` strictly (memory-mapped safetensors), on ``device`` in
    ``dtype`` (default: as stored), in eval mode. Missing files → ModelFilesMissingError; corrupt file →
    InputError naming it; keys/shapes that do not match the config → CheckpointMismatchError."""
    d = Path(directory)
    cfg = read_network_config(d)
    wpath = d / WEIGHTS_NAME
    if not wpath.is_file():
        raise ModelFilesMissingError(f"network weights {WEIGHTS_NAME}", [str(wpath)],
                                     "The folder is incomplete; save or convert it again.")
    state = read_safetensors_mmap(wpath)
    net = _build_empty(cfg)
    check_state_dict(net, state, wpath)
    net.load_state_dict(state, strict=True, assign=True)
    if any(t.is_meta for t in list(net.parameters()) + list(net.buffers())):  # pragma: no cover - safety net
        net = DPMeshNetwork(cfg)
        net.load_state_dict(state, strict=True)
    _refreeze(net)
    net.to(device=device, dtype=dtype)
    if body_model is not None:
        net.set_body_model(body_model)
    return net.eval()


_ST_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


def read_safetensors_mmap(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Memory-map a ``.safetensors`` file: tensors are views of the mapped file (copy-on-write, pages read
    on first touch), so loading is near-instant and the file is never modified. The header is validated
    (offsets inside the file, sizes matching shapes): a truncated or foreign file raises InputError."""
    import mmap

    p = Path(path)
    try:
        size = p.stat().st_size
        with open(p, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise ValueError("file shorter than a safetensors header")
            n = int.from_bytes(head, "little")
            if n <= 0 or 8 + n > size or n > 100_000_000:
                raise ValueError(f"header length {n} does not fit a {size}-byte file")
            header = json.loads(fh.read(n).decode("utf-8"))
            mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_COPY)
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise InputError(f"not a readable safetensors file ({e})", path=p) from e
    if not isinstance(header, dict):
        raise InputError("not a readable safetensors file (header is not a mapping)", path=p)
    base = 8 + n
    out: dict[str, torch.Tensor] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dt = _ST_DTYPES[info["dtype"]]
            shape = [int(x) for x in info["shape"]]
            a, b = (int(x) for x in info["data_offsets"])
        except (KeyError, TypeError, ValueError) as e:
            raise InputError(f"malformed safetensors header entry {name!r} ({e})", path=p) from e
        count = 1
        for x in shape:
            count *= x
        itemsize = torch.empty((), dtype=dt).element_size()
        if a < 0 or b < a or base + b > size or (b - a) != count * itemsize:
            raise InputError(f"tensor {name!r} lies outside the file or has a wrong size (truncated?)", path=p)
        if count == 0:
            out[name] = torch.empty(shape, dtype=dt)
            continue
        t = torch.frombuffer(mm, dtype=torch.uint8, count=b - a, offset=base + a)
        out[name] = t.view(dt).reshape(shape)
    return out


def _build_empty(cfg: NetworkConfig) -> DPMeshNetwork:
    """Build the architecture without spending time on random initialisation (meta tensors; the state
    dict is then assigned)."""
    try:
        with torch.device("meta"):
            return DPMeshNetwork(cfg)
    except Exception:  # noqa: BLE001 - some module refused meta construction: build normally
        log.debug("meta construction failed; building with real tensors", exc_info=True)
        return DPMeshNetwork(cfg)


def _refreeze(net: DPMeshNetwork) -> None:
    """``load_state_dict(assign=True)`` takes the requires_grad of the loaded tensors: restore ours."""
    net.requires_grad_(False)
    for p in net.trainable_parameters():
        p.requires_grad_(True)
