"""Joint sets and the mappings between them (dpmesh_core/body/joints.py)."""

from __future__ import annotations

import numpy as np
import pytest

from dpmesh_core.body import joints as J

ALL_SETS = tuple(J.JOINT_SETS)


@pytest.mark.parametrize("name", ALL_SETS)
def test_names_unique_and_counts(name):
    names = J.joint_names(name)
    assert len(set(names)) == len(names)
    assert J.num_joints(name) == len(names)
    for i, n in enumerate(names):
        assert J.index(name, n) == i


def test_known_sizes():
    assert {k: J.num_joints(k) for k in ALL_SETS} == {
        "coco17": 17, "openpose18": 18, "smpl24": 24, "smpl30": 30, "graph15": 15, "h36m17": 17}
    assert len(J.H36M_EVAL14) == 14


def test_unknown_set_raises():
    with pytest.raises(KeyError, match="unknown joint set"):
        J.joint_names("nope")


@pytest.mark.parametrize("name", ALL_SETS)
def test_identity_mapping(name):
    assert np.array_equal(J.mapping(name, name), np.arange(J.num_joints(name)))


@pytest.mark.parametrize("src", ALL_SETS)
@pytest.mark.parametrize("dst", ALL_SETS)
def test_round_trip_keeps_shared_joints(src, dst):
    rng = np.random.default_rng(0)
    kp = rng.uniform(1, 100, (2, J.num_joints(src), 3)).astype(np.float32)
    there = J.convert(kp, src, dst, synthesise=False)
    back = J.convert(there, dst, src, synthesise=False)
    shared = J.mapping(dst, src) >= 0  # joints of src also in dst
    assert shared.any()
    np.testing.assert_array_equal(back[:, shared], kp[:, shared])
    assert np.all(back[:, ~shared] == 0)
    # every mapped joint has the same name on both sides
    m = J.mapping(src, dst)
    for j, i in enumerate(m):
        if i >= 0:
            assert J.joint_names(src)[i] == J.joint_names(dst)[j]


@pytest.mark.parametrize("name", ALL_SETS)
def test_flip_permutation_is_an_involution_swapping_sides(name):
    p = J.flip_permutation(name)
    assert np.array_equal(p[p], np.arange(len(p)))
    names = J.joint_names(name)
    for i, j in enumerate(p):
        a, b = names[i], names[j]
        if a.startswith("L_") and ("R_" + a[2:]) in names:
            assert b == "R_" + a[2:]
        elif a.startswith("R_") and ("L_" + a[2:]) in names:
            assert b == "L_" + a[2:]
        else:
            assert i == j


def test_smpl30_flip_pairs_match_flip_permutation():
    p = J.flip_permutation("smpl30")
    expected = np.arange(30)
    for a, b in J.SMPL30_FLIP_PAIRS:
        expected[a], expected[b] = b, a
    assert np.array_equal(p, expected)


def test_coco_openpose_with_synthesised_neck():
    rng = np.random.default_rng(1)
    coco = np.concatenate([rng.uniform(0, 200, (17, 2)), rng.uniform(0.2, 1, (17, 1))], 1).astype(np.float32)
    op = J.convert(coco, "coco17", "openpose18")
    ls, rs = J.index("coco17", "L_Shoulder"), J.index("coco17", "R_Shoulder")
    neck = op[J.index("openpose18", "Neck")]
    np.testing.assert_allclose(neck[:2], (coco[ls, :2] + coco[rs, :2]) / 2, rtol=1e-6)
    np.testing.assert_allclose(neck[2], coco[ls, 2] * coco[rs, 2], rtol=1e-6)
    assert op[J.index("openpose18", "R_Wrist")].tolist() == coco[J.index("coco17", "R_Wrist")].tolist()
    np.testing.assert_array_equal(J.convert(op, "openpose18", "coco17"), coco)
    # without synthesis the neck is absent (zero confidence)
    assert np.all(J.convert(coco, "coco17", "openpose18", synthesise=False)[1] == 0)


def test_synthesised_pelvis_and_visibility():
    vis = np.ones(17, bool)
    vis[J.index("coco17", "L_Hip")] = False
    v = J.convert_visibility(vis, "coco17", "smpl30")
    assert not v[J.index("smpl30", "Pelvis")]
    assert v[J.index("smpl30", "Neck")]
    assert not v[J.index("smpl30", "Head_top")]
    assert v.sum() == 19 - 2  # 19 populated slots minus L_Hip and the Pelvis it feeds


def test_convert_rejects_wrong_joint_count():
    with pytest.raises(ValueError, match="expected 17"):
        J.convert(np.zeros((18, 3)), "coco17", "smpl30")


def test_smpl30_slots_match_spec_section_8():
    # OpenPose-19 (OpenPose COCO-18 order + Pelvis) and COCO-19 (COCO-17 + Pelvis + Neck), spec §8
    op19 = J.OPENPOSE18 + ("Pelvis",)
    assert [J.SMPL30.index(n) for n in op19] == [24, 12, 17, 19, 21, 16, 18, 20, 2, 5, 8, 1, 4, 7, 26, 25, 28, 27, 0]
    coco19 = J.COCO17 + ("Pelvis", "Neck")
    assert [J.SMPL30.index(n) for n in coco19] == [24, 25, 26, 27, 28, 16, 17, 18, 19, 20, 21, 1, 2, 4, 5, 7, 8, 0,
                                                    12]
    assert J.mapping("smpl30", "graph15").tolist() == [0, 1, 2, 4, 5, 7, 8, 12, 29, 16, 17, 18, 19, 20, 21]
    # COCO/OpenPose input populates the same 19 slots
    assert sorted(J.SMPL30.index(n) for n in op19) == sorted(J.SMPL30.index(n) for n in coco19)


def test_h36m_lands_on_smpl_slots():
    m = J.mapping("h36m17", "smpl30")
    assert m[3] == J.index("h36m17", "Torso") and m[29] == J.index("h36m17", "Head_top")
    assert [J.H36M17[i] for i in J.H36M_EVAL14] == [n for n in J.H36M17 if n not in ("Pelvis", "Torso", "Nose")]


@pytest.mark.parametrize("name", ALL_SETS)
def test_skeleton_indices_valid(name):
    sk = J.skeleton(name)
    assert sk, name
    n = J.num_joints(name)
    assert all(0 <= a < n and 0 <= b < n and a != b for a, b in sk)
    assert len(J.COCO17_SIGMAS) == 17
