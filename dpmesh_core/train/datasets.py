"""Training / evaluation datasets behind a registry (no string exec), and sample building.

Datasets (``DATASETS`` name → class; ``build_dataset(name, **kwargs)``):

* ``"dpmesh"`` — the project's own annotation format: JSON lines, one image per line::

      {"image": "images/000001.jpg",            # relative to the .jsonl file (or absolute)
       "sequence": "seq name", "width": W, "height": H,
       "camera": {"focal": [fx, fy], "principal": [cx, cy]},          # optional
       "persons": [{"keypoints": [[x, y, c], ...],  "joint_set": "smpl30",   # 2-D image px; c>0 = labelled
                    "visible": [true, ...],          # optional, default c > 0
                    "box": [x0, y0, x1, y1],         # optional
                    "params": {"global_orient": [3], "body_pose": [69], "betas": [10], "transl": [3]},
                    "joints3d": [[X, Y, Z], ...], "joints3d_set": "smpl30"}]}   # camera frame, metres

  ``write_annotations`` / ``read_annotations`` write and read it (atomic write).
* ``"3dpw"`` — 3DPW release sequence pickles (``sequenceFiles/<split>/*.pkl``), read with a restricted
  unpickler (numpy arrays and plain containers only, latin1 encoding). Images from
  ``<root>/imageFiles/<sequence>/image_%05d.jpg``.
* ``"coco"`` — COCO key-point JSON, optionally with per-person SMPL fits (NeuralAnnot layout:
  ``{ann_id: {"smpl_param": {"pose": [72], "shape": [10], "trans": [3]}, "cam_param": {...}}}``).
* ``MixedDataset`` — mixes datasets by ratio.

Broken annotations and missing images are reported (logged with counts, ``dataset.stats``) and
skipped when the dataset is built; an image that fails to decode while training makes ``__getitem__``
return ``None`` (counted in ``stats.failed_reads``) and ``collate`` drops it — never a crash mid-epoch.

Samples (``SampleBuilder``): one person → a 256² crop (``geometry.crop_affine`` + ``cv2.warpAffine``) and
arrays (see ``SampleBuilder.__call__``) with key-points in SMPL-30 order in the 32-grid (input) and the
64-grid (targets).
"""

from __future__ import annotations

import json
import logging
import os
import pickle
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..body.joints import GRAPH15, SMPL30, convert, convert_visibility, mapping, num_joints
from ..errors import InputError, MediaError, UnsafeFileError
from ..geometry import apply_affine, crop_affine, dpmesh_focal, square_box
from ..io.safe_pickle import RestrictedUnpickler, numpy_global
from . import augment as aug
from .config import SampleConfig  # noqa: F401 - re-exported (one class: config and samples)

log = logging.getLogger(__name__)

_GRAPH15_IDX = np.array([SMPL30.index(n) for n in GRAPH15])
#: SMPL-24 joints whose pose parameters are not supervised (ankles, toes, wrists, hands; spec §5.7)
_POSE_UNSUPERVISED = (7, 8, 10, 11, 20, 21, 22, 23)


# ---------------------------------------------------------------------------------------- annotations


