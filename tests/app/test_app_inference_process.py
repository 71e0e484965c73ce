"""The inference process (``InferenceService`` without injected factories): the real detector and fitter on
a real photo, coalescing, cancellation (also of a streamed job), errors as the GUI shows them, the process
dying and coming back, clean shutdown, and a GUI process that never imports torch."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from app_testkit import street_clip

from app.jobs import InferenceService
from dpmesh_core import api
from dpmesh_core.types import Camera, MeshResult

PHOTO = "COCO_val2014_000000000395.jpg"
TESTKIT_DIR = str(Path(__file__).resolve().parent)  # app_testkit's named operations, for the process


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


class Recorder:
    def __init__(self, svc: InferenceService):
        self.results, self.errors, self.detected, self.finished, self.progress = [], [], [], [], []
        svc.result_ready.connect(lambda uid, r, err, secs: self.results.append((uid, r, err, secs)))
        svc.error.connect(lambda kind, msg: self.errors.append((kind, msg)))
        svc.persons_detected.connect(lambda f, persons: self.detected.append((f, persons)))
        svc.generic_finished.connect(lambda key, r: self.finished.append((key, r)))
        svc.generic_progress.connect(lambda key, v: self.progress.append((key, v)))


@pytest.fixture(scope="module")
def photo(media_dir) -> np.ndarray:
    media = api.open_media(media_dir / PHOTO)
    try:
        return np.ascontiguousarray(media.frame(0))
    finally:
        media.close()


@pytest.fixture(scope="module")
def service(qapp):
    """One inference process for the module (started once: torch, YOLO and Anny load once)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONPATH", os.pathsep.join(p for p in (TESTKIT_DIR, os.environ.get("PYTHONPATH")) if p))
        svc = InferenceService()
        assert svc.in_process
        svc.start()
        yield svc
        pid = svc.server_pid
        svc.shutdown()
        assert pid is None or _gone(pid)


@pytest.fixture(scope="module")
def fitted(service, photo, qapp):
    """(persons detected on the photo, their fitted results) through the inference process."""
    rec = Recorder(service)
    service.detect(0, photo)
    _wait(qapp, lambda: bool(rec.detected or rec.errors))
    assert not rec.errors
    persons = [p for p in rec.detected[0][1] if int(p.weights.astype(bool).sum()) >= 8][:3]
    assert len(persons) >= 2, "the photo has several clearly visible people"
    uids = list(range(100, 100 + len(persons)))
    cam = Camera.default_for(photo.shape[1], photo.shape[0])
    service.estimate_many(0, uids, photo, persons, cam)
    _wait(qapp, lambda: len(rec.results) == len(uids) or bool(rec.errors))
    assert not rec.errors
    return persons, {uid: r for uid, r, _err, _s in rec.results}, cam


def _wait(qapp, pred, timeout_s: float = 120.0) -> None:
    """qtbot.waitUntil for module-scoped fixtures."""
    import time

    t0 = time.monotonic()
    while not pred():
        qapp.processEvents()
        time.sleep(0.002)
        if time.monotonic() - t0 > timeout_s:
            raise AssertionError("timed out")


def _mean_reprojection(r: MeshResult, person) -> float:
    ok = person.weights > 0
    return float(np.linalg.norm(r.joints2d[ok] - person.keypoints[ok, :2], axis=1).mean())


def test_real_fit_through_the_process_then_a_drag(service, fitted, photo, qtbot):
    persons, results, cam = fitted
    for p, r in zip(persons, results.values()):
        assert isinstance(r, MeshResult) and r.vertices.shape[1] == 3 and np.isfinite(r.vertices).all()
        assert _mean_reprojection(r, p) < 0.1 * max(np.ptp(p.keypoints[:, 1]), 1.0)
    pid = service.server_pid
    assert pid is not None and pid != os.getpid()
    # a drag: one key-point moved, warm-started from the previous result (the image is sent by token now)
    uid, p, prev = 100, persons[0], results[100]
    j = int(np.argmax(p.weights))
    kp = p.keypoints.copy()
    kp[j, :2] += (25.0, 10.0)
    rec = Recorder(service)
    service.estimate(uid, photo, dataclasses.replace(p, keypoints=kp), cam, prev)
    qtbot.waitUntil(lambda: bool(rec.results), timeout=60000)
    uid_, r, err, secs = rec.results[0]
    assert uid_ == uid and err is None and secs > 0 and not np.allclose(r.vertices, prev.vertices)
    assert service.server_pid == pid


