"""``DPMeshPredictor``: the DPMesh network behind the ``Estimator`` interface (types.Estimator).

Per frame: every person's key-points → SMPL-30 (Pelvis/Neck synthesised) → square crop box (spec §2.1:
tight box of the valid key-points ×1.2, clipped, squared, ×1.1) → 256 crop (cv2.warpAffine, bilinear)
→ ONE batched network pass for all persons → mesh placed in the full-image camera.

Fast re-inference after a key-point edit: the VAE latent is cached per (frame, crop box) in an LRU, and
the crop box a person got on a frame is remembered (keyed by frame and the person's own ``box``/track),
so an edit re-runs only ControlNet + U-Net + head. Pass ``keep_box=False`` (or call ``forget``) to
recompute the crop from the edited key-points.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..body import joints as J
from ..body.base import BodyModel
from ..devices import resolve_device_dtype  # the core's one device/dtype policy (re-exported here)
from ..errors import ConfigError, DPMeshError, EstimationError, InputError, ModelFilesMissingError
from ..geometry import project
from ..types import BodyParams, Camera, MeshResult, Person
from .camera import place_in_image, release_principal, release_render_translation
from .network import CONFIG_NAME, DPMeshNetwork, load_network
from .preprocess import CONF_THRESHOLD, corners_to_xywh, crop_image, prepare_person, release_confidence

log = logging.getLogger(__name__)

#: SMPL kinematic tree (parent of each of the 24 joints; the root's is -1).
SMPL_PARENTS = (-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21)
MIN_VISIBLE = 2


def smpl_arrays_from_official(smpl: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The official checkpoint's SMPL buffers (smplpytorch layout, keys without ``th_``) → the 7 arrays
    ``SMPLBody.from_arrays`` takes (adds the standard SMPL ``kintree_table``)."""
    try:
        parents = np.array(SMPL_PARENTS, np.int64)
        parents[0] = 4294967295
        return {
            # smplpytorch stores th_v_template as (1, 6890, 3)
            "v_template": np.asarray(smpl["v_template"], np.float32).reshape(-1, 3),
            "shapedirs": np.asarray(smpl["shapedirs"], np.float32),
            "posedirs": np.asarray(smpl["posedirs"], np.float32).reshape(-1, 3, 207),
            "J_regressor": np.asarray(smpl["J_regressor"], np.float32),
            "weights": np.asarray(smpl["weights"], np.float32),
            "kintree_table": np.stack([parents, np.arange(24)]),
            "f": np.asarray(smpl.get("faces", smpl.get("f")), np.int64),
        }
    except (KeyError, ValueError, TypeError) as e:
        raise InputError(f"checkpoint SMPL buffers incomplete or malformed ({e})") from e


@dataclass
class _Prepared:
    """One person ready for the network."""

    index: int
    box: np.ndarray  # (4,) square crop box (x0, y0, x1, y1), image px
    bbox: np.ndarray  # (4,) the same box as the release holds it: (x, y, w, h) float32
    affine: np.ndarray  # (2, 3) float32 image → crop (the release's)
    inverse: np.ndarray  # (2, 3) float32 crop → image
    joints_crop: np.ndarray  # (30, 2) crop px
    mask: np.ndarray  # (30,) bool
    latent_key: tuple


def _image_key(image: np.ndarray) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(str(image.shape).encode())
    h.update(np.ascontiguousarray(image).data)
    return h.hexdigest()


