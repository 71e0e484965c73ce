"""The messages between the app and its inference worker: frozen request and reply dataclasses.

A request carries what the worker needs and the frame and person uids its reply is for; the worker runs
it with ``request.run(ctx)`` (one dispatch, by type: no table of operation names) and the app receives a
reply of the matching type (``InferenceService`` turns each into its signal, again one dispatch by type).
Requests and replies pickle: they cross the socket to the inference process unchanged, except that an
``image`` travels as an ``ipc.ImageRef`` (pixels once, then a token).

No Qt and no torch here: the inference process imports this module.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, Protocol

from dpmesh_core.types import Camera, MeshResult, Person

# The estimator the app uses unless told otherwise: (kind, model path) for ``api.make_estimator``. The one
# place that names it (the Session's estimation controller, the worker and the process start from it).
DEFAULT_ESTIMATOR: tuple[str, str | None] = ("fit", None)
ESTIMATOR_KINDS = ("fit", "dpmesh")
MIN_VISIBLE_JOINTS = 2  # a person needs this many visible key-points to be estimated
TOO_FEW_JOINTS = f"needs at least {MIN_VISIBLE_JOINTS} visible key-points"


def estimable(person: Person) -> bool:
    """True if ``person`` has enough visible key-points to be estimated (see ``MIN_VISIBLE_JOINTS``)."""
    return int(person.weights.astype(bool).sum()) >= MIN_VISIBLE_JOINTS


class WorkerContext(Protocol):
    """What a request runs against: the estimator and detector the worker owns (``server.InferenceContext``)."""

    def estimator(self) -> Any: ...

    def detector(self) -> Any: ...

    def set_estimator_spec(self, spec: tuple[str, str | None]) -> None: ...


# ----------------------------------------------------------------------------------------------- replies
@dataclass(frozen=True)
class Estimated:
    """Meshes of ``uids`` on ``frame``: a ``MeshResult`` or the error of each person, and the fit's time."""

    frame: int
    uids: tuple[int, ...]
    results: tuple[MeshResult | Exception, ...]
    seconds: float


@dataclass(frozen=True)
class Detected:
    frame: int
    persons: tuple[Person, ...]


@dataclass(frozen=True)
class DetectedInBox:
    frame: int
    person: Person | None


@dataclass(frozen=True)
class CallProgress:
    """One ``yield`` of a streamed named operation ``key``."""

    key: Hashable
    value: Any


@dataclass(frozen=True)
class CallDone:
    """A named operation ``key`` ended: its return value (a streamed one: its last progress value)."""

    key: Hashable
    value: Any


@dataclass(frozen=True)
class Failed:
    """A request failed (the message is what the GUI shows); ``kind`` names the request's type."""

    kind: str
    frame: int | None
    uids: tuple[int, ...]
    message: str
    key: Hashable = None


# ---------------------------------------------------------------------------------------------- requests
@dataclass(frozen=True)
class Estimate:
    """Estimate ``persons`` (uids ``uids``) of ``frame``, warm-started from ``previous`` where given.
    ``single``: one person's edit (its own coalescing slot) rather than a whole frame."""

    frame: int
    uids: tuple[int, ...]
    image: Any
    persons: tuple[Person, ...]
    camera: Camera | None = None
    previous: tuple[MeshResult | None, ...] | None = None
    single: bool = False

    kind = "estimate"

    def run(self, ctx: WorkerContext) -> Estimated:
        t0 = time.perf_counter()
        prev = None if self.previous is None else list(self.previous)
        out = ctx.estimator().estimate(self.image, list(self.persons), camera=self.camera, previous=prev)
        return Estimated(self.frame, self.uids, tuple(out), time.perf_counter() - t0)

    def failed(self, message: str) -> Failed:
        return Failed("estimate" if self.single else "estimate-frame", self.frame, self.uids, message)


@dataclass(frozen=True)
class Detect:
    frame: int
    image: Any

    kind = "detect"

    def run(self, ctx: WorkerContext) -> Detected:
        return Detected(self.frame, tuple(ctx.detector().detect(self.image)))

    def failed(self, message: str) -> Failed:
        return Failed(self.kind, self.frame, (), message)


