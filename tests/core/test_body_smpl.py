"""SMPL through smplx on the synthetic body; the chumpy-free pickle reader; .npz; errors; the factory."""

from __future__ import annotations

import os
import pickle
import sys
import types

import numpy as np
import pytest
import scipy.sparse
import torch

from dpmesh_core.body import joints as J
from dpmesh_core.body import load_body_model
from dpmesh_core.body.smpl_model import HEAD_TOP_VERTEX, SMPLBody, read_smpl_arrays
from dpmesh_core.body.synthetic import SMPL_TPOSE_JOINTS, synthetic_smpl_arrays
from dpmesh_core.errors import InputError, ModelFilesMissingError, UnsafeFileError
from dpmesh_core.torchgeom import axis_angle_to_matrix

ALL = ("smpl24", "smpl30", "coco17", "graph15", "openpose18")


@pytest.fixture(scope="module")
def arrays():
    return synthetic_smpl_arrays(seed=0)


@pytest.fixture(scope="module")
def model(arrays):
    return SMPLBody.from_arrays(arrays, source="synthetic")


def _zero(model, b=1):
    return torch.zeros(b, 3), torch.zeros(b, 69), torch.zeros(b, 10)


def _random(b=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, 3, generator=g) * 0.5, torch.randn(b, 69, generator=g) * 0.3,
            torch.randn(b, 10, generator=g), torch.randn(b, 3, generator=g))


# ---------------------------------------------------------------- synthetic arrays
def test_synthetic_arrays_are_smpl_shaped_and_deterministic(arrays):
    assert arrays["v_template"].shape == (6890, 3)
    assert arrays["shapedirs"].shape == (6890, 3, 10)
    assert arrays["posedirs"].shape == (6890, 3, 207)
    assert arrays["J_regressor"].shape == (24, 6890)
    assert arrays["weights"].shape == (6890, 24)
    assert arrays["kintree_table"].shape == (2, 24)
    f = arrays["f"]
    assert f.shape[1] == 3 and f.min() == 0 and f.max() == 6889
    assert len(np.unique(f)) == 6890  # every vertex is on the surface
    np.testing.assert_allclose(arrays["weights"].sum(1), 1.0, atol=1e-12)
    np.testing.assert_allclose(arrays["J_regressor"].sum(1), 1.0, atol=1e-9)
    np.testing.assert_allclose(arrays["J_regressor"] @ arrays["v_template"], SMPL_TPOSE_JOINTS, atol=1e-9)
    again = synthetic_smpl_arrays(seed=0)
    for k in arrays:
        np.testing.assert_array_equal(arrays[k], again[k])
    other = synthetic_smpl_arrays(seed=1)
    assert not np.array_equal(other["shapedirs"], arrays["shapedirs"])


def test_synthetic_mesh_is_closed_and_outward(arrays):
    import trimesh

    mesh = trimesh.Trimesh(arrays["v_template"], arrays["f"], process=False)
    assert mesh.is_winding_consistent
    assert 0.03 < mesh.volume < 0.12  # m³, roughly a person; positive = outward-facing triangles


# ---------------------------------------------------------------- forward
def test_shapes_and_faces(model):
    out = model(*_random(), joint_sets=ALL, return_vertices=True)
    assert out.vertices.shape == (3, 6890, 3)
    for s in ALL:
        assert out.joints[s].shape == (3, J.num_joints(s), 3)
    assert model.faces.dtype == np.int32 and model.faces.shape[1] == 3
    assert model.num_vertices == 6890 and model.pose_dim == 69 and model.num_betas == 10
    assert set(ALL) <= set(model.joint_sets) and "h36m17" not in model.joint_sets
    with pytest.raises(ValueError, match="h36m17"):
        model(*_zero(model), joint_sets=("h36m17",))


def test_zero_pose_is_the_t_pose(model):
    out = model(*_zero(model), joint_sets=("smpl24", "smpl30"), return_vertices=True)
    np.testing.assert_allclose(out.joints["smpl24"][0].numpy(), SMPL_TPOSE_JOINTS, atol=1e-5)
    j30 = out.joints["smpl30"][0]
    # face picks: the nose in front of the ears (facing +z), eyes above the nose, head top the highest point
    nose, leye, reye, lear, rear, top = (j30[J.index("smpl30", n)] for n in
                                         ("Nose", "L_Eye", "R_Eye", "L_Ear", "R_Ear", "Head_top"))
    assert nose[2] > lear[2] + 0.05 and nose[2] > rear[2] + 0.05
    assert leye[1] > nose[1] and leye[0] > 0 > reye[0] and lear[0] > 0 > rear[0]
    np.testing.assert_allclose(top.numpy(), out.vertices[0, HEAD_TOP_VERTEX].numpy())
    assert top[1] >= out.vertices[0, :, 1].max() - 1e-6
    assert model.head_top_source == f"vertex {HEAD_TOP_VERTEX}"


