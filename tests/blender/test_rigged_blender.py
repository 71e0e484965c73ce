"""Opt-in: the rigged exports imported by Blender itself (``bpy``), not part of the default run (``testpaths``
in pyproject.toml lists tests/core and tests/app only).

Blender's Python module (PyPI ``bpy``, 374 MB, Python 3.11, pins numpy 1.26) does not fit the project's venv,
so it runs in its own interpreter:

    python3.11 -m venv .venv-bpy && .venv-bpy/bin/pip install bpy
    DPMESH_BPY_PYTHON=.venv-bpy/bin/python .venv/bin/python -m pytest tests/blender

Without ``DPMESH_BPY_PYTHON`` the test fails (it never skips silently). Measured with bpy 5.0.1: static GLB
0.05 mm, animated GLB keyframes ≤ 0.07 mm, BVH bone heads 0.002 mm from our vertices / joints.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "core"))
from test_io_rigged import CAM, _anny_params, _forward  # noqa: E402

from dpmesh_core.body import joints as J  # noqa: E402
from dpmesh_core.body import load_body_model  # noqa: E402
from dpmesh_core.body.anny_model import ANNY_SMPL24_BONES  # noqa: E402
from dpmesh_core.body.rig import body_rig, skin_matrices  # noqa: E402
from dpmesh_core.io.rigged import write_bvh, write_rigged_glb  # noqa: E402

CHECK = Path(__file__).with_name("blender_check.py")


def _blender(path: Path, out: Path, fps: int, frames: list[int]) -> dict:
    py = os.environ.get("DPMESH_BPY_PYTHON")
    if not py:
        pytest.fail("set DPMESH_BPY_PYTHON to a Python with Blender's bpy (see this file's docstring)")
    out.mkdir()
    r = subprocess.run([py, str(CHECK), str(path), str(out), str(fps), *map(str, frames)], capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads((out / "report.json").read_text())


def _to_blender(p: np.ndarray) -> np.ndarray:
    """OpenCV camera frame → glTF (x, -y, -z) → Blender's Z-up (x, -z_gltf, y_gltf)."""
    return np.stack([p[..., 0], p[..., 2], -p[..., 1]], -1)


def test_blender_imports_the_rigged_glb_and_bvh_posed_as_ours(tmp_path):
    body = load_body_model("anny")
    params = _anny_params(3, seed=4)
    verts, joints = _forward(body, params)
    rig = body_rig(body, params[0].betas, "mixamo")
    S = skin_matrices(body, params)
    one = write_rigged_glb(tmp_path / "one.glb", rig, S[:1], CAM)
    anim = write_rigged_glb(tmp_path / "anim.glb", rig, S, CAM, times=np.arange(3) / 25.0)
    bvh = write_bvh(tmp_path / "anim.bvh", rig, S, 1 / 25.0)

    rep = _blender(one, tmp_path / "b1", 25, [0])
    assert len(rep["bones"]) == 104 and "mixamorig:Hips" in rep["bones"]
    got = np.load(tmp_path / "b1/verts_0.npy")
    assert np.abs(got - _to_blender(verts[0])).max() * 1000 <= 1.0

    rep = _blender(anim, tmp_path / "b3", 25, [0, 1, 2])
    assert len(rep["actions"]) == 1
    for k in range(3):
        got = np.load(tmp_path / f"b3/verts_{k}.npy")
        assert np.abs(got - _to_blender(verts[k])).max() * 1000 <= 1.0, k

    rep = _blender(bvh, tmp_path / "bb", 25, [1, 2, 3])
    assert len(rep["bones"]) == 104
    names = dict(zip(rig.native_names, rig.names))
    for k in range(3):
        heads = json.loads((tmp_path / f"bb/heads_{k + 1}.json").read_text())
        got = np.array([heads[names[ANNY_SMPL24_BONES[n]]] for n in J.SMPL24])
        assert np.abs(got - _to_blender(joints[k])).max() * 1000 <= 1.0, k
