"""Named operations of the inference worker: module-level functions the app asks the inference process
(or, with injected factories, the inference thread) to run — ``InferenceService.call(key, op, *args)``.

Each takes the worker's ``InferenceContext`` first (``ctx.estimator()``, ``ctx.detector()``: the ones the
worker owns) and picklable arguments, and returns picklable values (numpy arrays, dataclasses of
``dpmesh_core.types``). A generator is a long job: each ``yield`` is a progress message sent back at once,
and the job can be stopped between two of them. No Qt here, and no closures: the process receives the
function's import path, never the function.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from dpmesh_core.errors import DPMeshError
from dpmesh_core.types import Camera, MeshResult, Person


def demo_scene(ctx: Any, target: str) -> tuple[Any, list[Person], str | None]:
    """The demo scene (built with the Anny body model, or read from the cache), also written as a PNG at
    ``target`` so it behaves like an opened photo: (image, persons, target or None if it was not written)."""
    from pathlib import Path

    from dpmesh_core import api

    image, persons = api.demo_scene()
    try:
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        api.write_image(target, image)
        return image, list(persons), str(target)
    except (OSError, DPMeshError):
        return image, list(persons), None


def process_video(ctx: Any, path: str, stride: int, smooth: bool,
                  known: dict[int, list[Person]]) -> Iterator[tuple[int, int, list[Person], list, bool]]:
    """Detect (on frames not in ``known``), track and estimate every ``stride``-th frame of the video at
    ``path``. When ``smooth``: warm-start each track from its previous frame and, with key-point fitting,
    smooth each track's body over time as ``dpmesh predict`` does (frames then come a few frames late).

    Yields (frame, number of frames, persons, results (MeshResult or an error each), frame was known)."""
    from dpmesh_core import api

    media = api.open_media(path)  # the worker's own reader: video readers are not thread-safe
    tracker = api.Tracker()
    previous: dict[int, MeshResult] = {}
    est = ctx.estimator()
    smoother = api.StreamingSmoother(est, sigma=1.5) if smooth and hasattr(est, "results_from_params") else None
    try:
        w, h = media.size
        cam = Camera.default_for(w, h)
        n = media.num_frames
        for f in range(0, n, stride):
            img = media.frame(f)
            persons = known.get(f)
            if persons is None:
                persons = list(tracker.update(ctx.detector().detect(img)))
            prev = None
            if smooth:
                prev = [previous.get(p.track_id) if p.track_id is not None else None for p in persons]
            res = list(est.estimate(img, persons, camera=cam, previous=prev)) if persons else []
            for p, r in zip(persons, res):
                if isinstance(r, MeshResult) and p.track_id is not None:
                    previous[p.track_id] = r
            if smoother is None:
                yield f, n, persons, res, f in known
            else:
                for fr, ps, rs in smoother.push(f, persons, res):
                    yield fr, n, ps, rs, fr in known
        for fr, ps, rs in smoother.flush() if smoother is not None else ():
            yield fr, n, ps, rs, fr in known
    finally:
        media.close()


def restore_results(ctx: Any, frames: dict[int, tuple[list[Person], list]]) -> Iterator[tuple[int, list]]:
    """Meshes back from a project's saved body parameters, frame by frame, without fitting again:
    ``frames`` = {frame: (persons, saved summaries)}; yields (frame, [MeshResult or None per person]).
    None where nothing usable was saved (the app estimates those persons instead). The current estimator
    skins them when its body model matches (no second model is loaded)."""
    from dpmesh_core import api

    est = ctx.estimator()
    fitters: dict[str, Any] = {}  # body models the estimator does not use: loaded once for all frames
    for f in sorted(frames):
        persons, summaries = frames[f]
        yield f, api.restore_results(summaries, persons, est, fitters)
