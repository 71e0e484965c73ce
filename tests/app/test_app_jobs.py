"""The background worker: coalescing (latest wins), cancellation, errors as signals, training process."""

from __future__ import annotations

import json
import sys
import threading

import pytest
from app_testkit import RecordingEstimator, make_person

from app.jobs import InferenceService, JobRunner, TrainingProcess
from dpmesh_core.errors import DPMeshError


@pytest.fixture
def runner(qapp):
    r = JobRunner("test")
    yield r
    r.stop()


def test_runner_coalesces_latest_wins(runner, qtbot):
    gate = threading.Event()
    ran: list[int] = []
    finished: list[tuple] = []
    runner.job_finished.connect(lambda k, i, res: finished.append((k, res)))
    started = threading.Event()
    runner.submit("blocker", lambda: (started.set(), gate.wait(10), ran.append(-1))[2])
    assert started.wait(5)
    for i in range(10):  # 10 rapid edits of the same person while the worker is busy
        runner.submit(("estimate", 1), lambda i=i: (ran.append(i), i)[1])
    runner.submit(("estimate", 2), lambda: (ran.append(100), 100)[1])  # another person is kept
    assert runner.pending_keys() == [("estimate", 1), ("estimate", 2)]
    gate.set()
    qtbot.waitUntil(lambda: len(finished) == 3, timeout=5000)
    assert ran == [-1, 9, 100]
    assert finished[1] == (("estimate", 1), 9)
    qtbot.waitUntil(lambda: not runner.is_busy(), timeout=2000)


def test_runner_cancel_pending_and_running(runner, qtbot):
    gate = threading.Event()
    started = threading.Event()
    finished, cancelled = [], []
    runner.job_finished.connect(lambda k, i, r: finished.append(k))
    runner.job_cancelled.connect(lambda k, i: cancelled.append(k))
    runner.submit("running", lambda: (started.set(), gate.wait(10), "late")[2])
    assert started.wait(5)
    runner.submit("pending", lambda: "never")
    assert runner.cancel("pending")
    assert runner.cancel("running")
    gate.set()
    qtbot.waitUntil(lambda: len(cancelled) == 2, timeout=5000)
    assert set(cancelled) == {"pending", "running"} and finished == []
    assert not runner.cancel("nothing-like-this")


def test_runner_generator_job_stops_at_next_yield(runner, qtbot):
    steps: list[int] = []
    gate = threading.Event()
    first = threading.Event()
    cancelled = []
    runner.job_cancelled.connect(lambda k, i: cancelled.append(k))

    def gen():
        for i in range(100):
            steps.append(i)
            if i == 0:
                first.set()
                gate.wait(10)
            yield i

    runner.submit("gen", gen)
    assert first.wait(5)
    runner.cancel("gen")
    gate.set()
    qtbot.waitUntil(lambda: cancelled == ["gen"], timeout=5000)
    assert len(steps) <= 2


def test_runner_errors_become_signals_and_thread_survives(runner, qtbot):
    failures, finished = [], []
    runner.job_failed.connect(lambda k, i, msg, exc: failures.append((k, msg, type(exc))))
    runner.job_finished.connect(lambda k, i, r: finished.append(r))
    runner.submit("bad", lambda: 1 / 0)
    runner.submit("user-error", lambda: (_ for _ in ()).throw(DPMeshError("model file of the wrong kind")))
    runner.submit("good", lambda: 42)
    qtbot.waitUntil(lambda: len(failures) == 2 and finished == [42], timeout=5000)
    assert failures[0][0] == "bad" and "ZeroDivisionError" in failures[0][1]
    assert failures[1] == ("user-error", "model file of the wrong kind", DPMeshError)


