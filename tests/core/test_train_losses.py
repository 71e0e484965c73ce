"""Losses (spec §5.7), uncertainty weighting and NKR distillation (spec §4)."""

import math
from types import SimpleNamespace

import pytest
import torch

from dpmesh_core.train.losses import DEFAULT_FACTORS, AutomaticWeightedLoss, combine, dpmesh_losses
from dpmesh_core.train.nkr import NKRLoss, make_teacher, nt_xent


def _batch(B=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.rand(*s, generator=g)  # noqa: E731
    return {"joints_img": r(B, 15, 3) * 64, "joints_img_valid": torch.ones(B, 15), "has_3d": torch.ones(B),
            "pose": r(B, 72), "pose_valid": torch.ones(B, 72), "betas": r(B, 10), "has_params": torch.ones(B),
            "joints_2d": r(B, 30, 2) * 64, "joints_2d_valid": torch.ones(B, 30),
            "joints_cam": r(B, 30, 3), "joints_cam_valid": torch.ones(B, 30)}


def _perfect(b):
    return SimpleNamespace(joint_img=b["joints_img"] / 64, pose72=b["pose"].clone(), betas=b["betas"].clone(),
                           joint_proj=b["joints_2d"] * 4, joints30=b["joints_cam"].clone())


def test_losses_zero_for_perfect_output_and_known_offset():
    b = _batch()
    L = dpmesh_losses(_perfect(b), b)
    assert set(L) == set(DEFAULT_FACTORS)
    for v in L.values():
        assert float(v) == pytest.approx(0.0, abs=1e-6)
    out = _perfect(b)
    out.joints30 = out.joints30 + 0.1  # 0.1 m everywhere
    out.betas = out.betas + 1.0
    L = dpmesh_losses(out, b)
    assert float(L["joint_cam"]) == pytest.approx(0.1 * 2.0, rel=1e-5)
    assert float(L["smpl_shape"]) == pytest.approx(1.0 * 2.0, rel=1e-5)
    # masks: no 3-D → no joint_cam and no depth term
    b["has_3d"][:] = 0
    b["has_params"][:] = 0
    b["pose_valid"][:] = 0
    out.joint_img = out.joint_img + torch.tensor([0.0, 0.0, 0.5])
    L = dpmesh_losses(out, b)
    assert float(L["joint_cam"]) == 0 and float(L["smpl_shape"]) == 0 and float(L["joint_img"]) == 0


def test_automatic_weighted_loss_formula_and_fixed_weights():
    awl = AutomaticWeightedLoss(("a", "b"))
    losses = {"a": torch.tensor(2.0), "b": torch.tensor(4.0)}
    assert float(awl(losses).detach()) == pytest.approx(0.5 * 2 + math.log(2) + 0.5 * 4 + math.log(2))
    with torch.no_grad():
        awl.params[:] = torch.tensor([2.0, 1.0])
    assert float(awl(losses).detach()) == pytest.approx(0.5 / 4 * 2 + math.log(5) + 0.5 * 4 + math.log(2))
    assert float(combine(losses, {"a": 5.0})) == pytest.approx(14.0)


def test_nkr_identical_features():
    torch.manual_seed(0)
    for B in (1, 4):
        a = torch.randn(B, 16, 8, 8)
        nk = NKRLoss(weight=0.1, temperature=0.5)(SimpleNamespace(feat_2d=a), SimpleNamespace(feat_2d=a.clone()))
        assert float(nk["nkr_mse"]) == 0.0
        z = torch.nn.functional.normalize(a.reshape(B, -1), dim=1)
        c = z @ z.t()
        closed = torch.stack([torch.log(1 + 2 * sum(torch.exp((c[i, k] - 1) / 0.5) for k in range(B) if k != i))
                              for i in range(B)]).mean() if B > 1 else torch.tensor(0.0)
        assert float(nk["nkr_ntxent"]) == pytest.approx(float(closed), abs=1e-5)
        assert float(nk["nkr"]) == pytest.approx(0.1 * float(closed), abs=1e-6)
    # among re-orderings of the student batch as teacher, the identical order is the minimum
    a = torch.randn(5, 32)
    same = float(nt_xent(a, a, 1.0))
    for perm in ([1, 0, 2, 3, 4], [4, 3, 2, 1, 0], [1, 2, 3, 4, 0]):
        assert float(nt_xent(a, a[perm], 1.0)) > same
    # and it is not 0 for B > 1 (NT-Xent is not a distance)
    assert same > 0.1


def test_nkr_gradients_reach_student_only():
    student = torch.nn.Linear(4, 6)
    teacher = make_teacher(student)
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training
    x = torch.randn(8, 4)
    s_out = SimpleNamespace(feat_2d=student(x + 0.1 * torch.randn(8, 4)))
    with torch.no_grad():
        t_out = SimpleNamespace(feat_2d=teacher(x))
    loss = NKRLoss()(s_out, t_out)["nkr"]
    loss.backward()
    assert student.weight.grad is not None and student.weight.grad.abs().sum() > 0
    assert teacher.weight.grad is None
