"""The app's whole-video job runs the core frame pipeline in the real inference process and gives the same
tracks and meshes as ``dpmesh predict`` on the same frames of street.avi; Play processes as it goes."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from app.session import Session
from dpmesh_core import api
from dpmesh_core.types import MeshResult

FRAMES = 3


@pytest.fixture(scope="module")
def cli_out(media_dir, tmp_path_factory):
    """``dpmesh predict street.avi --format npz --max-frames 3`` (the CLI, in its own process)."""
    out = tmp_path_factory.mktemp("cli")
    subprocess.run([sys.executable, "-m", "dpmesh_core.cli", "predict", str(media_dir / "street.avi"), "-o", str(out),
                    "--format", "npz", "--max-frames", str(FRAMES)], check=True, timeout=600)
    return out


def test_whole_video_job_gives_the_clis_tracks_and_meshes(qapp, qtbot, media_dir, cli_out):
    s = Session()  # the real inference process: YOLO detection, the pipeline's tracker, Anny fitting
    progress = []
    s.video_progress.connect(lambda f, n: progress.append(f))
    try:
        s.open_path(media_dir / "street.avi")  # frame 0 is detected on opening (as a user sees it)
        qtbot.waitUntil(lambda: len(s.doc.persons(0)) > 0, timeout=180000)
        assert s.process_video(stop=FRAMES)
        qtbot.waitUntil(lambda: not s.video.running, timeout=300000)
        assert sorted(progress) == list(range(FRAMES))
        for f in range(FRAMES):
            cli = {int(p.stem.split("_track")[1]): np.load(p) for p in cli_out.glob(f"street_f{f:06d}_track*.npz")}
            app = {p.track_id: r for p, r in zip(s.doc.persons(f), s.doc.results(f))}
            assert set(app) == set(cli) and len(cli) >= 4, f"frame {f}: tracks {sorted(app)} vs CLI {sorted(cli)}"
            errs = []
            for t, r in app.items():
                assert isinstance(r, MeshResult) and r.track_id == t
                z = cli[t]
                assert int(z["track_id"]) == t
                # the same input key-points, and the same body (fits are deterministic up to float noise)
                p = next(q for q in s.doc.persons(f) if q.track_id == t)
                assert np.allclose(z["input_keypoints"][:, :2], p.keypoints[:, :2], atol=1e-3)
                assert np.abs(r.joints3d - z["joints3d"]).max() < 0.002, f"frame {f} track {t}"
                # and the mesh is on its person (not floating beside it): its visible key-points re-project
                err = api.reprojection_errors(r, p)  # fractions of the person's box height
                assert np.nanmedian(err) < 0.05, f"frame {f} track {t}: {err}"
                errs += list(err[np.isfinite(err)])
            # (the pipeline's own accuracy over the whole video is measured by tests/bench/bench_pipeline.py)
            print(f"frame {f}: {len(app)} tracks, re-projection p95 {np.percentile(errs, 95):.3f} box heights")
    finally:
        s.shutdown()


def test_play_detects_tracks_and_estimates_as_it_goes(qapp, qtbot, media_dir, tmp_path):
    """Play on an unprocessed video runs the pipeline from the shown frame and never shows a frame before it
    was processed ("0 pers." while playing was the old behaviour); pausing stops the job Play started."""
    from app_testkit import RecordingEstimator, street_clip

    from app.jobs import InferenceService
    from app.widgets.timeline import Timeline
    clip = street_clip(tmp_path / "clip.avi", range(100, 108))
    est = RecordingEstimator()
    s = Session(inference=InferenceService(estimator_factory=lambda: est))  # the real detector, in-thread
    s.auto_detect = False
    tl = Timeline(s.doc)
    qtbot.addWidget(tl)
    tl.ready = s.video.frame_ready  # as the main window wires it
    tl.play_started.connect(s.video.play_from)
    tl.play_stopped.connect(s.video.stop_play)
    shown = []
    s.doc.frame_changed.connect(lambda f: shown.append((f, f in s.video.done, len(s.doc.persons(f)))))
    try:
        s.open_path(clip)
        shown.clear()
        tl.set_playing(True)
        assert s.video.running and s.video.for_play
        qtbot.waitUntil(lambda: s.doc.current_frame == 7 or not tl.is_playing(), timeout=120000)
        assert [f for f, *_ in shown] == list(range(1, 8))
        assert all(done and n >= 3 for _f, done, n in shown), shown
        tracks = [sorted(p.track_id for p in s.doc.persons(f)) for f in range(8)]
        assert all(t == sorted(set(t)) for t in tracks)  # one person per track and frame
        assert len(set(tracks[0]) & set(tracks[7])) >= 3  # the same people keep their ids
        assert all(r is not None for f in range(8) for r in s.doc.results(f))
        # Play again from frame 5: everything is processed, nothing runs
        qtbot.waitUntil(lambda: not s.video.running, timeout=30000)
        s.doc.set_current_frame(5)
        tl.set_playing(True)
        assert not s.video.running
        tl.set_playing(False)
        qtbot.waitUntil(lambda: not s.is_busy(), timeout=30000)
    finally:
        tl.set_playing(False)
        s.shutdown()