def test_global_orient_rotates_about_the_root_and_transl_shifts(model):
    _, pose, betas, _ = _random(1, seed=3)
    go = torch.tensor([[0.3, -1.1, 0.7]])
    base = model(torch.zeros(1, 3), pose, betas, joint_sets=("smpl30",), return_vertices=True)
    rot = model(go, pose, betas, joint_sets=("smpl30",), return_vertices=True)
    root = base.joints["smpl30"][0, 0]
    R = axis_angle_to_matrix(go)[0]
    np.testing.assert_allclose(rot.joints["smpl30"][0, 0].numpy(), root.numpy(), atol=1e-5)
    expect = (base.joints["smpl30"][0] - root) @ R.T + root
    np.testing.assert_allclose(rot.joints["smpl30"][0].numpy(), expect.numpy(), atol=1e-5)
    expect_v = (base.vertices[0] - root) @ R.T + root
    np.testing.assert_allclose(rot.vertices[0].numpy(), expect_v.numpy(), atol=1e-5)
    t = torch.tensor([[0.5, -2.0, 7.0]])
    moved = model(go, pose, betas, t, joint_sets=("smpl30",), return_vertices=True)
    np.testing.assert_allclose((moved.joints["smpl30"] - rot.joints["smpl30"]).numpy(),
                               np.broadcast_to(t.numpy()[:, None], (1, 30, 3)), atol=1e-5)
    np.testing.assert_allclose((moved.vertices - rot.vertices).numpy().reshape(-1, 3).mean(0), t.numpy()[0],
                               atol=1e-5)


def test_joints_only_equals_full_forward(model):
    args = _random(4, seed=5)
    full = model(*args, joint_sets=ALL, return_vertices=True)
    fast = model(*args, joint_sets=ALL)
    assert fast.vertices is None
    for s in ALL:
        np.testing.assert_allclose(fast.joints[s].numpy(), full.joints[s].numpy(), atol=1e-5)
    # named sets are slices of SMPL-30
    for s in ("coco17", "graph15", "openpose18"):
        m = J.mapping("smpl30", s)
        np.testing.assert_array_equal(fast.joints[s].numpy(), fast.joints["smpl30"][:, m].numpy())


def test_betas_change_height_and_broadcast(model):
    go, pose, betas = _zero(model)
    tall = betas.clone()
    tall[0, 0] = 2.0

    def height(b):
        j = model(go, pose, b, joint_sets=("smpl30",)).joints["smpl30"][0]
        return float(j[29, 1] - j[7, 1])  # head top above the left ankle

    assert height(tall) > height(betas) + 0.05
    out = model(torch.zeros(3, 3), _random(3)[1], betas[:1])  # betas (1, 10) broadcast to the batch
    assert out.joints["coco17"].shape == (3, 17, 3)


def test_gradients_flow_through_joints_only(model):
    go, pose, betas, tr = (x.clone().requires_grad_() for x in _random(2, seed=7))
    out = model(go, pose, betas, tr, joint_sets=("coco17", "smpl24"))
    (out.joints["coco17"].square().sum() + out.joints["smpl24"].sum()).backward()
    for x in (go, pose, betas, tr):
        assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_pose_prior_and_joint_limits(model):
    zero = torch.zeros(1, 69)
    assert float(model.pose_prior(zero)) == 0.0
    assert float(model.joint_limit_penalty(zero)) == 0.0
    lk, le = J.SMPL24.index("L_Knee") - 1, J.SMPL24.index("L_Elbow") - 1
    bent = zero.clone()
    bent[0, 3 * lk] = 1.5  # natural knee flexion (+x)
    bent[0, 3 * le + 1] = -1.5  # natural left-elbow flexion (-y)
    assert float(model.joint_limit_penalty(bent)) == 0.0
    assert float(model.pose_prior(bent)) > 0
    j = model(torch.zeros(1, 3), bent, torch.zeros(1, 10), joint_sets=("smpl24",)).joints["smpl24"][0]
    assert j[J.index("smpl24", "L_Ankle"), 2] < j[J.index("smpl24", "L_Knee"), 2] - 0.2  # shin swings back
    assert j[J.index("smpl24", "L_Wrist"), 2] > j[J.index("smpl24", "L_Elbow"), 2] + 0.15  # forearm forward
    backwards = zero.clone()
    backwards[0, 3 * lk] = -1.0  # a knee bent the wrong way
    wrong_elbow = zero.clone()
    wrong_elbow[0, 3 * le + 1] = 1.0
    assert float(model.joint_limit_penalty(backwards)) > 0.5
    assert float(model.joint_limit_penalty(wrong_elbow)) > 0.5
    batch = torch.cat([zero, backwards])
    pen = model.joint_limit_penalty(batch)
    assert pen.shape == (2,) and pen[0] == 0 and pen[1] > 0


