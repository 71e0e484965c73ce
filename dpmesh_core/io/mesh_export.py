"""Mesh and body-parameter export (through trimesh), atomic.

Coordinates. Meshes are written in **metres in the OpenCV camera frame** (x right, y down, z forward) by
default, so several people exported from one image stay placed consistently relative to each other and
to the camera. Most viewers (Blender, glTF viewers, MeshLab) expect y up; ``y_up=True`` rotates by 180°
about x, i.e. (x, y, z) -> (x, -y, -z) (a proper rotation: the face winding stays outward).

File names (``mesh_filename``): ``{stem}_person{index:02d}.{ext}`` for an image, where ``index`` is the
person's position in the image's person list (failed persons keep their number, they are just not written),
and ``{stem}_f{frame:06d}_track{id:03d}.{ext}`` for a video frame, named by the person's track, so one name
pattern follows one person through the video (``{stem}_f{frame:06d}_person{index:02d}.{ext}`` only for an
untracked person).

Formats (from the suffix): ``.obj`` (with vertex normals), ``.ply`` (binary), ``.glb``, ``.gltf``
(one file, buffers embedded as data URIs).

Parameter files (``export_params_npz``, read back with ``load_params_npz``) are ``.npz`` archives holding
only plain arrays (readable with ``np.load(path, allow_pickle=False)``). Keys:

==========================  ==========================================================================
``format_version``          () int, 1
``model``                   () str, body model name ("smpl", "anny", ...)
``global_orient``           (3,) float32 axis-angle, camera frame
``body_pose``               (P,) float32 (SMPL: 23 joints x axis-angle = 69; Anny: flattened bone rotations)
``betas``                   (S,) float32 (SMPL: 10 shape betas; Anny: 6 phenotype values in [0, 1])
``transl``                  (3,) float32 metres, camera frame
``extra__<name>``           any extra named parameter array of ``BodyParams.extra``
``joints3d``                (K, 3) float32 metres, camera frame, order ``joint_set``
``joints2d``                (K, 2) float32 image pixels, same order
``joint_set``               () str naming the joint order (``dpmesh_core.body.joints.JOINT_SETS``: e.g.
                            "smpl24" = Pelvis, L_Hip, R_Hip, Torso, L_Knee, R_Knee, Spine, L_Ankle,
                            R_Ankle, Chest, L_Toe, R_Toe, Neck, L_Thorax, R_Thorax, Head, L_Shoulder,
                            R_Shoulder, L_Elbow, R_Elbow, L_Wrist, R_Wrist, L_Hand, R_Hand)
``keypoints2d``             (J, 2) float32 pixels, the model's prediction of the input key-points (if any)
``camera_focal``            (2,) float64 (fx, fy) pixels
``camera_principal``        (2,) float64 (cx, cy) pixels
``camera_image_size``       (2,) int64 (width, height) pixels
``camera_K``                (3, 3) float64 intrinsic matrix
``estimator``               () str ("fit", "dpmesh", ...)
``loss``                    () float64 final fitting loss, NaN if none
``track_id``                () int64, -1 if none
``input_keypoints``         (J, 3) float32 the key-points the estimate was made from: x, y pixels and visible
                            (1 = used, 0 = not visible / not usable), order ``input_joint_set`` (if known)
``input_joint_set``         () str, the joint order of ``input_keypoints``
``units``                   () str, "metres; OpenCV camera frame (x right, y down, z forward)"
``low_confidence``          () bool, the mesh is largely a guess (``types.Quality``; only when the result has a
                            quality record)
``quality``                 () str, the quality record as JSON (visible_joints, total_joints, residual_px,
                            residual_rel, legs_inferred, depth_from, low_confidence, reasons)
``vertices`` / ``faces``    (V, 3) float32 / (F, 3) int32, only with ``include_mesh=True``
``smpl_pose``               (72,) float32, SMPL results: axis-angle root + 23 joints (= global_orient ⊕ body_pose)
``smpl_shape``              (10,) float32, SMPL results: the betas
``joints_cam30``            (30, 3) float32 metres, image camera (results in the "smpl30" joint order)
``joints_img30``            (30, 2) float32 image pixels, same joints
``attention_8``/``_16``     (30, 8, 8) / (30, 16, 16) float32, the DPMesh network's per-joint cross-attention maps
                            (the release's ``attn16`` / ``attn32``), over the crop ``bbox_xywh``
``cam_trans``               (3,) float32, DPMesh network: the release's ``cam_trans`` (metres, crop camera:
                            focal f = sqrt(W²+H²), principal point at the crop centre); also ``cam_trans_crop``
``render_cam_trans``        (3,) float32, the release's full-image translation (t_z × 256/sqrt(w·h)), used with
                            the same f and the principal point ``render_principal`` (2,) = the crop box centre
``cam_param``               (3,) float32, the raw camera output (t_x, t_y, γ)
``bbox_xywh``               (4,) float32, the release's square crop box (x, y, w, h), image pixels
``joint_cam``               (30, 3) float32, the release's ``joint_cam``: root-relative metres
==========================  ==========================================================================

The DPMesh network's meshes and ``joints3d`` are the release's mesh moved rigidly: every person of an image
is placed in the image's own camera (principal point at the image centre), so the root is translated to
project where the release's render places it; ``smpl_pose``/``smpl_shape``/``joint_cam`` and the
root-relative mesh are the release's numbers unchanged (``dpmesh_core.model.predictor``).
"""

