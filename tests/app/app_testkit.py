"""Helpers of the app tests (imported by name: pytest puts tests/app on sys.path)."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import numpy as np

from dpmesh_core.errors import EstimationError
from dpmesh_core.types import BodyParams, Camera, MeshResult, Person

# tests/ too: worker processes import this module (functions they run by name) with only tests/app on the path
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from shared_data import MEDIA  # noqa: E402

PHOTO = str(MEDIA / "COCO_val2014_000000000395.jpg")


def street_clip(path, frames: range, fps: float = 25.0):
    """Frames ``frames`` of ``../shared/media/street.avi`` written as a short video at ``path``; returns its path."""
    from dpmesh_core import api
    from dpmesh_core.io.video import write_video

    media = api.open_media(MEDIA / "street.avi")
    try:
        return write_video(path, (media.frame(i) for i in frames), fps=fps)
    finally:
        media.close()


def make_person(seed: int = 0, n: int = 17, x0: float = 100, y0: float = 80) -> Person:
    rng = np.random.default_rng(seed)
    kp = np.zeros((n, 3), np.float32)
    kp[:, 0] = x0 + rng.uniform(0, 120, n)
    kp[:, 1] = y0 + rng.uniform(0, 300, n)
    kp[:, 2] = rng.uniform(0.55, 1.0, n)  # every joint visible under the one rule (confidence > 0.5)
    return Person(box=Person.box_from_keypoints(kp), keypoints=kp, score=0.9)


class RecordingEstimator:
    """A small, real Estimator (types.Estimator protocol) for worker tests: it places a tetrahedron at the
    person's key-point centroid, records each call, can be slowed down, gated or made to fail."""

    name = "recording"

    def __init__(self, delay: float = 0.0, fail_on: set[int] | None = None):
        self.delay = delay
        self.calls: list[Person] = []
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Event()
        self.fail_on = fail_on or set()
        self.raise_exc: Exception | None = None

    def estimate(self, image, persons, camera=None, previous=None):
        self.started.set()
        self.gate.wait(10)
        if self.delay:
            time.sleep(self.delay)
        if self.raise_exc is not None:
            raise self.raise_exc
        out = []
        h, w = image.shape[:2]
        cam = camera or Camera.default_for(w, h)
        for p in persons:
            self.calls.append(p)
            if len(self.calls) in self.fail_on:
                out.append(EstimationError("too few visible key-points"))
                continue
            c = p.keypoints[:, :2].mean(0)
            z = 3.0
            x, y = (c - np.array(cam.principal)) / np.array(cam.focal) * z
            v = np.array([[x, y, z], [x + .2, y, z], [x, y + .4, z], [x, y, z + .2]], np.float32)
            f = np.array([[0, 1, 2], [0, 1, 3], [0, 2, 3], [1, 2, 3]], np.int32)
            params = BodyParams("test", np.zeros(3), np.zeros(6), np.zeros(2), v[0])
            out.append(MeshResult(v, f, v, p.keypoints[:4, :2], "coco17", params, cam, estimator="fit"))
        return out




# Named operations for the inference process (``InferenceService.call``); the process finds this module
# when tests/app is on its PYTHONPATH (see test_app_inference_process.py).
def wait_for_file(ctx, path: str) -> str:
    """Block the worker until ``path`` exists (a gate the test opens by creating the file)."""
    import os

    while not os.path.exists(path):
        time.sleep(0.005)
    return "opened"


def count_up(ctx, n: int, gate: str, done: str):
    """Yield 0..n-1; after the first value, wait for ``gate``; write ``done`` when the generator ends
    (finished, or closed because the job was cancelled)."""
    import os

    try:
        for i in range(n):
            yield i
            if i == 0:
                while not os.path.exists(gate):
                    time.sleep(0.005)
    finally:
        with open(done, "w") as f:
            f.write("closed")


def fail_with(ctx, kind: str):
    """Raise an error of the given kind in the worker."""
    from dpmesh_core.errors import ModelFilesMissingError

    if kind == "missing":
        raise ModelFilesMissingError("SMPL_NEUTRAL.npz", ["/nowhere"], "Download it from smpl.is.tue.mpg.de.")
    if kind == "zero":
        return 1 / 0
    raise ValueError(kind)


def fitted_photo_project(qtbot, tmp_path, media_dir, reference_dir, name: str = "COCO_val2014_000000000192.jpg",
                         n: int = 3):
    """Fit the first ``n`` reference detections of a shared photo in a Session and save it as a project.
    Returns ``(fitter, project_path, results, persons)``; the fitter (synthetic SMPL) counts its evaluations."""
    import json

    from app.jobs import InferenceService
    from app.session import Session
    from dpmesh_core import api

    ref = json.loads((reference_dir / "yolo11n_pose_detections.json").read_text())["images"][name]
    persons = [Person(box=p["box_xyxy"], keypoints=p["keypoints"], score=p["score"]) for p in ref["people"][:n]]
    fitter = api.make_estimator("fit", body_model="synthetic-smpl")
    s = Session(inference=InferenceService(estimator_factory=lambda: fitter))
    s.auto_detect = False
    try:
        s.open_path(media_dir / name)
        s.doc.set_frame_persons(0, persons)
        s.estimate_all(0)
        qtbot.waitUntil(lambda: all(r is not None for r in s.doc.results()), timeout=60000)
        results = list(s.doc.results())
        out = s.save_project(tmp_path / "scene")
    finally:
        s.shutdown()
    return fitter, out, results, persons
