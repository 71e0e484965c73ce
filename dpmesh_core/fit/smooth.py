"""Offline temporal smoothing of per-frame fitted bodies (video).

``smooth_sequence`` groups results into tracks (by ``track_id``, else by slot index), Gaussian-filters
(local-linear at the ends of a run, so steady motion is not dragged) their parameters over time — rotations (global orientation and, for axis-angle body poses, every joint
rotation) as averaged rotation matrices projected back onto SO(3), shape and translation linearly — and
re-evaluates the body model so vertices, joints and re-projections match the smoothed parameters.
A track is smoothed only within a run of consecutive frames where it is present: a gap (the person
missed, occluded, or not tracked) restarts the filter, so a body is never averaged with where it was before
it disappeared (and, keyed by track, never with another person).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from ..errors import ConfigError, InputError
from ..geometry import axis_angle_to_matrix, matrix_to_axis_angle
from ..types import BodyParams, MeshResult, Person


def _project_so3(M: np.ndarray) -> np.ndarray:
    """(..., 3, 3) nearest rotations (SVD, determinant fixed to +1)."""
    U, _, Vt = np.linalg.svd(M)
    d = np.sign(np.linalg.det(U @ Vt))
    U = U.copy()
    U[..., :, 2] *= d[..., None]
    return U @ Vt


def gaussian_smooth(values: np.ndarray, frames: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian-weighted local-linear filter of (T, ...) ``values`` sampled at integer ``frames`` (T,) with
    ``sigma`` frames (the kernel cut at 3 sigma).

    Where the window is symmetric this is the plain Gaussian average; at the ends of a run (the start of a
    video, before or after a gap) a plain average would drag a moving person back toward where it is going
    to be (a one-sided window), so the value of a weighted straight-line fit is taken instead: steady motion
    passes unchanged, only jitter is removed."""
    if sigma <= 0 or len(frames) < 2:
        return values.copy()
    d = frames[None, :].astype(np.float64) - frames[:, None]  # d[i, j]: offset of sample j from target i
    w = np.exp(-0.5 * (d / sigma) ** 2) * (np.abs(d) <= 3 * sigma)
    s0, s1, s2 = w.sum(1, keepdims=True), (w * d).sum(1, keepdims=True), (w * d * d).sum(1, keepdims=True)
    det = s0 * s2 - s1 * s1
    ok = det > 1e-9 * np.maximum(s0 * s2, 1e-30)
    k = np.where(ok, w * (s2 - d * s1) / np.where(ok, det, 1.0), w / s0)
    return np.tensordot(k, values.astype(np.float64), axes=(1, 0))


def smooth_params(params: Sequence[BodyParams], frames: Sequence[int], sigma: float = 1.5,
                  keep_image_position: bool = False) -> list[BodyParams]:
    """Smooth one track's parameters (all of the same body model) sampled at ``frames``.

    keep_image_position: smooth the depth but keep where the body's origin projects in each frame (the
    in-plane translation is scaled with the smoothed depth): the image position is measured precisely by the
    key-points (and follows a shaking camera), it is the pose, shape, orientation and depth that jitter."""
    if not params:
        return []
    fr = np.asarray(frames, np.int64)
    go = np.stack([p.global_orient for p in params]).astype(np.float64)
    bp = np.stack([p.body_pose for p in params]).astype(np.float64)
    be = np.stack([p.betas for p in params]).astype(np.float64)
    tr = np.stack([p.transl for p in params]).astype(np.float64)
    go_s = matrix_to_axis_angle(_project_so3(gaussian_smooth(axis_angle_to_matrix(go), fr, sigma)))
    if bp.shape[1] % 3 == 0 and bp.shape[1] > 0:
        R = axis_angle_to_matrix(bp.reshape(len(params), -1, 3))
        bp_s = matrix_to_axis_angle(_project_so3(gaussian_smooth(R, fr, sigma))).reshape(len(params), -1)
    else:
        bp_s = gaussian_smooth(bp, fr, sigma)
    be_s = gaussian_smooth(be, fr, sigma)
    tr_s = gaussian_smooth(tr, fr, sigma)
    if keep_image_position:
        z = np.where(np.abs(tr[:, 2]) > 1e-6, tr[:, 2], 1e-6)
        tr_s[:, :2] = tr[:, :2] * (tr_s[:, 2] / z)[:, None]
    return [dataclasses.replace(p, global_orient=go_s[t], body_pose=bp_s[t], betas=be_s[t], transl=tr_s[t])
            for t, p in enumerate(params)]


def _runs(positions: Sequence[int]) -> list[list[int]]:
    """Indices into sorted ``positions`` split where consecutive positions differ by more than 1 (a gap)."""
    runs: list[list[int]] = []
    for i, p in enumerate(positions):
        if runs and p == positions[runs[-1][-1]] + 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs


def _track_key(r: MeshResult, slot: int) -> tuple:
    """A result's track: its ``track_id``, else its slot index."""
    return ("track", r.track_id) if r.track_id is not None else ("slot", slot)


def _smoothable(r: object, body_name: str, frame: object, slot: int) -> bool:
    """True for a ``MeshResult`` of ``body_name``; ConfigError for one of another body model."""
    if not isinstance(r, MeshResult):
        return False
    if r.params.model != body_name:
        raise ConfigError(f"frame {frame} slot {slot}: result of body model {r.params.model!r} cannot be "
                          f"smoothed with {body_name!r}")
    return True