def test_edits_coalesce_and_cancel_in_process_mode(service, fitted, photo, qtbot, tmp_path):
    persons, results, cam = fitted
    rec = Recorder(service)
    gate = tmp_path / "gate"
    service.call("gate", "app_testkit:wait_for_file", str(gate))  # occupies the worker
    p = persons[0]
    for k in range(1, 11):  # 10 drags of one person while the worker is busy: only the last one runs
        kp = p.keypoints.copy()
        kp[:, 0] += 3.0 * k
        service.estimate(7, photo, dataclasses.replace(p, keypoints=kp), cam, results[100])
    service.estimate(8, photo, persons[1], cam)  # pending, then cancelled: never runs
    service.cancel(8)
    assert ("estimate", 7) in service.runner.pending_keys() and ("estimate", 8) not in service.runner.pending_keys()
    gate.touch()
    qtbot.waitUntil(lambda: bool(rec.results) and not service.runner.is_busy(), timeout=60000)
    assert [k for k, _ in rec.finished] == ["gate"] and rec.finished[0][1] == "opened"
    assert [r[0] for r in rec.results] == [7]
    shifted = _mean_reprojection(rec.results[0][1], dataclasses.replace(p, keypoints=p.keypoints + [30.0, 0, 0]))
    assert shifted < _mean_reprojection(rec.results[0][1], p)  # it fitted the last edit (+30 px)
    # a running job cancelled: its result is discarded
    gate2 = tmp_path / "gate2"
    service.call("gate", "app_testkit:wait_for_file", str(gate2))
    qtbot.waitUntil(lambda: service.runner.is_busy(), timeout=5000)
    service.runner.cancel(("call", "gate"))
    gate2.touch()
    service.call("after", "app_testkit:wait_for_file", str(gate2))
    qtbot.waitUntil(lambda: any(k == "after" for k, _ in rec.finished), timeout=30000)
    assert [k for k, _ in rec.finished] == ["gate", "after"]


def test_streamed_job_stops_between_messages(service, qtbot, tmp_path):
    rec = Recorder(service)
    gate, done = tmp_path / "gate", tmp_path / "done"
    service.call("count", "app_testkit:count_up", 1000, str(gate), str(done))
    qtbot.waitUntil(lambda: bool(rec.progress), timeout=30000)
    service.runner.cancel(("call", "count"))
    gate.touch()
    qtbot.waitUntil(lambda: done.exists() and not service.runner.is_busy(), timeout=30000)
    assert len(rec.progress) <= 2 and not rec.finished and not rec.errors
    assert done.read_text() == "closed"  # the generator was closed in the process
    # the conversation is in step: the next job is answered normally
    service.call("count", "app_testkit:count_up", 3, str(gate), str(done))
    qtbot.waitUntil(lambda: bool(rec.finished), timeout=30000)
    assert [v for _k, v in rec.progress[-3:]] == [0, 1, 2] and rec.finished == [("count", 2)]


def test_errors_come_back_as_the_gui_shows_them(service, fitted, photo, qtbot, tmp_path):
    persons, _results, cam = fitted
    rec = Recorder(service)
    service.call("bad", "app_testkit:fail_with", "missing")
    service.call("zero", "app_testkit:fail_with", "zero")
    qtbot.waitUntil(lambda: len(rec.errors) == 2, timeout=30000)
    assert rec.errors[0] == ("call", "missing model file: SMPL_NEUTRAL.npz; looked in: /nowhere. "
                                     "Download it from smpl.is.tue.mpg.de.")
    assert rec.errors[1] == ("call", "ZeroDivisionError: division by zero")
    # a DPMesh checkpoint that does not exist: the same message as the core gives, per person
    missing = tmp_path / "no-such-checkpoint"
    with pytest.raises(Exception) as expected:
        api.make_estimator("dpmesh", model_path=missing)
    service.set_estimator("dpmesh", str(missing))
    try:
        service.estimate(5, photo, persons[0], cam)
        qtbot.waitUntil(lambda: bool(rec.results), timeout=60000)
        uid, r, err, _secs = rec.results[0]
        assert uid == 5 and r is None and err == str(expected.value) and str(missing) in err
        assert rec.errors[-1] == ("estimate", str(expected.value))
    finally:
        service.set_estimator("fit")
    service.estimate(6, photo, persons[0], cam)
    qtbot.waitUntil(lambda: len(rec.results) == 2, timeout=60000)
    assert rec.results[1][0] == 6 and isinstance(rec.results[1][1], MeshResult)


