"""`dpmesh predict --detector mmpose ...` and `dpmesh doctor --pose-config ...`: argument checks and, where
mmpose is not installed (the app's own environment), the missing-package error that names the way to get it.
The real-mmpose path is tested by test_detect_mmpose_integration.py in the environment that has mmpose."""

from __future__ import annotations

import importlib.util

import pytest

from dpmesh_core.cli import main

PHOTO = "COCO_val2014_000000000395.jpg"
HAS_MMPOSE = importlib.util.find_spec("mmpose") is not None


def _run(args, capsys):
    rc = main(args)
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.fixture
def model_files(tmp_path):
    cfg = tmp_path / "rtmpose-t_8xb256-420e_coco-256x192.py"
    cfg.write_text("_base_ = ['../_base_/default_runtime.py']\n")
    ckpt = tmp_path / "rtmpose-t.pth"
    ckpt.write_bytes(b"not a checkpoint")
    return cfg, ckpt


def test_predict_mmpose_argument_errors(tmp_path, media_dir, capsys, model_files):
    cfg, ckpt = model_files
    img, out = str(media_dir / PHOTO), str(tmp_path / "out")
    rc, _, err = _run(["predict", img, "-o", out, "--detector", "mmpose"], capsys)
    assert rc == 2 and "--pose-config" in err
    rc, _, err = _run(["predict", img, "-o", out, "--pose-config", str(tmp_path / "nope.py")], capsys)
    assert rc == 2 and "nope.py" in err and "no such file" in err
    rc, _, err = _run(["predict", img, "-o", out, "--detector", "mmpose", "--pose-config", str(cfg),
                       "--det-checkpoint", str(ckpt)], capsys)
    assert rc == 2 and "--det-config" in err
    rc, _, err = _run(["predict", img, "-o", out, "--detector", "yolo", "--pose-config", str(cfg)], capsys)
    assert rc == 2 and "--detector mmpose" in err
    assert _empty(tmp_path / "out")


def _empty(folder):
    """No output written (a run's bookkeeping files aside)."""
    return not folder.exists() or not [f for f in folder.iterdir() if not f.name.startswith((".dpmesh", "dpmesh-run"))]


def test_predict_and_doctor_with_unloadable_mmpose_model(tmp_path, media_dir, capsys, model_files):
    """Without mmpose (the app's environment): exit 3 naming how to get it. With mmpose: these files (a config
    whose base is missing, a checkpoint that is no checkpoint) do not load, and doctor says so."""
    cfg, ckpt = model_files
    out_dir = tmp_path / "out"
    # --pose-config alone chooses the mmpose detector
    rc, _, err = _run(["predict", str(media_dir / PHOTO), "-o", str(out_dir), "--pose-config", str(cfg),
                       "--pose-checkpoint", str(ckpt)], capsys)
    assert rc != 0 and _empty(out_dir)
    if not HAS_MMPOSE:
        assert rc == 3 and "mmpose" in err and "scripts/mmpose_env.sh" in err
    rc, out, _ = _run(["doctor", "--pose-config", str(cfg), "--pose-checkpoint", str(ckpt)], capsys)
    assert rc == 1  # files given on the command line must load
    if HAS_MMPOSE:
        assert "[ok  ] mmpose (2-D detector backend): mmpose 1." in out
        assert f"[MISS] mmpose model {cfg.name}: does not load:" in out
    else:
        assert "[MISS] mmpose (2-D detector backend): mmpose is not installed" in out
        assert f"[MISS] mmpose model {cfg.name}: not loaded: mmpose does not import here" in out