def test_inference_service_coalesces_edits_of_one_person(qapp, qtbot, image):
    est = RecordingEstimator()
    svc = InferenceService(estimator_factory=lambda: est)
    results = []
    svc.result_ready.connect(lambda uid, r, err, secs: results.append((uid, r, err)))
    try:
        est.gate.clear()
        svc.estimate(1, image, make_person(0))  # occupies the worker
        assert est.started.wait(5)
        persons = [make_person(10 + i) for i in range(10)]
        for p in persons:
            svc.estimate(7, image, p)
        est.gate.set()
        qtbot.waitUntil(lambda: len(results) == 2, timeout=5000)
        assert len(est.calls) == 2
        assert est.calls[1] is persons[-1]  # only the latest edit was estimated
        assert results[1][0] == 7 and results[1][1] is not None and results[1][2] is None
        # a person the estimator rejects → error message, not an exception
        est.fail_on = {3}
        svc.estimate(8, image, make_person(3))
        qtbot.waitUntil(lambda: len(results) == 3, timeout=5000)
        assert results[2][0] == 8 and results[2][1] is None and "too few" in results[2][2]
    finally:
        svc.shutdown()


def test_inference_service_estimator_raising_emits_error(qapp, qtbot, image):
    est = RecordingEstimator()
    est.raise_exc = RuntimeError("out of memory")
    svc = InferenceService(estimator_factory=lambda: est)
    errors, results = [], []
    svc.error.connect(lambda kind, msg: errors.append((kind, msg)))
    svc.result_ready.connect(lambda uid, r, err, secs: results.append((uid, r, err)))
    try:
        svc.estimate(3, image, make_person(0))
        qtbot.waitUntil(lambda: bool(errors and results), timeout=5000)
        assert errors[0][0] == "estimate" and "out of memory" in errors[0][1]
        assert results[0][0] == 3 and results[0][1] is None and "out of memory" in results[0][2]
        # the factory failing (e.g. a model file of the wrong kind) is reported the same way
        svc.set_estimator_factory(lambda: (_ for _ in ()).throw(DPMeshError("checkpoint is not a DPMesh one")))
        svc.estimate(4, image, make_person(1))
        qtbot.waitUntil(lambda: len(errors) == 2, timeout=5000)
        assert "checkpoint is not a DPMesh one" in errors[1][1]
    finally:
        svc.shutdown()


def test_inference_service_cancel(qapp, qtbot, image):
    est = RecordingEstimator()
    svc = InferenceService(estimator_factory=lambda: est)
    results = []
    svc.result_ready.connect(lambda uid, r, err, secs: results.append(uid))
    try:
        est.gate.clear()
        svc.estimate(1, image, make_person(0))
        assert est.started.wait(5)
        svc.estimate(2, image, make_person(1))
        svc.cancel(2)  # pending: never runs
        svc.cancel(1)  # running: result discarded
        est.gate.set()
        svc.estimate(3, image, make_person(2))
        qtbot.waitUntil(lambda: results == [3], timeout=5000)
        assert len(est.calls) == 2  # person 1 (discarded) and person 3
    finally:
        svc.shutdown()


def test_training_process_parses_json_lines(qapp, qtbot, tmp_path):
    script = tmp_path / "fake_train.py"
    lines = [{"event": "step", "step": s, "loss": 1.0 / s, "losses": {"joint": 0.5 / s}, "lr": 1e-4}
             for s in range(1, 6)]
    lines.append({"event": "eval", "metrics": {"mpjpe": 80.0}})
    lines.append({"event": "done"})
    body = "\n".join(f"print({json.dumps(json.dumps(e))}, flush=True)" for e in lines)
    script.write_text("print('a plain log line')\n" + body + "\n")
    tp = TrainingProcess()
    events, logs, done = [], [], []
    tp.event.connect(events.append)
    tp.log.connect(logs.append)
    tp.finished.connect(lambda code, how: done.append(code))
    tp.start("unused.yaml", program=(sys.executable, [str(script)]))
    qtbot.waitUntil(lambda: bool(done), timeout=20000)
    assert done == [0]
    assert [e["event"] for e in events] == ["step"] * 5 + ["eval", "done"]
    assert events[4]["loss"] == pytest.approx(0.2)
    assert "a plain log line" in logs
    cmd, args = tp.command("cfg.yaml")
    assert cmd == sys.executable and args[:3] == ["-m", "dpmesh_core.cli", "train"] and "--json" in args


