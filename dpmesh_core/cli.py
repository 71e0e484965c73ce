"""``dpmesh``: the headless command line.

    dpmesh predict IMAGE|VIDEO|DIR -o OUT [--keypoints FILE] [--format obj,ply,glb,npz,rigged-glb,bvh] [--overlay] [--views camera,side,top]
                   [--rig-names native|mixamo|cmu] [--rig-influences 8|4]
                   [--detector yolo|mmpose|mediapipe [--pose-config CFG --pose-checkpoint CKPT
                    [--det-config CFG --det-checkpoint CKPT]]]
                   [--estimator fit|dpmesh --model PATH] [--json]
    dpmesh doctor [--pose-config CFG --pose-checkpoint CKPT [--det-config CFG --det-checkpoint CKPT]]
    dpmesh convert OFFICIAL.pth.tar OUT_DIR
    dpmesh synth OUT_DIR [--n 200]          (a synthetic dataset with ground truth)
    dpmesh train CONFIG.yaml [--json] [--num-processes N] [--mixed-precision bf16|fp16|no]
                 [--accelerate-config FILE] [--grad-accum K]   (also under accelerate launch / torchrun / srun)
    dpmesh eval --model M --data D [--json]

Errors print one line ``dpmesh: error: PATH: cause`` on stderr (and a ``{"event": "error", ...}`` line on stdout
with ``--json``), never a traceback unless ``--debug``, and exit with ``EXIT_CODES``: 0 success, 1 anything
else (an internal error), 2 bad input (an argument, an image/video/key-point file, a config; a batch where any
input failed), 3 missing model files / checkpoint mismatch, 4 output problem (the output path is a file,
read-only, full, locked by another run, or holds earlier results), 130 interrupted (Ctrl-C or SIGTERM).
``--json`` prints one JSON object per line on stdout (machine-readable progress), otherwise tqdm progress goes
to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterable, Iterator
from typing import Any

from . import __version__
from .errors import DPMeshError, InputError

#: exit codes of every command (also in ``dpmesh --help`` and the README)
EXIT_CODES = {0: "success", 1: "internal error (run with --debug for the traceback)",
              2: "bad input: an argument, image, video, key-point file or config (a batch: any input failed)",
              3: "missing model files or a checkpoint that does not match",
              4: "output problem: the output path is a file, read-only, full, locked by another run, or holds "
                 "earlier results (--overwrite / --resume)",
              130: "interrupted (Ctrl-C or SIGTERM): finished inputs are kept, the running one leaves nothing"}


def _eprint(*a: Any, **kw: Any) -> None:
    print(*a, **kw)


def _emit_json(ev: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(ev, default=str) + "\n")
    sys.stdout.flush()


def _run_events(events: Iterator[dict[str, Any]], as_json: bool, describe) -> list[dict[str, Any]]:
    """Drain a generator of events: JSON lines, or a tqdm bar per input plus short messages."""
    seen = []
    if as_json:
        for ev in events:
            _emit_json(ev)
            seen.append(ev)
        return seen
    from tqdm import tqdm

    bar = None
    try:
        for ev in events:
            seen.append(ev)
            kind = ev.get("event")
            if kind == "start":
                total = ev.get("frames", ev.get("total_steps"))
                bar = tqdm(total=total, desc=describe(ev), unit="frame" if "frames" in ev else "step",
                           file=sys.stderr, disable=(total or 0) <= 1 and not sys.stderr.isatty())
            elif kind in ("frame", "step"):
                if bar is not None:
                    bar.update(1)
                    if kind == "step" and "loss" in ev:
                        bar.set_postfix(loss=f"{ev['loss']:.4f}")
                for err in ev.get("errors", []):
                    tqdm.write(f"  warning: {err}", file=sys.stderr)
            elif kind == "done" and "files" in ev:
                if bar is not None:
                    bar.close()
                    bar = None
                files = ev["files"]
                print(f"{ev.get('input', '')}: wrote {len(files)} file(s)")
            elif kind == "truncated":
                (tqdm.write if bar is not None else print)(
                    f"  warning: {ev.get('input', '')}: stopped at frame {ev.get('frame')} (cannot be decoded); "
                    f"keeping the {ev.get('processed')} frame(s) before it", file=sys.stderr)
            elif kind == "warning":
                (tqdm.write if bar is not None else _eprint)(f"dpmesh: warning: {ev.get('message', '')}",
                                                             file=sys.stderr)
            elif kind == "skipped":
                print(f"{ev.get('input', '')}: skipped ({ev.get('reason', '')})")
            elif kind == "error" and bar is not None:
                bar.close()
                bar = None
            elif kind == "finished" and ev.get("failed") and ev.get("inputs", 0) > 1:
                failed = ev["failed"]
                _eprint(f"dpmesh: {len(failed)} of {ev['inputs']} inputs failed:", file=sys.stderr)
                for f in failed:
                    _eprint(f"  - {f['message']}", file=sys.stderr)
            elif kind in ("eval", "checkpoint", "message"):
                msg = ev.get("message") or json.dumps({k: v for k, v in ev.items() if k != "event"}, default=str)
                (tqdm.write if bar is not None else print)(f"{kind}: {msg}")
    finally:
        if bar is not None:
            bar.close()
    return seen


# ------------------------------------------------------------------------------------------ commands


def _setup_progress(as_json: bool):
    """One-off set-up messages (Anny's first build): a JSON event, or a line on stderr."""

    building = False

    def progress(fraction: float, message: str) -> None:
        nonlocal building
        building = building or fraction < 1.0
        if not building:  # a cached load: nothing worth saying
            return
        if as_json:
            _emit_json({"event": "setup", "fraction": fraction, "message": message})
        else:
            print(f"dpmesh: {message}", file=sys.stderr, flush=True)

    return progress


def _mmpose_args(args: argparse.Namespace) -> dict[str, Any]:
    return {"pose_config": args.pose_config, "pose_checkpoint": args.pose_checkpoint,
            "det_config": args.det_config, "det_checkpoint": args.det_checkpoint}


def _dpmesh_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """Options of the DPMesh network: the release's ldm config (heads), dtype, fp16 autocast."""
    kw: dict[str, Any] = {}
    if getattr(args, "ldm_config", None):
        kw["ldm_config"] = args.ldm_config
    if getattr(args, "dtype", None):
        kw["dtype"] = args.dtype
    if getattr(args, "autocast", False):
        kw["autocast"] = True
    return kw


def cmd_predict(args: argparse.Namespace) -> int:
    from . import api

    mm = _mmpose_args(args)
    detector = args.detector or ("mmpose" if any(mm.values()) else "yolo")
    if detector == "mmpose":
        detector_options: dict[str, Any] = api.mmpose_options(**mm)
    elif any(mm.values()):
        raise InputError(f"--pose-config/--pose-checkpoint/--det-config/--det-checkpoint are for "
                             f"--detector mmpose, not {detector}")
    else:
        detector_options = {}

    opts = api.PredictOptions(
        formats=tuple(f.strip().lower() for f in args.format.split(",") if f.strip()),
        overlay=args.overlay,
        views=tuple(v.strip().lower() for v in (args.views or "").split(",") if v.strip()),
        estimator=args.estimator,
        model_path=args.model,
        body_model=args.body_model,
        refine=args.refine,
        device=args.device,
        keypoints=args.keypoints,
        conf=args.conf,
        detector=detector,
        detector_options=detector_options,
        smooth=not args.no_smooth,
        smooth_sigma=args.smooth_sigma,
        max_persons=args.max_persons,
        keypoints_max_mb=args.keypoints_max_mb,
        keypoints_apply_to_all=args.keypoints_apply_to_all,
        overwrite=args.overwrite,
        resume=args.resume,
        max_frames=args.max_frames,
        stride=args.stride,
        progress=_setup_progress(args.json),
        rig_names=args.rig_names,
        rig_influences=args.rig_influences,
        estimator_kwargs=_dpmesh_kwargs(args) if args.estimator == "dpmesh" else {},
    )
    if args.manifest or args.shard or args.workers != 1 or args.devices or args.ray:
        from . import batch

        shard = batch.parse_shard(args.shard) if args.shard else None
        runner = None
        if args.ray:
            from . import ray_predict

            runner = ray_predict.runner(address=args.ray_address, num_gpus=args.ray_gpus)
        events = batch.predict_batch(args.input, args.output, opts, shard=shard, workers=args.workers,
                                     devices=batch.parse_devices(args.devices), input_list=args.manifest,
                                     runner=runner)
    elif args.input is None:
        raise InputError("give an input (an image, a video or a folder) or --manifest FILE")
    else:
        events = api.predict(args.input, args.output, opts)
    _run_events(events, args.json, lambda ev: ev["input"].split("/")[-1])
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from . import api

    mm = _mmpose_args(args)
    checks = api.doctor(mmpose=mm if any(mm.values()) else None)
    if args.json:
        for c in checks:
            _emit_json({"event": "check", **c.__dict__})
    else:
        for c in checks:
            mark = "ok  " if c.ok else ("--  " if c.optional else "MISS")
            print(f"[{mark}] {c.name}: {c.detail}")
            if not c.ok and c.fix:
                print(f"        -> {c.fix}")
    required_missing = [c for c in checks if not c.ok and not c.optional]
    return 1 if required_missing else 0


def cmd_convert(args: argparse.Namespace) -> int:
    from .model.checkpoint import convert_official

    out = convert_official(args.checkpoint, args.output, preset_name=args.preset, merge_lora=args.merge_lora,
                           ldm_config=args.ldm_config)
    print(f"converted {args.checkpoint} -> {out}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .train import launch
    from .train.config import load_train_config
    from .train.loop import train

    overrides = list(args.set or [])
    if args.mixed_precision:
        overrides.append(f"precision={'fp32' if args.mixed_precision == 'no' else args.mixed_precision}")
    if args.grad_accum:
        overrides.append(f"grad_accum={args.grad_accum}")
    cfg = load_train_config(args.config, overrides=overrides)  # a bad config fails before any launch
    if ((args.num_processes or 1) > 1 or args.accelerate_config) and not launch.in_launched_process():
        child = launch.child_argv(args)
        return launch.launch(child, lambda: main(child), args.num_processes, args.accelerate_config,
                             args.mixed_precision)
    launch.adopt_slurm_env()
    _run_events(train(cfg, resume=args.resume), args.json, lambda ev: "train")
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from .body import load_body_model
    from .train.synthetic import generate

    for name, value, low in (("--n", args.n, 1), ("--size", args.size, 32), ("--max-persons", args.max_persons, 1)):
        if value < low:
            raise InputError(f"{name} must be a whole number ≥ {low}, got {value}")
    if not 0 <= args.occluders <= 1:
        raise InputError(f"--occluders is a probability in [0, 1], got {args.occluders}")
    extra = {"progress": _setup_progress(args.json)} if args.body_model == "anny" else {}
    body = load_body_model(args.body_model, **extra)

    def events() -> Iterator[dict[str, Any]]:
        yield {"event": "start", "input": args.output, "frames": args.n}
        for ev in generate(args.output, args.n, body, seed=args.seed, size=(args.size, args.size),
                           max_persons=args.max_persons, occluder_prob=args.occluders,
                           backgrounds=args.background or ()):
            if ev["event"] == "image":
                yield {"event": "frame", "frame": ev["index"], "total": ev["total"]}
            else:
                yield {"event": "done", "input": args.output, "files": [ev["path"]]}

    _run_events(events(), args.json, lambda ev: "synth")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .train.evaluate import evaluate, format_table

    result = evaluate(args.model, args.data, regressor=args.regressor, device=args.device,
                      max_samples=args.max_samples)
    if args.json:
        _emit_json({"event": "eval", **result})
    else:
        print(format_table(result))
    return 0


# -------------------------------------------------------------------------------------------- parser


def _add_mmpose_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("mmpose model (for --detector mmpose; doctor: check that these files load)")
    g.add_argument("--pose-config", metavar="CFG", help="mmpose pose model config (.py), COCO-17 key-points")
    g.add_argument("--pose-checkpoint", metavar="CKPT", help="its checkpoint (.pth)")
    g.add_argument("--det-config", metavar="CFG", help="mmdet person detector config for a top-down model "
                                                        "(without one the whole image is one person box)")
    g.add_argument("--det-checkpoint", metavar="CKPT", help="its checkpoint (.pth)")


def build_parser() -> argparse.ArgumentParser:
    codes = "\n".join(f"  {k:>3}  {v}" for k, v in EXIT_CODES.items())
    p = argparse.ArgumentParser(prog="dpmesh", description="DPMesh Studio: 3-D meshes of occluded people.",
                                epilog=f"exit codes:\n{codes}", formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"dpmesh {__version__}")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    p.add_argument("--debug", action="store_true",
                   help="show Python tracebacks of errors (also accepted after the command)")
    sub = p.add_subparsers(dest="command", required=True)

    from .types import LOW_CONFIDENCE_MAX_RESIDUAL, LOW_CONFIDENCE_MIN_VISIBLE, VISIBLE_THRESHOLD

    pr = sub.add_parser(
        "predict", help="detect persons and write a mesh for each (image, video or folder)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"""\
visibility: a key-point counts as visible when its source labels it so (COCO flag v=2) or, for sources
  that give a confidence (detectors, COCO results / AlphaPose / OpenPose / mmpose files), when its
  confidence is > {VISIBLE_THRESHOLD}: the same rule for every source.
key-point files: entries are matched to inputs by image name (base name, then stem, then the number at
  the end of the name; frame index on a video); an input without an entry fails unless
  --keypoints-apply-to-all. Persons with key-points more than one image size outside the image are
  refused and persons listed twice merged, with a warning.
trust: each mesh has a quality record (npz "quality", JSON frame events "people"[].quality) and is
  low_confidence when fewer than {LOW_CONFIDENCE_MIN_VISIBLE} key-points are visible, the median re-projection
  error exceeds {LOW_CONFIDENCE_MAX_RESIDUAL:.0%} of the person's size, or the depth could not be set from the
  key-points (then a 1.7 m height prior sets it).
output folder: dpmesh-run.json records inputs, options, versions and each input's status and files; a
  folder holding results is refused unless --overwrite or --resume; one run at a time per folder.
  Each input succeeds or fails as a whole; a batch goes on past a bad input and lists every failure.
exit codes:
{codes}""")
    pr.add_argument("input", nargs="?", help="an image, a video, or a folder of them (or --manifest FILE)")
    pr.add_argument("-o", "--output", required=True, help="output folder (created if needed)")
    pr.add_argument("--keypoints", help="use key-points from this file (COCO / OpenPose / AlphaPose / mmpose JSON) "
                                        "instead of detecting")
    pr.add_argument("--detector", choices=["yolo", "mmpose", "mediapipe"],
                    help="2-D detector: yolo (default, YOLO11n-pose), mmpose (your mmpose model: --pose-config, "
                         "--pose-checkpoint; needs a Python environment with mmpose, see scripts/mmpose_env.sh), "
                         "mediapipe (BlazePose, one person)")
    _add_mmpose_args(pr)
    pr.add_argument("--format", default="obj",
                    help="comma-separated: obj, ply, glb, npz, rigged-glb (skinned glTF; animated per track on "
                         "video), bvh (default obj)")
    pr.add_argument("--rig-names", default="native", choices=["native", "mixamo", "cmu"],
                    help="rigged-glb/bvh bone names: the body model's own (default), or Mixamo / CMU names for "
                         "retargeting")
    pr.add_argument("--rig-influences", type=int, default=8, choices=[8, 4],
                    help="rigged-glb skinning influences per vertex: 8 (exact for Anny; default) or 4 (one "
                         "JOINTS_0 set, for engines that read only 4)")
    pr.add_argument("--overlay", action="store_true", help="also write the image/video with meshes drawn over it")
    pr.add_argument("--views", metavar="LIST",
                    help="also write 3-D views, comma-separated: camera, side, top (bird's-eye with a 1 m grid) as "
                         "{stem}_view_{name}.png, or .mp4 for a video")
    pr.add_argument("--estimator", choices=["fit", "dpmesh"], default="fit",
                    help="fit: key-point fitting (default, no downloads); dpmesh: the network (needs --model)")
    pr.add_argument("--model", help="DPMesh checkpoint: an official *_best_ckpt.pth.tar (read directly) or a "
                                     "folder from `dpmesh convert` / `dpmesh train`")
    pr.add_argument("--ldm-config", metavar="YAML",
                    help="dpmesh with a .pth.tar: the release's cldm_v15.yaml (or a file laid out like it) for what "
                         "the checkpoint's shapes cannot tell (attention heads); default: the released values")
    pr.add_argument("--dtype", choices=["fp32", "bf16", "fp16"],
                    help="dpmesh: network dtype (default: fp32 on CPU; bf16 on CUDA, fp16 where bf16 is unsupported)")
    pr.add_argument("--autocast", action="store_true",
                    help="dpmesh on CUDA: evaluate as the release does (fp32 weights under fp16 autocast)")
    pr.add_argument("--body-model", default="anny", choices=["anny", "smpl", "synthetic-smpl"],
                    help="body model for fitting (default anny; smpl needs DPMESH_SMPL)")
    pr.add_argument("--refine", action="store_true", help="refine the network's output by fitting")
    pr.add_argument("--device", help="cpu, cuda, cuda:N, mps or auto (default: automatic); checked before any "
                                      "model loads")
    pr.add_argument("--max-persons", type=int, default=64, metavar="N",
                    help="an image/frame with more persons fails (default 64, far above real crowds; memory "
                         "does not grow with it: persons are fitted in batches)")
    pr.add_argument("--keypoints-max-mb", type=float, default=64.0, metavar="MB",
                    help="refuse larger key-point files before reading them (default 64)")
    pr.add_argument("--keypoints-apply-to-all", action="store_true",
                    help="use the key-point file's single entry for every input, whatever its name")
    pr.add_argument("--overwrite", action="store_true",
                    help="replace the results of an earlier run in the output folder (and remove its stale files)")
    pr.add_argument("--resume", action="store_true",
                    help="skip inputs the output folder's run manifest lists as complete (with their files)")
    pr.add_argument("--conf", type=float, default=0.25, help="detector confidence threshold (default 0.25)")
    pr.add_argument("--no-smooth", action="store_true", help="video: no warm start / temporal smoothing")
    pr.add_argument("--smooth-sigma", type=float, default=1.5, metavar="FRAMES",
                    help="video with key-point fitting: Gaussian smoothing of each person's body over this many "
                         "processed frames (default 1.5; 0 = warm start only)")
    pr.add_argument("--max-frames", type=int, help="video: stop after this many frames")
    pr.add_argument("--stride", type=int, default=1, help="video: take every n-th frame")
    pr.add_argument("--json", action="store_true", help="JSON-lines events on stdout")
    sc = pr.add_argument_group("scaling out (dpmesh_core.batch; same outputs and run manifest as a plain run)")
    sc.add_argument("--manifest", metavar="FILE",
                    help="the inputs listed in FILE (one path per line, or a dpmesh-run.json's inputs)")
    sc.add_argument("--shard", metavar="I/N", help="only shard I of N of the sorted inputs (a video is one "
                    "input); shards may write one output folder at the same time (Slurm arrays, k8s Jobs)")
    sc.add_argument("--workers", type=int, default=1, metavar="K",
                    help="K processes on this machine, each with its own models (default 1)")
    sc.add_argument("--devices", metavar="LIST", help="pin the workers round-robin to these devices, e.g. "
                    "cuda:0,cuda:1 (default: --device; on the CPU the threads are shared out)")
    sc.add_argument("--ray", action="store_true",
                    help="run on Ray Data (pip install 'dpmesh-studio[ray]'): a stateful actor pool of K workers")
    sc.add_argument("--ray-address", metavar="ADDR", help="Ray cluster address (default: a local Ray)")
    sc.add_argument("--ray-gpus", type=float, default=0.0, metavar="G", help="GPUs per Ray actor (default 0)")
    pr.set_defaults(func=cmd_predict)

    dr = sub.add_parser("doctor", help="what is installed and what is missing")
    dr.add_argument("--json", action="store_true")
    _add_mmpose_args(dr)
    dr.set_defaults(func=cmd_doctor)

    cv = sub.add_parser("convert", help="convert an official DPMesh checkpoint to our fast safetensors folder")
    cv.add_argument("checkpoint")
    cv.add_argument("output")
    cv.add_argument("--merge-lora", action="store_true", help="fold LoRA into the U-Net weights")
    cv.add_argument("--ldm-config", metavar="YAML",
                    help="the release's cldm_v15.yaml (or a file laid out like it: model.params.{unet_config, "
                         "control_stage_config, first_stage_config}.params) for what shapes cannot tell "
                         "(attention heads); default: the released values")
    cv.add_argument("--preset", choices=["sd15", "tiny"],
                    help="force a named architecture instead of reading it from the file's shapes")
    cv.set_defaults(func=cmd_convert)

    tr = sub.add_parser("train", help="train the DPMesh network from a YAML config")
    tr.add_argument("config")
    tr.add_argument("--resume", action="store_true", help="resume from the last checkpoint of the run")
    tr.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value")
    tr.add_argument("--num-processes", type=int, metavar="N",
                    help="train in N processes (data parallel, one per GPU; gloo on a CPU) through Accelerate")
    tr.add_argument("--mixed-precision", choices=["bf16", "fp16", "no"],
                    help="autocast precision (overrides the config's precision; fp16 needs CUDA)")
    tr.add_argument("--accelerate-config", metavar="FILE",
                    help="launch with this `accelerate config` file (GPUs, machines, precision)")
    tr.add_argument("--grad-accum", type=int, metavar="K",
                    help="micro-batches per optimisation step (global batch = batch_size x processes x K)")
    tr.add_argument("--json", action="store_true")
    tr.set_defaults(func=cmd_train)

    sy = sub.add_parser("synth", help="render a synthetic training/benchmark set with full ground truth")
    sy.add_argument("output", help="dataset folder (images/ and annotations.jsonl are written there)")
    sy.add_argument("--n", type=int, default=200, help="number of images (default 200)")
    sy.add_argument("--body-model", default="synthetic-smpl", choices=["anny", "smpl", "synthetic-smpl"])
    sy.add_argument("--seed", type=int, default=0)
    sy.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
    sy.add_argument("--max-persons", type=int, default=2)
    sy.add_argument("--occluders", type=float, default=0.5, help="probability of an occluding object")
    sy.add_argument("--background", action="append", help="a background photo (repeatable; default procedural)")
    sy.add_argument("--json", action="store_true")
    sy.set_defaults(func=cmd_synth)

    ev = sub.add_parser("eval", help="evaluate a model (MPJPE, PA-MPJPE, MPVE)")
    ev.add_argument("--model", required=True)
    ev.add_argument("--data", required=True)
    ev.add_argument("--regressor", help="J_regressor_h36m_correct.npy (17×6890) for the H36M protocol")
    ev.add_argument("--device")
    ev.add_argument("--max-samples", type=int)
    ev.add_argument("--json", action="store_true")
    ev.set_defaults(func=cmd_eval)
    return p


def _on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # SIGTERM is handled like Ctrl-C: the running input is cleaned up, exit 130


def _install_signal_handlers() -> list[tuple[int, Any]]:
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return []
    old = [(signal.SIGTERM, signal.signal(signal.SIGTERM, _on_sigterm))]
    if hasattr(signal, "SIGXFSZ"):  # a file-size limit: report the failed write (EFBIG) instead of dying
        old.append((signal.SIGXFSZ, signal.signal(signal.SIGXFSZ, signal.SIG_IGN)))
    return old


def main(argv: Iterable[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.DEBUG if debug else logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    as_json = getattr(args, "json", False)

    def fail(code: int, type_name: str, message: str) -> int:
        if as_json:
            _emit_json({"event": "error", "type": type_name, "message": message, "exit_code": code})
        print(f"dpmesh: error: {message}" if code != 130 else "dpmesh: interrupted", file=sys.stderr)
        return code

    old_handlers = _install_signal_handlers()
    try:
        return int(args.func(args) or 0)
    except DPMeshError as e:
        if debug:
            import traceback

            traceback.print_exc()
        return fail(e.exit_code, type(e).__name__, str(e))
    except KeyboardInterrupt:
        return fail(130, "Interrupted", "interrupted")
    except OSError as e:
        if debug:
            raise
        import errno

        from .errors import describe_oserror

        code = 4 if e.errno in (errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EFBIG) else 1
        where = f"{e.filename}: " if e.filename else ""
        return fail(code, type(e).__name__, f"{where}{describe_oserror(e)}")
    except Exception as e:  # noqa: BLE001 - no traceback reaches a user unless --debug
        if debug:
            raise
        return fail(1, type(e).__name__, f"internal error: {type(e).__name__}: {e} (run again with --debug for "
                                         "the traceback)")
    finally:
        import signal

        for sig, handler in old_handlers:
            signal.signal(sig, handler)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