@dataclass
class PersonAnnotation:
    """One annotated person. Arrays are numpy; optional parts are None.

    keypoints: (J, 3) image px + confidence (> 0 = labelled); visible: (J,) bool; joint_set: name.
    box: (4,) x0, y0, x1, y1 px. params: {"global_orient" (3,), "body_pose" (69,), "betas" (10,),
    "transl" (3,)} camera frame. joints3d: (K, 3) camera frame metres in ``joints3d_set`` order.
    """

    keypoints: np.ndarray
    joint_set: str = "coco17"
    visible: np.ndarray | None = None
    box: np.ndarray | None = None
    params: dict[str, np.ndarray] | None = None
    joints3d: np.ndarray | None = None
    joints3d_set: str = "smpl30"

    def __post_init__(self) -> None:
        self.keypoints = np.asarray(self.keypoints, np.float64).reshape(-1, 3)
        if self.keypoints.shape[0] != num_joints(self.joint_set):
            raise ValueError(f"{self.keypoints.shape[0]} key-points for joint set {self.joint_set!r}")
        if not np.isfinite(self.keypoints).all():
            raise ValueError("key-points contain NaN/inf")
        vis = self.keypoints[:, 2] > 0 if self.visible is None else np.asarray(self.visible, bool)
        if vis.shape != (self.keypoints.shape[0],):
            raise ValueError("visible has the wrong length")
        self.visible = vis
        if self.box is not None:
            self.box = np.asarray(self.box, np.float64).reshape(4)
        if self.params is not None:
            p = {k: np.asarray(v, np.float64).reshape(-1) for k, v in self.params.items()}
            sizes = {"global_orient": 3, "body_pose": 69, "betas": 10, "transl": 3}
            for k, n in sizes.items():
                if k not in p:
                    raise ValueError(f"params lacks {k!r}")
                if k != "betas" and p[k].shape != (n,):
                    raise ValueError(f"params[{k!r}] must have {n} values")
                if not np.isfinite(p[k]).all():
                    raise ValueError(f"params[{k!r}] contains NaN/inf")
            self.params = p
        if self.joints3d is not None:
            self.joints3d = np.asarray(self.joints3d, np.float64).reshape(-1, 3)
            if self.joints3d.shape[0] != num_joints(self.joints3d_set):
                raise ValueError(f"{self.joints3d.shape[0]} 3-D joints for joint set {self.joints3d_set!r}")
            if not np.isfinite(self.joints3d).all():
                raise ValueError("joints3d contain NaN/inf")

    def to_json(self) -> dict:
        d: dict[str, Any] = {"keypoints": np.round(self.keypoints, 3).tolist(), "joint_set": self.joint_set,
                             "visible": [bool(v) for v in self.visible]}
        if self.box is not None:
            d["box"] = [float(v) for v in self.box]
        if self.params is not None:
            d["params"] = {k: [float(x) for x in v] for k, v in self.params.items()}
        if self.joints3d is not None:
            d["joints3d"] = np.round(self.joints3d, 6).tolist()
            d["joints3d_set"] = self.joints3d_set
        return d

    @staticmethod
    def from_json(d: dict) -> PersonAnnotation:
        if not isinstance(d, dict) or "keypoints" not in d:
            raise ValueError("a person needs 'keypoints'")
        unknown = set(d) - {"keypoints", "joint_set", "visible", "box", "params", "joints3d", "joints3d_set"}
        if unknown:
            raise ValueError(f"unknown person keys {sorted(unknown)}")
        return PersonAnnotation(
            keypoints=d["keypoints"], joint_set=d.get("joint_set", "coco17"), visible=d.get("visible"),
            box=d.get("box"), params=d.get("params"), joints3d=d.get("joints3d"),
            joints3d_set=d.get("joints3d_set", "smpl30"))


@dataclass
class ImageRecord:
    """One image with its persons. ``image`` absolute path; ``camera`` {"focal": (2,), "principal": (2,)}."""

    image: Path
    width: int
    height: int
    persons: list[PersonAnnotation]
    sequence: str = ""
    camera: dict[str, tuple[float, float]] | None = None

    @property
    def focal(self) -> float:
        """The focal length used by the DPMesh crop camera: the camera's fx if known, else √(W² + H²)."""
        if self.camera is not None:
            return float(self.camera["focal"][0])
        return dpmesh_focal(self.width, self.height)

    def to_json(self, base: Path | None = None) -> dict:
        img = Path(self.image)
        if base is not None:
            try:  # resolved first: a path relative to the working folder is made relative to ``base``
                img = img.resolve().relative_to(base)
            except (ValueError, OSError):
                img = img.resolve() if not img.is_absolute() else img
        d: dict[str, Any] = {"image": img.as_posix(), "sequence": self.sequence, "width": int(self.width),
                             "height": int(self.height), "persons": [p.to_json() for p in self.persons]}
        if self.camera is not None:
            d["camera"] = {k: [float(x) for x in v] for k, v in self.camera.items()}
        return d

    @staticmethod
    def from_json(d: dict, base: Path) -> ImageRecord:
        if not isinstance(d, dict):
            raise ValueError("a record must be a JSON object")
        for k in ("image", "width", "height", "persons"):
            if k not in d:
                raise ValueError(f"missing {k!r}")
        w, h = int(d["width"]), int(d["height"])
        if w <= 0 or h <= 0:
            raise ValueError("width/height must be positive")
        cam = d.get("camera")
        if cam is not None:
            cam = {"focal": tuple(float(x) for x in cam["focal"]), "principal": tuple(float(x) for x in cam["principal"])}
            if len(cam["focal"]) != 2 or len(cam["principal"]) != 2 or cam["focal"][0] <= 0:
                raise ValueError("camera needs focal (2,) > 0 and principal (2,)")
        img = Path(d["image"])
        return ImageRecord(image=img if img.is_absolute() else base / img, width=w, height=h,
                           persons=[PersonAnnotation.from_json(p) for p in d["persons"]],
                           sequence=str(d.get("sequence", "")), camera=cam)


