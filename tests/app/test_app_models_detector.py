"""The Models dialog's 2-D detector choice (YOLO11n-pose or the user's mmpose model) and what api builds from it."""

from __future__ import annotations

import importlib.util

import pytest


def test_models_dialog_detector_choice(qapp, qtbot, tmp_path, isolated_home, monkeypatch):
    from app.dialogs.models_dialog import ModelsDialog, check_model_file
    from dpmesh_core import api
    from dpmesh_core.config import ModelFiles
    from dpmesh_core.errors import ModelFilesMissingError

    cfg = tmp_path / "rtmpose-t_8xb256-420e_coco-256x192.py"
    cfg.write_text("_base_ = ['../_base_/default_runtime.py']\n")  # a config may be tiny (it inherits)
    ckpt = tmp_path / "rtmpose-t.pth"
    ckpt.write_bytes(b"x" * 4096)
    assert check_model_file("mmpose_pose_config", str(cfg)) == (True, "found")
    assert not check_model_file("mmpose_pose_checkpoint", str(cfg))[0]  # a .py is no checkpoint

    dlg = ModelsDialog()
    qtbot.addWidget(dlg)
    assert dlg.detector.currentData() == "yolo" and not dlg.edits["mmpose_pose_config"].isEnabled()
    dlg.detector.setCurrentIndex(dlg.detector.findData("mmpose"))
    assert dlg.edits["mmpose_pose_config"].isEnabled()
    dlg.edits["mmpose_pose_config"].setText(str(cfg))
    dlg.edits["mmpose_pose_checkpoint"].setText(str(ckpt))
    assert "✓" in dlg.status["mmpose_pose_config"].text() and "✓" in dlg.status["mmpose_pose_checkpoint"].text()
    dlg.save()
    mf = ModelFiles.load()
    assert (mf.detector, mf.mmpose_pose_config, mf.mmpose_pose_checkpoint) == ("mmpose", str(cfg), str(ckpt))
    assert mf.mmpose_det_config is None

    # what the app's inference worker gets from these settings
    if importlib.util.find_spec("mmpose") is None:
        from app.jobs.inference_server import build_detector

        with pytest.raises(ModelFilesMissingError, match="mmpose"):
            api.configured_detector(mf)
        with pytest.raises(ModelFilesMissingError, match="mmpose"):  # the app's inference worker builds the same
            build_detector()
        checks = api.check_mmpose(mf.mmpose_pose_config, mf.mmpose_pose_checkpoint)
        assert not checks[0].ok and "mmpose_env.sh" in checks[0].fix
        assert not checks[1].ok and "does not import" in checks[1].detail
    mf.mmpose_pose_config = None
    monkeypatch.setenv("DPMESH_YOLO_RUNTIME", "torch")  # no ONNX export into this test's private cache
    assert api.configured_detector(mf).name == "yolo"  # mmpose chosen without a config: the default
