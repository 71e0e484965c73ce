"""Key-point files in and out: COCO (dataset and results), AlphaPose, OpenPose and mmpose JSON.

Every reader returns ``dict[key, list[Person]]`` (persons with ``source="file"``), where ``key`` is

* COCO dataset JSON: the image's ``file_name`` (or its ``frame_index`` int when the image entry has one,
  which is what ``write_coco_keypoints`` stores for integer keys, so video frames round-trip);
  every image appears, with an empty list when it has no person;
* COCO results list (``[{"image_id", "category_id", "keypoints", "score"}, ...]``): ``image_id`` as stored;
* AlphaPose JSON (a results-like list whose ``image_id`` is the image file name): ``image_id``;
* OpenPose: the frame index int, from a folder of per-frame files ``*_000000000012_keypoints.json``
  (the number before ``_keypoints.json``; files without a number are numbered in sorted order), or a
  single OpenPose JSON file = frame 0.
* mmpose (1.x), the files its own tools write (instances as ``split_instances`` makes them: ``keypoints``
  [[x, y], ...] image pixels, ``keypoint_scores`` [...], optional ``bbox`` [[x0, y0, x1, y1]] and
  ``bbox_score``):

  - ``MMPoseInferencer`` / ``demo/inferencer_demo.py --pred-out-dir``: an image gives a list of instances
    (-> frame 0); a video gives ``[{"frame_id": i, "instances": [...]}, ...]`` with 0-based ``frame_id``
    (-> frame ``i``);
  - ``demo/topdown_demo_with_mmdet.py`` / ``demo/bottomup_demo.py --save-predictions``:
    ``{"meta_info": {dataset meta}, "instance_info": ...}`` holding an image's instance list (-> frame 0)
    or a video's ``{"frame_id", "instances"}`` list, whose ``frame_id`` counts from 1 there (-> frame
    ``frame_id - 1``). ``meta_info`` (json_tricks-encoded) is checked: its key-point names must start
    with COCO-17's.

Joint orders are kept native:

* COCO and AlphaPose COCO-17 -> ``joint_set="coco17"``. AlphaPose Halpe-26, Halpe-136 and
  COCO-WholeBody-133 layouts (whose first 17 points are the COCO-17 body points) keep their first 17
  points -> ``coco17``.
* mmpose COCO-17 -> ``coco17``; Halpe-26 and COCO-WholeBody-133 keep their first 17 points -> ``coco17``.
* OpenPose COCO-18 (18 points) -> ``openpose18`` unchanged.
* OpenPose BODY_25 (25 points) -> ``openpose18`` by taking BODY_25 indices
  ``BODY25_TO_OPENPOSE18 = (0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18)``, i.e.
  Nose, Neck, RShoulder, RElbow, RWrist, LShoulder, LElbow, LWrist, RHip, RKnee, RAnkle, LHip, LKnee,
  LAnkle, REye, LEye, REar, LEar; MidHip (8) and the six foot points (19-24) are dropped.

Visibility. COCO dataset flags: ``v=0`` -> not labelled (confidence 0, ``visible=False``); ``v=1`` ->
labelled but occluded (confidence 1, ``visible=False``: it weighs nothing in estimation, the app still
shows it); ``v=2`` -> visible (confidence 1, ``visible=True``). When an annotation carries our extension
``keypoint_scores`` (J floats) the confidences come from it (the flag still decides visibility: it is an
explicit label). Results / AlphaPose / OpenPose / mmpose files hold a confidence instead of a flag and follow
the one visibility rule of every source (``dpmesh_core.types.is_visible``, the same as the detectors'):
``visible = confidence > VISIBLE_THRESHOLD`` (0.5). mmpose scores are a model's raw confidences (RTMPose's
exceed 1), so they are clipped to [0, 1] first; a person's score is its
``bbox_score`` when present (the inferencer stores the detector's score there, the demo scripts a constant
1.0), else its mean key-point confidence. Boxes come from ``bbox``/``box`` (x, y, w, h)
when present, else from the key-points (``Person.box_from_keypoints``); a person with neither is dropped
with a warning.

Size. A file larger than ``max_bytes`` (``DEFAULT_MAX_BYTES``, 64 MiB; ``dpmesh predict --keypoints-max-mb``)
is refused from its size, before it is read: parsing JSON takes about ten times the file size in memory.

Errors. Any non-finite number (NaN / inf, which Python's JSON reader accepts) in key-points, scores or
boxes, a negative confidence, a COCO flag other than 0/1/2, a wrong number of values, broken JSON or an
unrecognised layout raises ``KeypointFileError`` naming the file and the entry. A NaN is refused at file
level, not silently turned into a missing joint: it means the producing tool is broken, and a file that
is partly garbage should not be half-trusted.

The io layer sits below ``body/``, so the few joint-order tables needed here are local constants.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError, KeypointFileError
from ..types import VISIBLE_THRESHOLD, Person, is_visible
from .atomic import atomic_write_text

log = logging.getLogger(__name__)

__all__ = [
    "read_keypoints", "write_coco_keypoints", "write_openpose", "detect_keypoint_format",
    "BODY25_TO_OPENPOSE18", "COCO17_NAMES", "COCO17_SKELETON", "KEYPOINT_FORMATS",
]

Key = str | int

KEYPOINT_FORMATS = ("coco", "coco_results", "alphapose", "openpose", "mmpose")
# the one visibility rule (types.VISIBLE_THRESHOLD, = detect.base.DEFAULT_VISIBLE_THRESHOLD)
MMPOSE_VISIBLE_THRESHOLD = VISIBLE_THRESHOLD

COCO17_NAMES = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
    "right_knee", "left_ankle", "right_ankle",
)
# The COCO person skeleton, 1-based as in the COCO annotation files.
COCO17_SKELETON = (
    (16, 14), (14, 12), (17, 15), (15, 13), (12, 13), (6, 12), (7, 13), (6, 7), (6, 8), (7, 9), (8, 10),
    (9, 11), (2, 3), (1, 2), (1, 3), (2, 4), (3, 5), (4, 6), (5, 7),
)
BODY25_TO_OPENPOSE18 = (0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18)
# openpose18 index of each coco17 joint (Neck, openpose18 index 1, has no COCO-17 counterpart).
_COCO17_FROM_OP18 = (0, 15, 14, 17, 16, 5, 2, 6, 3, 7, 4, 11, 8, 12, 9, 13, 10)
_NJ = {"coco17": 17, "openpose18": 18}

_OPENPOSE_NUM_RE = re.compile(r"(\d+)_keypoints\.json$", re.IGNORECASE)


# ---------------------------------------------------------------------------------------------------------
# helpers


def _err(path: Path, msg: str) -> KeypointFileError:
    return KeypointFileError(msg, path)


#: key-point files larger than this are refused before parsing (see the module doc)
DEFAULT_MAX_BYTES = 64 * 2**20


def _load_json(path: Path, max_bytes: int | None = DEFAULT_MAX_BYTES) -> Any:
    from ..errors import describe_oserror

    try:
        size = os.stat(path).st_size
    except FileNotFoundError:
        raise _err(path, "no such file") from None
    except OSError as e:
        raise _err(path, f"cannot read: {describe_oserror(e)}") from None
    if max_bytes is not None and size > max_bytes:
        raise _err(path, f"too large: {size / 2**20:.1f} MiB exceeds the key-point file limit of "
                         f"{max_bytes / 2**20:.0f} MiB (--keypoints-max-mb; split the file per video or folder)")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise _err(path, "no such file") from None
    except UnicodeDecodeError:
        raise _err(path, "not a UTF-8 text file (is it JSON?)") from None
    except OSError as e:
        raise _err(path, f"cannot read: {describe_oserror(e)}") from None
    if not text.strip():
        raise _err(path, "empty file")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise _err(path, f"broken JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    except RecursionError:
        raise _err(path, "JSON nested too deeply") from None


def _floats(path: Path, where: str, values: Any, what: str) -> np.ndarray:
    if not isinstance(values, (list, tuple)):
        raise _err(path, f"{where}: {what} must be a list of numbers, got {type(values).__name__}")
    try:
        a = np.array([float(v) for v in values], np.float64)
    except (TypeError, ValueError):
        raise _err(path, f"{where}: {what} holds a non-number") from None
    if not np.isfinite(a).all():
        j = int(np.flatnonzero(~np.isfinite(a))[0])
        raise _err(path, f"{where}: {what} value {j} is {a[j]} (NaN/inf are not allowed)")
    return a


def _triplets(path: Path, where: str, values: Any, counts: Sequence[int]) -> np.ndarray:
    a = _floats(path, where, values, "keypoints")
    if a.size % 3 or a.size // 3 not in counts:
        allowed = " or ".join(f"{c} joints ({3 * c} numbers)" for c in counts)
        raise _err(path, f"{where}: {a.size} key-point numbers; expected {allowed}")
    return a.reshape(-1, 3)


def _score(path: Path, where: str, v: Any, default: float = 1.0) -> float:
    if v is None:
        return default
    if isinstance(v, list) and len(v) == 1:  # AlphaPose sometimes stores [score]
        v = v[0]
    try:
        s = float(v)
    except (TypeError, ValueError):
        raise _err(path, f"{where}: score is not a number ({v!r})") from None
    if not math.isfinite(s):
        raise _err(path, f"{where}: score is {s} (NaN/inf are not allowed)")
    if s < 0:
        raise _err(path, f"{where}: negative score {s}")
    return s


def _box_xywh(path: Path, where: str, v: Any) -> np.ndarray | None:
    if v is None:
        return None
    b = _floats(path, where, v, "bbox")
    if b.size != 4:
        raise _err(path, f"{where}: bbox must have 4 numbers (x, y, w, h), got {b.size}")
    if b[2] < 0 or b[3] < 0:
        raise _err(path, f"{where}: bbox has a negative width or height {b.tolist()}")
    return np.array([b[0], b[1], b[0] + b[2], b[1] + b[3]], np.float32)


def _track(v: Any) -> int | None:
    if isinstance(v, list):
        v = v[0] if len(v) == 1 else None
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, (int, float)) and math.isfinite(v) and float(v).is_integer() and v >= 0:
        return int(v)
    return None


def _make_person(
    path: Path, where: str, kp: np.ndarray, visible: np.ndarray, joint_set: str, box: np.ndarray | None,
    score: float, track_id: int | None,
) -> Person | None:
    if box is None:
        labelled = kp[:, 2] > 0
        if not labelled.any():
            log.warning("%s: %s: no box and no labelled key-point; person skipped", path, where)
            return None
        box = Person.box_from_keypoints(kp, labelled)
    return Person(box=box, keypoints=kp.astype(np.float32), visible=visible, joint_set=joint_set,
                  score=float(score), track_id=track_id, source="file")


# ---------------------------------------------------------------------------------------------------------
# format detection


def detect_keypoint_format(data: Any) -> str | None:
    """Name of the layout of parsed JSON ``data`` (one of ``KEYPOINT_FORMATS``) or None."""
    if isinstance(data, dict):
        if "people" in data:
            return "openpose"
        if "instance_info" in data:
            return "mmpose"
        if "annotations" in data and "images" in data:
            return "coco"
        return None
    if isinstance(data, list):
        if not data:
            return "coco_results"
        if all(_is_mmpose_instance(d) for d in data) or all(_is_mmpose_frame(d) for d in data):
            return "mmpose"
        if not all(isinstance(d, dict) and "keypoints" in d and "image_id" in d for d in data):
            return None
        if any(isinstance(d["image_id"], str) or "box" in d or "idx" in d for d in data):
            return "alphapose"
        return "coco_results"
    return None


_ALIASES = {
    "coco": "coco", "coco_dataset": "coco", "coco_results": "coco_results", "results": "coco_results",
    "alphapose": "alphapose", "openpose": "openpose", "mmpose": "mmpose",
}


def read_keypoints(path: str | os.PathLike, format: str | None = None,
                   max_bytes: int | None = DEFAULT_MAX_BYTES) -> dict[Key, list[Person]]:
    """Read a key-point file (or an OpenPose folder) as ``{key: [Person, ...]}`` (see module doc).

    ``format``: None (detect), "coco", "coco_results", "alphapose" or "openpose". ``max_bytes``: larger files
    are refused before reading (None: no limit).
    Raises ``KeypointFileError`` naming the file and the problem.
    """
    path = Path(path)
    fmt = None
    if format is not None:
        fmt = _ALIASES.get(str(format).lower())
        if fmt is None:
            raise KeypointFileError(f"unknown key-point format {format!r}; use one of {KEYPOINT_FORMATS}", path)
    if path.is_dir():
        if fmt not in (None, "openpose"):
            raise _err(path, f"a folder can only hold OpenPose per-frame files, not {fmt!r}")
        return _read_openpose_dir(path, max_bytes)
    data = _load_json(path, max_bytes)
    found = detect_keypoint_format(data)
    if found is None:
        raise _err(path, "unknown key-point format (expected a COCO dataset/results, AlphaPose, OpenPose or "
                         "mmpose JSON)")
    if fmt == "mmpose" and data == []:  # an image where mmpose found nobody
        found = "mmpose"
    if fmt is not None and fmt != found and not ({fmt, found} <= {"coco_results", "alphapose"}):
        raise _err(path, f"asked to read {fmt!r} but the file looks like {found!r}")
    fmt = fmt or found
    if fmt == "coco":
        return _read_coco_dataset(path, data)
    if fmt in ("coco_results", "alphapose"):
        return _read_results(path, data, alphapose=fmt == "alphapose")
    if fmt == "mmpose":
        return _read_mmpose(path, data)
    return {0: _read_openpose_people(path, data)}


def _read_coco_dataset(path: Path, data: dict) -> dict[Key, list[Person]]:
    images, anns = data.get("images"), data.get("annotations")
    if not isinstance(images, list) or not isinstance(anns, list):
        raise _err(path, "COCO 'images' and 'annotations' must be lists")
    person_cats = None
    cats = data.get("categories")
    if isinstance(cats, list) and cats:
        person_cats = {c.get("id") for c in cats if isinstance(c, dict) and c.get("name") == "person"}
    out: dict[Key, list[Person]] = {}
    id_to_key: dict[Any, Key] = {}
    for n, im in enumerate(images):
        if not isinstance(im, dict) or "id" not in im:
            raise _err(path, f"images[{n}] has no 'id'")
        fi = im.get("frame_index")
        if isinstance(fi, int) and not isinstance(fi, bool):
            key: Key = fi
        elif isinstance(im.get("file_name"), str):
            key = im["file_name"]
        else:
            raise _err(path, f"images[{n}] has neither 'file_name' nor 'frame_index'")
        if key in out:
            raise _err(path, f"images[{n}]: duplicate image {key!r}")
        id_to_key[im["id"]] = key
        out[key] = []
    for n, a in enumerate(anns):
        where = f"annotations[{n}]"
        if not isinstance(a, dict):
            raise _err(path, f"{where} is not an object")
        if "keypoints" not in a:
            continue  # an instance annotation file, or a non-person category
        if person_cats is not None and a.get("category_id") not in person_cats:
            continue
        if a.get("iscrowd", 0):
            continue
        if a.get("image_id") not in id_to_key:
            raise _err(path, f"{where}: image_id {a.get('image_id')!r} is not in 'images'")
        key = id_to_key[a["image_id"]]
        where = f"{where} (image {key!r})"
        kp = _triplets(path, where, a["keypoints"], (17,))
        flags = kp[:, 2]
        bad = ~np.isin(flags, (0.0, 1.0, 2.0))
        if bad.any():
            j = int(np.flatnonzero(bad)[0])
            raise _err(path, f"{where}: key-point {j} has visibility flag {flags[j]} (COCO allows 0, 1, 2)")
        conf = (flags > 0).astype(np.float64)
        if "keypoint_scores" in a:
            sc = _floats(path, where, a["keypoint_scores"], "keypoint_scores")
            if sc.size != kp.shape[0]:
                raise _err(path, f"{where}: {sc.size} keypoint_scores for {kp.shape[0]} joints")
            if (sc < 0).any():
                raise _err(path, f"{where}: negative keypoint score {sc[sc < 0][0]}")
            conf = sc
        kp = np.concatenate([kp[:, :2], conf[:, None]], axis=1)
        p = _make_person(path, where, kp, flags == 2, "coco17", _box_xywh(path, where, a.get("bbox")),
                         _score(path, where, a.get("score")), _track(a.get("track_id")))
        if p is not None:
            out[key].append(p)
    return out


def _read_results(path: Path, data: list, alphapose: bool) -> dict[Key, list[Person]]:
    out: dict[Key, list[Person]] = {}
    for n, d in enumerate(data):
        key = d["image_id"]
        if not isinstance(key, (str, int)) or isinstance(key, bool):
            raise _err(path, f"[{n}]: image_id must be a string or an integer, got {key!r}")
        where = f"[{n}] (image {key!r})"
        kp = _triplets(path, where, d["keypoints"], (17, 26, 133, 136) if alphapose else (17,))[:17]
        if (kp[:, 2] < 0).any():
            j = int(np.flatnonzero(kp[:, 2] < 0)[0])
            raise _err(path, f"{where}: key-point {j} has a negative confidence {kp[j, 2]}")
        box = _box_xywh(path, where, d.get("box", d.get("bbox")))
        p = _make_person(path, where, kp, is_visible(kp[:, 2]), "coco17", box, _score(path, where, d.get("score")),
                         _track(d.get("idx", d.get("track_id"))))
        lst = out.setdefault(key, [])
        if p is not None:
            lst.append(p)
    return out


def _read_openpose_people(path: Path, data: dict) -> list[Person]:
    people = data.get("people")
    if not isinstance(people, list):
        raise _err(path, "OpenPose 'people' must be a list")
    persons = []
    for n, pe in enumerate(people):
        where = f"people[{n}]"
        if not isinstance(pe, dict):
            raise _err(path, f"{where} is not an object")
        vals = pe.get("pose_keypoints_2d", pe.get("pose_keypoints"))
        if vals is None:
            raise _err(path, f"{where} has no 'pose_keypoints_2d'")
        if isinstance(vals, list) and not vals:
            log.warning("%s: %s has no body key-points (face/hand only?); person skipped", path, where)
            continue
        kp = _triplets(path, where, vals, (18, 25))
        if kp.shape[0] == 25:
            kp = kp[list(BODY25_TO_OPENPOSE18)]
        if (kp[:, 2] < 0).any():
            j = int(np.flatnonzero(kp[:, 2] < 0)[0])
            raise _err(path, f"{where}: key-point {j} has a negative confidence {kp[j, 2]}")
        c = kp[:, 2]
        score = float(c[c > 0].mean()) if (c > 0).any() else 0.0
        p = _make_person(path, where, kp, is_visible(c), "openpose18", None, min(score, 1.0),
                         _track(pe.get("person_id")))
        if p is not None:
            persons.append(p)
    return persons


def _is_mmpose_instance(d: Any) -> bool:
    return isinstance(d, dict) and "keypoints" in d and "keypoint_scores" in d and "image_id" not in d


def _is_mmpose_frame(d: Any) -> bool:
    return isinstance(d, dict) and "frame_id" in d and "instances" in d


def _untrick(v: Any) -> Any:
    """A json_tricks-encoded numpy value (``{"__ndarray__": data, "dtype", "shape"}``) -> its data."""
    return v["__ndarray__"] if isinstance(v, dict) and "__ndarray__" in v else v


def _check_mmpose_meta(path: Path, meta: Any) -> None:
    if not isinstance(meta, dict):
        return
    names = _untrick(meta.get("keypoint_id2name"))
    dataset = meta.get("dataset_name", "?")
    n = _untrick(meta.get("num_keypoints"))
    if isinstance(n, (int, float)) and int(n) not in (17, 26, 133):
        raise _err(path, f"meta_info: {int(n)} key-points (dataset {dataset!r}); the COCO-17 layout is needed "
                         "(or Halpe-26 / COCO-WholeBody-133, whose first 17 points are COCO-17's)")
    if isinstance(names, dict) and names:
        got = tuple(str(names.get(str(i), names.get(i, ""))) for i in range(min(17, len(names))))
        if got != COCO17_NAMES:
            raise _err(path, f"meta_info: key-points {list(got[:5])}... (dataset {dataset!r}) are not the COCO-17 "
                             f"layout {list(COCO17_NAMES[:5])}...")


def _mmpose_instance(path: Path, where: str, d: Any) -> Person | None:
    if not _is_mmpose_instance(d):
        raise _err(path, f"{where}: not an mmpose instance (needs 'keypoints' and 'keypoint_scores')")
    pts = _untrick(d["keypoints"])
    if not isinstance(pts, list) or not all(isinstance(p, (list, tuple)) for p in pts):
        raise _err(path, f"{where}: keypoints must be a list of [x, y] points")
    if any(len(p) != 2 for p in pts):
        bad = next(len(p) for p in pts if len(p) != 2)
        raise _err(path, f"{where}: a key-point has {bad} coordinates; mmpose 2-D files have [x, y]")
    if len(pts) not in (17, 26, 133):
        raise _err(path, f"{where}: {len(pts)} key-points; expected COCO-17 (or Halpe-26 / COCO-WholeBody-133, "
                         "whose first 17 points are COCO-17's)")
    xy = _floats(path, where, [c for p in pts for c in p], "keypoints").reshape(-1, 2)
    sc = _floats(path, where, _untrick(d["keypoint_scores"]), "keypoint_scores")
    if sc.size != xy.shape[0]:
        raise _err(path, f"{where}: {sc.size} keypoint_scores for {xy.shape[0]} key-points")
    conf = np.clip(sc[:17], 0.0, 1.0)
    kp = np.concatenate([xy[:17], conf[:, None]], axis=1)
    box = None
    if d.get("bbox") is not None:
        b = _floats(path, where, np.asarray(_untrick(d["bbox"]), dtype=object).reshape(-1).tolist(), "bbox")
        if b.size != 4:
            raise _err(path, f"{where}: bbox must have 4 numbers (x0, y0, x1, y1), got {b.size}")
        box = np.array([min(b[0], b[2]), min(b[1], b[3]), max(b[0], b[2]), max(b[1], b[3])], np.float32)
    bs = _untrick(d.get("bbox_score"))
    score = min(_score(path, where, bs), 1.0) if bs is not None else float(conf.mean())
    return _make_person(path, where, kp, conf > MMPOSE_VISIBLE_THRESHOLD, "coco17", box, score,
                        _track(d.get("track_id")))


def _read_mmpose(path: Path, data: Any) -> dict[Key, list[Person]]:
    first = 0
    if isinstance(data, dict):
        _check_mmpose_meta(path, data.get("meta_info"))
        items, first = data.get("instance_info"), 1  # the demo scripts count frames from 1
        if not isinstance(items, list):
            raise _err(path, "mmpose 'instance_info' must be a list")
        if items and not (all(_is_mmpose_frame(d) for d in items) or all(_is_mmpose_instance(d) for d in items)):
            raise _err(path, "mmpose 'instance_info' must hold instances or {frame_id, instances} entries")
    else:
        items = data
    if not items or _is_mmpose_instance(items[0]):
        return {0: [p for n, d in enumerate(items) if (p := _mmpose_instance(path, f"instance {n}", d))]}
    out: dict[Key, list[Person]] = {}
    for n, fr in enumerate(items):
        fid = fr["frame_id"]
        if isinstance(fid, bool) or not isinstance(fid, int) or fid < first:
            raise _err(path, f"entry {n}: frame_id must be an integer >= {first}, got {fid!r}")
        key = fid - first
        if key in out:
            raise _err(path, f"entry {n}: frame_id {fid} appears twice")
        inst = fr["instances"]
        if not isinstance(inst, list):
            raise _err(path, f"frame_id {fid}: 'instances' must be a list")
        out[key] = [p for m, d in enumerate(inst) if (p := _mmpose_instance(path, f"frame_id {fid} instance {m}", d))]
    return dict(sorted(out.items()))


def _read_openpose_dir(path: Path, max_bytes: int | None = DEFAULT_MAX_BYTES) -> dict[Key, list[Person]]:
    files = sorted(f for f in path.iterdir() if f.is_file() and f.name.lower().endswith(".json"))
    if not files:
        raise _err(path, "folder holds no OpenPose *_keypoints.json file")
    numbered = [(_OPENPOSE_NUM_RE.search(f.name), f) for f in files]
    out: dict[Key, list[Person]] = {}
    if all(m is not None for m, _ in numbered):
        items = [(int(m.group(1)), f) for m, f in numbered]
    else:
        items = list(enumerate(files))
    for idx, f in items:
        if idx in out:
            raise _err(f, f"frame {idx} appears twice in the folder")
        data = _load_json(f, max_bytes)
        if detect_keypoint_format(data) != "openpose":
            raise _err(f, "not an OpenPose key-point file (no 'people')")
        out[idx] = _read_openpose_people(f, data)
    return dict(sorted(out.items()))


# ---------------------------------------------------------------------------------------------------------
# writers


def _person_arrays(path: Path, key: Key, n: int, p: Person, joint_set: str) -> tuple[np.ndarray, np.ndarray]:
    kp, vis = np.asarray(p.keypoints, np.float64), np.asarray(p.visible, bool)
    if p.joint_set not in _NJ:
        raise InputError(f"frame {key!r} person {n}: cannot write joint set {p.joint_set!r} "
                         f"(only coco17 / openpose18)", path)
    if p.joint_set != joint_set:
        if joint_set == "coco17":
            idx = list(_COCO17_FROM_OP18)
            kp, vis = kp[idx], vis[idx]
        else:
            kp18 = np.zeros((18, 3)), np.zeros(18, bool)
            kp18[0][list(_COCO17_FROM_OP18)] = kp
            kp18[1][list(_COCO17_FROM_OP18)] = vis
            ls, rs = kp[5], kp[6]
            kp18[0][1] = [(ls[0] + rs[0]) / 2, (ls[1] + rs[1]) / 2, ls[2] * rs[2]]
            kp18[1][1] = vis[5] and vis[6]
            kp, vis = kp18
    bad = ~np.isfinite(kp).all(axis=1)
    if bad.any():  # a NaN joint in memory means "no position": write it as missing
        kp, vis = kp.copy(), vis.copy()
        kp[bad], vis[bad] = 0.0, False
    return kp, vis


def write_coco_keypoints(
    path: str | os.PathLike,
    frames: Mapping[Key, Sequence[Person]],
    image_sizes: Mapping[Key, tuple[int, int]] | None = None,
) -> Path:
    """Write a COCO key-points dataset JSON (atomically).

    ``images``: one per key, ids 1.. in key order; ``file_name`` = the key (str) or ``frame_{key:06d}``
    for int keys, which also get ``frame_index`` = key; ``width``/``height`` from ``image_sizes[key]``
    (w, h) when given. ``annotations``: ``keypoints`` flat [x, y, v] with v = 2 visible, 1 labelled but
    occluded (confidence > 0), 0 missing; ``num_keypoints``, ``bbox`` (x, y, w, h), ``area`` (w * h),
    ``iscrowd`` 0, ``category_id`` 1, ``score``, and the extensions ``keypoint_scores`` (per-joint
    confidences, so they round-trip) and ``track_id`` when set. ``openpose18`` persons are reordered to
    COCO-17 (Neck dropped). A joint with a non-finite coordinate is written as missing (0, 0, v=0). ``categories``: the COCO person category with its skeleton.
    """
    path = Path(path)
    images, anns = [], []
    for img_id, (key, persons) in enumerate(frames.items(), start=1):
        im: dict[str, Any] = {"id": img_id}
        if isinstance(key, int) and not isinstance(key, bool):
            im["file_name"], im["frame_index"] = f"frame_{key:06d}", key
        else:
            im["file_name"] = str(key)
        if image_sizes and key in image_sizes:
            im["width"], im["height"] = int(image_sizes[key][0]), int(image_sizes[key][1])
        images.append(im)
        for n, p in enumerate(persons):
            kp, vis = _person_arrays(path, key, n, p, "coco17")
            v = np.where(vis, 2, np.where(kp[:, 2] > 0, 1, 0))
            flat = []
            for (x, y, _), f in zip(kp, v):
                flat += [round(float(x), 3), round(float(y), 3), int(f)]
            x0, y0, x1, y1 = (float(b) for b in p.box)
            w, h = max(x1 - x0, 0.0), max(y1 - y0, 0.0)
            a: dict[str, Any] = {
                "id": len(anns) + 1, "image_id": img_id, "category_id": 1, "keypoints": flat,
                "num_keypoints": int((v > 0).sum()), "bbox": [round(x0, 3), round(y0, 3), round(w, 3), round(h, 3)],
                "area": round(w * h, 3), "iscrowd": 0, "score": float(p.score),
                "keypoint_scores": [round(float(c), 6) for c in kp[:, 2]],
            }
            if p.track_id is not None:
                a["track_id"] = int(p.track_id)
            anns.append(a)
    doc = {
        "info": {"description": "written by dpmesh-studio"},
        "images": images,
        "annotations": anns,
        "categories": [{
            "id": 1, "name": "person", "supercategory": "person", "keypoints": list(COCO17_NAMES),
            "skeleton": [list(s) for s in COCO17_SKELETON],
        }],
    }
    return atomic_write_text(path, json.dumps(doc, allow_nan=False))


def write_openpose(
    out_dir: str | os.PathLike, frames: Mapping[Key, Sequence[Person]], stem: str = "frame"
) -> list[Path]:
    """Write OpenPose COCO-18 JSON files, one per key, into ``out_dir`` (created), atomically each.

    Names: ``{stem}_{key:012d}_keypoints.json`` for int keys, ``{Path(key).stem}_keypoints.json`` for
    str keys. ``coco17`` persons are converted to OpenPose-18 (Neck = mean of the shoulders, confidence
    the product). OpenPose has no occlusion flag: a joint with ``visible=False`` is written with
    confidence 0 (its position is kept). ``track_id`` goes to ``person_id``. Returns the paths written.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for key, persons in frames.items():
        if isinstance(key, int) and not isinstance(key, bool):
            f = out_dir / f"{stem}_{key:012d}_keypoints.json"
        else:
            f = out_dir / f"{Path(str(key)).stem}_keypoints.json"
        people = []
        for n, p in enumerate(persons):
            kp, vis = _person_arrays(f, key, n, p, "openpose18")
            kp = kp.copy()
            kp[~vis, 2] = 0.0
            people.append({
                "person_id": [int(p.track_id) if p.track_id is not None else -1],
                "pose_keypoints_2d": [round(float(x), 3) for x in kp.reshape(-1)],
                "face_keypoints_2d": [], "hand_left_keypoints_2d": [], "hand_right_keypoints_2d": [],
                "pose_keypoints_3d": [], "face_keypoints_3d": [], "hand_left_keypoints_3d": [],
                "hand_right_keypoints_3d": [],
            })
        written.append(atomic_write_text(f, json.dumps({"version": 1.3, "people": people}, allow_nan=False)))
    return written
