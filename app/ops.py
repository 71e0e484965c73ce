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
from dpmesh_core.types import MeshResult, Person


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


VIDEO_SMOOTH_SIGMA = 1.5  # as ``dpmesh predict``'s default (PredictOptions.smooth_sigma)


def process_video(ctx: Any, path: str, stride: int, smooth: bool, given: dict[int, list[Person]],
                  start: int = 0, first_track_id: int = 0, stop: int | None = None) -> Iterator[tuple]:
    """The whole-video job and Play: the core frame pipeline (``api.FramePipeline``, the loop ``dpmesh
    predict`` runs: detect → track → warm-started estimate → per-track smoothing) over every ``stride``-th
    frame of the video at ``path`` from ``start`` (up to ``stop``, exclusive). ``given``: persons the user
    has on some frames (used instead of detecting there; a person's ``track_id`` is kept when set).
    ``smooth``: warm starts and smoothing as ``dpmesh predict`` (off: every frame fitted cold).
    ``first_track_id``: new tracks get ids from there (ids the document has used are never given again).

    Yields ("frame", frame, number of frames, persons, results (MeshResult or an error each), given,
    occluded: [(track id, occluder's track id)] hidden there with no key-points) per frame once it is final, and ("truncated", frame, processed, expected, message) when the video cannot
    be decoded past some frame (every frame before it was processed)."""
    from dpmesh_core import api

    media = api.open_media(path)  # the worker's own reader: video readers are not thread-safe
    try:
        pipe = api.FramePipeline(ctx.estimator(), ctx.detector(), warm_start=smooth,
                                 smooth_sigma=VIDEO_SMOOTH_SIGMA if smooth else 0.0,
                                 first_track_id=int(first_track_id))  # the document's ids are reserved
        n = media.num_frames
        frames = range(max(int(start), 0), n if stop is None else min(int(stop), n), max(int(stride), 1))
        for out in pipe.run(media, frames=frames, persons=given):
            yield ("frame", out.frame, n, list(out.persons), list(out.results), bool(out.given),
                   [(int(t), int(b)) for t, b in out.occluded])
        t = pipe.truncated
        if t is not None:
            yield "truncated", t.frame, t.processed, t.expected, t.message
    finally:
        media.close()


def restore_results(ctx: Any, frames: dict[int, tuple[list[Person], list]]) -> Iterator[tuple[int, list, list]]:
    """Meshes back from a project's saved body parameters, frame by frame, without fitting again:
    ``frames`` = {frame: (persons, saved summaries)}; yields (frame, [MeshResult or None per person],
    [indices of persons whose saved parameters gave a mesh with NaN/inf: refused]). None where nothing
    usable was saved or it was refused (the app estimates those persons instead). The current estimator
    skins them when its body model matches (no second model is loaded)."""
    import numpy as np

    from dpmesh_core import api

    est = ctx.estimator()
    fitters: dict[str, Any] = {}  # body models the estimator does not use: loaded once for all frames
    for f in sorted(frames):
        persons, summaries = frames[f]
        results = list(api.restore_results(summaries, persons, est, fitters))
        refused = []
        for i, r in enumerate(results):
            if isinstance(r, MeshResult) and not (np.isfinite(r.vertices).all() and np.isfinite(r.joints3d).all()):
                results[i] = None
                refused.append(i)
        yield f, results, refused
