"""Benchmark of the key-point fitter (dpmesh_core.fit): speed and accuracy on synthetic scenes.

(a) speed: median ms per person for a cold fit (one person per call) and for a warm re-fit after one
    key-point moved by ~30 px (the drag path; target ≤ 30 ms for Anny), by the default Levenberg-Marquardt
    warm solver and, on the same drags in the same run, by the first-order solver it replaced (time ratio,
    final energies), plus a 4-person frame fitted in one call (ms per person);
    energy evaluations per call are printed too (a load-independent cost measure).
(b) accuracy: persons with random plausible poses/shapes (drawn from the body model's priors, inside its
    joint limits), random yaw (any), lean, distance 3-12 m, inside a 1280x720 image with the DPMesh default
    camera; input key-points = GT COCO-17 projections corrupted by PoseFix-style realistic errors
    (dpmesh_core.train.posefix, spec §5.3: jitter / miss / inversion / swap-free since persons are alone)
    with 20-40 % of the joints marked occluded. Metrics on the 17 COCO joints' 3-D positions (camera frame):
    MPJPE after aligning the hip mid-points, PA-MPJPE (similarity Procrustes), and the median re-projection
    error of the visible joints against the (noisy) input and against the clean GT projections; the median
    distance of the GT projections themselves from the input is printed too (the noise floor: a fit below it
    vs input follows the noise).

Run: DPMESH_HOME=$PWD/.dpmesh-home .venv/bin/python tests/bench/bench_fit.py [--models synthetic-smpl,anny]
[--n 40] [--timing 15] [--bounds 100]
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np
import torch

from dpmesh_core.body import joints as J
from dpmesh_core.body import load_body_model
from dpmesh_core.fit import FitConfig, KeypointFitter
from dpmesh_core.fit.synthetic import sample_scene
from dpmesh_core.train.metrics import joint_errors, pa_mpjpe
from dpmesh_core.train.posefix import INVERSION, MISS, synthesize_pose, synthesize_pose_with_outcomes
from dpmesh_core.types import Camera, MeshResult, Person

CAM = Camera.default_for(1280, 720)
HIPS = [J.index("coco17", "L_Hip"), J.index("coco17", "R_Hip")]


def _person(kp: np.ndarray, vis: np.ndarray | None = None) -> Person:
    return Person(box=Person.box_from_keypoints(kp, vis), keypoints=kp, visible=vis)


def _clean_kp(uv: np.ndarray) -> np.ndarray:
    return np.concatenate([uv, np.ones((len(uv), 1))], 1).astype(np.float32)


def bench_speed(fitter: KeypointFitter, n: int, rng: np.random.Generator) -> None:
    scene = sample_scene(fitter.body, CAM, n + 4, rng)
    cold_ms, warm_ms, cold_ev, warm_ev, follow = [], [], [], [], []
    # the same drags re-fitted by the first-order warm solver (what the drag path ran before), side by side
    grad = KeypointFitter(fitter.body, dataclasses.replace(fitter.config, warm_solver="gradient"))
    grad_ms, grad_ev, grad_follow, lm_loss, grad_loss = [], [], [], [], []
    wrist = J.index("coco17", "R_Wrist")
    fitter.estimate(None, [_person(_clean_kp(scene[0].joints2d))], camera=CAM)  # warm-up
    for sp in scene[:n]:
        kp = _clean_kp(sp.joints2d)
        e0 = fitter.evaluations
        t0 = time.perf_counter()
        res = fitter.estimate(None, [_person(kp)], camera=CAM)[0]
        cold_ms.append((time.perf_counter() - t0) * 1e3)
        cold_ev.append(fitter.evaluations - e0)
        kp2 = kp.copy()
        kp2[wrist, :2] += (24.0, 18.0)
        edited = np.zeros(17, bool)
        edited[wrist] = True  # as the app marks a dragged key-point
        dragged = dataclasses.replace(_person(kp2), edited=edited, source="user")
        e0 = fitter.evaluations
        t0 = time.perf_counter()
        res2 = fitter.estimate(None, [dragged], camera=CAM, previous=[res])[0]
        warm_ms.append((time.perf_counter() - t0) * 1e3)
        follow.append(float(np.linalg.norm(res2.keypoints2d[wrist] - kp2[wrist, :2])))
        warm_ev.append(fitter.evaluations - e0)
        e0 = grad.evaluations
        t0 = time.perf_counter()
        res3 = grad.estimate(None, [dragged], camera=CAM, previous=[res])[0]
        grad_ms.append((time.perf_counter() - t0) * 1e3)
        grad_ev.append(grad.evaluations - e0)
        grad_follow.append(float(np.linalg.norm(res3.keypoints2d[wrist] - kp2[wrist, :2])))
        lm_loss.append(res2.loss)
        grad_loss.append(res3.loss)
    _warm_breakdown(fitter, [(dataclasses.replace(_person(_clean_kp(sp.joints2d)), edited=np.eye(17, dtype=bool)[wrist],
                                                 source="user"), None) for sp in scene[:n]])
    frame = [_person(_clean_kp(sp.joints2d)) for sp in scene[n:n + 4]]
    t0 = time.perf_counter()
    fitter.estimate(None, frame, camera=CAM)
    frame_ms = (time.perf_counter() - t0) * 1e3 / len(frame)
    print(f"  cold fit, 1 person/call : median {np.median(cold_ms):7.1f} ms  (p90 {np.quantile(cold_ms, .9):.1f}; "
          f"{np.median(cold_ev):.0f} evaluations, {np.median(cold_ms) / np.median(cold_ev):.2f} ms each)")
    print(f"  warm re-fit (drag 30 px): median {np.median(warm_ms):7.1f} ms  (p90 {np.quantile(warm_ms, .9):.1f}; "
          f"{np.median(warm_ev):.0f} evaluations; the dragged wrist lands {np.median(follow):.1f} px from where it "
          f"was dropped, median, p90 {np.quantile(follow, .9):.1f})")
    print(f"  warm re-fit, first-order solver (before), same drags: median {np.median(grad_ms):7.1f} ms (p90 "
          f"{np.quantile(grad_ms, .9):.1f}; {np.median(grad_ev):.0f} evaluations; wrist {np.median(grad_follow):.1f} px); "
          f"Levenberg-Marquardt / first-order time ratio {np.median(np.array(warm_ms) / np.array(grad_ms)):.2f}, "
          f"final energy LM {np.median(lm_loss):.2f} vs {np.median(grad_loss):.2f}")
    print(f"  cold fit, 4-person frame: {frame_ms:7.1f} ms per person")


def _warm_breakdown(fitter: KeypointFitter, persons: list) -> None:
    """Where a warm re-fit's time goes (cProfile over repeated drags of each person; its overhead inflates
    the total, the shares are what to read): the body model's forward, the backward pass, the rest of the
    energy, the optimiser, and building the result (the final skinning of the mesh)."""
    import cProfile
    import pstats

    pairs = []
    for p, _ in persons:
        cold = fitter.estimate(None, [dataclasses.replace(p, edited=np.zeros(17, bool))], camera=CAM)[0]
        pairs.append((p, cold))
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    for p, prev in pairs:
        fitter.estimate(None, [p], camera=CAM, previous=[prev])
    prof.disable()
    wall = (time.perf_counter() - t0) * 1e3 / len(pairs)
    stats = pstats.Stats(prof).stats  # {(file, line, name): (cc, nc, tottime, cumtime, callers)}

    def cum(pred) -> float:
        return sum(v[3] for k, v in stats.items() if pred(k)) * 1e3 / len(pairs)

    # the body model inside the solver: _keypoints3d (the perturbed copies' forward) and the closed-form Jacobian
    body = cum(lambda k: (k[0].endswith("fitter.py") and k[2] == "_keypoints3d")
               or ("/body/" in k[0] and k[2] == "joints_jacobian"))
    backward = cum(lambda k: k[2] == "run_backward" or k[2] == "_engine_run_backward")
    energy = cum(lambda k: k[0].endswith("fitter.py") and k[2] in ("_energy", "_residuals",
                                                                          "_keypoints_linearised"))
    finish = cum(lambda k: k[0].endswith("fitter.py") and k[2] == "_finish")
    setup = cum(lambda k: k[0].endswith("fitter.py") and k[2] in ("_problem", "_depths"))
    print(f"  warm re-fit breakdown (profiled, {wall:.1f} ms per fit under the profiler): body forward and its "
          f"closed-form Jacobian (in the solver) "
          f"{body:.1f} | backward {backward:.1f} | rest of the energy / residuals {max(energy - body, 0):.1f} | "
          f"problem set-up {setup:.1f} | result (final skinning, mesh, quality) {finish:.1f} | solver and other "
          f"Python {max(wall - energy - backward - finish - setup, 0):.1f} ms")


def bench_accuracy(fitter: KeypointFitter, n: int, rng: np.random.Generator, noisy: bool) -> None:
    scene = sample_scene(fitter.body, CAM, n, rng)
    mp, pa, rin, rgt, occ, floor = [], [], [], [], [], []
    for sp in scene:
        kp = _clean_kp(sp.joints2d)
        vis = np.ones(17, bool)
        if noisy:
            box = Person.box_from_keypoints(kp, pad=1.0)
            area = float((box[2] - box[0]) * (box[3] - box[1]))
            kp = synthesize_pose(kp.astype(np.float64), area, None, rng).astype(np.float32)
            n_occ = int(round(rng.uniform(0.2, 0.4) * 17))
            vis[rng.choice(17, n_occ, replace=False)] = False
        occ.append(1 - vis.mean())
        res = fitter.estimate(None, [_person(kp, vis)], camera=CAM)[0]
        pred, gt = res.joints3d.astype(np.float64), sp.joints3d.astype(np.float64)
        pred_r = pred - pred[HIPS].mean(0)
        gt_r = gt - gt[HIPS].mean(0)
        mp.append(joint_errors(pred_r[None], gt_r[None]).mean())
        pa.append(pa_mpjpe(pred[None], gt[None])[0])
        rin.append(np.median(np.linalg.norm(res.keypoints2d[vis] - kp[vis, :2], axis=1)))
        rgt.append(np.median(np.linalg.norm(res.keypoints2d[vis] - sp.joints2d[vis], axis=1)))
        floor.append(np.median(np.linalg.norm(sp.joints2d[vis] - kp[vis, :2], axis=1)))  # GT itself vs input
    label = "PoseFix noise + occlusion" if noisy else "clean, all visible      "
    print(f"  {label}: MPJPE(hip-aligned) {np.median(mp):5.1f} mm (mean {np.mean(mp):5.1f}) | "
          f"PA-MPJPE {np.median(pa):5.1f} mm (mean {np.mean(pa):5.1f}) | re-projection of visible joints: "
          f"median {np.median(rin):4.2f} px vs input, {np.median(rgt):4.2f} px vs GT (GT vs input: {np.median(floor):4.2f} px) | occluded {np.mean(occ):.0%}")


def bench_bounds(body, n: int, rng: np.random.Generator) -> None:
    """Where the noisy-input error comes from (PA-MPJPE medians on the same persons and noise draws):
    each corruption alone, the fit with an oracle that drops the detector's misses / inversions, and the
    optimum of the fitting objective itself (a fit *started at the ground truth*, no pull toward it)."""
    fitter = KeypointFitter(body)
    gt_start = KeypointFitter(body, FitConfig(warm_iters=60, temporal_weight=0.0, lr_warm_factor=1.0))
    scene = sample_scene(body, CAM, n, rng)
    rows: dict[str, list[float]] = {k: [] for k in ("clean", "occluded only", "noise only", "noise + occlusion",
                                                    "  … oracle drops misses/inversions",
                                                    "  … started at the ground truth",
                                                    "  … both (oracle + ground-truth start)")}
    for sp in scene:
        kp = _clean_kp(sp.joints2d)
        box = Person.box_from_keypoints(kp, pad=1.0)
        area = float((box[2] - box[0]) * (box[3] - box[1]))
        noisy, outcome = synthesize_pose_with_outcomes(kp.astype(np.float64), area, None, rng)
        noisy = noisy.astype(np.float32)
        vis = np.ones(17, bool)
        vis[rng.choice(17, int(round(rng.uniform(0.2, 0.4) * 17)), replace=False)] = False
        good = vis & ~np.isin(outcome, (MISS, INVERSION))
        gt = MeshResult(vertices=np.zeros((0, 3), np.float32), faces=np.zeros((0, 3), np.int32),
                        joints3d=sp.joints3d, joints2d=sp.joints2d, joint_set="coco17", params=sp.params, camera=CAM)
        allv = np.ones(17, bool)
        for name, f, k, v, prev in zip(rows, (fitter,) * 5 + (gt_start,) * 2,
                                       (kp, kp, noisy, noisy, noisy, noisy, noisy),
                                       (allv, vis, allv, vis, good, vis, good), (None,) * 5 + ([gt],) * 2):
            res = f.estimate(None, [_person(k, v)], camera=CAM, previous=prev)[0]
            rows[name].append(pa_mpjpe(res.joints3d[None].astype(np.float64), sp.joints3d[None].astype(np.float64))[0])
    print("  where the error comes from (PA-MPJPE median / mean, mm):")
    for name, v in rows.items():
        print(f"    {name:40s} {np.median(v):5.1f} / {np.mean(v):5.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="synthetic-smpl,anny")
    ap.add_argument("--n", type=int, default=40, help="persons for the accuracy benchmark")
    ap.add_argument("--timing", type=int, default=15, help="persons for the speed benchmark")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bounds", type=int, default=0, metavar="N",
                    help="also break the noisy-input error down on N persons (oracle and ground-truth-start fits)")
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    print(f"torch {torch.__version__}, fitter threads {FitConfig().num_threads}, "
          f"load average {open('/proc/loadavg').read().split()[0] if __import__('os').path.exists('/proc/loadavg') else '?'}")
    from benchkit import cpu_reference

    print(cpu_reference())
    for name in args.models.split(","):
        body = load_body_model(name)
        fitter = KeypointFitter(body)
        print(f"[{name}] pose_dim {body.pose_dim}, betas {body.num_betas}")
        bench_speed(fitter, args.timing, np.random.default_rng(args.seed))
        bench_accuracy(fitter, args.n, np.random.default_rng(args.seed + 1), noisy=False)
        bench_accuracy(fitter, args.n, np.random.default_rng(args.seed + 2), noisy=True)
        if args.bounds:
            bench_bounds(body, args.bounds, np.random.default_rng(args.seed + 3))


if __name__ == "__main__":
    main()
