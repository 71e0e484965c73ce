"""Benchmark the DPMesh backbone stages at the full sd15 size with RANDOM weights (nothing is downloaded).

Prints median ms per stage (VAE encode, ControlNet + U-Net with the attention recorder), fp32 / bf16,
batch 1 and 4, with and without channels_last, and the peak RSS. Needs ~6 GB RAM and a few minutes on
2 cores. Run:  .venv/bin/python tests/bench/bench_model_backbone.py [--repeats 3] [--batches 1,4]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import torch

from dpmesh_core.model.backbone import DPMeshBackbone
from dpmesh_core.model.conditions import make_heatmaps
from dpmesh_core.model.config import preset


def _peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def _median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return 1000 * statistics.median(ts)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batches", default="1,4")
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--channels-last", default="0")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    cfg = preset("sd15").backbone
    bb = DPMeshBackbone(cfg).eval()
    print(f"build sd15 backbone (random): {time.perf_counter() - t0:.1f} s, peak RSS {_peak_gb():.2f} GB, "
          f"threads {torch.get_num_threads()}")
    for dname in a.dtypes.split(","):
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dname]
        bb.to(dtype)
        for cl in (int(x) for x in a.channels_last.split(",")):
            bb.to(memory_format=torch.channels_last if cl else torch.contiguous_format)
            for b in (int(x) for x in a.batches.split(",")):
                img = torch.rand(b, 3, 256, 256)
                j = torch.rand(b, 30, 2) * 32
                heat = make_heatmaps(j, torch.ones(b, 30, dtype=torch.bool))
                ctx = torch.randn(b, 30, cfg.cross_attention_dim)
                if cl:
                    img = img.contiguous(memory_format=torch.channels_last)
                with torch.inference_mode():
                    z = bb.encode(img)
                    enc = _median_ms(lambda img=img: bb.encode(img), a.repeats)
                    run = _median_ms(lambda z=z, h=heat, c=ctx: bb(z, h, c), a.repeats)
                print(f"{dname} channels_last={cl} batch {b}: VAE encode {enc / b:7.0f} ms/person, "
                      f"ControlNet+U-Net {run / b:7.0f} ms/person, full {(enc + run) / b:7.0f} ms/person, "
                      f"peak RSS {_peak_gb():.2f} GB", flush=True)


if __name__ == "__main__":
    main()
