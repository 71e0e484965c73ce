"""Evaluation metrics (spec §6)."""

import numpy as np
import pytest

from dpmesh_core.errors import InputError
from dpmesh_core.geometry import axis_angle_to_matrix
from dpmesh_core.train.metrics import (
    EVAL14,
    format_table,
    joint_metrics,
    load_joint_regressor,
    mesh_metrics,
    mpjpe,
    pa_mpjpe,
    procrustes_align,
    summarize,
)


def _regressor(rng, v=300):
    J = rng.random((17, v)) ** 4
    return J / J.sum(1, keepdims=True)


def test_pa_mpjpe_zero_for_similarity_transform():
    rng = np.random.default_rng(0)
    gt = rng.normal(size=(5, 14, 3))
    R = axis_angle_to_matrix(rng.normal(size=(5, 3)))
    pred = 1.7 * np.einsum("nij,nkj->nki", R, gt) + rng.normal(size=(5, 1, 3))
    assert pa_mpjpe(pred, gt) == pytest.approx(np.zeros(5), abs=1e-6)
    np.testing.assert_allclose(procrustes_align(pred, gt), gt, atol=1e-9)
    assert (mpjpe(pred, gt) > 10).all()


def test_procrustes_fixes_reflection():
    rng = np.random.default_rng(1)
    gt = rng.normal(size=(1, 10, 3))
    mirrored = gt * np.array([-1.0, 1, 1])
    aligned = procrustes_align(mirrored, gt)
    R = np.linalg.lstsq(np.c_[mirrored[0] - mirrored[0].mean(0)], aligned[0] - aligned[0].mean(0), rcond=None)[0]
    assert np.linalg.det(R) > 0  # a proper rotation (times a positive scale), never a reflection
    assert pa_mpjpe(mirrored, gt)[0] > 1.0


def test_mpjpe_known_offset_and_root_alignment():
    gt = np.zeros((2, 17, 3))
    gt[:, :, 0] = np.arange(17) * 0.1
    pred = gt + np.array([0.3, -2.0, 5.0])  # global translation: removed by root alignment
    assert mpjpe(pred, gt) == pytest.approx([0.0, 0.0])
    pred[:, 5] += np.array([0.0, 0.03, 0.04])  # 50 mm on one joint
    assert mpjpe(pred, gt) == pytest.approx([50.0 / 17, 50.0 / 17])
    m = joint_metrics(pred, gt)
    assert 5 in EVAL14
    assert m["mpjpe"] == pytest.approx([50.0 / 14] * 2)


def test_mesh_metrics_through_regressor_and_occluded_split():
    rng = np.random.default_rng(2)
    V = 300
    J = _regressor(rng, V)
    gt = rng.normal(size=(3, V, 3)) * 0.3
    pred = gt + np.array([1.0, 2.0, 3.0])  # only a translation
    m = mesh_metrics(pred, gt, J)
    for k in ("mpjpe", "pa_mpjpe", "mpve"):
        assert m[k] == pytest.approx(np.zeros(3), abs=1e-6)
    # 10 mm offset of every vertex except the pelvis-defining ones → MPVE is exactly 10 mm after
    # pelvis alignment with a one-hot pelvis regressor
    pel = np.zeros(V)
    pel[0] = 1.0
    pred2 = gt.copy()
    pred2[:, 1:, 2] += 0.010
    m2 = mesh_metrics(pred2, gt, J, pelvis_regressor=pel)
    assert m2["mpve"] == pytest.approx(np.full(3, 10.0 * (V - 1) / V))
    vis = np.ones((3, 17), bool)
    vis[:, EVAL14[:4]] = False
    pred3 = gt.copy()
    pred3[:, :, 0] *= 1.2
    m3 = mesh_metrics(pred3, gt, J, visible_h36m=vis)
    assert m3["occluded"].sum() == 12
    t = summarize(m3, ["a", "a", "b"])
    assert t["overall"]["count"] == 3 and set(t["per_sequence"]) == {"a", "b"}
    e = m3["joint_err"]
    assert t["overall"]["occ_mpjpe"] == pytest.approx(e[:, :4].mean())
    assert t["overall"]["vis_mpjpe"] == pytest.approx(e[:, 4:].mean())
    assert t["per_sequence"]["b"]["mpjpe"] == pytest.approx(m3["mpjpe"][2])
    assert t["overall"]["mpjpe"] == pytest.approx(m3["mpjpe"].mean())
    assert "overall" in format_table(t)


def test_load_joint_regressor(tmp_path):
    rng = np.random.default_rng(3)
    J = _regressor(rng, 50)
    np.save(tmp_path / "j.npy", J)
    np.testing.assert_allclose(load_joint_regressor(tmp_path / "j.npy"), J)
    np.save(tmp_path / "bad.npy", J[:5])
    with pytest.raises(InputError, match="bad.npy"):
        load_joint_regressor(tmp_path / "bad.npy")
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    with pytest.raises(InputError, match="junk.npy"):
        load_joint_regressor(tmp_path / "junk.npy")