def write_annotations(path: str | os.PathLike, records: Sequence[ImageRecord]) -> Path:
    """Write records as JSON lines (image paths relative to the file's folder when possible), atomically."""
    from ..io.atomic import atomic_write_text

    p = Path(path)
    base = p.parent.resolve()
    lines = [json.dumps(r.to_json(base), separators=(",", ":")) for r in records]
    return atomic_write_text(p, "\n".join(lines) + ("\n" if lines else ""))


@dataclass
class DatasetStats:
    """Counts reported when a dataset is built and while it is read."""

    records: int = 0
    persons: int = 0
    broken_records: int = 0
    missing_images: int = 0
    skipped_persons: int = 0
    failed_reads: int = 0
    problems: list[str] = field(default_factory=list)  # first few messages, for the report

    def note(self, msg: str) -> None:
        if len(self.problems) < 20:
            self.problems.append(msg)

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("records", "persons", "broken_records", "missing_images",
                                              "skipped_persons", "failed_reads")}


def read_annotations(path: str | os.PathLike, stats: DatasetStats | None = None) -> list[ImageRecord]:
    """Read a JSON-lines annotation file. Broken lines are skipped and counted in ``stats``.

    Raises InputError only when the file itself cannot be read.
    """
    p = Path(path)
    stats = stats if stats is not None else DatasetStats()
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read annotations: {e}", p) from e
    out = []
    base = p.parent.resolve()
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(ImageRecord.from_json(json.loads(line), base))
        except (ValueError, TypeError, KeyError, IndexError) as e:
            stats.broken_records += 1
            stats.note(f"{p}:{n}: {e}")
    return out


# ----------------------------------------------------------------------------------------------- samples