def smooth_sequence(
    results_per_frame: Sequence[Sequence[MeshResult | None]],
    fitter,
    sigma: float = 1.5,
    persons_per_frame: Sequence[Sequence[Person]] | None = None,
    keep_image_position: bool = False,
) -> list[list[MeshResult | None]]:
    """Temporally smooth a video's results; returns the same nested structure with new ``MeshResult``s.

    results_per_frame: per frame, one entry per person slot (None/errors are passed through).
    fitter: the ``KeypointFitter`` whose body model produced the results (its model re-skins them).
    sigma: Gaussian standard deviation in frames (0 = no smoothing).
    persons_per_frame: the persons the results were fitted to (same nesting); when given,
        ``keypoints2d`` is recomputed for them, otherwise it is dropped (set to None) as it would be stale.
    keep_image_position: see ``smooth_params``.
    """
    if sigma < 0:
        raise InputError(f"sigma must be ≥ 0, got {sigma}")
    body_name = fitter.body.name
    tracks: dict[object, list[tuple[int, int]]] = {}
    for t, frame in enumerate(results_per_frame):
        for s, r in enumerate(frame):
            if _smoothable(r, body_name, t, s):
                tracks.setdefault(_track_key(r, s), []).append((t, s))
    out: list[list[MeshResult | None]] = [list(f) for f in results_per_frame]
    entries: list[tuple[int, int, BodyParams]] = []
    for all_members in tracks.values():
        for run in _runs([t for t, _ in all_members]):  # a gap restarts the filter
            members = [all_members[i] for i in run]
            ps = [results_per_frame[t][s].params for t, s in members]  # type: ignore[union-attr]
            sm = smooth_params(ps, [t for t, _ in members], sigma, keep_image_position)
            entries.extend((t, s, p) for (t, s), p in zip(members, sm))
    if not entries:
        return out
    olds = [results_per_frame[t][s] for t, s, _ in entries]
    persons = [persons_per_frame[t][s] for t, s, _ in entries] if persons_per_frame is not None else None
    fresh = fitter.results_from_params([p for _, _, p in entries], [o.camera for o in olds], persons, like=olds)
    for (t, s, _), r in zip(entries, fresh):
        out[t][s] = r  # keypoints2d is None without persons: it would be stale
    return out



class StreamingSmoother:
    """``smooth_sequence`` applied while a video is being processed, with a fixed lag.

    ``push`` one processed frame (its persons and results) and get back the frames whose smoothing window
    (±⌈3σ⌉ processed frames, where the kernel is cut off) is complete; ``flush`` returns the rest at the
    end. Like ``smooth_sequence``, each result is smoothed along its track (``track_id``, else slot index)
    over the processed frames (σ counts processed frames, so a stride widens it in video frames), within the
    run of consecutive frames where the track is present (a gap restarts the filter). Only the
    frames returned are re-skinned and only a window of frames is kept, so cost per frame and memory stay
    bounded; the output equals ``smooth_sequence`` over the whole video (tested). ``keep_image_position``:
    see ``smooth_params``.
    """

    def __init__(self, fitter, sigma: float = 1.5, keep_image_position: bool = False):
        if sigma < 0:
            raise InputError(f"sigma must be ≥ 0, got {sigma}")
        self.fitter = fitter
        self.sigma = float(sigma)
        self.keep_image_position = bool(keep_image_position)
        self.lag = int(np.ceil(3 * sigma)) if sigma > 0 else 0
        self._buf: list[tuple[int, object, list[Person], list]] = []  # (position, frame, persons, results)
        self._count = 0   # frames pushed so far
        self._emitted = 0  # frames returned so far

    def push(self, frame: object, persons: Sequence[Person], results: Sequence) -> list[tuple[object, list[Person], list]]:
        """Add the next processed frame; returns the (frame, persons, smoothed results) now complete."""
        self._buf.append((self._count, frame, list(persons), list(results)))
        self._count += 1
        out = []
        while self._emitted < self._count - self.lag:
            out.append(self._emit(self._emitted))
            self._emitted += 1
        self._buf = [b for b in self._buf if b[0] >= self._emitted - self.lag]
        return out

    def flush(self) -> list[tuple[object, list[Person], list]]:
        """The frames still held back (call once, after the last ``push``)."""
        out = [self._emit(t) for t in range(self._emitted, self._count)]
        self._emitted = self._count
        self._buf = []
        return out

    def _emit(self, t: int) -> tuple[object, list[Person], list]:
        window = [b for b in self._buf if abs(b[0] - t) <= self.lag]
        centre = next(i for i, b in enumerate(window) if b[0] == t)
        _, frame, persons, results = window[centre]
        if self.sigma <= 0 or not any(isinstance(r, MeshResult) for r in results):
            return frame, persons, results
        body_name = self.fitter.body.name
        smoothed = list(results)
        for s, r in enumerate(results):
            if not _smoothable(r, body_name, frame, s):
                continue
            track = [(b[0], q.params) for b in window for k, q in enumerate(b[3])
                     if isinstance(q, MeshResult) and _track_key(q, k) == _track_key(r, s)]
            # only the run of consecutive frames around this one: a gap restarts the filter
            run = next(rn for rn in _runs([p for p, _ in track]) if any(track[i][0] == t for i in rn))
            track = [track[i] for i in run]
            pos = [p for p, _ in track]
            sm = smooth_params([q for _, q in track], pos, self.sigma, self.keep_image_position)
            smoothed[s] = dataclasses.replace(r, params=sm[pos.index(t)])
        # re-skin this frame only (σ = 0: the parameters are already smoothed)
        return frame, persons, smooth_sequence([smoothed], self.fitter, sigma=0.0, persons_per_frame=[persons])[0]
