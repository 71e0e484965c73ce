"""The render process (``python -m app.jobs --render-server FD``): owns every Open3D renderer (one per
output size) and the overlay's per-person layer cache (``api.OverlayLayers``). No Qt here.

Open3D's Python bindings keep the GIL while they render (hundreds of ms with software OpenGL), which would
freeze the GUI thread however the work is threaded; in a separate process it cannot.
"""

from __future__ import annotations

import collections
import logging
import os
import time
from typing import Any

from .ipc import ImageRef, ImageSlots, SharedPictures
from .protocol import RenderScene, map_arrays

log = logging.getLogger(__name__)

ARRAY_SLOTS = 64  # images and mesh arrays a render process keeps by token (a scene's persons, a few frames)

OVERLAY_LOD_PX = 0.5  # an overlay's person may be drawn with fewer faces when they deviate < 0.5 px (p90)

BACKGROUND = (0.11, 0.118, 0.133)  # the mesh view's background (the overlay only uses the covered pixels)


def make_renderer(width: int, height: int, state: dict) -> Any:
    """An ``api.MeshRenderer`` that is known to draw (call on the render thread).

    Open3D's legacy Visualizer renders through GLX when an X display is set; on a virtual X server
    without usable GL (Xvfb) its shaders fail to compile and it renders black. Its EGL path (used when no
    display is set) works there, so the first renderer is created with DISPLAY hidden from Open3D (Qt has
    already connected to the display). Each new renderer draws one test triangle; if the result is not
    the expected image, the numpy rasteriser is used instead (slower, always correct).
    """
    import numpy as np

    from dpmesh_core import api
    from dpmesh_core.types import Camera

    if state.get("backend") == "numpy":
        return api.MeshRenderer(width, height, backend="numpy", background=BACKGROUND)
    hidden = os.environ.pop("DISPLAY", None) if not state.get("glfw_started") else None
    try:
        r = api.MeshRenderer(width, height, background=BACKGROUND)
    finally:
        state["glfw_started"] = True
        if hidden is not None:
            os.environ["DISPLAY"] = hidden
    if getattr(r, "backend", "") == "open3d" and not state.get("verified"):
        tri = (np.array([[-0.5, -0.5, 3.0], [0.5, -0.5, 3.0], [0.0, 0.5, 3.0]], np.float32),
               np.array([[0, 1, 2]], np.int32), (1.0, 0.0, 0.0))
        try:
            img = r.render([tri], Camera.default_for(width, height))
            bg = np.asarray(BACKGROUND) * 255
            ok = img[height // 2, width // 2, 0] > 100 and np.abs(img[2, 2] - bg).max() < 8  # red centre, bg corner
        except Exception as e:  # noqa: BLE001
            log.warning("Open3D test render failed: %s", e)
            ok = False
        if not ok:
            log.warning("Open3D renders incorrectly here (no usable OpenGL); using the numpy rasteriser")
            r.close()
            state["backend"] = "numpy"
            return api.MeshRenderer(width, height, backend="numpy", background=BACKGROUND)
        state["verified"] = True
    return r



def serve(conn: Any) -> None:
    """Main loop of the render process: owns every Open3D renderer (one per output size, at most 3).

    Requests: ``protocol.RenderView`` / ``protocol.RenderOverlay``, each answered by its ``run(layers,
    renderer_for_size)``; replies: ("ok", rgb, seconds) — rgb a ``ipc.PictureRef`` when large — or ("error",
    message, 0.0). ``None`` ends the loop.
    """
    os.environ.pop("DISPLAY", None)  # Open3D's EGL path: works headless and on virtual X servers
    state: dict[str, Any] = {"glfw_started": True}
    renderers: collections.OrderedDict[tuple[int, int], Any] = collections.OrderedDict()

    def get(w: int, h: int) -> Any:
        r = renderers.pop((w, h), None)
        if r is None:
            r = make_renderer(w, h, state)
            while len(renderers) >= 3:
                renderers.popitem(last=False)[1].close()
        renderers[(w, h)] = r
        return r

    from dpmesh_core import api

    layers = api.OverlayLayers(lod_tolerance_px=OVERLAY_LOD_PX)
    arrays = ImageSlots(ARRAY_SLOTS)
    pictures = SharedPictures()  # large replies through shared memory (see SharedPictures)
    lod_todo: list = []  # a 3-D view's persons whose reduced face lists are not computed yet

    def idle_lod() -> bool:
        """Idle: the reduced face lists of the last 3-D picture's persons' topology, one level a step (~0.5 s
        for Anny; once per topology), so the first orbit or Play does not wait for them, and a request waits
        for at most one level."""
        while lod_todo:
            v, f, level = lod_todo[-1]
            if level == 0 and api.lod_levels(v, f, compute=False) is not None:
                lod_todo.pop()  # known, or kept in the cache folder by an earlier run
                continue
            if level >= len(api.LOD_LEVELS):
                lod_todo.pop()
                continue
            lod_todo[-1] = (v, f, level + 1)
            if level + 1 == len(api.LOD_LEVELS):
                api.lod_levels(v, f)  # (every level is computed now: only their deviations are new)
            else:
                api.lod_faces(v, f, api.LOD_LEVELS[level])
            return True
        return False

    while True:
        try:
            while not conn.poll(0) and idle_lod():  # idle: a 3-D view's reduced face lists
                pass
            msg = conn.recv()
        except (EOFError, OSError):
            break
        if msg is None:
            break
        try:
            t0 = time.perf_counter()
            msg = map_arrays(msg, lambda a: arrays.resolve(a) if isinstance(a, ImageRef) else a)
            out = pictures.put(msg.run(layers, get))
            conn.send(("ok", out, time.perf_counter() - t0))
            if isinstance(msg, RenderScene) and not msg.lod:
                # each topology once (the persons of a body model share one; lod_faces caches by content)
                tops = {(len(m[0]), len(m[1])): m for m in msg.meshes[:len(msg.scene.persons)]}
                lod_todo.extend((m[0], m[1], 0) for m in tops.values())  # (done ones cost a cache look-up)
                del lod_todo[:-8]
        except (OSError, EOFError):  # the app went away while we answered
            break
        except Exception as e:  # noqa: BLE001 - reported to the app, the server keeps serving
            arrays.images.clear()  # the client forgets its tokens too (both sides start again)
            log.warning("render request failed: %s: %s", type(e).__name__, e)
            try:
                conn.send(("error", f"{type(e).__name__}: {e}", 0.0))
            except OSError:
                break
    for r in renderers.values():
        r.close()
    pictures.close()

