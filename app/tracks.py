"""Track proofreading, as in SLEAP: swap two tracks from a frame on, merge two tracks, split a track at a
frame, delete a track from a frame on. Each is one undoable ``BatchEditCommand``; none touches key-points,
so the meshes stay as they are (a track id only names who a person is).

Track ids are never reused: a split gets ``Document.new_track_id()``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from dpmesh_core import api
from dpmesh_core.errors import DPMeshError

from .commands import BatchEditCommand
from .document import Document


class TrackEditError(DPMeshError):
    """A track edit that cannot be done as asked (the message says why)."""


@dataclass(frozen=True)
class TrackInfo:
    track_id: int
    first: int
    last: int
    frames: int  # frames where it is present
    key_frames: int
    #: spans where the video pipeline saw it hidden behind another track: (occluder's id, first, last frame)
    occluded: tuple[tuple[int, int, int], ...] = ()

    def occluded_text(self, one_based: bool = True) -> list[str]:
        """One line per occluded span: "occluded behind #X, frames a–b, no key-points"."""
        k = 1 if one_based else 0
        return [f"occluded behind #{b}, frames {a + k}–{e + k}, no key-points" for b, a, e in self.occluded]

    def occluded_short(self) -> str:
        """Per occluder, the first to the last frame hidden behind it and how many frames that is (1-based):
        "behind #7: 18–112 (63 fr.)" (a person glimpsed now and then has many short spans)."""
        by: dict[int, list[tuple[int, int]]] = {}
        for b, a, e in self.occluded:
            by.setdefault(b, []).append((a, e))
        parts = []
        for b, spans in by.items():
            n = sum(e - a + 1 for a, e in spans)
            first, last = spans[0][0] + 1, spans[-1][1] + 1
            parts.append(f"behind #{b}: {first}–{last}" + (f" ({n} fr.)" if len(spans) > 1 else ""))
        return "; ".join(parts)


def summary(doc: Document) -> list[TrackInfo]:
    """Every track of the document, by id: first/last frame, frames present, key frames, occluded spans (a track
    the pipeline still knows but that has no person left on any frame is listed too, by its spans)."""
    keys: dict[int, int] = {}
    for f in doc.frames_with_persons():
        for p in doc.persons(f):
            if p.track_id is not None and p.edited.any():
                keys[int(p.track_id)] = keys.get(int(p.track_id), 0) + 1
    spans = api.occlusion_spans(sorted(doc.occluded.items())) if doc.occluded else {}
    present = doc.tracks()
    out = []
    for t in sorted(set(present) | set(spans)):
        fs = present.get(t, [])
        occ = tuple((s["behind"], s["first_frame"], s["last_frame"]) for s in spans.get(t, []))
        first = fs[0] if fs else min(a for _, a, _ in occ)
        last = fs[-1] if fs else max(e for _, _, e in occ)
        out.append(TrackInfo(t, first, last, len(fs), keys.get(t, 0), occ))
    return out


def _retrack(doc: Document, uids: dict[int, int | None], text: str) -> int:
    # a person whose identity the user fixed is the user's work (source "user"): re-running the whole-video
    # job keeps it and its id (app.session.video)
    new = {u: dataclasses.replace(doc.person(u), track_id=t, source="user") for u, t in uids.items()}
    if new:
        doc.undo_stack.push(BatchEditCommand(doc, text, replace=new))
    return len(new)


def _check(doc: Document, *tracks: int) -> None:
    known = doc.tracks()
    for t in tracks:
        if t not in known:
            raise TrackEditError(f"there is no track #{t}")


def swap_tracks(doc: Document, a: int, b: int, from_frame: int) -> int:
    """From ``from_frame`` on, the persons of track ``a`` become track ``b`` and those of ``b`` become ``a``
    (an identity switch fixed). Returns the number of persons changed."""
    _check(doc, a, b)
    if a == b:
        raise TrackEditError("choose two different tracks to swap")
    ch: dict[int, int | None] = {}
    for f, u in doc.track_members(a).items():
        if f >= from_frame:
            ch[u] = b
    for f, u in doc.track_members(b).items():
        if f >= from_frame:
            ch[u] = a
    return _retrack(doc, ch, f"Swap tracks #{a} and #{b} from frame {from_frame + 1}")


def merge_tracks(doc: Document, keep: int, other: int) -> int:
    """Track ``other`` becomes part of track ``keep`` (one person seen as two tracks). Refused where both
    are present in the same frame. Returns the number of persons changed."""
    _check(doc, keep, other)
    if keep == other:
        raise TrackEditError("choose two different tracks to merge")
    a, b = doc.track_members(keep), doc.track_members(other)
    both = sorted(set(a) & set(b))
    if both:
        shown = ", ".join(str(f + 1) for f in both[:5]) + (" …" if len(both) > 5 else "")
        raise TrackEditError(f"tracks #{keep} and #{other} are both present on frame(s) {shown}: "
                             "a person cannot be two persons of one frame (delete or swap first)")
    return _retrack(doc, {u: keep for u in b.values()}, f"Merge track #{other} into #{keep}")


def split_track(doc: Document, track: int, at_frame: int) -> int:
    """The persons of ``track`` from ``at_frame`` on become a new track (two persons seen as one).
    Returns the new track's id."""
    _check(doc, track)
    members = doc.track_members(track)
    later = {u: None for f, u in members.items() if f >= at_frame}
    if not later or len(later) == len(members):
        raise TrackEditError(f"track #{track} has no frame before and after frame {at_frame + 1}: "
                             "go to the first frame of the second person and split there")
    new_id = doc.new_track_id()
    _retrack(doc, {u: new_id for u in later}, f"Split track #{track} at frame {at_frame + 1} (new #{new_id})")
    return new_id


def delete_track(doc: Document, track: int, from_frame: int = 0) -> int:
    """Remove the persons of ``track`` from ``from_frame`` on (with their meshes). Returns how many."""
    _check(doc, track)
    uids = [u for f, u in doc.track_members(track).items() if f >= from_frame]
    if uids:
        what = f"Delete track #{track}" + (f" from frame {from_frame + 1}" if from_frame > 0 else "")
        doc.undo_stack.push(BatchEditCommand(doc, what, remove=uids))
    return len(uids)


def assign_from_neighbours(doc: Document, frame: int, persons: list, tracker_factory) -> list:
    """Track ids for the persons detected on one frame the user scrubbed to (outside the whole-video job):
    matched by the core tracker (``tracker_factory()``, e.g. ``api.Tracker``) against the nearest frame
    within 2 that has tracked persons; persons it cannot match get a new id of this document (never an id
    in use or used before). Scrubbing back and forth therefore does not invent new tracks."""
    ref = None
    for d in (1, -1, 2, -2):
        near = doc.persons(frame - d)
        if near and all(p.track_id is not None for p in near):
            ref = (frame - d, near)
            break
    known: set[int] = set()
    out = [dataclasses.replace(p, track_id=None) for p in persons]
    if ref is not None:
        tracker = tracker_factory()
        known = {int(p.track_id) for p in ref[1]}
        tracker.update(list(ref[1]), frame=0)  # the neighbour's persons keep their ids (pinned)
        out = list(tracker.update(out, frame=abs(frame - ref[0])))
    return [p if p.track_id is not None and int(p.track_id) in known
            else dataclasses.replace(p, track_id=doc.new_track_id()) for p in out]