from __future__ import annotations

import io as _io
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..types import BodyParams, Camera, MeshResult, Person
from .atomic import atomic_write, atomic_write_bytes

log = logging.getLogger(__name__)

__all__ = ["MESH_FORMATS", "export_mesh", "export_meshes", "mesh_filename", "export_params_npz", "load_params_npz"]

MESH_FORMATS = ("obj", "ply", "glb", "gltf")
NPZ_FORMAT_VERSION = 1
_UNITS = "metres; OpenCV camera frame (x right, y down, z forward)"


def mesh_filename(stem: str, person_index: int, ext: str, frame: int | None = None,
                  track_id: int | None = None) -> str:
    """``{stem}_person{index:02d}.{ext}``; for a video frame ``{stem}_f{frame:06d}_track{id:03d}.{ext}`` (by the
    person's ``track_id``), or ``{stem}_f{frame:06d}_person{index:02d}.{ext}`` for an untracked person."""
    ext = ext.lstrip(".").lower()
    if frame is None:
        return f"{stem}_person{int(person_index):02d}.{ext}"
    if track_id is not None:
        return f"{stem}_f{int(frame):06d}_track{int(track_id):03d}.{ext}"
    return f"{stem}_f{int(frame):06d}_person{int(person_index):02d}.{ext}"


def _y_up(v: np.ndarray) -> np.ndarray:
    return v * np.array([1.0, -1.0, -1.0], v.dtype)


def _trimesh(result: MeshResult, path: Path, y_up: bool, color: Sequence[float] | None):
    import trimesh

    v = np.asarray(result.vertices, np.float64)
    f = np.asarray(result.faces, np.int64)
    if v.shape[0] == 0 or f.shape[0] == 0:
        raise InputError("empty mesh (no vertices or no faces)", path)
    if not np.isfinite(v).all():
        raise InputError("mesh has non-finite vertices", path)
    if f.min() < 0 or f.max() >= v.shape[0]:
        raise InputError(f"mesh faces index vertices outside 0..{v.shape[0] - 1}", path)
    if y_up:
        v = _y_up(v)
    mesh = trimesh.Trimesh(vertices=v, faces=f, process=False)
    if color is not None:
        c = np.asarray(color, np.float64).reshape(-1)
        if c.size not in (3, 4):
            raise InputError(f"colour must be RGB or RGBA, got {c.size} values", path)
        if c.max() <= 1.0:
            c = c * 255.0
        rgba = np.append(c, 255.0)[:4] if c.size == 3 else c
        mesh.visual.vertex_colors = np.tile(np.clip(rgba, 0, 255).astype(np.uint8), (v.shape[0], 1))
    return mesh


