"""Key-point-driven body-model fitting (SMPLify-style): the embedded default estimator.

``KeypointFitter`` fits global orientation, body pose, shape and translation of a body model (any
``dpmesh_core.body.base.BodyModel``) so that its projected key-points match a person's visible 2-D
key-points, with priors. All persons of a frame — and, on a cold start, several initial orientations per
person — are optimised together as one batch (batch = persons × inits). The optimisation runs on the
skeleton only (``forward(..., return_vertices=False)``); the full mesh is skinned once at the end.

Objective per batch element (see ``FitConfig`` for units)::

    E = Σ_j w_j ρ(‖π(K_j) − x_j‖ · s) / Σ_j w_j            data (Geman-McClure ρ, s = ref / box size)
      + λ_pose · pose_prior(θ) + λ_lim · joint_limit_penalty(θ) + λ_shape · shape_prior(β)
      + λ_depth · (log z − log z₀)²                          weak depth prior around the key-point-scale depth
      + λ_temp · (‖R − R_prev‖² + ‖θ − θ_prev‖² + ‖β − β_prev‖² + ‖t − t_prev‖²)   warm start / refine only

Translation is optimised as ``(u, v, log z)`` with ``t = (u·z·100/fx, v·z·100/fy, z)`` so that one step
moves the body by a similar number of pixels whatever its distance.

Schedule (``FitConfig``). Cold start: the translation is initialised from key-point scale (pixel vs metric
segment lengths at focal f) for each of up to 8 initial orientations (facing the camera, away, ±90°, ±45°,
±135°); stage 1 fits orientation + translation on the torso key-points; stage 2 adds the body pose, with the
pose prior annealed from strong to nominal; the best initialisation per person is kept; stage 3 adds the
shape. Warm start (``previous`` given: the drag path, or the next video frame): one initialisation, a few
iterations, shape kept, a temporal term toward the previous parameters. The optimiser is a batched L-BFGS
whose batch elements are fully independent (own curvature history, own step length), so persons of one
frame never influence each other; one iteration = one batched skeleton evaluation (forward + backward).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..body import joints as J
from ..body.base import BodyModel
from ..errors import ConfigError, EstimationError, InputError
from ..torchgeom import axis_angle_to_matrix, matrix_to_axis_angle, project
from ..types import BodyParams, Camera, MeshResult, Person
from .config import FitConfig

log = logging.getLogger(__name__)

#: joints used in the first (orientation + translation) stage of a cold start
_TORSO = frozenset({"L_Shoulder", "R_Shoulder", "L_Hip", "R_Hip", "Neck", "Pelvis", "Torso", "Spine", "Chest",
                    "L_Thorax", "R_Thorax"})
#: segments whose metric length (rest pose) vs pixel length gives the initial depth
_SEGMENTS = (
    ("L_Shoulder", "L_Hip"), ("R_Shoulder", "R_Hip"), ("L_Shoulder", "R_Hip"), ("R_Shoulder", "L_Hip"),
    ("L_Shoulder", "R_Shoulder"), ("L_Hip", "R_Hip"), ("L_Shoulder", "L_Elbow"), ("R_Shoulder", "R_Elbow"),
    ("L_Elbow", "L_Wrist"), ("R_Elbow", "R_Wrist"), ("L_Hip", "L_Knee"), ("R_Hip", "R_Knee"),
    ("L_Knee", "L_Ankle"), ("R_Knee", "R_Ankle"), ("Neck", "Pelvis"),
)
_TRANSL_UNIT_PX = 100.0
#: Depth when the key-points cannot set it (fewer than ``MIN_DEPTH_SEGMENTS`` visible body segments — e.g. only
#: face points, or one limb that may be foreshortened): a prior depth — the median depth of the frame's persons
#: whose key-points did set it, else the height prior: a person ``HEIGHT_PRIOR_M`` tall spanning
#: ``HEIGHT_PRIOR_IMAGE_FRACTION`` of the image height (z = f · 1.7 m / (0.5 · H), 5.7 m for 640x480) — and
#: what the few key-points suggest is kept within a factor ``DEPTH_PRIOR_FACTOR`` of it. Such results have
#: ``quality.depth_from`` "frame" / "height_prior" and are flagged ``low_confidence``.
HEIGHT_PRIOR_M = 1.7
HEIGHT_PRIOR_IMAGE_FRACTION = 0.5
DEPTH_PRIOR_FACTOR = 2.0
MIN_DEPTH_SEGMENTS = 2


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """Temporarily use ``n`` torch intra-op threads (0: unchanged)."""
    old = torch.get_num_threads()
    if n <= 0 or n == old:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@dataclass
class _Plan:
    """How one input joint set is predicted from the body model's joints.

    body_set: the body model's joint set used; A: (J_in, K_body) linear map (one-hot rows, or 0.5/0.5 rows
    for a synthesised Pelvis/Neck, zero rows for joints the model cannot predict); torso: (J_in,) bool;
    rest: (J_in, 3) canonical rest-pose key-points at the mean shape (metres); segments: (S, 2) int pairs.
    """

    body_set: str
    A: np.ndarray
    modelled: np.ndarray
    torso: np.ndarray
    rest: np.ndarray
    segments: np.ndarray


@dataclass
class _Problem:
    """One batch of fitting problems (batch = elements; ``owner`` maps an element to its person slot)."""

    owner: np.ndarray            # (B,) int index into the list of persons being solved
    idx: torch.Tensor            # (B, J*2, 3) long: the two body joints (of the concatenated sets) per key-point
    coef: torch.Tensor           # (B, J, 2) their weights (1/0 for a plain joint, 0.5/0.5 synthesised, 0/0 absent)
    target: torch.Tensor         # (B, J, 2) pixels
    weight: torch.Tensor         # (B, J) confidence, 0 = unusable
    torso_weight: torch.Tensor   # (B, J) weights of stage 1
    scale: torch.Tensor          # (B,) reference px per image px
    focal: torch.Tensor          # (B, 2)
    principal: torch.Tensor      # (B, 2)
    log_z0: torch.Tensor         # (B,) depth prior centre
    rest: torch.Tensor           # (B, J, 3) key-points at the rest pose and mean shape (root at the origin)
    robust: torch.Tensor         # (B, J) robust-scale multiplier per key-point (``edited_robust_factor`` where
                                 # the user placed the key-point by hand, else 1)
    prev: dict[str, torch.Tensor] | None = None   # temporal targets (global_orient as matrices)
    prev_weight: float = 0.0


def _at_keypoints(joints: torch.Tensor, pr: _Problem) -> torch.Tensor:
    """The problem's key-points from body joints (B, Nj, 3, ...) (each the weighted pair of joints ``pr.idx`` /
    ``pr.coef`` names): (B, J, 3, ...); trailing dimensions (a Jacobian's columns) are carried along."""
    extra = joints.shape[3:]
    idx = pr.idx.view(*pr.idx.shape, *(1,) * len(extra)).expand(-1, -1, -1, *extra)
    g = joints.gather(1, idx).view(joints.shape[0], -1, 2, *joints.shape[2:])
    return (g * pr.coef.view(*pr.coef.shape, *(1,) * (len(extra) + 1))).sum(2)


def _segment_ratios(plan, kp: np.ndarray, ok: np.ndarray) -> list[float]:
    """Pixel / metric length of every body segment of ``plan`` whose two joints are visible (``ok``)."""
    ratios = []
    for a, b in plan.segments:
        if ok[a] and ok[b]:
            L3 = float(np.linalg.norm(plan.rest[a] - plan.rest[b]))
            L2 = float(np.linalg.norm(kp[a] - kp[b]))
            if L3 > 0.05 and L2 > 1.0:
                ratios.append(L2 / L3)
    return ratios


class KeypointFitter:
    """Fits a body model to 2-D key-points; implements ``dpmesh_core.types.Estimator`` (``name = "fit"``).

    ``body_model``: a ``BodyModel`` or a name for ``dpmesh_core.body.load_body_model`` ("anny" default,
    "synthetic-smpl", "smpl"). ``device``: torch device the optimisation runs on.
    """

    name = "fit"

    _JAC_MEMO_SIZE = 64

    def __init__(self, body_model: BodyModel | str = "anny", config: FitConfig | None = None,
                 device: str | torch.device = "cpu"):
        self.config = config if config is not None else FitConfig()
        self.config.validate()
        self.device = torch.device(device)
        if isinstance(body_model, str):
            from ..body import load_body_model

            body_model = load_body_model(body_model, device=str(self.device))
        self.body: BodyModel = body_model.to(self.device)
        self.body.eval()
        self.dtype = torch.float32
        out_set = self.config.output_joint_set
        if out_set is not None and out_set not in self.body.joint_sets:
            raise ConfigError(f"body model {self.body.name!r} cannot output joint set {out_set!r} "
                              f"(it provides {list(self.body.joint_sets)})", "output_joint_set")
        self._plans: dict[str, _Plan | None] = {}
        self._faces = np.asarray(self.body.faces, np.int32)
        self._init_rots = self._initial_rotations()
        #: number of energy + gradient evaluations so far (a cost counter for tests and benchmarks)
        self.evaluations = 0
        self._centre: torch.Tensor | None = None  # see _rotation_centre
        #: (go, body_pose, betas) bytes → key-points less transl and their Jacobian; see _keypoints_linearised
        self._jac_memo: collections.OrderedDict[bytes, tuple[torch.Tensor, torch.Tensor]] = \
            collections.OrderedDict()

    # ------------------------------------------------------------------ public API

    def estimate(
        self,
        image: np.ndarray | None,
        persons: Sequence[Person],
        camera: Camera | None = None,
        previous: Sequence[MeshResult | None] | None = None,
    ) -> list[MeshResult | EstimationError]:
        """Fit every person of one frame.

        image: (H, W, 3) uint8 RGB (only its size is used, for the default camera); may be None when
        ``camera`` is given. previous: last results of the same persons (same order, entries may be None):
        those whose body model matches start from them (fewer iterations, pulled toward them).
        Returns one ``MeshResult`` or ``EstimationError`` per person, in order.
        """
        cam = self._camera(image, camera)
        if previous is not None and len(previous) != len(persons):
            raise InputError(f"previous has {len(previous)} entries for {len(persons)} persons")
        starts: list[BodyParams | None] = []
        for i in range(len(persons)):
            p = previous[i] if previous is not None else None
            ok = isinstance(p, MeshResult) and p.params.model == self.body.name
            starts.append(p.params if ok else None)  # type: ignore[union-attr]
        with _torch_threads(self.config.num_threads):
            return self._solve(persons, [cam] * len(persons), starts, estimator="fit",
                               iters=self.config.warm_iters, prior_weight=self.config.temporal_weight)

    def refine(
        self,
        image: np.ndarray | None,
        persons: Sequence[Person],
        initial: Sequence[MeshResult],
        camera: Camera | None = None,
    ) -> list[MeshResult | EstimationError]:
        """Refine given results (e.g. the network's) on the persons' key-points; estimator "dpmesh+fit".

        Each ``initial[i].params.model`` must be this fitter's body model, else ``ConfigError``. Uses
        ``initial[i].camera`` unless ``camera`` is given.
        """
        if len(initial) != len(persons):
            raise InputError(f"initial has {len(initial)} entries for {len(persons)} persons")
        for i, r in enumerate(initial):
            if r.params.model != self.body.name:
                raise ConfigError(
                    f"cannot refine person {i}: its params are for body model {r.params.model!r} but this "
                    f"fitter uses {self.body.name!r}; build KeypointFitter({r.params.model!r}) to refine it")
        cams = [camera if camera is not None else r.camera for r in initial]
        with _torch_threads(self.config.num_threads):
            return self._solve(persons, cams, [r.params for r in initial], estimator="dpmesh+fit",
                               iters=self.config.refine_iters, prior_weight=self.config.refine_prior_weight)

    def results_from_params(
        self,
        params: Sequence[BodyParams],
        cameras: Sequence[Camera],
        persons: Sequence[Person | None] | None = None,
        like: Sequence[MeshResult | None] | None = None,
        estimator: str = "fit",
    ) -> list[MeshResult]:
        """Skin the body at given parameters (no fitting): one ``MeshResult`` per entry, as ``estimate`` would
        return it — vertices, joints in ``like[i].joint_set`` (else ``output_joint_set``, else the body set
        of ``persons[i]``'s key-points, else coco17), their projections, and the re-projected key-points of
        ``persons[i]`` when given. ``like[i]``: a result whose metadata (estimator, loss, track id,
        attention) is kept. Used to rebuild saved results and to re-skin smoothed parameters."""
        n = len(params)
        persons = list(persons) if persons is not None else [None] * n
        like = list(like) if like is not None else [None] * n
        if not (len(cameras) == len(persons) == len(like) == n):
            raise InputError(f"params, cameras, persons and like must have one entry each; got {n}, "
                             f"{len(cameras)}, {len(persons)}, {len(like)}")
        if not n:
            return []
        for i, p in enumerate(params):
            if p.model != self.body.name:
                raise ConfigError(f"entry {i}: parameters of body model {p.model!r} cannot be skinned with "
                                  f"{self.body.name!r}")
        plans = [self._plan(p.joint_set) if p is not None else None for p in persons]
        out_sets = []
        for i in range(n):
            js = like[i].joint_set if like[i] is not None else self.config.output_joint_set or (
                plans[i].body_set if plans[i] is not None else "coco17")
            out_sets.append(js)
        need = tuple(dict.fromkeys(out_sets + [pl.body_set for pl in plans if pl is not None]))
        joints, verts = self.body_forward(params, need, return_vertices=True)
        results = []
        for b, (prm, cam) in enumerate(zip(params, cameras)):
            f, c = np.asarray(cam.focal, np.float64), np.asarray(cam.principal, np.float64)
            j3 = joints[out_sets[b]][b]
            j2 = j3[:, :2] / (j3[:, 2:3] + 1e-4) * f + c
            k2 = None
            if plans[b] is not None:
                kp3 = plans[b].A @ joints[plans[b].body_set][b]
                k2 = kp3[:, :2] / (kp3[:, 2:3] + 1e-4) * f + c
                k2[~plans[b].modelled] = np.nan
            old = like[b]
            if old is not None:
                results.append(dataclasses.replace(old, vertices=verts[b], joints3d=j3, joints2d=j2,
                                                   joint_set=out_sets[b], params=prm, camera=cam, keypoints2d=k2))
            else:
                tid = persons[b].track_id if persons[b] is not None else None
                results.append(MeshResult(vertices=verts[b], faces=self._faces, joints3d=j3, joints2d=j2,
                                          joint_set=out_sets[b], params=prm, camera=cam, keypoints2d=k2,
                                          estimator=estimator, track_id=tid))
        return results

    def body_forward(self, params: Sequence[BodyParams], joint_sets: tuple[str, ...],
                     return_vertices: bool = True) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
        """Evaluate the body model on a list of params → ({set: (N, K, 3)}, (N, V, 3) or None), metres."""
        chunk = max(self.config.batch_persons, 1)
        if len(params) > chunk:  # skin in chunks: memory bounded by the chunk, not by the number of persons
            parts = [self.body_forward(params[c:c + chunk], joint_sets, return_vertices)
                     for c in range(0, len(params), chunk)]
            js = {k: np.concatenate([p[0][k] for p in parts]) for k in parts[0][0]}
            verts = np.concatenate([p[1] for p in parts]) if return_vertices and parts[0][1] is not None else None
            return js, verts
        with torch.no_grad():
            go, bp, be, tr = (torch.as_tensor(np.stack([getattr(p, k) for p in params]), dtype=self.dtype,
                                              device=self.device)
                              for k in ("global_orient", "body_pose", "betas", "transl"))
            out = self.body(go, bp, be, tr, joint_sets=joint_sets, return_vertices=return_vertices)
            js = {k: v.detach().cpu().numpy() for k, v in out.joints.items()}
            verts = out.vertices.detach().cpu().numpy() if out.vertices is not None else None
        return js, verts

    # ------------------------------------------------------------------ set-up helpers

    def _camera(self, image: np.ndarray | None, camera: Camera | None) -> Camera:
        if camera is not None:
            return camera
        if image is None:
            raise InputError("need an image or a camera to fit key-points")
        img = np.asarray(image)
        if img.ndim < 2 or img.shape[0] < 1 or img.shape[1] < 1:
            raise InputError(f"image must be (H, W[, C]); got shape {img.shape}")
        return Camera.default_for(int(img.shape[1]), int(img.shape[0]))

    def _initial_rotations(self) -> torch.Tensor:
        """(8, 3, 3) camera-frame orientations: facing the camera, facing away, turned ±90°, ±45°, ±135°."""
        flip = np.diag([1.0, -1.0, -1.0])  # rotation by π about x: canonical (y up, +z facing) → upright facing camera
        out = []
        q = math.pi / 4
        for yaw in (0.0, 4 * q, 2 * q, -2 * q, q, -q, 3 * q, -3 * q):
            c, s = math.cos(yaw), math.sin(yaw)
            ry = np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
            out.append(ry @ flip)
        return torch.as_tensor(np.stack(out), dtype=self.dtype, device=self.device)

    def _rotation_centre(self) -> torch.Tensor:
        """(3,) the point the body model rotates about under ``global_orient`` (rest pose, mean shape, zero
        translation): joints(R) = R·joints(I) + (I − R)·c. Solved once from two rotations (least squares)."""
        if self._centre is None:
            bset = next(s for s in self.body.joint_sets if s in J.JOINT_SETS)
            with torch.no_grad():
                go = torch.tensor([[0.0, 0.0, 0.0], [0.7, 0.0, 0.0], [0.0, 0.9, 0.4]], device=self.device)
                n = go.shape[0]
                out = self.body(go, torch.zeros(n, self.body.pose_dim, device=self.device),
                                self.body.mean_betas(n).to(self.device), torch.zeros(n, 3, device=self.device),
                                joint_sets=(bset,)).joints[bset].double()
                R = axis_angle_to_matrix(go).double()
                eye = torch.eye(3, dtype=torch.float64, device=self.device)
                # joints(R) − R·joints(I) = (I − R)·c for every joint: stack both rotations, solve for c
                rhs = torch.cat([(out[k] - out[0] @ R[k].T).mean(0) for k in (1, 2)])
                lhs = torch.cat([eye - R[k] for k in (1, 2)])
                c = torch.linalg.lstsq(lhs, rhs[:, None]).solution[:, 0]
            self._centre = c.to(self.dtype)
        return self._centre

    def _plan(self, joint_set: str) -> _Plan | None:
        """Cached mapping from key-point set ``joint_set`` to the body model's joints (None: unknown set)."""
        if joint_set in self._plans:
            return self._plans[joint_set]
        try:
            names = J.joint_names(joint_set)
        except KeyError:
            self._plans[joint_set] = None
            return None
        best = None
        for bset in self.body.joint_sets:
            if bset not in J.JOINT_SETS:
                continue
            bpos = {n: i for i, n in enumerate(J.joint_names(bset))}
            A = np.zeros((len(names), len(bpos)), np.float32)
            for j, n in enumerate(names):
                if n in bpos:
                    A[j, bpos[n]] = 1.0
                elif n in J._SYNTHESISED and all(p in bpos for p in J._SYNTHESISED[n]):
                    for p in J._SYNTHESISED[n]:
                        A[j, bpos[p]] = 0.5
            cover = int((A.sum(1) > 0).sum()) * 2 + (bset == joint_set)
            if best is None or cover > best[0]:
                best = (cover, bset, A)
        if best is None or best[0] < 2:
            self._plans[joint_set] = None
            return None
        _, bset, A = best
        with torch.no_grad():
            out = self.body(torch.zeros(1, 3, device=self.device), torch.zeros(1, self.body.pose_dim, device=self.device),
                            self.body.mean_betas(1).to(self.device), torch.zeros(1, 3, device=self.device),
                            joint_sets=(bset,))
            rest = A @ out.joints[bset][0].double().cpu().numpy()
        pos = {n: i for i, n in enumerate(names)}
        modelled = A.sum(1) > 0
        segs = [(pos[a], pos[b]) for a, b in _SEGMENTS if a in pos and b in pos and modelled[pos[a]]
                and modelled[pos[b]]]
        plan = _Plan(bset, A, modelled, np.array([n in _TORSO for n in names]) & modelled, rest.astype(np.float32),
                     np.array(segs, np.int64).reshape(-1, 2))
        self._plans[joint_set] = plan
        return plan

    def _depth_evidence(self, plan: _Plan, kp: np.ndarray, w: np.ndarray, f: float) -> float | None:
        """Depth (metres) from the visible body segments when there are at least ``MIN_DEPTH_SEGMENTS`` of
        them, else None (the key-points cannot set the depth)."""
        ratios = _segment_ratios(plan, kp, w > 0)
        if len(ratios) < MIN_DEPTH_SEGMENTS:
            return None
        q = float(np.quantile(np.asarray(ratios), 0.75))
        return float(np.clip(f / max(q, 1e-6), 0.3, 200.0))

    def _depths(self, todo: Sequence[int], persons, cams, plans, weights) -> dict[int, tuple[float, str]]:
        """{person: (initial depth in metres, "keypoints" | "frame" | "height_prior")} (see HEIGHT_PRIOR_M)."""
        out: dict[int, tuple[float, str]] = {}
        for i in todo:
            kp = np.nan_to_num(persons[i].keypoints[:, :2].astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
            z = self._depth_evidence(plans[i], kp, weights[i], float(np.mean(cams[i].focal)))
            if z is not None:
                out[i] = (z, "keypoints")
        known = [z for z, _ in out.values()]
        for i in todo:
            if i in out:
                continue
            f = float(np.mean(cams[i].focal))
            if known:
                prior, src = float(np.median(known)), "frame"
            else:
                h = float(cams[i].image_size[1]) * HEIGHT_PRIOR_IMAGE_FRACTION
                prior, src = f * HEIGHT_PRIOR_M / max(h, 1.0), "height_prior"
            # what the few key-points suggest, kept within a factor PRIOR_FACTOR of the prior
            kp = np.nan_to_num(persons[i].keypoints[:, :2].astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
            z_kp = self._initial_depth(plans[i], kp, weights[i], f, np.asarray(persons[i].box, np.float64))
            z = float(np.clip(z_kp, prior / DEPTH_PRIOR_FACTOR, prior * DEPTH_PRIOR_FACTOR))
            out[i] = (float(np.clip(z, 0.3, 200.0)), src)
        return out

    def _initial_depth(self, plan: _Plan, kp: np.ndarray, w: np.ndarray, f: float, box: np.ndarray) -> float:
        """Depth (metres) of the person from key-point scale: f · (metric length / pixel length)."""
        ok = w > 0
        ratios = _segment_ratios(plan, kp, ok)
        if not ratios:  # any two visible joints, with their rest-pose distance
            idx = np.flatnonzero(ok)
            for ia in range(len(idx)):
                for ib in range(ia + 1, len(idx)):
                    a, b = idx[ia], idx[ib]
                    L3 = float(np.linalg.norm(plan.rest[a] - plan.rest[b]))
                    L2 = float(np.linalg.norm(kp[a] - kp[b]))
                    if L3 > 0.05 and L2 > 1.0:
                        ratios.append(L2 / L3)
        if ratios:
            # segments are foreshortened, never lengthened: trust the longer (less foreshortened) ones
            q = float(np.quantile(np.asarray(ratios), 0.75))
        else:
            q = max(float(box[3] - box[1]), float(box[2] - box[0]), 1.0) / 1.7
        return float(np.clip(f / max(q, 1e-6), 0.3, 200.0))

    # ------------------------------------------------------------------ the solver

    def _solve(self, persons: Sequence[Person], cams: Sequence[Camera], starts: Sequence[BodyParams | None],
               estimator: str, iters: int, prior_weight: float) -> list[MeshResult | EstimationError]:
        n = len(persons)
        results: list[MeshResult | EstimationError | None] = [None] * n
        plans: list[_Plan | None] = [None] * n
        weights: list[np.ndarray | None] = [None] * n
        for i, p in enumerate(persons):
            plan = self._plan(p.joint_set)
            if plan is None:
                results[i] = EstimationError(f"key-point set {p.joint_set!r} cannot be matched to body model "
                                             f"{self.body.name!r}", i)
                continue
            w = p.weights * plan.modelled
            w = np.where(np.isfinite(p.keypoints[:, :2]).all(1), w, 0.0).astype(np.float32)
            nvis = int((w > 0).sum())
            if nvis < self.config.min_visible_joints:
                results[i] = EstimationError(f"only {nvis} usable key-point(s); need at least "
                                             f"{self.config.min_visible_joints}", i)
                continue
            plans[i], weights[i] = plan, w
        todo = [i for i in range(n) if results[i] is None]
        if not todo:
            return results  # type: ignore[return-value]
        depths = self._depths(todo, persons, cams, plans, weights)
        # persons are solved in chunks of ``batch_persons``: memory is bounded by the chunk, not the crowd
        chunk = self.config.batch_persons
        for c0 in range(0, len(todo), chunk):
            part = todo[c0:c0 + chunk]
            sets = tuple(dict.fromkeys(plans[i].body_set for i in part))  # type: ignore[union-attr]
            offsets, k = {}, 0
            for s in sets:
                offsets[s] = k
                k += J.num_joints(s)
            cold = [i for i in part if starts[i] is None]
            warm = [i for i in part if starts[i] is not None]
            solved: dict[int, tuple[torch.Tensor, ...]] = {}
            if cold:
                solved.update(self._solve_cold(cold, persons, cams, plans, weights, sets, offsets, k, depths))
            if warm:
                solved.update(self._solve_warm(warm, persons, cams, plans, weights, sets, offsets, k, starts, iters,
                                               prior_weight))
            self._finish(part, solved, persons, cams, results, estimator, weights, depths)
        return results  # type: ignore[return-value]

    def _problem(self, owner: list[int], persons, cams, plans, weights, sets, offsets, k,
                 depths: dict[int, tuple[float, str]] | None = None) -> _Problem:
        B = len(owner)
        Jmax = max(persons[i].num_joints for i in owner)
        idx = np.zeros((B, Jmax, 2), np.int64)
        coef = np.zeros((B, Jmax, 2), np.float32)
        tgt = np.zeros((B, Jmax, 2), np.float32)
        w = np.zeros((B, Jmax), np.float32)
        tw = np.zeros((B, Jmax), np.float32)
        scale = np.zeros(B, np.float32)
        foc = np.zeros((B, 2), np.float32)
        pp = np.zeros((B, 2), np.float32)
        logz = np.zeros(B, np.float32)
        rest = np.zeros((B, Jmax, 3), np.float32)
        rob = np.ones((B, Jmax), np.float32)
        for b, i in enumerate(owner):
            p, plan, cam = persons[i], plans[i], cams[i]
            nj, o = p.num_joints, offsets[plan.body_set]
            cols = np.argsort(-plan.A, axis=1, kind="stable")[:, :2]
            idx[b, :nj] = cols + o
            coef[b, :nj] = np.take_along_axis(plan.A, cols, 1)
            kp = np.nan_to_num(p.keypoints[:, :2].astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
            tgt[b, :nj] = kp
            w[b, :nj] = weights[i]
            rest[b, :nj] = plan.rest
            rob[b, :nj] = np.where(p.edited, self.config.edited_robust_factor, 1.0)
            t = weights[i] * plan.torso
            tw[b, :nj] = t if (t > 0).sum() >= 2 else weights[i]
            vis = kp[weights[i] > 0]
            box = np.asarray(p.box, np.float64)
            size = max(float(box[3] - box[1]), float(box[2] - box[0]),
                       float(np.ptp(vis[:, 1])) if len(vis) else 0.0, float(np.ptp(vis[:, 0])) if len(vis) else 0.0,
                       16.0)
            scale[b] = self.config.reference_size_px / size
            foc[b], pp[b] = cam.focal, cam.principal
            z0 = depths[i][0] if depths is not None and i in depths else \
                self._initial_depth(plan, kp, weights[i], float(np.mean(cam.focal)), box)
            logz[b] = math.log(z0)
        t = lambda a: torch.as_tensor(a, dtype=self.dtype, device=self.device)  # noqa: E731
        gidx = torch.as_tensor(idx.reshape(B, Jmax * 2, 1).repeat(3, 2), device=self.device)
        return _Problem(np.asarray(owner), gidx, t(coef), t(tgt), t(w), t(tw), t(scale), t(foc), t(pp), t(logz),
                        t(rest), t(rob))

    def _to_transl(self, uvl: torch.Tensor, pr: _Problem) -> torch.Tensor:
        z = uvl[:, 2:3].exp()
        return torch.cat([uvl[:, :2] * z * _TRANSL_UNIT_PX / pr.focal, z], 1)

    def _from_transl(self, transl: torch.Tensor, pr: _Problem) -> torch.Tensor:
        z = transl[:, 2:3].clamp_min(0.05)
        return torch.cat([transl[:, :2] / z * pr.focal / _TRANSL_UNIT_PX, z.log()], 1)

    def _keypoints3d(self, go, bp, be, transl, pr: _Problem, sets) -> torch.Tensor:
        out = self.body(go, bp, be, transl, joint_sets=sets, return_vertices=False)
        allj = torch.cat([out.joints[s] for s in sets], 1) if len(sets) > 1 else out.joints[sets[0]]
        return _at_keypoints(allj, pr)

    def _energy(self, go, bp, be, uvl, pr: _Problem, sets, weight: torch.Tensor, use_priors: bool,
                prior_mult: float = 1.0, sigma_mult: float = 1.0, rigid: bool = False) -> torch.Tensor:
        """(B,) total energy (``prior_mult`` scales the pose prior and joint-limit weights, ``sigma_mult`` the
        robust scale). ``rigid``: ``bp``/``be`` are the rest pose and mean shape, so the key-points are the
        problem's rest key-points moved rigidly (same values, without evaluating the body model)."""
        cfg = self.config
        transl = self._to_transl(uvl, pr)
        if rigid:  # rest pose, mean shape: the skeleton moves rigidly (no body-model evaluation needed)
            R = axis_angle_to_matrix(go)
            c = self._rotation_centre()
            kp3 = torch.einsum("bij,bkj->bki", R, pr.rest) + (c - torch.einsum("bij,j->bi", R, c) + transl)[:, None]
        else:
            kp3 = self._keypoints3d(go, bp, be, transl, pr, sets)
        uv = project(kp3, pr.focal, pr.principal)
        r2 = ((uv - pr.target) ** 2).sum(-1) * (pr.scale**2)[:, None]
        s2 = (cfg.robust_sigma_px * sigma_mult * pr.robust) ** 2
        rho = s2 * r2 / (s2 + r2)
        e = (weight * rho).sum(1) / weight.sum(1).clamp_min(1e-6)
        e = e + cfg.depth_prior_weight * (uvl[:, 2] - pr.log_z0) ** 2
        if use_priors:
            e = e + prior_mult * (cfg.pose_prior_weight * self.body.pose_prior(bp) + cfg.joint_limit_weight
                                  * self.body.joint_limit_penalty(bp))
            if cfg.optimize_betas:
                e = e + cfg.shape_prior_weight * self.body.shape_prior(be)
        if pr.prev is not None and pr.prev_weight > 0:
            R = axis_angle_to_matrix(go)
            e = e + pr.prev_weight * (((R - pr.prev["R"]) ** 2).sum((1, 2)) + ((bp - pr.prev["bp"]) ** 2).sum(1)
                                      + ((be - pr.prev["be"]) ** 2).sum(1)
                                      + ((transl - pr.prev["transl"]) ** 2).sum(1))
        return e

    def _residuals(self, p: dict[str, torch.Tensor], pr: _Problem, sets,
                   kp3: torch.Tensor | None = None) -> torch.Tensor:
        """(B, M) residuals whose squares sum to ``_energy(..., pr.weight, use_priors=True)`` up to the shape
        prior (constant here: the shape is held). Data term: the re-projection error in reference pixels
        scaled by ``sqrt(w / Σw · σ² / (σ² + r²))``, so its square is the normalised Geman-McClure cost.
        ``kp3``: the key-points (B, J, 3) of ``p`` when the caller has them (else the body model is run)."""
        cfg = self.config
        go, bp, uvl = p["go"], p["bp"], p["uvl"]
        transl = self._to_transl(uvl, pr)
        if kp3 is None:
            kp3 = self._keypoints3d(go, bp, p["be"], transl, pr, sets)
        d = (project(kp3, pr.focal, pr.principal) - pr.target) * pr.scale[:, None, None]
        r2 = (d**2).sum(-1)
        s2 = (cfg.robust_sigma_px * pr.robust) ** 2
        wn = pr.weight / pr.weight.sum(1, keepdim=True).clamp_min(1e-6)
        res = [(d * (wn * s2 / (s2 + r2)).sqrt()[..., None]).flatten(1),
               math.sqrt(cfg.depth_prior_weight) * (uvl[:, 2:3] - pr.log_z0[:, None]),
               math.sqrt(cfg.pose_prior_weight) * self.body.pose_prior_residuals(bp),
               math.sqrt(cfg.joint_limit_weight) * self.body.joint_limit_residuals(bp)]
        if pr.prev is not None and pr.prev_weight > 0:
            w = math.sqrt(pr.prev_weight)
            res += [w * (axis_angle_to_matrix(go) - pr.prev["R"]).flatten(1), w * (bp - pr.prev["bp"]),
                    w * (p["be"] - pr.prev["be"]), w * (transl - pr.prev["transl"])]
        return torch.cat(res, 1)

    def _run_lm(self, params: dict[str, torch.Tensor], keys: tuple[str, ...], steps: int, pr: _Problem, sets,
                eps: float = 1e-3, tol: float = 2e-3) -> torch.Tensor | None:
        """Levenberg-Marquardt on ``_residuals`` over the entries ``keys`` of ``params`` (the others held), in
        place, each batch element on its own (own damping, own accept/reject).

        The Jacobian is a forward difference taken in ONE batched, gradient-free evaluation of the body model
        (every element and its D perturbed copies: (D + 1)·B rows). On the fitter's small batches the body
        model's cost is per call, not per row (Anny: ~1 ms for 1 row, ~2.3 ms for 64, 1 thread), so one
        iteration costs about two plain forward passes — and Gauss-Newton steps converge in a few
        iterations where a first-order method needs ten or more evaluations with gradients. Each trial point
        is evaluated together with its own perturbations: accepted, its Jacobian is already there.

        Stops when every element's last accepted step lowered its energy by less than the fraction ``tol``.
        Returns the (B,) energy ``Σ r²`` at the result (None when ``steps`` is 0)."""
        if steps <= 0:
            return None
        fixed = {k: v.detach() for k, v in params.items() if k not in keys}
        sizes = [params[k].shape[1] for k in keys]
        x = torch.cat([params[k].detach() for k in keys], 1)
        B, D = x.shape
        rep = torch.arange(B, device=x.device).repeat_interleave(D + 1)
        prr = self._select(pr, rep)
        if pr.prev is not None:
            prr.prev = {k: v[rep] for k, v in pr.prev.items()}
            prr.prev_weight = pr.prev_weight
        fixed_r = {k: v if v.shape[0] == 1 else v[rep] for k, v in fixed.items()}  # one row broadcasts
        step = torch.cat([torch.zeros(1, D, dtype=x.dtype, device=x.device),
                          torch.eye(D, dtype=x.dtype, device=x.device) * eps])  # (D + 1, D)
        closed = [keys == ("go", "uvl", "bp") and tuple(sets) == ("coco17",) and "be" in fixed]

        def evaluate(xv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            self.evaluations += 1
            xs = (xv[:, None, :] + step[None]).reshape(-1, D)
            with torch.no_grad():
                # the body's key-points of the perturbed copies: from its closed-form Jacobian where it has
                # one (one evaluation of the body instead of D + 1), the rest of the residuals as before
                kp3 = self._keypoints_linearised(xv, fixed["be"], pr, eps) if closed[0] else None
                if kp3 is None:
                    closed[0] = False  # the body model has no closed form: perturbed copies of the body
                else:
                    kp3 = kp3.reshape(B * (D + 1), -1, 3)
                r = self._residuals({**fixed_r, **dict(zip(keys, torch.split(xs, sizes, 1)))}, prr, sets, kp3)
            r = r.view(B, D + 1, -1)
            return r[:, 0], (r[:, 1:] - r[:, :1]).transpose(1, 2) / eps  # (B, M), (B, M, D)

        r, J = evaluate(x)
        e = (r**2).sum(1)
        mu = torch.full((B,), 1e-1, dtype=x.dtype, device=x.device)
        eye = torch.eye(D, dtype=x.dtype, device=x.device)
        for _ in range(steps):
            JtJ = J.transpose(1, 2) @ J
            g = (J.transpose(1, 2) @ r[..., None])[..., 0]
            A = JtJ + mu[:, None, None] * torch.diag_embed(torch.diagonal(JtJ, dim1=1, dim2=2)) + 1e-6 * eye
            dx = -torch.linalg.solve(A, g)
            xt = x + dx
            rt, Jt = evaluate(xt)
            et = (rt**2).sum(1)
            acc = torch.isfinite(et) & (et < e)
            gain = (e - et) / e.clamp_min(1e-12)
            x = torch.where(acc[:, None], xt, x)
            r = torch.where(acc[:, None], rt, r)
            J = torch.where(acc[:, None, None], Jt, J)
            e = torch.where(acc, et, e)
            mu = torch.where(acc, mu * 0.3, mu * 8.0).clamp(1e-7, 1e7)
            if bool((acc & (gain < tol)).all()) or bool((dx.abs().amax(1) < 1e-5).all()):
                break  # converged: every element's last accepted step changed its energy by < tol
        for k, v in zip(keys, torch.split(x, sizes, 1)):
            params[k] = v.detach()
        return e

    def _keypoints_linearised(self, x: torch.Tensor, be: torch.Tensor, pr: _Problem,
                              eps: float) -> torch.Tensor | None:
        """(B, D + 1, J, 3): the key-points of x = (go, uvl, bp) (B, D) and, to first order, of its D copies
        with one value moved by ``eps`` — from one evaluation of the body's closed-form Jacobian (None: the
        body model has none)."""
        B = x.shape[0]
        go, uvl, bp = x[:, :3], x[:, 3:6], x[:, 6:]
        transl = self._to_transl(uvl, pr)
        # the key-points less transl and their Jacobian do not depend on transl: kept for the last points
        # evaluated, so that a warm start from a result of this fitter (the next drag step, the next video
        # frame) finds its starting point's Jacobian already there
        be = be.expand(B, -1)
        keys = [r.tobytes() for r in torch.cat([go, bp, be], 1).cpu().numpy()]
        memo = self._jac_memo
        if all(k in memo for k in keys):
            q = torch.stack([memo[k][0] for k in keys])
            jac = torch.stack([memo[k][1] for k in keys])
        else:
            out = self.body.joints_jacobian(go, bp, be, torch.zeros_like(transl), "coco17")  # (B,17,3), (B,17,3,n)
            if out is None:
                return None
            q, jac = out
            for b, k in enumerate(keys):
                memo[k] = (q[b], jac[b])
        for k in keys:
            memo.move_to_end(k)
        while len(memo) > self._JAC_MEMO_SIZE:
            memo.popitem(last=False)
        kp3 = _at_keypoints(q + transl[:, None], pr)
        jk = _at_keypoints(jac, pr)  # (B, J, 3, 3 + P)
        # transl = (u z U/f_x, v z U/f_y, z), z = exp(l): its columns d/du, d/dv, d/dl
        z = transl[:, 2]
        dt = torch.zeros(B, 3, 3, dtype=x.dtype, device=x.device)
        dt[:, 0, 0] = z * _TRANSL_UNIT_PX / pr.focal[:, 0]
        dt[:, 1, 1] = z * _TRANSL_UNIT_PX / pr.focal[:, 1]
        dt[:, :, 2] = transl
        jx = torch.cat([jk[..., :3], dt[:, None].expand(-1, jk.shape[1], -1, -1), jk[..., 3:]], -1)  # (B,J,3,D)
        return torch.cat([kp3[:, None], kp3[:, None] + eps * jx.permute(0, 3, 1, 2)], 1)

    def _run_adam(self, params: dict[str, torch.Tensor], lrs: dict[str, float], steps: int, closure) -> None:
        """Minimise ``closure(params).sum()`` over the entries of ``params`` with a positive rate in ``lrs``
        (the others stay fixed), in place. Adam: ``steps`` iterations, cosine-decayed rates. L-BFGS (strong
        Wolfe line search): at most ``steps`` iterations, each parameter group pre-scaled by its rate."""
        if steps <= 0:
            return
        fixed = {k: v.detach() for k, v in params.items() if lrs.get(k, 0.0) <= 0}
        if self.config.optimizer == "lbfgs":
            self._run_lbfgs(params, lrs, fixed, steps, closure)
            return
        leaves = {k: v.detach().clone().requires_grad_(True) for k, v in params.items() if k not in fixed}
        opt = torch.optim.Adam([{"params": [leaves[k]], "lr": lrs[k], "base": lrs[k]} for k in leaves])
        ff = self.config.lr_final_factor
        for it in range(steps):
            frac = it / max(steps - 1, 1)
            mult = ff + (1 - ff) * 0.5 * (1 + math.cos(math.pi * frac))
            for g in opt.param_groups:
                g["lr"] = g["base"] * mult
            opt.zero_grad(set_to_none=True)
            self.evaluations += 1
            loss = closure({**fixed, **leaves}).sum()
            grads = torch.autograd.grad(loss, list(leaves.values()))
            for leaf, g in zip(leaves.values(), grads):
                leaf.grad = g
            opt.step()
        for k in leaves:
            params[k] = leaves[k].detach()

    def _run_lbfgs(self, params, lrs, fixed, steps: int, closure, history: int = 8) -> None:
        """Batched L-BFGS, independent per batch element: each element has its own curvature history and
        its own step length (Armijo test, one trial per iteration), so one person's problem never alters
        another's and each iteration costs exactly one batched evaluation.
        Variables are pre-scaled by their rates (a unit step moves each group by about its rate)."""
        keys = [k for k in params if k not in fixed]
        sizes = [params[k].shape[1] for k in keys]
        scale = torch.cat([torch.full((n,), float(lrs[k]), dtype=self.dtype, device=self.device)
                           for k, n in zip(keys, sizes)])
        x = torch.cat([params[k].detach() for k in keys], 1) / scale

        def fg(xv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            self.evaluations += 1
            xr = xv.detach().requires_grad_(True)
            parts = dict(zip(keys, torch.split(xr * scale, sizes, 1)))
            with torch.enable_grad():
                e = closure({**fixed, **parts})
                (g,) = torch.autograd.grad(e.sum(), xr)
            return e.detach(), g

        e, g = fg(x)
        S: list[torch.Tensor] = []
        Y: list[torch.Tensor] = []
        R: list[torch.Tensor] = []
        gamma = torch.ones(x.shape[0], dtype=self.dtype, device=self.device)
        tstep = torch.ones_like(gamma)
        for _ in range(steps):
            q = g.clone()
            alphas = []
            for s_, y_, r_ in zip(reversed(S), reversed(Y), reversed(R)):
                a_ = r_ * (s_ * q).sum(1)
                q = q - a_[:, None] * y_
                alphas.append(a_)
            if S:
                d = q * gamma[:, None]
            else:  # first step: at most one rate-unit per variable
                d = q / q.abs().amax(1, keepdim=True).clamp_min(1.0)
            for (s_, y_, r_), a_ in zip(zip(S, Y, R), reversed(alphas)):
                b_ = r_ * (y_ * d).sum(1)
                d = d + s_ * (a_ - b_)[:, None]
            d = -d
            d = d / (d.abs().amax(1, keepdim=True) / 10.0).clamp_min(1.0)  # never jump more than 10 rate-units
            gd = (g * d).sum(1)
            bad = ~(gd < 0)
            if bad.any():
                d = torch.where(bad[:, None], -g / g.abs().amax(1, keepdim=True).clamp_min(1.0), d)
                gd = (g * d).sum(1)
            # one trial per iteration (one batched evaluation): a rejected element stays put and retries
            # next iteration with a shorter step; an accepted one moves and lets its step grow back to 1
            xt = x + tstep[:, None] * d
            et, gt = fg(xt)
            acc = torch.isfinite(et) & (et <= e + 1e-4 * tstep * gd)
            x_new = torch.where(acc[:, None], xt, x)
            e_new = torch.where(acc, et, e)
            g_new = torch.where(acc[:, None], gt, g)
            tstep = torch.where(acc, (tstep * 4).clamp_max(1.0), tstep * 0.2)
            s_ = x_new - x
            y_ = g_new - g
            sy = (s_ * y_).sum(1)
            valid = acc & (sy > 1e-10)
            S.append(s_)
            Y.append(y_)
            R.append(torch.where(valid, 1.0 / sy.clamp_min(1e-10), torch.zeros_like(sy)))  # 0 = no-op pair
            gamma = torch.where(valid, sy / (y_ * y_).sum(1).clamp_min(1e-20), gamma)
            if len(S) > history:
                S.pop(0), Y.pop(0), R.pop(0)
            x, e, g = x_new, e_new, g_new
            if bool((g.abs().amax(1) < 1e-6).all()):
                break
        for k, v in zip(keys, torch.split(x * scale, sizes, 1)):
            params[k] = v.detach()

    def _solve_cold(self, cold, persons, cams, plans, weights, sets, offsets, k, depths=None):
        cfg = self.config
        ninit = cfg.num_inits
        owner = [i for i in cold for _ in range(ninit)]
        pr = self._problem(owner, persons, cams, plans, weights, sets, offsets, k, depths)
        B = len(owner)
        dev, dt = self.device, self.dtype
        R0 = self._init_rots[:ninit].repeat(len(cold), 1, 1)
        go = matrix_to_axis_angle(R0)
        bp = torch.zeros(B, self.body.pose_dim, device=dev, dtype=dt)
        be = self.body.mean_betas(B).to(device=dev, dtype=dt)
        with torch.no_grad():  # place the body: centroid of visible key-points at the initial depth
            kp3 = self._keypoints3d(go, bp, be, torch.zeros(B, 3, device=dev, dtype=dt), pr, sets)
            w = pr.weight
            wn = w / w.sum(1, keepdim=True).clamp_min(1e-6)
            c3 = (wn[..., None] * kp3).sum(1)
            c2 = (wn[..., None] * pr.target).sum(1)
            z = pr.log_z0.exp()
            t = torch.cat([(c2 - pr.principal) / pr.focal * z[:, None] - c3[:, :2], (z - c3[:, 2])[:, None]], 1)
            t[:, 2] = t[:, 2].clamp_min(0.3)
        params = {"go": go.clone(), "uvl": self._from_transl(t.clone(), pr)}
        # stage 1: orientation + translation on torso key-points, rest pose
        self._run_adam(params, {"go": cfg.lr_rotation, "uvl": cfg.lr_transl}, cfg.camera_iters,
                       lambda p: self._energy(p["go"], bp, be, p["uvl"], pr, sets, pr.torso_weight, False,
                                              rigid=True))
        if ninit > 1 and cfg.keep_after_camera_stage < ninit and cfg.cold_iters > 0:
            with torch.no_grad():
                e = self._energy(params["go"], bp, be, params["uvl"], pr, sets, pr.torso_weight, False, rigid=True)
            keep = torch.topk(e.view(len(cold), ninit), cfg.keep_after_camera_stage, dim=1, largest=False).indices
            sel = (keep + torch.arange(len(cold), device=dev)[:, None] * ninit).reshape(-1)
            params = {kk: v[sel] for kk, v in params.items()}
            bp, be = bp[sel], be[sel]
            owner = [owner[s] for s in sel.tolist()]
            pr = self._select(pr, sel)
        # stage 2: orientation, translation and pose (shape at the mean: cheap, and shape barely shows in 2-D)
        params["bp"], params["be"] = bp, be
        lrs = {"go": cfg.lr_rotation, "uvl": cfg.lr_transl, "bp": cfg.lr_rotation}
        anneal = cfg.prior_anneal
        ranneal = cfg.robust_anneal
        for c, mult in enumerate(anneal):  # SMPLify-style: strong pose prior first, relaxed step by step
            n_c = cfg.cold_iters // len(anneal) + (1 if c < cfg.cold_iters % len(anneal) else 0)
            sm = ranneal[min(c, len(ranneal) - 1)]
            self._run_adam(params, lrs, n_c,
                           lambda p, m=mult, sm=sm: self._energy(p["go"], p["bp"], p["be"], p["uvl"], pr, sets,
                                                                 pr.weight, True, m, sm))
        with torch.no_grad():
            e = self._energy(params["go"], params["bp"], params["be"], params["uvl"], pr, sets, pr.weight, True)
        # keep the best initialisation per person
        own = np.asarray(owner)
        sel = []
        for i in cold:
            idx = np.flatnonzero(own == i)
            sel.append(int(idx[int(torch.argmin(e[torch.as_tensor(idx, device=e.device)]))]))
        selt = torch.as_tensor(sel, device=dev)
        params = {kk: v[selt] for kk, v in params.items()}
        pr = self._select(pr, selt)
        owner = list(cold)
        # stage 3: everything, shape included
        if cfg.optimize_betas and cfg.shape_iters > 0:
            lrs["be"] = cfg.lr_betas
            self._run_adam(params, lrs, cfg.shape_iters,
                           lambda p: self._energy(p["go"], p["bp"], p["be"], p["uvl"], pr, sets, pr.weight, True))
        # stage 4: Gauss-Newton polish (shape held): the first-order stages stop short of the minimum, so
        # without it a warm start from this result (a drag, the next frame) would still be converging
        self._run_lm(params, ("go", "uvl", "bp"), cfg.polish_iters, pr, sets)
        with torch.no_grad():
            e = self._energy(params["go"], params["bp"], params["be"], params["uvl"], pr, sets, pr.weight, True)
        return self._pick_best(owner, e, params, pr)

    @staticmethod
    def _select(pr: _Problem, sel: torch.Tensor) -> _Problem:
        """The sub-problem of batch elements ``sel``."""
        return _Problem(pr.owner[sel.cpu().numpy()], pr.idx[sel], pr.coef[sel], pr.target[sel], pr.weight[sel],
                        pr.torso_weight[sel], pr.scale[sel], pr.focal[sel], pr.principal[sel], pr.log_z0[sel],
                        pr.rest[sel], pr.robust[sel])

    def _solve_warm(self, warm, persons, cams, plans, weights, sets, offsets, k, starts, iters, prior_weight):
        cfg = self.config
        pr = self._problem(warm, persons, cams, plans, weights, sets, offsets, k)
        t = lambda a: torch.as_tensor(np.stack(a), dtype=self.dtype, device=self.device)  # noqa: E731
        go = t([starts[i].global_orient for i in warm])
        bp = t([starts[i].body_pose for i in warm])
        be = t([starts[i].betas for i in warm])
        tr = t([starts[i].transl for i in warm])
        if bp.shape[1] != self.body.pose_dim or be.shape[1] != self.body.num_betas:
            raise ConfigError(f"initial params have body_pose {bp.shape[1]} / betas {be.shape[1]} values; body model "
                              f"{self.body.name!r} needs {self.body.pose_dim} / {self.body.num_betas}")
        uvl = self._from_transl(tr, pr)
        pr.log_z0 = uvl[:, 2].clone()
        pr.prev = {"R": axis_angle_to_matrix(go), "bp": bp.clone(), "be": be.clone(), "transl": tr.clone()}
        pr.prev_weight = prior_weight
        params = {"go": go, "uvl": uvl, "bp": bp, "be": be}
        e = None
        if cfg.warm_solver == "lm":  # shape kept
            e = self._run_lm(params, ("go", "uvl", "bp"), iters, pr, sets, tol=cfg.warm_tolerance)
            if e is not None and cfg.optimize_betas:  # Σ r² is the energy less the (held) shape's prior
                e = e + cfg.shape_prior_weight * self.body.shape_prior(params["be"])
        else:
            f = cfg.lr_warm_factor
            lrs = {"go": cfg.lr_rotation * f, "uvl": cfg.lr_transl * f, "bp": cfg.lr_rotation * f}  # shape kept
            self._run_adam(params, lrs, iters,
                           lambda p: self._energy(p["go"], p["bp"], p["be"], p["uvl"], pr, sets, pr.weight, True))
        if e is None:
            with torch.no_grad():
                e = self._energy(params["go"], params["bp"], params["be"], params["uvl"], pr, sets, pr.weight,
                                 True)
        return self._pick_best(warm, e, params, pr)

    def _pick_best(self, owner, e, params, pr) -> dict[int, tuple[torch.Tensor, ...]]:
        out: dict[int, tuple[torch.Tensor, ...]] = {}
        transl = self._to_transl(params["uvl"], pr)
        own = np.asarray(owner)
        for i in dict.fromkeys(owner):
            idx = np.flatnonzero(own == i)
            b = int(idx[int(torch.argmin(e[torch.as_tensor(idx, device=e.device)]))])
            out[i] = (params["go"][b], params["bp"][b], params["be"][b], transl[b], e[b])
        return out

    def _finish(self, todo, solved, persons, cams, results, estimator, weights=None, depths=None) -> None:
        """Skin the solved parameters of persons ``todo`` into their ``MeshResult``s (with the fit's loss and
        the quality record: ``dpmesh_core.quality.assess``)."""
        from ..quality import assess

        gon, bpn, ben, trn, en = (torch.stack([solved[i][c] for i in todo]).cpu().numpy() for c in range(5))
        params = [BodyParams(self.body.name, gon[b], bpn[b], ben[b], trn[b]) for b in range(len(todo))]
        out = self.results_from_params(params, [cams[i] for i in todo], [persons[i] for i in todo],
                                       estimator=estimator)
        for b, (i, r) in enumerate(zip(todo, out)):
            q = assess(persons[i], r, depth_from=depths[i][1] if depths and i in depths else "keypoints",
                       usable=None if weights is None or weights[i] is None else weights[i] > 0)
            results[i] = dataclasses.replace(r, loss=float(en[b]), quality=q)