def test_process_killed_mid_job_is_reported_then_restarted(service, qtbot, tmp_path):
    rec = Recorder(service)
    service.call("gate", "app_testkit:wait_for_file", str(tmp_path / "never"))
    qtbot.waitUntil(lambda: service.runner.is_busy() and service.server_pid is not None, timeout=5000)
    pid = service.server_pid
    os.kill(pid, signal.SIGKILL)
    qtbot.waitUntil(lambda: bool(rec.errors), timeout=30000)
    assert rec.errors[0][0] == "call" and "inference process stopped unexpectedly" in rec.errors[0][1]
    assert f"exit code {-signal.SIGKILL}" in rec.errors[0][1]
    (tmp_path / "open").touch()
    service.call("again", "app_testkit:wait_for_file", str(tmp_path / "open"))  # started again for the next job
    qtbot.waitUntil(lambda: bool(rec.finished), timeout=30000)
    assert rec.finished == [("again", "opened")] and len(rec.errors) == 1
    assert service.server_pid not in (None, pid) and _gone(pid)


def test_shutdown_while_busy_leaves_no_process(qapp, qtbot, tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", TESTKIT_DIR)
    svc = InferenceService()
    started = []
    svc.runner.job_started.connect(lambda k, i: started.append(k))
    svc.call("gate", "app_testkit:wait_for_file", str(tmp_path / "never"))  # never finishes on its own
    qtbot.waitUntil(lambda: bool(started) and svc.server_pid is not None, timeout=10000)
    pid = svc.server_pid
    svc.shutdown()
    assert not svc.runner.isRunning() and svc.server_pid is None and _gone(pid)


def test_video_job_streams_frames_and_stops_between_them(service, media_dir, qtbot):
    """The whole-video operation in the process: real detection, tracking and fitting on a real clip, one
    progress message per processed frame, a frame the user already has keeps its persons, and cancelling
    stops it before the next frame."""
    from app import ops

    rec = Recorder(service)
    media = api.open_media(media_dir / "street.avi")
    try:
        n = media.num_frames
    finally:
        media.close()
    stride = 150  # frames 0 and 150
    rec_known = Recorder(service)
    service.call("video", ops.process_video, str(media_dir / "street.avi"), stride, True, {150: []})
    qtbot.waitUntil(lambda: bool(rec.finished or rec.errors), timeout=120000)
    assert not rec.errors
    frames = [v[1] for k, v in rec.progress if k == "video"]
    assert frames == list(range(0, n, stride)) and all(v[0] == "frame" for _k, v in rec.progress)
    assert rec.progress[1][1][3:] == ([], [], True, [])  # a frame the user emptied stays empty (nobody hidden)
    for _k, (_kind, _f, total, persons, results, _was_known, _occluded) in rec.progress[:1]:
        assert total == n and len(persons) == len(results) >= 2
        assert all(p.track_id is not None for p in persons)
        assert all(isinstance(r, MeshResult) or isinstance(r, Exception) for r in results)
    assert sum(isinstance(r, MeshResult) for v in rec.progress for r in v[1][4]) >= 2
    # the user's persons of frame 0 are kept (not detected again); cancelled after the first frame
    mine = rec.progress[0][1][3][:1]
    service.call("video", ops.process_video, str(media_dir / "street.avi"), stride, False, {0: mine})
    qtbot.waitUntil(lambda: len(rec_known.progress) > len(frames), timeout=60000)
    service.runner.cancel(("call", "video"))
    qtbot.waitUntil(lambda: not service.runner.is_busy(), timeout=60000)
    _kind, f, _total, persons, results, was_known, _occluded = rec_known.progress[len(frames)][1]
    assert f == 0 and was_known and len(persons) == 1 and np.allclose(persons[0].keypoints, mine[0].keypoints)
    assert len(rec_known.progress) <= len(frames) + 2 and len(rec.finished) == 1


def test_closures_cannot_be_sent_to_the_process(service):
    with pytest.raises(TypeError, match="module-level function"):
        service.call("x", lambda ctx: None)
    with pytest.raises(TypeError, match="set_estimator"):
        service.set_estimator_factory(lambda: None)


DRIVE = r"""
import sys, time
import numpy as np
from PySide6.QtWidgets import QApplication
app = QApplication([])
from app.editor import Editor
from app.session import Session
s = Session()
def spin(pred, what):
    t = time.perf_counter()
    while not pred():
        app.processEvents()
        time.sleep(0.002)
        if time.perf_counter() - t > 240:
            sys.exit("timed out waiting for " + what)
s.open_path(sys.argv[1])
doc = s.doc
spin(lambda: doc.persons() and all(doc.result(u) is not None or doc.result_error(u) for u in doc.uids())
     and not s.is_busy(), "detection + estimation")
uid = max((u for u in doc.uids() if doc.result(u) is not None), key=lambda u: doc.person(u).weights.sum())
p, old = doc.person(uid), doc.result(uid)
j = int(np.argmax(p.weights))
for k in range(3):  # a drag: moves, then the release
    Editor(doc).move_keypoint(uid, j, (float(p.keypoints[j, 0]) + 5 * k + 5, float(p.keypoints[j, 1])), drag_id=7)
spin(lambda: doc.result(uid) is not old and doc.result(uid) is not None and not s.is_busy(), "re-estimation")
from app.widgets.skeletons import JointTables
pid = s.inference.server_pid
s.shutdown()
print("RESULT", len(doc.persons()), sum(r is not None for r in doc.results()), "limbs" if JointTables.get("coco17")[1] else "none",
      "torch" in sys.modules, pid, flush=True)
"""


@pytest.mark.parametrize("media", [PHOTO, "street.avi"])
def test_gui_process_never_imports_torch(media_dir, media):
    """A fresh interpreter drives a Session (the app's default configuration) through detection (and, on
    video, tracking), estimation and a key-point drag: torch is loaded only by the inference process."""
    repo = Path(__file__).resolve().parents[2]
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    out = subprocess.run([sys.executable, "-c", DRIVE, str(media_dir / media)], cwd=repo, env=env,
                         capture_output=True, text=True, timeout=300)
    line = [x for x in out.stdout.splitlines() if x.startswith("RESULT")]
    assert out.returncode == 0 and line, out.stdout[-2000:] + out.stderr[-4000:]
    _, n_persons, n_results, limbs, torch_loaded, pid = line[0].split()
    assert int(n_persons) >= 2 and int(n_results) >= 2
    assert limbs == "limbs"  # the GUI has the joint tables (body.joints: no torch)
    assert torch_loaded == "False"
    assert pid != "None" and _gone(int(pid))


def test_signal_emits_cannot_exhaust_true(qapp):
    """PySide6 6.12 drops a reference to True per ``emit``; the app pins the singletons at start
    (``app.runtime.pin_singletons``, from ``app.main.configure_runtime`` and ``Session``), so a long session in
    a process without torch does not abort with "deallocating True"."""
    from PySide6.QtCore import QObject, Signal

    from app.runtime import pin_singletons

    pin_singletons()

    class Emitter(QObject):
        ping = Signal(int)

    e = Emitter()
    got = []
    e.ping.connect(got.append)
    for i in range(2000):
        e.ping.emit(i)
    assert len(got) == 2000
    assert min(sys.getrefcount(x) for x in (None, True, False)) > 1 << 39


class _Context:
    """The worker context ops receive (what the inference process gives them), built in this process."""

    def __init__(self):
        self._est, self._det = api.make_estimator("fit"), api.get_detector("yolo")

    def estimator(self):
        return self._est

    def detector(self):
        return self._det


def test_video_job_smooths_each_track_when_smoothing_is_on(media_dir, tmp_path):
    """With "temporal mesh smoothing" on, the app's video job smooths each track over time like
    `dpmesh predict` does (frames come a few frames late, all of them, in order); off, it only warm-starts."""
    from app import ops
    clip = street_clip(tmp_path / "clip.avi", range(9))
    ctx = _Context()

    def run(smooth):
        out = list(ops.process_video(ctx, str(clip), 1, smooth, {}))
        assert [f for _kind, f, *_ in out] == list(range(9))
        tracks: dict = {}
        for _kind, f, _n, _ps, rs, _known, _occluded in out:
            for r in rs:
                if isinstance(r, MeshResult):
                    tracks.setdefault(r.track_id, {})[f] = r.joints3d - r.joints3d.mean(0)
        acc = [np.linalg.norm(s[t + 1] - 2 * s[t] + s[t - 1], axis=1).mean() for s in tracks.values() for t in s
               if t - 1 in s and t + 1 in s]
        assert len(acc) >= 10
        return float(np.mean(acc))

    assert run(True) < 0.6 * run(False)
