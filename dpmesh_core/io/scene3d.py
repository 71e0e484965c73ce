"""The 3-D scene of one frame, headless: what the app's 3-D view and ``dpmesh predict --views`` draw.

World frame = the photo camera's frame (OpenCV: x right, y down, z forward, metres), so the persons'
meshes are used as estimated.

* ``fit_ground(results)``: a robust ground plane under the persons' soles (iteratively reweighted least
  squares, Tukey weights), or None without evidence (fewer than two persons with visible legs, a steep or
  loose fit).
* ``OrbitCamera``: the free camera: orbit (turntable about the world's up, pitch about the view's right
  axis, no roll), pan, zoom about a pivot (the scene centre), ``reset`` to the photo's own camera, preset
  views (``camera``, ``side`` from +x, ``top`` from above with the photo camera at the bottom of the
  picture), intrinsics filling any output size (the photo's field of view fits the target), near/far from
  the scene's extent.
* ``Scene`` + ``render_scene(renderer, scene, view_camera)``: persons (colour, selected highlighted,
  low-confidence faint, hidden ones left out), the ground with a 1 m grid, axes, the photo camera as a
  frustum with the photo on its far plane, tracks' trajectories on the ground and labels; the meshes go
  through the given ``MeshRenderer`` (Open3D or numpy), lines / the photo / labels are drawn afterwards in
  numpy against its depth buffer.
* ``depth_order(scene)``: persons sorted by distance to the photo camera (metres).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

import numpy as np

from ..geometry import point_box
from ..types import Camera, MeshResult

__all__ = [
    "GroundPlane", "fit_ground", "OrbitCamera", "ScenePerson", "Scene", "ViewCamera", "render_scene",
    "depth_order", "scene_persons", "scene_meshes", "preset_view", "thumbnail", "ViewsWriter", "PRESETS",
    "VIEW_PRESETS", "VIEW_BACKGROUND", "lod_meshes", "scene_lines", "LodBudget",
]

PRESETS = ("camera", "side", "top")
VIEW_PRESETS = PRESETS
VIEW_BACKGROUND = (0.11, 0.118, 0.133)  # the 3-D view's background (dark: the persons' colours read well)
UP_PRIOR = np.array([0.0, -1.0, 0.0])  # a camera held roughly level: world up is -y


# ------------------------------------------------------------------------------------------------ ground
@dataclass(frozen=True)
class GroundPlane:
    """``normal`` (3,) unit, pointing up (towards the heads); ``point`` (3,) on the plane under the
    persons' feet; ``residual_m``: median distance of the inlying sole points; ``persons``: how many
    persons' feet support it."""

    normal: np.ndarray
    point: np.ndarray
    residual_m: float
    persons: int

    def height(self, x: np.ndarray) -> np.ndarray:
        """Signed height (metres) of points ``x`` (..., 3) above the plane."""
        return (np.asarray(x, np.float64) - self.point) @ self.normal

    def project(self, x: np.ndarray) -> np.ndarray:
        """Points ``x`` (..., 3) dropped onto the plane."""
        x = np.asarray(x, np.float64)
        return x - self.height(x)[..., None] * self.normal


def _sole_points(v: np.ndarray, up: np.ndarray, n: int = 40) -> np.ndarray:
    """The lowest vertices of one mesh along ``up`` (within 3 % of its height above its lowest point)."""
    h = v @ up
    lo, hi = float(h.min()), float(h.max())
    sel = v[h <= lo + 0.03 * max(hi - lo, 1e-3)]
    if len(sel) > n:
        sel = sel[np.linspace(0, len(sel) - 1, n).astype(int)]
    return sel


_SOLES_KEPT: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # id(vertices) -> (them, soles along UP_PRIOR)


def _prior_soles(v: np.ndarray) -> np.ndarray:
    """``_sole_points(v, UP_PRIOR)``, kept for the last few meshes (refitting after one person's edit)."""
    from .render import kept_by_identity

    return kept_by_identity(_SOLES_KEPT, v, lambda: _sole_points(np.asarray(v, np.float64), UP_PRIOR))


def _has_feet(r: MeshResult) -> bool:
    q = r.quality
    return q is None or not q.legs_inferred


def fit_ground(results: Sequence[Any], max_tilt_deg: float = 40.0, max_residual_m: float = 0.08,
               min_persons: int = 2) -> GroundPlane | None:
    """A plane under the soles of the persons whose legs were seen (``MeshResult.quality.legs_inferred``
    False), robust to a person who is not standing on it (IRLS with Tukey's biweight on the sole points;
    the plane is ``y = a x + b z + c`` in the camera frame, lightly regularised towards level).

    None when fewer than ``min_persons`` persons have visible feet, the plane tilts more than
    ``max_tilt_deg`` from the camera's level, or the inlying soles lie more than ``max_residual_m`` from it.
    """
    meshes = [r.vertices for r in results
              if isinstance(r, MeshResult) and _has_feet(r) and np.isfinite(r.vertices).all()]
    if len(meshes) < min_persons:
        return None
    up = UP_PRIOR.copy()
    plane = None
    for rnd in range(2):  # soles along the prior's up, then along the fitted plane's
        pts = [_prior_soles(v) if rnd == 0 else _sole_points(np.asarray(v, np.float64), up) for v in meshes]
        owner = np.concatenate([np.full(len(p), i) for i, p in enumerate(pts)])
        P = np.concatenate(pts)
        A = np.stack([P[:, 0], P[:, 2], np.ones(len(P))], 1)
        y = P[:, 1]
        w = np.ones(len(P))
        # each person counts once, however many sole points it has
        w_person = 1.0 / np.bincount(owner)[owner]
        lam = np.diag([0.05, 0.05, 0.0])  # a little towards level (the 2-person case rolls freely otherwise)
        coef = np.zeros(3)
        for _ in range(12):
            W = w * w_person
            coef = np.linalg.solve(A.T @ (A * W[:, None]) + lam, A.T @ (W * y))
            res = y - A @ coef
            c = max(4.685 * 1.4826 * float(np.median(np.abs(res))), 0.05)
            u = np.clip(res / c, -1, 1)
            w = (1 - u ** 2) ** 2
        a, b, c0 = coef
        normal = np.array([a, -1.0, b])
        normal /= np.linalg.norm(normal)  # points to -y: up
        inl = np.abs(res) * abs(normal[1]) < max(max_residual_m, 1e-6)
        persons = len(np.unique(owner[inl]))
        point = P[inl].mean(0) if inl.any() else P.mean(0)
        point = point - ((point - np.array([0.0, c0, 0.0])) @ normal) * normal
        resid = float(np.median(np.abs(res[inl]) * abs(normal[1]))) if inl.any() else float("inf")
        plane = GroundPlane(normal, point, resid, persons)
        up = normal
    assert plane is not None
    tilt = np.degrees(np.arccos(np.clip(plane.normal @ UP_PRIOR, -1, 1)))
    if tilt > max_tilt_deg or plane.residual_m > max_residual_m or plane.persons < min_persons:
        return None
    return plane


