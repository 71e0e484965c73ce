"""The project file: versioned JSON holding the media, the persons of every frame and a results summary.

Layout (``format_version`` 1)::

    {
      "format_version": 1, "app": "dpmesh-studio",
      "created": "2026-01-01T12:00:00+00:00", "modified": "...",          # ISO 8601, UTC
      "media": {"path": "clips/street.avi",                                # relative to the project file
                "absolute": "/home/me/clips/street.avi"},                  # (null when not expressible)
      "settings": {"estimator": "fit", ...},                               # free-form JSON object
      "frames": {"0": [{"box": [x0, y0, x1, y1], "keypoints": [[x, y, c], ...], "visible": [true, ...],
                        "edited": [false, ...], "joint_set": "coco17", "score": 0.9, "track_id": null,
                        "source": "detector"}, ...], ...},
      "results": {"0": [{"model": "smpl", "global_orient": [3], "body_pose": [P], "betas": [S],
                         "transl": [3], "extra": {name: nested list}, "joint_set": "smpl24",
                         "camera": {"focal": [fx, fy], "principal": [cx, cy], "image_size": [w, h]},
                         "estimator": "fit", "loss": 0.1, "track_id": null} | null, ...], ...}
    }

Frame keys are frame indices (0 for an image). Results hold body parameters only, never vertices: the
meshes are recomputed from them. Non-finite numbers (a NaN key-point) are stored as ``null`` and read back
as NaN. Saves are atomic. On load the media is looked for first by its relative path (a project folder
moved with its media still works), then by its absolute path; when neither exists the project still
loads, with ``media_missing = True`` (the app shows a message and asks for the file).

Crash recovery: ``autosave_path_for(project_or_media)`` names an autosave file under
``paths.data_dir("autosave")``; ``find_recovery_files()`` lists the ones left behind, newest first.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ProjectFileError
from ..paths import data_dir
from ..types import BodyParams, Camera, MeshResult, Person
from .atomic import atomic_write_text

__all__ = [
    "PROJECT_FORMAT_VERSION", "PROJECT_SUFFIX", "ProjectData", "save_project", "load_project",
    "results_summary", "summary_to_params", "autosave_path_for", "find_recovery_files",
]

PROJECT_FORMAT_VERSION = 1
PROJECT_SUFFIX = ".dpmesh"
AUTOSAVE_SUFFIX = ".autosave" + PROJECT_SUFFIX


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@dataclass
class ProjectData:
    """A project in memory.

    media_path: absolute path (str) of the image or video. frames: {frame index: [Person, ...]}.
    results: {frame index: [summary dict or None per person]} (see ``results_summary``).
    settings: free-form JSON-serialisable dict (estimator, detector thresholds...).
    created / modified: ISO 8601 UTC strings (set by ``save_project`` when empty).
    media_missing: set by ``load_project`` when the media file cannot be found (not stored).
    path: the project file this was loaded from / last saved to (not stored).
    """

    media_path: str
    frames: dict[int, list[Person]] = field(default_factory=dict)
    results: dict[int, list[dict[str, Any] | None]] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    modified: str = ""
    format_version: int = PROJECT_FORMAT_VERSION
    media_missing: bool = False
    path: Path | None = None


# ---------------------------------------------------------------------------------------------------------
# encoding


def _num(x: float) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def _nested(a: np.ndarray) -> Any:
    a = np.asarray(a)
    if a.dtype == bool:
        return a.tolist()
    if np.issubdtype(a.dtype, np.integer):
        return a.tolist()
    return np.vectorize(_num, otypes=[object])(a.astype(np.float64)).tolist() if a.ndim else _num(a)


def _person_to_json(p: Person) -> dict[str, Any]:
    return {
        "box": _nested(p.box), "keypoints": _nested(p.keypoints), "visible": _nested(p.visible),
        "edited": _nested(p.edited), "joint_set": p.joint_set, "score": _num(p.score),
        "track_id": None if p.track_id is None else int(p.track_id), "source": p.source,
    }


def results_summary(results: Sequence[MeshResult | None]) -> list[dict[str, Any] | None]:
    """Per-person JSON-ready summaries of ``MeshResult``s (body parameters, camera, no vertices)."""
    out: list[dict[str, Any] | None] = []
    for r in results:
        if r is None:
            out.append(None)
            continue
        p, c = r.params, r.camera
        out.append({
            "model": p.model, "global_orient": _nested(p.global_orient), "body_pose": _nested(p.body_pose),
            "betas": _nested(p.betas), "transl": _nested(p.transl),
            "extra": {k: _nested(v) for k, v in p.extra.items()}, "joint_set": r.joint_set,
            "camera": {"focal": [float(c.focal[0]), float(c.focal[1])],
                       "principal": [float(c.principal[0]), float(c.principal[1])],
                       "image_size": [int(c.image_size[0]), int(c.image_size[1])]},
            "estimator": r.estimator, "loss": None if r.loss is None else _num(r.loss),
            "track_id": None if r.track_id is None else int(r.track_id),
        })
    return out


def summary_to_params(summary: dict[str, Any]) -> tuple[BodyParams, Camera]:
    """(BodyParams, Camera) back from one ``results_summary`` entry."""
    def arr(v: Any) -> np.ndarray:
        return np.array(v, dtype=np.float64) if v is not None else np.zeros(0)

    params = BodyParams(summary["model"], arr(summary["global_orient"]), arr(summary["body_pose"]),
                        arr(summary["betas"]), arr(summary["transl"]),
                        {k: np.array(v) for k, v in (summary.get("extra") or {}).items()})
    c = summary["camera"]
    cam = Camera((float(c["focal"][0]), float(c["focal"][1])), (float(c["principal"][0]), float(c["principal"][1])),
                 (int(c["image_size"][0]), int(c["image_size"][1])))
    return params, cam


def save_project(path: str | os.PathLike, project: ProjectData) -> Path:
    """Write ``project`` to ``path`` atomically (sets ``project.created`` if empty, ``project.modified``
    and ``project.path``). Returns the path."""
    path = Path(path)
    media_abs = os.path.abspath(project.media_path) if project.media_path else ""
    try:
        rel = os.path.relpath(media_abs, os.path.abspath(path.parent)) if media_abs else None
    except ValueError:  # another drive on Windows
        rel = None
    now = _now()
    created = project.created or now
    doc = {
        "format_version": PROJECT_FORMAT_VERSION,
        "app": "dpmesh-studio",
        "created": created,
        "modified": now,
        "media": {"path": None if rel is None else Path(rel).as_posix(), "absolute": media_abs or None},
        "settings": project.settings,
        "frames": {str(int(k)): [_person_to_json(p) for p in v] for k, v in sorted(project.frames.items())},
        "results": {str(int(k)): list(v) for k, v in sorted(project.results.items())},
    }
    try:
        text = json.dumps(doc, indent=1, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ProjectFileError(f"cannot save: settings or results are not plain JSON data ({e})", path) from None
    atomic_write_text(path, text)
    project.created, project.modified, project.path = created, now, path
    return path


# ---------------------------------------------------------------------------------------------------------
# decoding


def _arr(path: Path, where: str, v: Any, dtype: Any) -> np.ndarray:
    try:
        if dtype is bool:
            return np.array(v, dtype=bool)
        return np.array([[np.nan if x is None else x for x in r] if isinstance(r, list) else
                         (np.nan if r is None else r) for r in v], dtype=dtype)
    except (TypeError, ValueError):
        raise ProjectFileError(f"corrupt project file: {where} is not a numeric array", path) from None


def _person_from_json(path: Path, where: str, d: Any) -> Person:
    if not isinstance(d, dict):
        raise ProjectFileError(f"corrupt project file: {where} is not an object", path)
    try:
        tid = d.get("track_id")
        return Person(
            box=_arr(path, f"{where}.box", d["box"], np.float32),
            keypoints=_arr(path, f"{where}.keypoints", d["keypoints"], np.float32),
            visible=None if d.get("visible") is None else _arr(path, f"{where}.visible", d["visible"], bool),
            joint_set=str(d.get("joint_set", "coco17")),
            score=float(d["score"]) if d.get("score") is not None else float("nan"),
            track_id=None if tid is None else int(tid),
            source=str(d.get("source", "file")),
            edited=None if d.get("edited") is None else _arr(path, f"{where}.edited", d["edited"], bool),
        )
    except KeyError as e:
        raise ProjectFileError(f"corrupt project file: {where} lacks {e}", path) from None
    except (TypeError, ValueError) as e:
        raise ProjectFileError(f"corrupt project file: {where}: {e}", path) from None


def _frame_key(path: Path, k: str) -> int:
    try:
        i = int(k)
    except (TypeError, ValueError):
        raise ProjectFileError(f"corrupt project file: frame key {k!r} is not a frame index", path) from None
    if i < 0:
        raise ProjectFileError(f"corrupt project file: negative frame index {i}", path)
    return i


def load_project(path: str | os.PathLike) -> ProjectData:
    """Read a project file. Raises ``ProjectFileError`` saying whether the file is missing, corrupt (broken
    JSON / wrong structure) or from a newer format version. A missing media file is not an error:
    ``media_missing`` is set instead."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ProjectFileError("no such project file", path) from None
    except UnicodeDecodeError:
        raise ProjectFileError("corrupt project file: not UTF-8 text", path) from None
    except OSError as e:
        raise ProjectFileError(f"cannot read the project file ({e.strerror or e})", path) from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise ProjectFileError(f"corrupt project file: broken JSON at line {e.lineno} column {e.colno} "
                               f"({e.msg})", path) from None
    if not isinstance(doc, dict) or "format_version" not in doc:
        raise ProjectFileError("corrupt project file: not a DPMesh project (no format_version)", path)
    version = doc["format_version"]
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ProjectFileError(f"corrupt project file: invalid format_version {version!r}", path)
    if version > PROJECT_FORMAT_VERSION:
        raise ProjectFileError(f"project file format_version {version} is newer than this program supports "
                               f"({PROJECT_FORMAT_VERSION}); update DPMesh Studio to open it", path)
    media = doc.get("media")
    if not isinstance(media, dict):
        raise ProjectFileError("corrupt project file: no 'media' entry", path)
    rel, absolute = media.get("path"), media.get("absolute")
    candidates = []
    if isinstance(rel, str) and rel:
        candidates.append(os.path.normpath(os.path.join(os.path.abspath(path.parent), rel)))
    if isinstance(absolute, str) and absolute:
        candidates.append(absolute)
    found = next((c for c in candidates if os.path.exists(c)), None)
    frames_doc, results_doc = doc.get("frames", {}), doc.get("results", {})
    settings = doc.get("settings", {})
    if not isinstance(frames_doc, dict) or not isinstance(results_doc, dict) or not isinstance(settings, dict):
        raise ProjectFileError("corrupt project file: 'frames', 'results' and 'settings' must be objects", path)
    frames: dict[int, list[Person]] = {}
    for k, lst in frames_doc.items():
        i = _frame_key(path, k)
        if not isinstance(lst, list):
            raise ProjectFileError(f"corrupt project file: frames[{k}] is not a list", path)
        frames[i] = [_person_from_json(path, f"frames[{k}][{n}]", d) for n, d in enumerate(lst)]
    results: dict[int, list[dict[str, Any] | None]] = {}
    for k, lst in results_doc.items():
        i = _frame_key(path, k)
        if not isinstance(lst, list) or not all(r is None or isinstance(r, dict) for r in lst):
            raise ProjectFileError(f"corrupt project file: results[{k}] is not a list of objects", path)
        results[i] = lst
    return ProjectData(
        media_path=found if found is not None else (candidates[-1] if candidates else ""),
        frames=dict(sorted(frames.items())), results=dict(sorted(results.items())), settings=settings,
        created=str(doc.get("created") or ""), modified=str(doc.get("modified") or ""),
        format_version=version, media_missing=found is None, path=path,
    )


# ---------------------------------------------------------------------------------------------------------
# crash recovery


def autosave_path_for(project_path_or_media: str | os.PathLike) -> Path:
    """Autosave file for a project (or, before the first save, for its media file):
    ``data_dir("autosave") / "{stem}.{hash}.autosave.dpmesh"``, stable for a given absolute path."""
    p = Path(os.path.abspath(project_path_or_media))
    digest = hashlib.sha1(str(p).encode("utf-8")).hexdigest()[:10]
    stem = p.name[: -len(PROJECT_SUFFIX)] if p.name.endswith(PROJECT_SUFFIX) else p.stem
    stem = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in stem)[:60] or "untitled"
    return data_dir("autosave") / f"{stem}.{digest}{AUTOSAVE_SUFFIX}"


def find_recovery_files() -> list[Path]:
    """Autosave files left in ``data_dir("autosave")`` (e.g. after a crash), newest first."""
    d = data_dir("autosave", create=False)
    if not d.is_dir():
        return []
    files = [f for f in d.iterdir() if f.is_file() and f.name.endswith(AUTOSAVE_SUFFIX)]
    return sorted(files, key=lambda f: f.stat().st_mtime, reverse=True)
