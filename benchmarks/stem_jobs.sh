#!/usr/bin/env bash
# STEM GPU jobs (issue 20). Run from the repository root with PYTHONPATH=repo (scripts/device_run.sh does).
#   bash benchmarks/stem_jobs.sh train   # data + 3 small LMs (dense, STEM, parameter-matched wide dense) trained
#                                        # concurrently at equal tokens, then the quality and edit parts
#   bash benchmarks/stem_jobs.sh speed   # decode tokens/s, tables on GPU vs offloaded (must run alone)
# SMOKE=1: the same path at tiny sizes on the CPU. STEM_MIN (minutes cap per training process, default 4),
# STEM_SKIP_EDIT=1 (train: skip the edit part), STEM_SKIP_PYTEST=1, STEM_WINDOWS (quality: held-out and calibration
# windows), STEM_SHAPES="1B" (speed: shapes to time). Outputs: $JOB_OUT (JSON + logs); models under $STEM_WORK
# (default /tmp/stem_work: outside $JOB_OUT, the checkpoints are 10-45 MB; the commands below rebuild them).
set -euo pipefail
PY=${PYTHON:-python3}
OUTD=${JOB_OUT:-${OUT:-/tmp/stem_out}}
W=${STEM_WORK:-/tmp/stem_work}
mkdir -p "$OUTD" "$W"
part=${1:?usage: stem_jobs.sh train|speed}
if [[ ${SMOKE:-0} == 1 ]]; then
  SM="--smoke"; DATA_ARGS="--max-stdlib-mb 0.6 --max-man-mb 0.2 --max-site-mb 0.2 --heldout-frac 0.1 --vocab 512"
  SIZE="--hidden 64 --layers 2 --heads 4 --seq 64 --batch 8 --warmup 5"; FF=128; WIDE=427; STEPS=20; MIN=1.5
else
  SM=""; DATA_ARGS="--max-stdlib-mb 48 --max-man-mb 16 --max-site-mb 32 --vocab 4096"
  # d 256, 4 layers, ff 1024; wide = 1024 * (2*256 + 4096) / (3*256) = 6144 matches STEM's FF parameters
  SIZE="--hidden 256 --layers 4 --heads 4 --seq 256 --batch 32 --warmup 100"; FF=1024; WIDE=6144; STEPS=2000; MIN=${STEM_MIN:-4.0}
fi
if [[ $part == train ]]; then
  T0=$(date +%s)
  # tokenizer training and encoding on every core (device_run.sh sets TOKENIZERS_PARALLELISM=false for its jobs)
  TOKENIZERS_PARALLELISM=true $PY -m llmeff.lm.train_small_lm --out "$W/data_only" --data "$W/data" --prepare-only $DATA_ARGS \
      2>&1 | tee "$OUTD/data.log"
  common="--data $W/data $DATA_ARGS $SIZE --steps $STEPS --minutes $MIN --seed 0 --reserve-s 20 --save-heldout"
  $PY -m llmeff.lm.train_small_lm --arch dense --ff $FF --out "$W/dense" $common > "$OUTD/train_dense.log" 2>&1 &
  p1=$!
  $PY -m llmeff.lm.train_small_lm --arch stem --ff $FF --out "$W/stem" $common > "$OUTD/train_stem.log" 2>&1 &
  p2=$!
  $PY -m llmeff.lm.train_small_lm --arch dense --ff $WIDE --out "$W/wide" $common > "$OUTD/train_wide.log" 2>&1 &
  p3=$!
  pids="$p1 $p2 $p3"
  if [[ ${STEM_SKIP_EDIT:-0} != 1 ]]; then
    $PY benchmarks/stem.py edit $SM --out "$OUTD" > "$OUTD/edit.log" 2>&1 &
    pids="$pids $!"
  fi
  rc=0
  for p in $pids; do wait $p || rc=$?; done
  tail -n 3 "$OUTD"/train_*.log; tail -n 20 "$OUTD/edit.log" 2>/dev/null || true
  for m in dense stem wide; do cp "$W/$m/train_log.json" "$OUTD/train_log_$m.json" 2>/dev/null || true; done
  SEQ=$([[ ${SMOKE:-0} == 1 ]] && echo 64 || echo 256)
  $PY benchmarks/stem.py quality $SM --data "$W/data" --dense "$W/dense" --stem "$W/stem" --wide "$W/wide" \
      --seq $SEQ --out "$OUTD" ${STEM_WINDOWS:+--windows $STEM_WINDOWS --convert-windows $STEM_WINDOWS} \
      2>&1 | tee "$OUTD/quality.log"
  # the GPU-marked test (offloaded tables bit-identical on CUDA) and the kernel tests on real CUDA, if pytest is there
  if [[ ${STEM_SKIP_PYTEST:-0} == 1 ]]; then
    echo "GPU tests skipped (STEM_SKIP_PYTEST=1)"
  elif $PY -c "import pytest" 2>/dev/null; then
    $PY -m pytest -q -p no:cacheprovider tests/test_stem.py tests/test_stem_gather_kernel.py 2>&1 | tail -n 4 \
        | tee "$OUTD/pytest.log" || true
  else
    echo "pytest not installed: GPU tests not run" | tee "$OUTD/pytest.log"
  fi
  echo "train job: $(( $(date +%s) - T0 )) s, rc of the training processes: $rc"
  exit $rc
elif [[ $part == speed ]]; then
  $PY benchmarks/stem.py speed $SM --out "$OUTD" ${STEM_SHAPES:+--shapes $STEM_SHAPES} 2>&1 | tee "$OUTD/speed.log"
else
  echo "unknown part $part" >&2; exit 2
fi
