"""PoseFix key-point noise (spec §5.3): outcome statistics and geometry."""

import numpy as np
import pytest

from dpmesh_core.train.posefix import (
    GOOD,
    INVERSION,
    JITTER,
    MISS,
    SWAP,
    UNTOUCHED,
    oks_distance,
    outcome_probabilities,
    random_joint_drop,
    synthesize_pose,
    synthesize_pose_with_outcomes,
    synthesize_poses,
)

# A spread-out standing person (COCO-17, pixels): no two joints closer than the error radii.
_XY = np.array([[100, 50], [108, 42], [92, 42], [118, 48], [82, 48], [130, 85], [70, 85], [145, 130],
                [55, 130], [155, 175], [45, 175], [120, 180], [80, 180], [125, 245], [75, 245],
                [128, 310], [72, 310]], float)
KP = np.concatenate([_XY, np.ones((17, 1))], axis=1)
AREA = 110.0 * 270.0
PARTNER = [0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15]


def _expected(j, num_valid, num_overlap, possible):
    p = outcome_probabilities(j, num_valid, num_overlap) * possible
    return p / p.sum()


def test_probability_tables_match_spec():
    # dense person (17 valid), no overlap
    assert outcome_probabilities(0, 17, 0) == pytest.approx([0.10, 0.02, 0.01, 0.01, 0.86])
    assert outcome_probabilities(7, 17, 0) == pytest.approx([0.15, 0.10, 0.03, 0.06, 0.66])
    assert outcome_probabilities(11, 17, 0) == pytest.approx([0.20, 0.10, 0.06, 0.03, 0.61])
    # few valid joints + overlap
    assert outcome_probabilities(5, 5, 1) == pytest.approx([0.20, 0.20, 0.03, 0.15, 0.42])
    assert outcome_probabilities(2, 8, 0)[:2] == pytest.approx([0.20, 0.10])
    assert outcome_probabilities(15, 12, 3)[3] == pytest.approx(0.10)  # ≤15 valid and ≥3 overlaps
    assert outcome_probabilities(15, 12, 2)[3] == pytest.approx(0.03)
    for j in range(17):
        for nv in (3, 8, 17):
            for no in (0, 1, 3):
                p = outcome_probabilities(j, nv, no)
                assert p.min() >= 0 and p.sum() == pytest.approx(1.0)


def test_oks_distance_formula():
    d = oks_distance(0.5, 400.0)
    sig = np.array([.26, .25, .25, .35, .35, .79, .79, .72, .72, .62, .62, 1.07, 1.07, .87, .87, .89, .89]) / 10
    assert d == pytest.approx(np.sqrt(-2 * 400 * (2 * sig) ** 2 * np.log(0.5)))
    # OKS of a point at d(ks) is ks
    k = np.exp(-d ** 2 / (2 * 400 * (2 * sig) ** 2))
    assert k == pytest.approx(0.5)


@pytest.mark.parametrize("with_near", [False, True])
def test_outcome_frequencies_match_renormalised_probabilities(with_near):
    rng = np.random.default_rng(1)
    near = None
    if with_near:
        near = KP.copy()[None]
        near[0, :, 0] += 400.0  # far away person: every candidate is usable
    n = 350
    outcomes = np.stack([synthesize_pose_with_outcomes(KP, AREA, near, rng)[1] for _ in range(n)])
    assert (outcomes != UNTOUCHED).all()
    exp_total = np.zeros(5)
    for j in range(17):
        possible = np.array([1, 1, PARTNER[j] != j, with_near, 1], float)
        exp = _expected(j, 17, 1 if with_near else 0, possible)
        exp_total += exp * n
        freq = np.bincount(outcomes[:, j], minlength=5) / n
        # binomial 4.5-sigma band for each outcome of each joint
        tol = 4.5 * np.sqrt(exp * (1 - exp) / n) + 1e-9
        assert np.all(np.abs(freq - exp) <= tol), (j, freq, exp)
        if not with_near:
            assert freq[SWAP] == 0.0
        if PARTNER[j] == j:
            assert freq[INVERSION] == 0.0
    tot = np.bincount(outcomes.ravel(), minlength=5)
    tol = 4.5 * np.sqrt(exp_total) + 1
    assert np.all(np.abs(tot - exp_total) <= tol), (tot, exp_total)