@dataclass(frozen=True)
class DetectInBox:
    frame: int
    image: Any
    box: Any  # (4,) x0, y0, x1, y1 pixels

    kind = "detect-box"

    def run(self, ctx: WorkerContext) -> DetectedInBox:
        return DetectedInBox(self.frame, ctx.detector().detect_in_box(self.image, self.box))

    def failed(self, message: str) -> Failed:
        return Failed(self.kind, self.frame, (), message)


@dataclass(frozen=True)
class WarmUp:
    """Build the estimator now, so the first edit is answered quickly."""

    kind = "warm-up"

    def run(self, ctx: WorkerContext) -> None:
        ctx.estimator()

    def failed(self, message: str) -> Failed:
        return Failed(self.kind, None, (), message)


@dataclass(frozen=True)
class SetEstimator:
    """Build the estimator from ``spec`` = (kind, model path) from the next use on."""

    spec: tuple[str, str | None]

    kind = "set-estimator"

    def run(self, ctx: WorkerContext) -> None:
        ctx.set_estimator_spec(self.spec)

    def failed(self, message: str) -> Failed:
        return Failed(self.kind, None, (), message)


@dataclass(frozen=True)
class Call:
    """Run the named operation ``op`` ("module:function", see ``app.ops``) as ``op(ctx, *args)``: its value,
    or for a generator each ``yield`` as progress."""

    key: Hashable
    op: str
    args: tuple

    kind = "call"

    def run(self, ctx: WorkerContext) -> Any:
        return resolve_op(self.op)(ctx, *self.args)

    def failed(self, message: str) -> Failed:
        return Failed(self.kind, None, (), message, self.key)


Request = Estimate | Detect | DetectInBox | WarmUp | SetEstimator | Call
Reply = Estimated | Detected | DetectedInBox | CallProgress | CallDone | Failed


# ------------------------------------------------------------------------------ render process requests
# ``run(layers, get)``: in the render process, with its ``api.OverlayLayers`` and ``get(w, h)`` giving the
# renderer of an output size; ``run_here(get)``: the same picture without the layer cache (the fallback).
@dataclass(frozen=True)
class RenderView:
    """``meshes`` [(V (N, 3) m, faces (F, 3), rgb 0..1)] seen by ``camera`` after the (4, 4) ``view``
    transform, at ``size`` (w, h) pixels."""

    meshes: tuple
    camera: Camera | None
    view: Any
    size: tuple[int, int]

    def run(self, layers: Any, get: Callable[[int, int], Any]) -> Any:
        return layers.view(get, list(self.meshes), self.camera, self.view, tuple(self.size))

    def run_here(self, get: Callable[[int, int], Any]) -> Any:
        return get(*self.size).render(list(self.meshes), self.camera, self.view)


_SCENE_PERSONS: dict[tuple, Any] = {}  # (person without arrays, id(vertices), id(faces)) -> ScenePerson
_LOD_BUDGETS: dict = {}  # (w, h) -> api.LodBudget of the 3-D view drawing at that size


