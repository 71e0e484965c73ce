"""THE frame pipeline: media → detect (or given key-points) → track → estimate → smooth → results per track.

``dpmesh predict`` (``api.predict``) and the app's whole-video job and playback all run this one loop, so they
give the same tracks and meshes. Use it frame by frame or over a whole video::

    pipe = api.FramePipeline(estimator, detector)           # or api.make_pipeline(...)
    for out in pipe.run(media, frames=range(0, n, stride)):  # a generator: close it to stop between frames
        out.frame, out.persons, out.results                  # persons carry track ids; one result each

    outs = pipe.process(frame_index, image, persons=None)   # one frame; returns the frames now final
    outs += pipe.flush()                                    # the frames smoothing still held back

Per frame:

1. **Persons**: the detector's, or the ones given (a key-point file's, or the user's edited persons of that
   frame: those keep their ``track_id``, see ``Tracker.update``).
2. **Tracking** (``Tracker``: Kalman motion model, two-stage association, key-point OKS, re-identification
   after a gap of up to ``max_age`` frames, ids never reused). A track that vanishes behind another track's
   box is kept as *occluded* (its box follows the person in front, for up to 10 s; ``PipelineFrame.occluded``
   and ``dpmesh predict``'s track summary report the spans) and a person emerging there gets its id back.
   **Rescue pass** (``rescue_hidden``, detected frames only): where a hidden track is expected, a
   low-threshold second look of the detector (``detect_in_boxes``); a pose found there that is a different
   person from every detection of the frame is added with ``source == "rescue"``.
3. **Estimation**, warm-started only from the *same track's* result of the *previous processed frame* (a
   track absent from it starts cold). With key-point fitting, a warm fit whose re-projection error is above
   ``refit_threshold`` (fraction of the person's box height; ``refit="always"``: every warm fit) is checked
   against a cold fit of the same frame, and replaced by it when the cold fit re-projects better.
4. **Smoothing** (key-point fitting, ``smooth_sigma > 0``): each track's body (pose, shape, orientation,
   depth; its image position stays where the key-points put it) is Gaussian-smoothed over the processed
   frames around it (``StreamingSmoother``), never mixed with another track and restarted after a gap. Frames then come out ``ceil(3 sigma)`` processed frames late: ``process`` returns the frames that
   became final, ``flush`` the rest.

Frames must be processed in increasing order; going back (or calling ``reset``) first flushes what smoothing
held back and forgets the warm starts. Track ids stay unique for the pipeline's whole life (``reset``
keeps the tracker unless ``reset(tracks=True)``).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from .errors import EstimationError, InputError, MediaError
from .types import Camera, Estimator, MeshResult, Person

if TYPE_CHECKING:  # pragma: no cover
    from .io.media import Media

log = logging.getLogger(__name__)

__all__ = ["FramePipeline", "PipelineFrame", "Truncation", "reprojection_errors", "rescue_hidden", "occlusion_spans",
           "RESCUE_SOURCE"]

#: ``Person.source`` of a person the rescue pass found (a low-threshold second look where a hidden track is
#: expected): shown as such by the app and in ``dpmesh predict``'s events.
RESCUE_SOURCE = "rescue"


@dataclass(frozen=True)
class PipelineFrame:
    """One processed frame.

    frame: frame number in the media. persons: the frame's persons, in order, with ``track_id`` set (when
    tracking). results: one ``MeshResult`` or ``EstimationError`` per person (same order; each
    ``MeshResult.track_id`` is its person's). given: the persons were supplied (key-point file, user edits),
    not detected. refit: indices of persons whose warm-started fit was replaced by a cold fit. image: the
    frame's pixels when the pipeline keeps them (``keep_images``), else None. occluded: ((track id, occluder's
    track id), ...) for the tracks known to be on this frame but hidden behind another track, with no
    key-points and no mesh here (``Tracker.occluded``). Persons the rescue pass found have
    ``source == RESCUE_SOURCE``.
    """

    frame: int
    persons: tuple[Person, ...]
    results: tuple[MeshResult | EstimationError, ...]
    given: bool = False
    refit: tuple[int, ...] = ()
    image: np.ndarray | None = None
    occluded: tuple[tuple[int, int], ...] = ()

    @property
    def track_ids(self) -> list[int | None]:
        return [p.track_id for p in self.persons]

    @property
    def rescued(self) -> list[int]:
        """Indices of the persons the rescue pass found."""
        return [i for i, p in enumerate(self.persons) if p.source == RESCUE_SOURCE]


@dataclass(frozen=True)
class Truncation:
    """Where ``FramePipeline.run`` stopped early because the media could not be decoded further.

    frame: the first frame that failed; processed: frames processed before it; expected: frames asked for;
    message: the reader's error.
    """

    frame: int
    processed: int
    expected: int
    message: str


def reprojection_errors(result: MeshResult, person: Person) -> np.ndarray:
    """(J,) distance between each input key-point and the fitted body's prediction of it, as a fraction of
    the person's box height; NaN where the key-point is not visible/usable or not predicted."""
    err = np.full(person.num_joints, np.nan)
    k2 = result.keypoints2d
    if k2 is None or k2.shape[0] != person.num_joints:
        return err
    w = person.weights
    h = max(float(person.box[3] - person.box[1]), 1.0)
    ok = (w > 0) & np.isfinite(k2).all(1)
    err[ok] = np.linalg.norm(k2[ok] - person.keypoints[ok, :2], axis=1) / h
    return err


