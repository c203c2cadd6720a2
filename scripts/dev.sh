#!/usr/bin/env bash
# One entry point for a fresh clone:
#   bash scripts/dev.sh demo [--out DIR]     set up .venv/, run the demo on bundled sample data; its output goes
#                                            to DIR (default: ./demo_output under the current directory)
#   bash scripts/dev.sh test [pytest args]   set up .venv/ with the test extras, run the test suite
#   bash scripts/dev.sh test --latest [...]  the same in .venv-latest/ with the newest releases (no lock): drift check
#   bash scripts/dev.sh setup [--latest]     set up only
#   bash scripts/dev.sh lock                 regenerate requirements/lock-py3XX.txt from a clean newest install
#   bash scripts/dev.sh mutants [MODULE]     mutation testing (scripts/mutants.py) of the core modules, each against
#                                            its relevant tests only; slow, not part of CI; MUTANTS_MAX=N samples N
#
# .venv/ installs through the committed lock of tested versions (requirements/lock-py311.txt for Python 3.11
# on Linux x86-64) as a pip constraint, so a fresh machine gets what CI tested. The venv is reused while its
# stamp (pyproject.toml + lock + extras) matches. torch comes first, at the lock's version: here that is the
# CPU build on local disk; elsewhere pip's default build of that version.
set -euo pipefail
CALLER_PWD=$(pwd)   # where the user ran us: the demo writes there, never into the repository by default
cd "$(dirname "$0")/.."
ROOT=$(pwd)
TASK=${1:-demo}
shift || true
LATEST=0
ARGS=()
for a in "$@"; do  # --latest may stand anywhere; the rest goes to pytest / the demo
  if [ "$a" = "--latest" ]; then LATEST=1; else ARGS+=("$a"); fi
done
ALL_EXTRAS="dev,llm,diffusion,napari"
TORCH_CPU=2.13.0   # torch release installed first when no lock applies (a CPU build of it lies on disk here)

case "$TASK" in
  demo) EXTRAS="" ;;
  test|setup|lock|mutants) EXTRAS="$ALL_EXTRAS" ;;
  *) echo "usage: bash scripts/dev.sh demo|test|setup [--latest] [args] | lock | mutants [MODULE]" >&2; exit 64 ;;
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

pytag() { "$1" -c 'import sys; print(f"py{sys.version_info[0]}{sys.version_info[1]}")' 2>/dev/null; }

PYTHON=$(pick_python)
PYTAG=$(pytag "$PYTHON")
LOCK="$ROOT/requirements/lock-$PYTAG.txt"

lock_applies() {  # the lock was made on Linux x86-64 for one Python minor version
  [ -f "$LOCK" ] && [ "$(uname -s)-$(uname -m)" = "Linux-x86_64" ]
}

stamp_for() {  # what makes an install "complete": pyproject + lock (when used) + extras + Python version
  { cat "$ROOT/pyproject.toml"; if [ "$2" = "locked" ] && lock_applies; then cat "$LOCK"; fi
    echo "extras=$1 mode=$2 python=$PYTAG"; } | sha256sum | cut -c1-16
}

norm() { tr 'A-Z_.' 'a-z--'; }  # package names as pip compares them

sync_to_lock() {  # uninstall what an older set-up left behind and the lock does not name
  local venv=$1 stale
  stale=$(comm -23 <("$venv/bin/python" -m pip freeze --exclude-editable --disable-pip-version-check 2>/dev/null \
                       | grep -v '^#' | sed -E 's/[ =@<>!~;].*//' | norm | sort -u) \
                   <(grep -v '^#' "$LOCK" | sed -E 's/[ =@<>!~;].*//' | norm | sort -u) \
          | grep -vxE 'pip|setuptools|wheel' || true)
  if [ -n "$stale" ]; then
    echo "== removing packages the lock does not name: $(echo $stale)"
    "$venv/bin/python" -m pip uninstall -y -q $stale
  fi
}

PIP_Q=(-q --disable-pip-version-check)