def export_mesh(
    result: MeshResult,
    path: str | os.PathLike,
    format: str | None = None,
    y_up: bool = False,
    color: Sequence[float] | None = None,
) -> Path:
    """Write one person's mesh atomically. ``format``: "obj" | "ply" | "glb" | "gltf" (default: the
    suffix). ``color``: optional RGB(A) in [0, 1] or [0, 255] stored as vertex colours. Returns the path."""
    import trimesh

    path = Path(path)
    fmt = (format or path.suffix.lstrip(".")).lower()
    if fmt not in MESH_FORMATS:
        raise InputError(f"unknown mesh format {fmt!r}; use one of {MESH_FORMATS}", path)
    mesh = _trimesh(result, path, y_up, color)
    if fmt == "obj":
        data: bytes | str = trimesh.exchange.obj.export_obj(mesh, include_normals=True, include_color=color is not None)
    elif fmt == "ply":
        data = trimesh.exchange.ply.export_ply(mesh, encoding="binary", include_attributes=False)
    elif fmt == "glb":
        data = trimesh.exchange.gltf.export_glb(trimesh.Scene(mesh), include_normals=True)
    else:
        files = trimesh.exchange.gltf.export_gltf(trimesh.Scene(mesh), include_normals=True, embed_buffers=True)
        if len(files) != 1:  # defensive: embed_buffers should give a single file
            raise InputError("glTF export produced several files; use .glb", path)
        data = next(iter(files.values()))
    if isinstance(data, str):
        data = data.encode("utf-8")
    return atomic_write_bytes(path, data)


