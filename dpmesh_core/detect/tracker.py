"""A simple multi-person tracker for video: keeps ``Person.track_id`` stable across frames.

Each frame, every live track is compared with every new person by a similarity in [0, 1]:

    sim = iou_weight * IoU(boxes) + (1 - iou_weight) * OKS(key-points)

where OKS is the COCO object key-point similarity over the joints confident (> ``kpt_conf``) in both,
with the track's box area as the object scale (0 when no joint is shared, so the box decides alone:
``sim = IoU``). Pairs below ``min_similarity`` are never matched; the rest are assigned with the
Hungarian method (scipy ``linear_sum_assignment`` on 1 - sim). Unmatched persons open new tracks (ids
0, 1, 2, ... in the order they appear); a track unseen for more than ``max_age`` frames is dropped.
A lost track is matched at its last seen position (no motion model).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from ..body.joints import COCO17_SIGMAS
from ..geometry import box_iou
from ..types import Person


@dataclass
class _Track:
    track_id: int
    person: Person
    age: int = 0  # frames since last matched
    hits: int = 1


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


class Tracker:
    """IoU + key-point-distance tracker with Hungarian matching (see module docstring).

    max_age: frames a track survives unseen; iou_weight: weight of box IoU in the similarity (the rest
    goes to OKS); min_similarity: smallest similarity accepted as a match; kpt_conf: key-point confidence
    needed for a joint to take part in OKS.
    """

    def __init__(self, max_age: int = 30, iou_weight: float = 0.5, min_similarity: float = 0.2,
                 kpt_conf: float = 0.3):
        if max_age < 0:
            raise ValueError("max_age must be >= 0")
        if not 0.0 <= iou_weight <= 1.0:
            raise ValueError("iou_weight must be in [0, 1]")
        self.max_age, self.iou_weight = int(max_age), float(iou_weight)
        self.min_similarity, self.kpt_conf = float(min_similarity), float(kpt_conf)
        self.reset()

    def reset(self) -> None:
        """Forget every track; ids start again from 0."""
        self._tracks: list[_Track] = []
        self._next_id = 0

    @property
    def active_ids(self) -> list[int]:
        """Ids of the tracks currently alive (seen within ``max_age`` frames)."""
        return [t.track_id for t in self._tracks]

    def similarity(self, tracked: Sequence[Person], persons: Sequence[Person]) -> np.ndarray:
        """(T, P) similarity in [0, 1] between tracked persons and new persons."""
        if not tracked or not persons:
            return np.zeros((len(tracked), len(persons)))
        iou = box_iou(np.stack([t.box for t in tracked]), np.stack([p.box for p in persons]))
        sim = np.empty_like(iou)
        for i, t in enumerate(tracked):
            area = float(np.prod(np.clip(t.box[2:] - t.box[:2], 1.0, None)))
            for j, p in enumerate(persons):
                same_set = t.joint_set == p.joint_set and t.num_joints == p.num_joints
                k = oks(t.keypoints, p.keypoints, area, self.kpt_conf) if same_set else 0.0
                has_kp = same_set and bool(((t.keypoints[:, 2] > self.kpt_conf) &
                                            (p.keypoints[:, 2] > self.kpt_conf)).any())
                sim[i, j] = self.iou_weight * iou[i, j] + (1 - self.iou_weight) * k if has_kp else iou[i, j]
        return sim

    def update(self, persons: Sequence[Person]) -> list[Person]:
        """Match this frame's persons to the tracks; returns them in the same order with ``track_id`` set."""
        persons = list(persons)
        sim = self.similarity([t.person for t in self._tracks], persons)
        assigned: dict[int, int] = {}  # person index -> track index
        if sim.size:
            rows, cols = linear_sum_assignment(1.0 - sim)
            for r, c in zip(rows, cols):
                if sim[r, c] >= self.min_similarity:
                    assigned[int(c)] = int(r)
        out: list[Person] = []
        matched_tracks = set(assigned.values())
        for t_idx, t in enumerate(self._tracks):
            if t_idx not in matched_tracks:
                t.age += 1
        for j, p in enumerate(persons):
            if j in assigned:
                t = self._tracks[assigned[j]]
                t.person, t.age, t.hits = p, 0, t.hits + 1
                tid = t.track_id
            else:
                tid = self._next_id
                self._next_id += 1
                self._tracks.append(_Track(tid, p))
            out.append(dataclasses.replace(p, track_id=tid))
        self._tracks = [t for t in self._tracks if t.age <= self.max_age]
        return out
