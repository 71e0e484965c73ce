"""Mesh rendering for overlays and previews.

``MeshRenderer(width, height)`` renders triangle meshes given in the OpenCV camera frame (metres; x right,
y down, z forward) through a pinhole ``Camera`` so that they land on the image they were estimated from.

Backends:

* ``"open3d"``: Open3D's legacy ``o3d.visualization.Visualizer`` created once with ``visible=False``
  (headless EGL when there is no display). The intrinsics and extrinsic are set with
  ``ViewControl.convert_from_pinhole_camera_parameters(..., allow_arbitrary=True)``; the coverage mask
  comes from the depth buffer. Open3D's newer ``OffscreenRenderer`` is deliberately not used (Vulkan-only
  in 0.20, slow, hangs at small sizes).
* ``"numpy"``: a vectorised z-buffer rasteriser (perspective-correct depth, flat Lambert shading with
  the light at the camera, both faces drawn). Used when Open3D is missing or cannot create a headless
  window; it is also what ``backend="numpy"`` selects. Triangles with a vertex closer than ``z_near`` are
  dropped (no clipping). Pixel centres are at integer coordinates (the OpenCV convention).

``backend="auto"`` (default) tries Open3D and falls back to numpy with a logged warning.

Two entry points: ``render_with_mask`` (overlays: colour, coverage and depth; geometry re-uploaded when a
digest of the arrays changes) and ``render_frame`` (a 3-D view's frame: meshes kept by identity and updated in
place, lines as GL geometry, the picture read back as bytes through libGL on Open3D's own context, depth only
when asked). ``lod_faces`` gives a topology's reduced face list for frames drawn while a view moves.
A renderer is thread-confined: use it only from the thread that created it (Open3D's GL context is bound
to that thread). Colours are RGB in [0, 1] or [0, 255].
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..types import Camera, MeshResult

log = logging.getLogger(__name__)

__all__ = ["MeshRenderer", "render_overlay", "rasterize", "draw_lines", "lod_faces", "lod_levels", "lod_index",
           "size_on_screen_px", "LOD_LEVELS", "PERSON_COLORS", "PERSON_PALETTE", "person_color"]

# The one per-person palette (RGB 0..255): 20 distinct colours, so tracks #0-#19 all differ. The CLI's overlays
# and --views, and the app's overlay, skeletons and 3-D view all colour person/track k with PERSON_PALETTE[k % 20]
# (the app's colour key t + 1 of track t maps to the same entry: a track has one colour everywhere).
PERSON_PALETTE = (
    (230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 190), (0, 128, 128),
    (170, 110, 40), (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0),
    (255, 215, 180), (0, 0, 128), (230, 190, 255), (255, 225, 25), (128, 128, 128),
)
PERSON_COLORS = tuple(tuple(c / 255.0 for c in rgb) for rgb in PERSON_PALETTE)  # the same, RGB in [0, 1]

MeshSpec = tuple[np.ndarray, np.ndarray, Sequence[float]]
LOD_FACES = 2500  # faces per person while a 3-D view moves (orbit, playback): silhouette IoU >= 0.95 (1500: 0.93)
# the levels a moving view chooses from per person (``lod_levels``; scene3d picks by size on screen and frame time).
# The last is for the frame budget only (about 1.6 % of the body's height off, 90th percentile: coarse, but only
# while moving): on llvmpipe an orbiting frame of 10 persons costs about 3 ms less at 300 faces than at 500.
LOD_LEVELS = (2500, 1800, 1200, 800, 500, 300)
LineSpec = tuple[np.ndarray, np.ndarray, np.ndarray]  # segments (N, 2, 3), colours (N, 3) uint8, widths px (N,)

_GL_RGB, _GL_UNSIGNED_BYTE, _GL_FLOAT, _GL_DEPTH_COMPONENT, _GL_PACK_ALIGNMENT = 0x1907, 0x1401, 0x1406, 0x1902, 0x0D05
_GL_BGRA = 0x80E1


def _cv2() -> Any:
    """OpenCV when installed (a faster read-back conversion), else None."""
    try:
        import cv2
    except ImportError:
        return None
    return cv2


def person_color(index: int) -> tuple[float, float, float]:
    """Colour (RGB 0..1) of person ``index`` (or track id) from the palette (``PERSON_COLORS``)."""
    return PERSON_COLORS[int(index) % len(PERSON_COLORS)]


_LOD_CACHE: dict[tuple, np.ndarray] = {}
_LOD_BY_ID: dict[tuple[int, int], tuple[np.ndarray, int, np.ndarray]] = {}
_LOD_SOURCE: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # id(reduced faces) -> (them, the full faces)


def _full_faces(faces: Any) -> np.ndarray | None:
    """The full face list (F, 3) int64 of which ``faces`` is a reduced list (``lod_faces``/``lod_levels``), or
    None when it is not one."""
    src = _LOD_SOURCE.get(id(faces))
    return src[1] if src is not None and src[0] is faces else None


def kept_by_identity(cache: dict[int, tuple[Any, Any]], obj: Any, build: Any, limit: int = 64) -> Any:
    """``build()``, kept in ``cache`` for ``obj`` by its identity (with ``obj`` itself, so that its id stays
    its own) for the next call with the same object; the cache is emptied past ``limit`` objects. For arrays
    the app and the renderer never change in place (a topology, a fitted mesh)."""
    hit = cache.get(id(obj))
    if hit is not None and hit[0] is obj:
        return hit[1]
    value = build()
    if len(cache) > limit:
        cache.clear()
    cache[id(obj)] = (obj, value)
    return value


_DIGESTS: dict[int, tuple[Any, bytes]] = {}  # id(faces) -> (the array, its digest): no re-hash of the same one


def _faces_digest(faces: Any) -> bytes:
    """Content digest of a faces array (as int32), looked up by identity first: a topology is hashed once
    however often its array comes back (every person of a body model shares one)."""
    import hashlib

    return kept_by_identity(_DIGESTS, faces, lambda: hashlib.blake2b(
        np.ascontiguousarray(faces, np.int32).data, digest_size=16).digest())


def lod_faces(vertices: np.ndarray, faces: np.ndarray, target: int = LOD_FACES) -> np.ndarray:
    """A reduced face list (about ``target`` faces) of a mesh topology, as indices into the ORIGINAL vertex
    array: any posed mesh with the same faces (every SMPL or Anny body of a video) draws with it, so a 3-D
    view orbits and plays with few triangles per person and no per-frame decimation.

    Computed once per topology (cached by a digest of ``faces``; a repeated ``faces`` object is looked up by
    identity first): ``vertices`` (the first posed mesh) are quadric-decimated by Open3D, each kept vertex
    is snapped to the nearest original vertex, and faces that collapse (two corners on one vertex) or repeat
    are dropped. Without Open3D, or for a mesh already at most ``target`` faces, ``faces`` itself. A renderer
    shades a reduced list with normals over the full topology, so the body looks smooth, not faceted."""
    f = np.asarray(faces)
    hit = _LOD_BY_ID.get((id(faces), int(target)))
    if hit is not None and hit[0] is faces and hit[1] == len(vertices):
        return hit[2]
    key = (len(vertices), int(target), _faces_digest(faces))
    out = _LOD_CACHE.get(key)
    if out is None:
        out = _decimate(np.asarray(vertices, np.float64).reshape(-1, 3), f.reshape(-1, 3).astype(np.int64), target)
        out.setflags(write=False)
        _LOD_CACHE[key] = out
    if isinstance(faces, np.ndarray):
        if len(_LOD_BY_ID) > 256:
            _LOD_BY_ID.clear()
        _LOD_BY_ID[(id(faces), int(target))] = (faces, len(vertices), out)
    if out is not f:
        _LOD_SOURCE[id(out)] = (out, np.asarray(f, np.int64).reshape(-1, 3))
    return out


_LOD_DEVIATION: dict[int, tuple[np.ndarray, float]] = {}  # id(reduced faces) -> (them, relative deviation)


def lod_levels(vertices: np.ndarray, faces: np.ndarray, compute: bool = True,
               disk: bool = True) -> tuple[tuple[np.ndarray, float], ...] | None:
    """``((reduced faces, deviation), ...)`` for ``LOD_LEVELS`` (most faces first): each level's face list
    (``lod_faces``) and how far the full surface lies from it, the 90th percentile over the full mesh's
    vertices as a fraction of the mesh's largest extent (0 where nothing was removed). Times a person's size
    on screen (pixels), the deviation is the reduced body's error in pixels. Computed once per topology
    (Open3D's quadric decimation, then its ``RaycastingScene`` distance: about 0.5 s a level for an Anny
    body); with ``compute=False``, None unless every level is computed already (in this process, or kept in
    the cache folder unless ``disk=False``)."""
    if not _levels_known(vertices, faces) and not (disk and _load_levels(vertices, faces)) and not compute:
        return None
    out = []
    computed = False
    for target in LOD_LEVELS:
        lf = lod_faces(vertices, faces, target)
        hit = _LOD_DEVIATION.get(id(lf))
        if hit is None or hit[0] is not lf:
            v = np.asarray(vertices, np.float64).reshape(-1, 3)
            extent = float(np.ptp(v, axis=0).max()) or 1.0
            hit = _LOD_DEVIATION[id(lf)] = (lf, _deviation(v, lf, extent) if lf is not faces else 0.0)
            computed = True
        out.append((lf, hit[1]))
    if computed:
        _save_levels(vertices, faces, out)
    return tuple(out)


def lod_index(levels: Sequence[tuple[np.ndarray, float]], size_px: float, tolerance_px: float,
              start: int = -1) -> int:
    """Which of ``levels`` (``lod_levels``) to draw a mesh ``size_px`` pixels across with: from ``start`` (-1:
    the full mesh), one level coarser while the next one's deviation stays within ``tolerance_px`` pixels at
    that size. The index, or -1 for the full mesh."""
    k = start
    while k + 1 < len(levels) and levels[k + 1][1] * size_px <= tolerance_px:
        k += 1
    return k


def size_on_screen_px(box: np.ndarray, view: np.ndarray, fy: float, near: float = 1e-3) -> float:
    """Pixels across a mesh with bounding box ``box`` (2, 3) seen through ``view`` (4, 4) by a camera of
    vertical focal length ``fy``: its largest extent at the depth of its centre."""
    box = np.asarray(box, np.float64)
    z = float(view[2, :3] @ box.mean(0) + view[2, 3])
    return float(np.ptp(box, axis=0).max()) * fy / max(z, near)


def _levels_known(vertices: np.ndarray, faces: np.ndarray) -> bool:
    for target in LOD_LEVELS:
        lf = _lod_known(vertices, faces, target)
        hit = None if lf is None else _LOD_DEVIATION.get(id(lf))
        if hit is None or hit[0] is not lf:
            return False
    return True


def _levels_file(vertices: np.ndarray, faces: np.ndarray) -> Path:
    """Where a topology's reduced lists are kept between runs (the cache folder; a body model's topology is
    fixed, so each is computed once per machine: in the app, by the 3-D view's render process while idle, and
    the overlay's render process reads them)."""
    from ..paths import cache_dir

    digest = _faces_digest(faces).hex()
    levels = "-".join(str(t) for t in LOD_LEVELS)
    return cache_dir("lod") / f"{len(vertices)}v-{digest}-{levels}.npz"


