"""Base layer: types, errors, config, paths, geometry, torchgeom."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
import torch

from dpmesh_core import geometry, torchgeom
from dpmesh_core.config import ConfigError, ModelFiles, from_dict, load_config, save_config, to_dict
from dpmesh_core.errors import CheckpointMismatchError, DPMeshError, InputError, ModelFilesMissingError
from dpmesh_core.types import BodyParams, Camera, MeshResult, Person


# ------------------------------------------------------------------------------------------- types
def test_person_defaults_and_readonly():
    kp = np.array([[10, 20, 0.9], [30, 40, 0.0], [np.nan, 5, 0.8]], np.float32)
    p = Person(box=[0, 0, 50, 50], keypoints=kp)
    assert p.visible.tolist() == [True, False, True]
    assert p.edited.tolist() == [False, False, False]
    # NaN joints weigh nothing even when flagged visible
    np.testing.assert_allclose(p.weights, [0.9, 0.0, 0.0])
    with pytest.raises(ValueError):
        p.keypoints[0, 0] = 1.0
    q = dataclasses.replace(p, visible=np.array([False, False, True]))
    assert q.weights[0] == 0 and p.weights[0] == pytest.approx(0.9)


def test_person_rejects_bad_shapes():
    with pytest.raises(ValueError, match="keypoints"):
        Person(box=[0, 0, 1, 1], keypoints=np.zeros((17, 2)))
    with pytest.raises(ValueError, match="box"):
        Person(box=[0, 0, 1], keypoints=np.zeros((17, 3)))


def test_box_from_keypoints():
    kp = np.array([[10, 10, 1], [30, 50, 1], [1000, 1000, 0]], np.float32)
    box = Person.box_from_keypoints(kp, pad=1.0)
    np.testing.assert_allclose(box, [10, 10, 30, 50])
    with pytest.raises(ValueError):
        Person.box_from_keypoints(kp, visible=np.zeros(3, bool))


def test_point_box_is_the_lowest_and_highest_corner():
    rng = np.random.default_rng(3)
    for pts in (rng.normal(size=(6890, 3)).astype(np.float32), rng.normal(size=(50, 2)), np.array([[1.0, -2.0, 3.0]]),
                rng.normal(size=(9, 3))[::2]):  # (a strided view too)
        box = geometry.point_box(pts)
        assert box.dtype == np.float64 and box.shape == (2, pts.shape[1])
        np.testing.assert_array_equal(box, np.stack([pts.min(0), pts.max(0)]).astype(np.float64))


def test_camera_default_rule():
    cam = Camera.default_for(640, 480)
    assert cam.focal == (800.0, 800.0) and cam.principal == (320.0, 240.0)
    assert cam.K[0, 0] == 800.0 and cam.K[1, 2] == 240.0


def test_mesh_result_validates():
    params = BodyParams("smpl", np.zeros(3), np.zeros(69), np.zeros(10), np.array([0, 0, 3]))
    r = MeshResult(np.zeros((5, 3)), np.array([[0, 1, 2]]), np.zeros((17, 3)), np.zeros((17, 2)), "coco17",
                   params, Camera.default_for(10, 10))
    assert r.faces.dtype == np.int32 and not r.vertices.flags.writeable
    with pytest.raises(ValueError):
        BodyParams("smpl", np.zeros(4), np.zeros(69), np.zeros(10), np.zeros(3))


# ------------------------------------------------------------------------------------------- errors
def test_error_messages_name_things():
    e = InputError("truncated", path="/x/y.jpg")
    assert "/x/y.jpg" in str(e) and e.exit_code == 2 and isinstance(e, DPMeshError)
    m = ModelFilesMissingError("SMPL", searched=["/a", "/b"], how_to_get="download it")
    assert "/a" in str(m) and "download it" in str(m)
    c = CheckpointMismatchError("ck.pth", missing=[f"k{i}" for i in range(20)], unexpected=["u"])
    s = str(c)
    assert "ck.pth" in s and "missing keys (20)" in s and "unexpected keys (1): u" in s


# ------------------------------------------------------------------------------------------- config
@dataclass
class _Inner:
    rate: float = 0.1
    mode: Literal["a", "b"] = "a"


@dataclass
class _Cfg:
    name: str = "x"
    steps: int = 10
    flags: list[int] = field(default_factory=list)
    inner: _Inner = field(default_factory=_Inner)
    path: Path | None = None

    def validate(self):
        if self.steps <= 0:
            raise ConfigError("must be > 0", "steps")


def test_errors_pickle_faithfully():
    """Errors cross into the app from its inference process: same class, message and attributes."""
    import pickle

    from dpmesh_core.errors import ConfigError, EstimationError

    for e in (ModelFilesMissingError("SMPL_NEUTRAL.npz", ["/a", "/b"], "Get it from smpl.is.tue.mpg.de."),
              CheckpointMismatchError("/m.pt", missing=["a.w"], unexpected=["b.w"], note="official"),
              ConfigError("must be > 0", key="fit.lr", source="cfg.yaml"), InputError("unreadable", path="/x.jpg"),
              EstimationError("too few visible key-points", person_index=2), DPMeshError("plain")):
        back = pickle.loads(pickle.dumps(e))
        assert type(back) is type(e) and str(back) == str(e) and back.__dict__ == e.__dict__


def test_config_roundtrip(tmp_path):
    cfg = from_dict(_Cfg, {"steps": 5, "flags": [1, 2], "inner": {"rate": 1, "mode": "b"}, "path": "/tmp/a"})
    assert cfg.inner.rate == 1.0 and isinstance(cfg.inner.rate, float) and cfg.path == Path("/tmp/a")
    for suffix in (".yaml", ".json"):
        p = save_config(cfg, tmp_path / f"c{suffix}")
        assert load_config(_Cfg, p) == cfg
    assert to_dict(cfg)["inner"] == {"rate": 1.0, "mode": "b"}


@pytest.mark.parametrize(
    "data, key",
    [({"stepz": 1}, "stepz"), ({"steps": "ten"}, "steps"), ({"inner": {"mode": "c"}}, "inner.mode"),
     ({"inner": {"rat": 1}}, "inner.rat"), ({"flags": [1, "x"]}, "flags[1]"), ({"steps": -1}, "steps"),
     ({"steps": True}, "steps")],
)
def test_config_errors_name_the_key(data, key):
    with pytest.raises(ConfigError) as ei:
        from_dict(_Cfg, data)
    assert ei.value.key == key


def test_config_file_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: [1,\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(_Cfg, bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(_Cfg, tmp_path / "missing.yaml")


def test_model_files_env_override(tmp_path, monkeypatch):
    monkeypatch.setenv("DPMESH_HOME", str(tmp_path))
    mf = ModelFiles(smpl="/models/smpl.pkl")
    mf.save()
    assert ModelFiles.load().smpl == "/models/smpl.pkl"
    monkeypatch.setenv("DPMESH_SMPL", "/other.pkl")
    assert ModelFiles.load().smpl == "/other.pkl"


def test_paths_respect_dpmesh_home(tmp_path, monkeypatch):
    from dpmesh_core import paths

    monkeypatch.setenv("DPMESH_HOME", str(tmp_path))
    assert paths.cache_dir("x") == tmp_path / "cache" / "x" and (tmp_path / "cache" / "x").is_dir()
    assert paths.anny_cache_dir().parent == tmp_path / "cache"


# ----------------------------------------------------------------------------------------- geometry
def test_crop_affine_maps_box_to_patch():
    box = np.array([100, 50, 300, 250])
    A = geometry.crop_affine(box, 256)
    pts = geometry.apply_affine(A, np.array([[100, 50], [300, 250], [200, 150]]))
    np.testing.assert_allclose(pts, [[0, 0], [256, 256], [128, 128]], atol=1e-9)
    back = geometry.apply_affine(geometry.invert_affine(A), pts)
    np.testing.assert_allclose(back, [[100, 50], [300, 250], [200, 150]], atol=1e-9)
    Af = geometry.crop_affine(box, 256, flip=True)
    np.testing.assert_allclose(geometry.apply_affine(Af, np.array([[100, 150]])), [[256, 128]], atol=1e-9)


def test_square_box_and_iou():
    sq = geometry.square_box(np.array([10, 10, 30, 50]), scale=1.1)
    assert sq[2] - sq[0] == pytest.approx(44) and sq[3] - sq[1] == pytest.approx(44)
    iou = geometry.box_iou(np.array([[0, 0, 10, 10]]), np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]]))
    np.testing.assert_allclose(iou[0], [1.0, 1 / 3, 0.0])


def test_rotations_numpy_and_torch_agree():
    rng = np.random.default_rng(0)
    axis = rng.normal(size=(50, 3))
    aa = axis / np.linalg.norm(axis, axis=1, keepdims=True) * rng.uniform(0, 3.0, size=(50, 1))  # angle < pi
    R = geometry.axis_angle_to_matrix(aa)
    np.testing.assert_allclose(R @ np.swapaxes(R, -1, -2), np.broadcast_to(np.eye(3), R.shape), atol=1e-10)
    np.testing.assert_allclose(geometry.matrix_to_axis_angle(R), aa, atol=1e-8)
    Rt = torchgeom.axis_angle_to_matrix(torch.tensor(aa))
    np.testing.assert_allclose(Rt.numpy(), R, atol=1e-10)
    np.testing.assert_allclose(torchgeom.matrix_to_axis_angle(Rt).numpy(), aa, atol=1e-6)
    # near zero and near pi
    small = torch.tensor([[1e-9, 0, 0], [0, 0, 0], [np.pi - 1e-4, 0, 0]], dtype=torch.float64)
    np.testing.assert_allclose(torchgeom.matrix_to_axis_angle(torchgeom.axis_angle_to_matrix(small)).numpy(),
                               small.numpy(), atol=1e-6)


def test_rot6d_spec_convention():
    # spec §2.10: 6 numbers are a row-major 3x2 matrix: column 1 = elements (0, 2, 4)
    x = np.array([1.0, 0.0, 0.0, 1.0, 0.0, 0.0])
    np.testing.assert_allclose(geometry.rot6d_to_matrix(x), np.eye(3), atol=1e-12)
    rng = np.random.default_rng(1)
    R = geometry.axis_angle_to_matrix(rng.normal(size=(20, 3)))
    six = geometry.matrix_to_rot6d(R)
    np.testing.assert_allclose(six[:, [0, 2, 4]], R[:, :, 0])
    np.testing.assert_allclose(geometry.rot6d_to_matrix(six), R, atol=1e-10)
    np.testing.assert_allclose(torchgeom.rot6d_to_matrix(torch.tensor(six)).numpy(), R, atol=1e-10)
    aa = torchgeom.rot6d_to_axis_angle(torch.tensor(six))
    np.testing.assert_allclose(torchgeom.axis_angle_to_matrix(aa).numpy(), R, atol=1e-6)


def test_rotation_gradients_finite_at_zero():
    aa = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)
    torchgeom.axis_angle_to_matrix(aa).sum().backward()
    assert torch.isfinite(aa.grad).all()


def test_projection():
    pts = np.array([[0.0, 0.0, 2.0], [1.0, -0.5, 4.0]])
    uv = geometry.project(pts, 1000.0, (320, 240))
    np.testing.assert_allclose(uv, [[320, 240], [570, 115]])
    uvt = torchgeom.project(torch.tensor(pts)[None], torch.tensor([1000.0]), torch.tensor([320.0, 240.0]))
    np.testing.assert_allclose(uvt[0].numpy(), uv, atol=0.2)  # DPMesh's +1e-4 on z
    assert geometry.dpmesh_focal(3, 4) == 5.0
