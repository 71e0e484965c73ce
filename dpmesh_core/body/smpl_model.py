"""SMPL through smplx, from the user's licensed file (or from arrays, e.g. the synthetic body).

* ``SMPLBody.from_file(path)`` reads ``.pkl`` (including SMPL v1.0 pickles holding chumpy objects, read
  WITHOUT chumpy by a restricted unpickler that refuses every other global) and ``.npz``.
* Joint sets: ``smpl24``; ``smpl30`` (spec §2.11: the 24 J_regressor rows + vertex picks nose 331, L-eye
  2802, R-eye 6262, L-ear 3489, R-ear 3990 + head-top = row 3 of SPIN's ``J_regressor_extra`` when given,
  else **vertex 411**, the top of the head of SMPL's template); ``coco17``, ``graph15`` and ``openpose18``
  by name from SMPL-30 (hips = the SMPL hip joints, OpenPose Neck = SMPL Neck joint 12, as DPMesh does);
  ``h36m17`` when a ``J_regressor_h36m`` (17, V) is given.
* Joints-only forward (``return_vertices=False``) runs smplx's building blocks on the skeleton and skins
  only the vertices the vertex picks / extra regressors need; it equals the full forward to float
  round-off.
* Pose prior: zero-mean Gaussian on the 69 axis-angle values with the per-joint std ``SMPL_POSE_STD``
  (radians); ``joint_limit_penalty``: quadratic outside ``SMPL_JOINT_LIMITS`` (knees and elbows hinge-like).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import InputError, ModelFilesMissingError, UnsafeFileError
from ..io.safe_pickle import RestrictedUnpickler, allow_any, numpy_global
from . import joints as J
from .base import BodyModel, BodyOutput

log = logging.getLogger(__name__)

SMPL_HOW_TO_GET = (
    "SMPL is licensed: register and download it at https://smpl.is.tue.mpg.de, then point DPMESH_SMPL "
    "(or Settings > Model files) at basicModel_neutral_lbs_10_207_0_v1.0.0.pkl (or a converted .npz)"
)
SMPL_FILE_NAMES = {
    "neutral": ("basicModel_neutral_lbs_10_207_0_v1.0.0.pkl", "SMPL_NEUTRAL.pkl", "SMPL_NEUTRAL.npz"),
    "female": ("basicModel_f_lbs_10_207_0_v1.0.0.pkl", "SMPL_FEMALE.pkl", "SMPL_FEMALE.npz"),
    "male": ("basicmodel_m_lbs_10_207_0_v1.0.0.pkl", "basicModel_m_lbs_10_207_0_v1.0.0.pkl",
             "SMPL_MALE.pkl", "SMPL_MALE.npz"),
}
REQUIRED_KEYS = ("v_template", "shapedirs", "posedirs", "J_regressor", "weights", "kintree_table", "f")

#: SMPL-30 vertex picks (spec §2.11) and the head-top vertex used without a J_regressor_extra.
SMPL30_VERTEX_PICKS = {"Nose": 331, "L_Eye": 2802, "R_Eye": 6262, "L_Ear": 3489, "R_Ear": 3990}
HEAD_TOP_VERTEX = 411

#: Per-joint std (radians) of the zero-mean Gaussian pose prior, SMPL joints 1..23.
SMPL_POSE_STD = {
    "L_Hip": 0.5, "R_Hip": 0.5, "Torso": 0.2, "L_Knee": 0.6, "R_Knee": 0.6, "Spine": 0.15,
    "L_Ankle": 0.25, "R_Ankle": 0.25, "Chest": 0.15, "L_Toe": 0.15, "R_Toe": 0.15, "Neck": 0.25,
    "L_Thorax": 0.15, "R_Thorax": 0.15, "Head": 0.3, "L_Shoulder": 0.6, "R_Shoulder": 0.6,
    "L_Elbow": 0.7, "R_Elbow": 0.7, "L_Wrist": 0.4, "R_Wrist": 0.4, "L_Hand": 0.2, "R_Hand": 0.2,
}
#: Axis-angle component limits (radians) for hinge-like joints: {joint: ((x_lo, x_hi), (y..), (z..))}.
#: Knees bend with +x (the shin swings back); the left elbow bends with -y, the right with +y (the forearm
#: swings forward from the T-pose).
SMPL_JOINT_LIMITS = {
    "L_Knee": ((-0.1, 2.7), (-0.3, 0.3), (-0.3, 0.3)),
    "R_Knee": ((-0.1, 2.7), (-0.3, 0.3), (-0.3, 0.3)),
    "L_Elbow": ((-1.2, 1.2), (-2.7, 0.1), (-0.4, 0.4)),
    "R_Elbow": ((-1.2, 1.2), (-0.1, 2.7), (-0.4, 0.4)),
}


# --------------------------------------------------------------------------- reading files
class _ChumpyStandIn:
    """Receives the pickled state of a chumpy object (``Ch`` keeps its value in ``state['x']``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # unpickling calls only __new__ + __setstate__
        self.state: dict = {}

    @property
    def cls_name(self) -> str:
        return type(self).__name__

    def __setstate__(self, state: Any) -> None:
        self.state = state if isinstance(state, dict) else {"state": state}


def _chumpy_class(name: str) -> type:
    return type(name, (_ChumpyStandIn,), {})


_SPARSE_CLASSES = ("csc_matrix", "csr_matrix", "coo_matrix")


def _smpl_global(module: str, name: str) -> Any:
    """The SMPL pickle's allow-list beyond numpy: scipy sparse matrices, chumpy objects (as stand-ins)."""
    if module.startswith("scipy.sparse") and name in _SPARSE_CLASSES:
        import scipy.sparse

        return getattr(scipy.sparse, name)
    if module == "chumpy" or module.startswith("chumpy."):
        return _chumpy_class(name)
    return None


_SMPL_ALLOW = allow_any(numpy_global, _smpl_global)


def _chumpy_value(obj: _ChumpyStandIn, path: str) -> np.ndarray:
    st = getattr(obj, "state", {})
    if "x" in st:
        return np.asarray(_unwrap(st["x"], path))
    if "a" in st:  # chumpy.reordering.* : the operand is ``a``
        a = np.asarray(_unwrap(st["a"], path))
        if obj.cls_name == "transpose":
            return np.transpose(a, st.get("axes"))
        if obj.cls_name in ("Reshape", "reshape"):
            return np.reshape(a, st["newshape"])
        if obj.cls_name == "Select":
            out = a.ravel()[np.asarray(st["idxs"])]
            return out.reshape(st["preferred_shape"]) if st.get("preferred_shape") is not None else out
        if obj.cls_name in ("Ravel", "ravel"):
            return a.ravel()
    raise InputError(f"cannot read the chumpy object {obj.cls_name!r} without chumpy", path=path)


def _unwrap(v: Any, path: str) -> Any:
    if isinstance(v, _ChumpyStandIn):
        return _chumpy_value(v, path)
    return v


def _read_pickle(path: Path) -> dict:
    with open(path, "rb") as fh:
        data = fh.read()
    try:
        obj = RestrictedUnpickler(io.BytesIO(data), _SMPL_ALLOW, str(path), encoding="latin1",
                                  what="a model file").load()
    except UnsafeFileError:
        raise
    except Exception as e:  # noqa: BLE001 - any unpickling failure means "not a SMPL pickle"
        raise InputError(f"not a readable SMPL pickle ({type(e).__name__}: {e})", path=path) from None
    if not isinstance(obj, dict):
        raise InputError(f"expected a dict of SMPL arrays, got {type(obj).__name__}", path=path)
    return {k: _unwrap(v, str(path)) for k, v in obj.items()}


def _read_npz(path: Path) -> dict:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (ValueError, OSError, zipfile.BadZipFile) as e:
        raise InputError(f"not a readable .npz SMPL file ({e})", path=path) from None


def resolve_smpl_path(path: str | os.PathLike, gender: str = "neutral") -> Path:
    """The SMPL file for ``path`` (a file, or a folder holding one of ``SMPL_FILE_NAMES[gender]``)."""
    if gender not in SMPL_FILE_NAMES:
        raise InputError(f"unknown SMPL gender {gender!r}; use one of {sorted(SMPL_FILE_NAMES)}")
    p = Path(path).expanduser()
    if p.is_dir():
        for name in SMPL_FILE_NAMES[gender]:
            for cand in (p / name, p / "smpl" / name):
                if cand.is_file():
                    return cand
        raise ModelFilesMissingError(f"SMPL {gender} model", [str(p / n) for n in SMPL_FILE_NAMES[gender]],
                                     SMPL_HOW_TO_GET)
    if not p.is_file():
        raise ModelFilesMissingError(f"SMPL {gender} model", [str(p)], SMPL_HOW_TO_GET)
    return p


def read_smpl_arrays(path: str | os.PathLike, gender: str = "neutral") -> dict:
    """The SMPL arrays of a ``.pkl`` / ``.npz`` file (chumpy objects become numpy, sparse stays scipy).

    Raises ModelFilesMissingError when the file is absent, UnsafeFileError for a pickle asking for code,
    InputError for any other unreadable file or a file lacking SMPL arrays.
    """
    p = resolve_smpl_path(path, gender)
    suffix = p.suffix.lower()
    if suffix in (".pkl", ".pickle"):
        arrays = _read_pickle(p)
    elif suffix == ".npz":
        arrays = _read_npz(p)
    else:
        raise InputError("unknown SMPL file type (expected .pkl or .npz)", path=p)
    validate_smpl_arrays(arrays, str(p))
    return arrays


def _dense(a: Any) -> np.ndarray:
    if hasattr(a, "toarray"):
        return np.asarray(a.toarray())
    return np.asarray(a)


def validate_smpl_arrays(arrays: dict, source: str = "arrays") -> None:
    """Raise InputError (naming ``source``) unless ``arrays`` hold a consistent SMPL model."""
    missing = [k for k in REQUIRED_KEYS if k not in arrays]
    if missing:
        raise InputError(f"not a SMPL model: missing arrays {missing}", path=source)
    try:
        v = np.asarray(arrays["v_template"])
        V = v.shape[0]
        checks = {
            "v_template": v.shape == (V, 3),
            "shapedirs": np.shape(arrays["shapedirs"])[:2] == (V, 3) and np.ndim(arrays["shapedirs"]) == 3,
            "posedirs": np.shape(arrays["posedirs"]) == (V, 3, 207),
            "J_regressor": tuple(arrays["J_regressor"].shape) == (24, V),
            "weights": np.shape(arrays["weights"]) == (V, 24),
            "kintree_table": np.shape(arrays["kintree_table"]) == (2, 24),
            "f": np.ndim(arrays["f"]) == 2 and np.shape(arrays["f"])[1] == 3,
        }
    except (AttributeError, IndexError, TypeError, ValueError) as e:
        raise InputError(f"not a SMPL model: malformed arrays ({e})", path=source) from None
    bad = [k for k, ok in checks.items() if not ok]
    if bad:
        shapes = {k: tuple(np.shape(arrays[k])) if k != "J_regressor" else tuple(arrays[k].shape) for k in bad}
        raise InputError(f"not a SMPL model: wrong shapes {shapes}", path=source)
    if V < 6788:
        raise InputError(f"not a SMPL model: {V} vertices (smplx needs at least 6,788)", path=source)
    f = np.asarray(arrays["f"])
    if f.size and (f.min() < 0 or f.max() >= V):
        raise InputError("not a SMPL model: faces index missing vertices", path=source)


# --------------------------------------------------------------------------- the model
class _Struct:
    def __init__(self, **kw: Any) -> None:
        self.__dict__.update(kw)


class SMPLBody(BodyModel):
    """SMPL (smplx) behind the BodyModel protocol.

    forward(global_orient (B,3) axis-angle, body_pose (B,69) axis-angle of joints 1..23, betas (B,≤10),
    transl (B,3) metres) → BodyOutput with joints {set: (B,J,3) metres} and optionally vertices (B,6890,3).
    """

    name = "smpl"
    pose_dim = 69

    def __init__(
        self,
        arrays: dict,
        *,
        num_betas: int = 10,
        j_regressor_h36m: np.ndarray | None = None,
        j_regressor_extra: np.ndarray | None = None,
        source: str = "arrays",
        name: str = "smpl",
    ) -> None:
        super().__init__()
        import smplx

        validate_smpl_arrays(arrays, source)
        self.name = name
        self.source = source
        arr = dict(arrays)
        arr["shapedirs"] = np.asarray(arr["shapedirs"])
        V = int(np.asarray(arr["v_template"]).shape[0])
        self.num_betas = int(min(num_betas, arr["shapedirs"].shape[-1]))
        with contextlib.redirect_stdout(io.StringIO()):  # smplx prints a warning about 10 betas
            self.smpl = smplx.SMPL(
                "", data_struct=_Struct(**arr), num_betas=self.num_betas, create_betas=False,
                create_global_orient=False, create_body_pose=False, create_transl=False, dtype=torch.float32,
            )
        self._faces = np.asarray(arr["f"]).astype(np.int32)
        self._num_vertices = V

        sets = ["smpl24", "smpl30", "coco17", "graph15", "openpose18"]
        # --- vertex-based joints: rows over a small selected vertex set
        rows: list[np.ndarray] = [np.eye(1, V, SMPL30_VERTEX_PICKS[n])[0] for n in SMPL30_VERTEX_PICKS]
        if j_regressor_extra is not None:
            ext = _dense(j_regressor_extra)
            if ext.ndim != 2 or ext.shape[1] != V or ext.shape[0] < 4:
                raise InputError(f"J_regressor_extra must be (≥4, {V}), got {ext.shape}", path=source)
            rows.append(ext[3])
            self.head_top_source = "J_regressor_extra[3]"
        else:
            rows.append(np.eye(1, V, HEAD_TOP_VERTEX)[0])
            self.head_top_source = f"vertex {HEAD_TOP_VERTEX}"
        if j_regressor_h36m is not None:
            h36 = _dense(j_regressor_h36m)
            if h36.shape != (17, V):
                raise InputError(f"J_regressor_h36m must be (17, {V}), got {h36.shape}", path=source)
            rows.extend(list(h36))
            sets.append("h36m17")
        self.has_h36m = j_regressor_h36m is not None
        R = np.stack(rows)  # (6 [+17], V)
        sel = np.nonzero(np.abs(R).sum(0) > 0)[0]
        self.register_buffer("_sel", torch.as_tensor(sel, dtype=torch.long), persistent=False)
        self.register_buffer("_vreg", torch.as_tensor(R[:, sel], dtype=torch.float32), persistent=False)
        self.joint_sets = tuple(sets)

        # --- joints-only path: the skeleton regressed from the shape space directly
        Jr = self.smpl.J_regressor  # (24, V)
        self.register_buffer("_j_template", Jr @ self.smpl.v_template, persistent=False)  # (24, 3)
        self.register_buffer("_j_dirs", torch.einsum("jv,vdb->jdb", Jr, self.smpl.shapedirs), persistent=False)
        self.register_buffer("_sel_template", self.smpl.v_template[sel], persistent=False)  # (S, 3)
        self.register_buffer("_sel_dirs", self.smpl.shapedirs[sel], persistent=False)  # (S, 3, B)
        cols = (torch.as_tensor(sel)[:, None] * 3 + torch.arange(3)).reshape(-1)
        self.register_buffer("_sel_posedirs", self.smpl.posedirs[:, cols], persistent=False)  # (207, S*3)
        self.register_buffer("_sel_weights", self.smpl.lbs_weights[sel], persistent=False)  # (S, 24)

        self._map30 = {s: torch.as_tensor(J.mapping("smpl30", s)) for s in ("coco17", "graph15", "openpose18")}
        std = torch.tensor([SMPL_POSE_STD[n] for n in J.SMPL24[1:]], dtype=torch.float32)
        self.register_buffer("_pose_std", std.repeat_interleave(3), persistent=False)
        lo = torch.full((69,), -float("inf"))
        hi = torch.full((69,), float("inf"))
        for n, lims in SMPL_JOINT_LIMITS.items():
            j = J.SMPL24.index(n) - 1
            for c, (a, b) in enumerate(lims):
                lo[3 * j + c], hi[3 * j + c] = a, b
        self.register_buffer("_lim_lo", lo, persistent=False)
        self.register_buffer("_lim_hi", hi, persistent=False)

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_arrays(cls, arrays: dict, **kw: Any) -> SMPLBody:
        """From a dict of the 7 SMPL arrays (see ``REQUIRED_KEYS``)."""
        return cls(arrays, **kw)

    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike,
        gender: str = "neutral",
        *,
        j_regressor_h36m: str | os.PathLike | np.ndarray | None = None,
        j_regressor_extra: str | os.PathLike | np.ndarray | None = None,
        num_betas: int = 10,
    ) -> SMPLBody:
        """From a SMPL ``.pkl`` / ``.npz`` (or a folder holding one); optional regressors as ``.npy``."""
        p = resolve_smpl_path(path, gender)
        arrays = read_smpl_arrays(p, gender)
        log.info("loaded SMPL %s model from %s", gender, p)
        return cls(arrays, num_betas=num_betas, j_regressor_h36m=_load_regressor(j_regressor_h36m),
                   j_regressor_extra=_load_regressor(j_regressor_extra), source=str(p))

    # ----------------------------------------------------------------- protocol
    @property
    def faces(self) -> np.ndarray:
        return self._faces

    @property
    def num_vertices(self) -> int:
        return self._num_vertices

    @property
    def parents(self) -> torch.Tensor:
        """(24,) parent index of each SMPL joint (-1 for the root)."""
        return self.smpl.parents

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
        global_orient = global_orient.expand(B, -1)
        body_pose = body_pose.expand(B, -1)
        betas = betas[:, : self.num_betas].expand(B, -1)
        if betas.shape[1] < self.num_betas:
            betas = torch.nn.functional.pad(betas, (0, self.num_betas - betas.shape[1]))
        if transl is None:
            transl = global_orient.new_zeros(B, 3)
        transl = transl.expand(B, -1)

        vertices = None
        if return_vertices:
            out = self.smpl(betas=betas, body_pose=body_pose, global_orient=global_orient, transl=transl)
            vertices = out.vertices
            j24 = out.joints[:, :24]
            vsel = vertices[:, self._sel]
        else:
            j24, vsel = self._skeleton_and_selected(global_orient, body_pose, betas)
            j24 = j24 + transl[:, None]
            vsel = vsel + transl[:, None]
        vj = torch.einsum("ks,bsd->bkd", self._vreg, vsel)  # (B, 6 [+17], 3)
        j30 = torch.cat([j24, vj[:, :6]], dim=1)
        res: dict[str, torch.Tensor] = {}
        for s in joint_sets:
            if s == "smpl24":
                res[s] = j24
            elif s == "smpl30":
                res[s] = j30
            elif s == "h36m17":
                res[s] = vj[:, 6:23]
            else:
                res[s] = j30[:, self._map30[s]]
        return BodyOutput(joints=res, vertices=vertices)

    def joints_from_mesh(self, vertices: torch.Tensor) -> torch.Tensor:
        """The release's SMPL-30 joints of a posed mesh (spec §2.11, ``common/model.py:124``): all 30 rows —
        the 24 J_regressor rows included — are regressed from the *posed* vertices (B, V, 3) → (B, 30, 3).

        These are not the kinematic skeleton joints that ``forward`` returns for "smpl24"/"smpl30" (those sit
        up to ~3 cm away once the body is posed); the DPMesh network's outputs use these.
        """
        jr = self.smpl.J_regressor.to(vertices.dtype)  # (24, V), dense
        j24 = torch.einsum("jv,bvd->bjd", jr, vertices)
        vj = torch.einsum("ks,bsd->bkd", self._vreg[:6].to(vertices.dtype), vertices[:, self._sel])
        return torch.cat([j24, vj], dim=1)

    def _skeleton_and_selected(
        self, global_orient: torch.Tensor, body_pose: torch.Tensor, betas: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Posed joints (B,24,3) and posed selected vertices (B,S,3), both before ``transl`` (as smplx lbs)."""
        from smplx.lbs import batch_rigid_transform, batch_rodrigues

        B = betas.shape[0]
        dtype = self._j_template.dtype
        joints = self._j_template + torch.einsum("bl,jdl->bjd", betas, self._j_dirs)  # (B, 24, 3)
        full = torch.cat([global_orient, body_pose], dim=1).reshape(-1, 3)
        rot = batch_rodrigues(full).view(B, 24, 3, 3)
        posed, A = batch_rigid_transform(rot, joints, self.smpl.parents, dtype=dtype)
        ident = torch.eye(3, dtype=dtype, device=rot.device)
        feat = (rot[:, 1:] - ident).view(B, -1)  # (B, 207)
        v = self._sel_template + torch.einsum("bl,sdl->bsd", betas, self._sel_dirs)
        v = v + (feat @ self._sel_posedirs).view(B, -1, 3)
        T = torch.einsum("sj,bjk->bsk", self._sel_weights, A.view(B, 24, 16)).view(B, -1, 4, 4)
        v = (T[..., :3, :3] @ v.unsqueeze(-1)).squeeze(-1) + T[..., :3, 3]
        return posed, v

    def pose_prior(self, body_pose: torch.Tensor) -> torch.Tensor:
        """(B,) Σ (θ/σ)² over the 69 axis-angle values, σ = ``SMPL_POSE_STD`` per joint (zero mean)."""
        return (self.pose_prior_residuals(body_pose) ** 2).sum(-1)

    def pose_prior_residuals(self, body_pose: torch.Tensor) -> torch.Tensor:
        """(B, 69) θ/σ."""
        return body_pose / self._pose_std

    def joint_limit_penalty(self, body_pose: torch.Tensor) -> torch.Tensor:
        """(B,) Σ squared excess (radians²) of the axis-angle components outside ``SMPL_JOINT_LIMITS``."""
        return (self.joint_limit_residuals(body_pose) ** 2).sum(-1)

    def joint_limit_residuals(self, body_pose: torch.Tensor) -> torch.Tensor:
        """(B, 2·69) the excess of each axis-angle component below and above its limits (0 where unlimited)."""
        lo = torch.nn.functional.relu(self._lim_lo - body_pose)
        hi = torch.nn.functional.relu(body_pose - self._lim_hi)
        lo = torch.where(torch.isfinite(self._lim_lo), lo, torch.zeros_like(lo))
        hi = torch.where(torch.isfinite(self._lim_hi), hi, torch.zeros_like(hi))
        return torch.cat([lo, hi], 1)


def _load_regressor(r: str | os.PathLike | np.ndarray | None) -> np.ndarray | None:
    if r is None or isinstance(r, np.ndarray):
        return r
    p = Path(r).expanduser()
    if not p.is_file():
        raise ModelFilesMissingError(f"joint regressor {p.name}", [str(p)],
                                     "it ships with the DPMesh / 3DCrowdNet data folder")
    try:
        return np.load(p, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise InputError(f"not a .npy joint regressor ({e})", path=p) from None