class SampleBuilder:
    """Turns (image, person annotation) into a dict of numpy arrays (see ``__call__``)."""

    def __init__(self, cfg: SampleConfig | None = None):
        self.cfg = cfg or SampleConfig()

    def __call__(self, img: np.ndarray, rec: ImageRecord, person: PersonAnnotation,
                 rng: np.random.Generator, near: list[PersonAnnotation] | None = None) -> dict[str, Any]:
        """Build one sample.

        img: (H, W, 3) uint8 RGB. Returns (S = input_size):
          image (3, S, S) float32 RGB in [0, 1] (occluded when training);
          input_joints (30, 2) float32 crop px (PoseFix-noisy when training; unknown slots (0, 0));
          input_mask (30,) float32 (GT visible and inside the crop; random joint drop when training);
          joints_2d (30, 2) 64-grid clean targets, joints_2d_valid (30,);
          joints_img (15, 3) 64-grid x, y and depth bin (graph-15), joints_img_valid (15,);
          joints_cam (30, 3) root-relative metres, joints_cam_valid (30,); has_3d ();
          pose (72,) axis-angle, pose_valid (72,), betas (10,), has_params ();
          visible (30,) GT visibility (inside the crop); focal () px; box (4,) the crop box in the image;
          affine (2, 3) image → crop px; with ``return_clean``: image_clean, input_joints_clean,
          input_mask_clean (the NKR teacher's inputs: no occlusion, no noise, no drop).
        """
        c = self.cfg
        S = c.input_size
        kp = convert(person.keypoints, person.joint_set, "smpl30").astype(np.float64)  # (30,3)
        known = kp[:, 2] > 0
        vis = convert_visibility(person.visible, person.joint_set, "smpl30") & known
        if c.train:
            p = aug.sample_aug_params(rng, scale_factor=c.scale_factor, rotation_factor=c.rotation_factor,
                                      rotation_prob=c.rotation_prob, flip_prob=c.flip_prob,
                                      color_factor=c.color_factor)
            box_scale = p.scale * rng.uniform(*c.box_jitter)
        else:
            p = aug.AugParams()
            box_scale = c.test_box_scale
        if person.box is not None:
            box = person.box
        else:
            box = _kp_box(kp[known], c.box_pad)
        box = square_box(box, box_scale, (rec.width, rec.height))
        A = crop_affine(box, S, p.rotation, p.flip)
        crop = _warp(img, A, S).astype(np.float32) / 255.0
        perm = np.arange(30)
        if p.flip:
            from ..body.joints import flip_permutation

            perm = flip_permutation("smpl30")
        xy = apply_affine(A, kp[:, :2])[perm]
        known, vis = known[perm], vis[perm]
        in_crop = (xy[:, 0] >= 0) & (xy[:, 0] < S) & (xy[:, 1] >= 0) & (xy[:, 1] < S)
        out: dict[str, Any] = {}
        g_out = c.output_size / S
        out["joints_2d"] = (xy * g_out).astype(np.float32)
        out["joints_2d_valid"] = (known & in_crop).astype(np.float32)
        out["visible"] = (vis & in_crop).astype(np.float32)
        clean_mask = (vis & in_crop).astype(np.float32)
        noisy = xy.copy()
        mask = clean_mask.copy()
        crop_aug = crop
        if c.train:
            crop_aug = aug.apply_color(crop, p.color)
            if c.occlusion_prob > 0 and rng.random() < c.occlusion_prob:
                region = _kp_box(np.c_[xy[known], np.ones(known.sum())], 1.0) if known.any() else None
                crop_aug, _ = aug.occlude_crop(crop_aug, rng, region, c.occlusion_max_area)
            if c.posefix and vis.any():
                near30 = None
                if near:
                    near30 = []
                    for q in near:
                        k = convert(q.keypoints, q.joint_set, "smpl30").astype(np.float64)
                        k2 = np.c_[apply_affine(A, k[:, :2]), k[:, 2]][perm]
                        near30.append(k2)
                    near30 = np.stack(near30)
                noisy = aug.noisy_input_keypoints(np.c_[xy, vis], vis, rng, near30)
            if c.joint_drop > 0:
                mask = aug.random_joint_drop(mask, c.joint_drop, rng)
        noisy = np.where(known[:, None], noisy, 0.0)  # unknown slots are (0, 0) as released
        out["image"] = np.ascontiguousarray(crop_aug.transpose(2, 0, 1))
        out["input_joints"] = noisy.astype(np.float32)
        out["input_mask"] = mask
        if c.return_clean:
            out["image_clean"] = np.ascontiguousarray(crop.transpose(2, 0, 1))
            out["input_joints_clean"] = np.where(known[:, None], xy, 0.0).astype(np.float32)
            out["input_mask_clean"] = clean_mask

        # 3-D targets
        j3 = np.zeros((30, 3))
        j3_valid = np.zeros(30, bool)
        if person.joints3d is not None:
            m = mapping(person.joints3d_set, "smpl30")
            ok = m >= 0
            j3[ok] = person.joints3d[m[ok]]
            j3_valid = ok.copy()
            # the crop affine rotates, then mirrors (geometry.crop_affine): same order in 3-D
            if p.rotation:
                j3 = aug.rotate_points_3d(j3, p.rotation)
            if p.flip:
                j3 = aug.flip_points_3d(j3, "smpl30")
                j3_valid = j3_valid[perm]
        has_3d = bool(j3_valid[0])
        root = j3[0].copy()
        jc = j3 - root if has_3d else np.zeros((30, 3))
        out["joints_cam"] = jc.astype(np.float32)
        out["joints_cam_valid"] = (j3_valid & has_3d).astype(np.float32)
        out["has_3d"] = np.float32(has_3d)
        zbin = (jc[:, 2] / (c.bbox_3d_size / 2.0) + 1.0) / 2.0 * c.output_size
        ji = np.c_[out["joints_2d"], zbin][_GRAPH15_IDX]
        jiv = out["joints_2d_valid"][_GRAPH15_IDX].copy()
        if has_3d:
            jiv *= ((zbin[_GRAPH15_IDX] >= 0) & (zbin[_GRAPH15_IDX] < c.output_size)).astype(np.float32)
        out["joints_img"] = ji.astype(np.float32)
        out["joints_img_valid"] = jiv
        # body parameters
        pose = np.zeros(72)
        betas = np.zeros(10)
        has_params = person.params is not None
        if has_params:
            pose = np.r_[person.params["global_orient"], person.params["body_pose"]]
            b = person.params["betas"][:10]
            betas[: len(b)] = b
            if np.abs(betas).max() > 3:  # spec §5.1: implausible fits reset
                betas[:] = 0
            if p.rotation:
                pose = aug.rotate_root(pose, p.rotation)
            if p.flip:
                pose = aug.flip_pose(pose)
        pv = np.ones((24, 3), np.float32)
        pv[list(_POSE_UNSUPERVISED)] = 0
        out["pose"] = pose.astype(np.float32)
        out["pose_valid"] = (pv.reshape(72) * has_params).astype(np.float32)
        out["betas"] = betas.astype(np.float32)
        out["has_params"] = np.float32(has_params)
        out["focal"] = np.float32(rec.focal)
        out["box"] = box.astype(np.float32)
        out["affine"] = A.astype(np.float32)
        return out


