"""Rendering: Open3D headless and the numpy rasteriser both draw the projected silhouette; overlays."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh
from io_helpers import make_result

from dpmesh_core.io import MeshRenderer, rasterize, render_overlay
from dpmesh_core.types import Camera

W, H = 160, 120
CAM = Camera((250.0, 250.0), (79.5, 59.5), (W, H))
CENTER = np.array([0.15, -0.05, 2.0])
RADIUS = 0.3


def _sphere():
    s = trimesh.creation.icosphere(subdivisions=4, radius=RADIUS)
    return s.vertices + CENTER, s.faces


def _analytic_sphere_mask(cam=CAM, w=W, h=H):
    """Pixels whose centre ray hits the sphere."""
    yy, xx = np.mgrid[0:h, 0:w]
    d = np.stack([(xx - cam.principal[0]) / cam.focal[0], (yy - cam.principal[1]) / cam.focal[1],
                  np.ones((h, w))], -1)
    d /= np.linalg.norm(d, axis=-1, keepdims=True)
    t = d @ CENTER
    return (CENTER @ CENTER - t**2) < RADIUS**2


def _cube_mask():
    """Projected silhouette of an axis-aligned cube seen head-on: its front face's square."""
    half, z = 0.2, 2.0
    x0 = CAM.focal[0] * (-half) / (z - half) + CAM.principal[0]
    x1 = CAM.focal[0] * half / (z - half) + CAM.principal[0]
    yy, xx = np.mgrid[0:H, 0:W]
    return (xx >= x0) & (xx <= x1) & (yy >= x0 - CAM.principal[0] + CAM.principal[1]) & \
        (yy <= x1 - CAM.principal[0] + CAM.principal[1])


def _iou(a, b):
    return (a & b).sum() / max((a | b).sum(), 1)


@pytest.fixture(scope="module")
def o3d_renderer():
    r = MeshRenderer(W, H, backend="open3d")
    yield r
    r.close()


@pytest.fixture(scope="module")
def np_renderer():
    return MeshRenderer(W, H, backend="numpy")


def test_open3d_headless_is_available(o3d_renderer):
    assert o3d_renderer.backend == "open3d"


@pytest.mark.parametrize("which", ["o3d_renderer", "np_renderer"])
def test_sphere_silhouette(which, request):
    r = request.getfixturevalue(which)
    v, f = _sphere()
    rgb, mask, depth = r.render_with_mask([(v, f, (0.9, 0.2, 0.2))], CAM)
    expected = _analytic_sphere_mask()
    assert expected.sum() > 2000
    assert _iou(mask, expected) > 0.97
    assert rgb.shape == (H, W, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[~mask & ~expected][:5], np.full((5, 3), 255))  # white background
    assert (rgb[mask][:, 0] > rgb[mask][:, 1]).mean() > 0.95  # reddish where covered
    assert depth[mask].min() == pytest.approx(CENTER[2] - RADIUS, abs=0.02)
    assert depth[mask].max() < np.linalg.norm(CENTER)


@pytest.mark.parametrize("which", ["o3d_renderer", "np_renderer"])
def test_cube_silhouette(which, request):
    r = request.getfixturevalue(which)
    box = trimesh.creation.box(extents=(0.4, 0.4, 0.4))
    mask = r.render_with_mask([(box.vertices + [0, 0, 2.0], box.faces, (50, 200, 50))], CAM)[1]
    expected = _cube_mask()
    assert _iou(mask, expected) > 0.95


def test_backends_agree(o3d_renderer, np_renderer):
    v, f = _sphere()
    box = trimesh.creation.box(extents=(0.3, 0.5, 0.2))
    meshes = [(v, f, (1, 0, 0)), (box.vertices + [-0.35, 0.1, 1.5], box.faces, (0, 0, 1))]
    a = o3d_renderer.render_with_mask(meshes, CAM)
    b = np_renderer.render_with_mask(meshes, CAM)
    assert _iou(a[1], b[1]) > 0.9
    both = a[1] & b[1]
    assert np.abs(a[2][both] - b[2][both]).max() < 0.02  # same depths
    # the nearer box hides the sphere where they overlap, in both
    blue_a = a[0][..., 2] > a[0][..., 0]
    blue_b = b[0][..., 2] > b[0][..., 0]
    assert _iou(blue_a & a[1], blue_b & b[1]) > 0.9


