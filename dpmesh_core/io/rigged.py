"""Rigged exports: a skinned glTF 2.0 binary (``.glb``, through pygltflib) and BVH motion, written from a
``Rig`` (skeleton, bind mesh, skinning weights) and per-frame skinning matrices. Pure numpy: the body
models build the rigs (``dpmesh_core.body.rig``).

Frames and the axis conversion
  * Our results live in the **OpenCV camera frame** (x right, y down, z forward, metres). glTF is +Y up
    with cameras looking down -Z, so every exported position is ``p_gltf = (x, -y, -z)_camera`` — a 180°
    rotation about x (proper: no mirroring), the same as ``export_mesh(..., y_up=True)``.
  * The glTF camera node sits at the origin with the identity rotation (looking down -Z = the photo's
    optical axis), a perspective camera with ``yfov = 2·atan(h / 2f_y)`` and ``aspectRatio = w·f_y /
    (h·f_x)``, so a glTF viewer's first view through it matches the photo. glTF cameras have no principal
    point: an off-centre one (not ours: ``Camera.default_for`` centres it) is kept only in the camera's
    ``extras`` (``K``, ``image_size``).
  * Bind pose: the rig's canonical frame (y up, facing +Z — glTF's own model convention), so the armature
    stands upright in Blender's edit mode.

Skinned GLB layout
  * nodes: the joints (names = the rig's, hierarchy = the body model's), a ``body`` mesh node with the skin,
    a ``camera`` node. The root joint carries the root translation and the global orientation; joint nodes'
    TRS hold the (first) estimated pose, so a static viewer shows the person posed as in the photo.
  * mesh: POSITION (bind pose), NORMAL, indices, JOINTS_0/WEIGHTS_0 — the 4 heaviest influences per
    vertex — and, when the body model uses more (Anny: up to 9), JOINTS_1/WEIGHTS_1 for the next 4
    (``influences=8``, the default; Blender, Unreal and Unity with unlimited weights read them; three.js reads
    set 0 only and renormalises it). ``influences=4`` writes only set 0, renormalised. Weights are float,
    each vertex's sum 1; a 9th influence (2 of Anny's 13,718 vertices) is dropped and the rest renormalised.
  * skin: ``inverseBindMatrices`` = inverses of the joints' bind world matrices.
  * animation (video tracks, ``times`` given): one sampler + channel per joint rotation (LINEAR, quaternions
    made sign-continuous) and the root translation, keyed at the frames where the track was estimated
    (time 0 = the track's first frame; ``extras.dpmesh.first_frame`` / ``start_time_s`` place it in the
    video). **Gaps** (frames inside the track where the person was not estimated) are hidden: the root
    joint's scale channel (STEP) drops to 0 for the gap and back to 1 when the person returns; the
    rotations meanwhile interpolate (irrelevant while hidden). A viewer that ignores animation shows the
    first frame's pose.

BVH (``write_bvh``)
  Same skeleton and names, offsets from the person's own bind skeleton (metres, the glTF frame: y up), root
  channels ``Xposition Yposition Zposition Zrotation Xrotation Yrotation``, joints ``Zrotation Xrotation
  Yrotation`` (degrees; intrinsic Z-X-Y, i.e. R = Rz·Rx·Ry, the CMU convention), rest orientation = identity
  in BVH's convention (a joint's rotation is relative to the bind pose). ``Frame Time`` = the time between
  processed frames (stride / fps). Frames run from the track's first to last frame, every processed frame;
  gaps are filled by interpolation (slerp of each joint's rotation, linear root position) since BVH has no
  visibility. End sites extend each leaf along its parent bone (half its length, 2-10 cm).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..types import Camera
from .atomic import atomic_write, atomic_write_bytes

__all__ = ["Rig", "RIGGED_FORMATS", "CV_TO_GLTF", "write_rigged_glb", "write_bvh", "local_transforms"]

RIGGED_FORMATS = ("rigged-glb", "bvh")
#: OpenCV camera frame → glTF (+Y up, camera looking down -Z): a 180° rotation about x.
CV_TO_GLTF = np.diag([1.0, -1.0, -1.0, 1.0])


@dataclass(frozen=True)
class Rig:
    """A person's rig (numpy, float64 unless stated).

    model: body model name. names: (J,) joint names (as exported); native_names: the body model's own.
    parents: (J,) int64 parent index (-1 for the root; parents precede children).
    bind_vertices: (V, 3) bind-pose mesh, canonical frame (y up, facing +z), metres. faces: (F, 3) int32.
    skin_joints / skin_weights: (V, K) int64 / float64, the influences (zero weights pad), rows summing to 1.
    bind_matrices: (J, 4, 4) the joints' world matrices at bind (canonical frame, rigid).
    correctives_baked: SMPL only: the bind mesh holds the pose-corrective offsets of one frame.
    """

    model: str
    names: tuple[str, ...]
    native_names: tuple[str, ...]
    parents: np.ndarray
    bind_vertices: np.ndarray
    faces: np.ndarray
    skin_joints: np.ndarray
    skin_weights: np.ndarray
    bind_matrices: np.ndarray
    correctives_baked: bool = False

    @property
    def num_joints(self) -> int:
        return len(self.names)

    @property
    def bind_heads(self) -> np.ndarray:
        """(J, 3) joint positions at bind (canonical frame)."""
        return self.bind_matrices[:, :3, 3]

    def influences(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(V, k) joint indices and weights: the k heaviest influences, renormalised (padding: joint 0,
        weight 0)."""
        order = np.argsort(-self.skin_weights, axis=1, kind="stable")[:, :k]
        w = np.take_along_axis(self.skin_weights, order, 1)
        j = np.take_along_axis(self.skin_joints, order, 1)
        if w.shape[1] < k:
            pad = k - w.shape[1]
            w = np.pad(w, ((0, 0), (0, pad)))
            j = np.pad(j, ((0, 0), (0, pad)))
        s = w.sum(1, keepdims=True)
        if (s <= 0).any():
            raise InputError("a vertex has no skinning weight")
        w = w / s
        j = np.where(w > 0, j, 0)
        return j, w


