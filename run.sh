#!/usr/bin/env bash
# DPMesh Studio: install what is missing, then run.
#   ./run.sh                     open the desktop app on the demo scene
#   ./run.sh photo.jpg|video     open the app on a file
#   ./run.sh predict|doctor|convert|train|eval ...   run the headless `dpmesh` command instead
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/install.sh
# torch's OpenMP threads spin while waiting; on a shared or busy machine that slows everything ~10x.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
case "${1:-}" in
  predict|doctor|convert|train|eval|bench|demo) exec .venv/bin/dpmesh "$@" ;;
esac
if [ -z "${DISPLAY:-}" ] && [ -z "${WAYLAND_DISPLAY:-}" ] && [ "${QT_QPA_PLATFORM:-}" = "" ]; then
  echo "No display found: starting the app on a virtual X screen (xvfb-run)." >&2
  exec xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python -m app.main "$@"
fi
exec .venv/bin/python -m app.main "$@"
