"""Sharded, multi-worker, resumed and Ray batch prediction (dpmesh_core.batch, dpmesh_core.ray_predict) give the
outputs and the run manifest of a plain ``api.predict`` run, on real photos and frames of street.avi
(key-point fitting of Anny, the default estimator; the real YOLO detector)."""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path

import numpy as np
import pytest

from dpmesh_core import api
from dpmesh_core.batch import parse_shard, predict_batch, read_input_list, select_shard
from dpmesh_core.errors import BatchError, InputError, OutputError

pytestmark = pytest.mark.slow

PHOTOS = ("COCO_val2014_000000000536.jpg", "COCO_val2014_000000000294.jpg")


@pytest.fixture(scope="module")
def inputs(media_dir, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("inputs")
    for name in (*PHOTOS, "street.avi"):
        (d / name).symlink_to(media_dir / name)
    return d


def _opts(**kw) -> api.PredictOptions:
    return api.PredictOptions(formats=("npz", "obj"), max_frames=2, **kw)


@pytest.fixture(scope="module")
def plain(inputs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("plain")
    events = list(api.predict(inputs, out, _opts()))
    assert events[-1]["event"] == "finished" and events[-1]["complete"] == 3
    return out


def _manifest(out: Path) -> dict:
    return json.loads((out / "dpmesh-run.json").read_text())


def _results(out: Path) -> dict[str, Path]:
    return {p.name: p for p in out.iterdir() if not p.name.startswith(".") and p.name != "dpmesh-run.json"}


def assert_same_outputs(a: Path, b: Path) -> None:
    ra, rb = _results(a), _results(b)
    assert sorted(ra) == sorted(rb)
    assert any(n.startswith("street_f000001") for n in ra)  # the video's second frame is there
    for name, p in ra.items():
        if name.endswith(".npz"):
            with np.load(p) as za, np.load(rb[name]) as zb:
                assert sorted(za.files) == sorted(zb.files), name
                for k in za.files:
                    if za[k].dtype.kind in "fc":
                        np.testing.assert_allclose(zb[k], za[k], rtol=1e-5, atol=1e-6, err_msg=f"{name}:{k}")
                    else:
                        assert np.array_equal(za[k], zb[k]), f"{name}:{k}"
    ma, mb = _manifest(a), _manifest(b)
    assert sorted(ma["inputs"]) == sorted(mb["inputs"])
    for k, e in ma["inputs"].items():
        assert e["status"] == mb["inputs"][k]["status"] == "complete"
        assert sorted(e["files"]) == sorted(mb["inputs"][k]["files"])
    assert not [p for p in b.iterdir() if p.name.startswith((".dpmesh-part-", ".dpmesh-staging-"))]


def test_shard_selection_and_input_lists(inputs, tmp_path):
    files = api.list_inputs(inputs)
    shards = [select_shard(list(reversed(files)), i, 2) for i in range(2)]
    assert sorted(shards[0] + shards[1]) == sorted(files) and not set(shards[0]) & set(shards[1])
    assert shards == [select_shard(files, i, 2) for i in range(2)]  # the order given does not matter
    assert parse_shard("3/16") == (3, 16)
    for bad in ("3", "16/16", "-1/2", "a/b"):
        with pytest.raises(InputError):
            parse_shard(bad)
    lst = tmp_path / "inputs.txt"
    lst.write_text(f"# photos\n{inputs / PHOTOS[0]}\n\nsub/{PHOTOS[1]}\n")
    assert read_input_list(lst) == [inputs / PHOTOS[0], tmp_path / "sub" / PHOTOS[1]]


def test_two_workers_equal_a_plain_run(inputs, plain, tmp_path):
    out = tmp_path / "w2"
    events = list(predict_batch(inputs, out, _opts(), workers=2))
    assert {e.get("worker") for e in events if e["event"] == "done"} == {0, 1}
    fin = events[-1]
    assert fin["event"] == "finished" and (fin["complete"], fin["inputs"], fin["failed"]) == (3, 3, [])
    assert_same_outputs(plain, out)
    assert _manifest(out)["status"] == "complete"
    with pytest.raises(OutputError, match="already holds results"):  # as a plain run: no silent overwrite
        list(predict_batch(inputs, out, _opts(), workers=2))


def _shard_in_child(inputs: Path, out: Path, shard: tuple[int, int]) -> None:
    try:
        list(predict_batch(inputs, out, _opts(), shard=shard))
        os._exit(0)
    except BaseException:  # noqa: BLE001
        import traceback

        traceback.print_exc()
        os._exit(1)


def test_concurrent_shards_then_resume_equal_a_plain_run(inputs, plain, tmp_path):
    out = tmp_path / "shards"
    child = multiprocessing.get_context("fork").Process(target=_shard_in_child, args=(inputs, out, (0, 2)))
    child.start()  # shard 0 in another process while shard 1 runs here, into the same folder
    ev1 = list(predict_batch(inputs, out, _opts(), shard=(1, 2)))
    child.join()
    assert child.exitcode == 0
    assert ev1[-1]["inputs"] == 1  # 3 sorted inputs: shard 0 takes the 1st and 3rd, shard 1 the 2nd
    assert_same_outputs(plain, out)
    assert {e["shard"] for e in _manifest(out)["inputs"].values()} == {"0/2", "1/2"}

    # one result file lost: --resume redoes that input only, and the folder is whole again
    victim = sorted(n for n in _results(out) if n.startswith("street_"))[0]
    (out / victim).unlink()
    ev = list(predict_batch(inputs, out, _opts(resume=True), workers=2))
    assert sorted(Path(e["input"]).name for e in ev if e["event"] == "skipped") == sorted(PHOTOS)
    assert [Path(e["input"]).name for e in ev if e["event"] == "done"] == ["street.avi"]
    assert_same_outputs(plain, out)


def test_a_failing_input_fails_alone(inputs, tmp_path):
    bad = tmp_path / "in"
    bad.mkdir()
    (bad / PHOTOS[0]).symlink_to(inputs / PHOTOS[0])
    (bad / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    out = tmp_path / "out"
    events = []
    with pytest.raises(BatchError):
        for ev in predict_batch(bad, out, _opts(), workers=2):
            events.append(ev)
    fin = events[-1]
    assert fin["complete"] == 1 and [Path(f["input"]).name for f in fin["failed"]] == ["broken.jpg"]
    m = _manifest(out)
    assert m["inputs"][str(bad / "broken.jpg")]["status"] == "failed" and m["status"] == "failed"
    assert m["inputs"][str(bad / PHOTOS[0])]["status"] == "complete"


def test_ray_local_mode_equals_a_plain_run(inputs, plain, tmp_path):
    import ray  # part of the dev install (pyproject: dev includes ray[data]): never skipped

    from dpmesh_core.ray_predict import runner

    out = tmp_path / "ray"
    try:
        events = list(predict_batch(inputs, out, _opts(), workers=2,
                                    runner=runner(init_kwargs={"num_cpus": 2, "include_dashboard": False})))
    finally:
        if ray.is_initialized():
            ray.shutdown()
    fin = events[-1]
    assert fin["event"] == "finished" and (fin["complete"], fin["failed"]) == (3, [])
    assert_same_outputs(plain, out)


def test_cli_scaling_options_are_checked_before_any_model_loads(inputs, tmp_path, capsys):
    from dpmesh_core.cli import main

    assert main(["predict", str(inputs), "-o", str(tmp_path / "o"), "--shard", "2/2"]) == 2
    assert "--shard '2/2'" in capsys.readouterr().err
    assert main(["predict", str(inputs), "-o", str(tmp_path / "o"), "--workers", "0"]) == 2
    assert "--workers must be ≥ 1" in capsys.readouterr().err
    assert main(["predict", "-o", str(tmp_path / "o"), "--manifest", str(tmp_path / "none.txt")]) == 2
    assert "none.txt" in capsys.readouterr().err
    assert main(["predict", "-o", str(tmp_path / "o")]) == 2  # no input at all
    assert not (tmp_path / "o").exists()