def test_h36m_and_extra_regressors(arrays):
    rng = np.random.default_rng(0)
    h36 = np.zeros((17, 6890))
    for k in range(17):
        idx = rng.choice(6890, 20, replace=False)
        h36[k, idx] = rng.uniform(0.1, 1, 20)
    h36 /= h36.sum(1, keepdims=True)
    extra = np.zeros((9, 6890))
    extra[3, [411, 412, 413]] = 1 / 3
    m = SMPLBody.from_arrays(arrays, j_regressor_h36m=scipy.sparse.csr_matrix(h36), j_regressor_extra=extra)
    assert "h36m17" in m.joint_sets and m.head_top_source == "J_regressor_extra[3]"
    args = _random(2, seed=11)
    full = m(*args, joint_sets=("h36m17", "smpl30"), return_vertices=True)
    fast = m(*args, joint_sets=("h36m17", "smpl30"))
    expect = torch.einsum("kv,bvd->bkd", torch.tensor(h36, dtype=torch.float32), full.vertices)
    np.testing.assert_allclose(full.joints["h36m17"].numpy(), expect.numpy(), atol=1e-5)
    np.testing.assert_allclose(fast.joints["h36m17"].numpy(), expect.numpy(), atol=1e-5)
    np.testing.assert_allclose(fast.joints["smpl30"][:, 29].numpy(), full.vertices[:, 411:414].mean(1).numpy(),
                               atol=1e-5)
    with pytest.raises(InputError, match="J_regressor_h36m"):
        SMPLBody.from_arrays(arrays, j_regressor_h36m=np.zeros((17, 10)))


# ---------------------------------------------------------------- files
def _chumpy_pickle(arrays: dict, monkeypatch) -> bytes:
    """Bytes of a SMPL v1.0-style pickle (protocol 2, chumpy ``Ch`` objects, sparse J_regressor), made with
    stand-in classes registered under chumpy's module names for the duration of the dump only."""
    ch_mod = types.ModuleType("chumpy.ch")

    class Ch:  # what chumpy pickles: the instance __dict__, the value in 'x'
        def __init__(self, x):
            self.x = x
            self._dirty_vars = set()
            self.dterms = ("x",)

    Ch.__module__ = "chumpy.ch"
    Ch.__qualname__ = "Ch"
    ch_mod.Ch = Ch
    pkg = types.ModuleType("chumpy")
    pkg.ch = ch_mod
    with monkeypatch.context() as mp:
        mp.setitem(sys.modules, "chumpy", pkg)
        mp.setitem(sys.modules, "chumpy.ch", ch_mod)
        data = {
            "v_template": Ch(arrays["v_template"]),
            "shapedirs": Ch(arrays["shapedirs"]),
            "posedirs": arrays["posedirs"],
            "J_regressor": scipy.sparse.csc_matrix(arrays["J_regressor"]),
            "weights": Ch(arrays["weights"]),
            "kintree_table": arrays["kintree_table"],
            "f": arrays["f"].astype(np.uint32),
            "J": Ch(SMPL_TPOSE_JOINTS),
            "bs_style": "lbs",
            "bs_type": "lrotmin",
        }
        blob = pickle.dumps(data, protocol=2)
    assert b"chumpy.ch" in blob and b"Ch" in blob
    return blob


def test_reads_chumpy_pickle_without_chumpy(arrays, model, tmp_path, monkeypatch):
    p = tmp_path / "basicModel_neutral_lbs_10_207_0_v1.0.0.pkl"
    p.write_bytes(_chumpy_pickle(arrays, monkeypatch))
    assert "chumpy" not in sys.modules and "chumpy.ch" not in sys.modules
    got = read_smpl_arrays(p)
    assert "chumpy" not in sys.modules
    assert isinstance(got["shapedirs"], np.ndarray)
    np.testing.assert_array_equal(got["shapedirs"], arrays["shapedirs"])
    assert scipy.sparse.issparse(got["J_regressor"])
    m = SMPLBody.from_file(tmp_path)  # a folder holding the v1.0 file name works too
    args = _random(2, seed=2)
    np.testing.assert_allclose(m(*args, joint_sets=("smpl30",)).joints["smpl30"].numpy(),
                               model(*args, joint_sets=("smpl30",)).joints["smpl30"].numpy(), atol=1e-6)
    assert m.source == str(p)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_asking_for_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    p = tmp_path / "evil.pkl"
    p.write_bytes(pickle.dumps({"v_template": _Evil(marker)}, protocol=2))
    with pytest.raises(UnsafeFileError) as ei:
        SMPLBody.from_file(p)
    assert str(p) in str(ei.value) and "system" in str(ei.value)
    assert not marker.exists()