def test_training_process_stop(qapp, qtbot, tmp_path):
    script = tmp_path / "slow.py"
    script.write_text("import time\nprint('{\"event\": \"step\", \"step\": 1, \"loss\": 1.0}', flush=True)\n"
                      "time.sleep(60)\n")
    tp = TrainingProcess()
    events, done = [], []
    tp.event.connect(events.append)
    tp.finished.connect(lambda code, how: done.append(how))
    tp.start("x", program=(sys.executable, [str(script)]))
    try:
        qtbot.waitUntil(lambda: bool(events), timeout=20000)
        assert tp.is_running()
    finally:
        tp.stop()
    qtbot.waitUntil(lambda: bool(done), timeout=10000)
    assert not tp.is_running()


def _box_result(cx: float, cy: float, z: float, s: float = 0.3):
    """A MeshResult whose mesh is a cube of side ``s`` metres centred at (cx, cy, z), camera frame."""
    import numpy as np

    from dpmesh_core.types import BodyParams, Camera, MeshResult

    c = np.array([[x, y, zz] for x in (-1, 1) for y in (-1, 1) for zz in (-1, 1)], np.float32) * s / 2
    v = c + np.array([cx, cy, z], np.float32)
    f = np.array([[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1],
                  [2, 3, 7], [2, 7, 6], [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]], np.int32)
    zeros3 = np.zeros(3, np.float32)
    return MeshResult(vertices=v, faces=f, joints3d=v[:2], joints2d=np.zeros((2, 2), np.float32), joint_set="coco17",
                      params=BodyParams("smpl", zeros3, np.zeros(69, np.float32), np.zeros(10, np.float32), zeros3),
                      camera=Camera.default_for(96, 80))


def test_overlay_layers_match_render_overlay_after_one_person_changes():
    """The render process's per-person layer cache gives the same picture as one render of all meshes,
    including where persons overlap (depth), after a full render, an idle fill and a one-person edit."""
    import numpy as np

    from dpmesh_core import api

    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (80, 96, 3), dtype=np.uint8)
    renderer = api.MeshRenderer(96, 80, backend="numpy")
    results = [_box_result(-0.2, 0.0, 3.0), _box_result(0.0, 0.05, 3.4), _box_result(0.15, -0.1, 2.6), None,
               _box_result(0.8, 0.55, 3.0, s=0.2)]  # the last one overlaps nobody
    colors = [(0.9, 0.1, 0.1), (0.1, 0.9, 0.1), (0.1, 0.1, 0.9), (1.0, 1.0, 0.0), (0.9, 0.5, 0.1)]
    layers = api.OverlayLayers()
    get = lambda w, h: renderer  # noqa: E731
    first = layers.overlay(get, image, results, 0.6, colors)
    np.testing.assert_array_equal(first, renderer.render_overlay(image, results, 0.6, colors=colors))
    assert len(layers.layers) == 4  # one layer a person, composed
    moved = list(results)
    moved[1] = _box_result(-0.1, 0.0, 2.9)  # now in front of person 0
    again = layers.overlay(get, image, moved, 0.6, colors)
    assert len(layers.layers) == 5  # only the edited person was rendered
    np.testing.assert_array_equal(again, renderer.render_overlay(image, moved, 0.6, colors=colors))
    assert not np.array_equal(again, first)
    # more edits patch the last picture where the edited person was and is (moved away, then an empty
    # result, then back): still the full render's picture each time
    full = []
    compose = layers.compose
    layers.compose = lambda *a, **k: (full.append(1), compose(*a, **k))[1]
    for r1 in (_box_result(0.3, 0.3, 3.2), _box_result(0.35, 0.3, 3.0), None, _box_result(-0.15, 0.0, 2.8)):
        moved[1] = r1
        patched = layers.overlay(get, image, moved, 0.6, colors)
        np.testing.assert_array_equal(patched, renderer.render_overlay(image, moved, 0.6, colors=colors))
    assert len(full) == 2  # the two moves were patched; removing and re-adding a person recomposes all
    # the mesh view at the camera's own view comes from the same layers (another size: its own layers)
    small = api.MeshRenderer(48, 40, backend="numpy")
    get2 = lambda w, h: renderer if (w, h) == (96, 80) else small  # noqa: E731
    meshes = [(r.vertices, r.faces, c) for r, c in zip(moved, colors) if r is not None]
    cam = moved[0].camera
    for _ in range(2):  # rendered, then from the layers
        np.testing.assert_array_equal(layers.view(get2, meshes, cam, np.eye(4), (48, 40)), small.render(meshes, cam, None))
    turned = np.eye(4)
    turned[:3, 3] = (0.05, 0.0, 0.1)
    np.testing.assert_array_equal(layers.view(get2, meshes, cam, turned, (48, 40)), small.render(meshes, cam, turned))


