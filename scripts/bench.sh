#!/usr/bin/env bash
# make bench: every benchmark, logs under bench/results/<date>/.
# The PyTorch twin gets its best settings in bench_train.sh alone (never in tests).
set -uo pipefail
BUILD=${1:-build}
OUT=bench/results/$(date +%Y-%m-%d)
mkdir -p "$OUT"
status=0
run() {
  local name=$1; shift
  echo "== $name"
  if "$@" 2>&1 | tee "$OUT/$name.log"; then :; else status=1; fi
}
[ -x "$BUILD/bench_gemm" ] && run gemm env OMP_NUM_THREADS=2 "$BUILD/bench_gemm"
[ -x "$BUILD/bench_ops" ] && run ops env OMP_NUM_THREADS=2 "$BUILD/bench_ops"
[ -x scripts/bench_train.sh ] && run train scripts/bench_train.sh "$BUILD"
[ -x "$BUILD/bench_routers" ] && run routers env OMP_NUM_THREADS=2 "$BUILD/bench_routers"
echo "logs in $OUT"
exit $status
