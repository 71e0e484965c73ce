"""Project save / load round trips, bad project files, moved media, autosave and crash recovery."""

from __future__ import annotations

import json

import numpy as np
import pytest
from app_testkit import PHOTO, RecordingEstimator, make_person

from app.editor import Editor
from app.jobs import InferenceService
from app.session import Session
from dpmesh_core.errors import MediaError, ProjectFileError


def _session(qtbot) -> Session:
    est = RecordingEstimator()
    s = Session(inference=InferenceService(estimator_factory=lambda: est))
    s.auto_detect = False
    s.test_estimator = est
    return s


@pytest.fixture
def session(qapp, qtbot, isolated_home):
    s = _session(qtbot)
    yield s
    s.shutdown()


def _edited_scene(s: Session, qtbot) -> None:
    s.open_path(PHOTO)
    s.doc.set_frame_persons(0, [make_person(0), make_person(1, x0=300)])
    u0, u1 = s.doc.uids()
    Editor(s.doc).move_keypoint(u0, 3, (111.0, 222.0))
    Editor(s.doc).toggle_visibility(u1, 5)
    Editor(s.doc).add_person(make_person(2, x0=400))
    qtbot.waitUntil(lambda: all(r is not None for r in s.doc.results()), timeout=60000)


def _persons_equal(a, b) -> bool:
    return len(a) == len(b) and all(
        np.allclose(p.keypoints, q.keypoints) and np.array_equal(p.visible, q.visible)
        and np.array_equal(p.edited, q.edited) and np.allclose(p.box, q.box) and p.source == q.source
        for p, q in zip(a, b))


def test_save_load_round_trip(session, qtbot, tmp_path):
    _edited_scene(session, qtbot)
    out = session.save_project(tmp_path / "scene")  # the extension is added
    assert out.suffix == ".dpmesh" and out.exists()
    assert session.doc.undo_stack.isClean()
    saved = json.loads(out.read_text())
    assert [r["model"] for r in saved["results"]["0"]] == ["test"] * 3  # body parameters are kept
    s2 = _session(qtbot)
    try:
        assert s2.load_project(out)
        assert s2.doc.media_path and s2.doc.media_path.endswith("000000000395.jpg")
        assert _persons_equal(s2.doc.persons(0), session.doc.persons(0))
        p = s2.doc.persons(0)[0]
        assert tuple(p.keypoints[3, :2]) == (111.0, 222.0) and p.edited[3]
        assert not s2.doc.persons(0)[1].visible[5]
        # meshes come back (re-estimated from the saved key-points)
        qtbot.waitUntil(lambda: all(r is not None for r in s2.doc.results()), timeout=60000)
    finally:
        s2.shutdown()


def test_corrupt_or_newer_project_leaves_document_untouched(session, qtbot, tmp_path):
    _edited_scene(session, qtbot)
    before = session.doc.persons(0)
    bad = tmp_path / "bad.dpmesh"
    bad.write_text("{ not json")
    with pytest.raises(ProjectFileError):
        session.load_project(bad)
    newer = tmp_path / "newer.dpmesh"
    good = session.save_project(tmp_path / "good.dpmesh")
    doc = json.loads(good.read_text())
    doc["format_version"] = 99
    newer.write_text(json.dumps(doc))
    with pytest.raises(ProjectFileError, match="newer"):
        session.load_project(newer)
    assert _persons_equal(session.doc.persons(0), before)
    with pytest.raises(MediaError):
        session.open_path(tmp_path / "missing.jpg")
    assert _persons_equal(session.doc.persons(0), before)


def test_moved_media_gives_clear_message(session, qtbot, tmp_path):
    import shutil

    media = tmp_path / "photo.jpg"
    shutil.copy(PHOTO, media)
    session.open_path(media)
    session.doc.set_frame_persons(0, [make_person(0)])
    proj = session.save_project(tmp_path / "p.dpmesh")
    moved = tmp_path / "moved.jpg"
    media.rename(moved)
    errors = []
    s2 = _session(qtbot)
    s2.error.connect(lambda t, m: errors.append((t, m)))
    try:
        assert s2.load_project(proj) is False
        assert errors and errors[0][0] == "Media file moved" and "photo.jpg" in errors[0][1]
        assert s2.load_project(proj, media_override=moved)
        assert len(s2.doc.persons(0)) == 1
    finally:
        s2.shutdown()


def test_autosave_and_crash_recovery(session, qtbot, isolated_home):
    from dpmesh_core import api

    _edited_scene(session, qtbot)
    assert api.find_recovery_files() == []
    target = session.autosave()
    assert target is not None and target.exists()
    assert session.autosave() is None  # nothing changed since
    assert target in api.find_recovery_files()
    edited_persons = session.doc.persons(0)
    # "crash": the session goes away without saving; a new one finds and restores the work
    s2 = _session(qtbot)
    try:
        files = s2.recovery_files()
        assert files == [target]
        assert s2.recover(files[0])
        assert _persons_equal(s2.doc.persons(0), edited_persons)
        assert s2.doc.project_path is None  # recovered work is not silently saved over a project
        # saving for real removes the recovery file
        s2.save_project(isolated_home / "saved.dpmesh")
        assert not target.exists()
    finally:
        s2.shutdown()


def test_export_meshes_and_keypoints(session, qtbot, tmp_path):
    _edited_scene(session, qtbot)
    files = session.export_meshes(tmp_path / "out", "all", ("obj",))
    from dpmesh_core import api

    assert [f.name for f in files] == [api.mesh_filename("COCO_val2014_000000000395", i, "obj") for i in range(3)]
    assert all(f.exists() and f.stat().st_size > 0 for f in files)
    session.doc.select(session.doc.uids()[1])
    sel = session.export_meshes(tmp_path / "sel", "selected", ("obj", "ply"))
    assert len(sel) == 2 and {f.suffix for f in sel} == {".obj", ".ply"}
    kp = session.export_keypoints(tmp_path / "kp.json")
    data = json.loads(kp.read_text())
    assert len(data["annotations"]) == 3


def test_reopened_project_shows_saved_meshes_without_fitting_again(qapp, qtbot, tmp_path, isolated_home, media_dir,
                                                                   reference_dir):
    """Reopening rebuilds each mesh from its saved body parameters (in the inference worker): the same
    meshes, no fitting. A person whose saved entry is unusable is estimated instead."""
    from app_testkit import fitted_photo_project

    fitter, out, before, persons = fitted_photo_project(qtbot, tmp_path, media_dir, reference_dir)
    data = json.loads(out.read_text())
    data["results"]["0"][2]["body_pose"] = "damaged"
    out.write_text(json.dumps(data))
    s2 = Session(inference=InferenceService(estimator_factory=lambda: fitter))
    s2.auto_detect = False
    try:
        evaluations = fitter.evaluations
        assert s2.load_project(out)
        qtbot.waitUntil(lambda: all(r is not None for r in s2.doc.results()), timeout=60000)
        after = s2.doc.results()
        for a, b in zip(after[:2], before[:2]):
            np.testing.assert_allclose(a.vertices, b.vertices, atol=1e-4)
            np.testing.assert_allclose(a.keypoints2d, b.keypoints2d, atol=1e-2)
        assert after[2].estimator == "fit"  # the damaged one was estimated again …
        spent = fitter.evaluations - evaluations
        assert 0 < spent  # … and only it: a cold fit of one person, not three
        one = fitter.evaluations
        fitter.estimate(None, [persons[2]], camera=after[2].camera)
        assert spent <= fitter.evaluations - one
    finally:
        s2.shutdown()
