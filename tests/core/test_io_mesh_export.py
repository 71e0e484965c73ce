"""Mesh export (OBJ / PLY / GLB / glTF), names, y-up option, parameter .npz files, atomicity."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import trimesh
from io_helpers import make_result

from dpmesh_core.errors import EstimationError, InputError
from dpmesh_core.io import export_mesh, export_meshes, export_params_npz, load_params_npz, mesh_filename


def test_mesh_filename():
    assert mesh_filename("img", 3, "obj") == "img_person03.obj"
    assert mesh_filename("clip", 1, ".GLB", frame=42) == "clip_f000042_person01.glb"


@pytest.mark.parametrize("ext", ["obj", "ply", "glb", "gltf"])
def test_export_roundtrip(tmp_path, ext):
    r = make_result()
    p = export_mesh(r, tmp_path / f"m.{ext}")
    assert p.exists() and [f.name for f in tmp_path.iterdir()] == [f"m.{ext}"]
    loaded = trimesh.load(p, force="mesh", process=False)
    assert len(loaded.faces) == len(r.faces)
    assert len(loaded.vertices) == len(r.vertices)
    # same geometry (order may differ in scene formats): compare bounds and area
    np.testing.assert_allclose(loaded.bounds, np.array([r.vertices.min(0), r.vertices.max(0)]), atol=1e-5)
    assert loaded.area == pytest.approx(trimesh.Trimesh(r.vertices, r.faces, process=False).area, rel=1e-5)


def test_obj_has_vertex_normals_pointing_out(tmp_path):
    r = make_result()
    p = export_mesh(r, tmp_path / "m.obj")
    lines = p.read_text().splitlines()
    vn = np.array([[float(x) for x in ln.split()[1:]] for ln in lines if ln.startswith("vn ")])
    assert len(vn) == len(r.vertices)
    radial = r.vertices - r.vertices.mean(0)
    assert ((vn * radial).sum(1) > 0).all()  # outward normals on a sphere
    assert any(ln.startswith("f ") and "//" in ln for ln in lines)


def test_y_up_rotates_180_about_x(tmp_path):
    r = make_result()
    p = export_mesh(r, tmp_path / "up.ply", y_up=True)
    loaded = trimesh.load(p, process=False)
    np.testing.assert_allclose(loaded.vertices, r.vertices * np.array([1, -1, -1]), atol=1e-6)
    # still outward-facing after the (proper) rotation
    c = loaded.vertices.mean(0)
    assert (np.einsum("ij,ij->i", loaded.face_normals, loaded.triangles_center - c) > 0).all()


def test_export_meshes_names_and_skips_failed(tmp_path):
    results = [make_result(0), EstimationError("too few joints", 1), make_result(2, offset=(0.5, 0, 4)), None]
    paths = export_meshes(results, tmp_path / "out", "clip", formats=("obj", "glb"), frame=7)
    assert [p.name for p in paths] == ["clip_f000007_person00.obj", "clip_f000007_person00.glb",
                                        "clip_f000007_person02.obj", "clip_f000007_person02.glb"]
    assert all(p.exists() for p in paths)
    with pytest.raises(InputError, match="unknown mesh format"):
        export_meshes(results, tmp_path / "out2", "x", formats=("fbx",))


def test_failing_export_leaves_no_partial_file(tmp_path):
    good = make_result()
    target = tmp_path / "m.obj"
    export_mesh(good, target)
    before = target.read_bytes()
    bad_faces = good.faces.copy()
    bad_faces[0, 0] = len(good.vertices) + 10
    bad = dataclasses.replace(good, faces=bad_faces)
    with pytest.raises(InputError, match="faces index vertices"):
        export_mesh(bad, target)
    nan_v = good.vertices.copy()
    nan_v[3] = np.nan
    with pytest.raises(InputError, match="non-finite"):
        export_mesh(dataclasses.replace(good, vertices=nan_v), tmp_path / "n.glb")
    assert target.read_bytes() == before
    assert [f.name for f in tmp_path.iterdir()] == ["m.obj"]


def test_params_npz_roundtrip(tmp_path):
    r = make_result(track_id=5)
    p = export_params_npz(r, tmp_path / "p.npz", include_mesh=True)
    with np.load(p, allow_pickle=False) as z:  # plain arrays only
        assert str(z["units"]).startswith("metres")
        np.testing.assert_allclose(z["camera_K"], r.camera.K)
    d = load_params_npz(p)
    assert d["format_version"] == 1 and d["joint_set"] == "smpl24" and d["estimator"] == "fit"
    assert d["track_id"] == 5 and d["loss"] == pytest.approx(0.25)
    for k in ("global_orient", "body_pose", "betas", "transl"):
        np.testing.assert_array_equal(getattr(d["params"], k), getattr(r.params, k))
    np.testing.assert_array_equal(d["params"].extra["vposer_z"], r.params.extra["vposer_z"])
    assert d["params"].model == "smpl" and d["camera"] == r.camera
    np.testing.assert_array_equal(d["joints3d"], r.joints3d)
    np.testing.assert_array_equal(d["joints2d"], r.joints2d)
    np.testing.assert_array_equal(d["keypoints2d"], r.keypoints2d)
    np.testing.assert_array_equal(d["vertices"], r.vertices)
    np.testing.assert_array_equal(d["faces"], r.faces)
    r2 = dataclasses.replace(r, loss=None, track_id=None, keypoints2d=None)
    d2 = load_params_npz(export_params_npz(r2, tmp_path / "q.npz"))
    assert d2["loss"] is None and d2["track_id"] is None and d2["keypoints2d"] is None and "vertices" not in d2


def test_load_params_npz_errors(tmp_path):
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    with pytest.raises(InputError, match="junk.npz"):
        load_params_npz(junk)
    other = tmp_path / "other.npz"
    np.savez(other, a=np.zeros(3))
    with pytest.raises(InputError, match="missing keys"):
        load_params_npz(other)
    with pytest.raises(InputError, match="no such file"):
        load_params_npz(tmp_path / "none.npz")
