#!/usr/bin/env bash
# GPU checks of the DPMesh network (issue: release parity). Run on a machine with a CUDA GPU, from the repo root:
#   bash scripts/gpu_check.sh            (assumes ./scripts/install.sh has been run; ~2-4 minutes on one GPU)
# 1. parity against shared/reference/dpmesh_parity on CUDA: fp32 must be <= 1e-4 relative; bf16, fp16 and the
#    release's fp16 autocast are reported;
# 2. the sd15-size network (random weights): ms per person at batch 1 and 8, full run (VAE + ControlNet + U-Net
#    + head + SMPL) and cached re-run (what a key-point edit costs), the bare diffusers components side by side,
#    peak CUDA memory, in fp32 / bf16 / fp16.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
[ -x "$PY" ] || PY=python3
export DPMESH_HOME="${DPMESH_HOME:-$PWD/.dpmesh-home}"
"$PY" -c "import torch,sys; print('CUDA', torch.cuda.is_available(), torch.version.cuda, torch.cuda.get_device_name(0) if torch.cuda.is_available() else '-'); sys.exit(0 if torch.cuda.is_available() else 2)" || { echo "no CUDA device"; exit 2; }
rc=0
echo "== parity on CUDA"
"$PY" tests/bench/gpu_parity.py --device cuda || rc=1
echo "== sd15 network latency and memory on CUDA"
"$PY" tests/bench/bench_model.py --device cuda --dtypes fp32,bf16,fp16 --batches 1,8 --repeats 5 || rc=1
exit $rc
