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