def _kp_box(kp: np.ndarray, pad: float) -> np.ndarray:
    if len(kp) == 0:
        raise ValueError("no labelled key-point")
    lo, hi = kp[:, :2].min(0), kp[:, :2].max(0)
    c, half = (lo + hi) / 2, np.maximum((hi - lo) / 2 * pad, 8.0)
    return np.r_[c - half, c + half]


def _warp(img: np.ndarray, A: np.ndarray, size: int) -> np.ndarray:
    import cv2

    return cv2.warpAffine(img, A, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)


# ----------------------------------------------------------------------------------------------- datasets


class PersonDataset(torch.utils.data.Dataset):
    """Base: a list of ``ImageRecord`` flattened to one item per usable person.

    Subclasses fill ``self.records`` in ``_load``. ``seed`` and ``set_epoch`` make augmentation a
    deterministic function of (seed, epoch, index) — needed for exact resume.
    """

    name = "base"

    def __init__(self, *, sample: SampleConfig | None = None, seed: int = 0, min_keypoints: int = 4,
                 check_images: bool = True):
        self.builder = SampleBuilder(sample)
        self.seed = int(seed)
        self.epoch = 0
        self.stats = DatasetStats()
        self.records: list[ImageRecord] = []
        self._load()
        self.items: list[tuple[int, int]] = []
        missing: set[int] = set()
        for ri, rec in enumerate(self.records):
            if check_images and not Path(rec.image).is_file():
                missing.add(ri)
                self.stats.missing_images += 1
                self.stats.note(f"missing image {rec.image}")
                continue
            for pi, person in enumerate(rec.persons):
                if int((person.keypoints[:, 2] > 0).sum()) < min_keypoints:
                    self.stats.skipped_persons += 1
                    continue
                self.items.append((ri, pi))
        self.stats.records = len(self.records)
        self.stats.persons = len(self.items)
        if self.stats.broken_records or self.stats.missing_images or self.stats.skipped_persons:
            log.warning("%s: %d broken records, %d missing images, %d persons with < %d key-points skipped; "
                        "%d usable persons%s", self.describe(), self.stats.broken_records,
                        self.stats.missing_images, self.stats.skipped_persons, min_keypoints,
                        len(self.items), (": " + "; ".join(self.stats.problems[:3])) if self.stats.problems else "")

    def _load(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self) -> str:
        return self.name

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.items)

    def sequence_of(self, index: int) -> str:
        return self.records[self.items[index][0]].sequence

    def annotation(self, index: int) -> tuple[ImageRecord, PersonAnnotation]:
        ri, pi = self.items[index]
        rec = self.records[ri]
        return rec, rec.persons[pi]

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        from ..io.images import read_image

        ri, pi = self.items[index]
        rec = self.records[ri]
        rng = np.random.default_rng([self.seed, self.epoch, int(index)])
        try:
            img = read_image(rec.image)
        except (MediaError, OSError) as e:
            self.stats.failed_reads += 1
            log.warning("%s: skipping sample %d: %s", self.describe(), index, e)
            return None
        near = [q for k, q in enumerate(rec.persons) if k != pi]
        try:
            s = self.builder(img, rec, rec.persons[pi], rng, near)
        except (ValueError, FloatingPointError) as e:
            self.stats.failed_reads += 1
            log.warning("%s: skipping sample %d: %s", self.describe(), index, e)
            return None
        s["index"] = np.int64(index)
        s["sequence"] = rec.sequence
        return s


