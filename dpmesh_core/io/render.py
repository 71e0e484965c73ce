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

__all__ = ["MeshRenderer", "render_overlay", "rasterize", "PERSON_COLORS", "person_color"]

# Per-person colours (RGB in [0, 1]), chosen to read well over photos.
PERSON_COLORS = (
    (0.55, 0.75, 1.00), (1.00, 0.70, 0.45), (0.60, 0.90, 0.55), (1.00, 0.60, 0.75), (0.80, 0.70, 1.00),
    (0.95, 0.90, 0.45), (0.50, 0.90, 0.90), (0.90, 0.55, 0.55), (0.75, 0.85, 0.65), (0.85, 0.75, 0.60),
)

MeshSpec = tuple[np.ndarray, np.ndarray, Sequence[float]]


def person_color(index: int) -> tuple[float, float, float]:
    """Colour of person ``index`` (or track id) from ``PERSON_COLORS``."""
    return PERSON_COLORS[int(index) % len(PERSON_COLORS)]


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


# ---------------------------------------------------------------------------------------------------------
# renderer


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
        near: float | None = None, far: float | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rgb (H, W, 3) uint8, mask (H, W) bool, depth (H, W) float32 metres, 0 where empty).

        ``near`` / ``far``: clip planes (metres; default 1 mm and 10 km). A 3-D view passes its scene's
        extent (``io.scene3d.OrbitCamera.near_far``) for a precise depth buffer."""
        self._check_thread()
        K, T = self._camera_view(meshes, camera, view)
        if self.backend == "open3d":
            return self._render_open3d(meshes, K, T, near, far)
        moved = [(_apply(T, np.asarray(v, np.float64)), f, c) for v, f, c in meshes]
        return rasterize(moved, K, self.width, self.height, self.background, z_near=near or 1e-3)

    def render(self, meshes: Sequence[MeshSpec], camera: Camera | None = None,
               view: np.ndarray | None = None) -> np.ndarray:
        """(H, W, 3) uint8 RGB rendering of ``meshes`` over the background colour."""
        return self.render_with_mask(meshes, camera, view)[0]

    def _render_open3d(self, meshes, K, T, near=None, far=None):
        o3d = self._o3d
        with o3d.utility.VerbosityContextManager(o3d.utility.VerbosityLevel.Error):
            return self._render_open3d_inner(meshes, K, T, near, far)

    @staticmethod
    def _geometry_key(meshes) -> bytes:
        """Digest of the meshes' arrays and colours: an unchanged scene (a 3-D view orbiting) keeps its
        geometry on the GPU side instead of being rebuilt."""
        import hashlib

        h = hashlib.blake2b(digest_size=16)
        for v, f, c in meshes:
            for a in (np.ascontiguousarray(v, np.float32), np.ascontiguousarray(f, np.int32)):
                h.update(str(a.shape).encode())
                h.update(a.data)
            h.update(repr(tuple(float(x) for x in _rgb01(c))).encode())
        return h.digest()

    def _render_open3d_inner(self, meshes, K, T, near=None, far=None):
        o3d, vis = self._o3d, self._vis
        if vis is None:
            raise RuntimeError("renderer is closed")
        key = self._geometry_key(meshes)
        if key != getattr(self, "_geometry", None):
            vis.clear_geometries()
            self._geometry = None
            for v, f, c in meshes:
                m = o3d.geometry.TriangleMesh(
                    o3d.utility.Vector3dVector(np.asarray(v, np.float64).reshape(-1, 3)),
                    o3d.utility.Vector3iVector(np.array(f, np.int32).reshape(-1, 3)),  # copy: o3d needs writeable
                )
                m.paint_uniform_color(_rgb01(c))
                m.compute_vertex_normals()
                vis.add_geometry(m, reset_bounding_box=True)
            self._geometry = key
        ctr = vis.get_view_control()
        params = o3d.camera.PinholeCameraParameters()
        params.intrinsic = o3d.camera.PinholeCameraIntrinsic(
            self.width, self.height, K[0, 0], K[1, 1], K[0, 2], K[1, 2])
        params.extrinsic = T
        ctr.convert_from_pinhole_camera_parameters(params, allow_arbitrary=True)
        ctr.set_constant_z_near(near or 1e-3)
        ctr.set_constant_z_far(far or 1e4)
        vis.poll_events()
        vis.update_renderer()
        img = np.asarray(vis.capture_screen_float_buffer(do_render=False))
        depth = np.asarray(vis.capture_depth_float_buffer(do_render=False), np.float32)
        if img.shape[:2] != (self.height, self.width):
            raise RuntimeError(f"Open3D rendered {img.shape[1]}x{img.shape[0]}, expected {self.width}x{self.height}")
        mask = depth > 0
        rgb = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
        return rgb, mask, np.where(mask, depth, 0).astype(np.float32)

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
        rgb, mask, _ = self.render_with_mask(meshes, camera, None)
        a = float(np.clip(alpha, 0.0, 1.0))
        out = img.astype(np.float32)
        out[mask] = (1 - a) * out[mask] + a * rgb[mask].astype(np.float32)
        return (out + 0.5).astype(np.uint8)

    def close(self) -> None:
        if self._vis is not None:
            try:
                self._vis.destroy_window()
            finally:
                self._vis = None

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