def _rigid_inverse(M: np.ndarray) -> np.ndarray:
    R, t = M[..., :3, :3], M[..., :3, 3]
    out = np.zeros_like(M)
    Rt = np.swapaxes(R, -1, -2)
    out[..., :3, :3] = Rt
    out[..., :3, 3] = -np.einsum("...ij,...j->...i", Rt, t)
    out[..., 3, 3] = 1.0
    return out


def world_matrices(rig: Rig, skin: np.ndarray) -> np.ndarray:
    """(T, J, 4, 4) joints' world matrices in the glTF frame from skinning matrices (T, J, 4, 4) that map the
    bind pose to the OpenCV camera frame."""
    return CV_TO_GLTF @ skin @ rig.bind_matrices


def local_transforms(rig: Rig, world: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Local rotations (T, J, 4) quaternions x, y, z, w (sign-continuous over T) and translations (T, J, 3)
    of the joints, relative to their parents, from world matrices (T, J, 4, 4)."""
    from scipy.spatial.transform import Rotation

    T, Jn = world.shape[:2]
    local = world.copy()
    has_parent = rig.parents >= 0
    par = np.where(has_parent, rig.parents, 0)
    local[:, has_parent] = _rigid_inverse(world[:, par[has_parent]]) @ world[:, has_parent]
    q = Rotation.from_matrix(local[..., :3, :3].reshape(-1, 3, 3)).as_quat().reshape(T, Jn, 4)
    for t in range(1, T):  # the shorter way between consecutive keys
        flip = (q[t] * q[t - 1]).sum(-1) < 0
        q[t, flip] *= -1
    return q, local[..., :3, 3]


# --------------------------------------------------------------------------------------------- glTF
class _Blob:
    def __init__(self, gltf: Any) -> None:
        self.gltf = gltf
        self.data = bytearray()

    def add(self, arr: np.ndarray, component: int, kind: str, target: int | None = None,
            minmax: bool = False, normalized: bool = False) -> int:
        import pygltflib as g

        arr = np.ascontiguousarray(arr)
        while len(self.data) % 4:
            self.data.append(0)
        off = len(self.data)
        self.data += arr.tobytes()
        self.gltf.bufferViews.append(g.BufferView(buffer=0, byteOffset=off, byteLength=arr.nbytes, target=target))
        count = arr.shape[0]
        acc = g.Accessor(bufferView=len(self.gltf.bufferViews) - 1, componentType=component, count=count, type=kind,
                         normalized=normalized or None)
        if minmax:
            flat = arr.reshape(count, -1)
            acc.min = [float(x) for x in flat.min(0)]
            acc.max = [float(x) for x in flat.max(0)]
        self.gltf.accessors.append(acc)
        return len(self.gltf.accessors) - 1


def _camera_gltf(camera: Camera) -> Any:
    import pygltflib as g

    (fx, fy), (w, h) = camera.focal, camera.image_size
    yfov = 2.0 * float(np.arctan(h / (2.0 * fy)))
    persp = g.Perspective(yfov=yfov, aspectRatio=float(w * fy / (h * fx)), znear=0.01)
    return g.Camera(type="perspective", perspective=persp, name="camera",
                    extras={"K": camera.K.tolist(), "image_size": [int(w), int(h)],
                            "note": "OpenCV intrinsics (pixels) of the image; glTF has no principal point"})


def write_rigged_glb(
    path: str | os.PathLike,
    rig: Rig,
    skin: np.ndarray,
    camera: Camera,
    times: Sequence[float] | None = None,
    visible: Sequence[bool] | None = None,
    influences: int = 8,
    extras: dict[str, Any] | None = None,
    color: Sequence[float] = (0.72, 0.72, 0.78),
) -> Path:
    """Write a skinned GLB atomically.

    skin: (T, J, 4, 4) skinning matrices (bind → OpenCV camera frame) of T ≥ 1 frames. times: (T,) seconds
    of each frame (from 0), required when T > 1 (then an animation is written). visible: (T,) optional; a
    False frame is a gap key (the root's scale is 0 there, STEP). influences: 4 or 8 per vertex (see the
    module doc). extras: JSON-able metadata stored under ``scene.extras["dpmesh"]``."""
    import pygltflib as g
    import trimesh

    path = Path(path)
    skin = np.asarray(skin, np.float64)
    if skin.ndim != 4 or skin.shape[1:] != (rig.num_joints, 4, 4) or skin.shape[0] < 1:
        raise InputError(f"skinning matrices must be (T, {rig.num_joints}, 4, 4), got {skin.shape}", path)
    if not np.isfinite(skin).all():
        raise InputError("non-finite pose", path)
    T = skin.shape[0]
    if influences not in (4, 8):
        raise InputError(f"influences must be 4 or 8, got {influences}", path)
    if T > 1 and (times is None or len(times) != T):
        raise InputError("an animation needs one time per frame", path)

    world = world_matrices(rig, skin)
    quat, trans = local_transforms(rig, world)
    gl = g.GLTF2(asset=g.Asset(generator="DPMesh Studio (pygltflib)"))
    blob = _Blob(gl)
    v = rig.bind_vertices.astype(np.float32)
    f = np.asarray(rig.faces, np.uint32)
    normals = trimesh.Trimesh(rig.bind_vertices, rig.faces, process=False).vertex_normals.astype(np.float32)
    attrs = g.Attributes(
        POSITION=blob.add(v, g.FLOAT, g.VEC3, g.ARRAY_BUFFER, minmax=True),
        NORMAL=blob.add(normals, g.FLOAT, g.VEC3, g.ARRAY_BUFFER),
    )
    k = min(influences, 4 * int(np.ceil((rig.skin_weights > 0).sum(1).max() / 4)))
    jidx, wts = rig.influences(max(k, 4))
    jtype, jnp = (g.UNSIGNED_BYTE, np.uint8) if rig.num_joints <= 256 else (g.UNSIGNED_SHORT, np.uint16)
    w32 = wts.astype(np.float32)
    for s in range(w32.shape[1] // 4):
        setattr(attrs, f"JOINTS_{s}", blob.add(jidx[:, 4 * s:4 * s + 4].astype(jnp), jtype, g.VEC4, g.ARRAY_BUFFER))
        setattr(attrs, f"WEIGHTS_{s}", blob.add(w32[:, 4 * s:4 * s + 4], g.FLOAT, g.VEC4, g.ARRAY_BUFFER))
    ind = blob.add(f.reshape(-1), g.UNSIGNED_INT, g.SCALAR, g.ELEMENT_ARRAY_BUFFER, minmax=True)
    gl.materials.append(g.Material(name="skin", pbrMetallicRoughness=g.PbrMetallicRoughness(
        baseColorFactor=[*map(float, color[:3]), 1.0], metallicFactor=0.0, roughnessFactor=0.8)))
    gl.meshes.append(g.Mesh(name=f"{rig.model}_body", primitives=[g.Primitive(attributes=attrs, indices=ind,
                                                                               material=0)]))
    Jn = rig.num_joints
    children: list[list[int]] = [[] for _ in range(Jn)]
    for j, p in enumerate(rig.parents):
        if p >= 0:
            children[int(p)].append(j)
    for j in range(Jn):
        gl.nodes.append(g.Node(name=rig.names[j], children=children[j] or [],
                               rotation=[float(x) for x in quat[0, j]], translation=[float(x) for x in trans[0, j]]))
    ibm = _rigid_inverse(rig.bind_matrices).astype(np.float32).transpose(0, 2, 1)  # column-major
    root = int(np.nonzero(rig.parents < 0)[0][0])
    gl.skins.append(g.Skin(name=f"{rig.model}_skin", joints=list(range(Jn)), skeleton=root,
                           inverseBindMatrices=blob.add(ibm.reshape(Jn, 16), g.FLOAT, g.MAT4)))
    gl.nodes.append(g.Node(name="body", mesh=0, skin=0))
    gl.cameras.append(_camera_gltf(camera))
    gl.nodes.append(g.Node(name="camera", camera=0))
    meta = {"units": "metres", "frame": "glTF (+Y up); (x, y, z)_gltf = (x, -y, -z) of the OpenCV camera frame",
            "body_model": rig.model, "bind": "rest pose, person's shape"}
    if rig.correctives_baked:
        meta["pose_correctives"] = "baked into the bind mesh for this frame"
    meta.update(extras or {})
    gl.scenes.append(g.Scene(name="dpmesh", nodes=[root, Jn, Jn + 1], extras={"dpmesh": meta}))
    gl.scene = 0

    if T > 1:
        tt = np.asarray(times, np.float32)
        if np.any(np.diff(tt) <= 0):
            raise InputError("animation times must increase", path)
        t_acc = blob.add(tt, g.FLOAT, g.SCALAR, minmax=True)
        anim = g.Animation(name="motion")

        def channel(node: int, prop: str, inp: int, out: np.ndarray, kind: str, interp: str = "LINEAR") -> None:
            o = blob.add(out.astype(np.float32), g.FLOAT, kind)
            anim.samplers.append(g.AnimationSampler(input=inp, output=o, interpolation=interp))
            anim.channels.append(g.AnimationChannel(sampler=len(anim.samplers) - 1,
                                                    target=g.AnimationChannelTarget(node=node, path=prop)))

        vis = np.ones(T, bool) if visible is None else np.asarray(visible, bool)
        if not vis[0]:
            raise InputError("the first animation frame must be visible", path)
        for j in range(Jn):
            channel(j, "rotation", t_acc, quat[:, j], g.VEC4)
        for j in range(Jn):
            if j == root or np.abs(trans[:, j] - trans[:1, j]).max() > 1e-6:
                channel(j, "translation", t_acc, trans[:, j], g.VEC3)
        if not vis.all():
            change = np.nonzero(np.r_[True, vis[1:] != vis[:-1]])[0]
            s_in = blob.add(tt[change], g.FLOAT, g.SCALAR, minmax=True)
            channel(root, "scale", s_in, np.repeat(vis[change, None].astype(np.float32), 3, 1), g.VEC3, "STEP")
        gl.animations.append(anim)
    gl.buffers.append(g.Buffer(byteLength=len(blob.data)))
    gl.set_binary_blob(bytes(blob.data))
    return atomic_write_bytes(path, b"".join(gl.save_to_bytes()))


# ---------------------------------------------------------------------------------------------- BVH
def _fill_gaps(present: np.ndarray, quat: np.ndarray, root_pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Interpolate missing frames (present False) between their neighbours: slerp per joint, linear root."""
    from scipy.spatial.transform import Rotation, Slerp

    idx = np.nonzero(present)[0]
    allf = np.arange(len(present))
    pos = np.stack([np.interp(allf, idx, root_pos[idx, c]) for c in range(3)], 1)
    q = np.empty((len(present), quat.shape[1], 4))
    for j in range(quat.shape[1]):
        q[:, j] = Slerp(idx, Rotation.from_quat(quat[idx, j]))(allf).as_quat()
    return q, pos


def write_bvh(
    path: str | os.PathLike,
    rig: Rig,
    skin: np.ndarray,
    frame_time: float,
    present: Sequence[bool] | None = None,
    precision: int = 6,
) -> Path:
    """Write BVH motion atomically (conventions in the module doc). skin: (T, J, 4, 4) skinning matrices
    (bind → OpenCV camera frame), one per output frame; ``present[t]`` False marks a gap frame whose skin
    entry is ignored and interpolated."""
    from scipy.spatial.transform import Rotation

    path = Path(path)
    skin = np.asarray(skin, np.float64)
    T = skin.shape[0]
    if T < 1 or skin.shape[1:] != (rig.num_joints, 4, 4):
        raise InputError(f"skinning matrices must be (T, {rig.num_joints}, 4, 4), got {skin.shape}", path)
    if not frame_time > 0:
        raise InputError(f"frame time must be > 0, got {frame_time}", path)
    pres = np.ones(T, bool) if present is None else np.asarray(present, bool)
    if not pres.any():
        raise InputError("no frame to write", path)
    for n in rig.names:
        if not n or any(c.isspace() for c in n):
            raise InputError(f"joint name {n!r} cannot be written to BVH", path)
    G = CV_TO_GLTF @ skin  # bind (canonical) → glTF frame: BVH global rotation of each joint = its rotation
    Rg = G[..., :3, :3]
    par = rig.parents
    Rl = Rg.copy()
    nz = par >= 0
    Rl[:, nz] = np.swapaxes(Rg[:, par[nz]], -1, -2) @ Rg[:, nz]
    root = int(np.nonzero(par < 0)[0][0])
    root_pos = (G[:, root] @ np.append(rig.bind_heads[root], 1.0))[:, :3]
    quat = Rotation.from_matrix(Rl.reshape(-1, 3, 3)).as_quat().reshape(T, -1, 4)
    if not pres.all():
        quat, root_pos = _fill_gaps(pres, quat, root_pos)
    eul = Rotation.from_quat(quat.reshape(-1, 4)).as_euler("ZXY", degrees=True).reshape(T, -1, 3)

    heads = rig.bind_heads
    children: list[list[int]] = [[] for _ in range(rig.num_joints)]
    for j, p in enumerate(par):
        if p >= 0:
            children[int(p)].append(j)
    fmt = f"{{:.{precision}f}}"
    lines = ["HIERARCHY"]
    order: list[int] = []

    def emit(j: int, depth: int) -> None:
        ind = "  " * depth
        p = par[j]
        off = heads[j] - heads[p] if p >= 0 else np.zeros(3)  # the root: absolute position channels
        lines.append(f"{ind}{'ROOT' if p < 0 else 'JOINT'} {rig.names[j]}")
        lines.append(ind + "{")
        lines.append(f"{ind}  OFFSET " + " ".join(fmt.format(x) for x in off))
        if p < 0:
            lines.append(f"{ind}  CHANNELS 6 Xposition Yposition Zposition Zrotation Xrotation Yrotation")
        else:
            lines.append(f"{ind}  CHANNELS 3 Zrotation Xrotation Yrotation")
        order.append(j)
        for c in children[j]:
            emit(c, depth + 1)
        if not children[j]:
            d = heads[j] - heads[p] if p >= 0 else np.array([0.0, 0.1, 0.0])
            n = float(np.linalg.norm(d))
            end = d / n * float(np.clip(0.5 * n, 0.02, 0.1)) if n > 1e-9 else np.array([0.0, 0.05, 0.0])
            lines.extend([f"{ind}  End Site", ind + "  {",
                          f"{ind}    OFFSET " + " ".join(fmt.format(x) for x in end), ind + "  }"])
        lines.append(ind + "}")

    emit(root, 0)
    lines += ["MOTION", f"Frames: {T}", f"Frame Time: {frame_time:.8f}"]
    for t in range(T):
        vals: list[float] = []
        for j in order:
            if j == root:
                vals += list(root_pos[t])
            z, x, y = eul[t, j]
            vals += [z, x, y]
        lines.append(" ".join(fmt.format(x) for x in vals))
    with atomic_write(path, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    return path


def describe(path: str | os.PathLike) -> dict[str, Any]:
    """The ``extras.dpmesh`` metadata of a GLB written by ``write_rigged_glb`` (empty for other files)."""
    import pygltflib as g

    gl = g.GLTF2().load_binary(str(path))
    sc = gl.scenes[gl.scene or 0] if gl.scenes else None
    return json.loads(json.dumps((sc.extras or {}).get("dpmesh", {}))) if sc else {}
