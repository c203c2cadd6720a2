#!/usr/bin/env bash
# One entry point for a fresh clone:  bash scripts/dev.sh demo   |   bash scripts/dev.sh test [pytest args]
# Creates .venv/ at the repository root (reused when already complete), installs the CPU build of torch
# first when no torch is present, then this package with the extras the task needs.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV="$ROOT/.venv"
TASK=${1:-demo}
shift || true

case "$TASK" in
  demo) EXTRAS="" ;;
  test) EXTRAS="dev,llm,diffusion,napari" ;;
  setup) EXTRAS="dev,llm,diffusion,napari" ;;
  *) echo "usage: bash scripts/dev.sh demo|test|setup [args]" >&2; exit 64 ;;
esac

pick_python() {
  if [ -n "${EBSDTK_PYTHON:-}" ]; then echo "$EBSDTK_PYTHON"; return; fi
  for p in python3.11 python3.12 python3.10 python3; do
    if command -v "$p" >/dev/null 2>&1 && "$p" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
      echo "$p"; return
    fi
  done
  echo "error: need Python >= 3.10 (3.11 recommended)" >&2; exit 1
}

stamp_for() {  # what makes an install "complete": pyproject + extras
  { cat "$ROOT/pyproject.toml"; echo "extras=$1"; } | sha256sum | cut -c1-16
}

ensure_venv() {
  local extras=$1 stamp
  stamp=$(stamp_for "$extras")
  if [ -x "$VENV/bin/python" ] && [ -f "$VENV/.ebsdtk-$stamp" ] && "$VENV/bin/python" -c 'import torch, ebsd' 2>/dev/null; then
    return  # complete: reuse
  fi
  if [ ! -x "$VENV/bin/python" ]; then
    echo "== creating $VENV"
    "$(pick_python)" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
  fi
  local pip=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)
  if ! "$VENV/bin/python" -c 'import torch' 2>/dev/null; then
    echo "== installing the CPU build of torch"
    "${pip[@]}" torch==2.13.0 \
      || "${pip[@]}" "torch>=2.4" --index-url https://download.pytorch.org/whl/cpu \
      || "${pip[@]}" "torch>=2.4"
  fi
  echo "== installing ebsd-tensor-toolkit${extras:+[$extras]}"
  "${pip[@]}" -e ".${extras:+[$extras]}"
  rm -f "$VENV"/.ebsdtk-*
  touch "$VENV/.ebsdtk-$stamp"
  if [ "$extras" != "" ]; then touch "$VENV/.ebsdtk-$(stamp_for "")"; fi  # a superset serves the demo too
}

ensure_display() {  # napari tests need a real X server (Xvfb); install it only where missing
  if [ -n "${DISPLAY:-}" ] || command -v xvfb-run >/dev/null 2>&1; then return; fi
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "== installing Xvfb and the Qt runtime libraries (for the napari tests)"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq xvfb xauth libxkbcommon-x11-0 libxcb-icccm4 \
      libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-xinerama0 libxcb-xfixes0 \
      libxcb-shape0 libxcb-cursor0 libdbus-1-3 libfontconfig1 libgl1 libegl1 >/dev/null
  else
    echo "note: no display and cannot install Xvfb (not root / no apt-get): napari tests will be skipped" >&2
  fi
}

ensure_venv "$EXTRAS"
PY="$VENV/bin/python"

case "$TASK" in
  setup) echo "== ready: $VENV" ;;
  demo) exec "$PY" -m ebsd demo "$@" ;;
  test)
    ensure_display
    export PYTHONHASHSEED=0 MPLBACKEND=Agg
    if [ -z "${DISPLAY:-}" ] && command -v xvfb-run >/dev/null 2>&1; then
      exec xvfb-run -a -s "-screen 0 1600x1000x24" "$PY" -m pytest "$@"
    fi
    exec "$PY" -m pytest "$@"
    ;;
esac
