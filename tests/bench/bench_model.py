"""Benchmark the whole DPMesh network (backbone + fusion + regressor + VPoser + SMPL) at the full
``sd15`` size with RANDOM weights (nothing is downloaded), on CPU by default.

For fp32 and bf16, batch 1 and 4, prints the median ms per person of
  * a full run (VAE encode + ControlNet + U-Net + head + body model),
  * a re-run with the cached VAE latent (what a key-point edit costs), and
  * the bare diffusers components the network wraps (VAE encoder + ControlNet + U-Net at the same size, no
    LoRA, recorder or head), measured interleaved with the full run, and the ratio full / bare,
and the peak RSS of each dtype's process (each dtype runs in its own subprocess, the network built
directly in that dtype). Targets on 2 CPU cores: full run ≤ 1.5 s fp32, re-run ≤ 0.8 s bf16, peak ≤ 6 GB.

    DPMESH_HOME=.dpmesh-home .venv/bin/python tests/bench/bench_model.py [--repeats 3] [--batches 1,4]
        [--dtypes fp32,bf16] [--device cpu] [--threads N]
Needs ~6 GB RAM and several minutes on 2 cores: run it once, not in a loop.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time


def _peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def _median_s(fn, repeats: int, sync) -> float:
    fn()  # warm-up
    sync()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def run_one(dtype_name: str, batches: list[int], repeats: int, device: str, threads: int | None,
            preset_name: str = "sd15", merge_lora: bool = True) -> dict:
    import torch

    from dpmesh_core.body import load_body_model
    from dpmesh_core.model.config import preset
    from dpmesh_core.model.network import DPMeshNetwork

    if threads:
        torch.set_num_threads(threads)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype_name]
    torch.manual_seed(0)
    t0 = time.perf_counter()
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # build directly in the target dtype: no fp32 copy in memory
    try:
        net = DPMeshNetwork(preset(preset_name)).eval()
        # the bare diffusers components the network wraps, at the same size (no LoRA adapter, no attention
        # recorder, no feature taps, no head): what the network costs on top of them
        from dpmesh_core.model.backbone import build_controlnet, build_unet, build_vae_encoder

        bcfg = net.config.backbone
        bare_vae, bare_cn, bare_unet = build_vae_encoder(bcfg).eval(), build_controlnet(bcfg).eval(), \
            build_unet(bcfg).eval()
    finally:
        torch.set_default_dtype(old)
    for m in (bare_vae, bare_cn, bare_unet):
        m.to(device=device, dtype=dtype)
    if merge_lora:  # as DPMeshPredictor runs it (merge_lora=True): LoRA folded into the U-Net weights
        net.backbone.merge_lora()
    net.to(device=device, dtype=dtype)
    body = load_body_model("synthetic-smpl", device=device)
    build_s = time.perf_counter() - t0
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    out = {"dtype": dtype_name, "build_s": build_s, "threads": torch.get_num_threads(), "rows": []}
    g = torch.Generator().manual_seed(1)
    for b in batches:
        img = torch.rand(b, 3, 256, 256, generator=g).to(device)
        joints = (40 + torch.rand(b, 30, 2, generator=g) * 176).to(device)
        mask = (torch.rand(b, 30, generator=g) > 0.35).to(device)
        focal = torch.full((b,), 1000.0, device=device)
        with torch.no_grad():
            lat = net.encode(img.to(dtype))

            def full(img=img, joints=joints, mask=mask, focal=focal):
                net(img.to(dtype), joints, mask, focal, body)

            def rerun(joints=joints, mask=mask, focal=focal, lat=lat):
                net(None, joints, mask, focal, body, latent=lat)

            heat = torch.rand(b, bcfg.num_joints, lat.shape[-2], lat.shape[-1], generator=g).to(device, dtype)
            ctx = torch.randn(b, bcfg.num_joints, bcfg.cross_attention_dim, generator=g).to(device, dtype)
            t1 = torch.ones(b, dtype=torch.long, device=device)

            def bare(img=img, heat=heat, ctx=ctx, t1=t1):
                h = bare_vae.quant_conv(bare_vae.encoder(img.to(dtype)))
                z = h[:, : bcfg.latent_channels]
                down, mid = bare_cn(torch.cat([z, heat], 1), t1, encoder_hidden_states=ctx, controlnet_cond=z,
                                    return_dict=False)
                bare_unet(z, t1, encoder_hidden_states=ctx, down_block_additional_residuals=down,
                          mid_block_additional_residual=mid, return_dict=False)

            # side by side, interleaved: network, bare, network, bare ... (a loaded machine hits both alike)
            t_full, t_bare = [], []
            for _ in range(repeats):
                t_full.append(_median_s(full, 1, sync))
                t_bare.append(_median_s(bare, 1, sync))
            t_full, t_bare = statistics.median(t_full), statistics.median(t_bare)
            t_re = _median_s(rerun, repeats, sync)
        out["rows"].append({"batch": b, "full_ms_per_person": 1000 * t_full / b,
                            "rerun_ms_per_person": 1000 * t_re / b, "bare_ms_per_person": 1000 * t_bare / b,
                            "ratio": t_full / t_bare})
    out["peak_rss_gb"] = _peak_gb()
    if device.startswith("cuda"):
        out["peak_cuda_gb"] = torch.cuda.max_memory_allocated() / 1024**3
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batches", default="1,4")
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--preset", default="sd15", help="network size (sd15 released; tiny for a quick look)")
    ap.add_argument("--lora", default="merged", choices=["merged", "peft"],
                    help="merged (as the predictor runs it, default) or the unmerged peft adapter (training)")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one dtype, print JSON
    a = ap.parse_args()
    batches = [int(x) for x in a.batches.split(",")]
    if a.one:
        print("RESULT " + json.dumps(run_one(a.one, batches, a.repeats, a.device, a.threads or None, a.preset,
                                             a.lora == "merged")))
        return
    print(f"DPMesh {a.preset} network (LoRA {a.lora}), random weights, device {a.device}; median of {a.repeats} "
          "after 1 warm-up")
    print(f"{'dtype':6} {'batch':>5} {'full ms/person':>15} {'re-run ms/person':>17} {'bare diffusers':>15} "
          f"{'full/bare':>9}")
    for dname in a.dtypes.split(","):
        cmd = [sys.executable, __file__, "--one", dname, "--batches", a.batches, "--repeats", str(a.repeats),
               "--device", a.device, "--threads", str(a.threads), "--preset", a.preset, "--lora", a.lora]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if proc.returncode or line is None:
            print(f"{dname}: failed (exit {proc.returncode})\n{proc.stderr[-2000:]}")
            continue
        r = json.loads(line[len("RESULT "):])
        for row in r["rows"]:
            print(f"{dname:6} {row['batch']:>5} {row['full_ms_per_person']:>15.1f} {row['rerun_ms_per_person']:>17.1f} "
                  f"{row['bare_ms_per_person']:>15.1f} {row['ratio']:>9.3f}")
        extra = f", peak CUDA {r['peak_cuda_gb']:.2f} GB" if "peak_cuda_gb" in r else ""
        print(f"{dname:6} build {r['build_s']:.1f} s, threads {r['threads']}, peak RSS {r['peak_rss_gb']:.2f} GB{extra}")


if __name__ == "__main__":
    main()