def rescue_hidden(tracker: Any, detector: Any, image: np.ndarray, persons: Sequence[Person], frame: int,
                  conf: float = 0.03, widen: float = 1.6, max_oks: float = 0.6, max_occluder_iou: float = 0.8,
                  min_visible: int = 6, min_expected_iou: float = 0.3, height_ratio: tuple[float, float] = (0.6, 1.6),
                  crops: list[int] | None = None, imgsz: int | None = None) -> list[Person]:
    """The rescue pass: a second, low-threshold look for the tracks the last ``tracker.update`` did not see.

    For each of ``tracker.rescue_candidates()`` (tracks hidden behind another track, or just lost), the
    detector's ``detect_in_boxes`` runs on its expected box widened by ``widen`` with score threshold ``conf``
    (all crops in one batch). A pose found there is accepted only if it is a *different person* from every
    person of the frame (``persons``, and the ones already rescued): COCO OKS with each below ``max_oks`` and
    box IoU with the occluder's below ``max_occluder_iou`` (people hugging share much of their outline:
    the network's duplicates of the occluder score OKS > 0.9, the hidden person ~0.5 on street.avi), and if it
    is *the track's person*: at least ``min_visible`` visible key-points, box IoU with the expected box at
    least ``min_expected_iou`` and its height within ``height_ratio`` of the expected height (a smaller
    person walking past further back is not taken for the hidden one). Over all tracks, best first (IoU
    with the expected box x score), one pose per track and never two on the same spot (box IoU >= 0.5 or
    the same pose), each is given to the tracker as that track's observation (``tracker.observe``) and
    returned with the track's id and ``source=RESCUE_SOURCE``. Detectors without ``detect_in_boxes`` (and
    frames without rescue candidates) cost nothing. ``crops``: a list the number of crops looked at is
    appended to. ``imgsz``: the network's input side for the crops (default the detector's, 640: at 320,
    a quarter of the pixels, the network found nothing of the hidden person of street.avi on frames 48-57
    where 640 finds them on 48, 50, 52, 55; about 35 % less rescue time).
    """
    from .detect.tracker import oks
    from .geometry import box_iou

    finder = getattr(detector, "detect_in_boxes", None)
    if finder is None or not hasattr(tracker, "rescue_candidates"):
        return []
    h, w = image.shape[:2]
    cands = []
    for c in tracker.rescue_candidates():
        b = np.clip(c.box, 0, [w, h, w, h])
        area = float(np.prod(np.clip(c.box[2:] - c.box[:2], 1.0, None)))
        if (b[2] - b[0]) >= 8 and (b[3] - b[1]) >= 8 and np.prod(b[2:] - b[:2]) >= 0.5 * area:
            cands.append((c, b))
    if crops is not None:
        crops.append(len(cands))
    if not cands:
        return []
    found = finder(image, [b for _, b in cands], conf=conf, widen=widen, imgsz=imgsz)
    known = list(persons)
    by_track = {p.track_id: p for p in persons if p.track_id is not None}

    def _same_as(q: Person, k: Person) -> bool:
        area = float(np.prod(np.clip(k.box[2:] - k.box[:2], 1.0, None)))
        return q.joint_set == k.joint_set and q.num_joints == k.num_joints and oks(q.keypoints, k.keypoints, area) >= max_oks

    options: list[tuple[float, int, Person, Any]] = []  # (rank, order, pose, candidate) that fit their track
    for (c, _b), ps in zip(cands, found):
        occ = by_track.get(c.occluder)
        for q in ps:
            if int(q.visible.sum()) < min_visible:
                continue
            iou_exp = float(box_iou(q.box[None], c.box[None].astype(np.float32))[0, 0])
            ratio = float(q.box[3] - q.box[1]) / max(float(c.box[3] - c.box[1]), 1.0)
            if iou_exp < min_expected_iou or not height_ratio[0] <= ratio <= height_ratio[1]:
                continue
            if occ is not None and float(box_iou(q.box[None], occ.box[None])[0, 0]) >= max_occluder_iou:
                continue
            if any(_same_as(q, k) for k in known):
                continue
            options.append((iou_exp * q.score, len(options), q, c))
    # best first over all tracks: one pose per track, and two hidden tracks never take the same spot (a track
    # left behind by an identity switch must not turn one hidden person into two)
    out: list[Person] = []
    for _rank, _i, q, c in sorted(options, key=lambda o: (-o[0], o[1])):
        if any(p.track_id == c.track_id for p in out) or any(
                _same_as(q, p) or float(box_iou(q.box[None], p.box[None])[0, 0]) >= 0.5 for p in out):
            continue
        p = dataclasses.replace(q, track_id=int(c.track_id), source=RESCUE_SOURCE)
        tracker.observe(p, frame)
        out.append(p)
    return out


