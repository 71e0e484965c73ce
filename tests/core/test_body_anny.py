"""Anny behind the BodyModel protocol. One module-scoped instance (the first build of Anny's cache, ~1 min,
happens once per DPMESH_HOME; CI builds it once)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dpmesh_core import paths
from dpmesh_core.body import joints as J
from dpmesh_core.body import load_body_model
from dpmesh_core.body.anny_model import ANNY_POSE_BONES, AnnyBody
from dpmesh_core.torchgeom import axis_angle_to_matrix

ALL = ("coco17", "smpl24", "smpl30", "graph15", "openpose18")
_PROGRESS: list[tuple[float, str]] = []


@pytest.fixture(scope="module")
def anny():
    return load_body_model("anny", progress=lambda f, msg: _PROGRESS.append((f, msg)))


def _rest(m, b=1):
    return torch.zeros(b, 3), torch.zeros(b, m.pose_dim), m.mean_betas(b)


def _random(m, b=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, 3, generator=g) * 0.5, torch.randn(b, m.pose_dim, generator=g) * 0.3,
            torch.rand(b, m.num_betas, generator=g), torch.randn(b, 3, generator=g))


def _bone(name):
    return [b for b, _ in ANNY_POSE_BONES].index(name)


def test_build_progress_and_cache_location(anny):
    assert isinstance(anny, AnnyBody) and anny.name == "anny"
    assert _PROGRESS and _PROGRESS[-1][0] == 1.0 and "Anny" in _PROGRESS[-1][1]
    cache = paths.anny_cache_dir()
    assert list(cache.glob("v*/build_compact_model_data_*.safetensors")), "Anny's cache must live in our cache dir"


def test_mesh(anny):
    assert anny.num_vertices == 13718
    f = anny.faces
    assert f.dtype == np.int32 and f.ndim == 2 and f.shape[1] == 3
    assert f.min() == 0 and f.max() == anny.num_vertices - 1
    assert len(np.unique(f)) == anny.num_vertices
    assert np.all((f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 0] != f[:, 2]))
    out = anny(*_rest(anny), joint_sets=("coco17",), return_vertices=True)
    v = out.vertices[0].numpy()
    assert v.shape == (13718, 3) and np.isfinite(v).all()
    height = v[:, 1].max() - v[:, 1].min()
    assert 1.5 < height < 1.9  # metres, an average adult


def test_canonical_frame(anny):
    out = anny(*_rest(anny), joint_sets=("coco17", "smpl24", "smpl30"), return_vertices=True)
    j24, coco, j30 = out.joints["smpl24"][0], out.joints["coco17"][0], out.joints["smpl30"][0]
    pelvis, head = j24[J.index("smpl24", "Pelvis")], j24[J.index("smpl24", "Head")]
    np.testing.assert_allclose(pelvis.numpy(), 0.0, atol=1e-6)  # root at the origin
    assert head[1] > pelvis[1] + 0.4  # y up
    nose, lear, rear = (coco[J.index("coco17", n)] for n in ("Nose", "L_Ear", "R_Ear"))
    assert nose[2] > lear[2] + 0.05 and nose[2] > rear[2] + 0.05  # facing +z
    assert coco[J.index("coco17", "L_Shoulder"), 0] > 0 > coco[J.index("coco17", "R_Shoulder"), 0]  # left = +x
    ankle = j24[J.index("smpl24", "L_Ankle")]
    assert ankle[1] < -0.6
    top = j30[J.index("smpl30", "Head_top")]
    assert abs(float(top[1]) - float(out.vertices[0, :, 1].max())) < 1e-5
    # COCO hips sit near the hip-joint centres (within a few cm), shoulders near the shoulder joints
    for side in ("L", "R"):
        d_hip = coco[J.index("coco17", f"{side}_Hip")] - j24[J.index("smpl24", f"{side}_Hip")]
        d_sho = coco[J.index("coco17", f"{side}_Shoulder")] - j24[J.index("smpl24", f"{side}_Shoulder")]
        assert float(d_hip.norm()) < 0.06 and float(d_sho.norm()) < 0.06


def test_joints_only_equals_full(anny):
    args = _random(anny, 3, seed=1)
    full = anny(*args, joint_sets=ALL, return_vertices=True)
    fast = anny(*args, joint_sets=ALL)
    assert fast.vertices is None
    for s in ALL:
        assert fast.joints[s].shape == (3, J.num_joints(s), 3)
        np.testing.assert_allclose(fast.joints[s].numpy(), full.joints[s].numpy(), atol=5e-5)
    for s in ("graph15", "openpose18"):
        np.testing.assert_array_equal(fast.joints[s].numpy(),
                                      fast.joints["smpl30"][:, J.mapping("smpl30", s)].numpy())


def test_global_orient_and_transl(anny):
    _, pose, betas, _ = _random(anny, 1, seed=2)
    go = torch.tensor([[np.pi, 0.0, 0.0]])  # upright in the OpenCV camera frame
    t = torch.tensor([[0.1, 0.2, 3.0]])
    base = anny(torch.zeros(1, 3), pose, betas, joint_sets=("smpl24",), return_vertices=True)
    cam = anny(go, pose, betas, t, joint_sets=("smpl24",), return_vertices=True)
    R = axis_angle_to_matrix(go)[0]
    np.testing.assert_allclose(cam.joints["smpl24"][0].numpy(), (base.joints["smpl24"][0] @ R.T + t).numpy(),
                               atol=1e-5)
    np.testing.assert_allclose(cam.vertices[0].numpy(), (base.vertices[0] @ R.T + t).numpy(), atol=1e-5)
    np.testing.assert_allclose(cam.joints["smpl24"][0, 0].numpy(), t[0].numpy(), atol=1e-5)


def test_betas_mean_prior_and_shape_effect(anny):
    mean = anny.mean_betas(2)
    assert mean.shape == (2, 6) and torch.all(mean == 0.5)
    assert anny.phenotype_labels == ("gender", "age", "muscle", "weight", "height", "proportions")
    assert torch.all(anny.shape_prior(mean) == 0)
    off = mean.clone()
    off[1, 4] = 0.9
    prior = anny.shape_prior(off)
    assert prior[0] == 0 and prior[1] > 0
    outside = mean.clone()
    outside[0, 0] = 1.2
    assert anny.shape_prior(outside)[0] > (0.7 / 0.25) ** 2 + 1.0  # the Gaussian term plus the out-of-range one
    go, pose, _ = _rest(anny, 2)

    def top(b):  # head top height; also exercises the memoised rest skeleton with changing betas
        return anny(go, pose, b, joint_sets=("smpl30",)).joints["smpl30"][:, 29, 1]

    tall = mean.clone()
    tall[:, 4] = 1.0
    short = mean.clone()
    short[:, 4] = 0.0
    assert torch.all(top(tall) > top(mean) + 0.03) and torch.all(top(short) < top(mean) - 0.03)
    np.testing.assert_allclose(top(mean).numpy(), top(mean.clone()).numpy())


def test_gradients(anny):
    go, pose, betas, tr = (x.clone().requires_grad_() for x in _random(anny, 2, seed=3))
    out = anny(go, pose, betas, tr, joint_sets=("coco17", "smpl24"))
    (out.joints["coco17"].square().sum() + out.joints["smpl24"].sum()).backward()
    for x in (go, pose, betas, tr):
        assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_closed_form_jacobian_equals_central_differences_of_forward():
    """``joints_jacobian`` (the warm re-fit's Jacobian from one evaluation) against central differences of
    ``forward`` itself, in float64: random poses and the rest pose (the small-angle branch), several shapes."""
    m = load_body_model("anny").double()
    go, pose, betas, tr = (x.double() for x in _random(m, 3, seed=11))
    go[0], pose[0] = 0.0, 0.0  # rest pose: every rotation at the small-angle branch
    kp, jac = m.joints_jacobian(go, pose, betas, tr, "coco17")
    ref = m(go, pose, betas, tr, joint_sets=("coco17",)).joints["coco17"]
    assert kp.shape == (3, 17, 3) and jac.shape == (3, 17, 3, 3 + m.pose_dim)
    assert torch.allclose(kp, ref, atol=1e-12)
    x, eps = torch.cat([go, pose], 1), 1e-6
    fd = torch.empty_like(jac)
    for i in range(x.shape[1]):
        d = torch.zeros_like(x)
        d[:, i] = eps
        f = [m((x + s * d)[:, :3], (x + s * d)[:, 3:], betas, tr, joint_sets=("coco17",)).joints["coco17"]
             for s in (1, -1)]
        fd[..., i] = (f[0] - f[1]) / (2 * eps)
    assert float(fd.abs().max()) > 0.3  # the check below is not 0 == 0
    assert float((jac - fd).abs().max()) < 1e-8
    assert m.joints_jacobian(go, pose, betas, tr, "smpl24") is None  # no closed form there: the caller falls back


def _flexion_axis(anny, bone):
    return anny._lim_frames[_bone(bone), 0]


def test_limits_and_prior(anny):
    zero = torch.zeros(1, anny.pose_dim)
    assert float(anny.joint_limit_penalty(zero)) == 0.0
    assert float(anny.pose_prior(zero)) == 0.0
    k, e = _bone("lowerleg01.L"), _bone("lowerarm01.L")
    bent = zero.clone()
    bent[0, 3 * k:3 * k + 3] = 1.5 * _flexion_axis(anny, "lowerleg01.L")
    bent[0, 3 * e:3 * e + 3] = 1.5 * _flexion_axis(anny, "lowerarm01.L")
    assert float(anny.joint_limit_penalty(bent)) < 1e-10
    assert float(anny.pose_prior(bent)) > 0
    rest = anny(*_rest(anny), joint_sets=("smpl24",)).joints["smpl24"][0]
    j = anny(torch.zeros(1, 3), bent, anny.mean_betas(), joint_sets=("smpl24",)).joints["smpl24"][0]
    ank, kne, wri, elb = (J.index("smpl24", n) for n in ("L_Ankle", "L_Knee", "L_Wrist", "L_Elbow"))
    sho, hip = J.index("smpl24", "L_Shoulder"), J.index("smpl24", "L_Hip")

    def bend(x, a, b, c):  # angle (radians) between the segments a→b and b→c
        u, v = x[b] - x[a], x[c] - x[b]
        return float(torch.arccos((u @ v) / (u.norm() * v.norm())))

    assert j[ank, 2] - j[kne, 2] < rest[ank, 2] - rest[kne, 2] - 0.2  # the shin swings back
    assert abs(bend(j, hip, kne, ank) - bend(rest, hip, kne, ank) - 1.5) < 0.15
    assert abs(bend(j, sho, elb, wri) - bend(rest, sho, elb, wri) - 1.5) < 0.15  # a pure hinge
    small = zero.clone()
    small[0, 3 * e:3 * e + 3] = 0.4 * _flexion_axis(anny, "lowerarm01.L")
    j = anny(torch.zeros(1, 3), small, anny.mean_betas(), joint_sets=("smpl24",)).joints["smpl24"][0]
    assert j[wri, 2] - j[elb, 2] > rest[wri, 2] - rest[elb, 2] + 0.02  # the forearm swings forward
    assert j[wri, 1] > rest[wri, 1] + 0.03  # and up
    backwards = zero.clone()
    backwards[0, 3 * k:3 * k + 3] = -1.0 * _flexion_axis(anny, "lowerleg01.L")
    assert float(anny.joint_limit_penalty(backwards)) > 0.5
    j = anny(torch.zeros(1, 3), backwards, anny.mean_betas(), joint_sets=("smpl24",)).joints["smpl24"][0]
    assert j[ank, 2] - j[kne, 2] > rest[ank, 2] - rest[kne, 2] + 0.2  # it really is the wrong way
    right = zero.clone()
    rk = _bone("lowerleg01.R")
    right[0, 3 * rk:3 * rk + 3] = -1.0 * _flexion_axis(anny, "lowerleg01.R")
    pen = anny.joint_limit_penalty(torch.cat([zero, backwards, right]))
    assert pen.shape == (3,) and pen[0] == 0 and pen[1] > 0.5 and pen[2] > 0.5
    # a big spine twist is outside the box limits
    spine = zero.clone()
    spine[0, 3 * _bone("spine02") + 1] = 1.0
    assert float(anny.joint_limit_penalty(spine)) > 0


def test_unknown_joint_set(anny):
    with pytest.raises(ValueError, match="h36m17"):
        anny(*_rest(anny), joint_sets=("h36m17",))


def test_matches_anny_own_forward(anny):
    """Vertices and COCO key-points equal Anny's own forward (its kinematics, skinning and regressor)."""
    import anny as anny_pkg

    _, pose, betas, _ = _random(anny, 2, seed=9)
    ours = anny(torch.zeros(2, 3), pose, betas, joint_sets=("coco17", "smpl24"), return_vertices=True)
    fast = anny(torch.zeros(2, 3), pose, betas, joint_sets=("coco17", "smpl24"))
    C = torch.tensor([[1.0, 0, 0], [0, 0, 1], [0, -1, 0]])  # Anny (z up, facing -y) → canonical
    R = axis_angle_to_matrix(pose.reshape(2, -1, 3))
    deltas = torch.eye(4).repeat(2, len(anny.bone_labels), 1, 1)
    for i, (bone, _) in enumerate(ANNY_POSE_BONES):
        deltas[:, anny.bone_labels.index(bone), :3, :3] = C.T @ R[:, i] @ C
    with torch.no_grad():
        ref = anny.anny(pose_parameters=deltas, phenotype_kwargs=betas)
        kp_ref = anny_pkg.KeypointsRegressor.coco(anny.anny)(ref)[:, :17]
    np.testing.assert_allclose(ours.vertices.numpy(), (ref["vertices"] @ C.T).numpy(), atol=1e-4)
    np.testing.assert_allclose(ours.joints["coco17"].numpy(), (kp_ref @ C.T).numpy(), atol=1e-4)
    np.testing.assert_allclose(fast.joints["coco17"].numpy(), (kp_ref @ C.T).numpy(), atol=1e-4)
    heads = ref["bone_poses"][:, [anny.bone_labels.index(b) for b in
                                  ("root", "upperleg01.L", "lowerleg01.R", "wrist.L", "head")], :3, 3]
    idx = [J.index("smpl24", n) for n in ("Pelvis", "L_Hip", "R_Knee", "L_Wrist", "Head")]
    np.testing.assert_allclose(fast.joints["smpl24"][:, idx].numpy(), (heads @ C.T).numpy(), atol=1e-4)


def test_per_person_shape_memo_gives_identical_meshes(anny):
    """Shape constants are memoised per person (no grad): re-skinning persons in other batch compositions
    (a smoothed video frame, the next frame with a newcomer) must give the uncached result, and the memo
    stays bounded."""
    torch.manual_seed(1)
    n = anny.ROW_CACHE_SIZE + 6
    betas = torch.rand(n, anny.num_betas)
    pose = 0.2 * torch.randn(n, anny.pose_dim)
    go, tr = 0.3 * torch.randn(n, 3), torch.randn(n, 3)

    def skin(idx):
        with torch.no_grad():
            out = anny(go[idx], pose[idx], betas[idx], tr[idx], return_vertices=True)
        return out.vertices, out.joints["coco17"]

    anny._row_cache.clear()
    anny._shape_cache = None
    fresh = [skin([i]) for i in range(3)]  # one person at a time
    for idx in ([0, 1], [2, 1, 0], [1], [2, 0, 2]):
        v, j = skin(idx)
        for b, i in enumerate(idx):
            # equal up to float rounding (batched matrix products may sum in another order)
            assert torch.allclose(v[b], fresh[i][0][0], atol=1e-4) and torch.allclose(j[b], fresh[i][1][0], atol=1e-4)
    skin(list(range(n)))  # more persons in one batch than the memo holds: all kept for this call
    skin([0])
    assert len(anny._row_cache) <= n
    skin(list(range(3, 3 + anny.ROW_CACHE_SIZE)))
    assert len(anny._row_cache) == anny.ROW_CACHE_SIZE
    # with grad the constants are computed afresh (no memo), and agree
    b = betas[:2].clone().requires_grad_(True)
    out = anny(go[:2], pose[:2], b, tr[:2], return_vertices=True)
    assert torch.allclose(out.vertices.detach(), skin([0, 1])[0], atol=1e-5)
    out.vertices.sum().backward()
    assert b.grad is not None and torch.isfinite(b.grad).all()