def export_meshes(
    results: Sequence[MeshResult | Any],
    out_dir: str | os.PathLike,
    stem: str,
    formats: Sequence[str] = ("obj",),
    frame: int | None = None,
    y_up: bool = False,
    colors: Sequence[Sequence[float]] | None = None,
) -> list[Path]:
    """Write every ``MeshResult`` (None / ``EstimationError`` entries are skipped) in every format into ``out_dir`` (created) under ``mesh_filename``
    names; returns the paths written, person-major. ``colors[i]`` optionally colours person ``i``."""
    out_dir = Path(out_dir)
    for fmt in formats:
        if fmt.lower().lstrip(".") not in MESH_FORMATS:
            raise InputError(f"unknown mesh format {fmt!r}; use one of {MESH_FORMATS}", out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for i, r in enumerate(results):
        if not isinstance(r, MeshResult):  # None or the person's EstimationError
            continue
        col = colors[i % len(colors)] if colors else None
        for fmt in formats:
            p = out_dir / mesh_filename(stem, i, fmt, frame)
            written.append(export_mesh(r, p, fmt.lower().lstrip("."), y_up=y_up, color=col))
    return written


def _release_arrays(result: MeshResult) -> dict[str, np.ndarray]:
    """The names a user of the DPMesh release expects, for SMPL results (see the module doc)."""
    p, out = result.params, {}
    if np.asarray(p.body_pose).shape == (69,):  # SMPL: 72 axis-angle values = root + 23 joints
        out["smpl_pose"] = np.concatenate([p.global_orient, p.body_pose]).astype(np.float32)
        out["smpl_shape"] = np.asarray(p.betas, np.float32)[:10]
    if result.joint_set == "smpl30":
        out["joints_cam30"] = np.asarray(result.joints3d, np.float32)
        out["joints_img30"] = np.asarray(result.joints2d, np.float32)
    ex = p.extra
    if "cam_trans_crop" in ex:  # the DPMesh network: the release's own numbers
        out["cam_trans"] = np.asarray(ex["cam_trans_crop"], np.float32)
        for k in ("cam_trans_crop", "render_cam_trans", "render_principal", "cam_param", "bbox_xywh", "joint_cam"):
            if k in ex:
                out[k] = np.asarray(ex[k], np.float32)
    for side, a in (result.attention or {}).items():
        out[f"attention_{side}"] = np.asarray(a, np.float32)
    return out


def export_params_npz(result: MeshResult, path: str | os.PathLike, include_mesh: bool = False,
                      person: Person | None = None) -> Path:
    """Write body parameters, joints and camera of one person to ``.npz`` (keys in the module doc).
    ``person``: the person (key-points) the result was estimated from, stored as ``input_keypoints``."""
    path = Path(path)
    p, cam = result.params, result.camera
    arrays: dict[str, Any] = {
        "format_version": np.array(NPZ_FORMAT_VERSION, np.int64),
        "model": np.array(p.model),
        "global_orient": np.asarray(p.global_orient, np.float32),
        "body_pose": np.asarray(p.body_pose, np.float32),
        "betas": np.asarray(p.betas, np.float32),
        "transl": np.asarray(p.transl, np.float32),
        "joints3d": np.asarray(result.joints3d, np.float32),
        "joints2d": np.asarray(result.joints2d, np.float32),
        "joint_set": np.array(result.joint_set),
        "camera_focal": np.asarray(cam.focal, np.float64),
        "camera_principal": np.asarray(cam.principal, np.float64),
        "camera_image_size": np.asarray(cam.image_size, np.int64),
        "camera_K": cam.K,
        "estimator": np.array(result.estimator),
        "loss": np.array(np.nan if result.loss is None else float(result.loss), np.float64),
        "track_id": np.array(-1 if result.track_id is None else int(result.track_id), np.int64),
        "units": np.array(_UNITS),
    }
    for k, v in p.extra.items():
        a = np.asarray(v)
        if a.dtype == object:
            raise InputError(f"extra parameter {k!r} is not a plain numeric array", path)
        arrays[f"extra__{k}"] = a
    if result.keypoints2d is not None:
        arrays["keypoints2d"] = np.asarray(result.keypoints2d, np.float32)
    arrays.update(_release_arrays(result))
    if person is not None:
        used = person.weights > 0
        arrays["input_keypoints"] = np.c_[person.keypoints[:, :2], used].astype(np.float32)
        arrays["input_joint_set"] = np.array(person.joint_set)
    if getattr(result, "quality", None) is not None:
        import json as _json

        arrays["low_confidence"] = np.array(bool(result.quality.low_confidence))
        arrays["quality"] = np.array(_json.dumps(result.quality.as_dict()))
    if include_mesh:
        arrays["vertices"] = np.asarray(result.vertices, np.float32)
        arrays["faces"] = np.asarray(result.faces, np.int32)
    buf = _io.BytesIO()
    np.savez_compressed(buf, **arrays)
    with atomic_write(path, "wb") as f:
        f.write(buf.getvalue())
    return path


def load_params_npz(path: str | os.PathLike) -> dict[str, Any]:
    """Read an ``export_params_npz`` file (no pickles). Returns a dict with ``params`` (BodyParams),
    ``camera`` (Camera), ``joints3d``, ``joints2d``, ``joint_set``, ``keypoints2d`` (or None),
    ``estimator``, ``loss`` (or None), ``track_id`` (or None), ``format_version``, ``input_keypoints`` (J, 3) and
    ``input_joint_set`` (or None), and ``vertices`` / ``faces`` when stored. Raises ``InputError`` naming the file when it is not such a file."""
    path = Path(path)
    try:
        z = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise InputError("no such file", path) from None
    except (OSError, ValueError, EOFError) as e:
        raise InputError(f"not a readable .npz parameter file ({e})", path) from None
    try:
        with z:
            files = set(z.files)
            need = {"format_version", "model", "global_orient", "body_pose", "betas", "transl", "joints3d",
                    "joints2d", "joint_set", "camera_focal", "camera_principal", "camera_image_size"}
            missing = sorted(need - files)
            if missing:
                raise InputError(f"not a DPMesh parameter file: missing keys {missing}", path)
            version = int(z["format_version"])
            if version > NPZ_FORMAT_VERSION:
                raise InputError(f"parameter file format_version {version} is newer than this program's "
                                 f"({NPZ_FORMAT_VERSION}); update DPMesh Studio", path)
            extra = {k[len("extra__"):]: z[k] for k in files if k.startswith("extra__")}
            params = BodyParams(str(z["model"]), z["global_orient"], z["body_pose"], z["betas"], z["transl"], extra)
            f, c, s = z["camera_focal"], z["camera_principal"], z["camera_image_size"]
            cam = Camera((float(f[0]), float(f[1])), (float(c[0]), float(c[1])), (int(s[0]), int(s[1])))
            loss = float(z["loss"]) if "loss" in files else float("nan")
            tid = int(z["track_id"]) if "track_id" in files else -1
            out: dict[str, Any] = {
                "format_version": version, "params": params, "camera": cam,
                "joints3d": z["joints3d"].astype(np.float32), "joints2d": z["joints2d"].astype(np.float32),
                "joint_set": str(z["joint_set"]),
                "keypoints2d": z["keypoints2d"].astype(np.float32) if "keypoints2d" in files else None,
                "estimator": str(z["estimator"]) if "estimator" in files else "",
                "loss": None if np.isnan(loss) else loss, "track_id": None if tid < 0 else tid,
                "input_keypoints": z["input_keypoints"].astype(np.float32) if "input_keypoints" in files else None,
                "input_joint_set": str(z["input_joint_set"]) if "input_joint_set" in files else None,
            }
            if "vertices" in files and "faces" in files:
                out["vertices"], out["faces"] = z["vertices"].astype(np.float32), z["faces"].astype(np.int32)
            return out
    except InputError:
        raise
    except (ValueError, KeyError, OSError, IndexError, TypeError) as e:
        raise InputError(f"corrupt parameter file ({e})", path) from None