def test_camera_scaling_and_auto_framing(np_renderer):
    v, f = _sphere()
    big = Camera((500.0, 500.0), (159.5, 119.5), (320, 240))  # same view at twice the resolution
    m1 = np_renderer.render_with_mask([(v, f, (1, 1, 0))], CAM)[1]
    m2 = np_renderer.render_with_mask([(v, f, (1, 1, 0))], big)[1]
    assert _iou(m1, m2) > 0.97
    m3 = np_renderer.render_with_mask([(v, f, (1, 1, 0))])[1]  # no camera: framed automatically
    ys, xs = np.nonzero(m3)
    assert m3.sum() > 500 and abs(xs.mean() - W / 2) < 3 and abs(ys.mean() - H / 2) < 3
    assert not m3[0].any() and not m3[-1].any() and not m3[:, 0].any() and not m3[:, -1].any()


def test_overlay_blends_only_covered_pixels():
    r = make_result(0, offset=(0.0, 0.0, 3.0))
    cam = r.camera
    img = np.full((cam.image_size[1], cam.image_size[0], 3), 40, np.uint8)
    out = render_overlay(img, [r, None], alpha=0.6, backend="numpy")
    changed = (out != img).any(-1)
    _, mask, _ = rasterize([(r.vertices, r.faces, (1, 1, 1))], cam.K, *cam.image_size)
    assert changed.sum() > 1000
    assert _iou(changed, mask) > 0.98
    assert (out[~mask] == 40).all()
    with MeshRenderer(*cam.image_size) as rr:
        out2 = rr.render_overlay(img, [r])
        assert _iou((out2 != img).any(-1), mask) > 0.9
        with pytest.raises(ValueError):
            rr.render_overlay(img[:10], [r])
    np.testing.assert_array_equal(render_overlay(img, [], backend="numpy"), img)


def test_thread_confinement(np_renderer):
    import threading

    errors = []

    def use():
        try:
            np_renderer.render([])
        except RuntimeError as e:
            errors.append(str(e))

    t = threading.Thread(target=use)
    t.start()
    t.join()
    assert errors and "thread" in errors[0]


def test_large_triangles_in_bands_match():
    """Triangles bigger than the candidate budget are rasterised in row bands with the same result."""
    box = trimesh.creation.box(extents=(0.4, 0.4, 0.4))
    meshes = [(box.vertices + [0, 0, 2.0], box.faces, (1, 0, 0)), (_sphere()[0], _sphere()[1], (0, 1, 0))]
    a = rasterize(meshes, CAM.K, W, H)
    b = rasterize(meshes, CAM.K, W, H, max_candidates=300)
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_allclose(a[2], b[2], rtol=1e-6)


def test_back_faces_are_culled_only_for_closed_outward_meshes():
    """Overlays skip back faces (faster on a software rasteriser) only where that cannot change the picture:
    a closed surface wound outwards (SMPL, Anny); an open or inconsistently wound mesh, or one wound inwards,
    is drawn two-sided as before."""
    from dpmesh_core.body.synthetic import synthetic_smpl_arrays
    from dpmesh_core.io.render import cullable

    a = synthetic_smpl_arrays()
    v, f = np.asarray(a["v_template"], np.float64), np.asarray(a["f"], np.int32)
    assert cullable(v, f)
    assert cullable(v @ np.diag([1.0, -1.0, -1.0]), f)  # turned about x (a rotation): still outward
    assert not cullable(v, f[:, ::-1].copy())  # wound inwards
    assert not cullable(v * np.array([-1.0, 1.0, 1.0]), f)  # mirrored: inwards
    assert not cullable(v, f[:-1].copy())  # a hole
    tetra = np.array([[0, 1, 2], [0, 1, 3], [0, 2, 3], [1, 2, 3]], np.int32)  # inconsistently wound
    assert not cullable(np.array([[0, 0, 3], [.2, 0, 3], [0, .4, 3], [0, 0, 3.2]]), tetra)
