"""`dpmesh convert` and `dpmesh predict --estimator dpmesh` end to end on a tiny checkpoint the test makes
in the official DPMesh key layout (spec §7), with a synthetic SMPL standing in for the licensed file."""

from __future__ import annotations

import json

import numpy as np
import torch

from dpmesh_core.body.synthetic import synthetic_smpl_arrays
from dpmesh_core.cli import main
from dpmesh_core.model import checkpoint as ck
from dpmesh_core.model.config import preset
from dpmesh_core.model.network import DPMeshNetwork

PHOTO = "COCO_val2014_000000000536.jpg"


def test_convert_then_predict_with_the_network(tmp_path, media_dir, capsys, monkeypatch):
    monkeypatch.setenv("DPMESH_HOME", str(tmp_path / "home"))
    smpl = tmp_path / "smpl_synthetic.npz"
    np.savez(smpl, **synthetic_smpl_arrays(seed=0))
    monkeypatch.setenv("DPMESH_SMPL", str(smpl))

    torch.manual_seed(0)
    net = DPMeshNetwork(preset("tiny")).eval()
    official = tmp_path / "3dpw_best_ckpt.pth.tar"
    torch.save(ck.official_state_dict_from_network(net), official)

    converted = tmp_path / "converted"
    assert main(["convert", str(official), str(converted), "--preset", "tiny"]) == 0
    assert sorted(p.name for p in converted.iterdir()) == ["config.json", "model.safetensors"]
    capsys.readouterr()

    out = tmp_path / "out"
    rc = main(["predict", str(media_dir / PHOTO), "-o", str(out), "--estimator", "dpmesh", "--model",
               str(converted), "--format", "obj,npz", "--json"])
    events = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert rc == 0
    frame = next(e for e in events if e["event"] == "frame")
    assert frame["persons"] >= 2 and frame["meshes"] >= 1
    npz = sorted(out.glob("*.npz"))
    assert len(npz) == frame["meshes"] == len(list(out.glob("*.obj")))
    d = np.load(npz[0])
    assert str(d["estimator"]) == "dpmesh" and d["body_pose"].shape == (69,)
    assert np.isfinite(d["joints3d"]).all() and (d["joints3d"][:, 2] > 0).all()  # in front of the camera


def test_convert_refuses_a_file_of_the_wrong_kind(tmp_path, capsys):
    bad = tmp_path / "notes.pth.tar"
    bad.write_text("not a checkpoint")
    rc = main(["convert", str(bad), str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc in (2, 3) and "notes.pth.tar" in err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())
