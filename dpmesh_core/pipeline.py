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
   after a gap of up to ``max_age`` frames, ids never reused).
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

__all__ = ["FramePipeline", "PipelineFrame", "Truncation", "reprojection_errors"]


@dataclass(frozen=True)
class PipelineFrame:
    """One processed frame.

    frame: frame number in the media. persons: the frame's persons, in order, with ``track_id`` set (when
    tracking). results: one ``MeshResult`` or ``EstimationError`` per person (same order; each
    ``MeshResult.track_id`` is its person's). given: the persons were supplied (key-point file, user edits),
    not detected. refit: indices of persons whose warm-started fit was replaced by a cold fit. image: the
    frame's pixels when the pipeline keeps them (``keep_images``), else None.
    """

    frame: int
    persons: tuple[Person, ...]
    results: tuple[MeshResult | EstimationError, ...]
    given: bool = False
    refit: tuple[int, ...] = ()
    image: np.ndarray | None = None

    @property
    def track_ids(self) -> list[int | None]:
        return [p.track_id for p in self.persons]


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
        self.truncated: Truncation | None = None
        #: number of warm fits replaced by a cold fit so far (a figure for benchmarks)
        self.refits = 0
        self._reset_state()

    # ------------------------------------------------------------------------------------------ state

    def _reset_state(self) -> None:
        self._last: dict[int, MeshResult] = {}  # track id -> result on the previous processed frame
        self._last_frame: int | None = None
        self._held: dict[int, tuple[np.ndarray | None, bool, tuple[int, ...]]] = {}  # smoothing lag

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
        if self.tracker is not None:
            persons = list(self.tracker.update(persons, frame=frame_index))
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
            out.append(PipelineFrame(frame_index, tuple(persons), tuple(results), given, tuple(refit), img))
            return out
        self._held[frame_index] = (img, given, tuple(refit))
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
        img, given, refit = self._held.pop(frame, (None, False, ()))
        return PipelineFrame(frame, tuple(persons), tuple(results), given, refit, img)

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