def _save_levels(vertices: np.ndarray, faces: np.ndarray, levels: list) -> None:
    try:
        path = _levels_file(vertices, faces)
        if path.exists():
            return
        import io

        from .atomic import atomic_write_bytes

        buf = io.BytesIO()
        np.savez(buf, deviation=np.array([d for _, d in levels]),
                 **{f"faces{i}": np.asarray(lf, np.int32) for i, (lf, _) in enumerate(levels)})
        atomic_write_bytes(path, buf.getvalue())
    except OSError as e:  # a read-only cache: computed again next time
        log.info("reduced face lists not kept (%s)", e)


def _load_levels(vertices: np.ndarray, faces: np.ndarray) -> bool:
    """Put a topology's kept reduced lists (``_save_levels``) in the in-memory caches; False if none."""
    try:
        path = _levels_file(vertices, faces)
        if not path.exists():
            return False
        with np.load(path) as z:
            dev = np.asarray(z["deviation"], np.float64)
            lists = [np.asarray(z[f"faces{i}"], np.int32) for i in range(len(LOD_LEVELS))]
    except (OSError, KeyError, ValueError) as e:
        log.info("reduced face lists unreadable (%s): computing them", e)
        return False
    n = len(vertices)
    digest = _faces_digest(faces)
    full = np.asarray(faces, np.int64).reshape(-1, 3)
    for target, lf, d in zip(LOD_LEVELS, lists, dev):
        if lf.size and (lf.min() < 0 or lf.max() >= n):
            return False
        lf.setflags(write=False)
        _LOD_CACHE[(n, int(target), digest)] = lf
        _LOD_SOURCE[id(lf)] = (lf, full)
        _LOD_DEVIATION[id(lf)] = (lf, float(d))
    return True


def _lod_known(vertices: np.ndarray, faces: np.ndarray, target: int) -> np.ndarray | None:
    """``lod_faces(vertices, faces, target)`` when it is cached already, else None (nothing computed)."""
    hit = _LOD_BY_ID.get((id(faces), int(target)))
    if hit is not None and hit[0] is faces and hit[1] == len(vertices):
        return hit[2]
    out = _LOD_CACHE.get((len(vertices), int(target), _faces_digest(faces)))
    return None if out is None else lod_faces(vertices, faces, target)  # (registers this faces object)


def _deviation(v: np.ndarray, lf: np.ndarray, extent: float) -> float:
    if len(lf) == 0:
        return 0.0
    try:
        import open3d as o3d

        scene = o3d.t.geometry.RaycastingScene()
        scene.add_triangles(o3d.core.Tensor(v.astype(np.float32)), o3d.core.Tensor(np.asarray(lf, np.uint32)))
        d = scene.compute_distance(o3d.core.Tensor(v.astype(np.float32))).numpy()
    except (ImportError, AttributeError, RuntimeError):
        # distance to the nearest kept vertex: an upper bound of the distance to the reduced surface
        kept = v[np.unique(lf)]
        d = np.array([np.sqrt(((kept - x) ** 2).sum(1).min()) for x in v[::4]])
    return float(np.percentile(d, 90)) / extent


def _decimate(v: np.ndarray, f: np.ndarray, target: int) -> np.ndarray:
    if len(f) <= target:
        return f.astype(np.int32)
    try:
        import open3d as o3d
    except ImportError:
        return f.astype(np.int32)
    m = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(v), o3d.utility.Vector3iVector(f.astype(np.int32)))
    with o3d.utility.VerbosityContextManager(o3d.utility.VerbosityLevel.Error):
        d = m.simplify_quadric_decimation(int(target))
    dv, df = np.asarray(d.vertices), np.asarray(d.triangles)
    if len(df) == 0:
        return f.astype(np.int32)
    # each kept vertex snapped to the nearest original one (brute force in blocks: no index to build)
    snap = np.empty(len(dv), np.int64)
    vv = (v * v).sum(1)
    for i in range(0, len(dv), 512):
        q = dv[i:i + 512]
        snap[i:i + 512] = np.argmin(vv[None, :] - 2.0 * q @ v.T, axis=1)
    g = snap[df]
    g = g[(g[:, 0] != g[:, 1]) & (g[:, 1] != g[:, 2]) & (g[:, 0] != g[:, 2])]
    # the same triangle twice (either winding) is drawn once
    _, first = np.unique(np.sort(g, axis=1), axis=0, return_index=True)
    return np.ascontiguousarray(g[np.sort(first)], np.int32)


# digest of a faces array -> vertex -> adjacent faces as (order, starts), or None when the surface is not closed
# and consistently oriented; a few topologies at a time (SMPL, Anny). Keyed by content: a render process gets a
# new faces object with every request that does not name it by token.
_TOPOLOGY: dict[bytes, tuple[np.ndarray, np.ndarray] | None] = {}


