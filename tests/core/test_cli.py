"""The `dpmesh` command line end to end: predict on real photos, doctor, and bad input.

Bad input must exit non-zero with one line naming the file and the problem, and leave no partial output.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dpmesh_core.cli import main

PHOTO = "COCO_val2014_000000000395.jpg"


def _run(args: list[str], capsys) -> tuple[int, str, str]:
    rc = main(args)
    out = capsys.readouterr()
    return rc, out.out, out.err


def _coco_file(tmp_path: Path, image_name: str, persons: list[np.ndarray]) -> Path:
    anns = []
    for i, kp in enumerate(persons):
        flat = []
        for x, y, v in kp:
            flat += [float(x), float(y), int(v)]
        xs, ys = kp[kp[:, 2] > 0, 0], kp[kp[:, 2] > 0, 1]
        anns.append({"id": i + 1, "image_id": 1, "category_id": 1, "keypoints": flat,
                     "num_keypoints": int((kp[:, 2] > 0).sum()),
                     "bbox": [float(xs.min()), float(ys.min()), float(np.ptp(xs)), float(np.ptp(ys))]})
    data = {"images": [{"id": 1, "file_name": image_name, "width": 640, "height": 480}], "annotations": anns,
            "categories": [{"id": 1, "name": "person"}]}
    p = tmp_path / "kp.json"
    p.write_text(json.dumps(data))
    return p


# A standing person, COCO-17, in a 640x480 photo's pixel space (visible flags 2, one occluded ankle).
STANDING = np.array([
    [320, 100, 2], [328, 92, 2], [312, 92, 2], [338, 98, 2], [302, 98, 2], [355, 140, 2], [285, 140, 2],
    [365, 195, 2], [275, 195, 2], [370, 245, 2], [270, 245, 2], [342, 250, 2], [298, 250, 2], [345, 330, 2],
    [295, 330, 2], [347, 405, 1], [293, 405, 2]], np.float32)


def test_predict_with_keypoint_file_writes_meshes_that_reproject(tmp_path, media_dir, capsys):
    kp = _coco_file(tmp_path, PHOTO, [STANDING])
    out = tmp_path / "out"
    rc, stdout, _ = _run(["predict", str(media_dir / PHOTO), "-o", str(out), "--keypoints", str(kp),
                          "--format", "obj,npz", "--json"], capsys)
    assert rc == 0
    events = [json.loads(line) for line in stdout.splitlines()]
    assert events[-1]["event"] == "finished" and events[-1]["files"] == 2 and events[-1]["failed"] == []
    stem = Path(PHOTO).stem
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == sorted([
        "dpmesh-run.json", f"{stem}_person00.npz", f"{stem}_person00.obj"])
    manifest = json.loads((out / "dpmesh-run.json").read_text())
    assert manifest["status"] == "complete"
    assert manifest["inputs"][str(media_dir / PHOTO)]["files"] == [f"{stem}_person00.obj", f"{stem}_person00.npz"]
    import trimesh

    mesh = trimesh.load(out / f"{stem}_person00.obj", process=False)
    assert len(mesh.vertices) > 5000 and len(mesh.faces) > 5000
    params = np.load(out / f"{stem}_person00.npz", allow_pickle=False)
    # re-projected joints land on the visible key-points
    j2d = params["keypoints2d"] if "keypoints2d" in params.files else params["joints2d"]
    vis = STANDING[:, 2] == 2
    err = np.linalg.norm(j2d[: len(STANDING)][vis] - STANDING[vis, :2], axis=1)
    assert np.median(err) < 8.0, err
    assert not any(p.name.startswith(".dpmesh-staging") for p in out.iterdir())


def test_predict_detects_people_in_real_photos(tmp_path, media_dir, capsys):
    out = tmp_path / "out"
    rc, stdout, _ = _run(["predict", str(media_dir / PHOTO), "-o", str(out), "--json"], capsys)
    assert rc == 0
    frame = next(json.loads(x) for x in stdout.splitlines() if json.loads(x)["event"] == "frame")
    assert frame["persons"] >= 1 and frame["meshes"] >= 1
    assert len(list(out.glob("*.obj"))) == frame["meshes"]


@pytest.mark.parametrize("content, what", [(b"", "empty"), (b"\xff\xd8\xff\xe0garbage", "corrupt"),
                                           (b"hello world", "unknown")])
def test_bad_images_exit_nonzero_without_partial_output(tmp_path, capsys, content, what):
    bad = tmp_path / f"{what}.jpg"
    bad.write_bytes(content)
    out = tmp_path / "out"
    rc, _, err = _run(["predict", str(bad), "-o", str(out)], capsys)
    assert rc == 2
    assert str(bad) in err and err.startswith("dpmesh: error:")
    assert not out.exists() or not any(out.iterdir())


def test_truncated_jpeg(tmp_path, media_dir, capsys):
    bad = tmp_path / "truncated.jpg"
    bad.write_bytes((media_dir / PHOTO).read_bytes()[:5000])
    rc, _, err = _run(["predict", str(bad), "-o", str(tmp_path / "o")], capsys)
    assert rc == 2 and "truncated.jpg" in err


def test_nan_keypoints_file_is_refused(tmp_path, media_dir, capsys):
    kp = _coco_file(tmp_path, PHOTO, [STANDING])
    kp.write_text(kp.read_text().replace("320.0", "NaN", 1))
    out = tmp_path / "out"
    rc, _, err = _run(["predict", str(media_dir / PHOTO), "-o", str(out), "--keypoints", str(kp)], capsys)
    assert rc == 2 and "kp.json" in err
    assert not out.exists() or not any(out.iterdir())


def test_missing_input_and_bad_format(tmp_path, media_dir, capsys):
    rc, _, err = _run(["predict", str(tmp_path / "nope.jpg"), "-o", str(tmp_path / "o")], capsys)
    assert rc == 2 and "nope.jpg" in err
    rc, _, err = _run(["predict", str(media_dir / PHOTO), "-o", str(tmp_path / "o"), "--format", "stl"], capsys)
    assert rc == 2 and "stl" in err


def test_missing_smpl_file(tmp_path, media_dir, capsys, monkeypatch):
    monkeypatch.setenv("DPMESH_SMPL", str(tmp_path / "basicModel_neutral.pkl"))
    kp = _coco_file(tmp_path, PHOTO, [STANDING])
    rc, _, err = _run(["predict", str(media_dir / PHOTO), "-o", str(tmp_path / "o"), "--keypoints", str(kp),
                       "--body-model", "smpl"], capsys)
    assert rc == 3 and "basicModel_neutral.pkl" in err


def test_missing_dpmesh_checkpoint(tmp_path, media_dir, capsys, monkeypatch):
    monkeypatch.delenv("DPMESH_CHECKPOINT", raising=False)
    monkeypatch.setenv("DPMESH_HOME", str(tmp_path / "home"))
    rc, _, err = _run(["predict", str(media_dir / PHOTO), "-o", str(tmp_path / "o"), "--estimator", "dpmesh"],
                      capsys)
    assert rc == 3 and "checkpoint" in err.lower()


def test_doctor_lists_components_and_licences(capsys):
    rc, out, _ = _run(["doctor"], capsys)
    assert "Anny body model" in out and "AGPL" in out and "SMPL" in out
    assert rc == 0


def test_console_script_entry_point():
    r = subprocess.run([sys.executable, "-m", "dpmesh_core.cli", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and "dpmesh" in r.stdout


def test_predict_video_smooths_each_track_over_time(tmp_path, media_dir, capsys):
    """Gaussian smoothing of each track (default σ 1.5 frames, written with a lag) makes the bodies' motion
    steadier than warm starts alone (--smooth-sigma 0), with the same files."""

    def run(out, extra):
        rc, _, _ = _run(["predict", str(media_dir / "street.avi"), "-o", str(out), "--max-frames", "8",
                         "--format", "npz", "--json", *extra], capsys)
        assert rc == 0
        tracks: dict[int, dict[int, np.ndarray]] = {}
        for f in sorted(out.glob("*.npz")):
            with np.load(f) as z:
                frame = int(f.stem.split("_f")[1][:6])
                tracks.setdefault(int(z["track_id"]), {})[frame] = z["joints3d"] - z["joints3d"].mean(0)
        return tracks

    smooth, raw = run(tmp_path / "s", []), run(tmp_path / "r", ["--smooth-sigma", "0"])
    assert {k: sorted(v) for k, v in smooth.items()} == {k: sorted(v) for k, v in raw.items()}

    def jerkiness(tracks):
        acc = [np.linalg.norm(seq[t + 1] - 2 * seq[t] + seq[t - 1], axis=1).mean()
               for seq in tracks.values() for t in seq if t - 1 in seq and t + 1 in seq]
        assert len(acc) >= 10
        return float(np.mean(acc))

    assert jerkiness(smooth) < 0.6 * jerkiness(raw)
