"""Issue 12, command line: nothing lost, nothing misleading.

A bad-input corpus generated here (small images, key-point files, folders, links, limits) run through
``dpmesh predict`` (in process, or in a subprocess where a signal, a resource limit, another user or a
failing disk is needed). Each case checks the exit code, the one line naming the file and the cause, the
JSON error event, and what is left in the output folder; the resource cases measure peak memory.
Fits use the synthetic SMPL body (fast) on key-point files, so no detector is needed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dpmesh_core import api
from dpmesh_core.cli import main
from dpmesh_core.io import read_keypoints
from dpmesh_core.io.images import write_image
from dpmesh_core.io.run_manifest import MANIFEST_NAME, OutputLock, RunManifest
from dpmesh_core.types import VISIBLE_THRESHOLD, Person

REPO = Path(__file__).resolve().parents[2]
W, H = 320, 240
# A standing person, COCO-17, in a 320x240 image (x, y, COCO visibility flag).
STANDING = np.array([
    [160, 50, 2], [164, 46, 2], [156, 46, 2], [169, 49, 2], [151, 49, 2], [177, 70, 2], [142, 70, 2],
    [182, 97, 2], [137, 97, 2], [185, 122, 2], [135, 122, 2], [171, 125, 2], [149, 125, 2], [172, 165, 2],
    [147, 165, 2], [173, 202, 2], [146, 202, 2]], np.float32)
FAST = ["--body-model", "synthetic-smpl", "--format", "obj,npz"]


# ------------------------------------------------------------------------------------------- helpers


def _image(path: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    write_image(path, rng.integers(0, 255, (H, W, 3), dtype=np.uint8))
    return path


def _ann(kp: np.ndarray, image_id: int, ann_id: int) -> dict:
    lab = kp[:, 2] > 0
    xs, ys = kp[lab, 0], kp[lab, 1]
    return {"id": ann_id, "image_id": image_id, "category_id": 1,
            "keypoints": [float(v) if i % 3 < 2 else int(v) for i, v in enumerate(kp.reshape(-1))],
            "num_keypoints": int(lab.sum()),
            "bbox": [float(xs.min()), float(ys.min()), float(np.ptp(xs)), float(np.ptp(ys))]}


def _coco(path: Path, entries: dict[str, list[np.ndarray]]) -> Path:
    images, anns = [], []
    for i, (name, persons) in enumerate(entries.items(), start=1):
        images.append({"id": i, "file_name": name, "width": W, "height": H})
        for kp in persons:
            anns.append(_ann(kp, i, len(anns) + 1))
    path.write_text(json.dumps({"images": images, "annotations": anns,
                                "categories": [{"id": 1, "name": "person"}]}))
    return path


def _run(args: list[str], capsys) -> tuple[int, list[dict], str]:
    rc = main(args)
    out = capsys.readouterr()
    events = [json.loads(x) for x in out.out.splitlines() if x.startswith("{")]
    return rc, events, out.err


def _error_lines(err: str) -> list[str]:
    return [x for x in err.splitlines() if x.startswith("dpmesh: error:")]


def _visible_files(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) if out.exists() else []


def _staging(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.name.startswith(".dpmesh-staging-")) if out.exists() else []


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if a model is loaded: these problems must be reported before any model set-up."""

    def refuse(*a, **k):
        raise AssertionError("a model was loaded before the problem was reported")

    monkeypatch.setattr(api, "make_estimator", refuse)


