"""Training throughput of the DPMesh network on CPU: steps/s and samples/s for the "tiny" preset (and the
test-size "micro" network), batch sizes 1 and 4 by default, synthetic data, fixed-weight losses, no NKR and with NKR.

Run: DPMESH_HOME=/tmp/dpmesh-bench .venv/bin/python tests/bench/bench_train.py [--steps 6] [--threads N]
Prints medians over the timed steps (the first 2 steps are warm-up). Not a test: no assertions.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from dpmesh_core.body import load_body_model
from dpmesh_core.train.config import train_config_from_dict
from dpmesh_core.train.loop import train
from dpmesh_core.train.synthetic import generate_dataset


def run(ann: Path, out: Path, model: dict, batch: int, steps: int, nkr: bool, device: str) -> list[float]:
    cfg = train_config_from_dict({
        "output_dir": str(out), "batch_size": batch, "max_steps": steps, "log_every": 1, "checkpoint_every": 0,
        "device": device, "data": {"train": [{"kind": "dpmesh", "path": str(ann)}]}, "model": model,
        "loss": {"weighting": "fixed"}, "nkr": {"enabled": nkr}})
    times, t = [], None
    for ev in train(cfg):
        if ev["event"] == "start":
            t = time.perf_counter()
        elif ev["event"] == "step":
            now = time.perf_counter()
            times.append(now - t)
            t = now
    return times[2:] if len(times) > 2 else times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batches", default="1,4")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        t0 = time.perf_counter()
        ann = generate_dataset(d / "data", 8, load_body_model("synthetic-smpl"), seed=0, max_persons=1)
        print(f"synthetic data: 8 images in {time.perf_counter() - t0:.1f} s "
              f"({(time.perf_counter() - t0) / 8:.2f} s/image)")
        print(f"device={args.device} threads={torch.get_num_threads()}")
        print(f"{'model':<6} {'nkr':<4} {'batch':>5} {'s/step':>8} {'steps/s':>8} {'samples/s':>10}")
        for name, model in (("micro", {"preset": "micro"}), ("tiny", {"preset": "tiny"})):
            for nkr in (False, True):
                for b in (int(x) for x in args.batches.split(",")):
                    ts = run(ann, d / f"run_{name}_{b}_{nkr}", model, b, args.steps, nkr, args.device)
                    med = statistics.median(ts)
                    print(f"{name:<6} {str(nkr):<4} {b:>5} {med:>8.3f} {1 / med:>8.2f} {b / med:>10.2f}", flush=True)


if __name__ == "__main__":
    main()
