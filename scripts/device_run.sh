#!/usr/bin/env bash
# Run GPU jobs on the lent device machine (see benchmarks/RESULTS.md for what was run).
# usage: bash scripts/device_run.sh "<name>:<seconds>:<command>" ...
# Jobs whose name starts with "bg-" run in the background together (sharing the GPU); others run one
# after another. Each job's log and outputs go under $OUT/<name>/; everything is packed into
# $OUT/results.tar.gz at the end (the device tool returns only a few files).
set -uo pipefail
OUT=${OUT:-/tmp/out}
W=/tmp/work   # jobs write here; only a tarball and the checkpoints are copied to $OUT (few files come back)
rm -rf "$W"; mkdir -p "$OUT" "$W"
if ls .whl/*.whl >/dev/null 2>&1; then
  # install only the wheels whose module the machine lacks (its own numpy/torch stay in charge)
  need=()
  for w in .whl/*.whl; do
    mod=$(basename "$w"); mod=${mod%%-*}; mod=${mod,,}
    python3 -c "import $mod" 2>/dev/null || need+=("$w")
  done
  echo "wheels installed: ${need[*]:-none}"
  if ((${#need[@]})); then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "${need[@]}" \
      >"$W/pip.log" 2>&1 || echo "wheel install failed (see pip.log)"
  fi
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$W/gpu.txt" 2>&1
pids=()
for spec in "$@"; do
  name=${spec%%:*}; rest=${spec#*:}; secs=${rest%%:*}; cmd=${rest#*:}
  mkdir -p "$W/$name"
  echo "== $name ($secs s): $cmd"
  if [[ $name == bg-* ]]; then
    (JOB_OUT="$W/$name" timeout "$secs" bash -c "$cmd" >"$W/$name/log.txt" 2>&1; echo "rc=$?" >>"$W/$name/log.txt") &
    pids+=($!)
  else
    JOB_OUT="$W/$name" timeout "$secs" bash -c "$cmd" >"$W/$name/log.txt" 2>&1; echo "rc=$?" >>"$W/$name/log.txt"
    tail -n 25 "$W/$name/log.txt"
  fi
done
for p in "${pids[@]}"; do wait "$p"; done
for d in "$W"/bg-*; do [ -d "$d" ] && { echo "== $(basename "$d")"; tail -n 15 "$d/log.txt"; }; done
(cd "$W" && tar czf "$OUT/results.tar.gz" --exclude='*.safetensors' --exclude='*.bin' --exclude='*.pt' .)
# checkpoints come back as they are (flattened names), at most 7 of them, each < 15 MB (the tool returns 8 files)
find "$W" -mindepth 2 -name '*.safetensors' -not -path '*/lm/*' -size -15M | head -7 | while read -r f; do
  rel=${f#"$W"/}; cp "$f" "$OUT/ckpt__${rel//\//__}"; done
ls -la "$OUT"