def _cli(args: list[str], **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
    env.update(kw.pop("env", {}))
    return subprocess.run([sys.executable, "-m", "dpmesh_core.cli", *args], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=300, **kw)


# ------------------------------------------------------------------- argument and file-system problems


def test_output_path_is_a_file(tmp_path, capsys, no_model):
    img = _image(tmp_path / "a.png")
    kp = _coco(tmp_path / "kp.json", {"a.png": [STANDING]})
    target = tmp_path / "results.txt"
    target.write_text("not a folder")
    rc, events, err = _run(["predict", str(img), "-o", str(target), "--keypoints", str(kp), "--json"], capsys)
    assert rc == 4
    assert _error_lines(err) == [f"dpmesh: error: {target}: exists and is not a folder (EEXIST); choose a folder "
                                 "for -o"]
    assert events[-1]["event"] == "error" and events[-1]["exit_code"] == 4 and str(target) in events[-1]["message"]
    assert "Traceback" not in err and target.read_text() == "not a folder"


@pytest.mark.parametrize("device, expect", [("banana", "unknown device"), ("cuda", None)])
def test_bad_device_is_refused_before_models(tmp_path, capsys, no_model, device, expect):
    import torch

    if device == "cuda" and torch.cuda.is_available():  # a machine with a GPU: ask for one it does not have
        device, expect = f"cuda:{torch.cuda.device_count()}", "CUDA device(s)"
    elif device == "cuda":
        expect = "CUDA is not available here"
    img = _image(tmp_path / "a.png")
    kp = _coco(tmp_path / "kp.json", {"a.png": [STANDING]})
    out = tmp_path / "out"
    rc, events, err = _run(["predict", str(img), "-o", str(out), "--keypoints", str(kp), "--device", device,
                            "--json"], capsys)
    assert rc == 2 and expect in err and f"--device {device}" in err
    assert len(_error_lines(err)) == 1 and "Traceback" not in err
    assert events[-1]["event"] == "error" and events[-1]["type"] == "InputError"
    assert not out.exists()


def test_symlink_loop_is_reported_as_such(tmp_path, capsys, no_model):
    a, b = tmp_path / "a.jpg", tmp_path / "b.jpg"
    a.symlink_to(b)
    b.symlink_to(a)
    rc, _, err = _run(["predict", str(a), "-o", str(tmp_path / "out")], capsys)
    assert rc == 2
    assert _error_lines(err) == [f"dpmesh: error: {a}: symbolic link loop (ELOOP)"]
    loop_out = tmp_path / "loop_out"
    loop_out.symlink_to(loop_out)
    img = _image(tmp_path / "c.png")
    kp = _coco(tmp_path / "kp.json", {"c.png": [STANDING]})
    rc, _, err = _run(["predict", str(img), "-o", str(loop_out), "--keypoints", str(kp)], capsys)
    assert rc == 4 and "symbolic link loop (ELOOP)" in err and str(loop_out) in err


def _without_root_override():
    """preexec_fn: a root process keeps its uid but loses CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH (dropped from
    the capability bounding set), so file permissions bind it and EACCES is real (other users: no-op)."""
    if os.geteuid() == 0:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
            if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def test_unreadable_input_and_read_only_output(tmp_path):
    """Permission problems are named as such (not "corrupt image header"), before any model loads."""
    img = _image(tmp_path / "secret.png")
    os.chmod(img, 0)
    ok = _image(tmp_path / "ok.png")
    kp = _coco(tmp_path / "kp.json", {"ok.png": [STANDING], "secret.png": [STANDING]})
    r = _cli(["predict", str(img), "-o", str(tmp_path / "o1"), "--keypoints", str(kp)],
             preexec_fn=_without_root_override)
    assert r.returncode == 2, r.stderr
    assert _error_lines(r.stderr) == [f"dpmesh: error: {img}: permission denied (EACCES)"]
    assert not (tmp_path / "o1").exists()
    ro = tmp_path / "readonly"
    ro.mkdir()
    os.chmod(ro, 0o555)
    for target, what in ((ro / "out", "cannot create the output folder"), (ro, "cannot write into the output folder")):
        r = _cli(["predict", str(ok), "-o", str(target), "--keypoints", str(kp), "--json"],
                 preexec_fn=_without_root_override)
        assert r.returncode == 4, r.stderr
        assert _error_lines(r.stderr) == [f"dpmesh: error: {target}: {what}: permission denied (EACCES)"]
        assert json.loads(r.stdout.splitlines()[-1])["event"] == "error"
        assert "Traceback" not in r.stderr and list(ro.iterdir()) == []


def test_full_disk_reported_with_enospc_before_models(tmp_path):
    """A full disk (every fsync fails with ENOSPC, as on a full file system): one line naming the file and
    ENOSPC, exit 4, nothing left behind (the manifest is the first file written, before any model loads)."""
    img = _image(tmp_path / "a.png")
    kp = _coco(tmp_path / "kp.json", {"a.png": [STANDING]})
    out = tmp_path / "out"
    code = ("import errno, os, sys\n"
            "def full(fd): raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))\n"
            "os.fsync = full\n"
            "import dpmesh_core.api as api\n"
            "api.make_estimator = lambda *a, **k: sys.exit('model loaded')\n"
            "from dpmesh_core.cli import main\n"
            f"sys.exit(main(['predict', {str(img)!r}, '-o', {str(out)!r}, '--keypoints', {str(kp)!r}, '--json']))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120,
                       env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"))
    assert r.returncode == 4, r.stderr
    assert _error_lines(r.stderr) == [f"dpmesh: error: {out / MANIFEST_NAME}: cannot write the run manifest: no "
                                      "space left on the device (ENOSPC)"]
    assert json.loads(r.stdout.splitlines()[-1])["exit_code"] == 4
    assert _visible_files(out) == [] and _staging(out) == []


def test_file_size_limit_while_writing_results(tmp_path):
    """A write failing half-way through an input (a 64 kB file-size limit, EFBIG: the mesh does not fit) stops
    the run with exit 4; the input leaves no file, no staging folder, and the manifest says why."""
    import resource

    img = _image(tmp_path / "a.png")
    kp = _coco(tmp_path / "kp.json", {"a.png": [STANDING]})
    out = tmp_path / "out"

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))

    r = _cli(["predict", str(img), "-o", str(out), "--keypoints", str(kp), *FAST], preexec_fn=limit)
    assert r.returncode == 4, r.stderr
    lines = _error_lines(r.stderr)
    assert len(lines) == 1 and "file too large (EFBIG)" in lines[0] and str(out) in lines[0]
    assert "Traceback" not in r.stderr
    assert _visible_files(out) == [MANIFEST_NAME] and _staging(out) == []
    m = json.loads((out / MANIFEST_NAME).read_text())
    assert m["status"] == "failed" and m["inputs"][str(img)]["status"] == "failed"
    assert "EFBIG" in m["inputs"][str(img)]["error"] and m["inputs"][str(img)]["files"] == []


