"""Project file: round trip, relative media paths, moved media, version and corruption errors, recovery."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from io_helpers import make_result

from dpmesh_core.errors import ProjectFileError
from dpmesh_core.io import (
    ProjectData,
    autosave_path_for,
    find_recovery_files,
    load_project,
    results_summary,
    save_project,
    summary_to_params,
)
from dpmesh_core.types import Person


@pytest.fixture()
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("DPMESH_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _project(media):
    kp = np.random.default_rng(0).uniform(0, 100, (17, 3)).astype(np.float32)
    kp[4] = np.nan  # a missing joint stays NaN through the file
    vis = np.ones(17, bool)
    vis[[3, 4]] = False
    ed = np.zeros(17, bool)
    ed[7] = True
    persons = [Person(box=[1, 2, 50, 90], keypoints=kp, visible=vis, score=0.8, track_id=3, source="user", edited=ed),
               Person(box=[5, 5, 20, 30], keypoints=np.ones((18, 3)), joint_set="openpose18", source="file")]
    results = results_summary([make_result(0, track_id=3), None])
    return ProjectData(media_path=str(media), frames={0: persons, 4: []}, results={0: results},
                       settings={"estimator": "fit", "threshold": 0.3})


def test_roundtrip(tmp_path):
    media = tmp_path / "media" / "clip.avi"
    media.parent.mkdir()
    media.write_bytes(b"x")
    proj = _project(media)
    p = save_project(tmp_path / "proj" / "a.dpmesh", proj)
    assert proj.created and proj.modified and proj.path == p
    doc = json.loads(p.read_text())
    assert doc["format_version"] == 1 and doc["media"]["path"] == "../media/clip.avi"
    back = load_project(p)
    assert not back.media_missing and os.path.samefile(back.media_path, media)
    assert back.settings == proj.settings and back.created == proj.created
    assert sorted(back.frames) == [0, 4] and back.frames[4] == []
    for a, b in zip(proj.frames[0], back.frames[0]):
        np.testing.assert_array_equal(a.keypoints, b.keypoints)  # NaN == NaN with assert_array_equal
        np.testing.assert_array_equal(a.box, b.box)
        np.testing.assert_array_equal(a.visible, b.visible)
        np.testing.assert_array_equal(a.edited, b.edited)
        assert (a.joint_set, a.score, a.track_id, a.source) == (b.joint_set, b.score, b.track_id, b.source)
    assert back.results[0][1] is None
    params, cam = summary_to_params(back.results[0][0])
    r = make_result(0)
    np.testing.assert_allclose(params.body_pose, r.params.body_pose)
    np.testing.assert_allclose(params.extra["vposer_z"], r.params.extra["vposer_z"])
    assert cam == r.camera and back.results[0][0]["track_id"] == 3
    assert "vertices" not in json.dumps(back.results)


def test_moved_together_and_media_missing(tmp_path):
    d = tmp_path / "work"
    d.mkdir()
    media = d / "img.jpg"
    media.write_bytes(b"x")
    save_project(d / "p.dpmesh", _project(media))
    moved = tmp_path / "moved"
    shutil.move(str(d), str(moved))
    back = load_project(moved / "p.dpmesh")  # relative path still finds the media
    assert not back.media_missing and os.path.samefile(back.media_path, moved / "img.jpg")
    (moved / "img.jpg").unlink()
    back = load_project(moved / "p.dpmesh")
    assert back.media_missing and back.frames[0][0].track_id == 3


def test_newer_version_and_corrupt(tmp_path):
    media = tmp_path / "m.png"
    media.write_bytes(b"x")
    p = save_project(tmp_path / "p.dpmesh", _project(media))
    doc = json.loads(p.read_text())
    doc["format_version"] = 2
    newer = tmp_path / "newer.dpmesh"
    newer.write_text(json.dumps(doc))
    with pytest.raises(ProjectFileError, match="newer") as ei:
        load_project(newer)
    assert ei.value.path == str(newer)
    broken = tmp_path / "broken.dpmesh"
    broken.write_text(p.read_text()[:200])
    with pytest.raises(ProjectFileError, match="corrupt project file: broken JSON"):
        load_project(broken)
    notproj = tmp_path / "other.dpmesh"
    notproj.write_text(json.dumps({"hello": 1}))
    with pytest.raises(ProjectFileError, match="no format_version"):
        load_project(notproj)
    doc["format_version"] = 1
    doc["frames"]["0"][0]["keypoints"] = "garbage"
    bad = tmp_path / "bad.dpmesh"
    bad.write_text(json.dumps(doc))
    with pytest.raises(ProjectFileError, match=r"frames\[0\]\[0\]"):
        load_project(bad)
    with pytest.raises(ProjectFileError, match="no such project file"):
        load_project(tmp_path / "none.dpmesh")


def test_save_failure_keeps_previous(tmp_path):
    media = tmp_path / "m.png"
    media.write_bytes(b"x")
    proj = _project(media)
    p = save_project(tmp_path / "p.dpmesh", proj)
    before = p.read_text()
    proj.settings["bad"] = object()
    with pytest.raises(ProjectFileError, match="not plain JSON"):
        save_project(p, proj)
    assert p.read_text() == before
    assert sorted(f.name for f in tmp_path.iterdir()) == ["m.png", "p.dpmesh"]


def test_autosave_and_recovery(tmp_path, home):
    media = tmp_path / "street.avi"
    media.write_bytes(b"x")
    assert find_recovery_files() == []
    a = autosave_path_for(media)
    b = autosave_path_for(tmp_path / "proj.dpmesh")
    assert a == autosave_path_for(str(media)) and a != b
    assert a.parent == home / "data" / "autosave" and a.name.startswith("street.")
    save_project(a, _project(media))
    save_project(b, _project(media))
    os.utime(a, (1_000_000, 1_000_000))
    assert find_recovery_files() == [b, a]
    rec = load_project(find_recovery_files()[-1])
    assert not rec.media_missing and os.path.samefile(rec.media_path, media)


def test_project_without_media(tmp_path):
    p = save_project(tmp_path / "empty.dpmesh", ProjectData(media_path=""))
    back = load_project(p)
    assert back.media_missing and back.media_path == "" and back.frames == {} and back.results == {}


def test_saved_results_rebuild_the_same_meshes_without_fitting(tmp_path, media_dir, reference_dir):
    """A project keeps body parameters, not vertices; api.restore_results skins them back (no fitting) to the
    meshes the fitter produced. Damaged entries or body models that cannot be built come back as None."""
    from dpmesh_core import api
    from dpmesh_core.io import ProjectData, load_project, save_project

    name = "COCO_val2014_000000000192.jpg"
    ref = json.loads((reference_dir / "yolo11n_pose_detections.json").read_text())["images"][name]
    persons = [Person(box=p["box_xyxy"], keypoints=p["keypoints"], score=p["score"], track_id=i)
               for i, p in enumerate(ref["people"][:3])]
    image = api.read_image(media_dir / name)
    est = api.make_estimator("fit", body_model="synthetic-smpl")
    results = api.estimate(image, persons, est)
    path = tmp_path / "p.dpmesh.json"
    save_project(path, ProjectData(media_path=str(media_dir / name), frames={0: persons},
                                   results={0: api.results_summary(results)}))
    data = load_project(path)
    evaluations = est.evaluations
    back = api.restore_results(data.results[0], data.frames[0], est)
    assert est.evaluations == evaluations  # nothing was fitted
    for a, r in zip(back, results):
        np.testing.assert_allclose(a.vertices, r.vertices, atol=1e-4)
        np.testing.assert_allclose(a.keypoints2d, r.keypoints2d, atol=1e-2)
        assert (a.estimator, a.track_id, a.joint_set) == (r.estimator, r.track_id, r.joint_set)
        assert a.loss == pytest.approx(r.loss)
    # without the fitter at hand it builds one for the saved body model, once for all calls sharing a cache
    fitters: dict = {}
    alone = api.restore_results(data.results[0][:1], data.frames[0][:1], None, fitters)
    np.testing.assert_allclose(alone[0].vertices, results[0].vertices, atol=1e-4)
    built = fitters["synthetic-smpl"]
    api.restore_results(data.results[0][1:2], data.frames[0][1:2], None, fitters)
    assert fitters == {"synthetic-smpl": built}
    damaged = [dict(data.results[0][0], body_pose="junk"), None, dict(data.results[0][2], model="no-such-model")]
    assert api.restore_results(damaged, data.frames[0], est) == [None, None, None]
