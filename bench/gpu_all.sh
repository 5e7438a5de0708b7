#!/usr/bin/env bash
# Every GPU check in one go, for a session with a lent GPU and ~15 minutes of device time:
#   bash bench/gpu_all.sh [OUTDIR]
# Each bench runs under its own time limit (a stuck one does not eat the others' time); their outputs go to
# OUTDIR/*.txt (default: $OUT when set, else bench-gpu-out), to copy into BENCHMARKS.md. Uses python3 (the GPU
# machine's, torch 2.11) with src/ on the path, so nothing needs installing there.
set -u
cd "$(dirname "$0")/.."
out="${1:-${OUT:-bench-gpu-out}}"
mkdir -p "$out"
export PYTHONPATH="$PWD/src:$PWD/bench${PYTHONPATH:+:$PYTHONPATH}"
run() {  # run NAME SECONDS CMD...
  local name=$1 limit=$2; shift 2
  echo "== $name (limit ${limit}s): $*" | tee "$out/$name.txt"
  timeout "$limit" "$@" 2>&1 | tee -a "$out/$name.txt"
  echo "== $name exit ${PIPESTATUS[0]}" | tee -a "$out/$name.txt"
}
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; python3 -c "import torch, sys; print('torch', torch.__version__, 'python', sys.version.split()[0])"; date -u; } > "$out/env.txt" 2>&1
cat "$out/env.txt"
run decode_gpu 240 python3 bench/decode_gpu.py --preset llama-7b --new-tokens 200
run train_gpu 240 python3 bench/train_gpu.py --steps 10 --rounds 2
run plan_memory_gpu 120 python3 bench/plan_memory_gpu.py