# ------------------------------------------------------------------------------------------------ scene
@dataclass(frozen=True)
class ScenePerson:
    """One person to draw: mesh (camera frame, metres), colour RGB 0..1, label, state."""

    key: int
    vertices: np.ndarray
    faces: np.ndarray
    color: tuple[float, float, float]
    label: str = ""
    low_confidence: bool = False
    selected: bool = False

    @cached_property
    def bounds(self) -> np.ndarray:
        """(2, 3) lowest and highest corner of the mesh's box (computed once per person)."""
        return point_box(self.vertices)  # (no float64 copy of the vertices)

    @cached_property
    def sample(self) -> np.ndarray:
        """Every 7th vertex (float64): enough to frame the person."""
        return np.asarray(self.vertices, np.float64)[::7]


@dataclass(frozen=True)
class Scene:
    """What one 3-D picture shows. ``persons``: the visible ones (show/hide/solo already applied);
    ``photo``/``photo_camera``: the frame and its camera (the frustum; a thumbnail is enough);
    ``trajectories``: [(points (N, 3) metres, colour, current index or -1)] drawn on the ground."""

    persons: tuple[ScenePerson, ...]
    photo_camera: Camera
    ground: GroundPlane | None = None
    photo: np.ndarray | None = None
    trajectories: tuple = ()
    show_ground: bool = True
    show_axes: bool = True
    show_frustum: bool = True
    show_labels: bool = True
    grid_step_m: float = 1.0
    background: tuple[float, float, float] = VIEW_BACKGROUND

    def points(self) -> np.ndarray:
        """Points bounding what is drawn: the persons, the ground's extent, the photo camera."""
        pts = [np.zeros((1, 3))]
        for p in self.persons:
            pts.append(p.bounds)
        if self.show_ground and self.ground is not None:
            pts.append(_ground_quad(self)[0])
        if self.show_frustum:
            pts.append(_frustum(self)[0])
        return np.concatenate(pts)

    def required_points(self) -> np.ndarray:
        """What the near plane must never cut: the persons' boxes, the photo camera and its frustum."""
        pts = [np.zeros((1, 3))]
        for p in self.persons:
            lo, hi = p.bounds
            pts.append(np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])]))
        if self.show_frustum:
            pts.append(_frustum(self)[0])
        return np.concatenate(pts)

    def person_points(self) -> np.ndarray:
        if not self.persons:
            return np.zeros((1, 3))
        return np.concatenate([p.sample for p in self.persons])

    def centre(self) -> np.ndarray:
        """The orbit pivot: the centre of the persons' bounding box (the photo camera's origin + 3 m ahead
        when there is no person)."""
        if not self.persons:
            return np.array([0.0, 0.0, 3.0])
        b = np.concatenate([p.bounds for p in self.persons])
        return (b.min(0) + b.max(0)) / 2


def scene_persons(results: Sequence[Any], colors: Sequence[Sequence[float]], labels: Sequence[str] | None = None,
                  keys: Sequence[int] | None = None, selected: int | None = None,
                  hidden: Sequence[int] = (), solo: int | None = None) -> tuple[ScenePerson, ...]:
    """``ScenePerson``s of the ``MeshResult``s among ``results`` (others skipped; ``colors[i]`` /
    ``labels[i]`` / ``keys[i]`` belong to ``results[i]``), with show/hide (``hidden`` keys) and ``solo`` (only
    that key) applied."""
    out = []
    for i, r in enumerate(results):
        if not isinstance(r, MeshResult):
            continue
        key = int(keys[i]) if keys is not None else i
        if key in hidden or (solo is not None and key != solo):
            continue
        col = np.asarray(colors[i], np.float64)[:3]
        col = tuple(float(x) for x in (col / 255.0 if col.max() > 1.0 else col))
        p = ScenePerson(key, r.vertices, r.faces, col, labels[i] if labels else f"#{i}",
                        bool(r.quality is not None and r.quality.low_confidence), key == selected)
        # the same person as in the last scene (a view rebuilt after another person's edit): that object, with
        # its bounds and samples computed already (a few ms for 9 bodies on the GUI thread otherwise)
        kept = _PERSONS_KEPT.get(id(r.vertices))
        if kept is not None and kept.vertices is r.vertices and kept.faces is r.faces and (
                kept.key, kept.color, kept.label, kept.low_confidence, kept.selected) == (
                p.key, p.color, p.label, p.low_confidence, p.selected):
            p = kept
        out.append(p)
    _PERSONS_KEPT.clear()
    _PERSONS_KEPT.update({id(p.vertices): p for p in out})
    return tuple(out)


_PERSONS_KEPT: dict[int, ScenePerson] = {}  # id(vertices) -> the ScenePerson of the last scene_persons call


def depth_order(scene_or_persons: Scene | Sequence[ScenePerson]) -> list[tuple[int, str, float]]:
    """[(key, label, distance m)] sorted near to far: the distance from the photo camera to the centre of
    each person's bounding box."""
    if isinstance(scene_or_persons, Scene):
        return list(_memo(scene_or_persons, "_depth_order", lambda: depth_order(scene_or_persons.persons)))
    persons = scene_or_persons
    rows = []
    for p in persons:
        rows.append((p.key, p.label, float(np.linalg.norm(p.bounds.mean(0)))))
    return sorted(rows, key=lambda r: r[2])


