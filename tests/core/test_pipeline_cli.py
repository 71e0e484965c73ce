"""`dpmesh predict` on video through the frame pipeline, end to end on ../shared/media/street.avi: outputs
named by track with the track and the input key-points in every npz, frame events that list each person's
track, a per-track summary; a truncated copy of the video keeps every decoded frame's files and exits 2;
--max-frames / --stride below 1 are refused before any model loads."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from dpmesh_core.cli import main


def _run(args: list[str], capsys) -> tuple[int, list[dict], str]:
    rc = main(args)
    out = capsys.readouterr()
    return rc, [json.loads(x) for x in out.out.splitlines() if x.startswith("{")], out.err


def test_video_outputs_are_named_by_track_and_carry_their_evidence(tmp_path, media_dir, capsys):
    out = tmp_path / "out"
    rc, events, _ = _run(["predict", str(media_dir / "street.avi"), "-o", str(out), "--max-frames", "3",
                          "--format", "obj,npz", "--json"], capsys)
    assert rc == 0
    frames = [e for e in events if e["event"] == "frame"]
    assert [e["frame"] for e in frames] == [0, 1, 2]
    # every frame event says, per person, its track and whether it got a mesh
    expected: dict[str, int] = {}
    present: dict[int, list[int]] = {}
    for e in frames:
        ids = [q["track_id"] for q in e["people"]]
        assert len(ids) == e["persons"] >= 3 and len(set(ids)) == len(ids) and None not in ids
        assert sum(q["mesh"] for q in e["people"]) == e["meshes"]
        for q in e["people"]:
            present.setdefault(q["track_id"], []).append(e["frame"])
            if q["mesh"]:
                expected[f"street_f{e['frame']:06d}_track{q['track_id']:03d}"] = q["track_id"]
    stems = {p.stem for p in out.glob("*.obj")}
    assert stems == {p.stem for p in out.glob("*.npz")} == set(expected)
    for stem, tid in expected.items():
        with np.load(out / f"{stem}.npz", allow_pickle=False) as z:
            assert int(z["track_id"]) == tid
            kp = z["input_keypoints"]
            assert kp.shape == (17, 3) and str(z["input_joint_set"]) == "coco17"
            assert set(np.unique(kp[:, 2])) <= {0.0, 1.0} and kp[:, 2].sum() >= 2
            # the mesh was made from these key-points: its re-projection lands on the visible ones
            vis = kp[:, 2] > 0
            if vis.sum() >= 6:
                size = max(np.ptp(kp[vis, 0]), np.ptp(kp[vis, 1]))
                err = np.linalg.norm(z["keypoints2d"][vis] - kp[vis, :2], axis=1)
                assert np.median(err) < 0.1 * size, stem
    # the per-track summary, as a file and as an event
    summary = json.loads((out / "street_tracks.json").read_text())
    ev = next(e for e in events if e["event"] == "tracks")
    assert [t["id"] for t in summary["tracks"]] == sorted(present) == [t["id"] for t in ev["tracks"]]
    for t, te in zip(summary["tracks"], ev["tracks"]):
        fr = present[t["id"]]
        assert (t["first_frame"], t["last_frame"], t["frames_present"], t["frames"]) == (min(fr), max(fr), len(fr), fr)
        assert te == {k: v for k, v in t.items() if k != "frames"}
    assert not list(out.glob("*_person*"))


def test_truncated_video_keeps_the_decoded_frames_and_exits_2(tmp_path, media_dir, capsys):
    data = (media_dir / "street.avi").read_bytes()
    bad = tmp_path / "cut.avi"
    bad.write_bytes(data[: len(data) // 5])  # the first 20 %: 42 of 205 frames decode
    out = tmp_path / "out"
    rc, events, err = _run(["predict", str(bad), "-o", str(out), "--stride", "10", "--format", "npz", "--json"],
                           capsys)
    assert rc == 2
    lines = [x for x in err.strip().splitlines() if x.startswith("dpmesh:")]
    assert len(lines) == 1 and "cut.avi" in lines[0] and "frame 50" in lines[0], err
    trunc = next(e for e in events if e["event"] == "truncated")
    assert (trunc["frame"], trunc["processed"]) == (50, 5)
    frames = [e["frame"] for e in events if e["event"] == "frame"]
    assert frames == [0, 10, 20, 30, 40]
    written = {int(m.group(1)) for p in out.glob("*.npz") if (m := re.match(r"cut_f(\d{6})_track\d{3}$", p.stem))}
    assert written == set(frames)  # every decoded frame's meshes are kept
    assert len(list(out.glob("*.npz"))) == sum(e["meshes"] for e in events if e["event"] == "frame")
    assert json.loads((out / "cut_tracks.json").read_text())["frames_processed"] == 5
    assert events[-1]["event"] == "error" and events[-1]["type"] == "TruncatedMediaError"


@pytest.mark.parametrize("flag,value", [("--max-frames", "0"), ("--max-frames", "-5"), ("--stride", "0"),
                                        ("--stride", "-2")])
def test_frame_counts_below_one_are_refused_before_any_model_loads(tmp_path, media_dir, capsys, monkeypatch,
                                                                   flag, value):
    from dpmesh_core import api

    def must_not_load(*a, **k):
        raise AssertionError("a model was loaded for a refused command")

    monkeypatch.setattr(api, "make_estimator", must_not_load)
    monkeypatch.setattr(api, "get_detector", must_not_load, raising=False)
    out = tmp_path / "out"
    rc = main(["predict", str(media_dir / "street.avi"), "-o", str(out), flag, value])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and flag in err[0] and value in err[0], err
    assert not out.exists()
