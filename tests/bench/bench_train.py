"""Training throughput of the DPMesh network: steps/s, samples/s and peak memory.

With a CUDA device: the released size (``sd15`` preset, a fresh network: no SD1.5 weights needed) at batch 16 in
bf16 on one GPU, then on 2 processes (``dpmesh train --num-processes 2``, DDP) when the machine has more than
one GPU. Without one it says so and prints CPU figures: the "micro" and "tiny" presets at batch 1 and 4, with
and without NKR, and micro on 2 processes (gloo) against 1 process with the same global batch.

Run: DPMESH_HOME=/tmp/dpmesh-bench .venv/bin/python tests/bench/bench_train.py [--steps 6] [--threads N]
     [--gpu-batch 16] [--gpu-steps 12]
Prints medians over the timed steps (the first 2 steps are warm-up). Not a test: no assertions.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch
import yaml

from dpmesh_core.body import load_body_model
from dpmesh_core.train.config import train_config_from_dict
from dpmesh_core.train.loop import train
from dpmesh_core.train.synthetic import generate_dataset


def _cfg(ann: Path, out: Path, model: dict, batch: int, steps: int, nkr: bool, device: str,
         precision: str = "fp32") -> dict:
    return {"output_dir": str(out), "batch_size": batch, "max_steps": steps, "log_every": 1, "checkpoint_every": 0,
            "device": device, "precision": precision, "data": {"train": [{"kind": "dpmesh", "path": str(ann)}]},
            "model": model, "loss": {"weighting": "fixed"}, "nkr": {"enabled": nkr}}


def run(ann: Path, out: Path, model: dict, batch: int, steps: int, nkr: bool, device: str,
        precision: str = "fp32") -> list[float]:
    cfg = train_config_from_dict(_cfg(ann, out, model, batch, steps, nkr, device, precision))
    times, t = [], None
    for ev in train(cfg):
        if ev["event"] == "start":
            t = time.perf_counter()
        elif ev["event"] == "step":
            now = time.perf_counter()
            times.append(now - t)
            t = now
    return times[2:] if len(times) > 2 else times


def run_processes(ann: Path, out: Path, model: dict, batch: int, steps: int, n: int, device: str,
                  precision: str = "fp32") -> list[float]:
    """Seconds per step of ``dpmesh train --num-processes n`` (from the run's events.jsonl)."""
    from dpmesh_core.cli import main

    cfg = out.with_suffix(".yaml")
    cfg.write_text(yaml.safe_dump(_cfg(ann, out, model, batch, steps, False, device, precision)))
    mp = {"fp32": "no"}.get(precision, precision)
    assert main(["train", str(cfg), "--num-processes", str(n), "--mixed-precision", mp]) == 0
    evs = [json.loads(x) for x in (out / "events.jsonl").read_text().splitlines()]
    per = [e["global_batch"] for e in evs if e["event"] == "start"][0]
    rates = [e["samples_per_s"] for e in evs if e["event"] == "step"]
    rates = rates[2:] if len(rates) > 2 else rates
    return [per / r for r in rates]


def row(name: str, extra: str, batch: int, ts: list[float], mem: str = "") -> None:
    med = statistics.median(ts)
    print(f"{name:<10} {extra:<10} {batch:>5} {med:>8.3f} {1 / med:>8.2f} {batch / med:>10.2f} {mem:>12}", flush=True)


def gpu(d: Path, args) -> None:
    n_gpu = torch.cuda.device_count()
    print(f"CUDA: {n_gpu} x {torch.cuda.get_device_name(0)}")
    ann = generate_dataset(d / "gpu_data", max(args.gpu_batch * 2, 32), load_body_model("synthetic-smpl"), seed=0,
                           max_persons=1)
    header()
    torch.cuda.reset_peak_memory_stats()
    ts = run(ann, d / "gpu1", {"preset": "sd15"}, args.gpu_batch, args.gpu_steps, False, "cuda", "bf16")
    row("sd15", "1 GPU bf16", args.gpu_batch, ts, f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
    if n_gpu > 1:
        ts = run_processes(ann, d / "gpu2", {"preset": "sd15"}, args.gpu_batch, args.gpu_steps, 2, "auto", "bf16")
        row("sd15", "2 GPU bf16", 2 * args.gpu_batch, ts, "(per GPU: see 1 GPU)")
    else:
        print("one GPU: the 2-process figure needs a machine with 2 GPUs (not measured)")


def header() -> None:
    print(f"{'model':<10} {'setting':<10} {'batch':>5} {'s/step':>8} {'steps/s':>8} {'samples/s':>10} {'peak mem':>12}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    ap.add_argument("--batches", default="1,4")
    ap.add_argument("--gpu-batch", type=int, default=16)
    ap.add_argument("--gpu-steps", type=int, default=12)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        if torch.cuda.is_available():
            gpu(d, args)
            return
        print("no CUDA device here: the sd15 / batch 16 / bf16 figures were NOT measured; CPU figures for the "
              "micro and tiny presets follow")
        t0 = time.perf_counter()
        ann = generate_dataset(d / "data", 8, load_body_model("synthetic-smpl"), seed=0, max_persons=1)
        print(f"synthetic data: 8 images in {time.perf_counter() - t0:.1f} s "
              f"({(time.perf_counter() - t0) / 8:.2f} s/image)")
        print(f"device=cpu threads={torch.get_num_threads()}")
        header()
        for name, model in (("micro", {"preset": "micro"}), ("tiny", {"preset": "tiny"})):
            for nkr in (False, True):
                for b in (int(x) for x in args.batches.split(",")):
                    ts = run(ann, d / f"run_{name}_{b}_{nkr}", model, b, args.steps, nkr, "cpu")
                    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
                    row(name, f"nkr={nkr}", b, ts, f"{rss:.0f} MiB rss")
        # distributed overhead on this CPU: the same global batch of 4 in 1 and in 2 processes
        ts1 = run(ann, d / "one", {"preset": "micro"}, 4, args.steps, False, "cpu")
        ts2 = run_processes(ann, d / "two", {"preset": "micro"}, 2, args.steps, 2, "cpu")
        row("micro", "1 proc", 4, ts1)
        row("micro", "2 procs", 4, ts2)
        print(f"2 processes / 1 process, time per step of the same global batch: "
              f"{statistics.median(ts2) / statistics.median(ts1):.2f}")
        print("(peak memory: the process's maximum resident set so far; CPU processes share the machine's cores)")


if __name__ == "__main__":
    main()