class DPMeshPredictor:
    """The DPMesh network as an ``Estimator`` (``name = "dpmesh"``).

    network_or_path: a ``DPMeshNetwork``, a folder saved by ``save_network`` / ``dpmesh convert``, or an
        official ``*_best_ckpt.pth.tar`` (read with weights_only=True; its SMPL buffers give the body model).
    body_model: a SMPL ``BodyModel`` or a body-model name ("smpl", "synthetic-smpl"); default: the
        official file's SMPL buffers, else the user's SMPL file (``ModelFiles.smpl`` / DPMESH_SMPL), else
        SMPL buffers a ``dpmesh convert`` left in the user's cache. The network's mesh is SMPL.
    device / dtype: default CUDA bf16 (fp16 without bf16 support), else CPU fp32; strings accepted.
    refine / fitter: run ``fitter.refine(image, persons, initial)`` after the network (estimator
        "dpmesh+fit"); ``fitter`` must then be given (a KeypointFitter on the same body model).
    cache_size: VAE latents kept (LRU over (frame, crop box)).
    ldm_config: the release's ``cldm_v15.yaml`` (or a file laid out like it) for an official ``.pth.tar``:
        what the file's shapes cannot tell (attention heads). Default: the released values.
    autocast: run as the release evaluates on GPU — fp32 weights under CUDA fp16 autocast (CUDA only).

    Each ``MeshResult.params.extra`` keeps the release's own numbers beside our placement: ``smpl_pose``
    (72 axis-angle), ``smpl_shape`` (10), ``cam_param`` (raw), ``cam_trans_crop`` (the release's
    ``cam_trans``, crop camera), ``render_cam_trans`` + ``render_principal`` (the release's full-image
    placement: same f, principal point at the crop box centre), ``bbox_xywh`` (the release's square box),
    ``joint_cam`` (30 root-relative joints, m), ``joint_img`` (15, 3) and ``pose_code`` (VPoser latent).
    Our meshes differ only by a rigid shift of the whole body (see ``camera.place_in_image``): every person
    of an image shares the image's own camera, so several people stay in one consistent space.

    A network passed in is moved to ``device``/``dtype`` in place.
    """

    name = "dpmesh"

    def __init__(self, network_or_path: DPMeshNetwork | str | os.PathLike,
                 body_model: BodyModel | str | None = None, device: str | torch.device | None = None,
                 dtype: str | torch.dtype | None = None, refine: bool = False, fitter: Any = None,
                 cache_size: int = 64, box_scale: float = 1.1, merge_lora: bool = True,
                 ldm_config: str | os.PathLike | None = None, autocast: bool = False):
        self.device, self.dtype = resolve_device_dtype(device, dtype)
        self.ldm_config = ldm_config
        # the release evaluates under torch.cuda.amp.autocast (fp16) with fp32 weights: offered as an option
        self.autocast = bool(autocast)
        if self.autocast:
            if self.device.type != "cuda":
                raise ConfigError("autocast (the release's fp16 evaluation) needs a CUDA device", "autocast")
            self.dtype = torch.float32
        if refine and fitter is None:
            raise ConfigError("refine=True needs a fitter (e.g. KeypointFitter on the same SMPL model)", "refine")
        self.refine = refine
        self.fitter = fitter
        self.box_scale = float(box_scale)
        self.cache_size = int(cache_size)
        self._latents: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self._boxes: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._results: OrderedDict[tuple, MeshResult] = OrderedDict()
        smpl_arrays = None
        if isinstance(network_or_path, DPMeshNetwork):
            net = network_or_path
        else:
            net, smpl_arrays = self._load(Path(network_or_path), merge_lora)
        self.network = net.to(device=self.device, dtype=self.dtype).eval()
        body = self._resolve_body(body_model, smpl_arrays)
        if "smpl30" not in getattr(body, "joint_sets", ()) or getattr(body, "pose_dim", None) != 69:
            raise ConfigError(f"the DPMesh network's mesh is SMPL: body model {getattr(body, 'name', body)!r} "
                              "is not SMPL-like (needs 69 body-pose values and the smpl30 joint set)", "body_model")
        self.body_model = body.to(self.device)
        self.network.set_body_model(self.body_model)
        self.head_top_source = getattr(body, "head_top_source", "")
        if self.head_top_source.startswith("vertex"):
            log.warning("J_regressor_extra.npy not given: the head-top joint of the DPMesh network's SMPL-30 set is "
                        "%s instead of SPIN's regressor row (set DPMESH_J_REGRESSOR_EXTRA or the Models dialog)",
                        self.head_top_source)

    # ---- loading -----------------------------------------------------------------------------------
    def _load(self, path: Path, merge_lora: bool) -> tuple[DPMeshNetwork, dict | None]:
        if path.is_dir() and not (path / CONFIG_NAME).is_file():
            # a folder as the release ships it: one official checkpoint, and maybe its cldm_v15.yaml
            ckpts = sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith((".pth.tar", ".pth", ".pt")))
            if len(ckpts) != 1:
                raise ModelFilesMissingError(
                    f"DPMesh network folder ({CONFIG_NAME}, or exactly one official *.pth.tar)", [str(path)],
                    "Point --model at the .pth.tar itself, or convert it with `dpmesh convert FILE OUT_DIR`.")
            yamls = sorted(path.glob("*.yaml")) + sorted(path.glob("*.yml"))
            if self.ldm_config is None and len(yamls) == 1:
                self.ldm_config = yamls[0]
            path = ckpts[0]
        if path.is_dir():
            return load_network(path, device="cpu"), None
        if not path.exists():
            raise ModelFilesMissingError("DPMesh checkpoint", [str(path)],
                                         "Download an official *_best_ckpt.pth.tar from the DPMesh authors "
                                         "or convert/train one, then pass its path.")
        from .checkpoint import infer_network_config, load_official_network, read_ldm_config, read_state_dict

        # read (weights_only, memory-mapped) and check the file's architecture before any network is built
        state = read_state_dict(path)
        ldm = read_ldm_config(self.ldm_config) if self.ldm_config else None
        cfg = infer_network_config(state, ldm, path)
        net, res = load_official_network(path, cfg, merge_lora=merge_lora, state=state)
        del state
        return net.eval(), (smpl_arrays_from_official(res.smpl) if res.smpl else None)

    def _resolve_body(self, body_model: BodyModel | str | None, smpl_arrays: dict | None) -> BodyModel:
        from ..body import load_body_model

        if isinstance(body_model, BodyModel):
            return body_model
        if isinstance(body_model, str):
            return load_body_model(body_model)
        from ..config import ModelFiles

        files = ModelFiles.load()
        extra = files.j_regressor_extra or None
        if smpl_arrays is not None:
            from ..body.smpl_model import SMPLBody, _load_regressor

            return SMPLBody.from_arrays(smpl_arrays, source="DPMesh checkpoint (human_model_layer)",
                                        j_regressor_extra=_load_regressor(extra))
        if files.smpl:
            return load_body_model("smpl")
        from ..paths import cache_dir

        cached = sorted(cache_dir("smpl", create=False).glob("dpmesh_smpl_*.npz"),
                        key=lambda p: p.stat().st_mtime) if cache_dir("smpl", create=False).is_dir() else []
        if cached:
            from ..body.smpl_model import SMPLBody, _load_regressor

            with np.load(cached[-1]) as z:
                arrays = {k: z[k] for k in z.files}
            return SMPLBody.from_arrays(smpl_arrays_from_official(arrays), source=str(cached[-1]),
                                        j_regressor_extra=_load_regressor(extra))
        raise ModelFilesMissingError(
            "SMPL neutral model (the DPMesh network's mesh is SMPL)",
            ["body_model argument", "DPMESH_SMPL", "model_files.json", str(cache_dir("smpl", create=False))],
            "Point DPMESH_SMPL (or the Models dialog) at basicModel_neutral_lbs_10_207_0_v1.0.0.pkl "
            "(licensed, smpl.is.tue.mpg.de), or run `dpmesh convert` on an official checkpoint.")

    # ---- caches ------------------------------------------------------------------------------------
    def forget(self, frame_key: str | None = None) -> None:
        """Drop cached latents, results and remembered crop boxes (of one frame, or all)."""
        for cache in (self._latents, self._boxes, self._results):
            for k in [k for k in cache if frame_key is None or k[0] == frame_key]:
                del cache[k]

    def _lru_put(self, cache: OrderedDict, key: tuple, value: Any) -> None:
        cache[key] = value
        cache.move_to_end(key)
        while len(cache) > self.cache_size:
            cache.popitem(last=False)

    @property
    def cached_latents(self) -> int:
        return len(self._latents)

    # ---- preparation -------------------------------------------------------------------------------
    def _prepare(self, i: int, person: Person, image_size: tuple[int, int], frame_key: str,
                 box: np.ndarray | None, keep_box: bool) -> _Prepared:
        """The release's test-time preprocessing (``preprocess.prepare_person``): SMPL-30 key-points with the
        synthesised Pelvis/Neck, valid = conf > 0.05, the release's box rule, its float32 affine."""
        try:
            J.joint_names(person.joint_set)
        except KeyError:
            raise EstimationError(f"unknown joint set {person.joint_set!r}", person_index=i) from None
        kp = np.array(person.keypoints, np.float32)
        w = release_confidence(person)
        valid = w > CONF_THRESHOLD
        if int(valid.sum()) < MIN_VISIBLE:
            raise EstimationError(f"only {int(valid.sum())} visible key-point(s); DPMesh needs at least "
                                  f"{MIN_VISIBLE}", person_index=i)
        kp_w = np.concatenate([np.nan_to_num(kp[:, :2]), w[:, None]], axis=1)
        # who this is on this frame: a track, else its place in the list and its own box (two persons with
        # the same box — e.g. added by hand — must not share a remembered crop)
        slot = (frame_key, person.track_id if person.track_id is not None else -1 - i,
                tuple(np.round(person.box, 2).tolist()))
        bbox = None  # the release's (x, y, w, h)
        if box is None and keep_box and slot in self._boxes:
            bbox = self._boxes[slot]
        elif box is not None:
            box = np.asarray(box, np.float32)
            if box.shape != (4,) or not np.isfinite(box).all() or box[2] <= box[0] or box[3] <= box[1]:
                raise EstimationError(f"bad crop box {box.tolist()}", person_index=i)
            bbox = corners_to_xywh(box)
        size = self.network.config.head.input_size
        grid = self.network.config.head.heatmap_size
        try:
            prep = prepare_person(kp_w, person.joint_set, image_size, bbox=bbox, input_size=size, grid=grid,
                                  scale=self.box_scale)
        except ValueError as e:
            raise EstimationError(str(e), person_index=i) from None
        if not prep.valid.any():
            raise EstimationError("no key-point of the DPMesh joint set is visible", person_index=i)
        self._lru_put(self._boxes, slot, prep.bbox)
        joints_crop = (prep.grid[:, :2] * (size / grid)).astype(np.float32)
        return _Prepared(i, prep.box, prep.bbox, prep.affine, prep.inverse, joints_crop, prep.mask,
                         (frame_key, tuple(prep.bbox.tolist())))

    @staticmethod
    def _result_key(p: _Prepared, person: Person, cam: Camera) -> tuple:
        return (p.latent_key[0], p.latent_key[1], p.joints_crop.tobytes(), p.mask.tobytes(), person.joint_set,
                person.track_id, cam.focal, cam.principal)

    def _latents_for(self, image: np.ndarray, preps: list[_Prepared]) -> torch.Tensor:
        size = self.network.config.head.input_size
        missing = [p for p in preps if p.latent_key not in self._latents]
        if missing:
            # the release warps the float image (not uint8) and divides by 255: RGB in [0, 1]
            crops = np.stack([crop_image(image, p.affine, size) for p in missing])
            x = torch.from_numpy(crops).to(self.device)
            with torch.no_grad():
                lat = self.network.encode(x.to(self.dtype))
            for p, z in zip(missing, lat):
                self._lru_put(self._latents, p.latent_key, z.detach())
        out = []
        for p in preps:
            self._latents.move_to_end(p.latent_key)
            out.append(self._latents[p.latent_key])
        return torch.stack(out)

    # ---- estimation --------------------------------------------------------------------------------
    def estimate(
        self,
        image: np.ndarray,
        persons: Sequence[Person],
        camera: Camera | None = None,
        previous: Sequence[MeshResult | None] | None = None,
        *,
        boxes: Sequence[np.ndarray | None] | None = None,
        frame_key: str | None = None,
        keep_box: bool = True,
    ) -> list[MeshResult | EstimationError]:
        """One MeshResult (or that person's EstimationError) per person, in order.

        image: (H, W, 3) uint8 RGB. camera: full-image camera (default f = sqrt(W² + H²), centred).
        previous: unused by the network (accepted for the interface).
        boxes: optional fixed square crop boxes per person (None entries: automatic).
        frame_key: identifies the frame for the caches (default: a hash of the image).
        keep_box: reuse the crop box this person got earlier on this frame (so a key-point edit hits the
            latent cache); False recomputes it from the key-points.
        """
        del previous
        img = np.asarray(image)
        if img.ndim != 3 or img.shape[2] != 3:
            raise InputError(f"expected an (H, W, 3) RGB image, got shape {img.shape}")
        if img.dtype != np.uint8:
            img = np.clip(img, 0, 255).astype(np.uint8)
        H, W = img.shape[:2]
        cam = camera if camera is not None else Camera.default_for(W, H)
        key = frame_key if frame_key is not None else _image_key(img)
        results: list[MeshResult | EstimationError | None] = [None] * len(persons)
        preps: list[_Prepared] = []
        for i, person in enumerate(persons):
            try:
                preps.append(self._prepare(i, person, (W, H), key, None if boxes is None else boxes[i], keep_box))
            except EstimationError as e:
                results[i] = e
        # persons whose inputs did not change since the last call (same latent, key-points, camera) reuse
        # their result: after an edit only the edited person runs
        todo = []
        for p in preps:
            hit = self._results.get(self._result_key(p, persons[p.index], cam))
            if hit is not None:
                self._results.move_to_end(self._result_key(p, persons[p.index], cam))
                results[p.index] = hit
            else:
                todo.append(p)
        if todo:
            try:
                meshes = self._run(img, todo, [persons[p.index] for p in todo], cam)
            except DPMeshError:
                raise
            except (RuntimeError, ValueError) as e:  # numerical failure of the batch: report per person
                log.exception("DPMesh network failed")
                meshes = [EstimationError(f"network failed: {e}", person_index=p.index) for p in todo]
            for p, m in zip(todo, meshes):
                results[p.index] = m
                if isinstance(m, MeshResult):
                    self._lru_put(self._results, self._result_key(p, persons[p.index], cam), m)
        if self.refine:
            ok = [i for i, r in enumerate(results) if isinstance(r, MeshResult)]
            if ok:
                refined = self.fitter.refine(img, [persons[i] for i in ok], [results[i] for i in ok])
                for i, r in zip(ok, refined):
                    results[i] = r
        return results  # type: ignore[return-value]

    def rerun(self, image: np.ndarray, persons: Sequence[Person], camera: Camera | None = None,
              **kw: Any) -> list[MeshResult | EstimationError]:
        """``estimate`` after a key-point edit: keeps each person's crop box, so the cached latent is reused
        (only ControlNet + U-Net + head run)."""
        kw.setdefault("keep_box", True)
        return self.estimate(image, persons, camera, **kw)

    @torch.no_grad()
    def _run(self, image: np.ndarray, preps: list[_Prepared], persons: list[Person], cam: Camera
             ) -> list[MeshResult]:
        net = self.network
        dev = self.device
        latent = self._latents_for(image, preps)
        joints = torch.from_numpy(np.stack([p.joints_crop for p in preps])).to(dev)
        mask = torch.from_numpy(np.stack([p.mask for p in preps])).to(dev)
        f = float(np.sqrt(cam.focal[0] * cam.focal[1]))
        B = len(preps)
        focal = torch.full((B,), f, device=dev)
        if self.autocast:
            with torch.autocast("cuda", dtype=torch.float16):
                out = net(None, joints, mask, focal, self.body_model, latent=latent)
        else:
            out = net(None, joints, mask, focal, self.body_model, latent=latent)
        boxes = torch.from_numpy(np.stack([p.box for p in preps])).to(dev)
        principal = torch.tensor(cam.principal, dtype=torch.float32, device=dev).expand(B, 2)
        root_crop = out.joints30_cam[:, 0]
        root_img = place_in_image(root_crop, focal, boxes, principal, net.config.head.input_size)
        shift = root_img - root_crop
        verts = (out.vertices + shift[:, None]).float().cpu().numpy()
        j3d = (out.joints30_cam + shift[:, None]).float().cpu().numpy()
        transl = (out.transl + shift).float().cpu().numpy()
        pose72 = out.pose72.float().cpu().numpy()
        betas = out.betas.float().cpu().numpy()
        code = out.pose_code.float().cpu().numpy()
        cam_raw = out.cam.float().cpu().numpy()
        joint_img = out.joint_img.float().cpu().numpy()
        bbox_xywh = torch.from_numpy(np.stack([p.bbox for p in preps])).to(dev)
        render_t = release_render_translation(out.transl.float(), bbox_xywh, net.config.head.input_size)
        render_c = release_principal(bbox_xywh)
        transl_crop = out.transl.float().cpu().numpy()
        render_t, render_c = render_t.cpu().numpy(), render_c.cpu().numpy()
        joint_rel = out.joints30.float().cpu().numpy()
        att = {k: v.float().cpu().numpy() for k, v in out.attention.items()}
        faces = self.body_model.faces
        res = []
        for b, (p, person) in enumerate(zip(preps, persons)):
            j2d = project(j3d[b], cam.focal, cam.principal).astype(np.float32)
            m = J.mapping("smpl30", person.joint_set)
            kp2d = np.full((len(m), 2), np.nan, np.float32)
            kp2d[m >= 0] = j2d[m[m >= 0]]
            params = BodyParams(
                model=getattr(self.body_model, "name", "smpl"), global_orient=pose72[b, :3],
                body_pose=pose72[b, 3:], betas=betas[b], transl=transl[b],
                extra={"pose_code": code[b], "cam_raw": cam_raw[b], "crop_box": p.box.astype(np.float32),
                       "joint_img": joint_img[b], "smpl_pose": pose72[b], "smpl_shape": betas[b],
                       "cam_param": cam_raw[b], "cam_trans_crop": transl_crop[b], "bbox_xywh": p.bbox,
                       "render_cam_trans": render_t[b], "render_principal": render_c[b],
                       "joint_cam": joint_rel[b]})
            res.append(MeshResult(
                vertices=verts[b], faces=faces, joints3d=j3d[b], joints2d=j2d, joint_set="smpl30",
                params=params, camera=cam, keypoints2d=kp2d, attention={k: v[b] for k, v in att.items()},
                estimator="dpmesh", track_id=person.track_id))
        return res