def test_synth_refuses_negative_count_and_doctor_points_to_real_files(tmp_path, capsys):
    rc, _, err = _run(["synth", str(tmp_path / "s"), "--n", "-3"], capsys)
    assert rc == 2 and _error_lines(err) == ["dpmesh: error: --n must be a whole number ≥ 1, got -3"]
    assert not (tmp_path / "s").exists()
    import re

    checks = api.doctor()
    for c in checks:
        for doc in re.findall(r"[\w./-]+\.md\b", f"{c.detail} {c.fix}"):
            assert (REPO / doc).is_file(), f"doctor's {c.name!r} points to {doc}, which does not exist"
    assert "STACK.md" not in json.dumps([c.__dict__ for c in checks])


def test_help_documents_exit_codes_and_the_visibility_threshold():
    r = _cli(["predict", "--help"])
    assert r.returncode == 0
    text = " ".join(r.stdout.split())
    for code in ("2 bad input", "3 missing model files", "4 output problem", "130 interrupted", "1 internal error"):
        assert code in text
    assert f"confidence is > {VISIBLE_THRESHOLD}" in text and "--max-persons" in text
    assert "4 output problem" in " ".join(_cli(["--help"]).stdout.split())


def test_internal_errors_print_one_line_unless_debug(tmp_path, capsys, monkeypatch):
    img = _image(tmp_path / "a.png")
    kp = _coco(tmp_path / "kp.json", {"a.png": [STANDING]})

    def broken(*a, **k):
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(api, "make_estimator", broken)
    rc, _, err = _run(["predict", str(img), "-o", str(tmp_path / "o"), "--keypoints", str(kp)], capsys)
    assert rc == 1 and "Traceback" not in err
    assert _error_lines(err) == ["dpmesh: error: internal error: RuntimeError: simulated bug (run again with "
                                 "--debug for the traceback)"]
    with pytest.raises(RuntimeError, match="simulated bug"):
        main(["predict", str(img), "-o", str(tmp_path / "o2"), "--keypoints", str(kp), "--debug"])


# ------------------------------------------------------------------------------ bounded resources