@dataclass(frozen=True)
class RenderScene:
    """The 3-D view's picture (``api.render_scene``): ``meshes`` as ``RenderView``'s (the persons, then the
    ground; arrays by token) and the rest of ``scene`` (an ``api.Scene`` whose persons carry no arrays: they
    are the first meshes) seen by ``camera`` after ``view`` with the near/far planes ``clip``, at ``size``;
    ``lod``: the persons with their reduced face lists (the view is moving or playing)."""

    meshes: tuple
    camera: Camera | None
    view: Any
    size: tuple[int, int]
    scene: Any
    clip: tuple[float, float]
    lod: bool = False

    def _picture(self, get: Callable[[int, int], Any]) -> Any:
        import dataclasses

        from dpmesh_core import api

        persons = []
        for p, m in zip(self.scene.persons, self.meshes):
            # the same person with the same arrays as in an earlier picture (an orbit step): that ScenePerson,
            # whose bounds and samples are computed already (~1.5 ms a body otherwise, every frame)
            key = (p, id(m[0]), id(m[1]))
            kept = _SCENE_PERSONS.get(key)
            if kept is None or kept.vertices is not m[0] or kept.faces is not m[1]:
                kept = _SCENE_PERSONS[key] = dataclasses.replace(p, vertices=m[0], faces=m[1])
            persons.append(kept)
        while len(_SCENE_PERSONS) > 4 * max(len(persons), 16):
            _SCENE_PERSONS.pop(next(iter(_SCENE_PERSONS)))
        persons = tuple(persons)
        scene = dataclasses.replace(self.scene, persons=persons)
        vc = api.ViewCamera(self.camera, self.view, *self.clip)
        budget = _LOD_BUDGETS.get(tuple(self.size))
        if budget is None:
            budget = _LOD_BUDGETS[tuple(self.size)] = api.LodBudget()  # one a view size (a view's moving frames)
        return api.render_scene(get(*self.size), scene, vc, list(self.meshes), lod=self.lod, budget=budget)

    def run(self, layers: Any, get: Callable[[int, int], Any]) -> Any:
        return self._picture(get)

    def run_here(self, get: Callable[[int, int], Any]) -> Any:
        return self._picture(get)


@dataclass(frozen=True)
class RenderOverlay:
    """``meshes`` [(V (N, 3) m, faces (F, 3), rgb 0..1)] seen by ``camera``, blended over ``image`` (H, W, 3)
    uint8 with opacity ``alpha``: ``MeshRenderer.render_overlay``'s picture; ``playing``: a frame of a playing
    video (``api.OverlayLayers.played``: all persons in one pass)."""

    image: Any
    meshes: tuple
    camera: Camera | None
    alpha: float
    playing: bool = False

    def run(self, layers: Any, get: Callable[[int, int], Any]) -> Any:
        return layers.overlay_meshes(get, self.image, list(self.meshes), self.camera, self.alpha,
                                     playing=self.playing)

    def run_here(self, get: Callable[[int, int], Any]) -> Any:
        from dpmesh_core import api

        return api.OverlayLayers().overlay_meshes(get, self.image, list(self.meshes), self.camera, self.alpha)


@dataclass(frozen=True)
class PrepareRenderer:
    """Create the render process's renderer for pictures of ``size`` (w, h) now (an Open3D window, its
    shaders and a test picture: a second or two on a software rasteriser), while detection runs, so the
    first overlay of a new photo does not wait for it. Answers None."""

    size: tuple[int, int]

    def run(self, layers: Any, get: Callable[[int, int], Any]) -> Any:
        get(*self.size)

    def run_here(self, get: Callable[[int, int], Any]) -> Any:
        return None


def map_arrays(request: RenderView | RenderScene | RenderOverlay | PrepareRenderer,
               fn: Callable[[Any], Any]) -> Any:
    """``request`` with ``fn`` applied to its arrays in one fixed order (the image, then each mesh's vertices
    and faces): the render client names arrays the process already has by token, the process resolves them
    in the same order (``ipc.ImageMirror`` / ``ipc.ImageSlots``)."""
    import dataclasses

    changes: dict[str, Any] = {}
    if isinstance(request, RenderOverlay):
        changes["image"] = fn(request.image)
    if isinstance(request, RenderView | RenderScene | RenderOverlay):  # (PrepareRenderer has no arrays)
        changes["meshes"] = tuple((fn(v), fn(f), c) for v, f, c in request.meshes)
    return dataclasses.replace(request, **changes)


def op_path(op: Callable[..., Any] | str) -> str:
    """``"module:qualname"`` of a named operation (a module-level function; closures cannot travel)."""
    if isinstance(op, str):
        if ":" not in op:
            raise ValueError(f"an operation path looks like 'package.module:function', not {op!r}")
        return op
    module, qualname = getattr(op, "__module__", None), getattr(op, "__qualname__", "")
    if not module or module == "__main__" or "<" in qualname:
        raise TypeError(f"{op!r} is not a module-level function: the inference process needs an import path")
    return f"{module}:{qualname}"


def resolve_op(path: str) -> Callable[..., Any]:
    import importlib

    module, _, qualname = path.partition(":")
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj
