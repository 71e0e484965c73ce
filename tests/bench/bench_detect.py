"""YOLO11n-pose detector speed: our torch network vs the same network in onnxruntime; video throughput.

Prints figures (medians); asserts nothing. Usage:
    .venv/bin/python tests/bench/bench_detect.py [--repeats 15] [--frames 40] [--threads N] [--video PATH]

* load: reading the .pt with the restricted unpickler + building + fusing (first call, uncached).
* network, 1 x 3 x 640 x 640, at 1 and at 2 threads (each library given the same count), measured round-robin
  (one call of each in turn, so load from other jobs hits all alike): the detector's own network call
  (``YoloPoseDetector.network``: our module exported to ONNX in the user's cache and run by onnxruntime,
  the default when the ``onnx`` extra is installed), the torch fallback (fused BN, channels-last,
  conv+SiLU as one oneDNN call, under torch.inference_mode), and the reference: the same fused module
  exported here with torch.onnx.export and run in onnxruntime; ratios to the reference and max abs difference.
* --profile: torch.profiler tables of the torch fallback at 1 and at 2 threads (why torch alone is slower).
* detect(): a whole call on a photo (letterbox + network + NMS + mapping back).
* On a shared, oversubscribed machine run it with OMP_WAIT_POLICY=PASSIVE: spinning OpenMP workers make
  torch's multi-threaded figures up to 10x worse there (onnxruntime has its own thread pool).
* street.avi: frames per second of detect() + Tracker, one frame at a time and in batches of 4.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
os.environ.setdefault("DPMESH_HOME", str(REPO / ".dpmesh-home"))


def _median_ms(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts) * 1000.0


def main() -> None:
    ap = argparse.ArgumentParser()
    shared = Path(os.environ.get("DPMESH_SHARED", REPO.parent / "shared"))
    ap.add_argument("--video", default=str(shared / "media" / "street.avi"))
    ap.add_argument("--image", default=str(shared / "media" / "COCO_val2014_000000000395.jpg"))
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--frames", type=int, default=40)
    ap.add_argument("--threads", type=int, default=0, help="torch threads for detect()/video (0: torch default)")
    ap.add_argument("--profile", action="store_true", help="print torch.profiler tables of the torch network")
    args = ap.parse_args()

    import cv2
    import numpy as np
    import torch

    from dpmesh_core.detect import Tracker, get_detector
    from dpmesh_core.detect.yolo import YoloPoseDetector
    from dpmesh_core.detect.yolo_net import build_from_checkpoint, load_yolo_pose_net
    from dpmesh_core.detect.yolo_weights import read_yolo_checkpoint

    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}")
    t0 = time.perf_counter()
    net = build_from_checkpoint(read_yolo_checkpoint())
    t_build = time.perf_counter() - t0
    fused = build_from_checkpoint(read_yolo_checkpoint()).fuse()  # NCHW, plain ops (also what is exported)
    print(f"load (read .pt + build + strict load): {t_build * 1000:.0f} ms")

    x = torch.rand(1, 3, 640, 640, generator=torch.Generator().manual_seed(0))
    x_cl = x.contiguous(memory_format=torch.channels_last)
    ours = load_yolo_pose_net("cpu", torch.float32)  # fused, channels-last, conv+SiLU in one oneDNN call
    with torch.inference_mode():
        ms_plain = _median_ms(lambda: net(x), args.repeats)
        ms_fused = _median_ms(lambda: fused(x), args.repeats)
        ref = ours(x_cl).numpy()
    print(f"torch unfused NCHW          : {ms_plain:7.1f} ms (median of {args.repeats})")
    print(f"torch fused NCHW            : {ms_fused:7.1f} ms")

    sess_path = None
    tmp = tempfile.TemporaryDirectory()
    try:
        import onnxruntime as ort

        sess_path = os.path.join(tmp.name, "yolo11n_pose.onnx")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(fused, (x,), sess_path, dynamo=False, opset_version=17, input_names=["images"],
                              output_names=["output0"])
    except Exception as e:  # noqa: BLE001 - a bench reports and goes on
        print(f"no onnxruntime comparison: {type(e).__name__}: {e} (needs the onnx and onnxruntime packages)")
        sess_path = None

    default_threads = torch.get_num_threads()
    t0 = time.perf_counter()
    det_net = YoloPoseDetector()
    print(f"detector runtime: {det_net.runtime} (first construction, incl. any ONNX export into the cache: "
          f"{time.perf_counter() - t0:.1f} s)")
    x_np = x.numpy()
    for nt in (1, 2):
        torch.set_num_threads(nt)
        calls = {"ours": lambda: det_net.network(x_np)}
        with torch.inference_mode():
            calls["torch"] = lambda: ours(x_cl)
        if sess_path is not None:
            so = ort.SessionOptions()
            so.intra_op_num_threads = nt
            sess = ort.InferenceSession(sess_path, so, providers=["CPUExecutionProvider"])
            feed = {"images": x_np}
            calls["onnxruntime"] = lambda sess=sess, feed=feed: sess.run(None, feed)
            # a torch call between the two onnxruntime ones, so neither starts while the other's thread pool
            # is still spin-waiting from its previous run (onnxruntime's default): same conditions for both
            calls["torch (spacer)"] = calls["torch"]
        times: dict[str, list[float]] = {k: [] for k in calls}
        with torch.inference_mode():
            for fn in calls.values():
                fn(), fn()
            for _ in range(args.repeats):
                for k, fn in calls.items():
                    t = time.perf_counter()
                    fn()
                    times[k].append(time.perf_counter() - t)
        ms = {k: statistics.median(v) * 1000.0 for k, v in times.items()}
        line = (f"[{nt} thread{'s' if nt > 1 else ''}] ours ({det_net.runtime}): {ms['ours']:6.1f} ms | "
                f"torch fallback: {ms['torch']:6.1f} ms")
        if "onnxruntime" in ms:
            diff = float(np.abs(det_net.network(x_np) - ref).max())
            line += (f" | onnxruntime reference: {ms['onnxruntime']:6.1f} ms | ratio ours {ms['ours'] / ms['onnxruntime']:.2f}"
                     f" (target <= 1.1), torch {ms['torch'] / ms['onnxruntime']:.2f} | max|diff| {diff:.1e}")
        print(line + f" | load {os.getloadavg()[0]:.1f}")
        if args.profile:
            from torch.profiler import ProfilerActivity, profile

            with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(5):
                    ours(x_cl)
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
    torch.set_num_threads(args.threads or default_threads)
    tmp.cleanup()
    print(f"detect() and video below with {torch.get_num_threads()} torch thread(s)")

    det = get_detector("yolo")
    img = np.ascontiguousarray(cv2.imread(args.image)[:, :, ::-1])
    ms_det = _median_ms(lambda: det.detect(img), args.repeats)
    print(f"detect() on {Path(args.image).name} {img.shape[1]}x{img.shape[0]}: {ms_det:.1f} ms "
          f"({len(det.detect(img))} people)")

    from dpmesh_core.io.video import VideoReader

    frames = []
    with VideoReader(args.video) as vr:
        for f in vr:
            frames.append(f)
            if len(frames) >= args.frames:
                break
    if not frames:
        print(f"cannot read {args.video}")
        return
    det.detect(frames[0])
    tr = Tracker()
    t = time.perf_counter()
    n_people = 0
    for f in frames:
        n_people += len(tr.update(det.detect(f)))
    dt = time.perf_counter() - t
    print(f"street.avi {frames[0].shape[1]}x{frames[0].shape[0]}, {len(frames)} frames, detect+track one by one: "
          f"{len(frames) / dt:.1f} frames/s ({dt / len(frames) * 1000:.0f} ms/frame, {n_people / len(frames):.1f} "
          f"people/frame, {len(set(tr.active_ids))} live tracks at the end)")
    tr.reset()
    t = time.perf_counter()
    for i in range(0, len(frames), 4):
        for persons in det.detect_many(frames[i : i + 4]):
            tr.update(persons)
    dt = time.perf_counter() - t
    print(f"street.avi detect_many(batch 4)+track: {len(frames) / dt:.1f} frames/s")
    print(f"load average at the end {os.getloadavg()[0]:.1f} (other jobs on this machine inflate every figure)")


if __name__ == "__main__":
    main()