def occlusion_spans(frames: Sequence[tuple[int, Mapping[int, int]]]) -> dict[int, list[dict[str, int]]]:
    """{track id: [{"behind": occluder id, "first_frame": a, "last_frame": b, "frames": n}, ...]} from the
    processed frames in order, each with its ``PipelineFrame.occluded`` ({track id: occluder id}): a span is a
    run of consecutive processed frames on which the track was hidden behind the same occluder."""
    spans: dict[int, list[dict[str, int]]] = {}
    open_: dict[int, dict[str, int]] = {}
    for frame, occ in frames:
        for tid in list(open_):
            if occ.get(tid) != open_[tid]["behind"]:
                del open_[tid]
        for tid, by in occ.items():
            s = open_.get(tid)
            if s is None:
                s = {"behind": int(by), "first_frame": int(frame), "last_frame": int(frame), "frames": 0}
                spans.setdefault(int(tid), []).append(s)
                open_[tid] = s
            s["last_frame"], s["frames"] = int(frame), s["frames"] + 1
    return spans


def _fit_error(result: MeshResult, person: Person, cap: float = 0.25) -> float:
    """A robust summary of ``reprojection_errors``: confidence-weighted mean of errors capped at ``cap``
    (one wild key-point does not decide), in box heights; inf when nothing can be compared."""
    e = reprojection_errors(result, person)
    ok = np.isfinite(e)
    if not ok.any():
        return float("inf")
    w = person.weights[ok]
    return float((np.minimum(e[ok], cap) * w).sum() / max(w.sum(), 1e-9))


