"""Shared core plumbing, checked once: the restricted unpickler with an allow-list, the strict state-dict
check, the device policy, and the one sample-config class of training."""

from __future__ import annotations

import io
import pickle

import numpy as np
import pytest
import torch

from dpmesh_core.errors import CheckpointMismatchError, ConfigError, UnsafeFileError
from dpmesh_core.io.safe_pickle import RestrictedUnpickler, allow_any, builtin_containers, numpy_global


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned > /dev/null",))


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_restricted_unpickler_reads_numpy_and_refuses_code(protocol):
    data = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.int64(7), "c": {1, 2}, "d": [np.dtype("f8")]}
    out = RestrictedUnpickler(io.BytesIO(pickle.dumps(data, protocol=protocol)), numpy_global, "x.pkl").load()
    np.testing.assert_array_equal(out["a"], data["a"])
    assert out["b"] == 7 and out["c"] == {1, 2} and out["d"][0] == np.dtype("f8")
    with pytest.raises(UnsafeFileError, match=r"(posix|os)\.system.*not allowed") as ei:
        RestrictedUnpickler(io.BytesIO(pickle.dumps([_Evil()], protocol=protocol)), numpy_global, "x.pkl").load()
    assert "x.pkl" in str(ei.value)
    # each caller widens the list with its own resolver; the numpy list alone does not allow builtins.list
    assert numpy_global("builtins", "list") is None
    assert allow_any(numpy_global, builtin_containers)("__builtin__", "list") is list
    with pytest.raises(UnsafeFileError, match="persistent id"):
        RestrictedUnpickler(io.BytesIO(b"\x80\x02X\x01\x00\x00\x00aQ."), numpy_global).load()


def test_strict_state_dict_check_lists_every_difference():
    from dpmesh_core.state_dict import check_state_dict

    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    state = dict(net.state_dict())
    check_state_dict(net, state, "ok.safetensors")  # the same keys and shapes: no error
    state["1.weight"] = torch.zeros(2, 5)
    state["2.bias"] = torch.zeros(2)
    del state["0.bias"]
    with pytest.raises(CheckpointMismatchError) as ei:
        check_state_dict(net, state, "bad.safetensors", note="test net")
    e = ei.value
    assert e.missing == ["0.bias"] and e.unexpected == ["2.bias"]
    assert e.shape_mismatch == ["1.weight: file (2, 5) vs model (2, 4)"] and "bad.safetensors" in str(e)


def test_device_policy():
    from dpmesh_core.devices import autocast_for, resolve_device, resolve_device_dtype, training_precision

    cpu = torch.device("cpu")
    assert resolve_device("cpu") == cpu and resolve_device_dtype("cpu", None) == (cpu, torch.float32)
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device_dtype("cpu", "bfloat16")[1] == torch.bfloat16
    with pytest.raises(ConfigError, match="dtype"):
        resolve_device_dtype("cpu", "int8")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA"):
            resolve_device("cuda")
    assert training_precision("fp16", cpu) == "fp32" and training_precision("bf16", cpu) == "bf16"
    with autocast_for(cpu, "bf16"):
        y = torch.nn.functional.linear(torch.ones(2, 3), torch.ones(4, 3))
    assert y.dtype == torch.bfloat16
    # one policy: the predictor and the training loop use these very functions
    from dpmesh_core.model import predictor
    from dpmesh_core.train import evaluate, loop

    assert predictor.resolve_device_dtype is resolve_device_dtype and loop.resolve_device is resolve_device
    assert loop.autocast_for is autocast_for
    assert "autocast_for" not in vars(evaluate)  # imported where used, from devices


def test_one_sample_config_class_and_dataset_kinds():
    from dpmesh_core.train import config, datasets

    assert datasets.SampleConfig is config.SampleConfig
    assert isinstance(config.TrainConfig().data.sample, datasets.SampleConfig)
    assert set(config.DATASET_KINDS) == set(datasets.DATASETS)
    s = config.SampleConfig(flip_prob=0.25)
    run = config.SampleConfig.from_settings(s, train=False, return_clean=True)
    assert (run.flip_prob, run.train, run.return_clean, s.train) == (0.25, False, True, True)


def test_front_end_warm_up_imports_the_lazy_modules_but_never_torch(tmp_path):
    """``api.warm_imports`` (the GUI calls it while idle) loads what the 3-D view's first update would
    otherwise import on the GUI thread, and leaves torch out of the GUI process."""
    import pickle
    import subprocess
    import sys

    import numpy as np

    from dpmesh_core.body.synthetic import synthetic_smpl_arrays
    from dpmesh_core.types import BodyParams, Camera, MeshResult

    # three standing bodies, handed over pickled (building them imports more than the GUI process has)
    a, cam, z = synthetic_smpl_arrays(), Camera.default_for(1280, 720), np.zeros(3, np.float32)
    body = np.asarray(a["v_template"], np.float32) * np.float32([1, -1, -1])
    res = [MeshResult((body + [x, 1.0, 5.0]).astype(np.float32), np.asarray(a["f"], np.int32), body[:24],
                      np.zeros((24, 2), np.float32), "smpl24",
                      BodyParams("smpl", z, np.zeros(69, np.float32), np.zeros(10, np.float32), z), cam)
           for x in (-1.0, 0.0, 1.0)]
    data = tmp_path / "results.pkl"
    data.write_bytes(pickle.dumps(res))
    code = ("import sys, pickle\nfrom dpmesh_core import api\nfresh = api.warm_imports()\n"
            "print(sorted(fresh), 'torch' in sys.modules, all(m in sys.modules for m in api.FRONT_END_MODULES))\n"
            "print(api.warm_imports())\n"
            # then the 3-D view's first scene (ground fit, depth order, camera, meshes) imports nothing more
            f"res = pickle.loads(open({str(data)!r}, 'rb').read())\nbefore = set(sys.modules)\n"
            "scene = api.Scene(api.scene_persons(res, [(1, 0, 0)] * 3, ['a', 'b', 'c']), res[0].camera, "
            "api.fit_ground(res))\n"
            "api.depth_order(scene.persons); api.scene_meshes(scene)\n"
            "api.OrbitCamera(res[0].camera).view_camera((640, 360), scene)\n"
            "print(scene.ground is not None, sorted(set(sys.modules) - before))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    from dpmesh_core import api

    assert out[0] == f"{sorted(api.FRONT_END_MODULES)} False True"
    assert out[1] == "[]"  # a second call has nothing left to do
    assert out[2] == "True []"  # the 3-D view's first scene (a ground fitted) imported nothing on the GUI thread