def test_overlay_and_mesh_view_render_in_separate_processes(qapp, qtbot):
    """The image overlay and the mesh view each have a render thread and a render process (Open3D), so an
    edit's overlay never queues behind a mesh-view render; both give pictures; shutdown leaves no process."""
    import os

    import numpy as np

    from app.jobs import RenderService

    svc = RenderService()
    got: dict = {}
    svc.rendered.connect(lambda k, rgb, secs: got.__setitem__(k, rgb))
    try:
        svc.start()
        qtbot.waitUntil(lambda: svc._client.proc is not None and svc._view_client.proc is not None, timeout=20000)
        a, b = svc._client.proc.pid, svc._view_client.proc.pid
        assert a != b
        # the 3-D view's process yields the cores to the overlay's (and the fit's): lower priority, all threads
        from app.jobs.render import VIEW_NICE

        base = os.getpriority(os.PRIO_PROCESS, 0)
        assert os.getpriority(os.PRIO_PROCESS, a) == base
        assert os.getpriority(os.PRIO_PROCESS, b) == min(base + VIEW_NICE, 19)
        image = np.full((80, 96, 3), 40, np.uint8)
        # a new photo's overlay renderer is made in the background first (no picture, no signal)
        svc.prepare_overlay((96, 80))
        qtbot.waitUntil(lambda: not svc.is_busy(), timeout=60000)
        assert not got
        results = [_box_result(-0.2, 0.0, 3.0), _box_result(0.15, -0.1, 2.6)]
        meshes = [(r.vertices, r.faces, (0.9, 0.2, 0.2)) for r in results]
        svc.render_view("view", meshes, results[0].camera, np.eye(4), (48, 40))
        svc.render_overlay("overlay", image, results, 0.6, [(0.1, 0.9, 0.1)] * 2)
        qtbot.waitUntil(lambda: {"view", "overlay"} <= set(got), timeout=60000)
        assert got["view"].shape == (40, 48, 3) and got["overlay"].shape == image.shape
        assert (got["overlay"] != image).any(axis=2).sum() > 50  # the boxes are drawn over the image
        assert svc._client.proc.pid == a and svc._view_client.proc.pid == b  # still the same processes
        for tid in os.listdir(f"/proc/{b}/task"):  # llvmpipe's threads, started after the priority was set
            assert os.getpriority(os.PRIO_PROCESS, int(tid)) >= min(base + VIEW_NICE, 19)  # (Mesa's cache: 19)
    finally:
        svc.shutdown()
    for pid in (a, b):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        with open(f"/proc/{pid}/stat") as f:  # a zombie would be reaped by the parent, never a live process
            assert f.read().split()[2] == "Z"


def test_render_process_gets_unchanged_arrays_by_token(qapp):
    """After a first overlay, an edit's request names the image and the unchanged persons' arrays by token:
    the message shrinks to about one person's vertices, and the picture is the one the same two requests
    give when every array is sent in full."""
    import collections
    import pickle

    import numpy as np

    from app.jobs.protocol import RenderOverlay
    from app.jobs.render import RenderClient

    rng = np.random.default_rng(1)
    image = rng.integers(0, 255, (80, 96, 3), dtype=np.uint8)
    results = [_box_result(-0.2, 0.0, 3.0), _box_result(0.15, -0.1, 2.6), _box_result(0.3, 0.2, 3.5)]
    colors = [(0.9, 0.1, 0.1), (0.1, 0.9, 0.1), (0.1, 0.1, 0.9)]

    def request(rs):
        return RenderOverlay(image, tuple((r.vertices, r.faces, c) for r, c in zip(rs, colors)), rs[0].camera, 0.6)

    edited = [results[0], _box_result(0.1, -0.05, 2.7), results[2]]
    tokens, full = RenderClient(), RenderClient()
    try:
        pictures = []
        for client, forget in ((tokens, False), (full, True)):
            client.request(request(results))
            if forget:
                client.arrays.clear()  # every array sent again (the process keeps the old ones: unused)
            else:
                state = (collections.OrderedDict(client.arrays.refs), client.arrays._next)
                sent = pickle.dumps(client._by_token(request(edited)))
                assert len(sent) < len(pickle.dumps(request(edited))) - image.nbytes  # no image, 2 meshes by token
                client.arrays.refs, client.arrays._next = state  # (measuring is not sending)
            pictures.append(client.request(request(edited)))
        np.testing.assert_array_equal(pictures[0], pictures[1])
        assert (pictures[0] != image).any(axis=2).sum() > 50 and not tokens.failed and not full.failed
    finally:
        tokens.close()
        full.close()