def _closed_topology(f: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Vertex -> faces adjacency of a closed, consistently oriented triangle surface (every directed edge once,
    and its reverse once), or None."""
    f = np.asarray(f, np.int64).reshape(-1, 3)
    if len(f) < 4:
        return None
    n = int(f.max()) + 1
    e = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    key, rkey = e[:, 0] * n + e[:, 1], e[:, 1] * n + e[:, 0]
    if len(np.unique(key)) != len(key) or not np.isin(rkey, key).all():
        return None
    order = np.argsort(f.reshape(-1), kind="stable") // 3
    starts = np.searchsorted(np.sort(f.reshape(-1)), np.arange(n + 1))
    return order, starts


def cullable(vertices: np.ndarray, faces: np.ndarray) -> bool:
    """Whether back faces of this mesh can be skipped without changing its picture: a closed, consistently
    oriented surface wound outwards (checked at the vertex furthest along +x, whose faces must face +x).
    The topology check is done once per faces array."""
    digest = _faces_digest(faces)
    if digest not in _TOPOLOGY:
        _TOPOLOGY[digest] = _closed_topology(faces)
        while len(_TOPOLOGY) > 8:
            _TOPOLOGY.pop(next(iter(_TOPOLOGY)))
    topo = _TOPOLOGY[digest]
    if topo is None:
        return False
    order, starts = topo
    v = np.asarray(vertices, np.float64).reshape(-1, 3)
    if len(v) < len(starts) - 1:
        return False
    i = int(np.argmax(v[: len(starts) - 1, 0]))
    fs = order[starts[i]:starts[i + 1]]
    if len(fs) == 0:
        return False
    t = v[np.asarray(faces)[fs]]
    return bool(np.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0]).sum(0)[0] > 0)


def _rgb01(c: Sequence[float]) -> np.ndarray:
    a = np.asarray(c, np.float64).reshape(-1)[:3]
    if a.size != 3:
        raise ValueError(f"colour must have 3 components, got {a.size}")
    return np.clip(a / 255.0 if a.max() > 1.0 else a, 0.0, 1.0)


def _intrinsics(camera: Camera, width: int, height: int) -> tuple[float, float, float, float]:
    """fx, fy, cx, cy scaled from the camera's image size to (width, height)."""
    cw, ch = camera.image_size
    sx, sy = width / float(cw), height / float(ch)
    # Pixel centres are integer coordinates: scaling maps centre to centre.
    cx = (camera.principal[0] + 0.5) * sx - 0.5
    cy = (camera.principal[1] + 0.5) * sy - 0.5
    return camera.focal[0] * sx, camera.focal[1] * sy, cx, cy


def _auto_view(meshes: Sequence[MeshSpec], camera: Camera, width: int, height: int) -> np.ndarray:
    """(4, 4) transform placing all meshes centred in front of ``camera``, filling about 80 % of the view."""
    pts = np.concatenate([np.asarray(v, np.float64).reshape(-1, 3) for v, _, _ in meshes], axis=0)
    lo, hi = pts.min(0), pts.max(0)
    c, r = (lo + hi) / 2, max(float(np.linalg.norm(hi - lo)) / 2, 1e-6)
    fx, fy, _, _ = _intrinsics(camera, width, height)
    d = r * max(fx / (0.4 * width), fy / (0.4 * height)) + r
    T = np.eye(4)
    T[:3, 3] = -c + np.array([0.0, 0.0, d])
    return T


def _apply(T: np.ndarray, v: np.ndarray) -> np.ndarray:
    return v @ T[:3, :3].T + T[:3, 3]


# ---------------------------------------------------------------------------------------------------------
# numpy rasteriser


def rasterize(
    meshes: Sequence[MeshSpec],
    K: np.ndarray,
    width: int,
    height: int,
    background: Sequence[float] = (1.0, 1.0, 1.0),
    z_near: float = 1e-3,
    max_candidates: int = 2_000_000,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Z-buffer rasterise triangle meshes in the camera frame with intrinsics ``K`` (3, 3).

    meshes: [(vertices (V, 3) metres, faces (F, 3) int, colour RGB)]. Returns ``rgb`` (H, W, 3) uint8,
    ``mask`` (H, W) bool (covered pixels) and ``depth`` (H, W) float32 metres (0 where empty).
    Flat Lambert shading: ``colour * (0.35 + 0.65 |n . l|)`` with the light at the camera.
    """
    H, W = int(height), int(width)
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    tris, cols = [], []
    for v, f, c in meshes:
        v = np.asarray(v, np.float64).reshape(-1, 3)
        f = np.asarray(f, np.int64).reshape(-1, 3)
        if f.size == 0:
            continue
        t = v[f]  # (F, 3, 3)
        tris.append(t)
        cols.append(np.broadcast_to(_rgb01(c), (t.shape[0], 3)))
    bg = _rgb01(background)
    rgb = np.empty((H, W, 3), np.float64)
    rgb[:] = bg
    if not tris:
        return (rgb * 255 + 0.5).astype(np.uint8), np.zeros((H, W), bool), np.zeros((H, W), np.float32)
    T = np.concatenate(tris)
    C = np.concatenate(cols)
    keep = (T[:, :, 2] > z_near).all(axis=1) & np.isfinite(T).all(axis=(1, 2))
    T, C = T[keep], C[keep]
    z = T[:, :, 2]
    u = fx * T[:, :, 0] / z + cx
    w = fy * T[:, :, 1] / z + cy
    x0 = np.maximum(np.ceil(u.min(1)), 0).astype(np.int64)
    x1 = np.minimum(np.floor(u.max(1)), W - 1).astype(np.int64)
    y0 = np.maximum(np.ceil(w.min(1)), 0).astype(np.int64)
    y1 = np.minimum(np.floor(w.max(1)), H - 1).astype(np.int64)
    area = (u[:, 1] - u[:, 0]) * (w[:, 2] - w[:, 0]) - (u[:, 2] - u[:, 0]) * (w[:, 1] - w[:, 0])
    ok = (x1 >= x0) & (y1 >= y0) & (np.abs(area) > 1e-12)
    idx = np.flatnonzero(ok)
    bw, bh = x1[idx] - x0[idx] + 1, y1[idx] - y0[idx] + 1
    # Bucket triangles by padded bounding-box size (powers of two) so each bucket is one dense array op.
    kw = np.ceil(np.log2(bw)).astype(np.int64)
    kh = np.ceil(np.log2(bh)).astype(np.int64)
    inv_z_buf = np.zeros(H * W, np.float64)
    all_pix, all_iz, all_face = [], [], []

    def block(fi: np.ndarray, bx: np.ndarray, by: np.ndarray, pw: int, ph: int) -> None:
        """Test the pw x ph pixel block at (bx, by) of each face ``fi`` and keep the covered pixels."""
        oy, ox = np.divmod(np.arange(pw * ph), pw)
        px = bx[:, None] + ox[None, :]
        py = by[:, None] + oy[None, :]
        inb = (px <= x1[fi, None]) & (py <= y1[fi, None])
        ua, wa, inv = u[fi], w[fi], 1.0 / area[fi, None]
        # barycentric weights of the pixel centres
        b0 = ((ua[:, 1, None] - px) * (wa[:, 2, None] - py) - (ua[:, 2, None] - px) * (wa[:, 1, None] - py)) * inv
        b1 = ((ua[:, 2, None] - px) * (wa[:, 0, None] - py) - (ua[:, 0, None] - px) * (wa[:, 2, None] - py)) * inv
        b2 = 1.0 - b0 - b1
        eps = -1e-9
        inside = inb & (b0 >= eps) & (b1 >= eps) & (b2 >= eps)
        iz = b0 / z[fi, 0, None] + b1 / z[fi, 1, None] + b2 / z[fi, 2, None]
        r, c = np.nonzero(inside)
        all_pix.append(py[r, c] * W + px[r, c])
        all_iz.append(iz[r, c])
        all_face.append(fi[r])

    for key in np.unique(kw * 64 + kh):
        sel = idx[(kw * 64 + kh) == key]
        pw, ph = 1 << int(key // 64), 1 << int(key % 64)
        if pw * ph <= max_candidates:
            step = max(1, max_candidates // (pw * ph))
            for s in range(0, sel.size, step):
                fi = sel[s: s + step]
                block(fi, x0[fi], y0[fi], pw, ph)
        else:  # large triangles: one at a time, in bands of rows
            rows = max(1, max_candidates // pw)
            for f in sel:
                fi = np.array([f])
                for r0 in range(int(y0[f]), int(y1[f]) + 1, rows):
                    block(fi, x0[fi], np.array([r0]), pw, min(rows, int(y1[f]) + 1 - r0))
    pix = np.concatenate(all_pix) if all_pix else np.zeros(0, np.int64)
    iz = np.concatenate(all_iz) if all_iz else np.zeros(0)
    face = np.concatenate(all_face) if all_face else np.zeros(0, np.int64)
    np.maximum.at(inv_z_buf, pix, iz)
    win = iz >= inv_z_buf[pix]
    face_buf = np.full(H * W, -1, np.int64)
    face_buf[pix[win]] = face[win]
    mask = face_buf >= 0
    # flat Lambert shading, two-sided, light at the camera
    n = np.cross(T[:, 1] - T[:, 0], T[:, 2] - T[:, 0])
    n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
    cen = T.mean(1)
    lv = -cen / np.maximum(np.linalg.norm(cen, axis=1, keepdims=True), 1e-12)
    shade = 0.35 + 0.65 * np.abs((n * lv).sum(1))
    fb = face_buf[mask]
    flat = rgb.reshape(-1, 3)
    flat[mask] = C[fb] * shade[fb, None]
    depth = np.zeros(H * W, np.float32)
    depth[mask] = 1.0 / inv_z_buf[mask]
    return (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8), mask.reshape(H, W), depth.reshape(H, W)


def _widened(segs: np.ndarray, cols: np.ndarray, widths: np.ndarray, K: np.ndarray,
             T: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Segments of width w px as w parallel copies one pixel apart on screen (GL lines of one width)."""
    if len(segs) == 0:
        return np.zeros((0, 2, 3)), np.zeros((0, 3))
    R, t = np.asarray(T, np.float64)[:3, :3], np.asarray(T, np.float64)[:3, 3]
    a, b = segs[:, 0] @ R.T + t, segs[:, 1] @ R.T + t
    za, zb = np.maximum(a[:, 2], 1e-6), np.maximum(b[:, 2], 1e-6)
    d = np.stack([b[:, 0] / zb - a[:, 0] / za, b[:, 1] / zb - a[:, 1] / za], 1) * np.array([K[0, 0], K[1, 1]])
    n = np.stack([-d[:, 1], d[:, 0]], 1)
    n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-9)
    out_s, out_c = [segs], [cols]
    for k in (1, -1):
        sel = widths >= (2 if k == 1 else 3)
        if not sel.any():
            continue
        off = np.zeros((int(sel.sum()), 3))
        off[:, 0], off[:, 1] = k * n[sel, 0] / K[0, 0], k * n[sel, 1] / K[1, 1]  # one pixel at depth 1 (view frame)
        wa, wb = (off * za[sel, None]) @ R, (off * zb[sel, None]) @ R  # back to world directions
        out_s.append(np.stack([segs[sel, 0] + wa, segs[sel, 1] + wb], 1))
        out_c.append(cols[sel])
    return np.concatenate(out_s), np.concatenate(out_c)


_OPEN: dict[int, list[Any]] = {}  # thread -> its open Open3D MeshRenderers
_HELD: dict[int, list[Any]] = {}  # thread -> Visualizers closed while others were open (destroyed with the last)


class _GLContext:
    """The EGL or GLX context that was current when a renderer's window was created, made current again before
    each of its frames: Open3D's legacy Visualizer does not, and after another Visualizer is closed no context is
    current (its frame and read-back then return garbage)."""

    def __init__(self, kind: str, lib: Any, args: tuple, ctx: int):
        self.kind, self.lib, self.args, self.ctx = kind, lib, args, ctx

    def make_current(self) -> None:
        lib = self.lib
        if self.kind == "egl":
            if lib.eglGetCurrentContext() != self.ctx:
                lib.eglMakeCurrent(*self.args, self.ctx)
        elif lib.glXGetCurrentContext() != self.ctx:
            lib.glXMakeContextCurrent(*self.args, self.ctx)


def _current_context() -> _GLContext | None:
    import ctypes

    p = ctypes.c_void_p
    try:
        egl = ctypes.CDLL("libEGL.so.1")
        for name, res, args in (("eglGetCurrentContext", p, []), ("eglGetCurrentDisplay", p, []),
                                ("eglGetCurrentSurface", p, [ctypes.c_int]),
                                ("eglMakeCurrent", ctypes.c_uint, [p, p, p, p])):
            getattr(egl, name).restype, getattr(egl, name).argtypes = res, args
        ctx = egl.eglGetCurrentContext()
        if ctx:
            return _GLContext("egl", egl, (egl.eglGetCurrentDisplay(), egl.eglGetCurrentSurface(0x3059),
                                           egl.eglGetCurrentSurface(0x305A)), ctx)  # EGL_DRAW, EGL_READ
    except (OSError, AttributeError):
        pass
    try:
        glx = ctypes.CDLL("libGL.so.1")
        for name, res, args in (("glXGetCurrentContext", p, []), ("glXGetCurrentDisplay", p, []),
                                ("glXGetCurrentDrawable", ctypes.c_ulong, []),
                                ("glXGetCurrentReadDrawable", ctypes.c_ulong, []),
                                ("glXMakeContextCurrent", ctypes.c_int, [p, ctypes.c_ulong, ctypes.c_ulong, p])):
            getattr(glx, name).restype, getattr(glx, name).argtypes = res, args
        ctx = glx.glXGetCurrentContext()
        if ctx:
            return _GLContext("glx", glx, (glx.glXGetCurrentDisplay(), glx.glXGetCurrentDrawable(),
                                           glx.glXGetCurrentReadDrawable()), ctx)
    except (OSError, AttributeError):
        pass
    return None


def draw_lines(rgb: np.ndarray, depth: np.ndarray, lines: LineSpec, K: np.ndarray, view: np.ndarray,
               near: float) -> None:
    """Depth-tested world segments into ``rgb`` (in place) seen through intrinsics ``K`` after the (4, 4)
    ``view``, clipped at the ``near`` plane; ``depth`` (metres, 0 = empty) is updated where a line is drawn.
    ``lines``: (segments (N, 2, 3), colours (N, 3) uint8, widths px (N,)). The numpy backend's lines."""
    segs, cols, widths = lines
    segs = np.asarray(segs, np.float64).reshape(-1, 2, 3)
    if len(segs) == 0:
        return
    cols, widths = np.asarray(cols, np.uint8).reshape(-1, 3), np.asarray(widths, int).reshape(-1)
    H, W = depth.shape
    T = np.asarray(view, np.float64)
    a = segs[:, 0] @ T[:3, :3].T + T[:3, 3]
    b = segs[:, 1] @ T[:3, :3].T + T[:3, 3]
    keep = (a[:, 2] > near) | (b[:, 2] > near)
    a, b, cols, widths = a[keep], b[keep], cols[keep], widths[keep]
    # clip to the near plane
    za, zb = a[:, 2], b[:, 2]
    t = np.where(za < near, (near - za) / np.where(zb - za == 0, 1, zb - za), 0.0)
    a = a + (b - a) * t[:, None]
    za = a[:, 2]
    t = np.where(zb < near, (near - zb) / np.where(za - zb == 0, 1, za - zb), 0.0)
    b = b + (a - b) * t[:, None]

    def proj(x):
        return np.stack([K[0, 0] * x[:, 0] / x[:, 2] + K[0, 2], K[1, 1] * x[:, 1] / x[:, 2] + K[1, 2]], 1)

    pa, pb = proj(a), proj(b)
    L = np.ceil(np.abs(pb - pa).max(1)).clip(1, 4 * (W + H)).astype(int) + 1
    idx = np.repeat(np.arange(len(a)), L)
    s = (np.arange(L.sum()) - np.repeat(np.cumsum(L) - L, L)) / np.repeat(np.maximum(L - 1, 1), L)
    # perspective-correct: interpolate in 3-D, then project
    x3 = a[idx] + (b[idx] - a[idx]) * s[:, None]
    uv = proj(x3)
    z = x3[:, 2]
    col = cols[idx]
    wd = widths[idx]
    for ox, oy, need in ((0, 0, 1), (1, 0, 2), (0, 1, 2), (1, 1, 3), (-1, 0, 3), (0, -1, 3)):
        m = wd >= need
        px = np.round(uv[m, 0]).astype(int) + ox
        py = np.round(uv[m, 1]).astype(int) + oy
        inb = (px >= 0) & (px < W) & (py >= 0) & (py < H)
        px, py, zz, cc = px[inb], py[inb], z[m][inb], col[m][inb]
        d = depth[py, px]
        vis = (d <= 0) | (zz <= d * 1.002 + 0.01)
        rgb[py[vis], px[vis]] = cc[vis]
        depth[py[vis], px[vis]] = np.where(d[vis] > 0, np.minimum(d[vis], zz[vis]), zz[vis])


# ---------------------------------------------------------------------------------------------------------
# renderer


def _projected_rect(meshes: Sequence[MeshSpec], K: np.ndarray, T: np.ndarray, width: int, height: int,
                    near: float, margin: int) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1) inclusive pixel box of the meshes' projected vertices plus ``margin``, clipped to the
    picture; the whole picture when a vertex is at or behind ``near``; None when the box misses the picture."""
    if not meshes:
        return None
    lo, hi = np.full(2, np.inf), np.full(2, -np.inf)
    still = np.array_equal(T, np.eye(4))  # an overlay's layer: the camera's own view
    for v, _, _ in meshes:
        v = np.asarray(v).reshape(-1, 3)
        x = v if still else _apply(T, np.asarray(v, np.float64))
        if len(x) == 0:
            continue
        z = x[:, 2]
        if z.min() <= near:
            return 0, 0, width - 1, height - 1
        u, w = x[:, 0] / z, x[:, 1] / z  # (float32 for a float32 mesh: the box has a margin of pixels)
        uv_lo = np.array([u.min(), w.min()], np.float64) * (K[0, 0], K[1, 1]) + (K[0, 2], K[1, 2])
        uv_hi = np.array([u.max(), w.max()], np.float64) * (K[0, 0], K[1, 1]) + (K[0, 2], K[1, 2])
        lo, hi = np.minimum(lo, uv_lo), np.maximum(hi, uv_hi)
    if not np.isfinite(lo).all():
        return None
    x0, y0 = np.floor(lo).astype(int) - margin
    x1, y1 = np.ceil(hi).astype(int) + margin
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, width - 1), min(y1, height - 1)
    if x1 < x0 or y1 < y0:
        return None
    return int(x0), int(y0), int(x1), int(y1)


def _ensure_runtime_dir() -> None:
    """EGL/GLFW complain on stderr ("XDG_RUNTIME_DIR is invalid or not set") on headless machines; give the
    process a private runtime dir (mode 0700, as the XDG spec requires) when none is set."""
    if os.environ.get("XDG_RUNTIME_DIR"):
        return
    d = Path(tempfile.gettempdir()) / f"dpmesh-runtime-{os.getuid()}"
    d.mkdir(mode=0o700, exist_ok=True)
    os.environ["XDG_RUNTIME_DIR"] = str(d)


class MeshRenderer:
    """Reusable renderer of a fixed output size (width, height) pixels.

    ``render(meshes, camera=None, view=None)`` -> (H, W, 3) uint8: meshes are
    ``[(vertices (V, 3) metres, faces (F, 3) int, colour RGB)]`` in the camera frame; ``camera`` the
    pinhole camera (its intrinsics are scaled when its ``image_size`` differs from the renderer's);
    ``view`` an optional (4, 4) rigid transform applied to the vertices first (e.g. an orbit in a mesh
    viewer). With neither camera nor view, the meshes are framed automatically.
    ``render_with_mask`` also returns the coverage mask (H, W) bool and depth (H, W) float32 metres.
    """

    def __init__(self, width: int, height: int, backend: str = "auto",
                 background: Sequence[float] = (1.0, 1.0, 1.0)):
        if int(width) <= 0 or int(height) <= 0:
            raise ValueError(f"renderer size must be positive, got {width}x{height}")
        if backend not in ("auto", "open3d", "numpy"):
            raise ValueError(f"unknown backend {backend!r} (auto, open3d, numpy)")
        self.width, self.height = int(width), int(height)
        self.background = tuple(float(x) for x in _rgb01(background))
        self._thread = threading.get_ident()
        self._vis: Any = None
        self._gl: Any = None
        self._ctx: _GLContext | None = None
        self._twin: MeshRenderer | None = None
        self._slots: list[list[Any]] = []
        self._line_slot: list[Any] | None = None
        self.backend = "numpy"
        if backend in ("auto", "open3d"):
            try:
                self._init_open3d()
                self.backend = "open3d"
            except Exception as e:
                if backend == "open3d":
                    raise RuntimeError(f"Open3D cannot render headless here: {e}") from e
                log.warning("Open3D rendering unavailable (%s); using the numpy rasteriser", e)

    def _init_open3d(self) -> None:
        import open3d as o3d

        _ensure_runtime_dir()
        vis = o3d.visualization.Visualizer()
        # Open3D logs its EGL fallback at INFO level on stdout: keep stdout clean (the CLI's --json events).
        with o3d.utility.VerbosityContextManager(o3d.utility.VerbosityLevel.Error):
            created = vis.create_window(window_name="dpmesh-render", width=self.width, height=self.height,
                                        visible=False)
        if not created:
            raise RuntimeError("create_window(visible=False) failed")
        opt = vis.get_render_option()
        if opt is None:
            vis.destroy_window()
            raise RuntimeError("no render option (no GL context)")
        opt.background_color = np.asarray(self.background, np.float64)
        opt.mesh_show_back_face = True
        opt.light_on = True
        self._o3d = o3d
        self._vis = vis
        _OPEN.setdefault(self._thread, []).append(self)
        self._ctx = _current_context()  # create_window left this window's context current
        self._drop_slots()
        self._gl = self._direct_readback()

    def _direct_readback(self) -> Any:
        """libGL through ctypes for byte read-back on the Visualizer's own (current) context, or None. Kept
        only when a read of the cleared picture equals Open3D's own capture of it."""
        import ctypes

        try:
            gl = ctypes.CDLL("libGL.so.1")
            gl.glReadPixels.argtypes = [ctypes.c_int] * 4 + [ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p]
            gl.glReadPixels.restype = None
            gl.glPixelStorei.argtypes = [ctypes.c_uint, ctypes.c_int]
            gl.glPixelStorei.restype = None
        except (OSError, AttributeError) as e:
            log.info("direct GL read-back unavailable (%s); using Open3D's float capture", e)
            return None
        vis = self._vis
        with self._o3d.utility.VerbosityContextManager(self._o3d.utility.VerbosityLevel.Error):
            vis.poll_events()
            vis.update_renderer()
            ref = (np.clip(np.asarray(vis.capture_screen_float_buffer(do_render=False)), 0, 1) * 255 + 0.5)
        buf = np.full((self.height, self.width, 3), 255 - np.uint8(ref[0, 0, 0]), np.uint8)
        gl.glPixelStorei(_GL_PACK_ALIGNMENT, 1)
        gl.glReadPixels(0, 0, self.width, self.height, _GL_RGB, _GL_UNSIGNED_BYTE, buf.ctypes.data)
        if ref.shape != buf.shape or np.abs(ref.astype(np.int16) - buf[::-1]).max() > 1:
            log.info("direct GL read-back differs from Open3D's capture; using the float capture")
            return None
        return gl

    def _check_thread(self) -> None:
        if threading.get_ident() != self._thread:
            raise RuntimeError("MeshRenderer is thread-confined: use it from the thread that created it")

    def _camera_view(self, meshes, camera, view) -> tuple[np.ndarray, np.ndarray]:
        if camera is None:
            camera = Camera.default_for(self.width, self.height)
            if view is None and meshes:
                view = _auto_view(meshes, camera, self.width, self.height)
        fx, fy, cx, cy = _intrinsics(camera, self.width, self.height)
        K = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]], np.float64)
        return K, (np.eye(4) if view is None else np.asarray(view, np.float64))

    def render_with_mask(
        self, meshes: Sequence[MeshSpec], camera: Camera | None = None, view: np.ndarray | None = None,
        near: float | None = None, far: float | None = None, cull: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rgb (H, W, 3) uint8, mask (H, W) bool, depth (H, W) float32 metres, 0 where empty).

        ``near`` / ``far``: clip planes (metres; default 1 mm and 10 km). A 3-D view passes its scene's
        extent (``io.scene3d.OrbitCamera.near_far``) for a precise depth buffer. ``cull``: skip back faces
        (Open3D) of meshes that are all closed and wound outwards (``cullable``: SMPL and Anny bodies; anything
        else is drawn two-sided as before). They look the same — one pixel of 50,000 differed on an Anny body —
        and draw about 25 % faster on a software rasteriser; overlays use it."""
        self._check_thread()
        K, T = self._camera_view(meshes, camera, view)
        if self.backend == "open3d":
            return self._render_open3d(meshes, K, T, near, far, cull)
        moved = [(_apply(T, np.asarray(v, np.float64)), f, c) for v, f, c in meshes]
        return rasterize(moved, K, self.width, self.height, self.background, z_near=near or 1e-3)

    def render_layer(
        self, meshes: Sequence[MeshSpec], camera: Camera | None = None, view: np.ndarray | None = None,
        near: float | None = None, far: float | None = None, cull: bool = False, margin: int = 2,
    ) -> tuple[int, int, np.ndarray, np.ndarray, np.ndarray]:
        """``render_with_mask`` cropped to where the meshes can be: (y0, x0, rgb, mask, depth) of the rectangle
        from row y0, column x0 that holds their projected vertices plus ``margin`` pixels (the whole picture
        when a vertex is behind the near plane). Only that rectangle is read back: an overlay's layer of one
        person reads a person-sized box, not the photo."""
        self._check_thread()
        K, T = self._camera_view(meshes, camera, view)
        rect = _projected_rect(meshes, K, T, self.width, self.height, near or 1e-3, margin)
        if rect is None:
            return 0, 0, np.zeros((0, 0, 3), np.uint8), np.zeros((0, 0), bool), np.zeros((0, 0), np.float32)
        x0, y0, x1, y1 = rect
        if self.backend == "open3d":
            rgb, mask, depth = self._render_open3d(meshes, K, T, near, far, cull, rect)
            return y0, x0, rgb, mask, depth
        moved = [(_apply(T, np.asarray(v, np.float64)), f, c) for v, f, c in meshes]
        rgb, mask, depth = rasterize(moved, K, self.width, self.height, self.background, z_near=near or 1e-3)
        return y0, x0, rgb[y0:y1 + 1, x0:x1 + 1], mask[y0:y1 + 1, x0:x1 + 1], depth[y0:y1 + 1, x0:x1 + 1]

    def render(self, meshes: Sequence[MeshSpec], camera: Camera | None = None,
               view: np.ndarray | None = None) -> np.ndarray:
        """(H, W, 3) uint8 RGB rendering of ``meshes`` over the background colour."""
        return self.render_with_mask(meshes, camera, view)[0]

    def _render_open3d(self, meshes, K, T, near=None, far=None, cull=False, rect=None):
        # render_with_mask keeps its content-digest semantics: arrays changed in place are uploaded again. New
        # vertices on the same faces (an edited person) update the kept meshes in place, as render_frame does.
        keys = self._geometry_key(meshes)
        old = getattr(self, "_geometry", None)
        if keys != old:
            if old is not None and len(old) == len(keys) == len(self._slots) and not self._line_slot and all(
                    o[1] == k[1] for o, k in zip(old, keys)):
                for s in self._slots:
                    s[1] = None  # the vertices (and colours, compared by value) are uploaded again, the faces kept
            else:
                self._drop_slots()
            self._geometry = keys
        with self._o3d.utility.VerbosityContextManager(self._o3d.utility.VerbosityLevel.Error):
            cull = cull and all(cullable(v, f) for v, f, _ in meshes)  # (a rigid view keeps outward outward)
            self._options(cull=cull, smooth=False)
            rgb, depth = self._frame_open3d(meshes, None, K, T, near, far, True, rect)
        mask = depth > 0
        return rgb, mask, depth

    @staticmethod
    def _geometry_key(meshes) -> tuple:
        """Per mesh: digests of its vertices and faces, and its colour (``render_with_mask``: vertices may have
        changed in place; a faces array is digested once, as everywhere here: topologies are not edited in place)."""
        import hashlib

        def digest(a: np.ndarray) -> bytes:
            h = hashlib.blake2b(digest_size=16)
            h.update(str(a.shape).encode())
            h.update(a.data)
            return h.digest()

        return tuple((digest(np.ascontiguousarray(v, np.float32)), _faces_digest(f),
                      tuple(float(x) for x in _rgb01(c))) for v, f, c in meshes)

    def render_frame(
        self, meshes: Sequence[MeshSpec], camera: Camera | None = None, view: np.ndarray | None = None,
        near: float | None = None, far: float | None = None, lines: LineSpec | None = None,
        depth: bool | tuple[int, int, int, int] = False, cull: bool = False, twin: bool = False,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """(rgb (H, W, 3) uint8, depth (H, W) float32 metres or None): the fast path of a 3-D view.

        ``lines``: (segments (N, 2, 3), colours (N, 3) uint8, widths px (N,)) drawn depth-tested with the
        meshes (Open3D: ``LineSet`` geometry in the GL scene, one line width for all; numpy: drawn into the
        z-buffer at their widths). ``depth``: also return the depth buffer (with the lines in it); a rectangle
        ``(x0, y0, x1, y1)`` (pixels, inclusive, top-left origin) returns only that part of it, (y1 - y0 + 1,
        x1 - x0 + 1), read back alone (a 3-D view's photo covers a small part of the picture). ``cull``:
        skip back faces (Open3D; closed, outward-wound meshes such as bodies look the same and draw in about
        half the time on a software rasteriser; the numpy backend draws both sides either way). ``twin``: draw
        in a second Open3D window of the same size that keeps its own geometry (created on first use): a view
        alternating between two geometry sets (reduced detail while moving, full detail when still) then
        uploads neither again at each switch (about 50-90 ms for 10 bodies).

        Geometry is kept between calls by identity: a mesh whose vertices, faces and colour are the same
        objects as last time is not touched (an orbiting camera re-uploads nothing); new vertices with the
        same faces update the kept mesh in place (video playback); so arrays must not be changed in place
        (pass new ones). The picture is read back as bytes (no float buffer, no depth unless asked)."""
        self._check_thread()
        if twin and self.backend == "open3d":
            if self._vis is None:
                raise RuntimeError("renderer is closed")
            if self._twin is None:
                self._twin = MeshRenderer(self.width, self.height, backend="open3d", background=self.background)
            return self._twin.render_frame(meshes, camera, view, near, far, lines, depth, cull)
        K, T = self._camera_view(meshes, camera, view)
        if self.backend == "open3d":
            with self._o3d.utility.VerbosityContextManager(self._o3d.utility.VerbosityLevel.Error):
                self._geometry = None  # render_with_mask's digest no longer describes the kept geometry
                self._options(cull=cull, smooth=True)
                return self._frame_open3d(meshes, lines, K, T, near, far, depth)
        moved = [(_apply(T, np.asarray(v, np.float64)), f, c) for v, f, c in meshes]
        rgb, _, zbuf = rasterize(moved, K, self.width, self.height, self.background, z_near=near or 1e-3)
        if lines is not None and len(lines[0]):
            draw_lines(rgb, zbuf, lines, K, T, near or 1e-3)
        if isinstance(depth, tuple):
            x0, y0, x1, y1 = self._rect(depth)
            return rgb, np.ascontiguousarray(zbuf[y0:y1 + 1, x0:x1 + 1])
        return rgb, (zbuf if depth else None)

    def _rect(self, rect: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
        x0, y0, x1, y1 = (int(v) for v in rect)
        x0, x1 = max(0, min(x0, self.width - 1)), max(0, min(x1, self.width - 1))
        y0, y1 = max(0, min(y0, self.height - 1)), max(0, min(y1, self.height - 1))
        if x1 < x0 or y1 < y0:
            raise ValueError(f"empty depth rectangle {rect}")
        return x0, y0, x1, y1

    def _options(self, cull: bool, smooth: bool) -> None:
        """Back-face culling and smooth shading, changed only when they differ from the last frame's: a change
        makes the legacy renderer bind every geometry's buffers again (as slow as a new upload)."""
        if getattr(self, "_opts", None) == (cull, smooth):
            return
        opt = self._vis.get_render_option()
        opt.mesh_show_back_face = not cull
        shade = self._o3d.visualization.MeshShadeOption
        opt.mesh_shade_option = shade.Color if smooth else shade.Default  # Color: smooth (vertex normals)
        self._opts = (cull, smooth)

    # Open3D geometry kept between frames: one slot per mesh index, one for the lines
    def _drop_slots(self) -> None:
        if self._vis is not None:
            self._vis.clear_geometries()
        self._slots: list[list[Any]] = []
        self._line_slot: list[Any] | None = None
        self._thick_slot: list[Any] | None = None

    def _add(self, g: Any) -> None:
        # reset_bounding_box: without it the legacy Visualizer draws nothing (its view volume stays empty)
        self._vis.add_geometry(g, reset_bounding_box=True)

    def _sync_meshes(self, meshes: Sequence[MeshSpec]) -> None:
        o3d, vis = self._o3d, self._vis
        slots = self._slots
        for i, (v, f, c) in enumerate(meshes):
            col = tuple(float(x) for x in _rgb01(c))
            s = slots[i] if i < len(slots) else None
            if s is not None and s[1] is v and s[2] is f and s[3] == col:
                continue  # unchanged: nothing to upload
            if s is not None and len(s[0].vertices) == len(v):
                # the same vertex set: new positions and/or another face list of it (a person's level of detail
                # changed) into the kept mesh, instead of a new one (Open3D's add_geometry: ~1.3 ms a body)
                g = s[0]
                same_faces = s[2] is f or (np.shape(s[2]) == np.shape(f) and np.array_equal(s[2], f))
                if not same_faces:
                    g.triangles = o3d.utility.Vector3iVector(np.array(f, np.int32).reshape(-1, 3))
                if s[1] is not v:
                    g.vertices = o3d.utility.Vector3dVector(np.asarray(v, np.float64).reshape(-1, 3))
                    self._normals(g, v, f)
                elif not same_faces:
                    self._normals(g, v, f, s[2])
                if s[3] != col:
                    g.paint_uniform_color(col)
                vis.update_geometry(g)
                slots[i] = [g, v, f, col]
                continue
            g = o3d.geometry.TriangleMesh(
                o3d.utility.Vector3dVector(np.asarray(v, np.float64).reshape(-1, 3)),
                o3d.utility.Vector3iVector(np.array(f, np.int32).reshape(-1, 3)),  # copy: o3d needs writeable
            )
            g.paint_uniform_color(col)
            self._normals(g, v, f)
            if s is not None:
                vis.remove_geometry(s[0], reset_bounding_box=False)
                slots[i] = [g, v, f, col]
            else:
                slots.append([g, v, f, col])
            self._add(g)
        while len(slots) > len(meshes):
            vis.remove_geometry(slots.pop()[0], reset_bounding_box=False)

    def _normals(self, g: Any, v: np.ndarray, f: Any, was: Any = None) -> None:
        """Vertex normals of a kept mesh; a reduced face list gets its full topology's (smooth shading),
        computed by Open3D on a helper mesh of that topology (numpy would take ~3 ms a body). ``was``: the
        mesh's face list before ``f``, its vertices unchanged: when both are face lists of the same topology,
        its vertex normals stay (only the faces' normals are new)."""
        topology = _full_faces(f)
        if topology is not None and was is not None and g.has_vertex_normals():
            before = _full_faces(was)
            before = was if before is None else before
            if before is topology or (np.shape(before) == topology.shape and np.array_equal(before, topology)):
                g.compute_triangle_normals()
                return
        if topology is None:
            g.compute_vertex_normals()
            return
        o3d = self._o3d
        helpers = self.__dict__.setdefault("_normal_helpers", {})
        h = helpers.get(id(topology))
        if h is None or h[0] is not topology:
            h = helpers[id(topology)] = (topology, o3d.geometry.TriangleMesh(
                o3d.utility.Vector3dVector(np.asarray(v, np.float64).reshape(-1, 3)),
                o3d.utility.Vector3iVector(np.asarray(topology, np.int32))))
        full = h[1]
        if len(full.vertices) != len(g.vertices):
            g.compute_vertex_normals()
            return
        full.vertices = g.vertices
        full.compute_vertex_normals()
        g.compute_triangle_normals()  # the legacy renderer lights a mesh only when it has both
        g.vertex_normals = full.vertex_normals

    def _sync_lines(self, lines: LineSpec | None, K: np.ndarray, T: np.ndarray) -> None:
        """Lines of width 1 as one ``LineSet`` kept while they do not change; wider ones (few: axes, tracks,
        markers) as parallel copies one pixel apart, re-placed for each view."""
        if lines is None or len(lines[0]) == 0:
            segs, cols, widths = np.zeros((0, 2, 3)), np.zeros((0, 3)), np.zeros(0, int)
        else:
            segs = np.asarray(lines[0], np.float64).reshape(-1, 2, 3)
            cols = np.asarray(lines[1], np.float64).reshape(-1, 3)
            widths = np.asarray(lines[2], int).reshape(-1)
        cols = cols / 255.0 if cols.max(initial=0) > 1 else cols
        thin = widths <= 1
        self._line_slot = self._put_lines(self._line_slot, segs[thin], cols[thin])
        thick_segs, thick_cols = _widened(segs[~thin], cols[~thin], widths[~thin], K, T)
        self._thick_slot = self._put_lines(getattr(self, "_thick_slot", None), thick_segs, thick_cols)

    def _put_lines(self, slot: list[Any] | None, segs: np.ndarray, cols: np.ndarray) -> list[Any] | None:
        o3d, vis = self._o3d, self._vis
        if slot is not None and slot[1].shape == segs.shape and np.array_equal(slot[1], segs) \
                and np.array_equal(slot[2], cols):
            return slot  # unchanged: kept on the GL side
        if slot is not None and len(segs) and slot[1].shape == segs.shape:
            g = slot[0]  # same count: new positions in place
            g.points = o3d.utility.Vector3dVector(segs.reshape(-1, 3))
            g.colors = o3d.utility.Vector3dVector(cols)
            vis.update_geometry(g)
            return [g, segs, cols]
        if slot is not None:
            vis.remove_geometry(slot[0], reset_bounding_box=False)
        if len(segs) == 0:
            return None
        g = o3d.geometry.LineSet(o3d.utility.Vector3dVector(segs.reshape(-1, 3)),
                                 o3d.utility.Vector2iVector(np.arange(2 * len(segs), dtype=np.int32).reshape(-1, 2)))
        g.colors = o3d.utility.Vector3dVector(cols)
        self._add(g)
        return [g, segs, cols]

    def _frame_open3d(self, meshes, lines, K, T, near, far, want_depth, rgb_rect=None):
        o3d, vis = self._o3d, self._vis
        if vis is None:
            raise RuntimeError("renderer is closed")
        if self._ctx is not None:
            self._ctx.make_current()  # closing another renderer leaves no context current (a garbage picture)
        if not hasattr(self, "_slots"):
            self._drop_slots()
        self._sync_meshes(meshes)
        self._sync_lines(lines, K, T)
        # the legacy renderer places its lights from the view's bounding box, which neither updating a kept
        # mesh nor clearing geometry resets: without this, a picture's lighting depends on what was drawn
        # before. (The camera is set below, so resetting the view costs only the box.)
        vis.reset_view_point(True)
        ctr = vis.get_view_control()
        params = o3d.camera.PinholeCameraParameters()
        params.intrinsic = o3d.camera.PinholeCameraIntrinsic(
            self.width, self.height, K[0, 0], K[1, 1], K[0, 2], K[1, 2])
        params.extrinsic = T
        ctr.convert_from_pinhole_camera_parameters(params, allow_arbitrary=True)
        n, f = near or 1e-3, far or 1e4
        ctr.set_constant_z_near(n)
        ctr.set_constant_z_far(f)
        # flag a redraw, then poll: the poll draws this frame now and makes this window's GL context current
        # (the byte read-back below reads the current context; another renderer may have been used or closed
        # since)
        vis.update_renderer()
        vis.poll_events()
        if rgb_rect is not None:
            rgb = self._read_rgb(self._rect(rgb_rect))
            return rgb, self._read_depth(n, f, self._rect(rgb_rect))
        rgb = self._read_rgb()
        if rgb.shape[:2] != (self.height, self.width):
            raise RuntimeError(f"Open3D rendered {rgb.shape[1]}x{rgb.shape[0]}, expected {self.width}x{self.height}")
        if want_depth is False or want_depth is None:
            return rgb, None
        return rgb, self._read_depth(n, f, self._rect(want_depth) if isinstance(want_depth, tuple) else None)

    def _read_rgb(self, rect: tuple[int, int, int, int] | None = None) -> np.ndarray:
        """The rendered picture as bytes: ``glReadPixels(GL_UNSIGNED_BYTE)`` on the Visualizer's context (about
        2 ms at 1280x720 on llvmpipe, against 20+ ms for Open3D's float capture and its conversion), else the
        float capture when the direct read was not verified at start-up."""
        x0, y0, x1, y1 = rect or (0, 0, self.width - 1, self.height - 1)
        gl = self._gl
        if gl is not None and rect is None and _cv2() is not None:
            # the whole picture: llvmpipe's own BGRA layout is a plain copy (~0.6 ms at 1280x720, RGB packing
            # ~2.3 ms), then one OpenCV pass to RGB and one to flip the rows (~1.2 ms; numpy's ~10 ms)
            cv2 = _cv2()
            buf = np.empty((self.height, self.width, 4), np.uint8)
            gl.glPixelStorei(_GL_PACK_ALIGNMENT, 4)
            gl.glReadPixels(0, 0, self.width, self.height, _GL_BGRA, _GL_UNSIGNED_BYTE, buf.ctypes.data)
            return cv2.flip(cv2.cvtColor(buf, cv2.COLOR_BGRA2RGB), 0)
        if gl is not None:
            buf = np.empty((y1 - y0 + 1, x1 - x0 + 1, 3), np.uint8)
            gl.glPixelStorei(_GL_PACK_ALIGNMENT, 1)
            gl.glReadPixels(x0, self.height - 1 - y1, x1 - x0 + 1, y1 - y0 + 1, _GL_RGB, _GL_UNSIGNED_BYTE,
                            buf.ctypes.data)
            return np.ascontiguousarray(buf[::-1])
        img = np.asarray(self._vis.capture_screen_float_buffer(do_render=False))[y0:y1 + 1, x0:x1 + 1]
        return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)

    def _read_depth(self, near: float, far: float, rect: tuple[int, int, int, int] | None = None) -> np.ndarray:
        """Metric depth (H, W) float32, 0 where nothing was drawn; only ``rect`` (x0, y0, x1, y1, inclusive,
        top-left origin) of it when given."""
        x0, y0, x1, y1 = rect or (0, 0, self.width - 1, self.height - 1)
        gl = self._gl
        if gl is None:
            d = np.asarray(self._vis.capture_depth_float_buffer(do_render=False), np.float32)
            return np.ascontiguousarray(np.where(d > 0, d, 0).astype(np.float32)[y0:y1 + 1, x0:x1 + 1])
        w, h = x1 - x0 + 1, y1 - y0 + 1
        buf = np.empty((h, w), np.float32)
        gl.glPixelStorei(_GL_PACK_ALIGNMENT, 1)
        # GL's rows count from the bottom
        gl.glReadPixels(x0, self.height - 1 - y1, w, h, _GL_DEPTH_COMPONENT, _GL_FLOAT, buf.ctypes.data)
        d = buf[::-1]
        # the perspective depth buffer back to metres (as Open3D's capture_depth_float_buffer does)
        z = np.float32(2 * near * far) / (np.float32(far + near) - (2 * d - 1) * np.float32(far - near))
        z[d >= 1] = 0
        return np.ascontiguousarray(z, np.float32)

    def render_overlay(self, image: np.ndarray, results: Sequence[MeshResult | Any], alpha: float = 0.6,
                       colors: Sequence[Sequence[float]] | None = None) -> np.ndarray:
        """Blend the meshes of ``results`` over ``image`` (H, W, 3) uint8 where they cover it. Person ``i``
        gets ``colors[i]`` or ``person_color(track_id or i)``; the camera is the first result's. Entries
        that are not ``MeshResult`` (None, an ``EstimationError``) are skipped."""
        img = np.asarray(image)
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"image must be (H, W, 3) uint8, got {img.shape} {img.dtype}")
        if img.shape[:2] != (self.height, self.width):
            raise ValueError(f"image is {img.shape[1]}x{img.shape[0]} but the renderer is {self.width}x{self.height}")
        meshes, camera = [], None
        for i, r in enumerate(results):
            if not isinstance(r, MeshResult):  # None or a person's EstimationError: nothing to draw
                continue
            camera = camera or r.camera
            col = colors[i % len(colors)] if colors else person_color(r.track_id if r.track_id is not None else i)
            meshes.append((r.vertices, r.faces, col))
        if not meshes:
            return img.copy()
        rgb, mask, _ = self.render_with_mask(meshes, camera, None, cull=True)
        a = float(np.clip(alpha, 0.0, 1.0))
        out = img.astype(np.float32)
        out[mask] = (1 - a) * out[mask] + a * rgb[mask].astype(np.float32)
        return (out + 0.5).astype(np.uint8)

    def close(self) -> None:
        """Release the renderer. With Open3D 0.20 (headless EGL), destroying one Visualizer's window leaves every
        other Visualizer of the process without a usable GL context (they then return garbage pictures), so a
        window is only destroyed once no other Open3D renderer of this thread is open; until then it is kept,
        hidden and unused."""
        if self._twin is not None:
            self._twin.close()
            self._twin = None
        if self._vis is not None:
            vis, self._vis = self._vis, None
            self._slots, self._line_slot, self._thick_slot = [], None, None
            live = _OPEN.get(self._thread, [])
            if self in live:
                live.remove(self)
            held = _HELD.setdefault(self._thread, [])
            held.append(vis)
            if not live:
                for v in held:
                    v.destroy_window()
                held.clear()

    def __enter__(self) -> MeshRenderer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def render_overlay(image: np.ndarray, results: Sequence[MeshResult | Any], alpha: float = 0.6,
                   renderer: MeshRenderer | None = None, backend: str = "auto") -> np.ndarray:
    """Blend the meshes of ``results`` over ``image`` (H, W, 3) uint8 -> (H, W, 3) uint8.

    Pass a ``renderer`` of the image's size to reuse it: creating an Open3D one costs 0.3-2 s (the first
    also imports Open3D), so a loop over video frames must create one ``MeshRenderer`` and pass it;
    without one, a renderer is created and closed here.
    """
    if renderer is not None:
        return renderer.render_overlay(image, results, alpha)
    h, w = np.asarray(image).shape[:2]
    with MeshRenderer(w, h, backend=backend) as r:
        return r.render_overlay(image, results, alpha)
