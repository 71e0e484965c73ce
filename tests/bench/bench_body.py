"""Body-model speed: median milliseconds per call at batch 1 on CPU.

    DPMESH_HOME=.dpmesh-home .venv/bin/python tests/bench/bench_body.py [--threads N] [--repeat R]

Prints, for Anny and the (synthetic) SMPL: joints-only forward (COCO-17), joints-only forward+backward
(w.r.t. pose, the fitter's inner loop; betas fixed), the same with betas optimised too, and the full mesh
forward and forward+backward; and Anny's first-build time when its cache is absent.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def _median_ms(fn, repeat: int, warmup: int = 5) -> float:
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return 1000 * statistics.median(ts)


def bench(model, repeat: int) -> dict[str, float]:
    g = torch.Generator().manual_seed(0)
    go = torch.randn(1, 3, generator=g) * 0.3
    pose = torch.randn(1, model.pose_dim, generator=g) * 0.2
    betas = model.mean_betas(1)
    tr = torch.tensor([[0.0, 0.0, 3.0]])

    def fwd():
        with torch.no_grad():
            model(go, pose, betas, tr, joint_sets=("coco17",))

    def fwd_bwd(ret_v=False, shape=False):
        p = pose.clone().requires_grad_()
        b = betas.clone().requires_grad_(shape)
        out = model(go, p, b, tr, joint_sets=("coco17",), return_vertices=ret_v)
        loss = out.joints["coco17"].square().sum()
        if ret_v:
            loss = loss + out.vertices.square().mean()
        loss.backward()

    def full():
        with torch.no_grad():
            model(go, pose, betas, tr, joint_sets=("coco17",), return_vertices=True)

    return {
        "joints-only forward": _median_ms(fwd, repeat),
        "joints-only fwd+bwd (pose)": _median_ms(fwd_bwd, repeat),
        "joints-only fwd+bwd (pose+betas)": _median_ms(lambda: fwd_bwd(shape=True), repeat),
        "full mesh forward": _median_ms(full, max(5, repeat // 4)),
        "full mesh fwd+bwd": _median_ms(lambda: fwd_bwd(ret_v=True), max(5, repeat // 4)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    ap.add_argument("--repeat", type=int, default=50)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from dpmesh_core import paths
    from dpmesh_core.body import load_body_model
    from dpmesh_core.body.anny_model import _cache_ready

    print(f"torch {torch.__version__}, {args.threads} thread(s), batch 1, median ms of {args.repeat}")
    first = not _cache_ready(paths.anny_cache_dir())
    t0 = time.perf_counter()
    anny = load_body_model("anny")
    t_anny = time.perf_counter() - t0
    print(f"Anny {'first build' if first else 'load (cache present)'}: {t_anny:.1f} s")
    t0 = time.perf_counter()
    smpl = load_body_model("synthetic-smpl")
    print(f"synthetic SMPL build: {time.perf_counter() - t0:.1f} s")
    for name, model in (("anny", anny), ("smpl", smpl)):
        for k, v in bench(model, args.repeat).items():
            print(f"{name:5s} {k:34s} {v:8.2f} ms")


if __name__ == "__main__":
    main()
