"""Multi-person tracking for video: ``Person.track_id`` stable for the life of a person, never reused.

A small ByteTrack / OC-SORT style tracker (appearance-free), written here because the maintained packages on
PyPI that do this either pull heavy or conflicting dependencies (``trackers``: supervision + opencv-python,
which clashes with our opencv-python-headless; ``boxmot``: torch models and downloads) or pin numpy < 2
(``norfair``).

Per track, a skeleton is kept: where each joint is believed to be, joints hidden in the latest detection
carried along with the body's motion (measured on the joints seen in both frames), so a partly occluded person
keeps a full-body box and full key-points. A constant-velocity Kalman filter on that skeleton's box (centre x,
y, width, height and their velocities; noise proportional to the box height, as in ByteTrack) predicts where
the person is in the next frame. Each ``update``:

1. **Pinned persons**: a person that already carries a ``track_id`` (a user's edit, a key-point file with
   ids) is that track's observation; the id is reserved (a new track never gets it).
2. **First association**: the confident detections (``score >= high_conf``) against every live track —
   tracked and lost ones — with a similarity in [0, 1]::

       sim = iou_weight * IoU(predicted box, box) + (1 - iou_weight) * OKS(predicted key-points, key-points)

   where OKS is the COCO object key-point similarity per joint (joints confident in both, the predicted box's
   area as scale, widened by ``gap_widening`` per frame the track has been lost; when no joint is shared the
   box decides alone). The predicted key-points are the skeleton moved with the predicted box. Pairs below
   ``min_similarity`` are never matched, the rest by the Hungarian method (scipy ``linear_sum_assignment`` on
   1 - sim).
3. **Second association** (ByteTrack): the low-confidence detections (``score < high_conf``), often
   partly occluded people, against the tracks seen in the previous frame that are still unmatched.
4. **Observation-centric recovery** (OC-SORT): tracks still unmatched against the remaining detections by
   their *last observed* box and key-points, which is right when the motion model drifted during a gap.
5. The remaining detections open new tracks (ids 0, 1, 2, ... in order of appearance, never reused).

When a track is found again after a gap, its Kalman filter is re-updated along a straight line between the
last observation and the new one (OC-SORT's observation-centric re-update), so the velocity learned during
the gap is not a ghost's. A track unseen for more than ``max_age`` frames is dropped for good: re-
identification works for gaps up to ``max_age`` frames.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

from ..body.joints import COCO17_SIGMAS
from ..geometry import box_iou
from ..types import Person

__all__ = ["Tracker", "oks", "KalmanBox"]


def oks(kp_a: np.ndarray, kp_b: np.ndarray, area: float, kpt_conf: float = 0.3,
        sigmas: np.ndarray | None = None) -> float:
    """COCO object key-point similarity between two (J, 3) key-point sets (pixels), object area px^2.

    Only joints with confidence > ``kpt_conf`` in both count; returns 0.0 when there is none.
    """
    a, b = np.asarray(kp_a, np.float64), np.asarray(kp_b, np.float64)
    m = (a[:, 2] > kpt_conf) & (b[:, 2] > kpt_conf)
    if not m.any():
        return 0.0
    if sigmas is None:
        sigmas = COCO17_SIGMAS if a.shape[0] == len(COCO17_SIGMAS) else np.full(a.shape[0], 0.08)
    d2 = ((a[m, :2] - b[m, :2]) ** 2).sum(1)
    k2 = (2 * np.asarray(sigmas)[m]) ** 2
    return float(np.exp(-d2 / (2 * max(area, 1.0) * k2)).mean())


class KalmanBox:
    """Constant-velocity Kalman filter of a box: state (cx, cy, w, h, vcx, vcy, vw, vh), pixels and pixels per
    frame; process and measurement noise proportional to the box height (ByteTrack's weights)."""

    _STD_POS, _STD_VEL = 1.0 / 20, 1.0 / 160

    def __init__(self, box: np.ndarray):
        z = self.measure(box)
        self.x = np.r_[z, np.zeros(4)]
        h = max(z[3], 1.0)
        std = np.r_[2 * self._STD_POS * h * np.ones(4), 10 * self._STD_VEL * h * np.ones(4)]
        self.P = np.diag(std ** 2)
        self._F = np.eye(8)
        self._F[:4, 4:] = np.eye(4)
        self._H = np.eye(4, 8)

    @staticmethod
    def measure(box: np.ndarray) -> np.ndarray:
        b = np.asarray(box, np.float64)
        return np.array([(b[0] + b[2]) / 2, (b[1] + b[3]) / 2, max(b[2] - b[0], 1.0), max(b[3] - b[1], 1.0)])

    @staticmethod
    def to_box(z: np.ndarray) -> np.ndarray:
        cx, cy, w, h = (float(v) for v in z[:4])
        w, h = max(w, 1.0), max(h, 1.0)
        return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], np.float32)

    def predict(self) -> None:
        h = max(self.x[3], 1.0)
        q = np.r_[self._STD_POS * h * np.ones(4), self._STD_VEL * h * np.ones(4)]
        self.x = self._F @ self.x
        self.x[2:4] = np.maximum(self.x[2:4], 1.0)
        self.P = self._F @ self.P @ self._F.T + np.diag(q ** 2)

    def update(self, box: np.ndarray) -> None:
        z = self.measure(box)
        r = self._STD_POS * max(self.x[3], 1.0) * np.ones(4)
        S = self._H @ self.P @ self._H.T + np.diag(r ** 2)
        K = np.linalg.solve(S, self._H @ self.P).T
        self.x = self.x + K @ (z - self._H @ self.x)
        self.P = (np.eye(8) - K @ self._H) @ self.P

    @property
    def box(self) -> np.ndarray:
        return self.to_box(self.x)


