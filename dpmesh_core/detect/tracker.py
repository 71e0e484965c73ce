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

**Occlusion** (a person hidden behind another one, e.g. a couple hugging, for seconds): a track that goes
unseen (for at most ``occlusion_onset`` updates) while its predicted box is covered, for at least
``occlusion_cover`` of its area, by the box of a track seen in the same update becomes *occluded by* that
track (the occluder). While occluded:

* its expected box follows the occluder, at the offset and relative size it had when it vanished (in units of
  the occluder's box height), instead of drifting with its own velocity (``expected_box``); for the first
  ``occluded_kalman`` updates its own motion prediction competes too (someone walking past behind another
  person keeps walking);
* it is not aged out by ``max_age`` while the occluder is being seen, for up to ``max_occluded`` updates
  (default 250: 10 s of a 25 fps video); when the occluder itself is unseen the ordinary ``max_age`` clock
  runs, and when the occluder's track ends the occlusion ends;
* it stays out of the first association (sitting on its occluder, it must not take the occluder's own
  detection); a detection left over after it (any score) that overlaps the occluder is matched to it
  **before** the low-confidence, observation-centric and new-track stages, so the person comes back with the
  same id;
* two tracks hidden behind the same occluder at the same spot are one person (an identity switch left a
  track behind): the one seen last stays, the other ends;
* ``occluded`` lists it (track id -> occluder id) and ``rescue_candidates`` offers its expected box to a
  second, low-threshold look (the frame pipeline's rescue pass); ``observe`` accepts what that finds.
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

__all__ = ["Tracker", "oks", "KalmanBox", "RescueCandidate"]


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
    lost_clock: int = 0       # unseen updates that count toward max_age (not those hidden behind a seen occluder)
    occluder: int | None = None      # track id of the person hiding it (None: not occluded)
    occ_rel: np.ndarray | None = None  # (4,) box relative to the occluder's: (dcx, dcy, w, h) / occluder height
    occ_updates: int = 0      # updates spent occluded (capped by max_occluded)
    follow: np.ndarray | None = None   # (4,) the occluder-relative expected box of the current update

    @property
    def key(self) -> tuple[str, int]:
        return self.person.joint_set, self.person.num_joints

    def predicted(self, observed: bool = False, box: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(box, (J, 3) key-points with confidence 1 where known) where the motion model expects the person
        now (``observed``: where it was last seen; ``box``: at that box instead). The skeleton is moved and
        scaled with the box."""
        if observed:
            return self.box.astype(np.float64), np.c_[self.skeleton, self.seen.astype(np.float64)]
        box = self.kf.box.astype(np.float64) if box is None else np.asarray(box, np.float64)
        last = self.box.astype(np.float64)
        c0, c1 = (last[:2] + last[2:]) / 2, (box[:2] + box[2:]) / 2
        s = (box[3] - box[1]) / max(last[3] - last[1], 1.0)
        return box, np.c_[(self.skeleton - c0) * s + c1, self.seen.astype(np.float64)]


def _usable(p: Person, kpt_conf: float) -> np.ndarray:
    """(J,) joints of a detection that can be matched: visible, finite, confident."""
    kp = p.keypoints
    return p.visible & np.isfinite(kp).all(1) & (kp[:, 2] > kpt_conf)


def _coverage(box: np.ndarray, other: np.ndarray) -> float:
    """Fraction of ``box``'s area inside ``other`` (both x0, y0, x1, y1)."""
    lt, rb = np.maximum(box[:2], other[:2]), np.minimum(box[2:], other[2:])
    inter = float(np.prod(np.clip(rb - lt, 0, None)))
    return inter / max(float(np.prod(np.clip(box[2:] - box[:2], 1e-6, None))), 1e-6)


def _relative(box: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """``box`` in units of ``ref``'s height, about ``ref``'s centre: (dcx, dcy, w, h) / h_ref."""
    b, r = KalmanBox.measure(box), KalmanBox.measure(ref)
    return np.r_[b[:2] - r[:2], b[2:]] / r[3]


def _absolute(rel: np.ndarray, ref: np.ndarray) -> np.ndarray:
    r = KalmanBox.measure(ref)
    return KalmanBox.to_box(np.r_[r[:2] + rel[:2] * r[3], rel[2:] * r[3]]).astype(np.float64)


@dataclass(frozen=True)
class RescueCandidate:
    """A track unseen in the last update that a second, low-threshold look may find: its id, the box where it
    is expected (image pixels), the track hiding it (None: just lost, not behind anyone), where its
    skeleton's joints are expected ((J, 3): x, y, 1 where the joint was ever seen, else 0) and its joint set,
    and for how many updates it has been unseen."""

    track_id: int
    box: np.ndarray
    occluder: int | None
    keypoints: np.ndarray
    joint_set: tuple[str, int]
    unseen: int


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
    Occlusion (module docstring): occlusion_cover: fraction of a vanished track's predicted box another seen
    track's box must cover to count as its occluder (None: occlusion handling off); occlusion_onset: how many
    updates after vanishing that can still start an occlusion; max_occluded: updates an occluded track is kept
    while its occluder is seen (then dropped); occluded_kalman: updates during which its own motion prediction
    still competes with the occluder-relative box; rescue_window / rescue_every: ``rescue_candidates``
    offers an unseen track on each of its first ``rescue_window`` unseen updates (since it was last seen or
    rescued), then on every ``rescue_every``-th (0, the default: never — where a hidden person is expected is
    known only shortly after they were last seen; on street.avi a look 64 frames later took a man on the
    occluder's other side for the hidden person, who then stepped out on the right, a jump of half a box
    height); rescue_lost: also offer tracks just lost in the open for this many updates.
    """

    def __init__(self, max_age: int = 30, iou_weight: float = 0.5, min_similarity: float = 0.2,
                 kpt_conf: float = 0.3, high_conf: float = 0.5, gap_widening: float = 0.3,
                 occlusion_cover: float | None = 0.5, occlusion_onset: int = 2, max_occluded: int = 250,
                 occluded_kalman: int = 10, rescue_window: int = 6, rescue_every: int = 0, rescue_lost: int = 0):
        if max_age < 0:
            raise ValueError("max_age must be >= 0")
        if not 0.0 <= iou_weight <= 1.0:
            raise ValueError("iou_weight must be in [0, 1]")
        if occlusion_cover is not None and not 0.0 < occlusion_cover <= 1.0:
            raise ValueError("occlusion_cover must be in (0, 1] or None")
        if max_occluded < 0 or rescue_every < 0:
            raise ValueError("max_occluded and rescue_every must be >= 0")
        self.max_age, self.iou_weight = int(max_age), float(iou_weight)
        self.min_similarity, self.kpt_conf = float(min_similarity), float(kpt_conf)
        self.high_conf = float(high_conf)
        self.gap_widening = float(gap_widening)
        self.occlusion_cover = None if occlusion_cover is None else float(occlusion_cover)
        self.occlusion_onset, self.max_occluded = int(occlusion_onset), int(max_occluded)
        self.occluded_kalman = int(occluded_kalman)
        self.rescue_window, self.rescue_every, self.rescue_lost = int(rescue_window), int(rescue_every), int(rescue_lost)
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

    @property
    def occluded(self) -> dict[int, int]:
        """{track id: occluder's track id} of the tracks hidden behind another track after the last update."""
        return {t.track_id: t.occluder for t in self._tracks if t.occluder is not None and t.age > 0}

    def expected_box(self, track_id: int) -> np.ndarray | None:
        """(4,) where a live track is expected now: an occluded track's box follows its occluder; else the
        motion model's prediction (the last box for a track seen in the last update). None: no such track."""
        for t in self._tracks:
            if t.track_id == track_id:
                if t.age == 0:
                    return t.box.astype(np.float64)
                return t.follow if t.occluder is not None and t.follow is not None else t.kf.box.astype(np.float64)
        return None

    def rescue_candidates(self) -> list[RescueCandidate]:
        """Tracks unseen in the last update worth a second, low-threshold look now: occluded ones, and ones
        lost in the open for at most ``rescue_lost`` updates; each on its first ``rescue_window`` unseen updates,
        then (when ``rescue_every`` > 0) on every ``rescue_every``-th."""
        out = []
        for t in self._tracks:
            if t.age == 0 or (t.occluder is None and t.lost_clock > self.rescue_lost):
                continue
            if t.age <= self.rescue_window or (self.rescue_every and t.age % self.rescue_every == 0):
                box, kp = t.predicted(box=self.expected_box(t.track_id))
                out.append(RescueCandidate(t.track_id, box, t.occluder, kp, t.key, t.age))
        return out

    def observe(self, person: Person, frame: int | None = None) -> Person:
        """Take ``person`` (its ``track_id`` set) as the observation of that track in the last update, which
        did not see it (what a rescue pass found). An occluded track stays linked to its occluder (a glimpse
        of a hidden person is not the end of the occlusion): the offset to the occluder is taken from this
        observation and no velocity of its own is learned from it. Returns the person. Raises ValueError for
        a track that is not alive or was already seen in this update."""
        frame = self._frame if frame is None else int(frame)
        for t in self._tracks:
            if t.track_id == person.track_id:
                if t.age == 0:
                    raise ValueError(f"track {t.track_id} was already seen in this update")
                occluder, occ_updates, occ_rel = self._by_id(t.occluder), t.occ_updates, t.occ_rel
                t.age -= 1  # the update counted this frame as unseen
                self._observe(t, person, frame)
                if occluder is not None:
                    rel = _relative(t.box.astype(np.float64), occluder.box.astype(np.float64))
                    if occ_rel is not None:  # the size stays the one it had when it vanished (a glimpse of a
                        rel[2:] = occ_rel[2:]  # head and shoulders is not a smaller person)
                    t.occluder, t.occ_updates, t.occ_rel = occluder.track_id, occ_updates, rel
                    t.kf = KalmanBox(t.box)
                    t.kf.x[4:] = occluder.kf.x[4:]  # it moves with the person in front
                return person
        raise ValueError(f"no live track {person.track_id}")

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
            if not observed and t.occluder is not None and t.follow is not None:
                # behind its occluder: the occluder-relative box (alone once its own motion is stale)
                fb, fk = t.predicted(box=t.follow)
                fiou = box_iou(fb[None], np.stack([p.box for p in persons]))[0]
                w1 = 1.0 + self.gap_widening * min(t.age, self.occluded_kalman)
                fs = np.array([self._sim_pair(fb, fk, t.key, p, float(fiou[j]), w1) for j, p in enumerate(persons)])
                sim[i] = np.maximum(sim[i], fs) if t.age <= self.occluded_kalman else fs
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
        t.occluder, t.occ_rel, t.follow, t.occ_updates, t.lost_clock = None, None, None, 0, 0
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
        self._follow_occluders()
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
        # 2. confident detections against every live track (predicted positions) but the occluded ones: a
        # hidden track sits on its occluder and must not take the occluder's own detection
        visible = [i for i in open_tracks if self._tracks[i].follow is None]
        self._associate(visible, high, persons, False, assigned)
        # 2b. occluded tracks first: a detection left over that overlaps the occluder is the hidden person
        self._associate_occluded(open_tracks, free, persons, assigned)
        # 3. low-confidence detections against tracks seen last frame and still unmatched
        used = set(assigned.values())
        recent = [i for i in open_tracks if i not in used and self._tracks[i].age == 0]
        self._associate(recent, low, persons, False, assigned)
        # 4. observation-centric recovery: last observed positions (not for occluded tracks: theirs is stale)
        used = set(assigned.values())
        rest_t = [i for i in open_tracks if i not in used and self._tracks[i].follow is None]
        rest_d = [j for j in free if j not in assigned]
        self._associate(rest_t, rest_d, persons, True, assigned)
        out: list[Person] = []
        matched = set(assigned.values())
        seen_ids = {self._tracks[k].track_id for k in matched}
        for i, t in enumerate(self._tracks):
            if i not in matched:
                t.age += 1
                if t.occluder is not None and t.occluder in seen_ids:
                    t.occ_updates += 1  # hidden behind a person seen now: max_age does not run
                else:
                    t.lost_clock += 1
                    if t.occluder is not None:
                        t.occ_updates += 1
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
        self._start_occlusions(persons, assigned)
        self._merge_hidden_duplicates()
        self._tracks = [t for t in self._tracks if t.lost_clock <= self.max_age and t.occ_updates <= self.max_occluded]
        alive = {t.track_id for t in self._tracks}
        for t in self._tracks:
            if t.occluder is not None and t.occluder not in alive:  # the occluder's track ended
                t.occluder, t.occ_rel = None, None
        return out

    # ------------------------------------------------------------------------------------------ occlusion

    def _by_id(self, tid: int | None) -> _Track | None:
        if tid is None:
            return None
        for t in self._tracks:
            if t.track_id == tid:
                return t
        return None

    def _current_box(self, t: _Track, depth: int = 0) -> np.ndarray:
        """Where track ``t`` is believed to be at this update, before association (follow box if occluded)."""
        if t.occluder is not None and t.occ_rel is not None and depth < 4:
            occ = self._by_id(t.occluder)
            if occ is not None:
                return _absolute(t.occ_rel, self._current_box(occ, depth + 1))
        return t.kf.box.astype(np.float64)

    def _follow_occluders(self) -> None:
        """Each occluded track's expected box for this update: the occluder's predicted box plus the offset."""
        for t in self._tracks:
            t.follow = self._current_box(t) if t.occluder is not None and t.occ_rel is not None else None
            if t.follow is not None and t.age >= self.occluded_kalman:
                # no drift of its own: the filter waits where the occluder-relative box is, at rest
                t.kf.x[:4] = KalmanBox.measure(t.follow)
                t.kf.x[4:] = 0.0

    def _associate_occluded(self, open_tracks: list[int], free: list[int], persons: Sequence[Person],
                            assigned: dict[int, int]) -> None:
        """Occluded tracks against the detections still unmatched (any score) that overlap their occluder:
        Hungarian on the best of the usual similarity and the box IoU with the expected (follow) box."""
        used = set(assigned.values())
        occ = [i for i in open_tracks if i not in used and self._tracks[i].occluder is not None
               and self._tracks[i].follow is not None]
        dets = [j for j in free if j not in assigned]
        if not occ or not dets:
            return
        sim = self._similarity([self._tracks[i] for i in occ], [persons[j] for j in dets], False)
        fiou = box_iou(np.stack([self._tracks[i].follow for i in occ]), np.stack([persons[j].box for j in dets]))
        sim = np.maximum(sim, fiou)
        for r, i in enumerate(occ):
            t = self._tracks[i]
            o = self._by_id(t.occluder)
            obox = self._current_box(o) if o is not None else t.follow
            h_exp = max(float(t.follow[3] - t.follow[1]), 1.0)
            for c, j in enumerate(dets):
                b = persons[j].box.astype(np.float64)
                near = _coverage(b, obox)  # how much of the detection lies on the occluder
                vis = _usable(persons[j], self.kpt_conf)
                sb = _skeleton_box(np.where(vis[:, None], persons[j].keypoints[:, :2], 0.0), vis, b)  # as t.box
                if near <= 0.0 or not 0.6 <= float(sb[3] - sb[1]) / h_exp <= 1.6:
                    sim[r, c] = 0.0  # not near the occluder, or not the hidden person's size (someone further back)
                else:  # someone of the hidden person's size emerging from behind the occluder
                    sim[r, c] = max(sim[r, c], 0.5 * near)
        rows, cols = linear_sum_assignment(1.0 - sim)
        for r, c in zip(rows, cols):
            if sim[r, c] >= self.min_similarity:
                assigned[dets[int(c)]] = occ[int(r)]

    def _merge_hidden_duplicates(self) -> None:
        """Two tracks hidden behind the same occluder at the same spot (expected boxes overlapping by IoU > 0.5)
        are one person seen as two tracks (an identity switch left one behind): the one seen last stays, the
        other ends (its id is never used again)."""
        hidden = [t for t in self._tracks if t.occluder is not None and t.age > 0 and t.follow is not None]
        drop: set[int] = set()
        for i, a in enumerate(hidden):
            for b in hidden[i + 1:]:
                if a.occluder != b.occluder or a.track_id in drop or b.track_id in drop:
                    continue
                if float(box_iou(a.follow[None], b.follow[None])[0, 0]) > 0.5:
                    older = a if (a.age, -a.hits) > (b.age, -b.hits) else b
                    drop.add(older.track_id)
        if drop:
            self._tracks = [t for t in self._tracks if t.track_id not in drop]

    def _start_occlusions(self, persons: Sequence[Person], assigned: dict[int, int]) -> None:
        """A track unseen for at most ``occlusion_onset`` updates whose predicted box is covered by the box of
        a person seen in this update becomes occluded by that person's track."""
        if self.occlusion_cover is None:
            return
        seen = [(self._tracks[i], persons[j].box.astype(np.float64)) for j, i in assigned.items()]
        if not seen:
            return
        for t in self._tracks:
            if t.age == 0 or t.occluder is not None or t.lost_clock > self.occlusion_onset:
                continue
            pred = t.kf.box.astype(np.float64)
            cover = [(_coverage(pred, b), o) for o, b in seen if o is not t]
            if not cover:
                continue
            c, o = max(cover, key=lambda x: x[0])
            if c >= self.occlusion_cover:
                t.occluder = o.track_id
                t.occ_rel = _relative(pred, o.box.astype(np.float64))
                t.follow = pred
                t.occ_updates = 1