# ensure_venv DIR EXTRAS MODE   (MODE: locked = through the lock; latest = newest releases, upgraded every run)
ensure_venv() {
  local venv=$1 extras=$2 mode=$3 stamp
  stamp=$(stamp_for "$extras" "$mode")
  if [ "$mode" = "locked" ] && [ -x "$venv/bin/python" ] && [ -f "$venv/.ebsdtk-$stamp" ] \
      && "$venv/bin/python" -c 'import torch, ebsd' 2>/dev/null; then
    return  # complete: reuse
  fi
  if [ -x "$venv/bin/python" ] && [ "$(pytag "$venv/bin/python")" != "$PYTAG" ]; then
    echo "== $venv was made with another Python: rebuilding it with $("$PYTHON" --version)"
    rm -rf "$venv"
  fi
  if [ ! -x "$venv/bin/python" ]; then
    echo "== creating $venv ($("$PYTHON" --version))"
    "$PYTHON" -m venv "$venv"
    "$venv/bin/python" -m pip install "${PIP_Q[@]}" --upgrade pip
  fi
  local pip=("$venv/bin/python" -m pip install "${PIP_Q[@]}") cons=()
  if [ "$mode" = "locked" ]; then
    if lock_applies; then
      cons=(-c "$LOCK")
      echo "== installing through the lock ${LOCK#"$ROOT"/}"
    else
      echo "note: requirements/ has no lock for $PYTAG on $(uname -s)-$(uname -m) (locks are made on Linux" \
        "x86-64 for one Python version each): resolving the newest releases the ranges allow" >&2
    fi
  fi
  local torch_req="torch==$TORCH_CPU"  # without a lock: the release whose CPU build we test with
  if lock_applies; then torch_req=$(grep -i '^torch==' "$LOCK" || echo "torch==$TORCH_CPU"); fi
  local have_torch
  have_torch=$("$venv/bin/python" -c 'import torch; print("torch==" + torch.__version__.split("+")[0])' 2>/dev/null || true)
  # no torch yet, or (through the lock) another release than the lock's: torch first, so that pip takes the
  # build lying on disk rather than resolving it with everything else
  if [ -z "$have_torch" ] || { [ ${#cons[@]} -gt 0 ] && [ "$have_torch" != "$torch_req" ]; }; then
    echo "== installing torch first ($torch_req; the CPU build where it lies on disk)"
    "${pip[@]}" "$torch_req" \
      || "${pip[@]}" "$torch_req" --index-url https://download.pytorch.org/whl/cpu \
      || "${pip[@]}" "torch>=2.4"
  fi
  local how=$mode
  if [ "$mode" = "locked" ] && [ ${#cons[@]} -eq 0 ]; then how="no lock"; fi
  echo "== installing ebsd-tensor-toolkit${extras:+[$extras]} ($how)"
  if [ "$mode" = "latest" ]; then
    # newest releases the ranges allow, re-checked on every run; torch stays at the installed build (the
    # newest torch on PyPI is a multi-GB CUDA build: its drift is checked on the GPU machine instead)
    local keep_torch
    keep_torch=$(mktemp)
    "$venv/bin/python" -c 'import torch; print("torch==" + torch.__version__)' > "$keep_torch" 2>/dev/null
    "${pip[@]}" --upgrade --upgrade-strategy eager -c "$keep_torch" -e ".${extras:+[$extras]}"
    rm -f "$keep_torch"
  else
    "${pip[@]}" ${cons[@]+"${cons[@]}"} -e ".${extras:+[$extras]}"
    if [ ${#cons[@]} -gt 0 ]; then sync_to_lock "$venv"; fi
  fi
  rm -f "$venv"/.ebsdtk-*
  touch "$venv/.ebsdtk-$stamp"
  if [ "$extras" != "" ]; then touch "$venv/.ebsdtk-$(stamp_for "" "$mode")"; fi  # a superset serves the demo too
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

write_lock() {  # a clean venv with the newest releases, frozen; torch's local label (+cpu) dropped
  local tmp="$ROOT/.venv-lock"
  rm -rf "$tmp"
  ensure_venv "$tmp" "$ALL_EXTRAS" latest
  mkdir -p "$ROOT/requirements"
  {
    echo "# Exact versions the test suite passed with: $PYTAG, $(uname -s)-$(uname -m), extras [$ALL_EXTRAS]."
    echo "# Used as a pip constraint by scripts/dev.sh. Regenerate: bash scripts/dev.sh lock (then run"
    echo "# bash scripts/dev.sh test, and commit only when it passes)."
    "$tmp/bin/python" -m pip freeze --exclude-editable --disable-pip-version-check | sed -E 's/^(torch==[^+]+)\+.*/\1/'
  } > "$LOCK.tmp"
  mv "$LOCK.tmp" "$LOCK"
  rm -rf "$tmp"
  echo "== wrote ${LOCK#"$ROOT"/} ($(grep -vc '^#' "$LOCK") packages)"
}

if [ "$TASK" = "lock" ]; then write_lock; exit 0; fi

if [ "$LATEST" = 1 ]; then
  VENV="$ROOT/.venv-latest"; ensure_venv "$VENV" "$EXTRAS" latest
else
  VENV="$ROOT/.venv"; ensure_venv "$VENV" "$EXTRAS" locked
fi
PY="$VENV/bin/python"

case "$TASK" in
  setup) echo "== ready: $VENV"; "$PY" -m pip list --disable-pip-version-check 2>/dev/null \
           | grep -iE '^(torch|transformers|diffusers|kernels|numpy|napari|orix) ' || true ;;
  demo)
    cd "$CALLER_PWD"  # a relative --out is the user's, relative to where they ran the script
    OUT_GIVEN=0
    for a in ${ARGS[@]+"${ARGS[@]}"}; do case "$a" in --out|--out=*) OUT_GIVEN=1 ;; esac; done
    if [ "$OUT_GIVEN" = 0 ]; then ARGS+=(--out "$CALLER_PWD/demo_output"); fi
    echo "== demo output goes to $(for i in "${!ARGS[@]}"; do case "${ARGS[$i]}" in
      --out) d=${ARGS[$((i + 1))]:-}; [ "${d#/}" = "$d" ] && d="$CALLER_PWD/$d"; echo "$d" ;;
      --out=*) d=${ARGS[$i]#--out=}; [ "${d#/}" = "$d" ] && d="$CALLER_PWD/$d"; echo "$d" ;; esac; done | head -1)"
    exec "$PY" -m ebsd demo "${ARGS[@]}" ;;
  test)
    ensure_display
    export PYTHONHASHSEED=0 MPLBACKEND=Agg
    if [ "$LATEST" = 1 ]; then
      echo "== newest releases in use:"; "$PY" -m pip list --disable-pip-version-check 2>/dev/null \
        | grep -iE '^(torch|transformers|diffusers|kernels|huggingface.hub|accelerate|numpy|scipy|napari|orix|dask|triton) ' || true
    fi
    if [ -z "${DISPLAY:-}" ] && command -v xvfb-run >/dev/null 2>&1; then
      exec xvfb-run -a -s "-screen 0 1600x1000x24" "$PY" -m pytest ${ARGS[@]+"${ARGS[@]}"}
    fi
    exec "$PY" -m pytest ${ARGS[@]+"${ARGS[@]}"}
    ;;
  mutants)  # module -> the tests that protect it (narrowest selection: the runs are CPU-heavy)
    export PYTHONHASHSEED=0 MPLBACKEND=Agg
    declare -A MT=(
      [tensorrpca/scaledgd.py]="tests/test_rpca_scaledgd.py|-m 'not slow'"
      [ebsd/orientation/misorientation.py]="tests/test_orientation_core.py|-k 'misorientation or disorientation'"
      [ebsd/recovery/projection.py]="tests/test_recovery_projection_cases.py tests/test_recovery_baselines.py tests/test_recovery_api.py|-m 'not slow'"
      [llmeff/griffin.py]="tests/test_griffin.py|-k 'not compile'"
      [llmeff/kvcache/shadowkv.py]="tests/test_kvcache_shadowkv.py|"
      [diffusion/model.py]="tests/test_diffusion_model.py tests/test_diffusion_checkpoint_quality.py|"
    )
    MODS=${ARGS[@]+"${ARGS[@]}"}
    [ -n "$MODS" ] || MODS="tensorrpca/scaledgd.py ebsd/orientation/misorientation.py ebsd/recovery/projection.py llmeff/griffin.py llmeff/kvcache/shadowkv.py diffusion/model.py"
    for m in $MODS; do  # one module at a time
      spec=${MT[$m]:-}
      if [ -z "$spec" ]; then echo "no test selection for $m; known: ${!MT[*]}" >&2; exit 64; fi
      # shellcheck disable=SC2086
      "$PY" scripts/mutants.py "$m" --tests ${spec%%|*} --pytest-args "${spec#*|}" --max "${MUTANTS_MAX:-0}"
    done
    ;;
esac
