"""End to end on ../shared/media/street.avi through THE frame pipeline (``api.FramePipeline``, what ``dpmesh
predict`` and the app run): detect + track + fit every person (warm-started per track, cold-fit fallback) +
temporal smoothing per track. Prints, per frame and in summary:

* re-projection error of every mesh's visible key-points, % of the person's box height (target: 95th
  percentile <= 5 %);
* the largest jump of a track's box centre between consecutive processed frames, relative to its box height
  (target <= 0.5), for the detections' boxes and for the meshes' projected joints;
* ID count (tracks opened) and track lengths; warm fits replaced by a cold fit;
* frames per second of the whole pipeline (reading included), and how much smoothing steadies the motion.

Prints figures; asserts nothing. Usage:
    .venv/bin/python tests/bench/bench_pipeline.py [--frames 40] [--video PATH] [--quiet]
    (--frames 205: all of street.avi)
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
os.environ.setdefault("DPMESH_HOME", str(REPO / ".dpmesh-home"))


class _Timed:
    """The real detector, timed."""

    def __init__(self, det):
        self.det, self.times = det, []

    def detect(self, image):
        t = time.perf_counter()
        out = self.det.detect(image)
        self.times.append(time.perf_counter() - t)
        return out

    def detect_in_boxes(self, image, boxes, **kw):  # the rescue pass (timed by the pipeline itself)
        return self.det.detect_in_boxes(image, boxes, **kw)


def _centre_h(box) -> tuple[np.ndarray, float]:
    b = np.asarray(box, np.float64)
    return (b[:2] + b[2:]) / 2, max(float(b[3] - b[1]), 1.0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--video", default=str(REPO.parent / "shared" / "media" / "street.avi"))
    ap.add_argument("--frames", type=int, default=40)
    ap.add_argument("--quiet", action="store_true", help="summary only, no per-frame lines")
    ap.add_argument("--smooth-sigma", type=float, default=1.5, help="0: no smoothing (warm starts only)")
    ap.add_argument("--refit", default="auto", choices=["auto", "always", "never"])
    ap.add_argument("--no-occlusion", action="store_true",
                    help="the tracker without occlusion keeping and no rescue pass (the behaviour before them)")
    args = ap.parse_args()

    import torch

    from dpmesh_core import api
    from dpmesh_core.types import MeshResult

    t0 = time.perf_counter()
    detector = _Timed(api.get_detector("yolo"))
    estimator = api.make_estimator("fit")
    print(f"setup (detector + Anny fitter): {time.perf_counter() - t0:.2f} s; torch threads {torch.get_num_threads()}")

    media = api.open_media(args.video)
    w, h = media.size
    n = min(args.frames, media.num_frames)
    tracker = api.Tracker(occlusion_cover=None) if args.no_occlusion else None
    pipe = api.FramePipeline(estimator, detector, smooth_sigma=args.smooth_sigma, refit=args.refit, tracker=tracker,
                             rescue=not args.no_occlusion)
    raw_pipe_results: dict[int, dict[int, np.ndarray]] = {}  # unsmoothed joints per track (for the jerk figure)
    outs = []
    wall, cpu = time.perf_counter(), time.process_time()
    for out in pipe.run(media, range(n)):
        outs.append(out)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    media.close()

    if not args.quiet:
        print("frame persons meshes  reproj%: median  p95   max | det-box jump/h  mesh jump/h | refit")
    all_err: list[float] = []
    jumps_det: list[float] = []
    jumps_mesh: list[float] = []
    last: dict[int, tuple[int, np.ndarray, float, np.ndarray, float]] = {}
    tracks: dict[int, list[int]] = {}
    n_fail = 0
    frame_p95: list[float] = []
    for k, out in enumerate(outs):
        errs, jd, jm = [], [0.0], [0.0]
        for p, r in zip(out.persons, out.results):
            tracks.setdefault(p.track_id, []).append(out.frame)
            if not isinstance(r, MeshResult):
                n_fail += 1
                continue
            e = api.reprojection_errors(r, p)
            errs += list(e[np.isfinite(e)] * 100)
            c, hh = _centre_h(p.box)
            j2 = r.joints2d
            mb = np.r_[j2.min(0), j2.max(0)]
            mc, mh = _centre_h(mb)
            prev = last.get(p.track_id)
            if prev is not None and prev[0] == k - 1:
                jd.append(float(np.linalg.norm(c - prev[1])) / max(prev[2], hh))
                jm.append(float(np.linalg.norm(mc - prev[3])) / max(prev[4], mh))
            last[p.track_id] = (k, c, hh, mc, mh)
            raw_pipe_results.setdefault(p.track_id, {})[out.frame] = r.joints3d - r.joints3d.mean(0)
        all_err += errs
        if errs:
            frame_p95.append(float(np.percentile(errs, 95)))
        jumps_det.append(max(jd))
        jumps_mesh.append(max(jm))
        if not args.quiet:
            q = np.percentile(errs, [50, 95, 100]) if errs else [np.nan] * 3
            print(f"{out.frame:5d} {len(out.persons):7d} {sum(isinstance(r, MeshResult) for r in out.results):6d}"
                  f"  {q[0]:14.1f} {q[1]:5.1f} {q[2]:5.1f} | {max(jd):14.2f} {max(jm):12.2f} | {list(out.refit)}")

    med = statistics.median
    e = np.asarray(all_err)
    print(f"\nvideo {Path(args.video).name}: {w}x{h}, {n} frames, {len(outs)} written"
          f"{'' if pipe.truncated is None else f' (stopped at frame {pipe.truncated.frame})'}")
    npers = [len(o.persons) for o in outs]
    print(f"persons per frame: median {med(npers)}, max {max(npers)}; failed fits {n_fail}; "
          f"warm fits replaced by a cold fit {pipe.refits}")
    print(f"re-projection error of visible key-points (% of box height) over {len(e)} key-points: median "
          f"{np.median(e):.2f}, p95 {np.percentile(e, 95):.2f} (target <= 5), max {e.max():.1f}; frames whose own p95 > 5: "
          f"{sum(x > 5 for x in frame_p95)} of {len(frame_p95)}" if len(e) else "no meshes")
    jd, jm = np.asarray(jumps_det), np.asarray(jumps_mesh)
    print(f"largest box-centre jump per frame / box height: detections max {jd.max():.2f} (frames > 0.5: "
          f"{int((jd > 0.5).sum())}), meshes max {jm.max():.2f} (frames > 0.5: {int((jm > 0.5).sum())}) (target <= 0.5)")
    lengths = sorted((len(v) for v in tracks.values()), reverse=True)
    print(f"ID count: {len(tracks)} tracks; longest {lengths[:8]}; tracks seen in 1-2 frames only: "
          f"{sum(1 for x in lengths if x <= 2)}")
    print(f"median detect ms per frame: {1000 * med(detector.times):.1f}")
    spans = api.occlusion_spans([(o.frame, dict(o.occluded)) for o in outs])
    n_occ = sum(len(o.occluded) for o in outs)
    print(f"occlusion: {n_occ} track-frames hidden behind another track (no key-points), {len(spans)} tracks, "
          f"longest span {max((s['frames'] for v in spans.values() for s in v), default=0)} frames; rescue pass: "
          f"{pipe.rescue_crops} crops on {sum(1 for o in outs if o.occluded or o.rescued)} frames, {pipe.rescued} "
          f"persons found, {pipe.rescue_seconds:.1f} s ({100 * pipe.rescue_seconds / wall:.1f} % of the run, "
          f"{1000 * pipe.rescue_seconds / max(pipe.rescue_crops, 1):.0f} ms per crop)")
    print(f"end to end: {len(outs) / wall:.2f} frames/s ({wall:.1f} s for {len(outs)} frames); "
          f"{len(outs) / cpu:.2f} frames per CPU-second of this process ({cpu:.1f} CPU-s: the figure to compare on a "
          f"busy machine)")

    def jerk(tracks_: dict) -> float:
        acc = [np.linalg.norm(s[t + 1] - 2 * s[t] + s[t - 1], axis=1).mean() for s in tracks_.values() for t in s
               if t - 1 in s and t + 1 in s]
        return 1000 * float(np.mean(acc)) if acc else float("nan")

    print(f"mean root-relative joint acceleration per track (smoothed output): {jerk(raw_pipe_results):.1f} mm/frame²")


if __name__ == "__main__":
    main()