@dataclass
class _Track:
    track_id: int
    person: Person            # last observation
    kf: KalmanBox             # motion of the skeleton's box
    frame: int                # frame number of the last observation
    skeleton: np.ndarray      # (J, 2) where each joint is believed to be (hidden joints carried with the body)
    seen: np.ndarray          # (J,) bool: joint ever observed
    box: np.ndarray           # (4,) box of the skeleton at the last observation (the Kalman's measurement)
    age: int = 0              # updates since the last observation
    hits: int = 1
    history: list[int] = field(default_factory=list)  # frames it was observed in

    @property
    def key(self) -> tuple[str, int]:
        return self.person.joint_set, self.person.num_joints

    def predicted(self, observed: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(box, (J, 3) key-points with confidence 1 where known) where the motion model expects the person
        now (``observed``: where it was last seen). The skeleton is moved and scaled with the box."""
        if observed:
            return self.box.astype(np.float64), np.c_[self.skeleton, self.seen.astype(np.float64)]
        box = self.kf.box.astype(np.float64)
        last = self.box.astype(np.float64)
        c0, c1 = (last[:2] + last[2:]) / 2, (box[:2] + box[2:]) / 2
        s = (box[3] - box[1]) / max(last[3] - last[1], 1.0)
        return box, np.c_[(self.skeleton - c0) * s + c1, self.seen.astype(np.float64)]


def _usable(p: Person, kpt_conf: float) -> np.ndarray:
    """(J,) joints of a detection that can be matched: visible, finite, confident."""
    kp = p.keypoints
    return p.visible & np.isfinite(kp).all(1) & (kp[:, 2] > kpt_conf)


def _skeleton_box(skeleton: np.ndarray, seen: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    if int(seen.sum()) < 2:
        return np.asarray(fallback, np.float64)
    return Person.box_from_keypoints(np.c_[skeleton, np.ones(len(skeleton))], seen, pad=1.1).astype(np.float64)


class Tracker:
    """ByteTrack / OC-SORT style tracker with key-point OKS as an association cue (see module docstring).

    max_age: frames a lost track can be re-identified for (then dropped; its id is never reused);
    iou_weight: weight of box IoU in the similarity (the rest goes to key-point OKS);
    min_similarity: smallest similarity accepted as a match; high_conf: detections scoring at least this
    take part in the first association, the others only in the second (ByteTrack); kpt_conf: key-point
    confidence needed for a joint to count in OKS; gap_widening: OKS's distance tolerance grows by this
    fraction per frame a track has been lost (the prediction is less sure).
    """

    def __init__(self, max_age: int = 30, iou_weight: float = 0.5, min_similarity: float = 0.2,
                 kpt_conf: float = 0.3, high_conf: float = 0.5, gap_widening: float = 0.3):
        if max_age < 0:
            raise ValueError("max_age must be >= 0")
        if not 0.0 <= iou_weight <= 1.0:
            raise ValueError("iou_weight must be in [0, 1]")
        self.max_age, self.iou_weight = int(max_age), float(iou_weight)
        self.min_similarity, self.kpt_conf = float(min_similarity), float(kpt_conf)
        self.high_conf = float(high_conf)
        self.gap_widening = float(gap_widening)
        self.reset()

    def reset(self) -> None:
        """Forget every track; ids start again from 0."""
        self._tracks: list[_Track] = []
        self._next_id = 0
        self._frame = -1

    @property
    def next_id(self) -> int:
        """The id the next new track gets (ids only ever increase)."""
        return self._next_id

    def reserve_ids(self, below: int) -> None:
        """Never give a new track an id below ``below`` (ids used elsewhere, e.g. by a document's tracks)."""
        self._next_id = max(self._next_id, int(below))

    @property
    def active_ids(self) -> list[int]:
        """Ids of the tracks currently alive (seen within ``max_age`` updates), tracked or lost."""
        return [t.track_id for t in self._tracks]

    @property
    def lost_ids(self) -> list[int]:
        """Ids of live tracks not seen in the last update (candidates for re-identification)."""
        return [t.track_id for t in self._tracks if t.age > 0]

    # ------------------------------------------------------------------------------------------ similarity

    def _sim_pair(self, box_t: np.ndarray, kp_t: np.ndarray, set_t: tuple, p: Person, iou: float,
                  widen: float = 1.0) -> float:
        """``iou_weight`` IoU + the rest OKS over the joints known on both sides (the box alone when none);
        ``widen`` scales OKS's tolerance (uncertainty after a gap)."""
        if set_t != (p.joint_set, p.num_joints):
            return iou
        shared = (kp_t[:, 2] > self.kpt_conf) & _usable(p, self.kpt_conf)
        if not shared.any():
            return iou
        area = float(np.prod(np.clip(box_t[2:] - box_t[:2], 1.0, None))) * widen ** 2
        k = oks(np.c_[kp_t[:, :2], np.where(shared, 1.0, 0.0)], np.c_[p.keypoints[:, :2], np.where(shared, 1.0, 0.0)],
                area, 0.5)
        return self.iou_weight * iou + (1 - self.iou_weight) * k

    def _similarity(self, tracks: Sequence[_Track], persons: Sequence[Person], observed: bool) -> np.ndarray:
        """(T, P) similarity between tracks (at their predicted, or with ``observed`` their last observed,
        position) and persons."""
        if not tracks or not persons:
            return np.zeros((len(tracks), len(persons)))
        pred = [t.predicted(observed) for t in tracks]
        iou = box_iou(np.stack([b for b, _ in pred]), np.stack([p.box for p in persons]))
        sim = np.empty_like(iou)
        for i, t in enumerate(tracks):
            widen = 1.0 + self.gap_widening * t.age
            for j, p in enumerate(persons):
                sim[i, j] = self._sim_pair(pred[i][0], pred[i][1], t.key, p, float(iou[i, j]), widen)
        return sim

    def similarity(self, tracked: Sequence[Person], persons: Sequence[Person]) -> np.ndarray:
        """(T, P) similarity in [0, 1] between persons of a previous frame and new persons (no motion model)."""
        if not tracked or not persons:
            return np.zeros((len(tracked), len(persons)))
        iou = box_iou(np.stack([t.box for t in tracked]), np.stack([p.box for p in persons]))
        sim = np.empty_like(iou)
        for i, t in enumerate(tracked):
            for j, p in enumerate(persons):
                sim[i, j] = self._sim_pair(t.box, t.keypoints, (t.joint_set, t.num_joints), p, float(iou[i, j]))
        return sim

    def _associate(self, tracks: list[int], dets: list[int], persons: Sequence[Person], observed: bool,
                   assigned: dict[int, int]) -> None:
        """Hungarian matching of track indices ``tracks`` to person indices ``dets``; fills ``assigned``
        (person index -> track index)."""
        if not tracks or not dets:
            return
        sim = self._similarity([self._tracks[i] for i in tracks], [persons[j] for j in dets], observed)
        rows, cols = linear_sum_assignment(1.0 - sim)
        for r, c in zip(rows, cols):
            if sim[r, c] >= self.min_similarity:
                assigned[dets[int(c)]] = tracks[int(r)]

    # ------------------------------------------------------------------------------------------ update

    def _new_track(self, tid: int, p: Person, frame: int, hits: int = 1) -> _Track:
        seen = _usable(p, self.kpt_conf)
        skel = np.where(seen[:, None], p.keypoints[:, :2], 0.0).astype(np.float64)
        box = _skeleton_box(skel, seen, p.box)
        return _Track(tid, p, KalmanBox(box), frame, skel, seen, box, hits=hits,
                      history=[frame] if hits else [])

    def _observe(self, t: _Track, p: Person, frame: int) -> None:
        vis = _usable(p, self.kpt_conf)
        if t.key == (p.joint_set, p.num_joints):
            common = vis & t.seen
            if common.any():  # the body's motion from the joints seen both times (robust to partial views)
                shift = np.median(p.keypoints[common, :2] - t.skeleton[common], axis=0)
            else:
                _, kp = t.predicted()
                shift = (kp[:, :2] - t.skeleton).mean(0) if len(kp) else np.zeros(2)
            skel = t.skeleton + shift
            skel[vis] = p.keypoints[vis, :2]
            t.skeleton, t.seen = skel, t.seen | vis
        else:  # another joint set: start the skeleton again
            t.skeleton = np.where(vis[:, None], p.keypoints[:, :2], 0.0).astype(np.float64)
            t.seen = vis
        box = _skeleton_box(t.skeleton, t.seen, p.box)
        if t.age > 0:  # OC-SORT observation-centric re-update: a straight path through the gap
            gap = t.age + 1
            b0 = t.box.astype(np.float64)
            kf = KalmanBox(b0)
            kf.x[4:6] = (KalmanBox.measure(box)[:2] - KalmanBox.measure(b0)[:2]) / gap
            for k in range(1, gap + 1):
                kf.predict()
                kf.update(b0 + (box - b0) * k / gap)
            t.kf = kf
        else:
            t.kf.update(box)
        t.box = box
        t.person, t.age, t.hits, t.frame = p, 0, t.hits + 1, frame
        t.history.append(frame)

    def update(self, persons: Sequence[Person], frame: int | None = None) -> list[Person]:
        """Match this frame's persons to the tracks; returns them in the same order with ``track_id`` set.

        A person that already has a ``track_id`` keeps it (it is that track's observation). ``frame``: the
        frame number (default: one more than the last update), kept in the tracks' history.
        """
        persons = list(persons)
        frame = self._frame + 1 if frame is None else int(frame)
        self._frame = frame
        for t in self._tracks:
            t.kf.predict()
        assigned: dict[int, int] = {}  # person index -> track index
        # 1. pinned persons
        by_id = {t.track_id: i for i, t in enumerate(self._tracks)}
        free: list[int] = []
        for j, p in enumerate(persons):
            if p.track_id is None:
                free.append(j)
                continue
            tid = int(p.track_id)
            if tid in by_id and by_id[tid] not in assigned.values():
                assigned[j] = by_id[tid]
            elif tid not in by_id:
                self._tracks.append(self._new_track(tid, p, frame, hits=0))
                by_id[tid] = len(self._tracks) - 1
                assigned[j] = by_id[tid]
            self._next_id = max(self._next_id, tid + 1)
        pinned = set(assigned.values())
        open_tracks = [i for i in range(len(self._tracks)) if i not in pinned]
        high = [j for j in free if persons[j].score >= self.high_conf]
        low = [j for j in free if persons[j].score < self.high_conf]
        # 2. confident detections against every live track (predicted positions)
        self._associate(open_tracks, high, persons, False, assigned)
        # 3. low-confidence detections against tracks seen last frame and still unmatched
        used = set(assigned.values())
        recent = [i for i in open_tracks if i not in used and self._tracks[i].age == 0]
        self._associate(recent, low, persons, False, assigned)
        # 4. observation-centric recovery: last observed positions
        used = set(assigned.values())
        rest_t = [i for i in open_tracks if i not in used]
        rest_d = [j for j in free if j not in assigned]
        self._associate(rest_t, rest_d, persons, True, assigned)
        out: list[Person] = []
        matched = set(assigned.values())
        for i, t in enumerate(self._tracks):
            if i not in matched:
                t.age += 1
        for j, p in enumerate(persons):
            if j in assigned:
                t = self._tracks[assigned[j]]
                if t.hits == 0:  # a pinned new track: first observation
                    t.hits, t.history = 1, [frame]
                else:
                    self._observe(t, p, frame)
                tid = t.track_id
            else:
                tid = self._next_id
                self._next_id += 1
                self._tracks.append(self._new_track(tid, p, frame))
            out.append(p if p.track_id == tid else dataclasses.replace(p, track_id=tid))
        self._tracks = [t for t in self._tracks if t.age <= self.max_age]
        return out