class FramePipeline:
    """The one frame loop (see the module docstring).

    estimator: an ``Estimator`` (``api.make_estimator``). detector: what finds persons when none are given
    (``.detect(image) -> list[Person]``); None: persons must be given for every frame.
    camera: the full-image camera (default: ``Camera.default_for`` each image's size).
    track: assign track ids (``Tracker``); ``tracker``: a configured one to use instead.
    warm_start: start each track's fit from its result on the previous processed frame.
    smooth_sigma: Gaussian smoothing of each track over processed frames (0: none; only with estimators that
    can re-skin parameters, i.e. key-point fitting).
    refit / refit_threshold: when to compare a warm fit with a cold fit of the same frame ("auto": when the
    warm fit's robust mean re-projection error exceeds ``refit_threshold`` box heights; "always"; "never").
    keep_images: keep each frame's image in its ``PipelineFrame`` (for overlays; held frames only).
    first_track_id: new tracks get ids from this one on (ids already used elsewhere are never given).
    rescue: on detected frames, run the rescue pass (``rescue_hidden``: a low-threshold second look, score
    >= ``rescue_conf``, where tracks hidden behind another person are expected) when the detector has
    ``detect_in_boxes``; it costs nothing on frames where no track is hidden. ``rescue_seconds`` /
    ``rescue_crops`` / ``rescued`` count its time, crops looked at and persons found.
    """

    def __init__(
        self,
        estimator: Estimator,
        detector: Any | None = None,
        *,
        camera: Camera | None = None,
        track: bool = True,
        tracker: Any | None = None,
        warm_start: bool = True,
        smooth_sigma: float = 1.5,
        refit: Literal["auto", "always", "never"] = "auto",
        refit_threshold: float = 0.04,
        keep_images: bool = False,
        first_track_id: int = 0,
        rescue: bool = True,
        rescue_conf: float = 0.03,
    ):
        if refit not in ("auto", "always", "never"):
            raise InputError(f"refit must be 'auto', 'always' or 'never', got {refit!r}")
        if not smooth_sigma >= 0:
            raise InputError(f"smooth_sigma must be ≥ 0, got {smooth_sigma}")
        self.estimator = estimator
        self.detector = detector
        self.camera = camera
        if tracker is None and track:
            from .detect.tracker import Tracker

            tracker = Tracker()
        self.tracker = tracker
        if self.tracker is not None and first_track_id:
            self.tracker.reserve_ids(first_track_id)
        self.warm_start = bool(warm_start)
        self.refit = refit
        self.refit_threshold = float(refit_threshold)
        self.keep_images = bool(keep_images)
        self.smooth_sigma = float(smooth_sigma)
        self._fitter = hasattr(estimator, "results_from_params")
        self.smoother = None
        if self._fitter and self.smooth_sigma > 0 and self.tracker is not None:
            from .fit.smooth import StreamingSmoother

            self.smoother = StreamingSmoother(estimator, sigma=self.smooth_sigma, keep_image_position=True)
        self.rescue, self.rescue_conf = bool(rescue), float(rescue_conf)
        #: the rescue pass so far: seconds spent, crops looked at, persons found (figures for benchmarks)
        self.rescue_seconds, self.rescue_crops, self.rescued = 0.0, 0, 0
        self.truncated: Truncation | None = None
        #: number of warm fits replaced by a cold fit so far (a figure for benchmarks)
        self.refits = 0
        self._reset_state()

    # ------------------------------------------------------------------------------------------ state

    def _reset_state(self) -> None:
        self._last: dict[int, MeshResult] = {}  # track id -> result on the previous processed frame
        self._last_frame: int | None = None
        self._held: dict[int, tuple[np.ndarray | None, bool, tuple[int, ...], tuple]] = {}  # smoothing lag

    def reset(self, tracks: bool = False) -> list[PipelineFrame]:
        """Start a new sequence: returns the frames smoothing still held back, forgets warm starts; with
        ``tracks`` also forgets the tracks (ids still never repeat within this pipeline)."""
        out = self.flush()
        self._reset_state()
        if tracks and self.tracker is not None:
            next_id = self.tracker.next_id
            self.tracker.reset()
            self.tracker.reserve_ids(next_id)  # ids are never reused
        return out

    # ------------------------------------------------------------------------------------------ one frame

    def process(self, frame_index: int, image: np.ndarray, persons: Sequence[Person] | None = None) -> list[PipelineFrame]:
        """Process one frame; returns the frames that are final now (with smoothing, earlier frames).

        persons: this frame's persons (user edits, a key-point file); None: detect them.
        """
        frame_index = int(frame_index)
        out: list[PipelineFrame] = []
        if self._last_frame is not None and frame_index <= self._last_frame:
            out += self.reset()  # a new sequence: no warm start from the future
        given = persons is not None
        if persons is None:
            if self.detector is None:
                raise InputError(f"frame {frame_index}: no persons given and no detector")
            persons = list(self.detector.detect(image))
        persons = list(persons)
        occluded: tuple[tuple[int, int], ...] = ()
        if self.tracker is not None:
            persons = list(self.tracker.update(persons, frame=frame_index))
            if not given and self.rescue:
                import time

                t0 = time.perf_counter()
                crops: list[int] = []
                found = rescue_hidden(self.tracker, self.detector, image, persons, frame_index, conf=self.rescue_conf,
                                      crops=crops)
                self.rescue_crops += sum(crops)
                self.rescue_seconds += time.perf_counter() - t0
                self.rescued += len(found)
                persons += found
            occluded = tuple(sorted(getattr(self.tracker, "occluded", {}).items()))
        h, w = image.shape[:2]
        cam = self.camera or Camera.default_for(w, h)
        prev: list[MeshResult | None] = [None] * len(persons)
        if self.warm_start:
            prev = [self._last.get(p.track_id) if p.track_id is not None else None for p in persons]
        results: list[MeshResult | EstimationError] = []
        refit: list[int] = []
        if persons:
            results = list(self.estimator.estimate(image, persons, camera=cam,
                                                   previous=prev if any(r is not None for r in prev) else None))
            if self._fitter and self.refit != "never":
                refit = self._check_warm_fits(image, cam, persons, prev, results)
        results = [dataclasses.replace(r, track_id=p.track_id)
                   if isinstance(r, MeshResult) and r.track_id != p.track_id else r
                   for p, r in zip(persons, results)]
        self._last = {p.track_id: r for p, r in zip(persons, results)
                      if isinstance(r, MeshResult) and p.track_id is not None}
        self._last_frame = frame_index
        img = image if self.keep_images else None
        if self.smoother is None:
            out.append(PipelineFrame(frame_index, tuple(persons), tuple(results), given, tuple(refit), img, occluded))
            return out
        self._held[frame_index] = (img, given, tuple(refit), occluded)
        out += [self._final(f, ps, rs) for f, ps, rs in self.smoother.push(frame_index, persons, results)]
        return out

    def _check_warm_fits(self, image, cam, persons, prev, results) -> list[int]:
        """Replace warm fits that a cold fit of the same frame beats; returns the replaced indices."""
        cand, warm_err = [], {}
        for i, (p, r) in enumerate(zip(persons, results)):
            if prev[i] is None or not isinstance(r, MeshResult):
                continue
            e = _fit_error(r, p)
            if self.refit == "always" or e > self.refit_threshold:
                cand.append(i)
                warm_err[i] = e
        if not cand:
            return []
        cold = self.estimator.estimate(image, [persons[i] for i in cand], camera=cam)
        replaced = []
        for i, c in zip(cand, cold):
            if isinstance(c, MeshResult) and _fit_error(c, persons[i]) < warm_err[i]:
                results[i] = c
                replaced.append(i)
        self.refits += len(replaced)
        if replaced:
            log.debug("frame: warm fits of persons %s replaced by cold fits", replaced)
        return replaced

    def _final(self, frame: int, persons: Sequence[Person], results: Sequence) -> PipelineFrame:
        img, given, refit, occluded = self._held.pop(frame, (None, False, (), ()))
        return PipelineFrame(frame, tuple(persons), tuple(results), given, refit, img, occluded)

    def flush(self) -> list[PipelineFrame]:
        """The frames smoothing still holds back (call after the last frame)."""
        if self.smoother is None:
            return []
        return [self._final(f, ps, rs) for f, ps, rs in self.smoother.flush()]

    # ------------------------------------------------------------------------------------------ a video

    def run(
        self,
        media: Media,
        frames: Iterable[int] | None = None,
        persons: Mapping[int, Sequence[Person]] | Callable[[int], Sequence[Person] | None] | None = None,
    ) -> Iterator[PipelineFrame]:
        """Process ``frames`` (default: all) of ``media`` in order, yielding each frame once it is final.

        persons: given persons per frame ({frame: persons} or a function of the frame returning persons or
        None); frames without any are detected. A generator: closing it stops between two frames.
        A video that cannot be decoded past some frame ends the run there: every frame decoded before it is
        processed and yielded, and ``self.truncated`` says where it stopped (a ``Truncation``; None when the
        run was complete). The first frame failing raises ``MediaError``.
        """
        frames = list(range(media.num_frames)) if frames is None else [int(f) for f in frames]
        self.truncated = None
        done = 0
        for fi in frames:
            try:
                image = media.frame(fi)
            except MediaError as e:
                if done == 0:
                    raise
                self.truncated = Truncation(fi, done, len(frames), str(e))
                log.warning("%s: stopped at frame %d (%d of %d frames processed): %s", media.path, fi, done,
                            len(frames), e)
                break
            given = persons.get(fi) if isinstance(persons, Mapping) else persons(fi) if persons else None
            yield from self.process(fi, image, None if given is None else list(given))
            done += 1
        yield from self.flush()