# peak resident memory of this process image, MB (VmHWM: unlike ru_maxrss, not inherited from the forking parent)
_HWM = "int(next(x for x in open('/proc/self/status') if x.startswith('VmHWM')).split()[1]) / 1024"


def _peak_cli(args: list[str]) -> tuple[subprocess.CompletedProcess, float]:
    """Run the CLI in a subprocess that reports its own peak resident memory (MB)."""
    code = ("import sys\nfrom dpmesh_core.cli import main\n"
            f"rc = main({args!r})\n"
            f"print('PEAK_MB', {_HWM}, file=sys.stderr)\n"
            "sys.exit(rc)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=600,
                       env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1"))
    peak = float(next(x.split()[1] for x in r.stderr.splitlines() if x.startswith("PEAK_MB")))
    return r, peak


def test_huge_keypoint_file_is_refused_from_its_size(tmp_path):
    img = _image(tmp_path / "a.png")
    big = tmp_path / "huge.json"
    with open(big, "wb") as f:  # a 200 MB key-point file (sparse): refused before a byte is parsed
        f.write(b'{"images": [], "annotations": [')
        f.truncate(200 * 2**20)
    out = tmp_path / "out"
    t0 = time.perf_counter()
    r, peak = _peak_cli(["predict", str(img), "-o", str(out), "--keypoints", str(big)])
    took = time.perf_counter() - t0
    print(f"200 MB key-point file: refused in {took:.1f} s, peak {peak:.0f} MB")
    assert r.returncode == 2
    assert _error_lines(r.stderr) == [f"dpmesh: error: {big}: too large: 200.0 MiB exceeds the key-point file "
                                      "limit of 64 MiB (--keypoints-max-mb; split the file per video or folder)"]
    assert peak < 150 and not out.exists()  # the file is never read


def test_too_many_persons_fail_the_input_with_bounded_memory(tmp_path):
    """5,000 persons (a 2.8 MB file) in one image: a clear error naming the image, before any estimation."""
    img = _image(tmp_path / "a.png")
    crowd = []
    for i in range(5000):  # 5000 different persons on a 100 x 50 grid of offsets
        kp = STANDING.copy()
        kp[:, :2] = kp[:, :2] * 0.3 + [i % 100 * 2.0, i // 100 * 3.0]
        crowd.append(kp)
    kp_file = _coco(tmp_path / "crowd.json", {"a.png": crowd})
    assert kp_file.stat().st_size > 2e6
    out = tmp_path / "out"
    r, peak = _peak_cli(["predict", str(img), "-o", str(out), "--keypoints", str(kp_file), "--json"])
    print(f"5000-person key-point file: peak {peak:.0f} MB")
    assert r.returncode == 2
    assert _error_lines(r.stderr) == [f"dpmesh: error: {img}: 5000 persons in one image exceed --max-persons 64 "
                                      "(raise it if this crowd is real)"]
    assert peak < 400 and not out.exists()


def test_max_persons_applies_to_detected_persons(tmp_path, media_dir, capsys):
    """A real crowd photo through the detector with --max-persons 1: the input fails with a clear error."""
    photo = media_dir / "COCO_val2014_000000000536.jpg"
    out = tmp_path / "out"
    rc, events, err = _run(["predict", str(photo), "-o", str(out), "--max-persons", "1", "--json", *FAST], capsys)
    assert rc == 2
    line = _error_lines(err)
    assert len(line) == 1 and "persons detected in one frame exceed --max-persons 1" in line[0]
    assert str(photo) in line[0] and "Traceback" not in err
    assert _visible_files(out) == [MANIFEST_NAME] and _staging(out) == []
    assert RunManifest.load(out).entry(photo)["status"] == "failed"


def test_fitting_memory_does_not_grow_with_the_number_of_persons():
    """Peak memory of fitting 64 persons at once vs 32 with the Anny body (few iterations: memory per iteration
    is what matters): within 60 MB (it was ~15 MB per person, 5.3 GB for 300). Anny keeps the skinning
    constants of its 24 latest shapes, so both runs are past that bounded cache."""
    code = ("import sys, numpy as np\n"
            "from dpmesh_core import api\nfrom dpmesh_core.fit import FitConfig\nfrom dpmesh_core.types import Person\n"
            f"S = np.array({STANDING.tolist()!r}, np.float32); S[:, 2] = 1\n"
            "est = api.make_estimator('fit', config=FitConfig(camera_iters=2, cold_iters=4, shape_iters=1))\n"
            "ps = []\n"
            "for i in range(int(sys.argv[1])):\n"
            "    kp = S.copy(); kp[:, :2] = kp[:, :2] * 0.6 + [i % 8 * 20, i // 8 * 12]\n"
            "    ps.append(Person(box=Person.box_from_keypoints(kp), keypoints=kp))\n"
            "res = api.estimate(np.zeros((240, 320, 3), np.uint8), ps, est)\n"
            "assert sum(r.quality is not None for r in res) == len(ps)\n"
            f"print({_HWM})\n")
    peaks = {}
    for n in (32, 64):  # one process each: a clean peak (allocator reuse in one process adds noise)
        r = subprocess.run([sys.executable, "-c", code, str(n)], capture_output=True, text=True, cwd=REPO,
                           timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"))
        assert r.returncode == 0, r.stderr[-2000:]
        peaks[n] = float(r.stdout.split()[-1])
    print(f"fit peak memory: 32 persons {peaks[32]:.0f} MB, 64 persons {peaks[64]:.0f} MB")
    assert peaks[64] - peaks[32] < 60


# ------------------------------------------------------------------------------------------ batches


def test_batch_matches_keypoints_by_name_goes_on_past_bad_inputs_and_resumes(tmp_path, capsys):
    media = tmp_path / "photos"
    media.mkdir()
    a, c = _image(media / "a.png", 1), _image(media / "c.png", 3)
    b = media / "b.png"  # a PNG header with garbage after it: passes the header check, fails decoding
    b.write_bytes((media / "a.png").read_bytes()[:200] + b"\0" * 500)
    kp = _coco(tmp_path / "kp.json", {"photos/a.png": [STANDING], "b.png": [STANDING]})  # nothing for c.png
    out = tmp_path / "out"
    rc, events, err = _run(["predict", str(media), "-o", str(out), "--keypoints", str(kp), "--json", *FAST], capsys)
    assert rc == 2
    errors = {e["input"]: e for e in events if e["event"] == "error" and "input" in e}
    assert set(errors) == {str(b), str(c)}
    assert "no entry for this input" in errors[str(c)]["message"] and str(c) in errors[str(c)]["message"]
    assert str(b) in errors[str(b)]["message"] and errors[str(b)]["exit_code"] == 2
    fin = next(e for e in events if e["event"] == "finished")
    assert fin["complete"] == 1 and {f["input"] for f in fin["failed"]} == {str(b), str(c)}
    assert events[-1]["event"] == "error" and events[-1]["type"] == "BatchError"
    assert "2 of 3 inputs failed" not in err  # --json: the list is in the events
    assert _visible_files(out) == sorted([MANIFEST_NAME, "a_person00.npz", "a_person00.obj"]) and _staging(out) == []
    m = RunManifest.load(out)
    assert [m.entry(p)["status"] for p in (a, b, c)] == ["complete", "failed", "failed"]
    assert m.entry(a)["files"] == ["a_person00.obj", "a_person00.npz"] and m.data["status"] == "failed"
    assert m.data["options"]["keypoints"] == str(kp) and "dpmesh" in m.data["versions"]

    # the same folder again: refused (nothing overwritten silently), before any model loads
    before = (out / "a_person00.obj").stat().st_mtime_ns
    rc, _, err = _run(["predict", str(media), "-o", str(out), "--keypoints", str(kp), *FAST], capsys)
    assert rc == 4 and "--overwrite" in err and _error_lines(err)[0].startswith(
        f"dpmesh: error: {out}: already holds results of an earlier run (a_person00.npz, a_person00.obj)")
    assert (out / "a_person00.obj").stat().st_mtime_ns == before

    # --resume with the file's entry for a.png applied to every input: a skipped, c done, b still bad
    one = _coco(tmp_path / "one.json", {"a.png": [STANDING]})
    rc = main(["predict", str(media), "-o", str(out), "--keypoints", str(one), "--resume",
               "--keypoints-apply-to-all", *FAST])
    text = capsys.readouterr()
    err = text.err
    assert rc == 2
    assert f"{a}: skipped (complete in the run manifest)" in text.out.splitlines()
    assert (out / "a_person00.obj").stat().st_mtime_ns == before
    assert "1 of 3 inputs failed:" in err and str(b) in err
    m = RunManifest.load(out)
    assert [m.entry(p)["status"] for p in (a, b, c)] == ["complete", "failed", "complete"]
    assert (out / "c_person00.obj").is_file()

    # --overwrite: results replaced, and files of the earlier run that this run does not write are removed
    (out / "a_person01.obj").write_text("stale result of an earlier run")
    rc, _, _ = _run(["predict", str(a), "-o", str(out), "--keypoints", str(one), "--overwrite", *FAST], capsys)
    assert rc == 0 and not (out / "a_person01.obj").exists()
    assert (out / "a_person00.obj").stat().st_mtime_ns != before
    assert RunManifest.load(out).entry(c)["status"] == "complete"  # other inputs' entries are kept


def test_video_keypoints_are_matched_by_frame_index(tmp_path, media_dir, capsys):
    """A key-point file indexed by frame drives a video frame by frame; a file naming only images does not
    silently apply to a video (that input fails, before any model loads)."""
    from dpmesh_core.io import write_coco_keypoints

    video = media_dir / "street.avi"
    w, h = api.open_media(video).size
    p = STANDING.copy()
    p[:, :2] *= [w / W, h / H]
    p[:, 2] = 1
    person = Person(box=Person.box_from_keypoints(p), keypoints=p)
    kp = write_coco_keypoints(tmp_path / "frames.json", {0: [person], 1: [person, person]})
    out = tmp_path / "out"
    rc, events, err = _run(["predict", str(video), "-o", str(out), "--keypoints", str(kp), "--max-frames", "2",
                            "--json", *FAST], capsys)
    assert rc == 0, err
    frames = [e for e in events if e["event"] == "frame"]
    assert [(e["frame"], e["persons"]) for e in frames] == [(0, 1), (1, 1)]  # frame 1's copy merged
    assert any("street.avi frame 1: person 1 has the same key-points as person 0" in e["message"]
               for e in events if e["event"] == "warning")
    images_only = _coco(tmp_path / "images.json", {"a.png": [STANDING]})
    rc, _, err = _run(["predict", str(video), "-o", str(tmp_path / "o2"), "--keypoints", str(images_only)], capsys)
    assert rc == 2 and _error_lines(err)[0].startswith(f"dpmesh: error: {video}: no entry for this input")


def test_keypoint_sanity_and_quality_record(tmp_path, capsys):
    media = tmp_path / "photos"
    media.mkdir()
    _image(media / "a.png", 1)
    _image(media / "b.png", 2)
    far = STANDING.copy()
    far[:, 0] += 50_000  # 50,000 px outside the image
    head = STANDING.copy()
    head[5:, 2] = 0  # only the face: no body segment sets the depth
    head[:, 0] += 80
    kp = _coco(tmp_path / "kp.json", {"a.png": [STANDING, STANDING, STANDING, far, head], "b.png": [head]})
    out = tmp_path / "out"
    rc, events, err = _run(["predict", str(media), "-o", str(out), "--keypoints", str(kp), "--json", *FAST], capsys)
    assert rc == 0, err
    warnings = [e["message"] for e in events if e["event"] == "warning"]
    assert sum("a.png: person" in w and "same key-points as person 0: merged" in w for w in warnings) == 2
    assert any("a.png: person 3: key-points up to" in w and "outside the 320x240 image" in w for w in warnings)
    frames = {Path(e["input"]).name: e for e in events if e["event"] == "frame"}
    assert frames["a.png"]["persons"] == 2 and frames["a.png"]["meshes"] == 2
    q = [p["quality"] for p in frames["a.png"]["people"]] + [frames["b.png"]["people"][0]["quality"]]
    assert [p["low_confidence"] for p in frames["a.png"]["people"]] == [False, True]
    assert q[0]["visible_joints"] == 17 and q[0]["depth_from"] == "keypoints" and not q[0]["legs_inferred"]
    # face only: depth from the frame's other person (a.png), or from the 1.7 m height prior when alone (b.png)
    assert q[1]["visible_joints"] == 5 and q[1]["legs_inferred"] and q[1]["depth_from"] == "frame"
    assert q[2]["low_confidence"] and q[2]["depth_from"] == "height_prior"
    z = {}
    for name, q_ in (("a_person00", q[0]), ("a_person01", q[1]), ("b_person00", q[2])):
        with np.load(out / f"{name}.npz") as d:
            assert bool(d["low_confidence"]) == q_["low_confidence"]
            assert json.loads(str(d["quality"])) == q_
            z[name] = float(d["transl"][2])
    # not pushed far away ("422 m"): near the frame's person, or near f * 1.7 m / (H / 2) = 5.67 m
    assert 1.0 < z["a_person00"] < 6.0 and abs(z["a_person01"] / z["a_person00"] - 1) < 0.5
    assert 2.8 < z["b_person00"] < 12.0


def test_one_visibility_rule_for_files_and_detectors(tmp_path):
    """The same key-points with the same confidences are visible alike from a results file, from OpenPose and
    from a detector (``make_person``): confidence > 0.5."""
    from dpmesh_core.detect.base import make_person

    kp = STANDING.copy()
    kp[:, 2] = np.linspace(0.05, 0.95, 17)
    res = tmp_path / "res.json"
    res.write_text(json.dumps([{"image_id": "a.png", "category_id": 1, "keypoints": kp.reshape(-1).tolist(),
                                "score": 0.9}]))
    op = tmp_path / "op.json"
    k18 = np.zeros((18, 3), np.float32)
    k18[0] = kp[0]
    k18[2:5] = kp[6], kp[8], kp[10]
    op.write_text(json.dumps({"people": [{"pose_keypoints_2d": k18.reshape(-1).tolist()}]}))
    from_file = read_keypoints(res)["a.png"][0].visible
    from_detector = make_person(Person.box_from_keypoints(kp), kp, 0.9).visible
    expected = kp[:, 2] > VISIBLE_THRESHOLD
    np.testing.assert_array_equal(from_file, expected)
    np.testing.assert_array_equal(from_detector, expected)
    np.testing.assert_array_equal(read_keypoints(op)[0][0].visible, k18[:, 2] > VISIBLE_THRESHOLD)
    np.testing.assert_array_equal(Person(box=[0, 0, 1, 1], keypoints=kp).visible, expected)


# --------------------------------------------------------------------------- locks and interruptions


def _start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dpmesh_core.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO,
                            env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1"))


def _wait_for(proc: subprocess.Popen, event: str, n: int = 1) -> list[dict]:
    seen = []
    for line in proc.stdout:
        if line.startswith("{"):
            seen.append(json.loads(line))
            if sum(e["event"] == event for e in seen) >= n:
                return seen
    raise AssertionError(f"the run ended before {n} {event!r} event(s): {proc.stderr.read()[-2000:]}")


def _folder(tmp_path: Path, n: int) -> tuple[Path, Path]:
    media = tmp_path / "photos"
    media.mkdir()
    for i in range(n):
        _image(media / f"p{i}.png", i)
    kp = _coco(tmp_path / "kp.json", {f"p{i}.png": [STANDING] for i in range(n)})
    return media, kp


def test_sigterm_is_handled_like_ctrl_c(tmp_path):
    media, kp = _folder(tmp_path, 4)
    out = tmp_path / "out"
    proc = _start(["predict", str(media), "-o", str(out), "--keypoints", str(kp), "--json", *FAST])
    _wait_for(proc, "start", 2)  # the second input is being estimated: its staging folder exists
    proc.send_signal(signal.SIGTERM)
    rest, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert json.loads(rest.splitlines()[-1]) == {"event": "error", "type": "Interrupted", "message": "interrupted",
                                                 "exit_code": 130}
    assert err.strip().splitlines()[-1] == "dpmesh: interrupted" and "Traceback" not in err
    assert _staging(out) == []
    m = RunManifest.load(out)
    assert m.data["status"] == "interrupted"
    st = [m.entry(media / f"p{i}.png")["status"] for i in range(4)]
    assert st[0] == "complete" and st[1] == "interrupted" and st[2:] == ["pending", "pending"]
    assert sorted(p for p in _visible_files(out) if p.endswith(".obj")) == ["p0_person00.obj"]


def test_killed_run_leaves_staging_that_the_next_run_removes_and_locks(tmp_path, capsys):
    media, kp = _folder(tmp_path, 3)
    out = tmp_path / "out"
    proc = _start(["predict", str(media), "-o", str(out), "--keypoints", str(kp), "--json", *FAST])
    _wait_for(proc, "start", 2)
    # while it runs, a second run into the same folder is refused at once
    rc, events, err = _run(["predict", str(media), "-o", str(out), "--keypoints", str(kp), "--resume", "--json",
                            *FAST], capsys)
    assert rc == 4 and f"another dpmesh run (process {proc.pid}) is writing to this folder" in err
    proc.kill()  # kill -9: no clean-up at all
    proc.communicate(timeout=60)
    assert _staging(out), "a killed run leaves its staging folder"
    # the lock of the dead process does not block; its staging folder is removed with a note
    rc, events, err = _run(["predict", str(media), "-o", str(out), "--keypoints", str(kp), "--resume", "--json",
                            *FAST], capsys)
    assert rc == 0, err
    notes = [e["message"] for e in events if e["event"] == "warning"]
    assert any("removed 1 staging folder(s) left by an interrupted run" in n for n in notes)
    assert _staging(out) == [] and [e["input"] for e in events if e["event"] == "skipped"] == [str(media / "p0.png")]
    assert RunManifest.load(out).data["status"] == "complete"
    # an explicit holder (another process holding the lock) is named too
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom dpmesh_core.io.run_manifest import "
                               f"OutputLock\nheld = OutputLock({str(out)!r}).acquire()\nprint('held', flush=True)\n"
                               "time.sleep(60)"], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(Exception, match="another dpmesh run"):
            OutputLock(out).acquire()
    finally:
        holder.kill()
        holder.wait()
    OutputLock(out).acquire().release()


# ------------------------------------------------------------------------------------------ training


def test_documented_training_steps_work_as_written(tmp_path, capsys, monkeypatch):
    """README / example config: `dpmesh synth data/synthetic_train --n N` (relative paths, from the working
    folder), then `dpmesh train` on the example config, which reads data/synthetic_*/annotations.jsonl."""
    monkeypatch.chdir(tmp_path)
    assert main(["synth", "data/synthetic_train", "--n", "4", "--size", "128"]) == 0
    assert main(["synth", "data/synthetic_val", "--n", "2", "--size", "128", "--seed", "1"]) == 0
    first = json.loads(Path("data/synthetic_train/annotations.jsonl").read_text().splitlines()[0])
    assert first["image"] == "images/000000.jpg"  # relative to the annotation file, as the reader resolves it
    capsys.readouterr()
    cfg = REPO / "dpmesh_core/data/configs/tiny_synthetic.yaml"
    rc = main(["train", str(cfg), "--json", "--set", "max_steps=1", "--set", "batch_size=2", "--set",
               "eval_every=1", "--set", "checkpoint_every=1", "--set", "log_every=1", "--set",
               "data.val_max_samples=2", "--set", "schedule.warmup_steps=0"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    events = [json.loads(x) for x in out.out.splitlines() if x.startswith("{")]
    assert any(e["event"] == "step" for e in events) and events[-1]["event"] == "done"
    assert Path("runs/tiny_synthetic").is_dir()


def test_earlier_results_are_only_this_inputs_own_files(tmp_path):
    """--overwrite removes an input's earlier files: only names it produces, never another input's whose name
    starts the same (``a.png`` vs ``a_b.png``) nor the user's own files."""
    out = tmp_path / "out"
    out.mkdir()
    names = ["a_person00.obj", "a_f000012_track003.npz", "a_overlay.png", "a_tracks.json", "a_person01_rigged.glb",
             "a_track002.bvh", "a_b_person00.obj", "a_notes.txt", "a_personal.obj", "b_person00.obj"]
    for n in names:
        (out / n).write_text("x")
    found = api._earlier_results(out, [tmp_path / "a.png", tmp_path / "a_b.png"], None)
    assert found == {str(tmp_path / "a.png"): sorted(names[:6]), str(tmp_path / "a_b.png"): ["a_b_person00.obj"]}