class DPMeshAnnotations(PersonDataset):
    """The project's JSON-lines format (see module docstring). ``path``: a .jsonl file."""

    name = "dpmesh"

    def __init__(self, path: str | os.PathLike, **kwargs: Any):
        self.path = Path(path)
        super().__init__(**kwargs)

    def _load(self) -> None:
        self.records = read_annotations(self.path, self.stats)

    def describe(self) -> str:
        return f"dpmesh:{self.path}"


# -- 3DPW ----------------------------------------------------------------------------------------------

_PICKLE_ALLOW = numpy_global  # numpy arrays and the plain containers their pickles need


def safe_load_pickle(path: str | os.PathLike) -> Any:
    """Load a pickle of numpy arrays and plain containers (latin1 for Python-2 pickles).

    Raises UnsafeFileError if the file asks for any other global, InputError if it is unreadable.
    """
    p = Path(path)
    try:
        with open(p, "rb") as f:
            return RestrictedUnpickler(f, _PICKLE_ALLOW, str(p), encoding="latin1", what="a data file").load()
    except UnsafeFileError:
        raise
    except pickle.UnpicklingError as e:
        raise InputError(f"corrupt pickle: {e}", p) from e
    except (OSError, EOFError, ValueError, AttributeError, ImportError, IndexError, TypeError) as e:
        raise InputError(f"cannot read pickle: {e}", p) from e


class PW3D(PersonDataset):
    """3DPW release: ``root`` holds ``sequenceFiles/<split>/*.pkl`` and ``imageFiles/<seq>/``.

    Per frame and actor: 2-D key-points from ``poses2d`` (OpenPose-18, (3, 18) rows x, y, conf), SMPL
    parameters moved into the camera frame (global orient = R_cam · R_root, body pose as is, betas[:10];
    ``transl`` = R_cam · trans + t_cam, ignoring the root-joint offset, so use vertices root-aligned) and the
    24 SMPL joints ``jointPositions`` in the camera frame. Frames with ``campose_valid`` False are skipped.
    ``stride`` keeps every n-th frame.
    """

    name = "3dpw"

    def __init__(self, root: str | os.PathLike, split: str = "test", stride: int = 1, **kwargs: Any):
        self.root = Path(root)
        self.split = split
        self.stride = max(int(stride), 1)
        super().__init__(**kwargs)

    def describe(self) -> str:
        return f"3dpw:{self.root}/{self.split}"

    def _load(self) -> None:
        from ..geometry import axis_angle_to_matrix, matrix_to_axis_angle

        seq_dir = self.root / "sequenceFiles" / self.split
        files = sorted(seq_dir.glob("*.pkl"))
        if not files:
            raise InputError(f"no 3DPW sequence files (*.pkl) in {seq_dir}", seq_dir)
        for f in files:
            try:
                d = safe_load_pickle(f)
                seq = str(d["sequence"])
                K = np.asarray(d["cam_intrinsics"], np.float64)
                cam_poses = np.asarray(d["cam_poses"], np.float64)
                frames = np.asarray(d["img_frame_ids"]).astype(int)
                n_act = len(d["poses"])
                valid = [np.asarray(d["campose_valid"][a]).astype(bool) for a in range(n_act)]
            except (InputError, KeyError, TypeError, ValueError, IndexError) as e:
                self.stats.broken_records += 1
                self.stats.note(f"{f}: {e}")
                continue
            img_dir = self.root / "imageFiles" / seq
            w, h = _image_size_or(img_dir / f"image_{int(frames[0]) if len(frames) else 0:05d}.jpg", (1080, 1920))
            for fi in range(0, len(frames), self.stride):
                persons = []
                for a in range(n_act):
                    try:
                        if not valid[a][fi]:
                            continue
                        R, t = cam_poses[fi, :3, :3], cam_poses[fi, :3, 3]
                        p2d = np.asarray(d["poses2d"][a][fi], np.float64).reshape(3, 18).T
                        pose = np.asarray(d["poses"][a][fi], np.float64)
                        go = matrix_to_axis_angle(R @ axis_angle_to_matrix(pose[:3]))
                        trans = R @ np.asarray(d["trans"][a][fi], np.float64) + t
                        jw = np.asarray(d["jointPositions"][a][fi], np.float64).reshape(24, 3)
                        j3 = jw @ R.T + t
                        betas = np.asarray(d["betas"][a], np.float64).reshape(-1)[:10]
                        persons.append(PersonAnnotation(
                            keypoints=p2d, joint_set="openpose18", visible=p2d[:, 2] > 0.05,
                            params={"global_orient": go, "body_pose": pose[3:72], "betas": betas, "transl": trans},
                            joints3d=j3, joints3d_set="smpl24"))
                    except (KeyError, TypeError, ValueError, IndexError) as e:
                        self.stats.skipped_persons += 1
                        self.stats.note(f"{f} frame {fi} actor {a}: {e}")
                if persons:
                    self.records.append(ImageRecord(
                        image=img_dir / f"image_{int(frames[fi]):05d}.jpg", width=w, height=h, persons=persons,
                        sequence=seq, camera={"focal": (K[0, 0], K[1, 1]), "principal": (K[0, 2], K[1, 2])}))