def test_shared_pictures_round_trip_and_clean_up(tmp_path, monkeypatch):
    """Large replies of a render process go through a file in shared memory: the reader gets an equal copy
    (not a view the next picture would overwrite), small ones pass through the socket as they are, the files
    go when the process closes them, and files of a process that died are removed by the next one."""
    import os
    import pickle
    import subprocess
    import sys

    import numpy as np

    from app.jobs import ipc

    monkeypatch.setattr(ipc, "_shared_dir", lambda: str(tmp_path))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f"{ipc.SharedPictures.PREFIX}{dead.pid}-0"
    stale.write_bytes(b"x" * 10)
    mine = tmp_path / f"{ipc.SharedPictures.PREFIX}{os.getpid()}-9"  # a live process's file stays
    mine.write_bytes(b"x")
    server, reader = ipc.SharedPictures(), ipc.SharedPicturesReader()
    assert not stale.exists() and mine.exists()
    rng = np.random.default_rng(0)
    big = [rng.integers(0, 255, (360, 640, 3), dtype=np.uint8) for _ in range(2)]
    small = rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)
    assert server.put(small) is small and server.put("text") == "text"
    got = []
    for b in big:
        ref = server.put(b)
        assert isinstance(ref, ipc.PictureRef) and os.path.dirname(ref.path) == str(tmp_path)
        got.append(reader.get(pickle.loads(pickle.dumps(ref))))  # (as through the socket)
    np.testing.assert_array_equal(got[0], big[0])  # still the first picture after the second was written
    np.testing.assert_array_equal(got[1], big[1])
    assert len(os.listdir(tmp_path)) == 2  # one file per shape, and the live process's
    server.close()
    reader.clear()
    assert os.listdir(tmp_path) == [mine.name]
    # no usable shared memory: the picture goes through the socket as before
    monkeypatch.setattr(ipc, "_shared_dir", lambda: str(tmp_path / "missing"))
    assert ipc.SharedPictures().put(big[0]) is big[0]


def test_render_process_sends_large_pictures_through_shared_memory(qapp):
    """A 640x480 picture (900 KB) from the render process arrives as a ``PictureRef`` and is read back whole;
    the process's file is gone once it ends."""
    import os

    import numpy as np

    from app.jobs import ipc
    from app.jobs.protocol import RenderView
    from app.jobs.render import RenderClient
    from dpmesh_core.types import Camera

    client = RenderClient()
    replies = []
    try:
        client.start()
        conn = client.conn
        recv = conn.recv
        client.conn = type("Spy", (), {"send": conn.send, "close": conn.close, "poll": conn.poll,
                                       "recv": lambda self: replies.append(recv()) or replies[-1]})()
        r = _box_result(0.0, 0.0, 2.0, s=0.6)
        rgb = client.request(RenderView(((r.vertices, r.faces, (0.9, 0.2, 0.2)),), Camera.default_for(640, 480),
                                        None, (640, 480)))
        assert isinstance(replies[-1][1], ipc.PictureRef) and not client.failed
        path = replies[-1][1].path
        assert rgb.shape == (480, 640, 3) and rgb.dtype == np.uint8
        assert (np.abs(rgb.astype(int) - rgb[0, 0]).sum(-1) > 30).sum() > 5000  # the cube is in it
        client.conn = conn
    finally:
        client.close()
    assert not os.path.exists(path)
