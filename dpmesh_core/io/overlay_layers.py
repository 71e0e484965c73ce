"""A per-person layer cache for mesh overlays: the picture of ``MeshRenderer.render_overlay`` built from
one cropped colour + depth layer per mesh, so that an edit of one person renders only that person again.

Pure numpy around any renderer with ``render_with_mask(meshes, camera, view)`` (``io.render.MeshRenderer``).
The app's render process keeps one; a long-lived overlay writer (``dpmesh predict --overlay`` over the
frames of a video) can keep one too.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any


class OverlayLayers:
    """Per-person mesh layers for an overlay (the app keeps one in its render process).

    An edit changes one person's mesh, so only that person is rendered again (~30 ms with software
    OpenGL instead of ~250 ms for 9 persons); the cached layers (colour + depth, cropped to the mesh's box,
    only that box read back: ``MeshRenderer.render_layer``) are depth-composited in numpy. A layer's key is a
    digest of its vertices, faces, colour, camera and output size. Every picture is composed from layers, a
    new frame's too (one render per person costs about what one pass of all does, since each reads back only
    its box): Open3D lights a picture from the bounding box of what it draws, so a person lit alone looks the
    same in every picture only if it is always lit alone.
    """

    MAX_LAYERS = 48

    def __init__(self, lod_tolerance_px: float | None = None) -> None:
        # an interactive overlay (the app's) may draw a person with a reduced face list of its topology
        # (``io.render.lod_levels``) when that list's deviation from the full surface projects to at most this
        # many pixels (90th percentile) at the person's size in the picture: it looks the same and draws in
        # half the time. None: always the full mesh (exports, the CLI). Only lists computed already are used
        # (in this process or kept in the cache folder: the app's 3-D view process computes them while idle).
        self.lod_tolerance_px = lod_tolerance_px
        self._no_levels: dict[int, tuple[Any, float]] = {}  # id(faces) -> (faces, when none were found)
        self.layers: collections.OrderedDict[bytes, tuple] = collections.OrderedDict()
        self.background: dict[tuple[int, int], Any] = {}  # per output size: the renderer's background pixel
        self._last: dict[str, Any] | None = None  # the last overlay (image, layer keys, picture): edits patch it

    @staticmethod
    def _key(mesh: tuple, camera: Any, size: tuple[int, int], memo: dict | None = None) -> bytes:
        """Digest of a layer; ``memo`` (one request's) keeps the digest of a faces array shared by several
        meshes (the app sends one faces array for all persons of a body model: pickled and hashed once)."""
        import hashlib

        import numpy as np

        def digest(a: Any) -> bytes:
            d = hashlib.blake2b(digest_size=16)
            d.update(str(a.shape).encode())
            d.update(a.data)  # no copy
            return d.digest()

        v, f, c = mesh
        h = hashlib.blake2b(digest_size=16)
        h.update(digest(np.ascontiguousarray(v, np.float32)))
        if memo is None or id(f) not in memo:
            fd = digest(np.ascontiguousarray(f, np.int32))
            if memo is not None:
                memo[id(f)] = (f, fd)  # the array is kept so that its id stays its own
        else:
            fd = memo[id(f)][1]
        h.update(fd)
        h.update(repr((tuple(float(x) for x in c), camera, size)).encode())
        return h.digest()

    def _reduced(self, renderer: Any, mesh: tuple, camera: Any, tolerance_px: float | None = None) -> tuple:
        """``mesh`` with the coarsest reduced face list within ``tolerance_px`` (default ``lod_tolerance_px``), or
        itself."""
        import time

        import numpy as np

        from ..geometry import point_box
        from .render import lod_index, lod_levels, size_on_screen_px

        v, f, c = mesh
        miss = self._no_levels.get(id(f))
        recent = miss is not None and miss[0] is f and time.monotonic() - miss[1] < 5.0
        levels = lod_levels(v, f, compute=False, disk=not recent)  # (the folder: not again for 5 s)
        if levels is None:  # not computed (nor kept in the cache folder): the full mesh
            if not recent:
                self._no_levels = {id(f): (f, time.monotonic())}
            return mesh
        box = point_box(np.asarray(v, np.float32))
        if float(box[:, 2].mean()) <= 1e-3 or camera is None:
            return mesh
        fy = camera.focal[1] * renderer.height / float(camera.image_size[1])
        tol = self.lod_tolerance_px if tolerance_px is None else tolerance_px
        k = lod_index(levels, size_on_screen_px(box, np.eye(4), fy), tol)
        return mesh if k < 0 else (v, levels[k][0], c)

    def _render_layer(self, renderer: Any, mesh: tuple, camera: Any) -> tuple:
        import numpy as np

        if self.lod_tolerance_px and getattr(renderer, "backend", "") == "open3d":
            mesh = self._reduced(renderer, mesh, camera)

        if not hasattr(renderer, "render_layer"):  # any renderer with render_with_mask only
            rgb, mask, depth = renderer.render_with_mask([mesh], camera, None, cull=True)
            oy, ox, size = 0, 0, (rgb.shape[1], rgb.shape[0])
        else:  # only the person's box is read back
            oy, ox, rgb, mask, depth = renderer.render_layer([mesh], camera, None, cull=True)
            size = (renderer.width, renderer.height)
        if mask.size and not mask.all():
            first_bg = int(np.argmin(mask.reshape(-1)))  # an uncovered pixel
            self.background[size] = rgb.reshape(-1, 3)[first_bg].copy()
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        if len(rows) == 0:
            return (0, 0, 0, 0, None, None)
        y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        d = np.array(depth[y0:y1, x0:x1], np.float32)
        d[~mask[y0:y1, x0:x1]] = np.inf  # not drawn: behind everything (one comparison when composing)
        return (oy + y0, oy + y1, ox + x0, ox + x1, rgb[y0:y1, x0:x1].copy(), d)

    def _store(self, key: bytes, layer: tuple) -> None:
        self.layers[key] = layer
        self.layers.move_to_end(key)
        while len(self.layers) > self.MAX_LAYERS:
            self.layers.popitem(last=False)

    def overlay(self, get: Callable[[int, int], Any], image: Any, results: list, alpha: float,
                colors: list | None) -> Any:
        """Same picture as ``MeshRenderer.render_overlay(image, results, alpha, colors=colors)``."""
        import numpy as np

        from ..types import MeshResult

        img = np.asarray(image)
        h, w = img.shape[:2]
        meshes, camera = [], None
        for i, r in enumerate(results):
            if not isinstance(r, MeshResult):
                continue
            camera = camera or r.camera
            col = colors[i % len(colors)] if colors else None
            if col is None:  # the renderer's own colouring rule: let it do the whole picture
                return get(w, h).render_overlay(image, results, alpha)
            meshes.append((r.vertices, r.faces, tuple(float(x) for x in col)))
        return self.overlay_meshes(get, img, meshes, camera, alpha)

    def overlay_meshes(self, get: Callable[[int, int], Any], image: Any, meshes: list, camera: Any,
                       alpha: float, playing: bool = False) -> Any:
        """``overlay`` of ``meshes`` [(V (N, 3) m, faces (F, 3), rgb 0..1)] seen by ``camera`` (what the app's
        render process receives: the meshes, not whole results). ``playing``: a frame of a playing video
        (``played``): every person in one pass."""
        import numpy as np

        img = np.asarray(image)
        h, w = img.shape[:2]
        meshes = [(v, f, tuple(float(x) for x in c)) for v, f, c in meshes]
        if not meshes:
            self._last = None
            return img.copy()
        a = float(np.clip(alpha, 0.0, 1.0))
        renderer = get(w, h)
        if playing and hasattr(renderer, "render_frame") and getattr(renderer, "backend", "") == "open3d":
            return self.played(renderer, img, meshes, camera, a)
        memo: dict = {}
        last = self._last
        keys = []
        same_faces: dict[int, bool] = {}  # per faces array of this request: equal to the last request's?
        for i, m in enumerate(meshes):
            if last is not None and i < len(last["meshes"]) and last["camera"] == camera and last["size"] == (w, h):
                lv, lf, lc = last["meshes"][i]
                v, f, c = m
                if c == lc and np.array_equal(v, lv):
                    if id(f) not in same_faces:
                        same_faces[id(f)] = np.array_equal(f, lf)
                    if same_faces[id(f)]:
                        keys.append(last["keys"][i])  # unchanged person: no need to hash it again
                        continue
            keys.append(self._key(m, camera, (w, h), memo))
        if last is not None and last["size"] == (w, h) and last["alpha"] == a and len(last["keys"]) == len(keys) \
                and np.array_equal(last["image"], img):
            changed = [i for i, (k, o) in enumerate(zip(keys, last["keys"])) if k != o]
            if len(changed) <= 2 and all(last["keys"][i] in self.layers for i in changed) and all(
                    k in self.layers for i, k in enumerate(keys) if i not in changed):
                # an edit: recompose and re-blend only where the changed persons were or are now
                old_boxes = [self.layers[last["keys"][i]][:4] for i in changed]
                held = self._hold(keys)  # storing new layers may evict old ones: this request keeps its own
                for i in changed:
                    if keys[i] not in held:
                        held[keys[i]] = self._render_layer(renderer, meshes[i], camera)
                        self._store(keys[i], held[keys[i]])
                boxes = [b for b in old_boxes + [held[keys[i]][:4] for i in changed] if b[1] > b[0]]
                out = last["out"]
                if boxes:
                    y0, y1 = min(b[0] for b in boxes), max(b[1] for b in boxes)
                    x0, x1 = min(b[2] for b in boxes), max(b[3] for b in boxes)
                    rgb, mask = self._compose_region(keys, (y0, y1, x0, x1), held)
                    out[y0:y1, x0:x1] = self._blend(img[y0:y1, x0:x1], rgb, mask, a)
                last["keys"] = keys
                last["meshes"] = [(np.array(v, copy=True), f, c) for v, f, c in meshes]
                return out.copy()
        rgb, mask = self.compose(get, meshes, camera, (w, h), keys=keys)
        out = self._blend(img, rgb, mask, a)
        self._last = {"size": (w, h), "alpha": a, "keys": keys, "image": np.array(img, np.uint8, copy=True),
                      "out": out.copy(), "camera": camera,
                      "meshes": [(np.array(v, copy=True), f, c) for v, f, c in meshes]}
        return out

    PLAYING_LOD_PX = 1.5  # a played frame's persons may deviate this much (as a moving 3-D view's)

    def played(self, renderer: Any, img: Any, meshes: list, camera: Any, a: float) -> Any:
        """The overlay of a frame of a playing video: every person in one pass of ``renderer.render_frame``
        (Open3D keeps their meshes and moves them in place; the picture read back as bytes, its depth for the
        mask), with reduced face lists within ``PLAYING_LOD_PX``. A new frame changes every person, so the
        per-person layers would all be drawn again, one GL picture each (10 persons at 1280x720: ~146 ms
        against ~50). Lit from all persons together, where a layer is lit alone: a played frame may look a
        shade different from the same frame when still (drawn from layers again, ``_last`` is forgotten)."""
        import numpy as np

        from .render import _cv2

        tol = max(self.lod_tolerance_px or 0.0, self.PLAYING_LOD_PX)
        meshes = [self._reduced(renderer, m, camera, tol) for m in meshes]
        rgb, depth = renderer.render_frame(meshes, camera, None, depth=True, cull=True, twin=True)
        self._last = None
        mask = np.asarray(depth) > 0
        cv2 = _cv2()
        if cv2 is None:
            return self._blend(img, rgb, mask, a)
        # OpenCV's blend of the whole picture (~2 ms at 1280x720, numpy's float32 one ~20 ms), kept where covered
        out = np.array(img, np.uint8, copy=True)
        cv2.copyTo(cv2.addWeighted(out, 1 - a, np.ascontiguousarray(rgb), a, 0.0), mask.view(np.uint8), out)
        return out

    @staticmethod
    def _blend(img: Any, rgb: Any, mask: Any, a: float) -> Any:
        """The blend of render_overlay where ``mask`` covers, the image elsewhere (same float32 arithmetic)."""
        import numpy as np

        out = np.array(img, np.uint8, copy=True)
        # over the whole rectangle, then kept where covered: contiguous arithmetic is several times faster than
        # gathering and scattering the covered pixels (the same float32 operations per pixel)
        mixed = ((1 - a) * out.astype(np.float32) + a * np.asarray(rgb).astype(np.float32) + 0.5).astype(np.uint8)
        np.copyto(out, mixed, where=np.asarray(mask, bool)[..., None])
        return out

    def _hold(self, keys: list) -> dict:
        """{key: layer} of the cached layers among ``keys``, marked recently used: a request composes from
        these, so that storing its missing layers (which may evict the least recently used ones when the
        cache is full, e.g. after stepping through many frames) cannot take a layer it needs."""
        held = {}
        for k in keys:
            layer = self.layers.get(k)
            if layer is not None:
                self.layers.move_to_end(k)
                held[k] = layer
        return held

    def _compose_region(self, keys: list, region: tuple[int, int, int, int],
                        held: dict | None = None) -> tuple[Any, Any]:
        """(rgb, mask) of the layers ``keys`` (from ``held``, else the cache) depth-composited inside
        ``region`` (y0, y1, x0, x1) only."""
        import numpy as np

        from .render import _cv2

        cv2 = _cv2()
        Y0, Y1, X0, X1 = region
        zbuf = np.full((Y1 - Y0, X1 - X0), np.inf, np.float32)
        rgb = np.zeros((Y1 - Y0, X1 - X0, 3), np.uint8)
        for k in keys:
            y0, y1, x0, x1, lrgb, ldepth = self.layers[k] if held is None else held[k]
            if lrgb is None:
                continue
            a0, a1, b0, b1 = max(y0, Y0), min(y1, Y1), max(x0, X0), min(x1, X1)
            if a0 >= a1 or b0 >= b1:
                continue
            ld = ldepth[a0 - y0:a1 - y0, b0 - x0:b1 - x0]
            zr = zbuf[a0 - Y0:a1 - Y0, b0 - X0:b1 - X0]
            lr, rr = lrgb[a0 - y0:a1 - y0, b0 - x0:b1 - x0], rgb[a0 - Y0:a1 - Y0, b0 - X0:b1 - X0]
            if cv2 is not None:  # (in place on the views: OpenCV writes through their strides)
                closer = cv2.compare(ld, zr, cv2.CMP_LT)
                cv2.copyTo(ld, closer, zr)
                cv2.copyTo(lr, closer, rr)
            else:
                closer = ld < zr
                np.copyto(zr, ld, where=closer)
                np.copyto(rr, lr, where=closer[..., None])
        return rgb, np.isfinite(zbuf)

    def compose(self, get: Callable[[int, int], Any], meshes: list, camera: Any,
                size: tuple[int, int], keys: list | None = None) -> tuple[Any, Any]:
        """(rgb (H, W, 3) uint8, mask (H, W) bool) of ``meshes`` seen by ``camera`` (no view transform), as
        ``render_with_mask`` would give them (rgb is only meaningful under the mask), from cached layers."""
        w, h = size
        renderer = get(w, h)
        if keys is None:
            memo: dict = {}
            keys = [self._key(m, camera, (w, h), memo) for m in meshes]
        missing = [i for i, k in enumerate(keys) if k not in self.layers]
        held = self._hold(keys)
        for i in missing:
            held[keys[i]] = self._render_layer(renderer, meshes[i], camera)
            self._store(keys[i], held[keys[i]])
        return self._compose_region(keys, (0, h, 0, w), held)

    def view(self, get: Callable[[int, int], Any], meshes: list, camera: Any, view: Any,
             size: tuple[int, int]) -> Any:
        """Same picture as ``MeshRenderer.render(meshes, camera, view)`` at ``size``; from cached layers when
        the view is the camera's own (the mesh view at reset, where an edit changes one person)."""
        import numpy as np

        renderer = get(*size)
        if camera is None or (view is not None and not np.allclose(view, np.eye(4), atol=1e-9)):
            return renderer.render_with_mask(meshes, camera, view, cull=True)[0]
        meshes = [(v, f, tuple(float(x) for x in c)) for v, f, c in meshes]
        rgb, mask = self.compose(get, meshes, camera, size)
        bg = self.background.get(size)
        if bg is None:  # the renderer's background colour, exactly as it writes it
            return renderer.render_with_mask(meshes, camera, view, cull=True)[0]
        out = np.empty_like(rgb)
        out[...] = bg
        out[mask] = rgb[mask]
        return out