def _image_size_or(path: Path, default: tuple[int, int]) -> tuple[int, int]:
    try:
        from ..io.images import image_size

        return image_size(path)
    except Exception:  # noqa: BLE001 - a missing first frame is reported per sample later
        return default


# -- COCO ----------------------------------------------------------------------------------------------


class COCOKeypoints(PersonDataset):
    """COCO key-point JSON (``annotations`` with 51-value ``keypoints``, ``bbox`` x, y, w, h; ``images``).

    v = 1 (labelled, not visible) → labelled but invisible; v = 2 → visible. ``iscrowd`` people are skipped.
    ``smpl_fits``: optional JSON {annotation id: {"smpl_param": {"pose" (72,), "shape" (10,),
    "trans" (3,)}, "cam_param": {"focal" (2,), "princpt" (2,)}}} (NeuralAnnot); with it, persons carry
    body parameters (and the fit's camera, used for the focal length).
    """

    name = "coco"

    def __init__(self, annotations: str | os.PathLike, image_root: str | os.PathLike,
                 smpl_fits: str | os.PathLike | None = None, **kwargs: Any):
        self.ann_path = Path(annotations)
        self.image_root = Path(image_root)
        self.smpl_fits = Path(smpl_fits) if smpl_fits else None
        super().__init__(**kwargs)

    def describe(self) -> str:
        return f"coco:{self.ann_path}"

    def _load(self) -> None:
        try:
            data = json.loads(self.ann_path.read_text(encoding="utf-8"))
            images = {int(im["id"]): im for im in data["images"]}
            anns = data["annotations"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise InputError(f"not a COCO key-point file: {e}", self.ann_path) from e
        fits: dict = {}
        if self.smpl_fits is not None:
            try:
                fits = json.loads(self.smpl_fits.read_text(encoding="utf-8"))
            except (OSError, ValueError) as e:
                raise InputError(f"cannot read SMPL fits: {e}", self.smpl_fits) from e
        by_image: dict[int, list[tuple[PersonAnnotation, dict | None]]] = {}
        for a in anns:
            try:
                if a.get("iscrowd", 0):
                    continue
                k = np.asarray(a["keypoints"], np.float64).reshape(17, 3)
                vis = k[:, 2] >= 2
                k[:, 2] = (k[:, 2] > 0).astype(np.float64)
                x, y, bw, bh = (float(v) for v in a["bbox"])
                params, cam = None, None
                fit = fits.get(str(a.get("id")))
                if fit is not None:
                    sp = fit["smpl_param"]
                    pose = np.asarray(sp["pose"], np.float64).reshape(72)
                    params = {"global_orient": pose[:3], "body_pose": pose[3:], "betas": sp["shape"],
                              "transl": sp.get("trans", [0.0, 0.0, 0.0])}
                    cam = fit.get("cam_param")
                person = PersonAnnotation(keypoints=k, joint_set="coco17", visible=vis,
                                          box=[x, y, x + bw, y + bh], params=params)
                by_image.setdefault(int(a["image_id"]), []).append((person, cam))
            except (KeyError, TypeError, ValueError) as e:
                self.stats.broken_records += 1
                self.stats.note(f"{self.ann_path}: annotation {a.get('id') if isinstance(a, dict) else '?'}: {e}")
        for iid, plist in sorted(by_image.items()):
            im = images.get(iid)
            if im is None:
                self.stats.broken_records += 1
                continue
            cam = next((c for _, c in plist if c), None)
            camera = None
            if cam is not None:
                camera = {"focal": tuple(cam["focal"]), "principal": tuple(cam["princpt"])}
            self.records.append(ImageRecord(
                image=self.image_root / im["file_name"], width=int(im["width"]), height=int(im["height"]),
                persons=[p for p, _ in plist], sequence="coco", camera=camera))


# -- mixing --------------------------------------------------------------------------------------------


class MixedDataset(torch.utils.data.Dataset):
    """Mix datasets by ratio: an epoch of ``length`` samples (default: the sum of lengths), where each
    index is assigned to dataset k with frequency ratios[k] / sum(ratios) and a sample drawn from it
    (a fresh permutation per epoch, deterministic in (seed, epoch))."""

    def __init__(self, datasets: Sequence[torch.utils.data.Dataset], ratios: Sequence[float] | None = None,
                 length: int | None = None, seed: int = 0):
        if not datasets:
            raise ValueError("MixedDataset needs at least one dataset")
        self.datasets = list(datasets)
        r = np.asarray(ratios if ratios is not None else [1.0] * len(datasets), np.float64)
        if r.shape != (len(datasets),) or (r < 0).any() or r.sum() <= 0:
            raise ValueError("ratios must be one non-negative number per dataset, not all zero")
        self.ratios = r / r.sum()
        self.length = int(length) if length is not None else int(sum(len(d) for d in datasets))
        self.seed = int(seed)
        self.set_epoch(0)

    @property
    def stats(self) -> DatasetStats:
        s = DatasetStats()
        for d in self.datasets:
            ds = getattr(d, "stats", None)
            if ds is not None:
                for k, v in ds.as_dict().items():
                    setattr(s, k, getattr(s, k) + v)
        return s

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        for d in self.datasets:
            if hasattr(d, "set_epoch"):
                d.set_epoch(epoch)
        rng = np.random.default_rng([self.seed, self.epoch, 7919])
        ratios = self.ratios * np.array([len(d) > 0 for d in self.datasets], np.float64)  # empty sets get none
        ratios = ratios / ratios.sum() if ratios.sum() > 0 else self.ratios
        counts = np.floor(ratios * self.length).astype(int)
        counts[np.argmax(ratios)] += self.length - counts.sum()
        which = np.concatenate([np.full(c, k) for k, c in enumerate(counts)]) if self.length else np.zeros(0, int)
        rng.shuffle(which)
        local = np.zeros(self.length, np.int64)
        for k, d in enumerate(self.datasets):
            idx = np.nonzero(which == k)[0]
            n = len(d)
            if n == 0 or len(idx) == 0:
                continue
            reps = int(np.ceil(len(idx) / n))
            order = np.concatenate([rng.permutation(n) for _ in range(reps)])[: len(idx)]
            local[idx] = order
        self._which, self._local = which, local

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Any:
        k = int(self._which[index])
        return self.datasets[k][int(self._local[index])]


# -- registry / collate ----------------------------------------------------------------------------------

DATASETS: dict[str, type[PersonDataset]] = {
    "dpmesh": DPMeshAnnotations,
    "3dpw": PW3D,
    "coco": COCOKeypoints,
}


def build_dataset(kind: str, **kwargs: Any) -> PersonDataset:
    """Instantiate a registered dataset by name (``DATASETS``); ConfigError for an unknown name."""
    from ..errors import ConfigError

    try:
        cls = DATASETS[kind]
    except KeyError:
        raise ConfigError(f"unknown dataset {kind!r}; known: {', '.join(sorted(DATASETS))}", "kind") from None
    return cls(**kwargs)


def collate(samples: Sequence[dict[str, Any] | None]) -> dict[str, Any]:
    """Stack samples into a batch of tensors, dropping ``None`` (unreadable) samples.

    Numeric arrays → torch tensors (B, ...); strings → lists. ``batch["num_skipped"]`` counts the drops;
    an all-``None`` input gives ``{"num_skipped": n}`` with no "image" key.
    """
    ok = [s for s in samples if s is not None]
    out: dict[str, Any] = {"num_skipped": len(samples) - len(ok)}
    if not ok:
        return out
    for k in ok[0]:
        v = ok[0][k]
        if isinstance(v, str):
            out[k] = [s[k] for s in ok]
        else:
            out[k] = torch.from_numpy(np.stack([np.asarray(s[k]) for s in ok]))
    return out