def _display_color(p: ScenePerson, background: Sequence[float]) -> tuple[float, float, float]:
    c = np.asarray(p.color, np.float64)
    if p.low_confidence:  # a guess: faint, between its colour and the background
        c = 0.45 * c + 0.55 * np.asarray(background, np.float64)
    if p.selected:
        c = 0.6 * c + 0.4
    return tuple(float(x) for x in np.clip(c, 0, 1))


# ----------------------------------------------------------------------------------------------- camera
def _rotation(axis: np.ndarray, deg: float) -> np.ndarray:
    a = np.asarray(axis, np.float64)
    a = a / max(np.linalg.norm(a), 1e-12)
    t = np.deg2rad(deg)
    K = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + np.sin(t) * K + (1 - np.cos(t)) * (K @ K)


@dataclass(frozen=True)
class ViewCamera:
    """One picture's camera: intrinsics ``camera`` at the output size, ``view`` (4, 4) world -> view, and
    the near/far planes (metres)."""

    camera: Camera
    view: np.ndarray
    near: float
    far: float

    def project(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(pixels (N, 2), depth (N,)) of world points ``x`` (N, 3)."""
        xv = np.asarray(x, np.float64) @ self.view[:3, :3].T + self.view[:3, 3]
        K = self.camera.K
        z = xv[:, 2]
        uv = (xv[:, :2] / z[:, None]) * np.array([K[0, 0], K[1, 1]]) + np.array([K[0, 2], K[1, 2]])
        return uv, z


@dataclass
class OrbitCamera:
    """The free camera of the 3-D view. ``C`` (3, 3): the view's axes (x right, y down, z forward) in world
    coordinates (columns), ``eye`` (3,) its centre, ``pivot`` what it orbits, ``up`` the world's up (the
    ground's normal when there is one). The photo's own camera is ``C = I, eye = 0``."""

    photo: Camera
    pivot: np.ndarray = field(default_factory=lambda: np.array([0.0, 0.0, 3.0]))
    up: np.ndarray = field(default_factory=lambda: UP_PRIOR.copy())
    C: np.ndarray = field(default_factory=lambda: np.eye(3))
    eye: np.ndarray = field(default_factory=lambda: np.zeros(3))
    preset: str = "camera"

    def reset(self, pivot: np.ndarray | None = None) -> None:
        """Back to the photo's own camera (orbiting about ``pivot``, default: the current one)."""
        if pivot is not None:
            self.pivot = np.asarray(pivot, np.float64).copy()
        self.C, self.eye, self.preset = np.eye(3), np.zeros(3), "camera"

    def orbit(self, dyaw_deg: float, dpitch_deg: float) -> None:
        """Turntable: ``dyaw`` about the world's up through the pivot, ``dpitch`` about the view's right axis
        (stops 1° short of straight up/down; no roll is introduced)."""
        Q = _rotation(self.up, dyaw_deg)
        self.eye = self.pivot + Q @ (self.eye - self.pivot)
        self.C = Q @ self.C
        fwd = self.C[:, 2]
        # elevation of the view direction above the horizon (degrees, < 0 looking down); dpitch > 0 lowers it
        elev = np.degrees(np.arcsin(np.clip(fwd @ self.up, -1, 1)))
        new = float(np.clip(elev - dpitch_deg, -89.0, 89.0))
        if abs(elev) > 89.0:  # already at a pole (the top view): only move away from it
            new = float(np.clip(elev - dpitch_deg, -90.0, 90.0))
            if abs(new) > abs(elev):
                new = elev
        d = elev - new
        if abs(d) > 1e-9:
            R = _rotation(self.C[:, 0], -d)
            self.eye = self.pivot + R @ (self.eye - self.pivot)
            self.C = R @ self.C
        self.preset = ""

    def pan(self, dx_px: float, dy_px: float, focal_px: float) -> None:
        """Move the view (and the pivot) so that the pivot's depth plane follows the mouse by (dx, dy) px."""
        depth = max(float((self.pivot - self.eye) @ self.C[:, 2]), 0.05)
        d = -(self.C[:, 0] * dx_px + self.C[:, 1] * dy_px) * depth / max(focal_px, 1e-6)
        self.eye = self.eye + d
        self.pivot = self.pivot + d
        self.preset = ""

    def zoom(self, factor: float) -> None:
        """Towards the pivot by ``factor`` (> 1 closer), never through it."""
        off = self.eye - self.pivot
        dist = float(np.linalg.norm(off))
        new = float(np.clip(dist / max(factor, 1e-6), 0.05, 1e4))
        if dist < 1e-9:
            self.eye = self.pivot - self.C[:, 2] * new
        else:
            self.eye = self.pivot + off * (new / dist)
        self.preset = ""

    def intrinsics(self, size: tuple[int, int]) -> Camera:
        """The photo's camera scaled so that the photo's rectangle fits ``size`` (w, h), centred; the picture
        fills the whole target (what lies beyond the photo's rectangle is drawn too)."""
        w, h = int(size[0]), int(size[1])
        pw, ph = self.photo.image_size
        s = min(w / pw, h / ph)
        ox, oy = (w - pw * s) / 2, (h - ph * s) / 2
        cx = (self.photo.principal[0] + 0.5) * s - 0.5 + ox
        cy = (self.photo.principal[1] + 0.5) * s - 0.5 + oy
        return Camera((self.photo.focal[0] * s, self.photo.focal[1] * s), (cx, cy), (w, h))

    def view_matrix(self) -> np.ndarray:
        T = np.eye(4)
        T[:3, :3] = self.C.T
        T[:3, 3] = -self.C.T @ self.eye
        return T

    def near_far(self, points: np.ndarray, required: np.ndarray | None = None) -> tuple[float, float]:
        """Near/far planes seen from the current view: far beyond all ``points`` (world, (N, 3)); near in
        front of every ``required`` point (the persons, the photo camera and its frustum: never clipped)
        and at most 10 cm (the ground, which runs under the viewer, is cut as late as possible)."""
        z = (np.asarray(points, np.float64) - self.eye) @ self.C[:, 2]
        far = max(float(z.max()) * 1.05 + 0.1, 1.0)
        zr = z if required is None else (np.asarray(required, np.float64) - self.eye) @ self.C[:, 2]
        zr = zr[zr > 0]
        near = min(0.9 * float(zr.min()), 0.1) if len(zr) else 0.1
        return max(near, far * 1e-4, 0.002), far

    def view_camera(self, size: tuple[int, int], scene: Scene | None = None) -> ViewCamera:
        near, far = self.near_far(scene.points(), scene.required_points()) if scene is not None else (0.01, 1e3)
        return ViewCamera(self.intrinsics(size), self.view_matrix(), near, far)

    def set_preset(self, name: str, scene: Scene, size: tuple[int, int], margin: float = 1.15) -> None:
        """``camera`` (the photo's own), ``side`` (from +x, level), ``top`` (from above; the photo camera at
        the bottom of the picture): each frames the persons (and for ``top`` the photo camera) in ``size``."""
        if name not in PRESETS:
            raise ValueError(f"unknown view {name!r}; choose from {', '.join(PRESETS)}")
        centre = scene.centre()
        if scene.ground is not None:
            self.up = np.asarray(scene.ground.normal, np.float64).copy()
        if name == "camera":
            self.reset(centre)
            return
        up = self.up / np.linalg.norm(self.up)
        pts = scene.person_points()
        if name == "side":
            right = np.array([1.0, 0.0, 0.0]) - up * up[0]
            right /= np.linalg.norm(right)
            z = -right  # looking towards -x
            y = -up
        else:
            fwd = np.array([0.0, 0.0, 1.0]) - up * up[2]
            fwd /= np.linalg.norm(fwd)
            z = -up  # looking down
            y = -fwd  # far away at the top of the picture
            pts = np.concatenate([pts, np.zeros((1, 3))])  # the photo camera too
        x = np.cross(y, z)
        C = np.stack([x, y, z], 1)
        lo, hi = pts.min(0), pts.max(0)
        centre = (lo + hi) / 2 if name == "top" else centre
        K = self.intrinsics(size)
        w, h = size
        # distance at which the points' extent across (x) and along (y) the picture fits, plus their depth
        local = (pts - centre) @ C
        half_x = float(np.abs(local[:, 0]).max())
        half_y = float(np.abs(local[:, 1]).max())
        near_extent = float(-local[:, 2].min()) if len(local) else 0.0
        dist = max(half_x * K.focal[0] / (w / 2), half_y * K.focal[1] / (h / 2)) * margin + near_extent
        # the principal point may be off-centre: aim the optical axis so the centre lands on it
        self.C = C
        self.pivot = centre
        self.eye = centre - z * max(dist, 0.5)
        off = np.array([(w / 2 - K.principal[0]) / K.focal[0], (h / 2 - K.principal[1]) / K.focal[1]])
        self.eye = self.eye - (x * off[0] + y * off[1]) * max(dist, 0.5)
        self.preset = name


# --------------------------------------------------------------------------------------------- drawing
def _memo(scene: Scene, name: str, build: Any) -> Any:
    """``build()``, kept on ``scene`` (a frozen Scene is never changed; ``replace`` makes a new one): an orbit
    asks for the ground's rectangle, the frustum and the depth order several times a frame."""
    d = scene.__dict__
    if name not in d:
        d[name] = build()
    return d[name]


def _ground_quad(scene: Scene) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(corners (4, 3), u axis, v axis) of the ground rectangle: the persons' footprint and the spot under
    the photo camera, plus a metre, on whole grid steps."""
    return _memo(scene, "_ground_quad", lambda: _ground_quad_of(scene))


def _ground_quad_of(scene: Scene) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    g = scene.ground
    assert g is not None
    n = g.normal
    u = np.array([1.0, 0.0, 0.0]) - n * n[0]
    u /= np.linalg.norm(u)
    v = np.cross(n, u)
    pts = np.concatenate([scene.person_points(), np.zeros((1, 3))])
    local = (g.project(pts) - g.point) @ np.stack([u, v], 1)
    s = scene.grid_step_m
    lo, hi = point_box(local)
    lo = np.floor(lo / s - 1) * s
    hi = np.ceil(hi / s + 1) * s
    corners = np.array([g.point + u * a + v * b for a, b in ((lo[0], lo[1]), (hi[0], lo[1]), (hi[0], hi[1]),
                                                             (lo[0], hi[1]))])
    return corners, u, v


def _frustum(scene: Scene) -> tuple[np.ndarray, float]:
    """Far-plane corners (4, 3) of the photo camera's frustum (pixel corners, clockwise from top-left) and
    its depth: a quarter of the nearest person's distance (0.6 m without persons), at most 1.5 m."""
    return _memo(scene, "_frustum", lambda: _frustum_of(scene))


def _frustum_of(scene: Scene) -> tuple[np.ndarray, float]:
    cam = scene.photo_camera
    d = 0.6
    if scene.persons:
        d = float(np.clip(0.25 * depth_order(scene)[0][2], 0.15, 1.5))
    w, h = cam.image_size
    px = np.array([[-0.5, -0.5], [w - 0.5, -0.5], [w - 0.5, h - 0.5], [-0.5, h - 0.5]])
    xy = (px - np.array(cam.principal)) / np.array(cam.focal)
    return np.concatenate([xy * d, np.full((4, 1), d)], 1), d


def _segments(scene: Scene) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(segments (N, 2, 3) world, colours (N, 3) uint8, width px (N,)) of the lines to draw."""
    segs, cols, widths = [], [], []

    def add(a, b, col, wdt=1):
        segs.append(np.stack([a, b]))
        cols.append(col)
        widths.append(wdt)

    if scene.show_ground and scene.ground is not None:
        corners, u, v = _ground_quad(scene)
        s = scene.grid_step_m
        g = scene.ground
        lu = (corners - g.point) @ u
        lv = (corners - g.point) @ v
        for a in np.arange(lu.min(), lu.max() + s / 2, s):
            add(g.point + u * a + v * lv.min(), g.point + u * a + v * lv.max(), (105, 110, 120))
        for b in np.arange(lv.min(), lv.max() + s / 2, s):
            add(g.point + u * lu.min() + v * b, g.point + u * lu.max() + v * b, (105, 110, 120))
    if scene.show_axes:
        for axis, col in ((0, (230, 60, 60)), (1, (60, 200, 80)), (2, (70, 120, 240))):
            e = np.zeros(3)
            e[axis] = 0.5
            add(np.zeros(3), e, col, 2)
    if scene.show_frustum:
        far, _ = _frustum(scene)
        for i in range(4):
            add(np.zeros(3), far[i], (225, 225, 225))
            add(far[i], far[(i + 1) % 4], (225, 225, 225))
    for pts, col, cur in scene.trajectories:
        pts = np.asarray(pts, np.float64)
        if scene.ground is not None:
            pts = scene.ground.project(pts) + scene.ground.normal * 0.01
        c = tuple(int(round(x * 255)) if max(col) <= 1.0 else int(x) for x in col[:3])
        for a, b in zip(pts[:-1], pts[1:]):
            add(a, b, c, 2)
        if 0 <= cur < len(pts):
            for dx in ((0.08, 0, 0), (0, 0, 0.08)):
                add(pts[cur] - np.array(dx), pts[cur] + np.array(dx), c, 3)
    for p in scene.persons:
        if p.selected:  # a marker above the head
            v = np.asarray(p.vertices, np.float64)
            up = scene.ground.normal if scene.ground is not None else UP_PRIOR
            top = v[np.argmax(v @ up)]
            add(top + up * 0.08, top + up * 0.35, (255, 255, 255), 3)
    if not segs:
        return np.zeros((0, 2, 3)), np.zeros((0, 3), np.uint8), np.zeros(0, int)
    return np.stack(segs), np.asarray(cols, np.uint8), np.asarray(widths, int)


def _draw_segments(rgb: np.ndarray, depth: np.ndarray, segs: np.ndarray, cols: np.ndarray, widths: np.ndarray,
                   vc: ViewCamera) -> None:
    """Depth-tested lines (world segments) into ``rgb`` (in place), clipped at the near plane: numpy, after the
    meshes (what ``render_scene`` did before the lines went into the renderer; kept for the benchmark)."""
    from .render import draw_lines

    draw_lines(rgb, depth, (segs, cols, widths), vc.camera.K, vc.view, vc.near)


def _photo_place(scene: Scene, vc: ViewCamera) -> tuple[np.ndarray, tuple[int, int, int, int]] | None:
    """Where ``_draw_photo`` draws from this view: (the frustum's far corners in view coordinates (4, 3), the
    pixel rectangle (x0, y0, x1, y1) they cover), or None when the photo is not shown (no frustum or photo,
    seen from (near) the photo camera, where it would hide the scene, crossing the near plane, or outside the
    picture)."""
    if not scene.show_frustum or scene.photo is None:
        return None
    far, d = _frustum(scene)
    T = vc.view
    eye = -T[:3, :3].T @ T[:3, 3]
    if np.linalg.norm(eye) < 2 * d:
        return None
    c = far @ T[:3, :3].T + T[:3, 3]
    if (c[:, 2] <= vc.near).any():
        return None
    K = vc.camera.K
    uv = np.stack([K[0, 0] * c[:, 0] / c[:, 2] + K[0, 2], K[1, 1] * c[:, 1] / c[:, 2] + K[1, 2]], 1)
    W, H = vc.camera.image_size
    if uv[:, 0].max() < 0 or uv[:, 1].max() < 0 or uv[:, 0].min() > W - 1 or uv[:, 1].min() > H - 1:
        return None
    x0, y0 = np.floor(uv.min(0)).clip(0, [W - 1, H - 1]).astype(int)
    x1, y1 = np.ceil(uv.max(0)).clip(0, [W - 1, H - 1]).astype(int)
    if x1 <= x0 or y1 <= y0:
        return None
    return c, (int(x0), int(y0), int(x1), int(y1))


def _draw_photo(rgb: np.ndarray, depth: np.ndarray, scene: Scene, vc: ViewCamera,
                place: tuple[np.ndarray, tuple[int, int, int, int]] | None = None) -> None:
    """The photo on the frustum's far plane (nearest sample, depth-tested). ``depth``: the picture's depth
    buffer (metres, 0 where empty), or only its part inside ``place``'s rectangle (``_photo_place``)."""
    place = _photo_place(scene, vc) if place is None else place
    if place is None:
        return
    c, (x0, y0, x1, y1) = place
    K = vc.camera.K
    ys, xs = np.mgrid[y0:y1 + 1, x0:x1 + 1]
    rays = np.stack([(xs - K[0, 2]) / K[0, 0], (ys - K[1, 2]) / K[1, 1], np.ones_like(xs, float)], -1)
    e1, e2 = c[1] - c[0], c[3] - c[0]
    n = np.cross(e1, e2)
    denom = rays @ n
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (c[0] @ n) / denom
    X = rays * t[..., None]
    su = ((X - c[0]) @ e1) / (e1 @ e1)
    sv = ((X - c[0]) @ e2) / (e2 @ e2)
    ok = np.isfinite(t) & (t > 0) & (su >= 0) & (su < 1) & (sv >= 0) & (sv < 1)
    d = depth[ys, xs] if depth.shape == rgb.shape[:2] else depth
    ok &= (d <= 0) | (t < d * 0.999 - 1e-3)  # what lies on the photo's plane (its frame's lines) stays in front
    ph, pw = scene.photo.shape[:2]
    iu = np.clip((su[ok] * pw).astype(int), 0, pw - 1)
    iv = np.clip((sv[ok] * ph).astype(int), 0, ph - 1)
    rgb[ys[ok], xs[ok]] = scene.photo[iv, iu, :3]


def ground_color(scene: Scene) -> np.ndarray:
    """The ground's colour (3,) uint8: a little lighter than the background."""
    bg = np.asarray(scene.background, np.float64)
    return np.round(np.clip(bg * 1.35 + 0.03, 0, 1) * 255).astype(np.uint8)


def _draw_ground(rgb: np.ndarray, scene: Scene, vc: ViewCamera) -> None:
    """The ground's rectangle, filled where the renderer drew nothing (its background colour), seen from above
    only. Drawn after the persons and lines instead of as a mesh in the GL scene: on a software rasteriser the
    floor's fill is a third of an orbiting frame of 10 persons at 1280x720. What stands on the ground (or
    above it) looks the same; a sole a few cm under the fitted plane shows through it."""
    import cv2

    if not scene.show_ground or scene.ground is None:
        return
    g = scene.ground
    T = vc.view
    eye = -T[:3, :3].T @ T[:3, 3]
    if float((eye - g.point) @ g.normal) <= 0:
        return  # from below: not drawn (a mesh's back face)
    corners = _ground_quad(scene)[0] - g.normal * 0.002
    c = corners @ T[:3, :3].T + T[:3, 3]
    poly = _clip_near(c, vc.near * 1.001)
    if len(poly) < 3:
        return
    K = vc.camera.K
    uv = poly[:, :2] / poly[:, 2:3] * np.array([K[0, 0], K[1, 1]]) + np.array([K[0, 2], K[1, 2]])
    H, W = rgb.shape[:2]
    # only the polygon's bounding box of the picture is looked at (the ground seldom fills the picture)
    x0, y0 = (max(int(np.floor(uv[:, i].min())) - 1, 0) for i in (0, 1))
    x1, y1 = min(int(np.ceil(uv[:, 0].max())) + 2, W), min(int(np.ceil(uv[:, 1].max())) + 2, H)
    if x1 <= x0 or y1 <= y0:
        return
    pts = np.round(np.clip(uv - (x0, y0), -4e6, 4e6) * 16).astype(np.int32)  # 4 fractional bits (cv2's shift)
    sub = rgb[y0:y1, x0:x1]
    inside = np.zeros(sub.shape[:2], np.uint8)
    cv2.fillPoly(inside, [pts], 255, cv2.LINE_8, 4)
    bg = np.round(np.asarray(scene.background, np.float64) * 255)
    empty = cv2.inRange(sub, np.clip(bg - 1, 0, 255), np.clip(bg + 1, 0, 255))
    col = ground_color(scene)
    key = (H, W, col.tobytes())
    if _GROUND_FILL[0] != key:
        _GROUND_FILL[:] = [key, np.ascontiguousarray(np.broadcast_to(col, (H, W, 3)))]
    cv2.copyTo(_GROUND_FILL[1][:y1 - y0, :x1 - x0], cv2.bitwise_and(inside, empty), sub)  # in place (a view)


_GROUND_FILL: list = [None, None]  # (size, colour) -> a picture of that colour (copied under the ground's mask)


def _clip_near(poly: np.ndarray, near: float) -> np.ndarray:
    """Convex polygon (N, 3) in view coordinates clipped to z >= near (Sutherland-Hodgman, one plane)."""
    out = []
    n = len(poly)
    for i in range(n):
        a, b = poly[i], poly[(i + 1) % n]
        ina, inb = a[2] >= near, b[2] >= near
        if ina:
            out.append(a)
        if ina != inb:
            t = (near - a[2]) / (b[2] - a[2])
            out.append(a + t * (b - a))
    return np.array(out).reshape(-1, 3)


def _draw_labels(rgb: np.ndarray, scene: Scene, vc: ViewCamera) -> None:
    """Each person's label and distance to the photo camera, above its head."""
    import cv2

    if not scene.persons:
        return
    H, W = rgb.shape[:2]
    scale = float(np.clip(H / 900, 0.35, 0.8))
    anchors, texts = _memo(scene, "_labels", lambda: _label_anchors(scene))
    uvs, zs = vc.project(anchors)
    for p, uv, z, text in zip(scene.persons, uvs, zs, texts):
        if z <= vc.near:
            continue
        if not (0 <= uv[0] < W and 0 <= uv[1] < H + 40):
            continue  # the person is out of the picture: no label that would point elsewhere
        (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        x = int(np.clip(uv[0] - tw / 2, 2, max(W - tw - 2, 2)))
        y = int(np.clip(uv[1] - 4, th + 2, H - 2))
        col = tuple(int(c * 255) for c in p.color)
        cv2.putText(rgb, text, (x + 1, y + 1), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 2, cv2.LINE_AA)
        cv2.putText(rgb, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, col, 1, cv2.LINE_AA)


def _label_anchors(scene: Scene) -> tuple[np.ndarray, list[str]]:
    """(points (N, 3) above each person's head, texts "label distance"): the same for every view of a scene."""
    dist = {k: d for k, _, d in depth_order(scene)}
    up = scene.ground.normal if scene.ground is not None else UP_PRIOR
    tops = []
    for p in scene.persons:
        v = np.asarray(p.vertices, np.float64)
        tops.append(v[np.argmax(v @ up)] + up * (0.42 if p.selected else 0.1))
    return np.array(tops).reshape(-1, 3), [f"{p.label} {dist[p.key]:.1f} m" for p in scene.persons]


def scene_meshes(scene: Scene) -> list[tuple[np.ndarray, np.ndarray, tuple[float, float, float]]]:
    """The triangle meshes of ``scene`` for a ``MeshRenderer``: the persons, in their display colours (the
    ground is filled in after rendering: ``_draw_ground``)."""
    return [(p.vertices, p.faces, _display_color(p, scene.background)) for p in scene.persons]


def _ground_mesh(scene: Scene) -> list[tuple[np.ndarray, np.ndarray, tuple[float, float, float]]]:
    """The ground as a mesh ([] without one), 2 mm under the plane so that soles stay visible: what
    ``render_scene`` drew before the ground was filled in (``render_scene_numpy_lines``, the benchmark's
    "before"). Tiles of one grid step: the numpy rasteriser drops a triangle behind the near plane, so only the
    tiles under the viewer go, not the whole floor."""
    if not scene.show_ground or scene.ground is None:
        return []
    corners, _, _ = _ground_quad(scene)
    corners = corners - scene.ground.normal * 0.002
    sides = np.array([np.linalg.norm(corners[1] - corners[0]), np.linalg.norm(corners[3] - corners[0])])
    n = np.maximum(np.round(sides / scene.grid_step_m).astype(int), 1)
    a, b = np.meshgrid(np.linspace(0, 1, n[0] + 1), np.linspace(0, 1, n[1] + 1), indexing="ij")
    verts = (corners[0] + a[..., None] * (corners[1] - corners[0]) + b[..., None] * (corners[3] - corners[0]))
    idx = np.arange((n[0] + 1) * (n[1] + 1)).reshape(n[0] + 1, n[1] + 1)
    q = np.stack([idx[:-1, :-1], idx[1:, :-1], idx[1:, 1:], idx[:-1, 1:]], -1).reshape(-1, 4)
    faces = np.concatenate([q[:, [0, 1, 2]], q[:, [0, 2, 3]]]).astype(np.int32)
    return [(verts.reshape(-1, 3).astype(np.float32), faces, tuple(float(x) / 255.0 for x in ground_color(scene)))]


def scene_lines(scene: Scene) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The scene's lines (segments (N, 2, 3) world, colours (N, 3) uint8, widths px (N,)): the ground's grid,
    the axes, the frustum, trajectories and the selected person's marker; the same arrays while the scene is
    the same object (an orbit step: kept on the GL side)."""
    return _memo(scene, "_lines", lambda: _segments(scene))


LOD_TOLERANCE_PX = 1.5  # a moving frame's reduced body: 90 % of the full surface within this many pixels of it
# a moving 3-D view's render time (``LodBudget``). The app's frame is 33 ms from request to picture: the
# render process's round trip and the paint take 3-6 ms of it, and this machine's speed varies by a third from
# minute to minute, so the render itself aims at 22 ms (its frames settle between 13 and 22 ms)
FRAME_BUDGET_S = 0.022


def lod_meshes(meshes: Sequence[Any], persons: int, target: int | None = None, vc: ViewCamera | None = None,
               coarser: int = 0, bounds: Sequence[np.ndarray] | None = None) -> list:
    """``meshes`` with the first ``persons`` (the persons') faces replaced by a reduced face list of their
    topology (``io.render.lod_faces``: the same vertices, fewer faces): what a moving view draws.

    ``target``: that many faces for every person. Otherwise, with ``vc``, each person's level of
    ``io.render.LOD_LEVELS`` by its size in the picture: the fewest faces whose deviation from the full body
    (``io.render.lod_levels``) projects to at most ``LOD_TOLERANCE_PX`` pixels at that person's distance, never
    more than ``LOD_FACES``; then ``coarser`` levels fewer (a frame-time budget, ``LodBudget``). ``bounds``:
    the persons' (2, 3) boxes when known. Without either, ``LOD_FACES`` for all."""
    from .render import LOD_FACES, LOD_LEVELS, lod_faces, lod_index, lod_levels, size_on_screen_px

    out = list(meshes)
    first = next((k for k, t in enumerate(LOD_LEVELS) if t <= LOD_FACES), 0)  # never more faces than LOD_FACES
    for i in range(min(persons, len(out))):
        v, f, c = out[i]
        if target is not None or vc is None:
            out[i] = (v, lod_faces(v, f, target or LOD_FACES), c)
            continue
        levels = lod_levels(v, f)
        box = bounds[i] if bounds is not None else point_box(v)
        size_px = size_on_screen_px(box, vc.view, vc.camera.K[1, 1], vc.near)
        k = lod_index(levels, size_px, LOD_TOLERANCE_PX, start=first)
        k = min(k + max(int(coarser), 0), len(levels) - 1)
        out[i] = (v, levels[k][0], c)
    return out


class LodBudget:
    """The frame-time budget of a moving 3-D view (as VTK's desired update rate): while its reduced-detail
    frames take longer than ``budget_s``, persons are drawn one ``LOD_LEVELS`` level coarser (two when a frame
    took over 1.6 times the budget; after ``patience`` frames over it); while they take under 60 % of it, one
    level finer again (after twice as many). A frame whose face
    lists changed (an upload) is not counted. ``coarser``: the levels below the size-chosen ones now."""

    def __init__(self, budget_s: float = FRAME_BUDGET_S, patience: int = 2):
        self.budget_s, self.patience = float(budget_s), int(patience)
        self.coarser = 0
        self._over = self._under = 0
        self._faces: tuple = ()

    def observe(self, seconds: float, faces: Sequence[Any] = ()) -> None:
        from .render import LOD_LEVELS

        ids = tuple(id(f) for f in faces)
        changed, self._faces = ids != self._faces, ids
        if changed:
            return
        if seconds > self.budget_s:
            self._over, self._under = self._over + 1, 0
            if self._over >= self.patience:
                step = 2 if seconds > 1.6 * self.budget_s else 1  # far over: two levels at once
                self.coarser, self._over = min(self.coarser + step, len(LOD_LEVELS) - 1), 0
        elif seconds < 0.6 * self.budget_s:
            self._under, self._over = self._under + 1, 0
            if self._under >= 2 * self.patience:
                self.coarser, self._under = max(self.coarser - 1, 0), 0
        else:
            self._over = self._under = 0


def render_scene(renderer: Any, scene: Scene, vc: ViewCamera, meshes: list | None = None,
                 lod: bool = False, budget: LodBudget | None = None) -> np.ndarray:
    """(H, W, 3) uint8 picture of ``scene`` seen by ``vc`` through ``renderer`` (an ``io.render.MeshRenderer``
    of ``vc``'s output size). ``meshes``: ``scene_meshes(scene)`` when already built (the app sends them
    separately, so that unchanged arrays travel by token). ``lod``: the persons with reduced face lists
    (``lod_meshes``, chosen by their size in the picture; while the camera moves or a video plays), at the
    same size; ``budget``: a ``LodBudget`` that makes them coarser while such frames are over its time.

    Persons and lines (grid, axes, frustum, trajectories) go through the renderer together
    (``MeshRenderer.render_frame``: Open3D's GL scene, depth-tested, kept between frames); then the ground is
    filled in where nothing was drawn (``_draw_ground``), the photo on the frustum's plane is drawn against the
    depth buffer (only its rectangle read back), the labels last. Reduced-detail frames go to the renderer's
    twin window (``render_frame(twin=True)``), so switching between moving and still uploads nothing again.
    Back faces are culled (bodies are closed and wound outwards)."""
    import time

    t0 = time.perf_counter()
    meshes = _memo(scene, "_meshes", lambda: scene_meshes(scene)) if meshes is None else list(meshes)
    if lod:
        meshes = lod_meshes(meshes, len(scene.persons), vc=vc, coarser=budget.coarser if budget else 0,
                            bounds=[p.bounds for p in scene.persons])
    place = _photo_place(scene, vc)
    rgb, depth = renderer.render_frame(meshes, vc.camera, vc.view, near=vc.near, far=vc.far,
                                       lines=scene_lines(scene), depth=place[1] if place else False, cull=True,
                                       twin=lod)
    _draw_ground(rgb, scene, vc)
    if place is not None:
        _draw_photo(rgb, depth, scene, vc, place)
    if scene.show_labels:
        _draw_labels(rgb, scene, vc)
    if lod and budget is not None:
        budget.observe(time.perf_counter() - t0, [f for _, f, _ in meshes])
    return rgb


def render_scene_numpy_lines(renderer: Any, scene: Scene, vc: ViewCamera, meshes: list | None = None) -> np.ndarray:
    """``render_scene`` as it was before the lines went into the renderer: meshes through
    ``render_with_mask`` (float capture, depth, digest of the arrays), photo and lines drawn in numpy (the
    benchmark's "before")."""
    meshes = (scene_meshes(scene) if meshes is None else list(meshes)) + _ground_mesh(scene)
    rgb, _, depth = renderer.render_with_mask(meshes, vc.camera, vc.view, near=vc.near, far=vc.far)
    rgb = np.array(rgb, copy=True)
    depth = np.array(depth, np.float32, copy=True)
    if scene.show_frustum:
        _draw_photo(rgb, depth, scene, vc)
    segs, cols, widths = _segments(scene)
    _draw_segments(rgb, depth, segs, cols, widths, vc)
    if scene.show_labels:
        _draw_labels(rgb, scene, vc)
    return rgb


def preset_view(scene: Scene, name: str, size: tuple[int, int]) -> ViewCamera:
    """The ``ViewCamera`` of preset ``name`` for ``scene`` at ``size`` (w, h)."""
    cam = OrbitCamera(scene.photo_camera)
    cam.set_preset(name, scene, size)
    return cam.view_camera(size, scene)


def thumbnail(image: np.ndarray, max_side: int = 320) -> np.ndarray:
    """A small copy of ``image`` for the frustum (nearest-neighbour, (h, w, 3) uint8)."""
    img = np.asarray(image)
    h, w = img.shape[:2]
    s = max(1, int(np.ceil(max(h, w) / max_side)))
    return np.ascontiguousarray(img[::s, ::s, :3])


def with_persons(scene: Scene, persons: Sequence[ScenePerson]) -> Scene:
    return replace(scene, persons=tuple(persons))


class ViewsWriter:
    """``dpmesh predict --views camera,side,top``: the 3-D views of each processed frame, written beside
    the overlay as ``{stem}_view_{name}.png`` (an image) or ``.mp4`` (a video). Colours and labels are the
    overlay's (``io.render.person_color`` of the track id, else of the person's index). On a video the
    preset cameras are framed on the first frame with persons and kept, so the picture does not jump; the
    ground is re-fitted on each frame (the last fit is kept through frames without evidence)."""

    def __init__(self, views: Sequence[str], width: int, height: int, renderer: Any = None):
        bad = [v for v in views if v not in PRESETS]
        if bad or not views:
            raise ValueError(f"unknown view(s) {bad or '(none)'}; choose from {', '.join(PRESETS)}")
        from .render import MeshRenderer

        self.views = tuple(dict.fromkeys(views))
        self.size = (int(width), int(height))
        self.renderer = renderer or MeshRenderer(width, height, background=VIEW_BACKGROUND)
        self.frames: dict[str, list[Any]] = {v: [] for v in self.views}
        self.cameras: dict[str, ViewCamera] = {}
        self.ground: GroundPlane | None = None
        self._fixed = False

    def scene(self, image: np.ndarray | None, results: Sequence[Any]) -> Scene:
        from .render import person_color

        res = [r for r in results if isinstance(r, MeshResult)]
        keys = [r.track_id if r.track_id is not None else i for i, r in enumerate(res)]
        persons = scene_persons(res, [person_color(k) for k in keys], [f"#{k}" for k in keys], keys)
        cam = res[0].camera if res else Camera.default_for(*self.size)
        self.ground = fit_ground(res) or self.ground
        return Scene(persons, cam, self.ground, None if image is None else thumbnail(image))

    def add(self, image: np.ndarray | None, results: Sequence[Any], encode: bool = False) -> dict[str, np.ndarray]:
        """Render the views of one frame; kept (JPEG-encoded when ``encode``: a video's frames) for ``write``."""
        scene = self.scene(image, results)
        out = {}
        for name in self.views:
            if name not in self.cameras or not self._fixed:
                self.cameras[name] = preset_view(scene, name, self.size)
            vc = self.cameras[name]
            vc = replace(vc, **dict(zip(("near", "far"), _near_far(vc, scene))))
            rgb = render_scene(self.renderer, scene, vc)
            out[name] = rgb
            if encode:
                import cv2

                ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(rgb[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 92])
                self.frames[name].append(buf.tobytes())
            else:
                self.frames[name].append(rgb)
        self._fixed = self._fixed or bool(scene.persons)
        return out

    def write(self, folder: Any, stem: str, video_fps: float | None = None) -> list[Any]:
        """The files: ``{stem}_view_{name}.png`` (first frame) or, with ``video_fps``, ``.mp4``."""
        from pathlib import Path

        files = []
        for name, frames in self.frames.items():
            if not frames:
                continue
            if video_fps:
                import cv2

                from .video import write_video

                dest = Path(folder) / f"{stem}_view_{name}.mp4"
                write_video(dest, (cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
                                   for b in frames), fps=video_fps)
            else:
                from .images import write_image

                dest = Path(folder) / f"{stem}_view_{name}.png"
                write_image(dest, frames[0])
            files.append(dest)
        return files

    def close(self) -> None:
        self.renderer.close()


def _near_far(vc: ViewCamera, scene: Scene) -> tuple[float, float]:
    """Near/far of a kept view camera for another frame's scene."""
    R, t = vc.view[:3, :3], vc.view[:3, 3]
    cam = OrbitCamera(scene.photo_camera, C=R.T, eye=-R.T @ t)
    return cam.near_far(scene.points(), scene.required_points())