def test_sparse_person_uses_the_sparse_tables():
    rng = np.random.default_rng(2)
    kp = KP.copy()
    kp[5:, 2] = 0  # only the 5 face joints are valid
    n = 800
    oc = np.stack([synthesize_pose_with_outcomes(kp, AREA, None, rng)[1] for _ in range(n)])
    assert (oc[:, 5:] == UNTOUCHED).all()
    exp = _expected(1, 5, 0, np.array([1, 1, 1, 0, 1], float))  # eye: jitter .20, miss .15, inv .01
    freq = np.bincount(oc[:, 1:5].ravel(), minlength=5) / (4 * n)
    assert np.abs(freq - exp).max() < 0.03, (freq, exp)
    assert exp[MISS] == pytest.approx(0.15 / 0.99)


def test_outcome_geometry():
    rng = np.random.default_rng(3)
    near = KP.copy()[None]
    near[0, :, 0] += 400.0
    d10, d50, d85 = (oks_distance(k, AREA) for k in (0.10, 0.50, 0.85))
    seen = set()
    for _ in range(100):
        out, oc = synthesize_pose_with_outcomes(KP, AREA, near, rng)
        assert np.all(out[:, 2] == 1.0)
        for j in range(17):
            p = out[j, :2]
            r_gt = np.linalg.norm(p - KP[j, :2])
            seen.add(oc[j])
            if oc[j] == GOOD:
                assert r_gt <= d85[j] + 1e-9
            elif oc[j] == JITTER:
                assert d85[j] - 1e-9 <= r_gt <= d50[j] + 1e-9
            elif oc[j] == INVERSION:
                assert np.linalg.norm(p - KP[PARTNER[j], :2]) <= d50[j] + 1e-9
            elif oc[j] == SWAP:
                r_near = min(np.linalg.norm(p - near[0, j, :2]), np.linalg.norm(p - near[0, PARTNER[j], :2]))
                assert r_near <= d50[j] + 1e-9
            elif oc[j] == MISS:
                cands = np.stack([KP[j, :2], near[0, j, :2], KP[PARTNER[j], :2], near[0, PARTNER[j], :2]])
                dist = np.linalg.norm(cands - p, axis=1)
                assert dist.min() <= d10[j] + 1e-9 and dist.min() >= d50[j] - 1e-9
    assert seen == {JITTER, MISS, INVERSION, SWAP, GOOD}


def test_determinism_batch_and_invalid_joints():
    kp = KP.copy()
    kp[3, 2] = 0
    a = synthesize_pose(kp, AREA, None, np.random.default_rng(7))
    b = synthesize_pose(kp, AREA, None, np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a[3], kp[3])  # invalid joint untouched
    batch = np.stack([KP, KP + np.array([30.0, 0, 0])])
    out = synthesize_poses(batch, None, np.random.default_rng(0))
    assert out.shape == (2, 17, 3) and np.isfinite(out).all()
    assert not np.allclose(out[:, :, :2], batch[:, :, :2])


def test_random_joint_drop_rate():
    rng = np.random.default_rng(0)
    mask = np.ones((4000, 30), np.float32)
    mask[:, 0] = 0
    out = random_joint_drop(mask, 0.1, rng)
    assert out.dtype == mask.dtype and (out[:, 0] == 0).all()
    assert abs(1 - out[:, 1:].mean() - 0.1) < 0.01
    np.testing.assert_array_equal(random_joint_drop(mask, 0.0, rng), mask)
