"""The 3-D view's scene geometry (dpmesh_core.io.scene3d): ground fit, the free camera, presets, depth order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dpmesh_core.body.synthetic import SMPL_TPOSE_JOINTS, synthetic_smpl_arrays
from dpmesh_core.io import scene3d
from dpmesh_core.io.render import MeshRenderer
from dpmesh_core.types import BodyParams, Camera, MeshResult, Quality

CAM = Camera.default_for(640, 480)
PITCH = np.deg2rad(15.0)  # the photo camera looks 15° down
R_CAM = np.array([[1, 0, 0], [0, np.cos(PITCH), -np.sin(PITCH)], [0, np.sin(PITCH), np.cos(PITCH)]])
CAM_HEIGHT = 1.6


def _body() -> tuple[np.ndarray, np.ndarray]:
    a = synthetic_smpl_arrays()
    v = np.asarray(a["v_template"], np.float64) * np.array([1.0, -1.0, -1.0])  # upright (y down), facing us
    v[:, 1] -= v[:, 1].max()  # soles at y = 0
    return v, np.asarray(a["f"], np.int32)


BODY, FACES = _body()


def _person(x: float, z: float, lift: float = 0.0, legs_inferred: bool = False, low: bool = False) -> MeshResult:
    """A standing body at ground position (x, z) metres in a level world frame whose ground is CAM_HEIGHT
    below the camera, seen by the camera pitched down by 15°; ``lift``: metres above the ground."""
    world = BODY + np.array([x, CAM_HEIGHT - lift, z])
    v = (world @ R_CAM.T).astype(np.float32)
    j = (SMPL_TPOSE_JOINTS * np.array([1, -1, -1]) + np.array([x, CAM_HEIGHT - lift + 1.2, z])) @ R_CAM.T
    z3 = np.zeros(3, np.float32)
    q = Quality(17 if not legs_inferred else 9, 17, legs_inferred=legs_inferred, low_confidence=low)
    return MeshResult(v, FACES, j.astype(np.float32), np.zeros((24, 2), np.float32), "smpl24",
                      BodyParams("smpl", z3, np.zeros(69, np.float32), np.zeros(10, np.float32), z3), CAM,
                      quality=q)


TRUE_UP = R_CAM @ np.array([0.0, -1.0, 0.0])


def test_ground_fit_on_synthetic_feet_ignores_a_jumping_person():
    rs = [_person(-1.5, 4.0), _person(0.3, 5.5), _person(1.4, 3.5), _person(-0.2, 7.0), _person(0.9, 6.0, lift=0.5)]
    g = scene3d.fit_ground(rs)
    assert g is not None
    angle = np.degrees(np.arccos(np.clip(g.normal @ TRUE_UP, -1, 1)))
    assert angle < 2.0, angle
    for r in rs[:4]:  # standing persons' soles on the plane
        assert abs(g.height(r.vertices).min()) < 0.03
    assert g.height(rs[4].vertices).min() > 0.4  # the jumping one above it
    assert g.persons == 4 and g.residual_m < 0.03
    # the camera is CAM_HEIGHT above the ground
    assert abs(-g.height(np.zeros(3)) - (-CAM_HEIGHT)) < 0.05 or abs(g.height(np.zeros(3)) - CAM_HEIGHT) < 0.05


def test_no_ground_without_evidence():
    assert scene3d.fit_ground([_person(0.0, 4.0)]) is None  # one person
    assert scene3d.fit_ground([_person(0, 4, legs_inferred=True), _person(1, 5, legs_inferred=True),
                               _person(-1, 6, legs_inferred=True)]) is None  # nobody's feet were seen
    rng = np.random.default_rng(0)
    scattered = [_person(float(x), float(z), lift=float(h)) for x, z, h in
                 zip(rng.uniform(-2, 2, 5), rng.uniform(3, 8, 5), [0.0, 1.2, 0.4, 2.0, 0.8])]
    assert scene3d.fit_ground(scattered) is None  # no plane fits their feet


def _scene(rs, **kw) -> scene3d.Scene:
    persons = scene3d.scene_persons(rs, [(0.9, 0.2, 0.2), (0.2, 0.9, 0.2), (0.2, 0.3, 0.9), (0.9, 0.9, 0.2)],
                                    labels=[f"#{i}" for i in range(len(rs))])
    return scene3d.Scene(persons, CAM, scene3d.fit_ground(rs), **kw)


def test_camera_reset_reproduces_the_photo_projection_at_any_aspect():
    rs = [_person(-1.0, 4.0), _person(0.8, 5.0)]
    scene = _scene(rs)
    cam = scene3d.OrbitCamera(CAM)
    cam.orbit(40, 15)
    cam.zoom(1.5)
    cam.pan(20, -10, 500)
    cam.reset(scene.centre())
    v = np.concatenate([r.vertices for r in rs]).astype(np.float64)
    photo_px = (v[:, :2] / v[:, 2:]) * np.array(CAM.focal) + np.array(CAM.principal)
    uv, _ = cam.view_camera((640, 480), scene).project(v)
    np.testing.assert_allclose(uv, photo_px, atol=1e-6)
    # a wide widget: the photo's rectangle scaled to its height, centred; the picture fills the widget
    uv, _ = cam.view_camera((1280, 600), scene).project(v)
    s, ox = 600 / 480, (1280 - 640 * 600 / 480) / 2
    np.testing.assert_allclose(uv, (photo_px + 0.5) * s - 0.5 + np.array([ox, 0.0]), atol=1e-6)
    # and the rendered persons cover exactly the pixels the photo camera's render covers
    r = MeshRenderer(160, 120, backend="numpy", background=scene3d.VIEW_BACKGROUND)
    vc = cam.view_camera((160, 120), scene3d.Scene(scene.persons, CAM, None, show_axes=False,
                                                   show_frustum=False, show_labels=False))
    _, mask_view, _ = r.render_with_mask(scene3d.scene_meshes(scene3d.Scene(scene.persons, CAM)), vc.camera,
                                         vc.view, near=vc.near, far=vc.far)
    _, mask_photo, _ = r.render_with_mask([(p.vertices, p.faces, p.color) for p in scene.persons], CAM)
    np.testing.assert_array_equal(mask_view, mask_photo)


def _all_in_view(vc: scene3d.ViewCamera, pts: np.ndarray) -> bool:
    uv, z = vc.project(pts)
    w, h = vc.camera.image_size
    return bool((z > vc.near).all() and (z < vc.far).all() and (uv >= -0.5).all()
                and (uv[:, 0] <= w - 0.5).all() and (uv[:, 1] <= h - 0.5).all())


def test_near_far_never_clip_the_scene_after_an_orbit():
    rs = [_person(-1.0, 3.0), _person(0.8, 5.0), _person(0.0, 9.0)]
    scene = _scene(rs, photo=np.zeros((48, 64, 3), np.uint8))
    cam = scene3d.OrbitCamera(CAM)
    cam.reset(scene.centre())
    pts = scene.points()  # persons, ground, frustum, camera
    must = np.concatenate([np.concatenate([r.vertices for r in rs]), scene3d._frustum(scene)[0], np.zeros((1, 3))])
    r = MeshRenderer(200, 150, backend="numpy", background=scene3d.VIEW_BACKGROUND)
    for yaw, pitch in ((40, 0), (0, 40), (40, 25), (-40, -30)):
        cam.reset(scene.centre())
        cam.orbit(yaw, pitch)
        cam.zoom(0.6)  # step back a little: the photo's narrow field of view, seen from the side
        vc = cam.view_camera((200, 150), scene)
        z = (pts @ vc.view[:3, :3].T + vc.view[:3, 3])[:, 2]
        zm = (must @ vc.view[:3, :3].T + vc.view[:3, 3])[:, 2]
        assert vc.far > z.max(), (yaw, pitch, vc.far, z.max())
        assert vc.near < zm[zm > 0].min() and (zm[:-1] > 0).all(), (yaw, pitch, vc.near, zm.min())
        # every person in the field of view is drawn (each one alone, so that nobody hides it), wherever it
        # lands in the picture (not only inside the photo's own rectangle)
        drawn = 0
        for p in scene.persons:
            _, mask, _ = r.render_with_mask([(p.vertices, p.faces, p.color)], vc.camera, vc.view,
                                            near=vc.near, far=vc.far)
            uv, _ = vc.project(np.asarray(p.vertices, np.float64))
            inside = ((uv[:, 0] >= 0) & (uv[:, 0] < 200) & (uv[:, 1] >= 0) & (uv[:, 1] < 150)).mean()
            if inside > 0.2:
                assert mask.sum() > 20, (yaw, pitch, p.key, inside)
                drawn += 1
        assert drawn >= 2, (yaw, pitch)
    # orbiting keeps the view level (no roll): the view's x axis stays perpendicular to the ground's normal
    assert abs(cam.C[:, 0] @ cam.up) < 1e-6 or scene.ground is None


@pytest.mark.parametrize("size", [(640, 360), (300, 500)])
def test_preset_views_put_every_person_in_view(size):
    rs = [_person(-0.9, 3.0), _person(0.8, 5.0), _person(0.2, 9.0)]  # all inside the photo
    scene = _scene(rs)
    v = np.concatenate([r.vertices for r in rs]).astype(np.float64)
    np.testing.assert_array_equal(scene3d.preset_view(scene, "camera", size).view, np.eye(4))  # the photo's own
    for name in ("side", "top"):
        vc = scene3d.preset_view(scene, name, size)
        assert _all_in_view(vc, v), name
    top = scene3d.preset_view(scene, "top", size)
    # bird's-eye: nearer persons lower in the picture, the photo camera in view below them
    centres = np.array([r.vertices.mean(0) for r in rs], np.float64)
    uv, _ = top.project(np.concatenate([centres, np.zeros((1, 3))]))
    assert uv[0, 1] > uv[1, 1] > uv[2, 1] and uv[3, 1] > uv[0, 1]
    assert 0 <= uv[3, 1] <= size[1]
    # side view from +x: depth (camera z) runs across the picture, the camera at the left
    side = scene3d.preset_view(scene, "side", size)
    uv, _ = side.project(np.concatenate([centres, np.zeros((1, 3))]))
    order = np.argsort(uv[:3, 0])
    assert list(order) == [0, 1, 2]


def test_depth_order_sorts_persons_by_distance():
    rs = [_person(0.8, 7.0), _person(-1.0, 3.0), _person(0.5, 5.0)]
    rows = scene3d.depth_order(_scene(rs))
    assert [k for k, _, _ in rows] == [1, 2, 0]
    for k, _, d in rows:
        c = (rs[k].vertices.min(0) + rs[k].vertices.max(0)) / 2
        assert d == pytest.approx(float(np.linalg.norm(c)), rel=1e-6)
    assert 3.0 < rows[0][2] < rows[1][2] < rows[2][2]


def test_render_scene_draws_context_persons_styles_and_show_hide():
    rs = [_person(-1.0, 3.0), _person(0.8, 5.0, low=True)]
    photo = np.zeros((48, 64, 3), np.uint8)
    photo[..., 0] = 255  # a red photo on the frustum
    scene = _scene(rs, photo=photo)
    r = MeshRenderer(320, 240, backend="numpy", background=scene3d.VIEW_BACKGROUND)
    cam = scene3d.OrbitCamera(CAM)
    cam.reset(scene.centre())
    cam.orbit(35, 20)
    cam.zoom(0.5)
    vc = cam.view_camera((320, 240), scene)
    img = scene3d.render_scene(r, scene, vc)
    bare = scene3d.render_scene(r, scene3d.Scene(scene.persons, CAM, None, show_axes=False, show_frustum=False,
                                                 show_labels=False), vc)
    assert (img != bare).any(axis=2).sum() > 500  # ground, grid, frustum, axes, labels
    # the photo is on the frustum's far plane
    red = (img[..., 0] > 200) & (img[..., 1] < 40) & (img[..., 2] < 40)
    assert red.sum() > 3
    # the low-confidence person is faint: its colour is pulled towards the background
    c = scene3d._display_color(scene.persons[1], scene3d.VIEW_BACKGROUND)
    assert np.linalg.norm(np.subtract(c, scene3d.VIEW_BACKGROUND)) < np.linalg.norm(
        np.subtract(scene.persons[1].color, scene3d.VIEW_BACKGROUND))
    # show/hide and solo
    assert [p.key for p in scene3d.scene_persons(rs, [(1, 0, 0)] * 2, hidden=[0])] == [1]
    assert [p.key for p in scene3d.scene_persons(rs, [(1, 0, 0)] * 2, solo=0)] == [0]
    sel = scene3d.scene_persons(rs, [(1, 0, 0)] * 2, selected=1)
    assert [p.selected for p in sel] == [False, True]


def test_predict_views_writes_the_renders_beside_the_overlay(tmp_path, media_dir):
    """``dpmesh predict --views camera,side,top`` on a real photo (two persons from a key-point file): the
    three renders at the photo's size beside the overlay, each person in the overlay's colour."""
    import json

    from dpmesh_core.cli import main
    from dpmesh_core.io.images import read_image
    from dpmesh_core.io.render import person_color

    photo = "COCO_val2014_000000000395.jpg"
    near = np.array([[320, 100, 2], [328, 92, 2], [312, 92, 2], [338, 98, 2], [302, 98, 2], [355, 140, 2],
                     [285, 140, 2], [365, 195, 2], [275, 195, 2], [370, 245, 2], [270, 245, 2], [342, 250, 2],
                     [298, 250, 2], [345, 330, 2], [295, 330, 2], [347, 405, 2], [293, 405, 2]], np.float32)
    far = near.copy()
    far[:, :2] = (far[:, :2] - [320, 405]) * 0.5 + [520, 330]  # half the size, further back
    anns = [{"id": i + 1, "image_id": 1, "category_id": 1, "keypoints": kp.reshape(-1).tolist(),
             "num_keypoints": 17, "bbox": [float(kp[:, 0].min()), float(kp[:, 1].min()),
                                           float(np.ptp(kp[:, 0])), float(np.ptp(kp[:, 1]))]}
            for i, kp in enumerate((near, far))]
    kp_file = tmp_path / "kp.json"
    kp_file.write_text(json.dumps({"images": [{"id": 1, "file_name": photo, "width": 640, "height": 480}],
                                   "annotations": anns, "categories": [{"id": 1, "name": "person"}]}))
    out = tmp_path / "out"
    rc = main(["predict", str(media_dir / photo), "-o", str(out), "--keypoints", str(kp_file), "--body-model",
               "synthetic-smpl", "--format", "npz", "--overlay", "--views", "camera,side,top"])
    assert rc == 0
    stem = Path(photo).stem
    size = read_image(media_dir / photo).shape
    bg = np.asarray(scene3d.VIEW_BACKGROUND) * 255
    for name in ("camera", "side", "top"):
        img = read_image(out / f"{stem}_view_{name}.png")
        assert img.shape == size
        for i in range(2):  # each person drawn in its overlay colour (shaded: same direction in RGB)
            col = np.asarray(person_color(i))
            px = img.reshape(-1, 3).astype(float)
            px = px[np.abs(px - bg).max(1) > 30]
            cos = (px @ col) / (np.linalg.norm(px, axis=1) * np.linalg.norm(col) + 1e-9)
            assert (cos > 0.995).sum() > 30, (name, i)
    assert (out / f"{stem}_overlay.png").exists()
    assert main(["predict", str(media_dir / photo), "-o", str(tmp_path / "o2"), "--views", "front"]) == 2