def test_npz_model(arrays, model, tmp_path):
    p = tmp_path / "SMPL_NEUTRAL.npz"
    np.savez(p, **arrays)
    m = load_body_model("smpl", path=p)
    args = _random(2, seed=4)
    np.testing.assert_allclose(m(*args, joint_sets=("smpl30",), return_vertices=True).vertices.numpy(),
                               model(*args, joint_sets=("smpl30",), return_vertices=True).vertices.numpy(),
                               atol=1e-6)


def test_missing_and_wrong_files(arrays, tmp_path):
    with pytest.raises(ModelFilesMissingError) as ei:
        SMPLBody.from_file(tmp_path / "nope.pkl")
    assert "smpl.is.tue.mpg.de" in str(ei.value) and "nope.pkl" in str(ei.value)
    with pytest.raises(ModelFilesMissingError):
        SMPLBody.from_file(tmp_path)  # a folder without a SMPL file
    bad = dict(arrays)
    del bad["weights"]
    np.savez(tmp_path / "partial.npz", **bad)
    with pytest.raises(InputError, match="weights"):
        SMPLBody.from_file(tmp_path / "partial.npz")
    wrong = dict(arrays, posedirs=arrays["posedirs"][:, :, :10])
    np.savez(tmp_path / "wrong.npz", **wrong)
    with pytest.raises(InputError, match="posedirs"):
        SMPLBody.from_file(tmp_path / "wrong.npz")
    (tmp_path / "junk.pkl").write_bytes(b"this is not a pickle")
    with pytest.raises(InputError, match="junk.pkl"):
        SMPLBody.from_file(tmp_path / "junk.pkl")
    (tmp_path / "list.pkl").write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(InputError, match="dict"):
        SMPLBody.from_file(tmp_path / "list.pkl")
    (tmp_path / "model.obj").write_text("v 0 0 0\n")
    with pytest.raises(InputError, match="file type"):
        SMPLBody.from_file(tmp_path / "model.obj")


def test_factory(arrays, tmp_path, monkeypatch):
    monkeypatch.setenv("DPMESH_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DPMESH_SMPL", raising=False)
    with pytest.raises(ModelFilesMissingError, match="DPMESH_SMPL"):
        load_body_model("smpl")
    p = tmp_path / "SMPL_NEUTRAL.npz"
    np.savez(p, **arrays)
    monkeypatch.setenv("DPMESH_SMPL", str(p))
    m = load_body_model("smpl")
    assert isinstance(m, SMPLBody) and m.name == "smpl" and m.source == str(p)
    syn = load_body_model("synthetic-smpl")
    assert syn.name == "synthetic-smpl" and syn.num_vertices == 6890
    with pytest.raises(InputError, match="unknown body model"):
        load_body_model("smplx-ultra")


def test_chumpy_reordering_objects_are_evaluated(tmp_path, monkeypatch):
    """chumpy.reordering.transpose / Select pickled around a Ch become the numpy values they denote."""
    ch_mod, re_mod, pkg = (types.ModuleType(n) for n in ("chumpy.ch", "chumpy.reordering", "chumpy"))

    class Ch:
        def __init__(self, x):
            self.x = x

    class transpose:  # noqa: N801 - chumpy's class name
        def __init__(self, a, axes):
            self.a, self.axes = a, axes

    class Select:
        def __init__(self, a, idxs, preferred_shape):
            self.a, self.idxs, self.preferred_shape = a, idxs, preferred_shape

    for cls, mod in ((Ch, ch_mod), (transpose, re_mod), (Select, re_mod)):
        cls.__module__, cls.__qualname__ = mod.__name__, cls.__name__
        setattr(mod, cls.__name__, cls)
    a = np.arange(24.0).reshape(2, 3, 4)
    with monkeypatch.context() as mp:
        for mod in (pkg, ch_mod, re_mod):
            mp.setitem(sys.modules, mod.__name__, mod)
        blob = pickle.dumps({"t": transpose(Ch(a), (2, 0, 1)), "s": Select(Ch(a), np.array([1, 5, 7]), (3,))},
                            protocol=2)
    p = tmp_path / "reorder.pkl"
    p.write_bytes(blob)
    from dpmesh_core.body.smpl_model import _read_pickle

    got = _read_pickle(p)
    np.testing.assert_array_equal(got["t"], np.transpose(a, (2, 0, 1)))
    np.testing.assert_array_equal(got["s"], a.ravel()[[1, 5, 7]])
